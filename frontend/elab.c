/* elab.c: syntax tree to forward graph.
 *
 * Elaboration binds every dim (declared default, then a preset, then --set),
 * unrolls repeat blocks (each iteration gets its own parameters, named
 * "layers.7.w_fc"), takes the branch of each if block, and turns every
 * expression into graph nodes, inferring and checking shapes as it goes.
 *
 * Scopes: each repeat iteration opens a scope. A parameter or a new name
 * belongs to the innermost scope; assigning to a name that an outer scope
 * already holds rebinds it there, which is how `x = x + attn` carries the
 * residual stream from one layer to the next.
 *
 * Errors are reported at the expression they concern and elaboration goes on
 * with the next statement; a name whose definition failed is bound to a
 * poison value so that it does not cause a cascade of further errors. */
#include "carve.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define POISON (-2)       /* the value of a name whose definition failed */
#define MAX_REPEAT 100000 /* iterations of one repeat block */
#define MAX_NODES 5000000 /* forward nodes: a bound on what a file may ask for */
#define MAX_DIM_VALUE (1ll << 48)
#define MAX_WORK 2000000 /* statements, counting every iteration of every repeat */

typedef struct Sym {
  const char *name;
  int node; /* tensor node id, or POISON */
  int scope;
  bool fixed;  /* param or input: cannot be assigned */
  int shadows; /* the Sym of the same name this one hides, or -1 */
} Sym;

typedef struct Dim {
  const char *name;
  int64_t value;
  bool ok;
  bool per_batch; /* DimVal.per_batch */
} Dim;

typedef struct Elab {
  Graph *g;
  Diag *d;
  const ElabOptions *opt;
  const Ast *ast;
  Sym *syms;
  int nsyms, capsyms;
  StrMap sym_of; /* name -> its innermost Sym; each Sym keeps the one it shadows */
  int scope;
  Dim *dims;
  int ndims, capdims;
  StrMap dim_of; /* name -> index in dims */
  Override *preset;
  const Token **preset_toks;
  int npreset;
  const char *prefix; /* "layers.3." inside a repeat */
  int layer;
  const char *target; /* name of the statement's target, for temporaries */
  bool stop;          /* too many nodes: stop elaborating */
  StrMap names;       /* names in the graph, for uniqueness */
  StrMap suffix;      /* name -> the next ".N" suffix to try */
  int64_t work;       /* statements elaborated: bounds what nested repeats may unroll */
  int layers_seen;    /* iterations of the top-level repeat blocks so far */
} Elab;

/* ---------------------------------------------------------------- names */

/* A unique node name: prefix + base, with ".2", ".3" ... on collision. The
 * next suffix to try is remembered per name, so rebinding one name many
 * times stays linear. */
static const char *unique_name(Elab *E, const char *base) {
  const char *name = arena_printf("%s%s", E->prefix, base);
  if (!strmap_get(&E->names, name)) {
    strmap_put(&E->names, name, 0);
    return name;
  }
  int *next = strmap_put(&E->suffix, name, 2);
  const char *cand;
  do cand = arena_printf("%s.%d", name, (*next)++);
  while (strmap_get(&E->names, cand));
  strmap_put(&E->names, cand, 0);
  return cand;
}

/* ---------------------------------------------------------------- symbols */

/* Symbols are a stack: a repeat iteration pushes its names and pops them at
 * its end. The map gives a name's innermost symbol in constant time; popping
 * a symbol restores the one it shadowed. */
static Sym *sym_find(Elab *E, const char *name) {
  int *i = strmap_get(&E->sym_of, name);
  return i && *i >= 0 ? &E->syms[*i] : NULL;
}

static void sym_pop_scope(Elab *E) {
  while (E->nsyms > 0 && E->syms[E->nsyms - 1].scope == E->scope) {
    const Sym *s = &E->syms[--E->nsyms];
    *strmap_get(&E->sym_of, s->name) = s->shadows;
  }
}

static Sym *sym_add(Elab *E, const char *name, int node, bool fixed) {
  if (E->nsyms == E->capsyms) {
    E->capsyms = E->capsyms ? E->capsyms * 2 : 64;
    E->syms = xrealloc(E->syms, sizeof(Sym) * (size_t)E->capsyms);
  }
  int *top = strmap_put(&E->sym_of, name, -1);
  Sym *s = &E->syms[E->nsyms];
  *s = (Sym){name, node, E->scope, fixed, *top};
  *top = E->nsyms++;
  return s;
}

static Dim *dim_find(Elab *E, const char *name) {
  int *i = strmap_get(&E->dim_of, name);
  return i ? &E->dims[*i] : NULL;
}

/* ---------------------------------------------------------------- scalars */

/* Whether a dim's expression is computed from the batch. */
static bool mentions_batch(Elab *E, const Expr *e) {
  switch (e->kind) {
  case EX_IDENT: {
    const Dim *dm = dim_find(E, e->name);
    return !strcmp(e->name, "batch") || (dm && dm->per_batch);
  }
  case EX_BIN: return mentions_batch(E, e->lhs) || mentions_batch(E, e->rhs);
  case EX_NEG: return mentions_batch(E, e->lhs);
  case EX_CALL:
    for (int i = 0; i < e->nargs; i++)
      if (mentions_batch(E, e->args[i])) return true;
    return false;
  default: return false;
  }
}

static bool mentions_tensor(Elab *E, const Expr *e) {
  switch (e->kind) {
  case EX_IDENT: return !dim_find(E, e->name); /* a tensor, or unknown: reported as a tensor */
  case EX_BIN: return mentions_tensor(E, e->lhs) || mentions_tensor(E, e->rhs);
  case EX_NEG: return mentions_tensor(E, e->lhs);
  case EX_CALL:
    if (strcmp(e->name, "sqrt") && strcmp(e->name, "rsqrt") && strcmp(e->name, "exp") && strcmp(e->name, "log"))
      return true;
    for (int i = 0; i < e->nargs; i++)
      if (mentions_tensor(E, e->args[i])) return true;
    return false;
  default: return false;
  }
}

/* Integer dim arithmetic. '/' must divide exactly; '//' floors. */
static bool eval_int(Elab *E, const Expr *e, int64_t *out) {
  int64_t a, b;
  switch (e->kind) {
  case EX_NUM:
    if (!e->is_int || e->num > (double)MAX_DIM_VALUE) {
      diag_error(E->d, e->tok, "expected a whole number%s", e->is_int ? " below 2^48" : "");
      return false;
    }
    *out = (int64_t)e->num;
    return true;
  case EX_IDENT: {
    Dim *dm = dim_find(E, e->name);
    if (!dm) {
      if (sym_find(E, e->name))
        diag_error(E->d, e->tok, "'%s' is a tensor; a dim or a number is expected here", e->name);
      else
        diag_error(E->d, e->tok, "unknown dim '%s'", e->name);
      return false;
    }
    if (!dm->ok) return false;
    *out = dm->value;
    return true;
  }
  case EX_NEG:
    if (!eval_int(E, e->lhs, &a)) return false;
    *out = -a;
    return true;
  case EX_BIN:
    if (!eval_int(E, e->lhs, &a) || !eval_int(E, e->rhs, &b)) return false;
    switch (e->op) {
    case '+': *out = a + b; break;
    case '-': *out = a - b; break;
    case '*':
      if (a != 0 && (llabs(b) > MAX_DIM_VALUE / llabs(a))) {
        diag_error(E->d, e->tok, "dim arithmetic overflows (%lld * %lld)", (long long)a, (long long)b);
        return false;
      }
      *out = a * b;
      break;
    default:
      if (b == 0) {
        diag_error(E->d, e->tok, "division by zero in dim arithmetic");
        return false;
      }
      if (e->op == '/' && a % b != 0) {
        diag_error(E->d, e->tok, "%lld is not divisible by %lld (use // to round down)", (long long)a, (long long)b);
        return false;
      }
      *out = a / b;
      if (e->op == 'f' && (a % b != 0) && ((a < 0) != (b < 0))) (*out)--;
      break;
    }
    if (llabs(*out) > MAX_DIM_VALUE) {
      diag_error(E->d, e->tok, "dim value %lld is too large", (long long)*out);
      return false;
    }
    return true;
  default: diag_error(E->d, e->tok, "expected a dim expression (numbers, dims, + - * / //)"); return false;
  }
}

