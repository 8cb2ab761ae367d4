/* backend.c: the CPU backend's table. The arena is one host allocation;
 * exec dispatches through `kernels`, a table with one entry per op of
 * ops.def, so an op without a CPU kernel does not compile.
 *
 * Dtypes: the kernels compute in f32. Element-wise ops (elementwise.c) and
 * column sums (sum_to, the norms' gain gradients) read and write bf16 as they
 * go; einsums take bf16 as it is (einsum.c). The row-wise ops (norms,
 * softmax, cross-entropy) run an all-f32 instruction on the arena in one
 * call, one with bf16 operands in chunks of rows: each chunk of a bf16
 * operand is widened into a thread's scratch, the f32 kernel runs on the
 * chunk, and a bf16 output is rounded (to nearest even) back into the arena.
 * The rest (reductions over an axis, MoE routing, mse) widen their whole
 * operands. So scratch holds a few chunks per thread, except for those ops;
 * extra_bytes reports its peak. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#define CHUNK (1 << 15) /* elements of the widest operand per chunk: a few of them fit in a core's L2 */
#define OUT MAXIN       /* scratch slot of the output */

typedef struct Cpu {
  const Program *p;
  unsigned char *arena;
  double loss;
  StepStatus err;
  Scratch conv[MAXIN + 1]; /* f32 views of bf16 operands: one per input, one for the output */
  Scratch *tconv;          /* the same for each thread's chunks: [thread][MAXIN + 1] */
  int threads;
  Scratch es;             /* einsum staging */
  Scratch rows;           /* per-row losses */
  EinsumPlan **plans[2];  /* [init?][instruction]: one of `shapes` */
  EinsumPlan **shapes;    /* the plans, one per einsum spec, shapes and dtypes */
  const Instr **shape_of; /* the first instruction of each */
  int nshapes;
  int64_t arena_alloc;
} Cpu;

void *scratch_get(Scratch *s, size_t bytes) {
  if (bytes > s->cap) {
    free(s->p);
    s->cap = bytes;
    s->p = xmalloc(bytes ? bytes : 1);
  }
  return s->p;
}

/* Conversions split across threads when they are long and no parallel region
   runs (inside one, as in a chunk, they stay serial: even a parallel region
   that runs on one thread costs about half a microsecond to enter). */
CARVE_CLONES void cvt_to_f32(float *restrict dst, const uint16_t *restrict src, int64_t n) {
  if (n > 65536 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] = km_f32(src[i]);
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = km_f32(src[i]);
  }
}

CARVE_CLONES void cvt_to_bf16(uint16_t *restrict dst, const float *restrict src, int64_t n) {
  if (n > 65536 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] = km_bf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = km_bf16(src[i]);
  }
}

static Cpu *C(Backend *b) { return b->impl; }
static void *A(Cpu *c, int b) { return c->arena + c->p->bufs[b].offset; }
static DType T(const Cpu *c, int b) { return c->p->bufs[b].dtype; }
static int64_t N(const Cpu *c, int b) { return shape_numel(&c->p->bufs[b].shape); }
static const Shape *S(const Cpu *c, int b) { return &c->p->bufs[b].shape; }
static int64_t last(const Cpu *c, int b) {
  const Shape *s = S(c, b);
  return s->rank ? s->d[s->rank - 1] : 1;
}

static void fail(Cpu *c, const char *why) {
#pragma omp critical(carve_cpu_error)
  if (!c->err.error) c->err.error = why;
}

/* ---------------------------------------------------------------- f32 views */

/* Elements [e0, e0 + n) of buffer b as f32 (i32 as it is): the arena itself,
   or widened into scratch slot k. */
static const float *rd_in(Cpu *c, Scratch *s, int k, int b, int64_t e0, int64_t n) {
  if (T(c, b) != DT_BF16) return (const float *)A(c, b) + e0;
  float *t = scratch_get(&s[k], sizeof(float) * (size_t)n);
  cvt_to_f32(t, (const uint16_t *)A(c, b) + e0, n);
  return t;
}

