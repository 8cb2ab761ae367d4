/* parse.c: tokens to a syntax tree (Ast). One function per grammar rule, the
 * rule written above it. On an error the parser reports it, skips to the end
 * of the statement and goes on, so one run shows several mistakes.
 *
 * file    = (stmt? NEWLINE)*
 * stmt    = "model" IDENT
 *         | "dim" IDENT "=" expr ("," IDENT "=" expr)*
 *         | "preset" NAME ":" IDENT "=" expr ("," IDENT "=" expr)*
 *         | "input" IDENT "[" exprs "]" (":" IDENT)? ("~" expr)?
 *         | "param" IDENT "[" exprs "]" ("~" expr)?
 *         | "repeat" expr "{" block "}"
 *         | "if" expr "{" block "}" ("else" "{" block "}")?
 *         | IDENT ("," IDENT)* "=" expr
 * expr    = term (("+" | "-") term)*
 * term    = unary (("*" | "/" | "//") unary)*
 * unary   = "-" unary | primary
 * primary = NUM | STR | "(" expr ")" | "[" exprs "]" | IDENT ("(" args ")")?
 * args    = (arg ("," arg)*)?
 * arg     = (IDENT "=")? expr
 * NAME    = an identifier that may contain '-' and digits, e.g. gpt2-124m */
#include "carve.h"

#include <string.h>

typedef struct Parser {
  Token *t;
  int n, pos;
  Diag *d;
  bool failed; /* the current statement had an error */
  int depth;   /* expression nesting, bounded so no input can exhaust the stack */
  int terms;   /* operators and operands in the current statement, bounded likewise */
  bool abort;  /* blocks nested too deeply: stop parsing */
} Parser;

#define MAX_TERMS 10000

#define MAX_EXPR_DEPTH 200

/* Newlines inside brackets are read through; see lex(). */
static void skip_bracketed(Parser *P) {
  while (P->t[P->pos].kind == TK_NEWLINE && P->t[P->pos].bracketed) P->pos++;
}
static Token *peek(Parser *P) {
  skip_bracketed(P);
  return &P->t[P->pos];
}
static Token *next(Parser *P) {
  Token *t = peek(P);
  if (t->kind != TK_EOF) P->pos++;
  return t;
}
/* The token after the next one (for one-token lookahead decisions). */
static Token *peek2(Parser *P) {
  int save = P->pos;
  next(P);
  Token *t = peek(P);
  P->pos = save;
  return t;
}
static bool at(Parser *P, const char *s) { return tok_is(peek(P), s); }
static bool accept(Parser *P, const char *s) {
  if (!at(P, s)) return false;
  next(P);
  return true;
}

static const char *describe(const Token *t) {
  switch (t->kind) {
  case TK_NEWLINE: return "end of line";
  case TK_EOF: return "end of file";
  default: return arena_printf("'%.*s'", t->len, t->p);
  }
}

static void error_at(Parser *P, Token *t, const char *fmt, const char *arg) {
  if (!P->failed && !t->bad_line) diag_error(P->d, t, fmt, arg, describe(t));
  P->failed = true;
}

static bool expect(Parser *P, const char *s) {
  if (accept(P, s)) return true;
  error_at(P, peek(P), "expected '%s', found %s", s);
  return false;
}

/* A closing bracket; on error, a note points at the one it would close. */
static bool expect_close(Parser *P, const char *close, const Token *open) {
  bool reported = P->failed;
  if (expect(P, close)) return true;
  if (!reported) diag_note(P->d, open, "to close this '%.*s'", open->len, open->p);
  return false;
}

static Token *expect_ident(Parser *P, const char *what) {
  if (peek(P)->kind == TK_IDENT) return next(P);
  error_at(P, peek(P), "expected %s, found %s", what);
  return NULL;
}

static const char *tok_text(const Token *t) { return arena_strndup(t->p, (size_t)t->len); }

static Expr *new_expr(ExprKind k, const Token *tok) {
  Expr *e = arena_alloc(sizeof(Expr));
  e->kind = k;
  e->tok = tok;
  return e;
}

