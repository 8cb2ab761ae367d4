/* runtime.h: what the interpreter, the kernels and the einsum engine share. */
#ifndef CARVE_RUNTIME_H
#define CARVE_RUNTIME_H
#include "carve.h"

/* einsum.c: C = einsum(spec, A[, B]) through sgemm, strided where the
 * layouts allow it, through a permuted copy where they do not. */
typedef struct EinsumScratch {
  float *p;
  size_t cap; /* floats */
} EinsumScratch;
/* Returns NULL or an error message (bad spec for these shapes). */
const char *einsum_check(const char *spec, int nin, const Shape *const *in, const Shape *out);
void einsum_run(const char *spec, int nin, const float *const *in, const Shape *const *ins, float *out,
                const Shape *outs, EinsumScratch *scratch);

/* kernels.c: one function per op over contiguous f32 arrays. Shapes are
 * passed as (outer, n, inner) triples or element counts as each op needs. */
void k_binary(OpKind op, float *out, int64_t n, const float *a, int64_t na, const float *b, int64_t nb);
void k_scale(float *out, const float *x, int64_t n, float mul, float add);
void k_acc(float *out, const float *x, int64_t n);
void k_copy(float *out, const float *x, int64_t n);
double k_sumsq(const float *x, int64_t n);
void k_unary(OpKind op, float *out, const float *x, int64_t n);
void k_unary_bwd(OpKind op, float *dx, const float *x, const float *dy, int64_t n);
void k_reduce(OpKind op, float *out, const float *x, int64_t outer, int64_t n, int64_t inner);
void k_expand(float *out, const float *dy, int64_t outer, int64_t n, int64_t inner, float scale);
void k_max_bwd(float *dx, const float *x, const float *dy, int64_t outer, int64_t n, int64_t inner);
void k_softmax(float *y, const float *x, int64_t rows, int64_t n, bool causal);
void k_softmax_bwd(float *dx, const float *y, const float *dy, int64_t rows, int64_t n);
void k_layernorm(float *y, const float *x, const float *g, const float *b, int64_t rows, int64_t n, float eps);
void k_layernorm_bwd_x(float *dx, const float *x, const float *g, const float *dy, int64_t rows, int64_t n, float eps,
                       bool rms);
void k_layernorm_bwd_g(float *dg, const float *x, const float *dy, int64_t rows, int64_t n, float eps, bool rms);
void k_rmsnorm(float *y, const float *x, const float *g, int64_t rows, int64_t n, float eps);
void k_sum_to(float *out, const float *x, int64_t reps, int64_t n);
/* Return false if an id or label is out of range (the runtime reports it). */
bool k_embed(float *out, const float *table, const int32_t *ids, int64_t nids, int64_t vocab, int64_t h);
bool k_embed_bwd(float *dtable, const int32_t *ids, const float *dy, int64_t nids, int64_t vocab, int64_t h);
bool k_xent(float *loss, const float *logits, const int32_t *labels, int64_t rows, int64_t v);
bool k_xent_bwd(float *dx, const float *logits, const int32_t *labels, const float *dy, int64_t rows, int64_t v);
void k_mse(float *loss, const float *p, const float *t, int64_t n);
void k_mse_bwd(float *dp, const float *p, const float *t, const float *dy, int64_t n);
void k_moe_gate(float *out, bool combine, const float *logits, int64_t tokens, int64_t experts, int64_t cap, int topk);
void k_moe_combine_bwd(float *dx, const float *logits, const float *dy, int64_t tokens, int64_t experts, int64_t cap,
                       int topk);

#endif