/* Where a kernel writes elements [e0, e0 + n) of b. */
static float *wr_in(Cpu *c, Scratch *s, int b, int64_t e0, int64_t n) {
  if (T(c, b) != DT_BF16) return (float *)A(c, b) + e0;
  float *t = scratch_get(&s[OUT], sizeof(float) * (size_t)n);
  return t;
}

/* the same in the shared slots, outside parallel chunks */
static const float *rd(Cpu *c, int k, int b, int64_t e0, int64_t n) { return rd_in(c, c->conv, k, b, e0, n); }
static float *wr(Cpu *c, int b, int64_t e0, int64_t n) { return wr_in(c, c->conv, b, e0, n); }

static void wr_done(Cpu *c, int b, int64_t e0, int64_t n, float *t) {
  if (T(c, b) == DT_BF16) cvt_to_bf16((uint16_t *)A(c, b) + e0, t, n);
}

/* ---------------------------------------------------------------- row-wise ops */

/* A chunk of an instruction's rows, its operands as f32 */
typedef struct Chunk {
  float *o;
  const float *x[MAXIN];
  int64_t r0, nr; /* first row and rows in this chunk */
  int64_t rows;   /* rows in all */
} Chunk;
typedef void (*RowKernel)(Cpu *c, const Instr *in, const Chunk *ch);

typedef struct Rows {
  int64_t rows;   /* rows of the output */
  unsigned whole; /* bit k: input k is read whole by every row (a gain, a bias); the others have rows */
  int64_t align;  /* chunks start at multiples of this many rows */
} Rows;

/* The scratch slots of the calling thread (inside a parallel region). */
static Scratch *thread_slots(Cpu *c) { return c->tconv + (size_t)omp_get_thread_num() * (MAXIN + 1); }

static bool any_bf16(const Cpu *c, const Instr *in) {
  bool any = in->out >= 0 && T(c, in->out) == DT_BF16;
  for (int k = 0; k < in->nin; k++) any |= T(c, in->in[k]) == DT_BF16;
  return any;
}

/* One chunk of rows [r0, r0 + nr): its operands widened into the slots s,
   the kernel, the output rounded back. */
static void chunk(Cpu *c, const Instr *in, const Rows *r, RowKernel k, Scratch *s, const Chunk *whole, int64_t r0,
                  int64_t nr) {
  Chunk ch = *whole;
  int64_t w_out = N(c, in->out) / r->rows;
  ch.r0 = r0, ch.nr = nr;
  for (int j = 0; j < in->nin; j++) {
    if (r->whole >> j & 1) continue;
    int64_t w = N(c, in->in[j]) / r->rows;
    ch.x[j] = rd_in(c, s, j, in->in[j], r0 * w, nr * w);
  }
  ch.o = wr_in(c, s, in->out, r0 * w_out, nr * w_out);
  k(c, in, &ch);
  wr_done(c, in->out, r0 * w_out, nr * w_out, ch.o);
}

/* Runs k over the rows of `in`: in one call when nothing needs widening
   (the kernel parallelises itself), else in chunks that small enough to stay
   in cache, the chunks shared out over the threads (one parallel region). */
static void by_rows(Cpu *c, const Instr *in, Rows r, RowKernel k) {
  int64_t n_out = N(c, in->out), w_out = n_out / (r.rows ? r.rows : 1);
  Chunk whole = {.rows = r.rows};
  for (int j = 0; j < in->nin; j++)
    if (r.whole >> j & 1) whole.x[j] = rd(c, j, in->in[j], 0, N(c, in->in[j]));
  if (!any_bf16(c, in) || n_out <= CHUNK || r.rows == 1) {
    chunk(c, in, &r, k, c->conv, &whole, 0, r.rows);
    return;
  }
  int64_t per = CHUNK / (w_out ? w_out : 1);
  if (per < 1) per = 1;
  if (r.align > 1) per = (per + r.align - 1) / r.align * r.align;
  int64_t nchunks = (r.rows + per - 1) / per;
#pragma omp parallel for schedule(static) num_threads(c->threads)
  for (int64_t q = 0; q < nchunks; q++) {
    int64_t r0 = q * per, nr = r.rows - r0 < per ? r.rows - r0 : per;
    chunk(c, in, &r, k, thread_slots(c), &whole, r0, nr);
  }
}

