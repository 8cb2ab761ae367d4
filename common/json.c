/* json.c: a small JSON reader, for carve's own files (plans, checkpoint
 * manifests, safetensors headers), and the string writer their writers
 * share. Values live in the compile arena.
 *
 * It reads RFC 8259 JSON and nothing looser, and trusts nothing: nesting is
 * bounded (JSON_MAX_DEPTH), every allocation is bounded by the text it
 * stands for (a string's copy by the length of its quoted text, found before
 * it is allocated; a container's items by the values parsed), numbers follow
 * the JSON grammar (no NaN, Infinity, hex or leading '+') and must be finite
 * doubles (1e999 is refused, not read as infinity), strings may not hold raw
 * control characters or \u0000, and a NUL byte anywhere in the text is an
 * error rather than its end. An error gives the byte offset, line and column
 * where reading stopped and what was wrong there. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"

#define JSON_MAX_DEPTH 64

typedef struct JP {
  const char *p, *start, *end;
  int depth;
  const char *why; /* the first error */
} JP;

static void *fail(JP *J, const char *why) {
  if (!J->why) J->why = why;
  return NULL;
}

static void ws(JP *J) {
  while (*J->p == ' ' || *J->p == '\n' || *J->p == '\t' || *J->p == '\r') J->p++;
}

static Json *value(JP *J);

static int hex(char c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* \uXXXX as UTF-8 (at most 3 bytes, from 6 of text); surrogates as they are. */
static char *unicode_escape(JP *J, char *o) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex(J->p[i]);
    if (h < 0) return fail(J, "\\u needs four hex digits");
    v = v * 16 + (unsigned)h;
  }
  if (!v) return fail(J, "\\u0000 in a string");
  J->p += 4;
  if (v < 0x80) {
    *o++ = (char)v;
  } else if (v < 0x800) {
    *o++ = (char)(0xC0 | v >> 6), *o++ = (char)(0x80 | (v & 0x3F));
  } else {
    *o++ = (char)(0xE0 | v >> 12), *o++ = (char)(0x80 | (v >> 6 & 0x3F)), *o++ = (char)(0x80 | (v & 0x3F));
  }
  return o;
}

/* One escape after the backslash; the output pointer after it, or NULL. */
static char *escape(JP *J, char *o) {
  char c = *J->p++;
  const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *k = c ? strchr(from, c) : NULL;
  if (k) {
    *o++ = to[k - from];
    return o;
  }
  if (c == 'u') return unicode_escape(J, o);
  J->p--;
  return fail(J, "an unknown escape in a string");
}

/* string = '"' (char | '\' escape)* '"'. The closing quote is found first,
 * so the copy is never longer than the quoted text. */
static const char *string(JP *J) {
  if (*J->p != '"') return fail(J, "expected a string");
  const char *e = ++J->p;
  while (*e && *e != '"') e += *e == '\\' && e[1] ? 2 : 1;
  if (*e != '"') return fail(J, "a string without its closing quote");
  char *out = arena_alloc((size_t)(e - J->p) + 1), *o = out;
  while (J->p < e) {
    if ((unsigned char)*J->p < 0x20) return fail(J, "a control character in a string");
    if (*J->p != '\\') {
      *o++ = *J->p++;
      continue;
    }
    J->p++;
    if (!(o = escape(J, o))) return NULL;
  }
  J->p = e + 1;
  *o = 0;
  return out;
}

static bool digit(char c) { return c >= '0' && c <= '9'; }

/* number = '-'? ('0' | [1-9][0-9]*) ('.' [0-9]+)? ([eE] [+-]? [0-9]+)? */
static size_t number_len(const char *s) {
  size_t i = *s == '-';
  if (!digit(s[i])) return 0;
  if (s[i] == '0')
    i++;
  else
    while (digit(s[i])) i++;
  if (s[i] == '.') {
    if (!digit(s[++i])) return 0;
    while (digit(s[i])) i++;
  }
  if (s[i] == 'e' || s[i] == 'E') {
    i += 1 + (s[i + 1] == '+' || s[i + 1] == '-');
    if (!digit(s[i])) return 0;
    while (digit(s[i])) i++;
  }
  return i;
}

static Json *number(JP *J) {
  size_t n = number_len(J->p);
  if (!n) return fail(J, digit(*J->p) || *J->p == '-' ? "a malformed number" : "expected a value");
  char *end;
  double x = strtod(J->p, &end);
  if (end != J->p + n) return fail(J, "a malformed number");
  if (!isfinite(x)) return fail(J, "a number out of range");
  Json *v = arena_alloc(sizeof(Json));
  v->kind = JSON_NUMBER;
  v->num = x;
  J->p = end;
  return v;
}

static Json *container(JP *J, bool obj) {
  Json *v = arena_alloc(sizeof(Json));
  v->kind = obj ? JSON_OBJECT : JSON_ARRAY;
  PtrVec items = {0}, keys = {0};
  char close = obj ? '}' : ']';
  J->p++;
  ws(J);
  if (*J->p == close) {
    J->p++;
    return v;
  }
  for (;;) {
    ws(J);
    if (obj) {
      const char *k = string(J);
      if (!k) return NULL;
      ws(J);
      if (*J->p != ':') return fail(J, "expected ':' after a key");
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
    if (*J->p != close) return fail(J, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    J->p++;
    break;
  }
  v->n = items.n;
  v->items = (Json **)items.v;
  v->keys = (const char **)keys.v;
  return v;
}

static Json *literal(JP *J) {
  static const char *const words[] = {"null", "false", "true"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(words[i]);
    if (strncmp(J->p, words[i], n)) continue;
    Json *v = arena_alloc(sizeof(Json));
    v->kind = i ? JSON_BOOL : JSON_NULL;
    v->boolean = i == 2;
    J->p += n;
    return v;
  }
  return number(J);
}

static Json *value(JP *J) {
  ws(J);
  if (J->depth >= JSON_MAX_DEPTH) return fail(J, "nested more than 64 deep");
  J->depth++;
  Json *v = NULL;
  if (*J->p == '{' || *J->p == '[') {
    v = container(J, *J->p == '{');
  } else if (*J->p == '"') {
    const char *s = string(J);
    if (s) v = arena_alloc(sizeof(Json)), v->kind = JSON_STRING, v->str = s;
  } else {
    v = literal(J);
  }
  J->depth--;
  return v;
}

static void locate(const JP *J, JsonError *e) {
  e->offset = (size_t)(J->p - J->start);
  e->line = 1, e->col = 1;
  for (const char *q = J->start; q < J->p; q++) {
    if (*q == '\n')
      e->line++, e->col = 1;
    else if (((unsigned char)*q & 0xC0) != 0x80)
      e->col++;
  }
  e->what = J->why ? J->why : "malformed JSON";
}

Json *json_read(const char *text, size_t len, JsonError *e) {
  JP J = {text, text, text + len, 0, NULL};
  Json *v = value(&J);
  if (v) {
    ws(&J);
    if (J.p != J.end) v = fail(&J, "more text after the value");
  }
  if (!v && J.p < J.end && !*J.p) J.why = "a NUL byte in the text";
  if (!v && e) locate(&J, e);
  return v;
}

Json *json_parse(const char *text, size_t *error_offset) {
  JsonError e;
  Json *v = json_read(text, strlen(text), &e);
  if (!v && error_offset) *error_offset = e.offset;
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