/* Real-valued constants: numbers, dims, + - * /, sqrt, rsqrt, exp, log. */
static bool eval_scalar(Elab *E, const Expr *e, double *out) {
  double a, b;
  switch (e->kind) {
  case EX_NUM:
    if (!isfinite(e->num)) {
      diag_error(E->d, e->tok, "number out of range");
      return false;
    }
    *out = e->num;
    return true;
  case EX_IDENT: {
    int64_t v;
    if (!eval_int(E, e, &v)) return false;
    *out = (double)v;
    return true;
  }
  case EX_NEG:
    if (!eval_scalar(E, e->lhs, &a)) return false;
    *out = -a;
    return true;
  case EX_BIN:
    if (!eval_scalar(E, e->lhs, &a) || !eval_scalar(E, e->rhs, &b)) return false;
    if ((e->op == '/' || e->op == 'f') && b == 0) {
      diag_error(E->d, e->tok, "division by zero");
      return false;
    }
    *out = e->op == '+' ? a + b : e->op == '-' ? a - b : e->op == '*' ? a * b : e->op == '/' ? a / b : floor(a / b);
    if (!isfinite(*out)) {
      diag_error(E->d, e->tok, "constant arithmetic overflows");
      return false;
    }
    return true;
  case EX_CALL:
    if (e->nargs == 1 && !e->kw[0] && eval_scalar(E, e->args[0], &a)) {
      if (strcmp(e->name, "exp") == 0) {
        *out = exp(a);
        return true;
      }
      if (a <= 0 && strcmp(e->name, "sqrt") != 0) {
        diag_error(E->d, e->tok, "%s of a non-positive number", e->name);
        return false;
      }
      if (a < 0) {
        diag_error(E->d, e->tok, "sqrt of a negative number");
        return false;
      }
      *out = strcmp(e->name, "sqrt") == 0 ? sqrt(a) : strcmp(e->name, "rsqrt") == 0 ? 1 / sqrt(a) : log(a);
      return true;
    }
    diag_error(E->d, e->tok, "expected a constant: %s takes one constant argument", e->name);
    return false;
  default: diag_error(E->d, e->tok, "expected a number"); return false;
  }
}

/* ---------------------------------------------------------------- nodes */

static Node *node_of(Elab *E, int id) { return E->g->nodes[id]; }

static Node *new_node(Elab *E, OpKind op, const Token *tok, const char *base) {
  if (E->g->n >= MAX_NODES) {
    if (!E->stop) diag_error(E->d, tok, "the model is too large: more than %d graph nodes", MAX_NODES);
    E->stop = true;
    return NULL;
  }
  Node *n = graph_add(E->g, op, unique_name(E, base));
  n->tok = tok;
  n->layer = E->layer;
  return n;
}

/* A temporary's name: the statement's target and the op, "h/gelu". */
static const char *temp_name(Elab *E, OpKind op) { return arena_printf("%s/%s", E->target, op_info[op].name); }

static Node *op_node(Elab *E, OpKind op, const Token *tok, int nin, const int *in) {
  Node *n = new_node(E, op, tok, temp_name(E, op));
  if (!n) return NULL;
  n->nin = nin;
  for (int i = 0; i < nin; i++) n->in[i] = in[i];
  if (nin) {
    Node *a = node_of(E, in[0]);
    n->shape = a->shape;
    n->dtype = a->dtype;
    memcpy(n->dimname, a->dimname, sizeof n->dimname);
  }
  return n;
}

static int eval_tensor(Elab *E, const Expr *e);

static bool want_f32(Elab *E, const Expr *at, int id, const char *what) {
  if (node_of(E, id)->dtype == DT_F32) return true;
  diag_error(E->d, at->tok, "%s: expected a f32 tensor, got i32 %s", what, shape_str(&node_of(E, id)->shape));
  return false;
}

/* Trailing-aligned broadcasting: the lower-rank operand must equal the
 * trailing dims of the other. */
static int binary_node(Elab *E, OpKind op, const Token *tok, int a, int b) {
  Node *na = node_of(E, a), *nb = node_of(E, b);
  const Shape *big = na->shape.rank >= nb->shape.rank ? &na->shape : &nb->shape;
  const Shape *small = big == &na->shape ? &nb->shape : &na->shape;
  int off = big->rank - small->rank;
  for (int i = 0; i < small->rank; i++) {
    if (big->d[off + i] != small->d[i]) {
      diag_error(E->d, tok, "%s: shapes %s and %s do not broadcast (trailing dims must be equal)", op_info[op].name,
                 shape_str(&na->shape), shape_str(&nb->shape));
      return POISON;
    }
  }
  if (na->dtype != DT_F32 || nb->dtype != DT_F32) {
    diag_error(E->d, tok, "%s: expected f32 operands, got %s and %s", op_info[op].name, dtype_name(na->dtype),
               dtype_name(nb->dtype));
    return POISON;
  }
  int in[2] = {a, b};
  Node *n = op_node(E, op, tok, 2, in);
  if (!n) return POISON;
  const Node *from = big == &na->shape ? na : nb;
  n->shape = from->shape;
  memcpy(n->dimname, from->dimname, sizeof n->dimname);
  return n->id;
}

static int scale_node(Elab *E, const Token *tok, int x, double mul, double add) {
  if (!want_f32(E, &(Expr){.tok = tok}, x, "arithmetic")) return POISON;
  Node *n = op_node(E, OP_SCALE, tok, 1, &x);
  if (!n) return POISON;
  n->f[0] = mul;
  n->f[1] = add;
  return n->id;
}

