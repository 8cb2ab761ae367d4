/* backend.c: the CUDA backend's table (backend.h), compiled as C11.
 *
 * The arena is one cudaMalloc, laid out at codegen's offsets (parameters,
 * gradients, optimizer state, activations). Everything a step does is
 * enqueued on one compute stream: einsums as cuBLASLt products (einsum.c),
 * every other op as a kernel (*.cu); the step's one host wait is
 * synchronize, which reads the device status (the loss and the error word
 * kernels set on bad data) in one copy.
 *
 * Values made on the host (init from the counter-based RNG, each step's
 * inputs) are written into pinned staging and uploaded asynchronously; the
 * staging is sized when a program is loaded, so a step never waits for it.
 * Where a bf16 parameter copy is cast from its f32 master at the start of a
 * step and the optimizer updates that master at the end, the optimizer
 * writes the bf16 copy in the same pass and the next step's cast is
 * skipped (step 1 runs it: the master then comes from init or a
 * checkpoint). */
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "../cpu/cpu.h" /* k_init, k_load, k_lr_at: host sources shared with the CPU */
#include "cuda.h"

int cuda_rank;

_Noreturn void cuda_fail(const char *call, const char *what, const char *file, int line) {
  carve_fatal("rank %d: CUDA: %s failed at %s:%d: %s", cuda_rank, call, file, line, what);
}

const char *cublas_status_text(int status) {
  switch (status) {
  case CUBLAS_STATUS_NOT_INITIALIZED: return "cuBLAS not initialised (no usable GPU?)";
  case CUBLAS_STATUS_ALLOC_FAILED: return "cuBLAS could not allocate memory";
  case CUBLAS_STATUS_INVALID_VALUE: return "cuBLAS: invalid value";
  case CUBLAS_STATUS_ARCH_MISMATCH: return "cuBLAS: not supported on this GPU";
  case CUBLAS_STATUS_EXECUTION_FAILED: return "cuBLAS: a kernel failed to run";
  case CUBLAS_STATUS_NOT_SUPPORTED: return "cuBLAS: not supported";
  case CUBLAS_STATUS_INTERNAL_ERROR: return "cuBLAS: internal error";
  default: return "cuBLAS error";
  }
}

/* What synchronize reads back: one small device struct. */
typedef struct DevStatus {
  double loss;
  int err; /* 0, or the tag of the first instruction that found bad data */
} DevStatus;

typedef struct Cu {
  const Program *p;
  int device;
  char describe[160];
  unsigned char *arena;   /* device */
  DevStatus *status;      /* device */
  cudaStream_t stream[2]; /* compute, communication */
  cudaEvent_t *events;         /* one per record since the last synchronize (grown as needed) */
  int nevents, events_cap;     /* recorded since the last synchronize; made */
  unsigned char *staging;      /* pinned host memory for uploads */
  int64_t staging_cap, staged; /* bytes, and bytes used since the last synchronize */
  int64_t step_staging;        /* bytes a step's loads take (kept after init's larger uploads) */
  int64_t staging_peak;        /* the most staging held at once */
  cublasLtHandle_t lt;
  void *ws;               /* the cuBLASLt workspace */
  void *scratch;          /* einsum copies, row losses */
  int64_t scratch_bytes;  /* the most any instruction needs */
  CuEinsum **plans[2];    /* [init?][instruction] */
  CuEinsum **shapes;      /* one plan per product */
  const Instr **shape_of; /* the first instruction of each */
  int nshapes;
  int *fused[2];      /* [init?][instruction]: a cast the optimizer writes (step list) */
  uint16_t **half[2]; /* [init?][instruction]: the bf16 copy an optimizer writes, or NULL */
  bool wrote_half;    /* an optimizer has written its bf16 copy since the last synchronize */
  bool fused_fresh;   /* the fused copies hold the masters' values: a step's optimizers wrote them */
  int64_t extra;      /* device bytes besides the arena */
} Cu;

