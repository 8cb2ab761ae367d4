/* graph.c: the graph IR's tables and helpers: op names, dtypes, shapes,
 * building nodes, the verifier that runs between phases, and a readable dump
 * (`carve check --dump`). */
#include "carve.h"

#include <string.h>

const OpInfo op_info[OP_COUNT] = {
#define OP(name, text, nin, iattrs, fattrs, flags) {text, nin, iattrs, fattrs, flags},
#include "ops.def"
#undef OP
};

const char *const init_names[INIT_COUNT] = {
    "zeros", "ones", "const", "normal", "uniform", "tokens", "next_tokens", "classes", "normal", "uniform", "stage",
};

int op_lookup(const char *name) {
  for (int i = 0; i < OP_COUNT; i++)
    if (strcmp(op_info[i].name, name) == 0) return i;
  return -1;
}

const char *dtype_name(DType t) { return t == DT_I32 ? "i32" : t == DT_BF16 ? "bf16" : "f32"; }
int dtype_size(DType t) { return t == DT_BF16 ? 2 : 4; }

const char *precision_name(Precision p) { return p == PREC_BF16 ? "bf16" : "fp32"; }

const char *precision_describe(Precision p, bool detail) {
  if (p != PREC_BF16) return "fp32";
  return detail ? "bf16 (mixed: f32 master weights, optimizer state and gradient sums)" : "bf16 mixed precision";
}

bool precision_parse(const char *s, Precision *p) {
  if (!strcmp(s, "fp32") || !strcmp(s, "f32")) return *p = PREC_FP32, true;
  if (!strcmp(s, "bf16") || !strcmp(s, "mixed")) return *p = PREC_BF16, true;
  return false;
}

int64_t shape_numel(const Shape *s) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++) n *= s->d[i];
  return n;
}

bool shape_eq(const Shape *a, const Shape *b) {
  if (a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (a->d[i] != b->d[i]) return false;
  return true;
}

char *shape_str(const Shape *s) {
  char buf[3 + MAXRANK * 22]; /* a comma and up to 20 digits and a sign per dim */
  int n = 0;
  buf[n++] = '[';
  for (int i = 0; i < s->rank; i++) {
    if (i) buf[n++] = ',';
    n += int_str(s->d[i], buf + n);
  }
  buf[n++] = ']';
  return arena_strndup(buf, (size_t)n);
}

Graph *graph_new(const char *model) {
  Graph *g = arena_alloc(sizeof(Graph));
  g->model = model ? model : "model";
  g->loss = -1;
  return g;
}

Node *graph_add(Graph *g, OpKind op, const char *name) {
  if (g->n == g->cap) {
    int cap = g->cap ? g->cap * 2 : 256;
    Node **v = arena_alloc(sizeof(Node *) * (size_t)cap);
    if (g->n) memcpy(v, g->nodes, sizeof(Node *) * (size_t)g->n);
    g->nodes = v;
    g->cap = cap;
  }
  Node *n = arena_alloc(sizeof(Node));
  n->op = op;
  n->id = g->n;
  n->name = name;
  n->layer = -1;
  n->origin = -1;
  n->dtype = DT_F32;
  g->nodes[g->n++] = n;
  return n;
}

Node *graph_node(const Graph *g, int id) {
  CARVE_ASSERT(id >= 0 && id < g->n, "node id out of range");
  return g->nodes[id];
}

int64_t graph_dim(const Graph *g, const char *name, int64_t fallback) {
  for (int i = 0; i < g->ndims; i++)
    if (strcmp(g->dims[i].name, name) == 0) return g->dims[i].value;
  return fallback;
}

bool graph_dim_per_batch(const Graph *g, const Node *n, int d) {
  const char *name = d >= 0 && d < n->shape.rank ? n->dimname[d] : NULL;
  if (!name) return false;
  if (!strcmp(name, "batch")) return true;
  for (int i = 0; i < g->ndims; i++)
    if (!strcmp(g->dims[i].name, name)) return g->dims[i].per_batch;
  return false;
}

bool graph_verify(const Graph *g, FILE *err) {
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    const char *why = NULL;
    if (n->id != i)
      why = "node id does not match its position";
    else if (n->op < 0 || n->op >= OP_COUNT || !(op_info[n->op].flags & OPF_GRAPH))
      why = "not a graph op";
    else if (op_info[n->op].nin >= 0 && n->nin != op_info[n->op].nin)
      why = "wrong number of inputs";
    else if (n->shape.rank < 0 || n->shape.rank > MAXRANK)
      why = "bad rank";
    for (int k = 0; !why && k < n->nin; k++)
      if (n->in[k] < 0 || n->in[k] >= i) why = "input does not precede its user";
    for (int k = 0; !why && k < n->shape.rank; k++)
      if (n->shape.d[k] <= 0) why = "non-positive dimension";
    if (why) {
      fprintf(err, "carve: internal error: graph verifier: node %d (%s, %s): %s\n", i, n->name ? n->name : "?",
              op_info[n->op].name, why);
      return false;
    }
  }
  if (g->loss >= 0 && g->nodes[g->loss]->shape.rank != 0) {
    fprintf(err, "carve: internal error: graph verifier: loss is not a scalar\n");
    return false;
  }
  return true;
}

void graph_dump(const Graph *g, FILE *out) {
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    fprintf(out, "%5d %-8s %-18s %-28s %s%s", i, n->phase == PH_FORWARD ? "fwd" : "bwd", op_info[n->op].name, n->name,
            dtype_name(n->dtype), shape_str(&n->shape));
    if (n->nin) {
      fprintf(out, " <-");
      for (int k = 0; k < n->nin; k++) fprintf(out, " %d", n->in[k]);
    }
    if (n->op == OP_EINSUM) {
      fprintf(out, "  \"");
      for (int k = 0; k < n->nin; k++) fprintf(out, "%s%s", k ? "," : "", n->labels[k]);
      fprintf(out, "->%s\"", n->labels[n->nin]);
    }
    fputc('\n', out);
  }
}
