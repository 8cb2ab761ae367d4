/* rules.c: the rule book of splits: for every op, the dims of its tensors
 * that its kernel needs whole on every rank. It is stated once, here, and
 * read by both sides of a split:
 *   - the planner (planner/intra.c, op_model): under PlanOptions.lowerable
 *     no strategy splits an iteration dim that one of these dims maps to;
 *   - the code generator (codegen/distribute.c, kernel_takes): an op whose
 *     split would cut one of them runs whole instead (gathered in, whole out).
 * So a plan made to be lowered never asks for a split the code generator
 * cannot run, and a change of what a kernel can take is one edit.
 *
 * Why each dim must stay whole:
 *   softmax, layernorm, rmsnorm   the normalised (last) dim of the output: a
 *                                 row's statistics are over all of it; a causal
 *                                 softmax also its row dim (the mask needs the
 *                                 row's global index);
 *   cross_entropy                 the classes (last dim) of the logits;
 *   max                           the reduced dim of the input;
 *   embed                         the vocabulary (dim 0) of the table: a lookup
 *                                 reads whichever row its id names;
 *   moe_dispatch, moe_combine     every dim of the gate and of the output: the
 *                                 routing (and its capacity) is per microbatch. */
#include "carve.h"

/* Every dim of a rank-r tensor. */
static uint32_t all_dims(int r) { return r >= 32 ? ~0u : (1u << r) - 1; }

uint32_t op_whole_dims(const Graph *g, const Node *n, int t) {
  int R = n->shape.rank, out = t == n->nin;
  int r = out ? R : g->nodes[n->in[t]]->shape.rank;
  switch (n->op) {
  case OP_SOFTMAX:
    if (!out) return 0;
    return 1u << (R - 1) | (n->i[0] && R >= 2 ? 1u << (R - 2) : 0);
  case OP_LAYERNORM:
  case OP_RMSNORM: return out ? 1u << (R - 1) : 0;
  case OP_XENT: return t == 0 ? 1u << (r - 1) : 0;
  case OP_MAX: return t == 0 ? 1u << n->i[0] : 0;
  case OP_EMBED: return t == 0 ? 1u : 0;
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE: return out || t == 0 ? all_dims(r) : 0;
  default: return 0;
  }
}