static Cu *C(Backend *b) { return b->impl; }
static const Buffer *B(const Cu *c, int b) { return &c->p->bufs[b]; }
static void *A(const Cu *c, int b) { return c->arena + B(c, b)->offset; }
static bool bf(const Cu *c, int b) { return B(c, b)->dtype == DT_BF16; }
static DIn I(const Cu *c, int b) { return (DIn){A(c, b), bf(c, b)}; }
static DOut O(const Cu *c, int b) { return (DOut){A(c, b), bf(c, b)}; }
static int64_t N(const Cu *c, int b) { return shape_numel(&B(c, b)->shape); }
static const Shape *S(const Cu *c, int b) { return &B(c, b)->shape; }
static int64_t last(const Cu *c, int b) { return S(c, b)->rank ? S(c, b)->d[S(c, b)->rank - 1] : 1; }
static int64_t rows_of(const Cu *c, int b) { return N(c, b) / last(c, b); }
static cudaStream_t St(const Cu *c) { return c->stream[0]; }

/* ---------------------------------------------------------------- host-made values */

/* Pinned staging for n bytes, valid until the next synchronize. In the init
   list it may wait for earlier uploads to finish; in a step it never has to
   (load sized it for every load of a step). */
static void *stage(Cu *c, int64_t n) {
  n = (n + 63) / 64 * 64;
  if (c->staged + n > c->staging_cap) {
    CU_CHECK(cudaStreamSynchronize(St(c)));
    c->staged = 0;
    if (n > c->staging_cap) {
      if (c->staging) CU_CHECK(cudaFreeHost(c->staging));
      c->staging = NULL, c->staging_cap = 0;
      CU_CHECK(cudaMallocHost((void **)&c->staging, (size_t)n));
      c->staging_cap = n;
      if (n > c->staging_peak) c->staging_peak = n;
    }
  }
  void *p = c->staging + c->staged;
  c->staged += n;
  return p;
}

/* f32 values made on the host (`f`) into buffer b, narrowed to bf16 there
   when b is bf16; i32 buffers take them as they are. */
static void upload_made(Cu *c, int b, void *host_f32) {
  int64_t n = N(c, b);
  if (bf(c, b)) {
    uint16_t *h = (uint16_t *)host_f32; /* narrowed in place: element i lands before element i is overwritten */
    const float *f = host_f32;
    for (int64_t i = 0; i < n; i++) h[i] = km_bf16(f[i]);
  }
  CU_CHECK(cudaMemcpyAsync(A(c, b), host_f32, (size_t)B(c, b)->bytes, cudaMemcpyHostToDevice, St(c)));
}

static void run_init(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  float *h = stage(c, N(c, in->out) * (int64_t)sizeof(float));
  k_init(h, N(c, in->out), in, B(c, in->out)->name, c->p->seed);
  upload_made(c, in->out, h);
}

static void run_load(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag;
  void *h = stage(c, N(c, in->out) * 4);
  k_load(h, B(c, in->out), in, c->p->seed, si);
  upload_made(c, in->out, h);
}

/* ---------------------------------------------------------------- compute */

static void run_fill(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_fill(St(c), O(c, in->out), N(c, in->out), (float)in->f[0]);
}
static void run_unary(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_unary(St(c), in->op, O(c, in->out), I(c, in->in[0]), N(c, in->out));
}
static void run_unary_bwd(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_unary_bwd(St(c), in->op, O(c, in->out), I(c, in->in[0]), I(c, in->in[1]), N(c, in->out));
}
static void run_binary(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  int a = in->in[0], b = in->in[1];
  cu_binary(St(c), in->op, O(c, in->out), N(c, in->out), I(c, a), N(c, a), I(c, b), N(c, b));
}
static void run_scale(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_scale(St(c), O(c, in->out), I(c, in->in[0]), N(c, in->out), (float)in->f[0], (float)in->f[1]);
}
static void run_copy(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  if (in->out != in->in[0]) /* not a reshape in place */
    cu_scale(St(c), O(c, in->out), I(c, in->in[0]), N(c, in->out), 1, 0);
}
static void run_acc(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_acc(St(c), O(c, in->out), I(c, in->in[0]), N(c, in->out));
}

/* reductions and their backward over one axis, as [outer, n, inner] */
static void run_axis(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  const Shape *big = in->op == OP_EXPAND || in->op == OP_MAX_BWD ? S(c, in->out) : S(c, in->in[0]);
  int axis = (int)in->i[0];
  int64_t outer = 1, inner = 1, n = big->rank ? big->d[axis < big->rank ? axis : 0] : 1;
  for (int i = 0; i < axis; i++) outer *= big->d[i];
  for (int i = axis + 1; i < big->rank; i++) inner *= big->d[i];
  if (in->op == OP_EXPAND)
    cu_expand(St(c), O(c, in->out), I(c, in->in[0]), outer, n, inner, (float)in->f[0]);
  else if (in->op == OP_MAX_BWD)
    cu_max_bwd(St(c), O(c, in->out), I(c, in->in[0]), I(c, in->in[1]), outer, n, inner);
  else
    cu_reduce(St(c), in->op, O(c, in->out), I(c, in->in[0]), outer, n, inner);
}

