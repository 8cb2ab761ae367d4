/* json.c: a small JSON reader, for carve's own files (plans). Values live
 * in the compile arena. Errors give the byte offset where parsing stopped. */
#include <stdlib.h>
#include <string.h>

#include "carve.h"

typedef struct JP {
  const char *p, *start;
  int depth;
} JP;

static void ws(JP *J) {
  while (*J->p == ' ' || *J->p == '\n' || *J->p == '\t' || *J->p == '\r') J->p++;
}

static Json *value(JP *J);

/* A string; \uXXXX escapes (four hex digits) read as '?'. */
static const char *string(JP *J) {
  if (*J->p != '"') return NULL;
  const char *s = ++J->p, *end = s;
  while (*end && *end != '"') end += end[0] == '\\' && end[1] ? 2 : 1; /* the string's size, not the rest's */
  if (*end != '"') return NULL;
  char *out = arena_alloc((size_t)(end - s) + 1);
  size_t n = 0;
  while (J->p < end) {
    char c = *J->p++;
    if (c != '\\') {
      out[n++] = c;
      continue;
    }
    c = *J->p++;
    if (c == 'u') {
      for (int k = 0; k < 4; k++, J->p++)
        if (J->p >= end || !strchr("0123456789abcdefABCDEF", *J->p)) return NULL;
      c = '?';
    }
    out[n++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
  }
  J->p = end + 1;
  out[n] = 0;
  return out;
}

static Json *container(JP *J, bool obj) {
  Json *v = arena_alloc(sizeof(Json));
  v->kind = obj ? JSON_OBJECT : JSON_ARRAY;
  PtrVec items = {0}, keys = {0};
  J->p++;
  ws(J);
  if (*J->p == (obj ? '}' : ']')) {
    J->p++;
    return v;
  }
  for (;;) {
    ws(J);
    if (obj) {
      const char *k = string(J);
      ws(J);
      if (!k || *J->p != ':') return NULL;
      J->p++;
      ptrvec_push(&keys, (void *)k);
    }
    Json *item = value(J);
    if (!item) return NULL;
    ptrvec_push(&items, item);
    ws(J);
    if (*J->p == ',') {
      J->p++;
      continue;
    }
    if (*J->p != (obj ? '}' : ']')) return NULL;
    J->p++;
    break;
  }
  v->n = items.n;
  v->items = (Json **)items.v;
  v->keys = (const char **)keys.v;
  return v;
}

static Json *value(JP *J) {
  ws(J);
  if (++J->depth > 64) return NULL;
  Json *v = NULL;
  if (*J->p == '{' || *J->p == '[') {
    v = container(J, *J->p == '{');
  } else if (*J->p == '"') {
    const char *s = string(J);
    if (s) v = arena_alloc(sizeof(Json)), v->kind = JSON_STRING, v->str = s;
  } else if (!strncmp(J->p, "true", 4) || !strncmp(J->p, "false", 5) || !strncmp(J->p, "null", 4)) {
    v = arena_alloc(sizeof(Json));
    v->kind = *J->p == 'n' ? JSON_NULL : JSON_BOOL;
    v->boolean = *J->p == 't';
    J->p += *J->p == 'f' ? 5 : 4;
  } else {
    char *end;
    double x = strtod(J->p, &end);
    if (end != J->p) v = arena_alloc(sizeof(Json)), v->kind = JSON_NUMBER, v->num = x, J->p = end;
  }
  J->depth--;
  return v;
}

Json *json_parse(const char *text, size_t *error_offset) {
  JP J = {text, text, 0};
  Json *v = value(&J);
  if (v) {
    ws(&J);
    if (*J.p) v = NULL;
  }
  if (!v && error_offset) *error_offset = (size_t)(J.p - J.start);
  return v;
}

const Json *json_get(const Json *obj, const char *key) {
  if (!obj || obj->kind != JSON_OBJECT) return NULL;
  for (int i = 0; i < obj->n; i++)
    if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
  return NULL;
}

double json_num(const Json *obj, const char *key, double dflt) {
  const Json *v = json_get(obj, key);
  return v && v->kind == JSON_NUMBER ? v->num : dflt;
}

const char *json_str(const Json *obj, const char *key, const char *dflt) {
  const Json *v = json_get(obj, key);
  return v && v->kind == JSON_STRING ? v->str : dflt;
}

void json_write_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      fprintf(f, "\\u%04x", *s);
    else
      fputc(*s, f);
  }
  fputc('"', f);
}
