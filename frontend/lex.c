/* lex.c: source text to tokens, and the located diagnostics every later
 * phase uses.
 *
 * Tokens: identifiers ([A-Za-z_][A-Za-z0-9_]*), numbers (123, 0.02, 1e-5),
 * strings ("b s h -> b s f"), punctuation (= , [ ] ( ) { } : ~ + - * / // ->)
 * and newlines, which end statements. A '#' starts a comment that runs to the
 * end of the line. Newlines inside () or [] do not end a statement, so long
 * calls can be split over lines. */
#include "carve.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

void diag_init(Diag *d, FILE *out) {
  d->out = out;
  d->errors = 0;
  d->max_errors = 20;
}

#define SHOW_AROUND 80 /* a long line is shown this many bytes either side of the caret */

/* Prints the source line of `at` and a caret under its column; of a long
 * line, only the part around the column, cut ends marked "...". */
static void show_line(FILE *out, const Token *at) {
  const char *text = at->src->text;
  const char *start = at->p;
  while (start > text && start[-1] != '\n' && at->p - start < SHOW_AROUND) start--;
  const char *end = at->p;
  while (*end && *end != '\n' && end - at->p < SHOW_AROUND) end++;
  bool cut_left = start > text && start[-1] != '\n', cut_right = *end && *end != '\n';
  fprintf(out, "  %s%.*s%s\n  %s", cut_left ? "..." : "", (int)(end - start), start, cut_right ? "..." : "",
          cut_left ? "   " : "");
  for (const char *q = start; q < at->p; q++) fputc(*q == '\t' ? '\t' : ' ', out);
  fputc('^', out);
  for (int i = 1; i < at->len && at->p + i < end; i++) fputc('~', out);
  fputc('\n', out);
}

static void vreport(Diag *d, const Token *at, const char *kind, const char *fmt, va_list ap) {
  if (at)
    fprintf(d->out, "%s:%d:%d: %s: ", at->src->path, at->line, at->col, kind);
  else
    fprintf(d->out, "%s: ", kind);
  vfprintf(d->out, fmt, ap);
  fputc('\n', d->out);
  if (at && at->kind != TK_EOF) show_line(d->out, at);
}

void diag_error(Diag *d, const Token *at, const char *fmt, ...) {
  d->errors++;
  if (d->errors > d->max_errors) return;
  va_list ap;
  va_start(ap, fmt);
  vreport(d, at, "error", fmt, ap);
  va_end(ap);
  if (d->errors == d->max_errors) fprintf(d->out, "too many errors; stopping here\n");
}

void diag_note(Diag *d, const Token *at, const char *fmt, ...) {
  if (d->errors > d->max_errors) return;
  va_list ap;
  va_start(ap, fmt);
  vreport(d, at, "note", fmt, ap);
  va_end(ap);
}

void diag_file(Diag *d, const char *path, const char *fmt, ...) {
  d->errors++;
  va_list ap;
  va_start(ap, fmt);
  fprintf(d->out, "%s: error: ", path);
  vfprintf(d->out, fmt, ap);
  fputc('\n', d->out);
  va_end(ap);
}

void diag_plain(Diag *d, const char *fmt, ...) {
  d->errors++;
  va_list ap;
  va_start(ap, fmt);
  fprintf(d->out, "error: ");
  vfprintf(d->out, fmt, ap);
  fputc('\n', d->out);
  va_end(ap);
}

bool tok_is(const Token *t, const char *s) {
  return (t->kind == TK_PUNCT || t->kind == TK_IDENT) && (int)strlen(s) == t->len &&
         memcmp(t->p, s, (size_t)t->len) == 0;
}

/* Tokens in a file at most: with the file's size limit this bounds what the
 * parser builds (an expression node per token at most). A 100,000-statement
 * model has about 600,000. */
#define MAX_TOKENS (8 << 20)

typedef struct Lexer {
  const Source *src;
  Diag *d;
  int bad_lines[64]; /* lines with a lexical error (the first 64) */
  int nbad;
  const char *p;
  int line, col;
  Token *toks; /* on the heap while lexing; the arena holds the result */
  int n, cap;
  int depth; /* open ( and [ */
} Lexer;

/* The new token is valid until the next push. */
static Token *push(Lexer *L, TokenKind kind, const char *start, int len, int col, bool space) {
  if (L->n == L->cap) {
    L->cap = L->cap ? 2 * L->cap : 4096;
    L->toks = xrealloc(L->toks, sizeof(Token) * (size_t)L->cap);
  }
  Token *t = &L->toks[L->n++];
  *t = (Token){0};
  t->kind = kind;
  t->p = start;
  t->len = len;
  t->line = L->line;
  t->col = col;
  t->src = L->src;
  t->space_before = space;
  return t;
}

/* number = digits ("." digits?)? (("e" | "E") ("+" | "-")? digits)?  or  "." digits ... */
static const char *scan_number(const char *p) {
  while (isdigit((unsigned char)*p)) p++;
  if (*p == '.') {
    p++;
    while (isdigit((unsigned char)*p)) p++;
  }
  if ((*p == 'e' || *p == 'E')) {
    const char *q = p + 1;
    if (*q == '+' || *q == '-') q++;
    if (isdigit((unsigned char)*q)) {
      while (isdigit((unsigned char)*q)) q++;
      p = q;
    }
  }
  return p;
}