static void run_softmax(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  int64_t n = last(c, in->out), rows = rows_of(c, in->out);
  if (in->op == OP_SOFTMAX)
    cu_softmax(St(c), O(c, in->out), I(c, in->in[0]), rows, n, in->i[0] != 0);
  else
    cu_softmax_bwd(St(c), O(c, in->out), I(c, in->in[0]), I(c, in->in[1]), rows, n);
}

static void run_norm(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  int64_t n = last(c, in->out), rows = rows_of(c, in->out);
  float eps = (float)in->f[0];
  const int *x = in->in;
  switch (in->op) {
  case OP_LAYERNORM: cu_layernorm(St(c), O(c, in->out), I(c, x[0]), I(c, x[1]), I(c, x[2]), rows, n, eps); break;
  case OP_RMSNORM: cu_rmsnorm(St(c), O(c, in->out), I(c, x[0]), I(c, x[1]), rows, n, eps); break;
  default:
    cu_norm_bwd_x(St(c), O(c, in->out), I(c, x[0]), I(c, x[1]), I(c, x[2]), rows, n, eps, in->op == OP_RMS_BWD_X);
  }
}

/* sum_to and the norms' gain gradients: sums over rows */
static void run_columns(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  int x = in->in[0], o = in->out;
  int64_t n = N(c, o), rows = N(c, x) / n;
  if (in->op == OP_SUM_TO)
    cu_sum_to(St(c), O(c, o), I(c, x), rows, n);
  else
    cu_norm_bwd_g(St(c), O(c, o), I(c, x), I(c, in->in[1]), rows, n, (float)in->f[0], in->op == OP_RMS_BWD_G);
}

static int *err_word(const Cu *c) { return &c->status->err; }

static void run_embed(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)si;
  int tb = in->in[0];
  cu_embed(St(c), O(c, in->out), I(c, tb), A(c, in->in[1]), N(c, in->in[1]), S(c, tb)->d[0], S(c, tb)->d[1],
           err_word(c), tag);
}
static void run_embed_bwd(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)si;
  int o = in->out;
  cu_embed_bwd(St(c), O(c, o), A(c, in->in[0]), I(c, in->in[1]), N(c, in->in[0]), S(c, o)->d[0], S(c, o)->d[1],
               err_word(c), tag);
}
static void run_xent(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)si;
  int x = in->in[0];
  cu_xent(St(c), O(c, in->out), I(c, x), A(c, in->in[1]), rows_of(c, x), last(c, x), c->scratch, err_word(c), tag);
}
static void run_xent_bwd(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)si;
  int x = in->in[0];
  cu_xent_bwd(St(c), O(c, in->out), I(c, x), A(c, in->in[1]), I(c, in->in[2]), rows_of(c, x), last(c, x), err_word(c),
              tag);
}
static void run_mse(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  const int *x = in->in;
  if (in->op == OP_MSE)
    cu_mse(St(c), O(c, in->out), I(c, x[0]), I(c, x[1]), N(c, x[0]));
  else
    cu_mse_bwd(St(c), O(c, in->out), I(c, x[0]), I(c, x[1]), I(c, x[2]), N(c, x[0]));
}
static void run_moe(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  int x = in->in[0], topk = (int)in->i[0];
  if (in->op == OP_MOE_COMBINE_BWD)
    cu_moe_combine_bwd(St(c), O(c, in->out), I(c, x), I(c, in->in[1]), rows_of(c, x), last(c, x), last(c, in->in[1]),
                       topk);
  else
    cu_moe_gate(St(c), O(c, in->out), in->op == OP_MOE_COMBINE, I(c, x), rows_of(c, x), last(c, x), last(c, in->out),
                topk);
}

static void run_loss(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_loss(St(c), &c->status->loss, I(c, in->in[0]), in->f[0]);
}
static void run_sumsq(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_sumsq(St(c), A(c, in->out), I(c, in->in[0]), N(c, in->in[0]), in->f[0]);
}
static void run_clip(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  (void)tag, (void)si;
  cu_clip(St(c), A(c, in->out), A(c, in->in[0]), (float)in->f[0]);
}

