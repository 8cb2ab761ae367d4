/* cpu.h: the CPU backend's parts (runtime/cpu/).
 *
 *   backend.c   the Backend table: arena, dispatch by op, dtype conversion,
 *               loss and the error flag
 *   kernels.c   fp32 kernels over contiguous arrays (row-wise ops, reductions,
 *               norms, cross-entropy, routing) and the optimizers
 *   sources.c   init (parameters from the counter-based RNG), load (inputs)
 *   elementwise.c  element-wise ops, on f32 or bf16 as they come
 *   einsum.c    einsums as oneDNN matrix products, one primitive per shape
 *               made when a program is loaded */
#ifndef CARVE_CPU_H
#define CARVE_CPU_H
#include "../backend.h"
#include "kmath.h"

/* Hot loops are compiled for three x86-64 levels (AVX-512, AVX2, baseline);
 * the loader picks the widest this CPU has, so one binary is fast anywhere. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CARVE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CARVE_CLONES
#endif

/* A growable host buffer that lives as long as the backend. */
typedef struct Scratch {
  void *p;
  size_t cap; /* bytes */
} Scratch;
void *scratch_get(Scratch *s, size_t bytes); /* contents are not kept */

/* einsum.c */
typedef struct EinsumPlan EinsumPlan;
/* The plan for C = einsum(spec, A[, B]) on these shapes: inputs of dtype
   in_dt (f32 or bf16), output out_dt. NULL with the reason in why. */
EinsumPlan *einsum_prepare(const char *spec, int nin, const Shape *const *ins, DType in_dt, const Shape *out,
                           DType out_dt, char *why, size_t n);
void einsum_exec(const EinsumPlan *e, const void *const *in, void *out, Scratch *s);
void einsum_free(EinsumPlan *e);
/* what runs the products: "oneDNN 2.6 (avx512_core_bf16)" */
const char *einsum_engine(void);
/* whether bf16 products run on bf16 units here */
bool einsum_bf16_fast(void);

/* kernels.c: one function per op over contiguous f32 arrays. Shapes are
 * passed as (outer, n, inner) triples or element counts as each op needs. */
double k_sumsq(const float *x, int64_t n);
void k_reduce(OpKind op, float *out, const float *x, int64_t outer, int64_t n, int64_t inner);
void k_expand(float *out, const float *dy, int64_t outer, int64_t n, int64_t inner, float scale);
void k_max_bwd(float *dx, const float *x, const float *dy, int64_t outer, int64_t n, int64_t inner);
void k_softmax(float *y, const float *x, int64_t rows, int64_t n, bool causal);
void k_softmax_bwd(float *dx, const float *y, const float *dy, int64_t rows, int64_t n);
void k_layernorm(float *y, const float *x, const float *g, const float *b, int64_t rows, int64_t n, float eps);
void k_layernorm_bwd_x(float *dx, const float *x, const float *g, const float *dy, int64_t rows, int64_t n, float eps,
                       bool rms);
/* an input, and an output, that are f32 or bf16 */
typedef struct Arr {
  const void *p;
  bool bf16;
} Arr;
typedef struct Out {
  void *p;
  bool bf16;
} Out;
void k_layernorm_bwd_g(float *dg, Arr x, Arr dy, int64_t rows, int64_t n, float eps, bool rms);
void k_rmsnorm(float *y, const float *x, const float *g, int64_t rows, int64_t n, float eps);
void k_sum_to(float *out, Arr x, int64_t reps, int64_t n);
/* Return false if an id or label is out of range (the backend reports it). */
bool k_embed(float *out, const float *table, const int32_t *ids, int64_t nids, int64_t vocab, int64_t h);
bool k_embed_bwd(float *dtable, const int32_t *ids, const float *dy, int64_t nids, int64_t vocab, int64_t h);
bool k_xent_rows(double *row, const float *logits, const int32_t *labels, int64_t rows, int64_t v);
bool k_xent_bwd(float *dx, const float *logits, const int32_t *labels, float scale, int64_t rows, int64_t v);
void k_mse(float *loss, const float *p, const float *t, int64_t n);
void k_mse_bwd(float *dp, const float *p, const float *t, const float *dy, int64_t n);
void k_moe_gate(float *out, bool combine, const float *logits, int64_t tokens, int64_t experts, int64_t cap, int topk);
void k_moe_combine_bwd(float *dx, const float *logits, const float *dy, int64_t tokens, int64_t experts, int64_t cap,
                       int topk);
void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float clip, float lr, float b1, float b2,
             float eps, float wd, int step);
void k_sgd(float *p, const float *g, float *mom, int64_t n, float clip, float lr, float mu, float wd);

/* elementwise.c: the element-wise ops, on operands of either float dtype */
void e_unary(OpKind op, Out o, Arr a, int64_t n);
void e_unary_bwd(OpKind op, Out o, Arr a, Arr b, int64_t n);
void e_binary(OpKind op, Out o, int64_t n, Arr a, int64_t na, Arr b, int64_t nb);
void e_scale(Out o, Arr a, int64_t n, float mul, float add);
void e_acc(Out o, Arr a, int64_t n);

/* sources.c */
void k_init(float *x, int64_t n, const Instr *in, const char *name, uint64_t seed);
void k_load(void *dst, const Buffer *b, const Instr *in, uint64_t seed, const StepInfo *si);

/* conversion between f32 and bf16 arrays (backend.c) */
void cvt_to_f32(float *dst, const uint16_t *src, int64_t n);
void cvt_to_bf16(uint16_t *dst, const float *src, int64_t n);

#endif