static Expr *expr(Parser *P);

/* args = (arg ("," arg)*)?   arg = (IDENT "=")? expr   (also used for lists) */
static void arg_list(Parser *P, Expr *call, const char *close, bool keywords, const Token *open) {
  PtrVec args = {0}, kws = {0}, kwtoks = {0};
  while (!at(P, close) && !P->failed && peek(P)->kind != TK_EOF && peek(P)->kind != TK_NEWLINE) {
    const char *kw = NULL;
    Token *kwt = NULL;
    if (keywords && peek(P)->kind == TK_IDENT && tok_is(peek2(P), "=")) {
      kwt = next(P);
      kw = tok_text(kwt);
      next(P);
    }
    ptrvec_push(&args, expr(P));
    ptrvec_push(&kws, (void *)kw);
    ptrvec_push(&kwtoks, kwt);
    if (!accept(P, ",")) break;
  }
  call->args = (Expr **)args.v;
  call->kw = (const char **)kws.v;
  call->kw_toks = (const Token **)kwtoks.v;
  call->nargs = args.n;
  expect_close(P, close, open);
}

/* primary = NUM | STR | "(" expr ")" | "[" exprs "]" | IDENT ("(" args ")")? */
static Expr *primary(Parser *P) {
  Token *t = peek(P);
  if (t->kind == TK_NUM) {
    next(P);
    Expr *e = new_expr(EX_NUM, t);
    e->num = t->num;
    e->is_int = t->is_int;
    return e;
  }
  if (t->kind == TK_STR) {
    next(P);
    Expr *e = new_expr(EX_STR, t);
    e->str = arena_strndup(t->p + 1, t->len >= 2 ? (size_t)t->len - 2 : 0);
    return e;
  }
  if (accept(P, "(")) {
    Expr *e = expr(P);
    expect_close(P, ")", t);
    return e;
  }
  if (accept(P, "[")) {
    Expr *e = new_expr(EX_LIST, t);
    arg_list(P, e, "]", false, t);
    return e;
  }
  if (t->kind == TK_IDENT) {
    next(P);
    Token *open = peek(P);
    if (accept(P, "(")) {
      Expr *e = new_expr(EX_CALL, t);
      e->name = tok_text(t);
      arg_list(P, e, ")", true, open);
      return e;
    }
    Expr *e = new_expr(EX_IDENT, t);
    e->name = tok_text(t);
    return e;
  }
  error_at(P, t, "expected an expression, found %s%s", "");
  return new_expr(EX_NUM, t);
}

/* unary = "-" unary | primary */
static Expr *unary(Parser *P) {
  Token *t = peek(P);
  if (++P->terms > MAX_TERMS) error_at(P, t, "statement too long%s: more than 10000 terms (near %s)", "");
  if (P->failed) return new_expr(EX_NUM, t); /* stop building once the statement has failed */
  if (++P->depth > MAX_EXPR_DEPTH) {
    error_at(P, t, "expression nested too deeply%s (near %s)", "");
    P->depth--;
    return new_expr(EX_NUM, t);
  }
  Expr *e;
  if (accept(P, "-")) {
    e = new_expr(EX_NEG, t);
    e->lhs = unary(P);
  } else {
    e = primary(P);
  }
  P->depth--;
  return e;
}

static Expr *binary(const Token *op, char c, Expr *l, Expr *r) {
  Expr *e = new_expr(EX_BIN, op);
  e->op = c;
  e->lhs = l;
  e->rhs = r;
  return e;
}

/* term = unary (("*" | "/" | "//") unary)* */
static Expr *term(Parser *P) {
  Expr *e = unary(P);
  for (;;) {
    Token *t = peek(P);
    if (accept(P, "*"))
      e = binary(t, '*', e, unary(P));
    else if (accept(P, "//"))
      e = binary(t, 'f', e, unary(P));
    else if (accept(P, "/"))
      e = binary(t, '/', e, unary(P));
    else
      return e;
  }
}

