/* cuda.h: the CUDA backend's parts (runtime/cuda/), readable by gcc (C11)
 * and nvcc (C++) alike.
 *
 *   backend.c   the Backend table (backend.h): one cudaMalloc for the arena
 *               at codegen's offsets, pinned host staging for uploads, one
 *               compute stream, events, the device error word and loss read
 *               at synchronize, dispatch by op to the launchers below
 *   nccl.c      the NCCL device communication (../comm.h), on the
 *               backend's device and communication stream
 *   einsum.c    einsums as cuBLASLt matrix products (bf16 x bf16 -> f32
 *               accumulation on tensor cores), the algorithm chosen once
 *               per shape when a program is loaded
 *   *.cu        the kernels and their launchers (extern "C")
 *
 * Every launcher enqueues on the stream it is given and returns at once:
 * nothing here waits for the device except backend.c's synchronize. The
 * per-element formulas are kmath.h's, the same functions the CPU backend
 * runs, so the CPU tests exercise the arithmetic the GPU does. */
#ifndef CARVE_CUDA_H
#define CARVE_CUDA_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus /* carve.h is C11; nvcc reads it as C++ */
#define _Noreturn __attribute__((noreturn))
#endif
#include "carve.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An operand of a kernel: device memory of f32 or bf16 (i32 operands are
   passed as plain pointers). */
typedef struct DIn {
  const void *p;
  int bf16;
} DIn;
typedef struct DOut {
  void *p;
  int bf16;
} DOut;

/* ---------------------------------------------------------------- errors */