static int eval_binary(Elab *E, const Expr *e) {
  bool lt = mentions_tensor(E, e->lhs), rt = mentions_tensor(E, e->rhs);
  if (lt && rt) {
    int a = eval_tensor(E, e->lhs), b = eval_tensor(E, e->rhs);
    if (a < 0 || b < 0) return POISON;
    OpKind op = e->op == '+' ? OP_ADD : e->op == '-' ? OP_SUB : e->op == '*' ? OP_MUL : OP_DIV;
    if (e->op == 'f') {
      diag_error(E->d, e->tok, "'//' is for dims; use '/' between tensors");
      return POISON;
    }
    return binary_node(E, op, e->tok, a, b);
  }
  if (!lt && !rt) {
    diag_error(E->d, e->tok, "this expression is a constant; a tensor is expected here");
    return POISON;
  }
  double c;
  if (!eval_scalar(E, lt ? e->rhs : e->lhs, &c)) return POISON;
  int x = eval_tensor(E, lt ? e->lhs : e->rhs);
  if (x < 0) return POISON;
  switch (e->op) {
  case '+': return scale_node(E, e->tok, x, 1, c);
  case '-': return lt ? scale_node(E, e->tok, x, 1, -c) : scale_node(E, e->tok, x, -1, c);
  case '*': return scale_node(E, e->tok, x, c, 0);
  case '/':
    if (!lt) {
      diag_error(E->d, e->tok, "a constant divided by a tensor is not supported; use rsqrt or div");
      return POISON;
    }
    if (c == 0) {
      diag_error(E->d, e->tok, "division by zero");
      return POISON;
    }
    return scale_node(E, e->tok, x, 1 / c, 0);
  default: diag_error(E->d, e->tok, "'//' is for dims; use '/' with tensors"); return POISON;
  }
}

/* ---------------------------------------------------------------- builtins */

typedef struct Call {
  Elab *E;
  const Expr *e;
} Call;

static bool nargs_ok(Call *c, int lo, int hi, const char *usage) {
  int n = 0;
  for (int i = 0; i < c->e->nargs; i++) n += c->e->kw[i] == NULL;
  if (n >= lo && n <= hi) return true;
  diag_error(c->E->d, c->e->tok, "%s takes %s (got %d argument%s)", c->e->name, usage, n, n == 1 ? "" : "s");
  return false;
}

/* The value of keyword `kw`, or NULL. Unknown keywords are errors. */
static const Expr *kwarg(Call *c, const char *kw) {
  for (int i = 0; i < c->e->nargs; i++)
    if (c->e->kw[i] && strcmp(c->e->kw[i], kw) == 0) return c->e->args[i];
  return NULL;
}

static bool kwargs_ok(Call *c, const char *allowed) {
  for (int i = 0; i < c->e->nargs; i++) {
    const char *k = c->e->kw[i];
    if (!k) continue;
    bool found = false;
    for (const char *p = allowed; *p && !found;) {
      size_t len = strcspn(p, ",");
      if (strlen(k) == len && strncmp(p, k, len) == 0) found = true;
      p += len + (p[len] == ',');
    }
    if (!found) {
      diag_error(c->E->d, c->e->kw_toks[i], "%s has no argument named '%s'%s%s", c->e->name, k,
                 *allowed ? "; it takes: " : "", allowed);
      return false;
    }
  }
  return true;
}

static int tensor_arg(Call *c, int i) {
  int seen = 0;
  for (int k = 0; k < c->e->nargs; k++) {
    if (c->e->kw[k]) continue;
    if (seen++ == i) return eval_tensor(c->E, c->e->args[k]);
  }
  return POISON;
}

static const Expr *pos_arg(Call *c, int i) {
  int seen = 0;
  for (int k = 0; k < c->e->nargs; k++)
    if (!c->e->kw[k] && seen++ == i) return c->e->args[k];
  return NULL;
}

static double eps_arg(Call *c, double dflt) {
  const Expr *x = kwarg(c, "eps");
  double v = dflt;
  if (x && !eval_scalar(c->E, x, &v)) return -1;
  if (v <= 0) {
    diag_error(c->E->d, x ? x->tok : c->e->tok, "%s: eps must be positive", c->e->name);
    return -1;
  }
  return v;
}

/* Resolves a dim argument of a reduction: a dim name of the tensor or an
 * index (negative counts from the end). */
static int axis_arg(Call *c, const Expr *a, const Node *x) {
  int r = x->shape.rank;
  if (a->kind == EX_IDENT && !sym_find(c->E, a->name)) {
    int found = -1, count = 0;
    for (int i = 0; i < r; i++)
      if (x->dimname[i] && strcmp(x->dimname[i], a->name) == 0) found = i, count++;
    if (count == 1) return found;
    if (count > 1) {
      diag_error(c->E->d, a->tok, "%s: '%s' names %d dims of %s; give the axis as a number", c->e->name, a->name, count,
                 shape_str(&x->shape));
      return -1;
    }
    diag_error(c->E->d, a->tok, "%s: the tensor has no dim named '%s'", c->e->name, a->name);
    return -1;
  }
  int64_t v;
  if (a->kind != EX_NUM && a->kind != EX_NEG) {
    diag_error(c->E->d, a->tok, "%s: expected a dim name or an axis number", c->e->name);
    return -1;
  }
  if (!eval_int(c->E, a, &v)) return -1;
  if (v < -r || v >= r) {
    diag_error(c->E->d, a->tok, "%s: axis %lld is out of range for a tensor of rank %d", c->e->name, (long long)v, r);
    return -1;
  }
  return (int)(v < 0 ? v + r : v);
}

static int unary_builtin(Call *c, OpKind op) {
  if (!nargs_ok(c, 1, 1, "one tensor") || !kwargs_ok(c, "")) return POISON;
  int x = tensor_arg(c, 0);
  if (x < 0 || !want_f32(c->E, c->e, x, c->e->name)) return POISON;
  Node *n = op_node(c->E, op, c->e->tok, 1, &x);
  return n ? n->id : POISON;
}

static int reduce_builtin(Call *c, OpKind op) {
  if (!nargs_ok(c, 2, 2, "a tensor and a dim") || !kwargs_ok(c, "")) return POISON;
  int x = tensor_arg(c, 0);
  if (x < 0 || !want_f32(c->E, c->e, x, c->e->name)) return POISON;
  Node *nx = node_of(c->E, x);
  if (nx->shape.rank == 0) {
    diag_error(c->E->d, c->e->tok, "%s of a scalar", c->e->name);
    return POISON;
  }
  int axis = axis_arg(c, pos_arg(c, 1), nx);
  if (axis < 0) return POISON;
  Node *n = op_node(c->E, op, c->e->tok, 1, &x);
  if (!n) return POISON;
  n->i[0] = axis;
  for (int i = axis; i + 1 < nx->shape.rank; i++) {
    n->shape.d[i] = nx->shape.d[i + 1];
    n->dimname[i] = nx->dimname[i + 1];
  }
  n->shape.rank--;
  n->dimname[n->shape.rank] = NULL;
  return n->id;
}

static int softmax_builtin(Call *c) {
  if (!nargs_ok(c, 1, 2, "a tensor and optionally 'causal'") || !kwargs_ok(c, "causal")) return POISON;
  int64_t causal = 0;
  const Expr *flag = pos_arg(c, 1);
  if (flag) {
    if (flag->kind != EX_IDENT || strcmp(flag->name, "causal") != 0) {
      diag_error(c->E->d, flag->tok, "softmax: the second argument can only be 'causal'");
      return POISON;
    }
    causal = 1;
  }
  if (kwarg(c, "causal") && !eval_int(c->E, kwarg(c, "causal"), &causal)) return POISON;
  int x = tensor_arg(c, 0);
  if (x < 0 || !want_f32(c->E, c->e, x, "softmax")) return POISON;
  Node *nx = node_of(c->E, x);
  int r = nx->shape.rank;
  if (r < 1 || (causal && (r < 2 || nx->shape.d[r - 1] != nx->shape.d[r - 2]))) {
    diag_error(c->E->d, c->e->tok, "softmax%s: needs %s, got %s", causal ? " (causal)" : "",
               causal ? "the last two dims equal (query and key positions)" : "at least one dim",
               shape_str(&nx->shape));
    return POISON;
  }
  Node *n = op_node(c->E, OP_SOFTMAX, c->e->tok, 1, &x);
  if (!n) return POISON;
  n->i[0] = causal != 0;
  return n->id;
}