static void r_softmax(Cpu *c, const Instr *in, const Chunk *ch) {
  int64_t n = last(c, in->out);
  if (in->op == OP_SOFTMAX)
    k_softmax(ch->o, ch->x[0], ch->nr, n, in->i[0] != 0);
  else
    k_softmax_bwd(ch->o, ch->x[0], ch->x[1], ch->nr, n);
}
static void r_norm(Cpu *c, const Instr *in, const Chunk *ch) {
  int64_t n = last(c, in->out);
  float eps = (float)in->f[0];
  switch (in->op) {
  case OP_LAYERNORM: k_layernorm(ch->o, ch->x[0], ch->x[1], ch->x[2], ch->nr, n, eps); break;
  case OP_RMSNORM: k_rmsnorm(ch->o, ch->x[0], ch->x[1], ch->nr, n, eps); break;
  default: k_layernorm_bwd_x(ch->o, ch->x[0], ch->x[1], ch->x[2], ch->nr, n, eps, in->op == OP_RMS_BWD_X);
  }
}
static void r_xent_bwd(Cpu *c, const Instr *in, const Chunk *ch) {
  float scale = ch->x[2][0] / (float)ch->rows;
  if (!k_xent_bwd(ch->o, ch->x[0], (const int32_t *)ch->x[1], scale, ch->nr, last(c, in->in[0])))
    fail(c, "a label is outside the classes");
}

static int64_t rows_of(const Cpu *c, int b) { return N(c, b) / last(c, b); }

/* ---------------------------------------------------------------- whole-operand ops */

/* Ops that are not row-wise: every operand widened whole. */
static void r_whole(Cpu *c, const Instr *in, const Chunk *ch) {
  int64_t outer, n, inner;
  const Shape *big = in->op == OP_EXPAND || in->op == OP_MAX_BWD ? S(c, in->out) : S(c, in->in[0]);
  int axis = (int)in->i[0];
  outer = inner = 1;
  if (in->op == OP_SUM || in->op == OP_MEAN || in->op == OP_MAX || in->op == OP_EXPAND || in->op == OP_MAX_BWD) {
    for (int i = 0; i < axis; i++) outer *= big->d[i];
    for (int i = axis + 1; i < big->rank; i++) inner *= big->d[i];
  }
  n = big->rank ? big->d[axis < big->rank ? axis : 0] : 1;
  int x = in->in[0], y = in->nin > 1 ? in->in[1] : -1;
  switch (in->op) {
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX: k_reduce(in->op, ch->o, ch->x[0], outer, n, inner); break;
  case OP_EXPAND: k_expand(ch->o, ch->x[0], outer, n, inner, (float)in->f[0]); break;
  case OP_MAX_BWD: k_max_bwd(ch->o, ch->x[0], ch->x[1], outer, n, inner); break;
  case OP_MSE: k_mse(ch->o, ch->x[0], ch->x[1], N(c, x)); break;
  case OP_MSE_BWD: k_mse_bwd(ch->o, ch->x[0], ch->x[1], ch->x[2], N(c, x)); break;
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE:
    k_moe_gate(ch->o, in->op == OP_MOE_COMBINE, ch->x[0], rows_of(c, x), last(c, x), last(c, in->out), (int)in->i[0]);
    break;
  case OP_MOE_COMBINE_BWD:
    k_moe_combine_bwd(ch->o, ch->x[0], ch->x[1], rows_of(c, x), last(c, x), last(c, y), (int)in->i[0]);
    break;
  default: CARVE_ASSERT(0, "not a whole-operand op");
  }
}
static void whole(Cpu *c, const Instr *in) { by_rows(c, in, (Rows){.rows = 1}, r_whole); }

/* ---------------------------------------------------------------- column sums */

/* sum_to and the norms' gain gradients read bf16 as they go (kernels.c) */
static Arr arr(Cpu *c, int b) { return (Arr){A(c, b), T(c, b) == DT_BF16}; }