static void lex_error(Lexer *L, Token *t) {
  if (L->nbad < 64) L->bad_lines[L->nbad++] = t->line;
}

static void lex_number(Lexer *L, bool space) {
  const char *s = L->p;
  const char *end = scan_number(s);
  char buf[64];
  size_t len = (size_t)(end - s) < sizeof buf - 1 ? (size_t)(end - s) : sizeof buf - 1;
  memcpy(buf, s, len);
  buf[len] = 0;
  double v = strtod(buf, NULL);
  bool is_int = true;
  for (const char *q = s; q < end; q++)
    if (*q == '.' || *q == 'e' || *q == 'E') is_int = false;
  Token *t = push(L, TK_NUM, s, (int)(end - s), L->col, space);
  t->num = v;
  t->is_int = is_int;
  L->col += (int)(end - s);
  L->p = end;
}

static void lex_string(Lexer *L, bool space) {
  const char *s = L->p;
  const char *q = s + 1;
  while (*q && *q != '"' && *q != '\n') q++;
  Token *t = push(L, TK_STR, s, (int)(q - s) + (*q == '"'), L->col, space);
  if (*q != '"') {
    t->len = 1;
    lex_error(L, t);
    diag_error(L->d, t, "unterminated string");
    t->len = (int)(q - s);
  } else {
    q++;
  }
  L->col += (int)(q - s);
  L->p = q;
}

static const char *const puncts[] = {"->", "//", "=", ",", "[", "]", "(", ")", "{",
                                     "}",  ":",  "~", "+", "-", "*", "/", NULL};

Token *lex(const Source *src, Diag *d, int *ntok) {
  Lexer L = {.src = src, .d = d, .p = src->text, .line = 1, .col = 1};
  const char *end = src->text + src->len;
  bool space = true;
  while (L.p < end) {
    if (L.n >= MAX_TOKENS) {
      diag_file(d, src->path, "the model is too large: more than %d tokens (names, numbers and symbols)", MAX_TOKENS);
      L.n = 0; /* nothing to parse */
      break;
    }
    char c = *L.p;
    if (c == '\n') {
      push(&L, TK_NEWLINE, L.p, 1, L.col, space)->bracketed = L.depth > 0;
      L.p++, L.line++, L.col = 1, space = true;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') {
      L.p++, L.col++, space = true;
      continue;
    }
    if (c == '#') {
      while (L.p < end && *L.p != '\n') L.p++;
      continue;
    }
    if (isalpha((unsigned char)c) || c == '_') {
      const char *s = L.p;
      while (L.p < end && (isalnum((unsigned char)*L.p) || *L.p == '_')) L.p++;
      push(&L, TK_IDENT, s, (int)(L.p - s), L.col, space);
      L.col += (int)(L.p - s);
    } else if (isdigit((unsigned char)c) || (c == '.' && isdigit((unsigned char)L.p[1]))) {
      lex_number(&L, space);
    } else if (c == '"') {
      lex_string(&L, space);
    } else {
      int i = 0;
      for (; puncts[i]; i++)
        if (strncmp(L.p, puncts[i], strlen(puncts[i])) == 0) break;
      if (!puncts[i]) {
        Token *t = push(&L, TK_PUNCT, L.p, 1, L.col, space);
        lex_error(&L, t);
        if ((unsigned char)c < 32 || (unsigned char)c >= 127)
          diag_error(d, t, "unexpected character (byte 0x%02x)", (unsigned char)c);
        else
          diag_error(d, t, "unexpected character '%c'", c);
        L.n--; /* drop it */
        L.p++, L.col++;
        continue;
      }
      int len = (int)strlen(puncts[i]);
      push(&L, TK_PUNCT, L.p, len, L.col, space);
      if (c == '(' || c == '[') L.depth++;
      if ((c == ')' || c == ']') && L.depth > 0) L.depth--;
      /* A '{' or '}' ends any bracket nesting: an unclosed '(' must not
         swallow the rest of the file's newlines. */
      if (c == '{' || c == '}') L.depth = 0;
      L.p += len, L.col += len;
    }
    space = false;
  }
  /* The statement-ending newline at the end of the file. When the file ends
   * with '\n', it stands on that character, so that "found end of line"
   * points at the last line rather than past it. */
  if (src->len && src->text[src->len - 1] == '\n') {
    const char *nl = src->text + src->len - 1, *bol = nl;
    while (bol > src->text && bol[-1] != '\n') bol--;
    L.line--;
    push(&L, TK_NEWLINE, nl, 1, (int)(nl - bol) + 1, true);
    L.line++;
  } else {
    push(&L, TK_NEWLINE, L.p, 0, L.col, true);
  }
  push(&L, TK_EOF, L.p, 0, L.col, true);
  Token *arr = arena_alloc(sizeof(Token) * (size_t)L.n);
  for (int i = 0; i < L.n; i++) {
    arr[i] = L.toks[i];
    for (int k = 0; k < L.nbad; k++) arr[i].bad_line |= arr[i].line == L.bad_lines[k];
  }
  free(L.toks);
  *ntok = L.n;
  return arr;
}