/* The rank named in fatal CUDA errors (set when a program is loaded). */
extern int cuda_rank;
/* Ends the whole job: names the call, the error, file, line and rank. */
_Noreturn void cuda_fail(const char *call, const char *what, const char *file, int line);
const char *cublas_status_text(int status);
#define CU_CHECK(call)                                                                                                 \
  do {                                                                                                                 \
    cudaError_t cu_e_ = (call);                                                                                        \
    if (cu_e_ != cudaSuccess) cuda_fail(#call, cudaGetErrorString(cu_e_), __FILE__, __LINE__);                         \
  } while (0)
#define CUBLAS_CHECK(call)                                                                                             \
  do {                                                                                                                 \
    int cb_s_ = (int)(call);                                                                                           \
    if (cb_s_ != 0) cuda_fail(#call, cublas_status_text(cb_s_), __FILE__, __LINE__);                                   \
  } while (0)
/* after a launch: a bad configuration is reported here, not at synchronize */
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())

/* The device error word: kernels that find bad data (an id or label out of
   range) store their tag there (the first one wins); synchronize reads it.
   A tag is 1 + the instruction's index, with CU_TAG_INIT set for the init
   list; the instruction's op says what was wrong. */
#define CU_TAG_INIT (1 << 30)

/* ---------------------------------------------------------------- backend.c, for nccl.c */

struct Backend;
/* the CUDA backend b's device, and its stream k (0 compute, 1 communication) */
int cuda_device(struct Backend *b);
cudaStream_t cuda_stream(struct Backend *b, int k);

/* ---------------------------------------------------------------- kernels (*.cu) */

/* element-wise (elementwise.cu): o and the inputs have n elements, except
   that binary operands broadcast as the CPU's e_binary does (the shorter
   one repeats; na and nb divide n) */
void cu_fill(cudaStream_t s, DOut o, int64_t n, float v);
void cu_unary(cudaStream_t s, OpKind op, DOut o, DIn a, int64_t n);
void cu_unary_bwd(cudaStream_t s, OpKind op, DOut o, DIn x, DIn dy, int64_t n);
void cu_binary(cudaStream_t s, OpKind op, DOut o, int64_t n, DIn a, int64_t na, DIn b, int64_t nb);
void cu_scale(cudaStream_t s, DOut o, DIn a, int64_t n, float mul, float add); /* also copy and cast */
void cu_acc(cudaStream_t s, DOut o, DIn a, int64_t n);                         /* o += a */

/* reductions over one axis of [outer, n, inner] (reduce.cu) */
void cu_reduce(cudaStream_t s, OpKind op, DOut o, DIn x, int64_t outer, int64_t n, int64_t inner);
void cu_expand(cudaStream_t s, DOut o, DIn dy, int64_t outer, int64_t n, int64_t inner, float scale);
void cu_max_bwd(cudaStream_t s, DOut dx, DIn x, DIn dy, int64_t outer, int64_t n, int64_t inner);
/* column sums: o[j] = sum over r of x[r * n + j] (sum_to), in f32 */
void cu_sum_to(cudaStream_t s, DOut o, DIn x, int64_t reps, int64_t n);

/* row-wise (rows.cu): rows of n elements */
void cu_softmax(cudaStream_t s, DOut y, DIn x, int64_t rows, int64_t n, int causal);
void cu_softmax_bwd(cudaStream_t s, DOut dx, DIn y, DIn dy, int64_t rows, int64_t n);
void cu_layernorm(cudaStream_t s, DOut y, DIn x, DIn g, DIn b, int64_t rows, int64_t n, float eps);
void cu_rmsnorm(cudaStream_t s, DOut y, DIn x, DIn g, int64_t rows, int64_t n, float eps);
void cu_norm_bwd_x(cudaStream_t s, DOut dx, DIn x, DIn g, DIn dy, int64_t rows, int64_t n, float eps, int rms);
void cu_norm_bwd_g(cudaStream_t s, DOut dg, DIn x, DIn dy, int64_t rows, int64_t n, float eps, int rms);

/* indexed (rows.cu): ids and labels are checked; one out of range stores
   `tag` in *err and its row is left as zeros */
void cu_embed(cudaStream_t s, DOut o, DIn table, const int32_t *ids, int64_t nids, int64_t vocab, int64_t h, int *err,
              int tag);
/* the table's gradient: each id's rows of dy summed in f32 in token order
   (as the CPU does; the tokens sorted by id on the device), stored once */
void cu_embed_bwd(cudaStream_t s, DOut o, const int32_t *ids, DIn dy, int64_t nids, int64_t vocab, int64_t h, int *err,
                  int tag);
/* the mean over rows of -log softmax(x)[label] into o[0]; `rowloss` is a
   device buffer of `rows` floats */
void cu_xent(cudaStream_t s, DOut o, DIn logits, const int32_t *labels, int64_t rows, int64_t v, float *rowloss,
             int *err, int tag);
/* dx = (softmax(x) - onehot(label)) * dy[0] / rows */
void cu_xent_bwd(cudaStream_t s, DOut dx, DIn logits, const int32_t *labels, DIn dy, int64_t rows, int64_t v, int *err,
                 int tag);
void cu_mse(cudaStream_t s, DOut o, DIn p, DIn t, int64_t n);
void cu_mse_bwd(cudaStream_t s, DOut dp, DIn p, DIn t, DIn dy, int64_t n);
void cu_moe_gate(cudaStream_t s, DOut o, int combine, DIn logits, int64_t tokens, int64_t experts, int64_t cap,
                 int topk);
void cu_moe_combine_bwd(cudaStream_t s, DOut dx, DIn logits, DIn dy, int64_t tokens, int64_t experts, int64_t cap,
                        int topk);

/* the step's scalars and optimizers (optim.cu) */
void cu_loss(cudaStream_t s, double *acc, DIn x, double weight);            /* *acc += weight * x[0] */
void cu_sumsq(cudaStream_t s, float *out, DIn x, int64_t n, double weight); /* out[0] += weight * sum x^2 */
void cu_clip(cudaStream_t s, float *out, const float *sumsq, float max_norm);
/* AdamW / SGD on f32 masters; `clip` is the device scalar the gradient is
   multiplied by; when `half` is not NULL the bf16 working copy of p is
   written in the same pass */
void cu_adamw(cudaStream_t s, float *p, const float *g, float *m, float *v, int64_t n, const float *clip, float lr,
              float b1, float b2, float eps, float wd, int step, uint16_t *half);
void cu_sgd(cudaStream_t s, float *p, const float *g, float *mom, int64_t n, const float *clip, float lr, float mu,
            float wd, uint16_t *half);

/* layout (permute.cu): dst (contiguous) <- src read with `stride` over dims
   of `size`, elements of esize bytes (2 or 4) */
void cu_permute(cudaStream_t s, void *dst, const void *src, int rank, const int64_t *size, const int64_t *stride,
                int esize);

/* ---------------------------------------------------------------- einsum.c */

typedef struct CuEinsum CuEinsum;
/* The plan for C = einsum(spec, A[, B]) on these shapes (in_dt f32 or
   bf16, out_dt f32 or bf16), its cuBLASLt algorithm chosen now; NULL with
   why. `scratch` grows to the bytes of canonical copies it needs. */
CuEinsum *cu_einsum_prepare(cublasLtHandle_t lt, const char *spec, int nin, const Shape *const *ins, DType in_dt,
                            const Shape *out, DType out_dt, int64_t *scratch, char *why, size_t n);
/* enqueues the product; `scratch` holds at least what prepare asked for,
   `ws` is the one cuBLASLt workspace of ws_bytes */
void cu_einsum_exec(const CuEinsum *e, cudaStream_t s, const void *const *in, void *out, void *scratch, void *ws,
                    size_t ws_bytes);
void cu_einsum_free(CuEinsum *e);
#define CU_LT_WORKSPACE (32 << 20) /* bytes: Hopper's kernels want up to 32 MiB */

#ifdef __cplusplus
}
#endif
#endif