/* layernorm(x, g, b) and rmsnorm(x, g): over the last dim; g, b have its size. */
static int norm_builtin(Call *c, OpKind op) {
  int k = op == OP_LAYERNORM ? 3 : 2;
  if (!nargs_ok(c, k, k, op == OP_LAYERNORM ? "x, gain and bias" : "x and gain") || !kwargs_ok(c, "eps")) return POISON;
  int in[3];
  for (int i = 0; i < k; i++)
    if ((in[i] = tensor_arg(c, i)) < 0 || !want_f32(c->E, c->e, in[i], c->e->name)) return POISON;
  Node *x = node_of(c->E, in[0]);
  if (x->shape.rank < 1) {
    diag_error(c->E->d, c->e->tok, "%s of a scalar", c->e->name);
    return POISON;
  }
  int64_t h = x->shape.d[x->shape.rank - 1];
  for (int i = 1; i < k; i++) {
    Node *p = node_of(c->E, in[i]);
    if (p->shape.rank != 1 || p->shape.d[0] != h) {
      diag_error(c->E->d, pos_arg(c, i)->tok, "%s: %s must have shape [%lld] (the last dim of x), not %s", c->e->name,
                 i == 1 ? "the gain" : "the bias", (long long)h, shape_str(&p->shape));
      return POISON;
    }
  }
  double eps = eps_arg(c, 1e-5);
  if (eps < 0) return POISON;
  Node *n = op_node(c->E, op, c->e->tok, k, in);
  if (!n) return POISON;
  n->f[0] = eps;
  return n->id;
}

static int embed_builtin(Call *c) {
  if (!nargs_ok(c, 2, 2, "a table and integer ids") || !kwargs_ok(c, "")) return POISON;
  int t = tensor_arg(c, 0), ids = tensor_arg(c, 1);
  if (t < 0 || ids < 0) return POISON;
  Node *nt = node_of(c->E, t), *ni = node_of(c->E, ids);
  if (nt->shape.rank != 2 || nt->dtype != DT_F32) {
    diag_error(c->E->d, pos_arg(c, 0)->tok, "embed: the table must be a f32 [vocab, hidden] tensor, not %s %s",
               dtype_name(nt->dtype), shape_str(&nt->shape));
    return POISON;
  }
  if (ni->dtype != DT_I32 || ni->shape.rank + 1 > MAXRANK) {
    diag_error(c->E->d, pos_arg(c, 1)->tok, "embed: the ids must be an i32 tensor");
    return POISON;
  }
  int in[2] = {t, ids};
  Node *n = op_node(c->E, OP_EMBED, c->e->tok, 2, in);
  if (!n) return POISON;
  n->shape = ni->shape;
  memcpy(n->dimname, ni->dimname, sizeof n->dimname);
  n->shape.d[n->shape.rank] = nt->shape.d[1];
  n->dimname[n->shape.rank] = nt->dimname[1];
  n->shape.rank++;
  return n->id;
}

static int loss_builtin(Call *c, OpKind op) {
  if (!nargs_ok(c, 2, 2, op == OP_XENT ? "logits and integer labels" : "a prediction and a target") ||
      !kwargs_ok(c, ""))
    return POISON;
  int a = tensor_arg(c, 0), b = tensor_arg(c, 1);
  if (a < 0 || b < 0 || !want_f32(c->E, c->e, a, c->e->name)) return POISON;
  Node *na = node_of(c->E, a), *nb = node_of(c->E, b);
  bool ok;
  if (op == OP_XENT) {
    ok = nb->dtype == DT_I32 && na->shape.rank == nb->shape.rank + 1;
    for (int i = 0; ok && i < nb->shape.rank; i++) ok = na->shape.d[i] == nb->shape.d[i];
    if (!ok) {
      diag_error(c->E->d, c->e->tok,
                 "cross_entropy: logits [..., classes] and i32 labels [...] must agree, got %s %s and %s %s",
                 dtype_name(na->dtype), shape_str(&na->shape), dtype_name(nb->dtype), shape_str(&nb->shape));
      return POISON;
    }
  } else if (!shape_eq(&na->shape, &nb->shape) || nb->dtype != DT_F32) {
    diag_error(c->E->d, c->e->tok, "mse: prediction and target must have the same shape, got %s and %s",
               shape_str(&na->shape), shape_str(&nb->shape));
    return POISON;
  }
  if (na->shape.rank == 0) {
    diag_error(c->E->d, c->e->tok, "%s: the prediction must have at least one dim", c->e->name);
    return POISON;
  }
  int in[2] = {a, b};
  Node *n = op_node(c->E, op, c->e->tok, 2, in);
  if (!n) return POISON;
  n->shape.rank = 0;
  memset(n->dimname, 0, sizeof n->dimname);
  return n->id;
}

static int reshape_builtin(Call *c) {
  if (!nargs_ok(c, 2, 2, "a tensor and a shape [d0, d1, ...]") || !kwargs_ok(c, "")) return POISON;
  const Expr *list = pos_arg(c, 1);
  if (list->kind != EX_LIST || list->nargs > MAXRANK) {
    diag_error(c->E->d, list->tok, "reshape: expected a shape like [batch, seq, hidden] (at most %d dims)", MAXRANK);
    return POISON;
  }
  int x = tensor_arg(c, 0);
  if (x < 0) return POISON;
  Shape s = {.rank = list->nargs};
  for (int i = 0; i < s.rank; i++) {
    if (!eval_int(c->E, list->args[i], &s.d[i])) return POISON;
    if (s.d[i] <= 0) {
      diag_error(c->E->d, list->args[i]->tok, "reshape: dims must be positive");
      return POISON;
    }
  }
  Node *nx = node_of(c->E, x);
  if (shape_numel(&s) != shape_numel(&nx->shape)) {
    diag_error(c->E->d, c->e->tok, "reshape: %s has %lld elements but %s has %lld", shape_str(&nx->shape),
               (long long)shape_numel(&nx->shape), shape_str(&s), (long long)shape_numel(&s));
    return POISON;
  }
  Node *n = op_node(c->E, OP_RESHAPE, c->e->tok, 1, &x);
  if (!n) return POISON;
  n->shape = s;
  for (int i = 0; i < s.rank; i++) n->dimname[i] = list->args[i]->kind == EX_IDENT ? list->args[i]->name : NULL;
  return n->id;
}

/* ---------------------------------------------------------------- einsum */

/* One label of an einsum spec: the word and where it stands in the string. */
typedef struct Label {
  const char *word;
  int len;
  int col; /* offset into the string literal */
} Label;

/* A token pointing at part of a string literal, so carets land on a label. */
static const Token *sub_token(Elab *E, const Token *str, int off, int len) {
  (void)E;
  Token *t = arena_alloc(sizeof(Token));
  *t = *str;
  t->p = str->p + 1 + off;
  t->col = str->col + 1 + off;
  t->len = len > 0 ? len : 1;
  return t;
}