/* expr = term (("+" | "-") term)* */
static Expr *expr(Parser *P) {
  Expr *e = term(P);
  for (;;) {
    Token *t = peek(P);
    if (accept(P, "+"))
      e = binary(t, '+', e, term(P));
    else if (accept(P, "-"))
      e = binary(t, '-', e, term(P));
    else
      return e;
  }
}

static Stmt *new_stmt(StmtKind k, const Token *tok) {
  Stmt *s = arena_alloc(sizeof(Stmt));
  s->kind = k;
  s->tok = tok;
  return s;
}

/* IDENT "=" expr ("," IDENT "=" expr)*   (dim and preset bodies) */
static void bindings(Parser *P, Stmt *s) {
  PtrVec names = {0}, toks = {0}, exprs = {0};
  do {
    Token *name = expect_ident(P, "a dim name");
    if (!name || !expect(P, "=")) break;
    ptrvec_push(&names, (void *)tok_text(name));
    ptrvec_push(&toks, name);
    ptrvec_push(&exprs, expr(P));
  } while (!P->failed && accept(P, ","));
  s->names = (const char **)names.v;
  s->name_toks = (const Token **)toks.v;
  s->exprs = (Expr **)exprs.v;
  s->nnames = names.n;
}

/* NAME: identifier characters and '-', written without spaces (gpt2-124m). */
static const char *preset_name(Parser *P) {
  Token *first = peek(P);
  if (first->kind != TK_IDENT && first->kind != TK_NUM) {
    error_at(P, first, "expected a preset name, found %s%s", "");
    return NULL;
  }
  const char *start = first->p;
  const char *end = first->p + first->len;
  next(P);
  while (!peek(P)->space_before && (peek(P)->kind == TK_IDENT || peek(P)->kind == TK_NUM || at(P, "-"))) {
    end = peek(P)->p + peek(P)->len;
    next(P);
  }
  return arena_strndup(start, (size_t)(end - start));
}

/* "[" exprs "]" for declarations */
static void decl_shape(Parser *P, Stmt *s) {
  Token *open = peek(P);
  if (!expect(P, "[")) return;
  Expr *list = new_expr(EX_LIST, open);
  arg_list(P, list, "]", false, open);
  s->dims = list->args;
  s->ndims = list->nargs;
}

static Stmt **block(Parser *P, Token *open, int *n);

static Stmt *statement(Parser *P);

/* "repeat" expr "{" block "}"  and  "if" expr "{" block "}" ("else" "{" block "}")? */
static Stmt *block_stmt(Parser *P, Token *kw, StmtKind kind) {
  Stmt *s = new_stmt(kind, kw);
  if (P->depth > MAX_EXPR_DEPTH / 4) {
    error_at(P, kw, "blocks nested too deeply%s (at %s); giving up on this file", "");
    P->abort = true;
    return s;
  }
  s->exprs = arena_alloc(sizeof(Expr *));
  s->exprs[0] = expr(P);
  s->nnames = 0;
  Token *open = peek(P);
  if (!expect(P, "{")) return s;
  P->depth++;
  s->body = block(P, open, &s->nbody);
  P->depth--;
  /* "else" may start the line after the closing brace */
  int save = P->pos;
  while (kind == ST_IF && peek(P)->kind == TK_NEWLINE) next(P);
  if (!at(P, "else")) P->pos = save;
  if (kind == ST_IF && at(P, "else")) {
    next(P);
    Token *open2 = peek(P);
    if (expect(P, "{")) {
      P->depth++;
      s->orelse = block(P, open2, &s->norelse);
      P->depth--;
    }
  }
  return s;
}