/* The bf16 copy an optimizer instruction writes as it goes (see fuse). */
static uint16_t *half_of(const Cu *c, int tag) {
  bool init = tag & CU_TAG_INIT;
  return c->half[init] ? c->half[init][(tag & ~CU_TAG_INIT) - 1] : NULL;
}

static void run_adamw(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  c->wrote_half |= half_of(c, tag) != NULL;
  float lr = km_lr_at((float)in->f[0], in->i[0], si->step);
  const int *x = in->in;
  cu_adamw(St(c), A(c, in->out), A(c, x[0]), A(c, x[1]), A(c, x[2]), N(c, in->out), A(c, x[3]), lr, (float)in->f[1],
           (float)in->f[2], (float)in->f[3], (float)in->f[4], si->step, half_of(c, tag));
}
static void run_sgd(Cu *c, const Instr *in, int tag, const StepInfo *si) {
  c->wrote_half |= half_of(c, tag) != NULL;
  float lr = km_lr_at((float)in->f[0], in->i[0], si->step);
  const int *x = in->in;
  cu_sgd(St(c), A(c, in->out), A(c, x[0]), A(c, x[1]), N(c, in->out), A(c, x[2]), lr, (float)in->f[1], (float)in->f[2],
         half_of(c, tag));
}

typedef void (*Kernel)(Cu *c, const Instr *in, int tag, const StepInfo *si);

/* Not kernels: graph leaves, einsums (their prepared plans) and
   communication (the transport, through host staging). */
#define run_PARAM NULL
#define run_INPUT NULL
#define run_EINSUM NULL
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
#define run_FILL run_fill
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
#define run_SUM run_axis
#define run_MEAN run_axis
#define run_MAX run_axis
#define run_SOFTMAX run_softmax
#define run_LAYERNORM run_norm
#define run_RMSNORM run_norm
#define run_EMBED run_embed
#define run_XENT run_xent
#define run_MSE run_mse
#define run_MOE_DISPATCH run_moe
#define run_MOE_COMBINE run_moe
#define run_RESHAPE run_copy
#define run_CAST run_copy
#define run_SUM_TO run_columns
#define run_EXPAND run_axis
#define run_GELU_BWD run_unary_bwd
#define run_RELU_BWD run_unary_bwd
#define run_SILU_BWD run_unary_bwd
#define run_TANH_BWD run_unary_bwd
#define run_RSQRT_BWD run_unary_bwd
#define run_MAX_BWD run_axis
#define run_SOFTMAX_BWD run_softmax
#define run_LN_BWD_X run_norm
#define run_LN_BWD_G run_columns
#define run_RMS_BWD_X run_norm
#define run_RMS_BWD_G run_columns
#define run_EMBED_BWD run_embed_bwd
#define run_XENT_BWD run_xent_bwd
#define run_MSE_BWD run_mse
#define run_MOE_COMBINE_BWD run_moe
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

/* ---------------------------------------------------------------- loading */

static const char *cuda_supports(Backend *b, const Program *p, const Instr *in) {
  (void)b, (void)p;
  if ((op_info[in->op].flags & OPF_COMM) || in->op == OP_EINSUM) return NULL;
  return kernels[in->op] ? NULL : "the CUDA backend has no kernel for it";
}

static CuEinsum *plan_for(Cu *c, const Instr *in, int64_t *scratch, char *why, size_t n) {
  for (int k = 0; k < c->nshapes; k++)
    if (einsum_same(c->p, in, c->shape_of[k])) return c->shapes[k];
  const Shape *ins[2] = {S(c, in->in[0]), in->nin > 1 ? S(c, in->in[1]) : NULL};
  CuEinsum *e = cu_einsum_prepare(c->lt, in->spec, in->nin, ins, B(c, in->in[0])->dtype, S(c, in->out),
                                  B(c, in->out)->dtype, scratch, why, n);
  if (!e) return NULL;
  c->shapes = xrealloc(c->shapes, sizeof(CuEinsum *) * (size_t)(c->nshapes + 1));
  c->shape_of = xrealloc(c->shape_of, sizeof(Instr *) * (size_t)(c->nshapes + 1));
  c->shapes[c->nshapes] = e, c->shape_of[c->nshapes++] = in;
  return e;
}

/* Device scratch instruction `in` needs besides einsum copies: per-row
   losses of a cross-entropy. */