static void column_sums(Cpu *c, const Instr *in) {
  int x = in->in[0], o = in->out;
  int64_t n = N(c, o), rows = N(c, x) / n;
  float *out = wr(c, o, 0, n);
  if (in->op == OP_SUM_TO)
    k_sum_to(out, arr(c, x), rows, n);
  else
    k_layernorm_bwd_g(out, arr(c, x), arr(c, in->in[1]), rows, n, (float)in->f[0], in->op == OP_RMS_BWD_G);
  wr_done(c, o, 0, n, out);
}

/* ---------------------------------------------------------------- indexed ops */

/* rows of the table, each widened as it is copied */
static void embed(Cpu *c, const Instr *in) {
  int tb = in->in[0], o = in->out;
  const int32_t *ids = A(c, in->in[1]);
  int64_t n = N(c, in->in[1]), vocab = S(c, tb)->d[0], h = S(c, tb)->d[1];
  if (T(c, tb) == DT_F32 && T(c, o) == DT_F32) {
    if (!k_embed(A(c, o), A(c, tb), ids, n, vocab, h)) fail(c, "a token id is outside the embedding table");
    return;
  }
  for (int64_t t = 0; t < n; t++)
    if (ids[t] < 0 || ids[t] >= vocab) return fail(c, "a token id is outside the embedding table");
#pragma omp parallel for schedule(static) if (n * h > 65536)
  for (int64_t t = 0; t < n; t++) {
    for (int64_t j = 0; j < h; j++) {
      int64_t from = (int64_t)ids[t] * h + j, to = t * h + j;
      float v = T(c, tb) == DT_BF16 ? km_f32(((const uint16_t *)A(c, tb))[from]) : ((const float *)A(c, tb))[from];
      if (T(c, o) == DT_BF16)
        ((uint16_t *)A(c, o))[to] = km_bf16(v);
      else
        ((float *)A(c, o))[to] = v;
    }
  }
}

/* the table gradient accumulates in f32, chunk by chunk of dy */
static void embed_bwd(Cpu *c, const Instr *in) {
  int o = in->out, dy = in->in[1];
  const int32_t *ids = A(c, in->in[0]);
  int64_t n = N(c, in->in[0]), vocab = S(c, o)->d[0], h = S(c, o)->d[1];
  float *out = wr(c, o, 0, N(c, o));
  memset(out, 0, sizeof(float) * (size_t)N(c, o));
  int64_t per = T(c, dy) == DT_BF16 ? (CHUNK / h > 0 ? CHUNK / h : 1) : n;
  for (int64_t t0 = 0; t0 < n; t0 += per) {
    int64_t nt = n - t0 < per ? n - t0 : per;
    const float *d = rd(c, 1, dy, t0 * h, nt * h);
    for (int64_t t = 0; t < nt; t++) {
      int32_t id = ids[t0 + t];
      if (id < 0 || id >= vocab) return fail(c, "a token id is outside the embedding table");
      float *row = out + (int64_t)id * h;
      for (int64_t j = 0; j < h; j++) row[j] += d[t * h + j];
    }
  }
  wr_done(c, o, 0, N(c, o), out);
}

/* the mean over rows of each row's loss (rows in order, in double) */
static void xent(Cpu *c, const Instr *in) {
  int x = in->in[0];
  int64_t rows = rows_of(c, x), v = last(c, x);
  double *row = scratch_get(&c->rows, sizeof(double) * (size_t)rows);
  const int32_t *labels = A(c, in->in[1]);
  if (T(c, x) != DT_BF16) {
    if (!k_xent_rows(row, A(c, x), labels, rows, v)) return fail(c, "a label is outside the classes");
  } else {
    int64_t per = CHUNK / v > 0 ? CHUNK / v : 1, nchunks = (rows + per - 1) / per;
#pragma omp parallel for schedule(static) num_threads(c->threads)
    for (int64_t q = 0; q < nchunks; q++) {
      int64_t r0 = q * per, nr = rows - r0 < per ? rows - r0 : per;
      if (!k_xent_rows(row + r0, rd_in(c, thread_slots(c), 0, x, r0 * v, nr * v), labels + r0, nr, v))
        fail(c, "a label is outside the classes");
    }
    if (c->err.error) return;
  }
  double total = 0;
  for (int64_t r = 0; r < rows; r++) total += row[r];
  float *o = wr(c, in->out, 0, 1);
  o[0] = (float)(total / (double)rows);
  wr_done(c, in->out, 0, 1, o);
}

