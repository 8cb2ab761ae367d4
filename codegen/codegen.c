/* codegen.c: a training graph to a single-rank program.
 *
 * The program has two sections. `init` runs once: it fills every parameter
 * from the counter-based RNG and zeroes optimizer state. `step` runs every
 * training step: for each microbatch, load its slice of the inputs, run the
 * forward and backward nodes in graph order, fold each parameter gradient
 * into its accumulator, and record the loss; then clip by the global gradient
 * norm and apply the optimizer. The node that completes a parameter's
 * gradient writes straight into the accumulator in the first microbatch
 * (no copy); later microbatches write a transient and add it in.
 *
 * Memory: parameters, gradient accumulators, optimizer state and scalars are
 * persistent and sit at the start of the arena. Every other buffer lives from
 * the instruction that writes it to the last one that reads it, within one
 * microbatch. Microbatches after the first all have the same shape (the
 * first differs only in writing gradients in place), so the placement
 * computed over the last microbatch serves them all. Placement is first-fit over those intervals, decided here, so the
 * runtime makes one allocation and never allocates again.
 *
 * Precision (Train.precision, docs/program-format.md): under bf16 each
 * parameter's f32 master gets a bf16 copy (a `work` buffer) cast at the start
 * of the step, which every reader reads; values are bf16 except scalars and
 * parameter gradients (value_dtypes); an einsum whose operands would differ
 * casts one. */
#include "lower.h"

#include <stdlib.h>
#include <string.h>

typedef struct CG {
  const Graph *g;
  const Train *t;
  Program *p;
  int *buf;   /* node id -> buffer id, -1 if the node is not emitted */
  int *gacc;  /* node id (param) -> gradient accumulator buffer */
  int *final; /* node id -> the parameter whose gradient it completes, or -1 */
  int *alt;   /* such a node's transient buffer for microbatches after the first */
  bool *live; /* node is needed for the loss or a gradient */
  DType *dt;  /* node -> the dtype of its buffers (value_dtypes) */
  int *rd;    /* node -> the buffer its readers read: a parameter's bf16 copy, else buf */
  int *cast;  /* node -> its value cast for an einsum whose other operand has another dtype, or -1 */
  PtrVec init, step;
  int cap_bufs;
} CG;

static int new_buf(CG *C, const char *name, DType dt, const Shape *s, BufKind kind) {
  return prog_buf(C->p, &C->cap_bufs, name, dt, s, kind);
}

/* Marks the nodes the step needs: the loss, every parameter gradient, and
 * everything they read. */
static void mark_live(CG *C) {
  const Graph *g = C->g;
  C->live[g->loss] = true;
  for (int i = 0; i < g->nfwd; i++)
    if (g->grad[i] >= 0) C->live[g->grad[i]] = true;
  for (int i = g->n - 1; i >= 0; i--)
    if (C->live[i])
      for (int k = 0; k < g->nodes[i]->nin; k++) C->live[g->nodes[i]->in[k]] = true;
}

/* The buffers node n reads; an einsum's two operands in one dtype (bf16 if
   either is: a cast is emitted first). */
static void operands(CG *C, const Node *n, int *ins) {
  for (int k = 0; k < n->nin; k++) ins[k] = C->rd[n->in[k]];
  if (n->op != OP_EINSUM || n->nin != 2) return;
  DType want = prog_einsum_dtype(C->p, ins);
  for (int k = 0; k < 2; k++) /* into one buffer for every microbatch, as a node's own */
    if (C->p->bufs[ins[k]].dtype != want)
      ins[k] = C->cast[n->in[k]] = prog_cast(C->p, &C->cap_bufs, &C->step, ins[k], want, C->cast[n->in[k]]);
}

static void emit_node(CG *C, const Node *n, int mb) {
  const Graph *g = C->g;
  if (n->op == OP_PARAM) return;
  Instr *in;
  if (n->op == OP_INPUT) {
    in = prog_emit(&C->step, OP_LOAD, C->buf[n->id]);
    in->i[0] = n->init;
    in->i[1] = (int64_t)mb * (n->shape.rank ? n->shape.d[0] : 1);
    in->f[0] = n->init_a;
    in->f[1] = n->init_b;
    return;
  }
  int out = C->buf[n->id], ins[MAXIN];
  if (mb > 0 && C->alt[n->id] >= 0) out = C->alt[n->id];
  operands(C, n, ins);
  in = prog_emit(&C->step, n->op, out);
  in->nin = n->nin;
  memcpy(in->in, ins, sizeof(int) * (size_t)n->nin);
  in->i[0] = n->i[0];
  in->i[1] = n->i[1];
  in->f[0] = n->f[0];
  in->f[1] = n->f[1];
  if (n->op == OP_EINSUM) {
    int len = 0;
    for (int k = 0; k < n->nin; k++)
      len += snprintf(in->spec + len, sizeof in->spec - (size_t)len, "%s%s", k ? "," : "", n->labels[k]);
    snprintf(in->spec + len, sizeof in->spec - (size_t)len, "->%s", n->labels[n->nin]);
  }
  if (n->id == g->loss) {
    prog_emit1(&C->step, OP_LOSS, -1, C->buf[n->id])->f[0] = 1.0 / C->t->microbatches;
  }
}

/* After the node that completes a parameter's gradient: fold it in. In the
 * first microbatch the node wrote the accumulator itself. */