/* Does any part of the spec hold two labels separated by a space? Then
 * labels are words ("b s h"); otherwise every letter is a label ("bsh"). */
static bool spec_spaced(const char *s) {
  for (const char *p = s; *p; p++)
    if (*p == ' ' && p > s && p[1] && p[-1] != ' ' && p[-1] != ',' && p[-1] != '>' && p[1] != ' ' && p[1] != ',' &&
        p[1] != '-')
      return true;
  return false;
}

/* Splits one operand's part of the spec into labels. */
static int split_labels(const char *s, int off, int len, bool spaced, Label *out, int max) {
  int n = 0;
  for (int i = 0; i < len;) {
    if (s[off + i] == ' ') {
      i++;
      continue;
    }
    int j = i;
    if (spaced)
      while (j < len && s[off + j] != ' ') j++;
    else
      j = i + 1;
    if (n < max + 1) out[n] = (Label){s + off + i, j - i, off + i};
    n++;
    i = j;
  }
  return n;
}

static bool label_eq(const Label *a, const Label *b) {
  return a->len == b->len && memcmp(a->word, b->word, (size_t)a->len) == 0;
}

static int einsum_builtin(Call *c) {
  Elab *E = c->E;
  if (!nargs_ok(c, 2, 3, "a spec string and one or two tensors") || !kwargs_ok(c, "")) return POISON;
  const Expr *spec = pos_arg(c, 0);
  if (spec->kind != EX_STR) {
    diag_error(E->d, spec->tok, "einsum: the first argument must be a spec string like \"b s h, h f -> b s f\"");
    return POISON;
  }
  int nt = 0;
  for (int i = 0; i < c->e->nargs; i++) nt += !c->e->kw[i];
  nt -= 1;
  int in[2];
  for (int i = 0; i < nt; i++)
    if ((in[i] = tensor_arg(c, i + 1)) < 0 || !want_f32(E, c->e, in[i], "einsum")) return POISON;

  /* split "A, B -> C" */
  const char *s = spec->str;
  const char *arrow = strstr(s, "->");
  if (!arrow) {
    diag_error(E->d, spec->tok, "einsum: the spec needs '->' before the output labels");
    return POISON;
  }
  int parts[3][2], np = 0, start = 0, arrowpos = (int)(arrow - s);
  for (int i = 0; i <= arrowpos; i++) {
    if (i == arrowpos || s[i] == ',') {
      if (np < 2) parts[np][0] = start, parts[np][1] = i - start;
      np++;
      start = i + 1;
    }
  }
  if (np != nt) {
    diag_error(E->d, spec->tok, "einsum: the spec names %d operand%s but %d tensor%s given", np, np == 1 ? "" : "s", nt,
               nt == 1 ? " is" : "s are");
    return POISON;
  }
  parts[np][0] = arrowpos + 2;
  parts[np][1] = (int)strlen(s) - arrowpos - 2;

  Label lab[3][MAXRANK + 1];
  int nl[3];
  bool spaced = spec_spaced(s);
  for (int k = 0; k <= nt; k++) {
    nl[k] = split_labels(s, parts[k][0], parts[k][1], spaced, lab[k], MAXRANK);
    int want = k < nt ? node_of(E, in[k])->shape.rank : -1;
    if (nl[k] > MAXRANK || (k < nt && nl[k] != want)) {
      const Token *at = sub_token(E, spec->tok, parts[k][0], parts[k][1]);
      if (k < nt)
        diag_error(E->d, at, "einsum: operand %d has %d label%s but its tensor has rank %d", k + 1, nl[k],
                   nl[k] == 1 ? "" : "s", want);
      else
        diag_error(E->d, at, "einsum: the output has %d labels, more than %d", nl[k], MAXRANK);
      return POISON;
    }
    for (int i = 0; i < nl[k]; i++) {
      for (int j = 0; j < i; j++) {
        if (label_eq(&lab[k][i], &lab[k][j])) {
          diag_error(E->d, sub_token(E, spec->tok, lab[k][i].col, lab[k][i].len),
                     "einsum: label '%.*s' appears twice in one %s", lab[k][i].len, lab[k][i].word,
                     k < nt ? "operand" : "output");
          return POISON;
        }
      }
    }
  }

  /* Give each distinct label a letter and a size; sizes must agree. */
  Label uniq[3 * MAXRANK];
  int64_t size[3 * MAXRANK];
  const char *dname[3 * MAXRANK];
  int nu = 0;
  char letters[3][MAXRANK + 1] = {{0}};
  for (int k = 0; k <= nt; k++) {
    for (int i = 0; i < nl[k]; i++) {
      int u = 0;
      while (u < nu && !label_eq(&uniq[u], &lab[k][i])) u++;
      const Token *at = sub_token(E, spec->tok, lab[k][i].col, lab[k][i].len);
      if (k < nt) {
        Node *x = node_of(E, in[k]);
        if (u == nu) {
          uniq[nu] = lab[k][i];
          size[nu] = x->shape.d[i];
          dname[nu] = x->dimname[i];
          nu++;
        } else if (size[u] != x->shape.d[i]) {
          diag_error(E->d, at, "einsum: label '%.*s' has size %lld in %s but %lld in %s", lab[k][i].len, lab[k][i].word,
                     (long long)size[u], node_of(E, in[0])->name, (long long)x->shape.d[i], x->name);
          return POISON;
        }
      } else if (u == nu) {
        diag_error(E->d, at, "einsum: output label '%.*s' does not appear in any operand", lab[k][i].len,
                   lab[k][i].word);
        return POISON;
      }
      letters[k][i] = (char)(u < 26 ? 'a' + u : 'A' + u - 26);
    }
  }
  /* A label in one operand only must be kept; with one operand all must be. */
  for (int k = 0; k < nt; k++) {
    for (int i = 0; i < nl[k]; i++) {
      bool in_out = strchr(letters[nt], letters[k][i]) != NULL;
      bool in_other = nt == 2 && strchr(letters[1 - k], letters[k][i]) != NULL;
      if (!in_out && !in_other) {
        diag_error(E->d, sub_token(E, spec->tok, lab[k][i].col, lab[k][i].len),
                   "einsum: label '%.*s' is summed away inside one operand; sum it with sum() first", lab[k][i].len,
                   lab[k][i].word);
        return POISON;
      }
    }
  }
  Node *n = op_node(E, OP_EINSUM, c->e->tok, nt, in);
  if (!n) return POISON;
  for (int k = 0; k <= nt; k++) memcpy(n->labels[k], letters[k], sizeof letters[k]);
  n->shape.rank = nl[nt];
  for (int i = 0; i < nl[nt]; i++) {
    int u = letters[nt][i] >= 'a' ? letters[nt][i] - 'a' : letters[nt][i] - 'A' + 26;
    n->shape.d[i] = size[u];
    n->dimname[i] = dname[u];
  }
  return n->id;
}

/* dispatch, combine = moe_gate(logits, topk, capacity)
 * logits [..., experts] -> two tensors [..., experts, capacity]. */
