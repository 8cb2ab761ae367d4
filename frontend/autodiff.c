/* autodiff.c: reverse-mode differentiation of the forward graph, in the same
 * IR. Walking the forward nodes from the loss backwards, each node with a
 * gradient dy adds gradient contributions to those of its inputs that depend
 * on a parameter; contributions to one tensor are summed with add nodes.
 *
 * Every rule is written as graph nodes (einsum's backward is two einsums,
 * layernorm's is layernorm_bwd_x / layernorm_bwd_g / sum_to, ...), so the
 * planner later sees the whole training step. The loss gradient is seeded
 * with 1/microbatches: the step's loss is the mean over microbatches.
 * The optimizer update is lowered by codegen from Train and g->grad. */
#include "carve.h"

#include <string.h>

typedef struct AD {
  Graph *g;
  int *grad;       /* per forward node: gradient node or -1 */
  bool *needs;     /* per forward node: depends on a parameter */
  const Node *cur; /* forward node being differentiated */
} AD;

static Node *bwd(AD *A, OpKind op, const char *what, const Shape *shape, int nin, int a, int b, int c) {
  Node *n = graph_add(A->g, op, arena_printf("d.%s/%s", A->cur->name, what));
  n->phase = PH_BACKWARD;
  n->layer = A->cur->layer;
  n->origin = A->cur->id;
  n->shape = *shape;
  n->nin = nin;
  int in[3] = {a, b, c};
  for (int i = 0; i < nin; i++) n->in[i] = in[i];
  return n;
}

static const Shape *shape_of(AD *A, int id) { return &A->g->nodes[id]->shape; }

static void add_grad(AD *A, int x, int contrib) {
  if (A->grad[x] < 0) {
    A->grad[x] = contrib;
    return;
  }
  Node *n = bwd(A, OP_ADD, "acc", shape_of(A, x), 2, A->grad[x], contrib, 0);
  n->name = arena_printf("d.%s/acc.%d", A->g->nodes[x]->name, n->id);
  A->grad[x] = n->id;
}

/* Sums dy down to x's shape when x was broadcast (trailing-aligned). */
static int reduce_to(AD *A, int dy, int x) {
  if (shape_eq(shape_of(A, dy), shape_of(A, x))) return dy;
  return bwd(A, OP_SUM_TO, "sum_to", shape_of(A, x), 1, dy, 0, 0)->id;
}

static void einsum_rule(AD *A, const Node *y, int dy) {
  const char *lo = y->labels[y->nin];
  if (y->nin == 1) {
    Node *n = bwd(A, OP_EINSUM, "einsum", shape_of(A, y->in[0]), 1, dy, 0, 0);
    strcpy(n->labels[0], lo);
    strcpy(n->labels[1], y->labels[0]);
    add_grad(A, y->in[0], n->id);
    return;
  }
  for (int k = 0; k < 2; k++) {
    int x = y->in[k];
    if (!A->needs[x]) continue;
    /* dA = einsum(out, B -> A)(dy, B);  dB = einsum(A, out -> B)(A, dy) */
    Node *n = k == 0 ? bwd(A, OP_EINSUM, "einsum.da", shape_of(A, x), 2, dy, y->in[1], 0)
                     : bwd(A, OP_EINSUM, "einsum.db", shape_of(A, x), 2, y->in[0], dy, 0);
    strcpy(n->labels[0], k == 0 ? lo : y->labels[0]);
    strcpy(n->labels[1], k == 0 ? y->labels[1] : lo);
    strcpy(n->labels[2], y->labels[k]);
    add_grad(A, x, n->id);
  }
}