static int64_t scratch_of(const Cu *c, const Instr *in) {
  if (in->op == OP_XENT) return rows_of(c, in->in[0]) * (int64_t)sizeof(float);
  return 0;
}

/* Einsum plans, scratch and staging of one list. */
static bool prepare_list(Cu *c, const Instr *list, int n, bool init, int64_t *load_bytes, FILE *err) {
  c->plans[init] = xcalloc((size_t)n + 1, sizeof(CuEinsum *));
  for (int i = 0; i < n; i++) {
    const Instr *in = &list[i];
    int64_t need = scratch_of(c, in);
    if (need > c->scratch_bytes) c->scratch_bytes = need;
    if (in->op == OP_LOAD) *load_bytes += (N(c, in->out) * 4 + 63) / 64 * 64;
    if (in->op != OP_EINSUM) continue;
    char why[256];
    if (!(c->plans[init][i] = plan_for(c, in, &c->scratch_bytes, why, sizeof why))) {
      fprintf(err, "carve: error: program for rank %d, %s instruction %d (einsum %s): %s\n", c->p->rank,
              init ? "init" : "step", i, in->spec, why);
      return false;
    }
  }
  return true;
}

/* Which buffers an instruction writes (its output, comm included) and
   reads (its inputs). */
static bool writes(const Instr *in, int b) { return in->out == b; }
static bool reads(const Instr *in, int b) {
  for (int k = 0; k < in->nin; k++)
    if (in->in[k] == b) return true;
  return false;
}

/* The optimizer instruction j > i of the step list that can write the bf16
   copy h of master m in place of cast i (h := bf16(m)), or -1. Then h holds
   bf16(m) one step early over [0, i) and (j, end): nothing may read it
   there, and nothing but j may write m, nothing but i write h. */
static int sole_update(const Program *p, int i, int m, int h) {
  int found = -1;
  for (int k = i + 1; k < p->nstep && found < 0; k++)
    if ((p->step[k].op == OP_ADAMW || p->step[k].op == OP_SGD) && p->step[k].out == m) found = k;
  if (found < 0) return -1;
  for (int k = 0; k < p->nstep; k++) {
    const Instr *in = &p->step[k];
    if (k == i || k == found) continue;
    if (writes(in, m) || writes(in, h)) return -1;
    if ((k < i || k > found) && reads(in, h)) return -1;
  }
  return found;
}

/* Casts of an f32 master to its bf16 working copy (a persistent buffer,
   BUF_WORK: an activation's memory is shared with others) that the
   optimizer can write. */
static void fuse(Cu *c) {
  const Program *p = c->p;
  c->fused[0] = xcalloc((size_t)p->nstep + 1, sizeof(int));
  c->half[0] = xcalloc((size_t)p->nstep + 1, sizeof(uint16_t *));
  for (int i = 0; i < p->nstep; i++) {
    const Instr *in = &p->step[i];
    if (in->op != OP_CAST || !bf(c, in->out) || B(c, in->out)->kind != BUF_WORK || B(c, in->in[0])->dtype != DT_F32 ||
        N(c, in->out) != N(c, in->in[0]))
      continue;
    int j = sole_update(p, i, in->in[0], in->out);
    if (j < 0 || c->half[0][j]) continue; /* one copy per optimizer */
    c->fused[0][i] = 1;
    c->half[0][j] = A(c, in->out);
  }
}

static void *dev_alloc(Cu *c, int64_t bytes) {
  void *p = NULL;
  if (bytes <= 0) return NULL;
  CU_CHECK(cudaMalloc(&p, (size_t)bytes));
  c->extra += bytes;
  return p;
}

/* cudaMalloc of `bytes` for `what` at load: false with a message (the
   arena may fit and its scratch not), the error cleared (it is not sticky) */
static bool load_alloc(Cu *c, void **p, int64_t bytes, const char *what, FILE *err) {
  *p = NULL;
  if (bytes <= 0) return true;
  if (cudaMalloc(p, (size_t)bytes) == cudaSuccess) {
    c->extra += bytes;
    return true;
  }
  *p = NULL;
  cudaGetLastError();
  size_t free_b = 0, total = 0;
  cudaMemGetInfo(&free_b, &total);
  char s[32], f[32];
  fprintf(err, "carve: error: rank %d cannot allocate %s of %s on GPU %d (%s free)\n", c->p->rank, what,
          fmt_bytes((double)bytes, s, sizeof s), c->device, fmt_bytes((double)free_b, f, sizeof f));
  return false;
}