static bool moe_gate(Elab *E, const Stmt *st, const Expr *e, int out[2]) {
  Call cc = {E, e}, *c = &cc;
  if (st->nnames != 2) {
    diag_error(E->d, st->tok, "moe_gate yields two tensors: write 'dispatch, combine = moe_gate(...)'");
    return false;
  }
  if (!nargs_ok(c, 1, 3, "logits, topk and capacity") || !kwargs_ok(c, "topk,capacity")) return false;
  const Expr *ke = pos_arg(c, 1) ? pos_arg(c, 1) : kwarg(c, "topk");
  const Expr *ce = pos_arg(c, 2) ? pos_arg(c, 2) : kwarg(c, "capacity");
  if (!ke || !ce) {
    diag_error(E->d, e->tok, "moe_gate needs topk and capacity");
    return false;
  }
  int64_t k, cap;
  if (!eval_int(E, ke, &k) || !eval_int(E, ce, &cap)) return false;
  int x = tensor_arg(c, 0);
  if (x < 0 || !want_f32(E, e, x, "moe_gate")) return false;
  Node *nx = node_of(E, x);
  int r = nx->shape.rank;
  if (r < 1 || r + 1 > MAXRANK) {
    diag_error(E->d, e->tok, "moe_gate: logits must be [..., experts], got %s", shape_str(&nx->shape));
    return false;
  }
  if (k < 1 || k > nx->shape.d[r - 1] || cap < 1) {
    diag_error(E->d, e->tok,
               "moe_gate: need 1 <= topk <= experts (%lld) and capacity >= 1, got topk %lld, capacity %lld",
               (long long)nx->shape.d[r - 1], (long long)k, (long long)cap);
    return false;
  }
  for (int j = 0; j < 2; j++) {
    E->target = st->names[j];
    Node *n = op_node(E, j == 0 ? OP_MOE_DISPATCH : OP_MOE_COMBINE, e->tok, 1, &x);
    if (!n) return false;
    n->i[0] = k;
    n->shape.d[r] = cap;
    n->dimname[r] = ce->kind == EX_IDENT ? ce->name : NULL;
    n->shape.rank = r + 1;
    out[j] = n->id;
  }
  return true;
}

static int eval_call(Elab *E, const Expr *e) {
  Call c = {E, e};
  static const struct {
    const char *name;
    OpKind op;
  } unary[] = {
      {"gelu", OP_GELU}, {"relu", OP_RELU}, {"silu", OP_SILU}, {"tanh", OP_TANH}, {"exp", OP_EXP}, {"rsqrt", OP_RSQRT},
  };
  for (size_t i = 0; i < sizeof unary / sizeof unary[0]; i++)
    if (strcmp(e->name, unary[i].name) == 0) return unary_builtin(&c, unary[i].op);
  if (strcmp(e->name, "einsum") == 0) return einsum_builtin(&c);
  if (strcmp(e->name, "sum") == 0) return reduce_builtin(&c, OP_SUM);
  if (strcmp(e->name, "mean") == 0) return reduce_builtin(&c, OP_MEAN);
  if (strcmp(e->name, "max") == 0) return reduce_builtin(&c, OP_MAX);
  if (strcmp(e->name, "softmax") == 0) return softmax_builtin(&c);
  if (strcmp(e->name, "layernorm") == 0) return norm_builtin(&c, OP_LAYERNORM);
  if (strcmp(e->name, "rmsnorm") == 0) return norm_builtin(&c, OP_RMSNORM);
  if (strcmp(e->name, "embed") == 0) return embed_builtin(&c);
  if (strcmp(e->name, "cross_entropy") == 0) return loss_builtin(&c, OP_XENT);
  if (strcmp(e->name, "mse") == 0) return loss_builtin(&c, OP_MSE);
  if (strcmp(e->name, "reshape") == 0) return reshape_builtin(&c);
  if (strcmp(e->name, "moe_gate") == 0) {
    diag_error(E->d, e->tok, "moe_gate yields two tensors: write 'dispatch, combine = moe_gate(...)'");
    return POISON;
  }
  diag_error(E->d, e->tok,
             "unknown function '%s' (ops: einsum, gelu, relu, silu, tanh, exp, rsqrt, sum, mean, max, "
             "softmax, layernorm, rmsnorm, embed, cross_entropy, mse, moe_gate, reshape)",
             e->name);
  return POISON;
}

static int eval_tensor(Elab *E, const Expr *e) {
  if (E->stop) return POISON;
  switch (e->kind) {
  case EX_IDENT: {
    Sym *s = sym_find(E, e->name);
    if (s) return s->node; /* may be POISON: already reported */
    if (dim_find(E, e->name))
      diag_error(E->d, e->tok, "'%s' is a dim, not a tensor", e->name);
    else
      diag_error(E->d, e->tok, "unknown tensor '%s'", e->name);
    return POISON;
  }
  case EX_BIN: return eval_binary(E, e);
  case EX_NEG: {
    int x = eval_tensor(E, e->lhs);
    return x < 0 ? POISON : scale_node(E, e->tok, x, -1, 0);
  }
  case EX_CALL: return eval_call(E, e);
  case EX_NUM: diag_error(E->d, e->tok, "a number is not a tensor"); return POISON;
  case EX_STR: diag_error(E->d, e->tok, "a string is not a tensor"); return POISON;
  case EX_LIST: diag_error(E->d, e->tok, "a list is not a tensor"); return POISON;
  }
  return POISON;
}

/* ---------------------------------------------------------------- statements */

/* --set wins over the preset, which wins over the declared default; both
 * are marked used so that an override of a real dim never reads as unknown. */
static int64_t *override_for(Elab *E, const char *name) {
  int64_t *v = NULL;
  for (int i = 0; i < E->npreset; i++)
    if (strcmp(E->preset[i].name, name) == 0) {
      E->preset[i].used = true;
      v = &E->preset[i].value;
    }
  for (int i = 0; i < E->opt->nsets; i++)
    if (strcmp(E->opt->sets[i].name, name) == 0) {
      E->opt->sets[i].used = true;
      v = &E->opt->sets[i].value;
    }
  return v;
}

static void stmt_dim(Elab *E, const Stmt *s) {
  if (E->scope || E->prefix[0]) {
    diag_error(E->d, s->tok, "dims belong at the top level of the file, not inside a block");
    return;
  }
  for (int i = 0; i < s->nnames; i++) {
    const char *name = s->names[i];
    if (dim_find(E, name) || sym_find(E, name)) {
      diag_error(E->d, s->name_toks[i], "'%s' is already defined", name);
      continue;
    }
    if (E->ndims == E->capdims) {
      E->capdims = E->capdims ? E->capdims * 2 : 32;
      E->dims = xrealloc(E->dims, sizeof(Dim) * (size_t)E->capdims);
    }
    *strmap_put(&E->dim_of, name, 0) = E->ndims;
    Dim *dm = &E->dims[E->ndims++];
    *dm = (Dim){name, 0, false, false};
    int64_t *ov = override_for(E, name);
    if (ov)
      dm->value = *ov, dm->ok = true;
    else
      dm->ok = eval_int(E, s->exprs[i], &dm->value), dm->per_batch = mentions_batch(E, s->exprs[i]);
    if (dm->ok && dm->value < 0) {
      diag_error(E->d, s->name_toks[i], "dim '%s' must not be negative, got %lld%s", name, (long long)dm->value,
                 ov ? " (from --set or a preset)" : "");
      dm->ok = false;
    }
  }
}

/* Initialisers: zeros, ones, const(v), normal(std), uniform(lo, hi).
 * Data sources: tokens(vocab), next_tokens(vocab), classes(n), normal(std),
 * uniform(lo, hi). */