static void binary_rule(AD *A, const Node *y, int dy) {
  int a = y->in[0], b = y->in[1];
  Node *n;
  switch (y->op) {
  case OP_ADD:
  case OP_SUB:
    if (A->needs[a]) add_grad(A, a, reduce_to(A, dy, a));
    if (A->needs[b]) {
      int g = reduce_to(A, dy, b);
      if (y->op == OP_SUB) {
        n = bwd(A, OP_SCALE, "neg", shape_of(A, b), 1, g, 0, 0);
        n->f[0] = -1;
        g = n->id;
      }
      add_grad(A, b, g);
    }
    break;
  case OP_MUL:
    if (A->needs[a]) add_grad(A, a, reduce_to(A, bwd(A, OP_MUL, "mul", &y->shape, 2, dy, b, 0)->id, a));
    if (A->needs[b]) add_grad(A, b, reduce_to(A, bwd(A, OP_MUL, "mul", &y->shape, 2, dy, a, 0)->id, b));
    break;
  default: /* OP_DIV: da = dy / b; db = -dy * y / b */
    if (A->needs[a]) add_grad(A, a, reduce_to(A, bwd(A, OP_DIV, "div", &y->shape, 2, dy, b, 0)->id, a));
    if (A->needs[b]) {
      int t = bwd(A, OP_MUL, "mul", &y->shape, 2, dy, y->id, 0)->id;
      t = bwd(A, OP_DIV, "div", &y->shape, 2, t, b, 0)->id;
      n = bwd(A, OP_SCALE, "neg", &y->shape, 1, t, 0, 0);
      n->f[0] = -1;
      add_grad(A, b, reduce_to(A, n->id, b));
    }
  }
}

static void rule(AD *A, const Node *y, int dy) {
  int x = y->nin ? y->in[0] : -1;
  const Shape *xs = x >= 0 ? shape_of(A, x) : NULL;
  Node *n;
  switch (y->op) {
  case OP_EINSUM: einsum_rule(A, y, dy); return;
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_DIV: binary_rule(A, y, dy); return;
  case OP_SCALE:
    n = bwd(A, OP_SCALE, "scale", xs, 1, dy, 0, 0);
    n->f[0] = y->f[0];
    add_grad(A, x, n->id);
    return;
  case OP_GELU: add_grad(A, x, bwd(A, OP_GELU_BWD, "gelu_bwd", xs, 2, x, dy, 0)->id); return;
  case OP_RELU: add_grad(A, x, bwd(A, OP_RELU_BWD, "relu_bwd", xs, 2, x, dy, 0)->id); return;
  case OP_SILU: add_grad(A, x, bwd(A, OP_SILU_BWD, "silu_bwd", xs, 2, x, dy, 0)->id); return;
  case OP_TANH: add_grad(A, x, bwd(A, OP_TANH_BWD, "tanh_bwd", xs, 2, y->id, dy, 0)->id); return;
  case OP_EXP: add_grad(A, x, bwd(A, OP_MUL, "exp_bwd", xs, 2, y->id, dy, 0)->id); return;
  case OP_RSQRT: add_grad(A, x, bwd(A, OP_RSQRT_BWD, "rsqrt_bwd", xs, 2, y->id, dy, 0)->id); return;
  case OP_SUM:
  case OP_MEAN:
    n = bwd(A, OP_EXPAND, "expand", xs, 1, dy, 0, 0);
    n->i[0] = y->i[0];
    n->f[0] = y->op == OP_MEAN ? 1.0 / (double)xs->d[y->i[0]] : 1.0;
    add_grad(A, x, n->id);
    return;
  case OP_MAX:
    n = bwd(A, OP_MAX_BWD, "max_bwd", xs, 2, x, dy, 0);
    n->i[0] = y->i[0];
    add_grad(A, x, n->id);
    return;
  case OP_SOFTMAX: add_grad(A, x, bwd(A, OP_SOFTMAX_BWD, "softmax_bwd", xs, 2, y->id, dy, 0)->id); return;
  case OP_LAYERNORM:
  case OP_RMSNORM: {
    bool ln = y->op == OP_LAYERNORM;
    if (A->needs[x]) {
      n = bwd(A, ln ? OP_LN_BWD_X : OP_RMS_BWD_X, "norm_bwd_x", xs, 3, x, y->in[1], dy);
      n->f[0] = y->f[0];
      add_grad(A, x, n->id);
    }
    if (A->needs[y->in[1]]) {
      n = bwd(A, ln ? OP_LN_BWD_G : OP_RMS_BWD_G, "norm_bwd_g", shape_of(A, y->in[1]), 2, x, dy, 0);
      n->f[0] = y->f[0];
      add_grad(A, y->in[1], n->id);
    }
    if (ln && A->needs[y->in[2]]) add_grad(A, y->in[2], reduce_to(A, dy, y->in[2]));
    return;
  }
  case OP_EMBED: add_grad(A, x, bwd(A, OP_EMBED_BWD, "embed_bwd", xs, 2, y->in[1], dy, 0)->id); return;
  case OP_XENT: add_grad(A, x, bwd(A, OP_XENT_BWD, "xent_bwd", xs, 3, x, y->in[1], dy)->id); return;
  case OP_MSE: {
    int dp = bwd(A, OP_MSE_BWD, "mse_bwd", xs, 3, x, y->in[1], dy)->id;
    if (A->needs[x]) add_grad(A, x, dp);
    if (A->needs[y->in[1]]) {
      n = bwd(A, OP_SCALE, "neg", xs, 1, dp, 0, 0);
      n->f[0] = -1;
      add_grad(A, y->in[1], n->id);
    }
    return;
  }
  case OP_MOE_COMBINE:
    n = bwd(A, OP_MOE_COMBINE_BWD, "moe_combine_bwd", xs, 2, x, dy, 0);
    n->i[0] = y->i[0];
    add_grad(A, x, n->id);
    return;
  case OP_RESHAPE: add_grad(A, x, bwd(A, OP_RESHAPE, "reshape", xs, 1, dy, 0, 0)->id); return;
  default: return; /* no gradient: params, inputs, dispatch masks */
  }
}