static bool cuda_load(Backend *b, const Program *p, FILE *err) {
  Cu *c = C(b);
  c->p = p;
  cuda_rank = p->rank;
  if (!backend_check(b, p, err)) return false;
  int64_t bytes = (p->arena_bytes + 255) / 256 * 256;
  if (!load_alloc(c, (void **)&c->arena, bytes, "its arena", err)) return false;
  c->extra -= bytes;                                            /* the arena is not extra */
  CU_CHECK(cudaMemsetAsync(c->arena, 0, (size_t)bytes, St(c))); /* deterministic, as the CPU's */
  int64_t load_bytes = 0;
  if (!prepare_list(c, p->init, p->ninit, true, &load_bytes, err)) return false;
  load_bytes = 0;
  if (!prepare_list(c, p->step, p->nstep, false, &load_bytes, err)) return false;
  if (!load_alloc(c, &c->scratch, c->scratch_bytes, "the einsum and row-loss scratch", err) ||
      !load_alloc(c, &c->ws, CU_LT_WORKSPACE, "the cuBLASLt workspace", err))
    return false;
  c->step_staging = load_bytes;
  if (load_bytes) stage(c, load_bytes), c->staged = 0; /* a step's loads never wait for staging */
  fuse(c);
  return true;
}

/* ---------------------------------------------------------------- running */

static void cuda_exec(Backend *b, const Instr *in, int index, bool init, const StepInfo *si) {
  Cu *c = C(b);
  int tag = (index + 1) | (init ? CU_TAG_INIT : 0);
  if (in->op == OP_EINSUM) {
    const void *ins[2] = {A(c, in->in[0]), in->nin > 1 ? A(c, in->in[1]) : NULL};
    cu_einsum_exec(c->plans[init][index], St(c), ins, A(c, in->out), c->scratch, c->ws, CU_LT_WORKSPACE);
    return;
  }
  if (!init && c->fused[0][index] && c->fused_fresh) return; /* the optimizer wrote it */
  kernels[in->op](c, in, tag, si);
}

static void *cuda_host(Backend *b, int64_t offset) {
  (void)b, (void)offset;
  return NULL; /* the arena is device memory */
}

/* Copies between the host and the arena, in stream order; both wait for
   the copy (the caller's memory may be pageable and is reused at once). */
static void cuda_upload(Backend *b, int64_t off, const void *src, int64_t n) {
  Cu *c = C(b);
  c->fused_fresh = false; /* new values (a checkpoint, a test's input): the next casts run */
  CU_CHECK(cudaMemcpyAsync(c->arena + off, src, (size_t)n, cudaMemcpyHostToDevice, St(c)));
  CU_CHECK(cudaStreamSynchronize(St(c)));
}
static void cuda_download(Backend *b, void *dst, int64_t off, int64_t n) {
  Cu *c = C(b);
  CU_CHECK(cudaMemcpyAsync(dst, c->arena + off, (size_t)n, cudaMemcpyDeviceToHost, St(c)));
  CU_CHECK(cudaStreamSynchronize(St(c)));
}
static void cuda_copy(Backend *b, int64_t dst, int64_t src, int64_t n) {
  Cu *c = C(b);
  CU_CHECK(cudaMemcpyAsync(c->arena + dst, c->arena + src, (size_t)n, cudaMemcpyDeviceToDevice, St(c)));
}

int cuda_device(Backend *b) { return C(b)->device; }
cudaStream_t cuda_stream(Backend *b, int k) { return C(b)->stream[k ? 1 : 0]; }

static void *cuda_addr(Backend *b, int64_t offset) { return C(b)->arena + offset; }
/* blocks for the communication (not counted in extra_bytes: the run counts its own) */
static void *cuda_alloc(Backend *b, int64_t bytes, bool host) {
  (void)b;
  void *p = NULL;
  size_t n = (size_t)(bytes > 0 ? bytes : 1);
  if (host)
    CU_CHECK(cudaMallocHost(&p, n));
  else
    CU_CHECK(cudaMalloc(&p, n));
  return p;
}
static void cuda_release(Backend *b, void *p, bool host) {
  (void)b;
  if (p) host ? cudaFreeHost(p) : cudaFree(p);
}
/* cudaMemcpyDefault: either side host or device (unified addressing).
   Contiguous rows are one flat copy (the 2-D calls limit their pitch). */