static bool init_expr(Elab *E, const Expr *e, bool input, Node *n) {
  const char *name = e->kind == EX_IDENT ? e->name : e->kind == EX_CALL ? e->name : NULL;
  int nargs = e->kind == EX_CALL ? e->nargs : 0;
  static const struct {
    const char *name;
    InitKind kind;
    int nargs;
    bool input, integer;
  } tab[] = {
      {"zeros", INIT_ZEROS, 0, false, false},          {"ones", INIT_ONES, 0, false, false},
      {"const", INIT_CONST, 1, false, false},          {"normal", INIT_NORMAL, 1, false, false},
      {"uniform", INIT_UNIFORM, 2, false, false},      {"tokens", SRC_TOKENS, 1, true, true},
      {"next_tokens", SRC_NEXT_TOKENS, 1, true, true}, {"classes", SRC_CLASSES, 1, true, true},
      {"normal", SRC_NORMAL, 1, true, false},          {"uniform", SRC_UNIFORM, 2, true, false},
  };
  for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++) {
    if (tab[i].input != input || strcmp(tab[i].name, name) != 0) continue;
    if (nargs != tab[i].nargs) {
      diag_error(E->d, e->tok, "%s takes %d argument%s", name, tab[i].nargs, tab[i].nargs == 1 ? "" : "s");
      return false;
    }
    if (tab[i].integer != (n->dtype == DT_I32)) {
      diag_error(E->d, e->tok, "%s gives %s values but the input is %s", name, tab[i].integer ? "i32" : "f32",
                 dtype_name(n->dtype));
      return false;
    }
    double v[2] = {0, 0};
    for (int k = 0; k < nargs; k++) {
      if (e->kw[k] || !eval_scalar(E, e->args[k], &v[k])) {
        if (e->kw[k]) diag_error(E->d, e->args[k]->tok, "%s takes no named arguments", name);
        return false;
      }
    }
    if ((tab[i].integer && (v[0] < 1 || v[0] != floor(v[0]) || v[0] > 65536)) ||
        ((tab[i].kind == INIT_NORMAL || tab[i].kind == SRC_NORMAL) && v[0] < 0)) {
      diag_error(E->d, e->tok, tab[i].integer ? "%s needs a whole number from 1 to 65536" : "%s needs std >= 0", name);
      return false;
    }
    n->init = tab[i].kind;
    n->init_a = v[0];
    n->init_b = v[1];
    return true;
  }
  diag_error(E->d, e->tok,
             input ? "unknown data source (tokens(vocab), next_tokens(vocab), classes(n), normal(std), uniform(lo, hi))"
                   : "unknown initialiser (zeros, ones, const(v), normal(std), uniform(lo, hi))");
  return false;
}

static void stmt_decl(Elab *E, const Stmt *s) {
  bool input = s->kind == ST_INPUT;
  const char *name = s->names[0];
  const Token *at = s->name_toks[0];
  Sym *old = sym_find(E, name);
  if ((old && old->scope == E->scope) || dim_find(E, name)) {
    diag_error(E->d, at, "'%s' is already defined", name);
    return;
  }
  if (s->ndims > MAXRANK) {
    diag_error(E->d, at, "'%s' has %d dims; at most %d are supported", name, s->ndims, MAXRANK);
    return;
  }
  Shape shape = {.rank = s->ndims};
  const char *dn[MAXRANK] = {0};
  bool ok = true;
  for (int i = 0; i < s->ndims; i++) {
    if (!eval_int(E, s->dims[i], &shape.d[i])) {
      ok = false;
      continue;
    }
    if (shape.d[i] < 1) {
      diag_error(E->d, s->dims[i]->tok, "dims must be at least 1, got %lld", (long long)shape.d[i]);
      ok = false;
    }
    dn[i] = s->dims[i]->kind == EX_IDENT ? s->dims[i]->name : NULL;
  }
  int64_t total = 1;
  for (int i = 0; ok && i < s->ndims; i++)
    if (__builtin_mul_overflow(total, shape.d[i], &total) || total > MAX_DIM_VALUE) {
      diag_error(E->d, at, "'%s' has %s elements: more than 2^48", name, shape_str(&shape));
      ok = false;
    }
  DType dt = DT_F32;
  if (s->dtype) {
    if (strcmp(s->dtype, "i32") == 0)
      dt = DT_I32;
    else if (strcmp(s->dtype, "f32") != 0) {
      diag_error(E->d, s->dtype_tok, "unknown dtype '%s' (f32 or i32)", s->dtype);
      ok = false;
    }
  }
  Node *n = ok ? new_node(E, input ? OP_INPUT : OP_PARAM, at, name) : NULL;
  if (n) {
    n->shape = shape;
    memcpy(n->dimname, dn, sizeof dn);
    n->dtype = dt;
    if (s->init) {
      ok = init_expr(E, s->init, input, n);
    } else if (dt == DT_I32) {
      diag_error(E->d, at, "i32 input '%s' needs a source: ~ tokens(vocab), ~ next_tokens(vocab) or ~ classes(n)",
                 name);
      ok = false;
    } else {
      n->init = input ? SRC_NORMAL : INIT_NORMAL;
      n->init_a = input ? 1.0 : 0.02;
    }
  }
  sym_add(E, name, ok && n ? n->id : POISON, true);
}

static void elab_block(Elab *E, Stmt **stmts, int n);

static void stmt_assign(Elab *E, const Stmt *s) {
  for (int i = 0; i < s->nnames; i++) {
    Sym *old = sym_find(E, s->names[i]);
    if ((old && old->fixed) || dim_find(E, s->names[i])) {
      diag_error(E->d, s->name_toks[i], "cannot assign to %s '%s'",
                 dim_find(E, s->names[i]) ? "dim" : "declared tensor", s->names[i]);
      return;
    }
  }
  E->target = s->names[0];
  int before = E->g->n;
  int out[2] = {POISON, POISON};
  const Expr *e = s->exprs[0];
  if (e->kind == EX_CALL && strcmp(e->name, "moe_gate") == 0) {
    if (!moe_gate(E, s, e, out)) out[0] = out[1] = POISON;
  } else if (s->nnames != 1) {
    diag_error(E->d, s->tok, "only moe_gate yields several tensors; assign one name here");
  } else {
    out[0] = eval_tensor(E, e);
  }
  for (int id = before; id < E->g->n; id++) { /* element counts must stay far from overflow */
    int64_t total = 1;
    bool over = false;
    for (int k = 0; k < E->g->nodes[id]->shape.rank; k++)
      over |= __builtin_mul_overflow(total, E->g->nodes[id]->shape.d[k], &total) || total > MAX_DIM_VALUE;
    if (over) {
      diag_error(E->d, s->tok, "'%s' would have %s elements: more than 2^48", s->names[0],
                 shape_str(&E->g->nodes[id]->shape));
      out[0] = out[1] = POISON;
      break;
    }
  }
  for (int i = 0; i < s->nnames && i < 2; i++) {
    /* The node a name is bound to takes the name itself when it is fresh. */
    if (out[i] >= before) node_of(E, out[i])->name = unique_name(E, s->names[i]);
    Sym *old = sym_find(E, s->names[i]);
    if (old)
      old->node = out[i];
    else
      sym_add(E, s->names[i], out[i], false);
  }
}