bool op_differentiates(const Node *y, int k) {
  if (y->op == OP_EMBED || y->op == OP_XENT) return k == 0;
  if (y->op == OP_MOE_DISPATCH) return false;
  return true;
}

bool *graph_trained(const Graph *g) {
  bool *t = arena_alloc(sizeof(bool) * (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    t[i] = n->op == OP_PARAM || (n->op == OP_INPUT && n->init == SRC_STAGE);
    for (int k = 0; k < n->nin; k++) t[i] |= op_differentiates(n, k) && t[n->in[k]];
    t[i] &= n->dtype == DT_F32;
  }
  return t;
}

bool autodiff(Graph *g, int microbatches, FILE *err) {
  CARVE_ASSERT(g->loss >= 0 && g->nfwd == g->n, "autodiff takes a forward graph with a loss");
  int nf = g->nfwd;
  AD A = {.g = g};
  A.grad = arena_alloc(sizeof(int) * (size_t)nf);
  A.needs = graph_trained(g);
  for (int i = 0; i < nf; i++) A.grad[i] = -1;
  if (!A.needs[g->loss]) {
    Diag d;
    diag_init(&d, err);
    const Token *at = g->nodes[g->loss]->tok;
    if (at)
      diag_error(&d, at, "the loss does not depend on any parameter; there is nothing to train");
    else
      diag_plain(&d, "the loss does not depend on any parameter; there is nothing to train");
    return false;
  }
  A.cur = g->nodes[g->loss];
  Node *seed = graph_add(g, OP_FILL, "d.loss");
  seed->phase = PH_BACKWARD;
  seed->origin = g->loss;
  seed->f[0] = 1.0 / (double)(microbatches > 0 ? microbatches : 1);
  A.grad[g->loss] = seed->id;
  for (int i = nf - 1; i >= 0; i--) {
    const Node *y = g->nodes[i];
    if (A.grad[i] < 0 || y->op == OP_PARAM) continue;
    A.cur = y;
    rule(&A, y, A.grad[i]);
  }
  g->grad = arena_alloc(sizeof(int) * (size_t)nf);
  for (int i = 0; i < nf; i++) g->grad[i] = g->nodes[i]->op == OP_PARAM ? A.grad[i] : -1;
  return graph_verify(g, err);
}

void train_defaults(Train *t) {
  *t = (Train){.opt = OPT_ADAMW,
               .lr = 1e-3,
               .beta1 = 0.9,
               .beta2 = 0.95,
               .eps = 1e-8,
               .wd = 0.1,
               .momentum = 0.9,
               .clip = 1.0,
               .warmup = 0,
               .microbatches = 1};
}