static void emit_grad_fold(CG *C, int gradnode, int mb) {
  int p = C->final[gradnode];
  if (p == -1) return;
  if (p >= 0 && C->buf[gradnode] == C->gacc[p]) { /* written in place in the first microbatch */
    if (mb > 0) prog_emit1(&C->step, OP_ACC, C->gacc[p], C->alt[gradnode]);
    return;
  }
  /* the gradient has its own buffer (read by other nodes, or shared by
     several parameters): fold it into every parameter it belongs to */
  for (int q = 0; q < C->g->nfwd; q++) {
    if (C->g->grad[q] != gradnode) continue;
    prog_emit1(&C->step, mb == 0 ? OP_COPY : OP_ACC, C->gacc[q], C->buf[gradnode]);
  }
}

static void emit_update(CG *C) {
  const Graph *g = C->g;
  const Train *t = C->t;
  int *grads = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1)), n = 0;
  for (int p = 0; p < g->nfwd; p++)
    if (g->grad[p] >= 0) grads[n++] = C->gacc[p];
  int clip = prog_clip(C->p, &C->cap_bufs, &C->step, t, grads, NULL, n, -1);
  for (int p = 0; p < g->nfwd; p++) {
    if (g->grad[p] < 0) continue;
    const Node *n = g->nodes[p];
    prog_optimizer(C->p, &C->cap_bufs, &C->init, &C->step, t, n, &n->shape, &(Instr){.op = OP_INIT}, C->buf[p],
                   C->gacc[p], clip);
  }
}

Program *codegen(const Graph *g, const Train *t, uint64_t seed) {
  CARVE_ASSERT(g->grad, "codegen takes a training graph");
  CG C = {.g = g, .t = t};
  Program *p = C.p = arena_alloc(sizeof(Program));
  p->model = g->model;
  p->rank = 0;
  p->world = 1;
  p->seed = seed;
  p->plan_id = prog_recipe(g, t, seed);
  p->microbatches = t->microbatches;
  p->precision = t->precision;
  C.dt = value_dtypes(g, t->precision);
  C.rd = arena_alloc(sizeof(int) * (size_t)g->n);
  C.cast = arena_alloc(sizeof(int) * (size_t)g->n);
  for (int i = 0; i < g->n; i++) C.cast[i] = -1;
  C.buf = arena_alloc(sizeof(int) * (size_t)g->n);
  C.gacc = arena_alloc(sizeof(int) * (size_t)g->n);
  C.live = arena_alloc(sizeof(bool) * (size_t)g->n);
  C.final = arena_alloc(sizeof(int) * (size_t)g->n);
  C.alt = arena_alloc(sizeof(int) * (size_t)g->n);
  int *users = arena_alloc(sizeof(int) * (size_t)g->n);
  mark_live(&C);
  for (int i = 0; i < g->n; i++) {
    C.final[i] = C.alt[i] = -1;
    for (int k = 0; k < g->nodes[i]->nin; k++) users[g->nodes[i]->in[k]]++;
  }
  /* final[n]: the parameter whose gradient node n is; -2 when n is the
     gradient of several parameters (z = a + b gives a and b the same one) */
  for (int i = 0; i < g->nfwd; i++)
    if (g->grad[i] >= 0) C.final[g->grad[i]] = C.final[g->grad[i]] == -1 ? i : -2;
  for (int i = 0; i < g->n; i++)
    if (C.live[i] && g->nodes[i]->op == OP_EINSUM) p->flops_per_step += node_flops(g, g->nodes[i]) * t->microbatches;
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    C.buf[i] = C.gacc[i] = -1;
    if (!C.live[i] && n->op != OP_PARAM) continue;
    BufKind kind = n->op == OP_PARAM ? BUF_PARAM : n->op == OP_INPUT ? BUF_INPUT : BUF_ACT;
    if (C.final[i] >= 0 && users[i] == 0 && n->op != OP_FILL) { /* writes its one accumulator directly */
      C.buf[i] = C.gacc[C.final[i]];
      if (t->microbatches > 1) C.alt[i] = new_buf(&C, n->name, C.dt[i], &n->shape, BUF_ACT);
      C.rd[i] = C.buf[i];
      continue;
    }
    C.buf[i] = C.rd[i] = new_buf(&C, n->name, C.dt[i], &n->shape, kind);
    if (n->op == OP_PARAM && t->precision == PREC_BF16 && C.live[i]) /* its bf16 copy, made at the step's start */
      C.rd[i] = prog_work_copy(p, &C.cap_bufs, &C.step, n->name, &n->shape, C.buf[i]);
    if (n->op == OP_PARAM) {
      Instr *in = prog_emit(&C.init, OP_INIT, C.buf[i]);
      p->bufs[C.buf[i]].whole = n->shape;
      in->i[0] = n->init;
      in->f[0] = n->init_a;
      in->f[1] = n->init_b;
      if (g->grad[i] >= 0) C.gacc[i] = new_buf(&C, arena_printf("%s.grad", n->name), DT_F32, &n->shape, BUF_GRAD);
    }
    if (n->op == OP_INPUT && n->init == SRC_TOKENS) {
      p->tokens_per_step = shape_numel(&n->shape) * t->microbatches;
      p->vocab = (int64_t)n->init_a;
    }
  }
  int mb_start = 0, mb_end = 0;
  for (int mb = 0; mb < t->microbatches; mb++) {
    mb_start = C.step.n;
    for (int i = 0; i < g->n; i++) {
      if (!C.live[i]) continue;
      emit_node(&C, g->nodes[i], mb);
      if (g->nodes[i]->phase == PH_BACKWARD) emit_grad_fold(&C, i, mb);
    }
    mb_end = C.step.n;
  }
  emit_update(&C);
  prog_place(p, &C.step, mb_start, mb_end, NULL);
  prog_finish(p, &C.init, &C.step);
  return p;
}