/* ---------------------------------------------------------------- the kernel table */

static void run_fill(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  int64_t n = N(c, in->out);
  float *o = wr(c, in->out, 0, n);
  for (int64_t i = 0; i < n; i++) o[i] = (float)in->f[0];
  wr_done(c, in->out, 0, n, o);
}
static void run_init(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  int64_t n = N(c, in->out);
  float *o = wr(c, in->out, 0, n);
  k_init(o, n, in, c->p->bufs[in->out].name, c->p->seed);
  wr_done(c, in->out, 0, n, o);
}
static void run_load(Cpu *c, const Instr *in, const StepInfo *si) {
  int64_t n = N(c, in->out);
  void *o = T(c, in->out) == DT_I32 ? A(c, in->out) : wr(c, in->out, 0, n);
  k_load(o, &c->p->bufs[in->out], in, c->p->seed, si);
  if (T(c, in->out) != DT_I32) wr_done(c, in->out, 0, n, o);
}
static void run_einsum(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)c, (void)in, (void)si;
  CARVE_ASSERT(0, "einsums run through their prepared plan");
}
/* Element-wise ops, in one pass whatever the dtypes (elementwise.c). */
static Out out_of(Cpu *c, int b) { return (Out){A(c, b), T(c, b) == DT_BF16}; }
static void run_unary(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  e_unary(in->op, out_of(c, in->out), arr(c, in->in[0]), N(c, in->out));
}
static void run_unary_bwd(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  e_unary_bwd(in->op, out_of(c, in->out), arr(c, in->in[0]), arr(c, in->in[1]), N(c, in->out));
}
static void run_binary(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  e_binary(in->op, out_of(c, in->out), N(c, in->out), arr(c, in->in[0]), N(c, in->in[0]), arr(c, in->in[1]),
           N(c, in->in[1]));
}
static void run_scale(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  e_scale(out_of(c, in->out), arr(c, in->in[0]), N(c, in->out), (float)in->f[0], (float)in->f[1]);
}
static void run_copy(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  if (in->out != in->in[0]) /* not a reshape in place */
    e_scale(out_of(c, in->out), arr(c, in->in[0]), N(c, in->out), 1, 0);
}
static void run_acc(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  e_acc(out_of(c, in->out), arr(c, in->in[0]), N(c, in->out));
}
static void run_whole(Cpu *c, const Instr *in, const StepInfo *si) { (void)si, whole(c, in); }
static void run_columns(Cpu *c, const Instr *in, const StepInfo *si) { (void)si, column_sums(c, in); }
static void run_softmax(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  int64_t n = last(c, in->out);
  by_rows(c, in, (Rows){.rows = rows_of(c, in->out), .align = in->op == OP_SOFTMAX && in->i[0] ? n : 1}, r_softmax);
}
static void run_norm(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  unsigned whole = in->op == OP_LAYERNORM ? 6u : 2u; /* gains and biases */
  by_rows(c, in, (Rows){.rows = rows_of(c, in->out), .whole = whole}, r_norm);
}
static void run_embed(Cpu *c, const Instr *in, const StepInfo *si) { (void)si, embed(c, in); }
static void run_embed_bwd(Cpu *c, const Instr *in, const StepInfo *si) { (void)si, embed_bwd(c, in); }
static void run_xent(Cpu *c, const Instr *in, const StepInfo *si) { (void)si, xent(c, in); }
static void run_xent_bwd(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  by_rows(c, in, (Rows){.rows = rows_of(c, in->out), .whole = 4u}, r_xent_bwd);
}
static void run_loss(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  c->loss += in->f[0] * rd(c, 0, in->in[0], 0, 1)[0];
}
static void run_sumsq(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  int x = in->in[0];
  ((float *)A(c, in->out))[0] += (float)(in->f[0] * k_sumsq(rd(c, 0, x, 0, N(c, x)), N(c, x)));
}
static void run_clip(Cpu *c, const Instr *in, const StepInfo *si) {
  (void)si;
  ((float *)A(c, in->out))[0] = km_clip(((float *)A(c, in->in[0]))[0], (float)in->f[0]);
}
static void run_adamw(Cpu *c, const Instr *in, const StepInfo *si) {
  float clip = ((float *)A(c, in->in[3]))[0], lr = km_lr_at((float)in->f[0], in->i[0], si->step);
  k_adamw(A(c, in->out), A(c, in->in[0]), A(c, in->in[1]), A(c, in->in[2]), N(c, in->out), clip, lr, (float)in->f[1],
          (float)in->f[2], (float)in->f[3], (float)in->f[4], si->step);
}
static void run_sgd(Cpu *c, const Instr *in, const StepInfo *si) {
  float clip = ((float *)A(c, in->in[2]))[0], lr = km_lr_at((float)in->f[0], in->i[0], si->step);
  k_sgd(A(c, in->out), A(c, in->in[0]), A(c, in->in[1]), N(c, in->out), clip, lr, (float)in->f[1], (float)in->f[2]);
}