static void cuda_copy_rows(Backend *b, int stream, void *dst, int64_t dst_stride, const void *src, int64_t src_stride,
                           int64_t row_bytes, int64_t rows) {
  cudaStream_t s = C(b)->stream[stream ? 1 : 0];
  if (rows <= 0 || row_bytes <= 0) return;
  bool flat = rows == 1 || (dst_stride == row_bytes && (!src || src_stride == row_bytes));
  if (flat && !src)
    CU_CHECK(cudaMemsetAsync(dst, 0, (size_t)(row_bytes * rows), s));
  else if (flat)
    CU_CHECK(cudaMemcpyAsync(dst, src, (size_t)(row_bytes * rows), cudaMemcpyDefault, s));
  else if (!src)
    CU_CHECK(cudaMemset2DAsync(dst, (size_t)dst_stride, 0, (size_t)row_bytes, (size_t)rows, s));
  else
    CU_CHECK(cudaMemcpy2DAsync(dst, (size_t)dst_stride, src, (size_t)src_stride, (size_t)row_bytes, (size_t)rows,
                               cudaMemcpyDefault, s));
}
static void cuda_drain(Backend *b, int stream) { CU_CHECK(cudaStreamSynchronize(C(b)->stream[stream ? 1 : 0])); }

/* Every record until the next synchronize has an event of its own, so that
   a wait long after its record (compute waiting for a transfer only where
   it reads the output, runtime/overlap.c) still means that record:
   cudaStreamWaitEvent takes the event's state when it is called, and a
   reused event would by then stand for a later point. */
static int cuda_record(Backend *b, int stream) {
  Cu *c = C(b);
  if (c->nevents == c->events_cap) {
    int cap = c->events_cap ? 2 * c->events_cap : 64;
    c->events = xrealloc(c->events, sizeof(cudaEvent_t) * (size_t)cap);
    for (int k = c->events_cap; k < cap; k++)
      CU_CHECK(cudaEventCreateWithFlags(&c->events[k], cudaEventDisableTiming));
    c->events_cap = cap;
  }
  int e = c->nevents++;
  CU_CHECK(cudaEventRecord(c->events[e], c->stream[stream ? 1 : 0]));
  return e;
}
static void cuda_wait(Backend *b, int stream, int event) {
  Cu *c = C(b);
  CU_CHECK(cudaStreamWaitEvent(c->stream[stream ? 1 : 0], c->events[event], 0));
}

static const char *bad_data(OpKind op) {
  return op == OP_EMBED || op == OP_EMBED_BWD ? "a token id is outside the embedding table"
                                              : "a label is outside the classes";
}

static void cuda_synchronize(Backend *b, StepStatus *st) {
  Cu *c = C(b);
  CU_CHECK(cudaStreamSynchronize(c->stream[1]));
  DevStatus d; /* read after everything on the compute stream; its wait is the step's */
  CU_CHECK(cudaMemcpyAsync(&d, c->status, sizeof d, cudaMemcpyDeviceToHost, St(c)));
  CU_CHECK(cudaStreamSynchronize(St(c)));
  CU_CHECK(cudaMemsetAsync(c->status, 0, sizeof d, St(c)));
  *st = (StepStatus){.loss = d.loss};
  if (d.err) {
    st->error_init = (d.err & CU_TAG_INIT) != 0;
    st->error_instr = (d.err & ~CU_TAG_INIT) - 1;
    const Instr *list = st->error_init ? c->p->init : c->p->step;
    int n = st->error_init ? c->p->ninit : c->p->nstep;
    if (st->error_instr >= 0 && st->error_instr < n) {
      st->error = bad_data(list[st->error_instr].op);
    } else { /* not a tag this backend stores: the status word was overwritten */
      st->error = "the device status word holds no instruction's tag (device memory corrupted?)";
      st->error_instr = 0;
    }
  }
  c->nevents = 0;
  c->staged = 0;
  if (c->staging_cap > c->step_staging) { /* the init list's largest tensor: pinned memory back, the step's kept */
    CU_CHECK(cudaFreeHost(c->staging));
    c->staging = NULL, c->staging_cap = 0;
    if (c->step_staging) stage(c, c->step_staging), c->staged = 0;
  }
  c->fused_fresh = c->wrote_half; /* a step ran its optimizers: the next step's casts are done */
  c->wrote_half = false;
}

/* device scratch, workspace and status, the most pinned staging held, and the most
   the kernels' stream-ordered scratch (k_scratch: the device's default
   pool) has held at once */