/* When a block cannot be elaborated, the names it would define are bound to
 * the poison value, so later uses do not report them as unknown. */
static void poison_block(Elab *E, Stmt **stmts, int n) {
  for (int i = 0; i < n; i++) {
    const Stmt *s = stmts[i];
    if (s->kind == ST_ASSIGN || s->kind == ST_INPUT || s->kind == ST_PARAM)
      for (int k = 0; k < s->nnames; k++)
        if (!sym_find(E, s->names[k])) sym_add(E, s->names[k], POISON, false);
    if (s->kind == ST_REPEAT || s->kind == ST_IF) {
      poison_block(E, s->body, s->nbody);
      poison_block(E, s->orelse, s->norelse);
    }
  }
}

static void stmt_repeat(Elab *E, const Stmt *s) {
  int64_t count;
  if (!eval_int(E, s->exprs[0], &count)) {
    poison_block(E, s->body, s->nbody);
    return;
  }
  if (count < 0 || count > MAX_REPEAT) {
    diag_error(E->d, s->exprs[0]->tok, "repeat count must be between 0 and %d, got %lld", MAX_REPEAT, (long long)count);
    return;
  }
  const char *base = s->exprs[0]->kind == EX_IDENT ? s->exprs[0]->name : "repeat";
  const char *outer = E->prefix;
  int outer_layer = E->layer;
  int errors = E->d->errors;
  int first = outer_layer < 0 ? E->layers_seen : 0; /* layers run on across top-level blocks */
  for (int64_t it = 0; it < count && !E->stop; it++) {
    if (++E->work > MAX_WORK) {
      diag_error(E->d, s->tok, "the model is too large: its repeat blocks unroll to more than %d statements", MAX_WORK);
      E->stop = true;
      break;
    }
    E->prefix = arena_printf("%s%s.%lld.", outer, base, (long long)it);
    if (outer_layer < 0) E->layer = first + (int)it;
    E->scope++;
    elab_block(E, s->body, s->nbody);
    sym_pop_scope(E);
    E->scope--;
    if (E->d->errors > errors) break; /* the same mistake would repeat every iteration */
  }
  E->prefix = outer;
  E->layer = outer_layer;
  if (outer_layer < 0) E->layers_seen = first + (int)count;
}

static void stmt_if(Elab *E, const Stmt *s) {
  int64_t v;
  if (!eval_int(E, s->exprs[0], &v)) {
    poison_block(E, s->body, s->nbody);
    poison_block(E, s->orelse, s->norelse);
    return;
  }
  if (v)
    elab_block(E, s->body, s->nbody);
  else
    elab_block(E, s->orelse, s->norelse);
}

static void elab_block(Elab *E, Stmt **stmts, int n) {
  for (int i = 0; i < n && !E->stop; i++) {
    const Stmt *s = stmts[i];
    if (++E->work > MAX_WORK) {
      diag_error(E->d, s->tok, "the model is too large: its repeat blocks unroll to more than %d statements", MAX_WORK);
      E->stop = true;
      return;
    }
    switch (s->kind) {
    case ST_MODEL:
      if (E->scope || E->prefix[0])
        diag_error(E->d, s->tok, "'model' belongs at the top of the file");
      else
        E->g->model = s->label;
      break;
    case ST_PRESET:
      if (E->scope || E->prefix[0]) diag_error(E->d, s->tok, "'preset' belongs at the top level of the file");
      break; /* applied before elaboration */
    case ST_DIM: stmt_dim(E, s); break;
    case ST_INPUT:
    case ST_PARAM: stmt_decl(E, s); break;
    case ST_ASSIGN: stmt_assign(E, s); break;
    case ST_REPEAT: stmt_repeat(E, s); break;
    case ST_IF: stmt_if(E, s); break;
    }
  }
}

/* Finds the named preset and turns its bindings into overrides. Preset
 * values are constants: they are evaluated before any dim exists. */
static bool apply_preset(Elab *E) {
  const char *want = E->opt->preset;
  if (!want) return true;
  PtrVec names = {0};
  for (int i = 0; i < E->ast->nstmts; i++) {
    const Stmt *s = E->ast->stmts[i];
    if (s->kind != ST_PRESET) continue;
    ptrvec_push(&names, (void *)s->label);
    if (strcmp(s->label, want) != 0) continue;
    E->preset = arena_alloc(sizeof(Override) * (size_t)(s->nnames + 1));
    E->preset_toks = arena_alloc(sizeof(Token *) * (size_t)(s->nnames + 1));
    for (int k = 0; k < s->nnames; k++) {
      int64_t v;
      if (!eval_int(E, s->exprs[k], &v)) return false;
      E->preset_toks[E->npreset] = s->name_toks[k];
      E->preset[E->npreset++] = (Override){s->names[k], v, false};
    }
    return true;
  }
  char list[512] = "";
  for (int i = 0, n = 0; i < names.n; i++)
    n += snprintf(list + n, sizeof list - (size_t)n, "%s%s", i ? ", " : "", (char *)names.v[i]);
  diag_file(E->d, E->ast->src->path, "no preset named '%s'%s%s", want, names.n ? "; presets: " : "",
            names.n ? list : " (the file defines none)");
  return false;
}

Graph *elaborate(const Ast *ast, const ElabOptions *opt, Diag *d) {
  static const ElabOptions none = {0};
  Elab E = {.d = d, .opt = opt ? opt : &none, .ast = ast, .prefix = "", .layer = -1};
  E.g = graph_new(NULL);
  int errors0 = d->errors;
  if (apply_preset(&E)) elab_block(&E, ast->stmts, ast->nstmts);
  for (int i = 0; i < E.opt->nsets; i++)
    if (!E.opt->sets[i].used && d->errors == errors0)
      diag_file(d, ast->src->path, "--set %s: the model has no dim named '%s'", E.opt->sets[i].name,
                E.opt->sets[i].name);
  for (int i = 0; i < E.npreset; i++)
    if (!E.preset[i].used && d->errors == errors0)
      diag_error(d, E.preset_toks[i], "preset %s sets '%s', which is not a dim of the model", E.opt->preset,
                 E.preset[i].name);
  Sym *loss = sym_find(&E, "loss");
  if (d->errors == errors0) {
    if (!loss || loss->node < 0)
      diag_file(d, ast->src->path, "no tensor named 'loss': assign the scalar training loss to 'loss'");
    else if (node_of(&E, loss->node)->shape.rank != 0)
      diag_error(d, node_of(&E, loss->node)->tok, "'loss' must be a scalar, but it has shape %s",
                 shape_str(&node_of(&E, loss->node)->shape));
    else
      E.g->loss = loss->node;
  }
  E.g->nfwd = E.g->n;
  E.g->ndims = E.ndims;
  E.g->dims = arena_alloc(sizeof(DimVal) * (size_t)(E.ndims + 1));
  for (int i = 0; i < E.ndims; i++) E.g->dims[i] = (DimVal){E.dims[i].name, E.dims[i].value, E.dims[i].per_batch};
  free(E.syms);
  free(E.dims);
  strmap_free(&E.sym_of);
  strmap_free(&E.dim_of);
  strmap_free(&E.names);
  strmap_free(&E.suffix);
  if (d->errors > errors0) return NULL;
  if (!graph_verify(E.g, d->out)) return NULL;
  return E.g;
}