typedef void (*Kernel)(Cpu *c, const Instr *in, const StepInfo *si);

/* Not kernels: graph leaves, and communication (runtime/comm.c). */
#define run_PARAM NULL
#define run_INPUT NULL
#define run_ALL_REDUCE NULL
#define run_ALL_GATHER NULL
#define run_REDUCE_SCATTER NULL
#define run_SHARD NULL
#define run_GATHER_DIM NULL
#define run_SPLIT_DIM NULL
#define run_ALL_TO_ALL_DIM NULL
#define run_REDUCE_SCATTER_DIM NULL
#define run_SEND NULL
#define run_RECV NULL
/* every other op names its kernel */
#define run_FILL run_fill
#define run_EINSUM run_einsum
#define run_ADD run_binary
#define run_SUB run_binary
#define run_MUL run_binary
#define run_DIV run_binary
#define run_SCALE run_scale
#define run_GELU run_unary
#define run_RELU run_unary
#define run_SILU run_unary
#define run_TANH run_unary
#define run_EXP run_unary
#define run_RSQRT run_unary
#define run_SUM run_whole
#define run_MEAN run_whole
#define run_MAX run_whole
#define run_SOFTMAX run_softmax
#define run_LAYERNORM run_norm
#define run_RMSNORM run_norm
#define run_EMBED run_embed
#define run_XENT run_xent
#define run_MSE run_whole
#define run_MOE_DISPATCH run_whole
#define run_MOE_COMBINE run_whole
#define run_RESHAPE run_copy
#define run_CAST run_copy
#define run_SUM_TO run_columns
#define run_EXPAND run_whole
#define run_GELU_BWD run_unary_bwd
#define run_RELU_BWD run_unary_bwd
#define run_SILU_BWD run_unary_bwd
#define run_TANH_BWD run_unary_bwd
#define run_RSQRT_BWD run_unary_bwd
#define run_MAX_BWD run_whole
#define run_SOFTMAX_BWD run_softmax
#define run_LN_BWD_X run_norm
#define run_LN_BWD_G run_columns
#define run_RMS_BWD_X run_norm
#define run_RMS_BWD_G run_columns
#define run_EMBED_BWD run_embed_bwd
#define run_XENT_BWD run_xent_bwd
#define run_MSE_BWD run_whole
#define run_MOE_COMBINE_BWD run_whole
#define run_INIT run_init
#define run_LOAD run_load
#define run_COPY run_copy
#define run_ACC run_acc
#define run_LOSS run_loss
#define run_SUMSQ run_sumsq
#define run_CLIP run_clip
#define run_ADAMW run_adamw
#define run_SGD run_sgd

