/* summary.c: the figures `carve check` prints: parameters, FLOPs of a
 * training step, activation memory, op counts.
 *
 * FLOPs: an einsum costs 2 x the product of the sizes of all its distinct
 * labels (a multiply and an add per term); this is what "model FLOPs"
 * formulas such as Megatron-LM's count. Other ops get a small per-element
 * estimate, reported separately so the einsum figure can be compared with
 * such formulas exactly. */
#include "carve.h"

#include <string.h>

static double einsum_flops(const Graph *g, const Node *n) {
  double f = 2;
  char seen[64] = "";
  int ns = 0;
  for (int k = 0; k < n->nin; k++) {
    const Node *x = g->nodes[n->in[k]];
    for (int i = 0; i < x->shape.rank; i++) {
      char c = n->labels[k][i];
      if (!memchr(seen, c, (size_t)ns)) {
        seen[ns++] = c;
        f *= (double)x->shape.d[i];
      }
    }
  }
  return f;
}

/* Estimated FLOPs per element of the op's larger operand. */
static double per_element(OpKind op) {
  switch (op) {
  case OP_GELU:
  case OP_GELU_BWD: return 8;
  case OP_SILU:
  case OP_SILU_BWD:
  case OP_TANH:
  case OP_TANH_BWD: return 4;
  case OP_SOFTMAX:
  case OP_SOFTMAX_BWD:
  case OP_XENT:
  case OP_XENT_BWD: return 5;
  case OP_LAYERNORM:
  case OP_LN_BWD_X: return 8;
  case OP_RMSNORM:
  case OP_RMS_BWD_X: return 5;
  case OP_LN_BWD_G:
  case OP_RMS_BWD_G: return 6;
  case OP_MSE:
  case OP_MSE_BWD:
  case OP_RSQRT:
  case OP_RSQRT_BWD: return 3;
  case OP_PARAM:
  case OP_INPUT:
  case OP_FILL:
  case OP_EMBED:
  case OP_RESHAPE:
  case OP_MOE_DISPATCH: return 0;
  default: return 1;
  }
}

double node_flops(const Graph *g, const Node *n) {
  if (n->op == OP_EINSUM) return n->nin == 2 ? einsum_flops(g, n) : 0;
  double numel = (double)shape_numel(&n->shape);
  for (int k = 0; k < n->nin; k++) {
    double m = (double)shape_numel(&g->nodes[n->in[k]]->shape);
    if (m > numel) numel = m;
  }
  return per_element(n->op) * numel;
}

void summarize(const Graph *g, Summary *s) {
  memset(s, 0, sizeof *s);
  bool *kept = arena_alloc(sizeof(bool) * (size_t)(g->n + 1));
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    double f = node_flops(g, n);
    bool ein = n->op == OP_EINSUM;
    if (i < g->nfwd) {
      s->op_count[n->op]++;
      if (ein)
        s->flops_einsum_fwd += f;
      else
        s->flops_other_fwd += f;
    }
    if (ein)
      s->flops_einsum += f;
    else
      s->flops_other += f;
    if (n->op == OP_PARAM) {
      s->params += shape_numel(&n->shape);
      s->param_tensors++;
    }
    if (n->phase == PH_BACKWARD)
      for (int k = 0; k < n->nin; k++)
        if (n->in[k] < g->nfwd) kept[n->in[k]] = true;
  }
  for (int i = 0; i < g->nfwd; i++)
    if (kept[i] && g->nodes[i]->op != OP_PARAM)
      s->act_bytes += shape_numel(&g->nodes[i]->shape) * dtype_size(g->nodes[i]->dtype);
  s->param_bytes = s->params * 4;
  s->nodes_fwd = g->nfwd;
  s->nodes_total = g->n;
}

void summary_print(const Graph *g, const Summary *s, FILE *out) {
  char a[32], b[32], c[32], e[32];
  fprintf(out, "model %s\n", g->model);
  fprintf(out, "  dims        ");
  for (int i = 0; i < g->ndims; i++)
    fprintf(out, "%s%s=%lld", i ? ", " : "", g->dims[i].name, (long long)g->dims[i].value);
  fprintf(out, "\n");
  fprintf(out, "  parameters  %lld (%s) in %lld tensors, %s as f32\n", (long long)s->params,
          fmt_si((double)s->params, a, sizeof a), (long long)s->param_tensors,
          fmt_bytes((double)s->param_bytes, b, sizeof b));
  double total = s->flops_einsum + s->flops_other;
  fprintf(out, "  FLOPs/step  %s (einsum %s, other %s); forward %s\n", fmt_si(total, a, sizeof a),
          fmt_si(s->flops_einsum, b, sizeof b), fmt_si(s->flops_other, c, sizeof c),
          fmt_si(s->flops_einsum_fwd + s->flops_other_fwd, e, sizeof e));
  fprintf(out, "  activations %s kept for backward (f32)\n", fmt_bytes((double)s->act_bytes, a, sizeof a));
  fprintf(out, "  nodes       %d forward, %d in the training graph\n", s->nodes_fwd, s->nodes_total);
  fprintf(out, "  ops        ");
  for (int op = 0; op < OP_COUNT; op++)
    if (s->op_count[op] && op != OP_PARAM && op != OP_INPUT) fprintf(out, " %s %d", op_info[op].name, s->op_count[op]);
  fprintf(out, "\n");
}