static int64_t cuda_extra(Backend *b) {
  Cu *c = C(b);
  cudaMemPool_t pool;
  uint64_t high = 0;
  if (cudaDeviceGetDefaultMemPool(&pool, c->device) != cudaSuccess ||
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high) != cudaSuccess)
    cudaGetLastError(), high = 0;
  return c->extra + c->staging_peak + (int64_t)high;
}

static void cuda_close(Backend *b) {
  Cu *c = C(b);
  if (c->arena) cudaStreamSynchronize(St(c));
  for (int k = 0; k < c->nshapes; k++) cu_einsum_free(c->shapes[k]);
  free(c->shapes);
  free(c->shape_of);
  for (int k = 0; k < 2; k++) free(c->plans[k]), free(c->fused[k]), free(c->half[k]);
  cudaFree(c->arena);
  cudaFree(c->scratch);
  cudaFree(c->ws);
  cudaFree(c->status);
  if (c->staging) cudaFreeHost(c->staging);
  for (int k = 0; k < c->events_cap; k++) cudaEventDestroy(c->events[k]);
  free(c->events);
  for (int k = 0; k < 2; k++) cudaStreamDestroy(c->stream[k]);
  if (c->lt) cublasLtDestroy(c->lt);
  free(c);
  free(b);
}

/* ---------------------------------------------------------------- opening */

/* The device, its streams, events, status word and cuBLASLt handle. */
static void cuda_start(Cu *c) {
  CU_CHECK(cudaSetDevice(c->device));
  struct cudaDeviceProp prop;
  CU_CHECK(cudaGetDeviceProperties(&prop, c->device));
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  snprintf(c->describe, sizeof c->describe, "CUDA %d.%d, %.96s (sm_%d%d), cuBLASLt %zu", rt / 1000, rt % 1000 / 10,
           prop.name, prop.major, prop.minor, cublasLtGetVersion());
  for (int k = 0; k < 2; k++) CU_CHECK(cudaStreamCreateWithFlags(&c->stream[k], cudaStreamNonBlocking));
  c->status = dev_alloc(c, sizeof(DevStatus));
  /* on the compute stream: the legacy stream's cudaMemset is not ordered
     with non-blocking streams */
  CU_CHECK(cudaMemsetAsync(c->status, 0, sizeof(DevStatus), St(c)));
  CUBLAS_CHECK(cublasLtCreate(&c->lt));
}

Backend *backend_cuda(char *why, size_t n) {
  int count = 0; /* not written when there is no driver */
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    snprintf(why, n, "no usable GPU (%s)", e != cudaSuccess ? cudaGetErrorName(e) : "no device");
    cudaGetLastError(); /* clear it */
    return NULL;
  }
  Cu *c = xcalloc(1, sizeof(Cu));
  /* which GPU: CARVE_CUDA_DEVICE, else the rank's place among the ranks of
     this machine (mpirun's local rank), GPUs shared round-robin when the
     ranks outnumber them */
  const char *dev = getenv("CARVE_CUDA_DEVICE"), *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  if (!local) local = getenv("MPI_LOCALRANKID"); /* MPICH's Hydra */
  if (!local) local = getenv("SLURM_LOCALID");   /* srun */
  c->device = dev ? atoi(dev) : local ? atoi(local) % count : 0;
  if (c->device < 0 || c->device >= count) {
    snprintf(why, n, "CARVE_CUDA_DEVICE=%s, but this machine has GPUs 0 to %d", dev, count - 1);
    free(c);
    return NULL;
  }
  cuda_start(c);
  Backend *b = xcalloc(1, sizeof(Backend));
  *b = (Backend){.name = "cuda",
                 .describe = c->describe,
                 .bf16_fast = true, /* tensor cores */
                 .workspace = CU_LT_WORKSPACE + (16 << 20),
                 .load = cuda_load,
                 .supports = cuda_supports,
                 .host = cuda_host,
                 .upload = cuda_upload,
                 .download = cuda_download,
                 .copy = cuda_copy,
                 .addr = cuda_addr,
                 .alloc = cuda_alloc,
                 .release = cuda_release,
                 .copy_rows = cuda_copy_rows,
                 .drain = cuda_drain,
                 .exec = cuda_exec,
                 .record = cuda_record,
                 .wait = cuda_wait,
                 .synchronize = cuda_synchronize,
                 .extra_bytes = cuda_extra,
                 .close = cuda_close,
                 .impl = c};
  return b;
}