static const Kernel kernels[OP_COUNT] = {
#define OP(name, text, nin, iattrs, fattrs, flags) [OP_##name] = run_##name,
#include "ops.def"
#undef OP
};

/* ---------------------------------------------------------------- the table */

static const char *cpu_supports(Backend *b, const Program *p, const Instr *in) {
  (void)b, (void)p;
  if (op_info[in->op].flags & OPF_COMM) return NULL; /* the transport's */
  return kernels[in->op] ? NULL : "the CPU backend has no kernel for it";
}

/* The plan of an einsum instruction: one made for the same product earlier,
   or a new one (NULL with why). */
static EinsumPlan *plan_for(Cpu *c, const Instr *in, char *why, size_t n) {
  for (int k = 0; k < c->nshapes; k++)
    if (einsum_same(c->p, in, c->shape_of[k])) return c->shapes[k];
  const Shape *ins[2] = {S(c, in->in[0]), in->nin > 1 ? S(c, in->in[1]) : NULL};
  EinsumPlan *e = einsum_prepare(in->spec, in->nin, ins, T(c, in->in[0]), S(c, in->out), T(c, in->out), why, n);
  if (!e) return NULL;
  c->shapes = xrealloc(c->shapes, sizeof(EinsumPlan *) * (size_t)(c->nshapes + 1));
  c->shape_of = xrealloc(c->shape_of, sizeof(Instr *) * (size_t)(c->nshapes + 1));
  c->shapes[c->nshapes] = e, c->shape_of[c->nshapes++] = in;
  return e;
}

/* The einsum plans of one list; identical products share a plan. */
static bool prepare_list(Cpu *c, const Instr *list, int n, bool init, FILE *err) {
  const Program *p = c->p;
  EinsumPlan **plans = c->plans[init] = xcalloc((size_t)n + 1, sizeof(EinsumPlan *));
  for (int i = 0; i < n; i++) {
    const Instr *in = &list[i];
    if (in->op != OP_EINSUM) continue;
    char why[256];
    plans[i] = plan_for(c, in, why, sizeof why);
    if (!plans[i]) {
      fprintf(err, "carve: error: program for rank %d, %s instruction %d (einsum %s): %s\n", p->rank,
              init ? "init" : "step", i, in->spec, why);
      return false;
    }
  }
  return true;
}

static bool cpu_load(Backend *b, const Program *p, FILE *err) {
  Cpu *c = C(b);
  c->p = p;
  if (!backend_check(b, p, err)) return false;
  size_t bytes = (size_t)((p->arena_bytes + 63) / 64 * 64 + 64);
  c->arena = aligned_alloc(64, bytes);
  if (!c->arena) {
    char s[32];
    fprintf(err, "carve: error: rank %d cannot allocate its %s arena\n", p->rank,
            fmt_bytes((double)p->arena_bytes, s, sizeof s));
    return false;
  }
  memset(c->arena, 0, bytes); /* touched once here, not in the first step; and deterministic */
  c->arena_alloc = (int64_t)bytes;
  c->threads = omp_get_max_threads();
  c->tconv = xcalloc((size_t)c->threads * (MAXIN + 1), sizeof(Scratch));
  return prepare_list(c, p->init, p->ninit, true, err) && prepare_list(c, p->step, p->nstep, false, err);
}

static void cpu_exec(Backend *b, const Instr *in, int index, bool init, const StepInfo *si) {
  Cpu *c = C(b);
  const char *before = c->err.error;
  if (in->op == OP_EINSUM) {
    const void *ins[2] = {A(c, in->in[0]), in->nin > 1 ? A(c, in->in[1]) : NULL};
    einsum_exec(c->plans[init][index], ins, A(c, in->out), &c->es);
  } else {
    kernels[in->op](c, in, si);
  }
  if (!before && c->err.error) c->err.error_instr = index, c->err.error_init = init;
}