static Stmt *statement(Parser *P) {
  Token *t = peek(P);
  if (t->kind != TK_IDENT) {
    error_at(P, t, "expected a statement, found %s%s", "");
    return NULL;
  }
  if (tok_is(t, "model") && peek2(P)->kind == TK_IDENT) {
    next(P);
    Stmt *s = new_stmt(ST_MODEL, t);
    s->label = tok_text(next(P));
    return s;
  }
  if (tok_is(t, "dim") && !tok_is(peek2(P), "=")) {
    next(P);
    Stmt *s = new_stmt(ST_DIM, t);
    bindings(P, s);
    return s;
  }
  if (tok_is(t, "preset") && !tok_is(peek2(P), "=")) {
    next(P);
    Stmt *s = new_stmt(ST_PRESET, t);
    s->label = preset_name(P);
    if (s->label && expect(P, ":")) bindings(P, s);
    return s;
  }
  if ((tok_is(t, "input") || tok_is(t, "param")) && !tok_is(peek2(P), "=")) {
    next(P);
    Stmt *s = new_stmt(tok_is(t, "input") ? ST_INPUT : ST_PARAM, t);
    Token *name = expect_ident(P, "a tensor name");
    if (!name) return s;
    s->names = arena_alloc(sizeof(char *));
    s->names[0] = tok_text(name);
    s->name_toks = arena_alloc(sizeof(Token *));
    s->name_toks[0] = name;
    s->nnames = 1;
    decl_shape(P, s);
    if (s->kind == ST_INPUT && accept(P, ":")) {
      Token *dt = expect_ident(P, "a dtype (f32 or i32)");
      if (dt) s->dtype = tok_text(dt), s->dtype_tok = dt;
    }
    if (accept(P, "~")) s->init = expr(P);
    return s;
  }
  if (tok_is(t, "repeat") && !tok_is(peek2(P), "=")) return block_stmt(P, next(P), ST_REPEAT);
  if (tok_is(t, "if") && !tok_is(peek2(P), "=")) return block_stmt(P, next(P), ST_IF);

  /* IDENT ("," IDENT)* "=" expr */
  Stmt *s = new_stmt(ST_ASSIGN, t);
  PtrVec names = {0}, toks = {0};
  do {
    Token *name = expect_ident(P, "a tensor name");
    if (!name) return s;
    ptrvec_push(&names, (void *)tok_text(name));
    ptrvec_push(&toks, name);
  } while (accept(P, ","));
  s->names = (const char **)names.v;
  s->name_toks = (const Token **)toks.v;
  s->nnames = names.n;
  if (!expect(P, "=")) return s;
  s->exprs = arena_alloc(sizeof(Expr *));
  s->exprs[0] = expr(P);
  return s;
}

/* Parses statements up to a closing '}' (open != NULL) or the end of file.
 * After each statement the line must end; after an error, skip to it. */
static Stmt **block(Parser *P, Token *open, int *n) {
  PtrVec stmts = {0};
  while (!P->abort) {
    if (P->d->errors > P->d->max_errors) { /* nothing more would be shown */
      P->abort = true;
      break;
    }
    while (peek(P)->kind == TK_NEWLINE) next(P);
    Token *t = peek(P);
    if (t->kind == TK_EOF) {
      if (open) {
        diag_error(P->d, t, "expected '}' (to close '{' at line %d)", open->line);
        diag_note(P->d, open, "the block opens here");
      }
      break;
    }
    if (tok_is(t, "}")) {
      if (open) {
        next(P);
        break;
      }
      diag_error(P->d, t, "'}' without a matching '{'");
      next(P);
      continue;
    }
    P->failed = false;
    P->terms = 0;
    Stmt *s = statement(P);
    if (P->abort) break;
    if (!P->failed && peek(P)->kind != TK_NEWLINE && peek(P)->kind != TK_EOF && !at(P, "}"))
      error_at(P, peek(P), "expected end of line after the statement, found %s%s", "");
    if (P->failed) { /* skip to the end of the line, bracketed or not */
      while (P->t[P->pos].kind != TK_NEWLINE && P->t[P->pos].kind != TK_EOF && !tok_is(&P->t[P->pos], "}")) P->pos++;
      continue; /* a statement with an error is dropped */
    }
    if (s) ptrvec_push(&stmts, s);
  }
  *n = stmts.n;
  return (Stmt **)stmts.v;
}

Ast *parse(const Source *src, Diag *d) {
  Parser P = {.d = d};
  P.t = lex(src, d, &P.n);
  Ast *ast = arena_alloc(sizeof(Ast));
  ast->src = src;
  ast->stmts = block(&P, NULL, &ast->nstmts);
  return ast;
}