static void *cpu_host(Backend *b, int64_t offset) { return C(b)->arena + offset; }
static void cpu_upload(Backend *b, int64_t off, const void *src, int64_t n) {
  memcpy(C(b)->arena + off, src, (size_t)n);
}
static void cpu_download(Backend *b, void *dst, int64_t off, int64_t n) { memcpy(dst, C(b)->arena + off, (size_t)n); }
static void cpu_copy(Backend *b, int64_t dst, int64_t src, int64_t n) {
  memmove(C(b)->arena + dst, C(b)->arena + src, (size_t)n);
}
static void *cpu_addr(Backend *b, int64_t offset) { return C(b)->arena + offset; }
static void *cpu_alloc(Backend *b, int64_t bytes, bool host) {
  (void)b, (void)host;
  return xmalloc(bytes > 0 ? (size_t)bytes : 1);
}
static void cpu_release(Backend *b, void *p, bool host) {
  (void)b, (void)host;
  free(p);
}
static void cpu_copy_rows(Backend *b, int stream, void *dst, int64_t dst_stride, const void *src, int64_t src_stride,
                          int64_t row_bytes, int64_t rows) {
  (void)b, (void)stream;
  for (int64_t r = 0; r < rows; r++) {
    unsigned char *d = (unsigned char *)dst + r * dst_stride;
    if (src)
      memmove(d, (const unsigned char *)src + r * src_stride, (size_t)row_bytes);
    else
      memset(d, 0, (size_t)row_bytes);
  }
}
static void cpu_drain(Backend *b, int stream) { (void)b, (void)stream; }
static int cpu_record(Backend *b, int stream) {
  (void)b, (void)stream;
  return 0;
}
static void cpu_wait(Backend *b, int stream, int event) { (void)b, (void)stream, (void)event; }

static void cpu_synchronize(Backend *b, StepStatus *st) {
  Cpu *c = C(b);
  *st = c->err;
  st->loss = c->loss;
  c->loss = 0;
  c->err = (StepStatus){0};
}

static int64_t cpu_extra(Backend *b) {
  Cpu *c = C(b);
  int64_t n = (int64_t)(c->es.cap + c->rows.cap);
  for (int k = 0; k <= MAXIN; k++) n += (int64_t)c->conv[k].cap;
  for (int k = 0; c->tconv && k < c->threads * (MAXIN + 1); k++) n += (int64_t)c->tconv[k].cap;
  return n + (c->arena_alloc - (c->p ? c->p->arena_bytes : 0));
}

static void cpu_close(Backend *b) {
  Cpu *c = C(b);
  for (int k = 0; k < c->nshapes; k++) einsum_free(c->shapes[k]);
  free(c->shapes);
  free(c->shape_of);
  free(c->plans[0]);
  free(c->plans[1]);
  for (int k = 0; k <= MAXIN; k++) free(c->conv[k].p);
  for (int k = 0; c->tconv && k < c->threads * (MAXIN + 1); k++) free(c->tconv[k].p);
  free(c->tconv);
  free(c->es.p);
  free(c->rows.p);
  free(c->arena);
  free(c);
  free(b);
}

Backend *backend_cpu(void) {
  Backend *b = xcalloc(1, sizeof(Backend));
  *b = (Backend){.name = "cpu",
                 .describe = einsum_engine(),
                 .bf16_fast = einsum_bf16_fast(),
                 /* a chunk per operand slot, for each thread and the shared slots, and room for the
                    per-row losses, whole reads of small operands (gains) and the arena's alignment */
                 .workspace =
                     (int64_t)(omp_get_max_threads() + 1) * (MAXIN + 1) * CHUNK * (int64_t)sizeof(float) + (1 << 20),
                 .load = cpu_load,
                 .supports = cpu_supports,
                 .host = cpu_host,
                 .upload = cpu_upload,
                 .download = cpu_download,
                 .copy = cpu_copy,
                 .addr = cpu_addr,
                 .alloc = cpu_alloc,
                 .release = cpu_release,
                 .copy_rows = cpu_copy_rows,
                 .drain = cpu_drain,
                 .exec = cpu_exec,
                 .record = cpu_record,
                 .wait = cpu_wait,
                 .synchronize = cpu_synchronize,
                 .extra_bytes = cpu_extra,
                 .close = cpu_close,
                 .impl = xcalloc(1, sizeof(Cpu))};
  return b;
}
