/* einsum.c: einsums as cuBLASLt matrix products. einsum_desc.c decides the
 * layout (plain data); this file makes the cuBLASLt descriptors from it and
 * chooses the algorithm once, when a program is loaded (prepare), so that
 * exec only enqueues: the canonical copies (cu_permute), one cublasLtMatmul,
 * the scatter back. bf16 x bf16 products accumulate in f32 on tensor cores
 * (CUBLAS_COMPUTE_32F), with an f32 or bf16 result; f32 x f32 products run
 * in exact f32 (CUBLAS_COMPUTE_32F, not TF32), so they match the CPU. */
#include <stdlib.h>

#include "cuda.h"
#include "einsum_desc.h"

struct CuEinsum {
  CuGemm g;
  cublasLtHandle_t lt;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, ld; /* C and D share ld: beta is 0, C is D */
  cublasLtMatmulAlgo_t algo;
  size_t ws; /* workspace bytes the algorithm needs */
};

static cudaDataType_t cuda_type(int esize) { return esize == 2 ? CUDA_R_16BF : CUDA_R_32F; }

/* matrix x's layout: column-major, `batch` of them bstride apart */
static cublasLtMatrixLayout_t layout(const CuMat *x, int esize, int64_t batch) {
  cublasLtMatrixLayout_t l;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, cuda_type(esize), (uint64_t)x->rows, (uint64_t)x->cols, x->ld));
  if (batch > 1) {
    int32_t count = (int32_t)batch;
    int64_t stride = x->bstride;
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return l;
}

/* the product: f32 accumulation and scale, op(A) and op(B) */
static cublasLtMatmulDesc_t matmul_desc(const CuGemm *g) {
  cublasLtMatmulDesc_t op;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  int32_t ta = g->a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  return op;
}

static void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, uint32_t v) {
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, a, &v, sizeof v));
}

/* The best algorithm within CU_LT_WORKSPACE for the operands' real
   alignments (the default assumes 256 bytes); false if there is none. */
static bool choose(CuEinsum *e) {
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = CU_LT_WORKSPACE;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, (uint32_t)e->g.a.align);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, (uint32_t)e->g.b.align);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, (uint32_t)e->g.d.align);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, (uint32_t)e->g.d.align);
  cublasLtMatmulHeuristicResult_t best;
  int found = 0;
  cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(e->lt, e->op, e->la, e->lb, e->ld, e->ld, pref, 1, &best, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (s != CUBLAS_STATUS_SUCCESS || found < 1 || best.state != CUBLAS_STATUS_SUCCESS) return false;
  e->algo = best.algo;
  e->ws = best.workspaceSize;
  return true;
}

CuEinsum *cu_einsum_prepare(cublasLtHandle_t lt, const char *spec, int nin, const Shape *const *ins, DType in_dt,
                            const Shape *out, DType out_dt, int64_t *scratch, char *why, size_t n) {
  CuEinsum *e = xcalloc(1, sizeof(CuEinsum));
  const char *no = cu_einsum_describe(&e->g, spec, nin, ins, in_dt, out, out_dt);
  if (no) {
    snprintf(why, n, "%s", no);
    free(e);
    return NULL;
  }
  const CuGemm *g = &e->g;
  if (g->scratch > *scratch) *scratch = g->scratch;
  if (g->transpose) return e;
  e->lt = lt;
  e->op = matmul_desc(g);
  e->la = layout(&g->a, g->esize_in, g->batch);
  e->lb = layout(&g->b, g->esize_in, g->batch);
  e->ld = layout(&g->d, g->esize_out, g->batch);
  if (!choose(e)) {
    snprintf(why, n,
             "cuBLASLt has no algorithm for %s x %s -> %s, %lld x (%lld x %lld x %lld), alignments %d/%d/%d bytes",
             dtype_name(in_dt), dtype_name(in_dt), dtype_name(out_dt), (long long)g->batch, (long long)g->m,
             (long long)g->n, (long long)g->k, g->a.align, g->b.align, g->d.align);
    cu_einsum_free(e);
    return NULL;
  }
  return e;
}

/* enqueues input x's canonical copy into scratch (if it has one); where
   the product reads it */
static const void *operand(const CuMat *x, int esize, cudaStream_t s, const void *const *in, unsigned char *scratch) {
  if (!x->copied) return in[x->from];
  cu_permute(s, scratch + x->at, in[x->from], x->copy.rank, x->copy.size, x->copy.stride, esize);
  return scratch + x->at;
}

/* the alignment the algorithm was chosen for (arena and scratch offsets
   are multiples of 64 bytes; a pointer that is not would be a bug) */
static void check_align(const void *p, int align) {
  if ((uintptr_t)p % (uintptr_t)align)
    cuda_fail("cu_einsum_exec", "an operand is less aligned than its plan assumed", __FILE__, __LINE__);
}

void cu_einsum_exec(const CuEinsum *e, cudaStream_t s, const void *const *in, void *out, void *scratch, void *ws,
                    size_t ws_bytes) {
  const CuGemm *g = &e->g;
  if (g->transpose) {
    cu_permute(s, out, in[0], g->perm.rank, g->perm.size, g->perm.stride, g->esize_in);
    return;
  }
  if (ws_bytes < e->ws) cuda_fail("cu_einsum_exec", "the cuBLASLt workspace is too small", __FILE__, __LINE__);
  unsigned char *tmp = scratch;
  const void *a = operand(&g->a, g->esize_in, s, in, tmp), *b = operand(&g->b, g->esize_in, s, in, tmp);
  void *d = g->d.copied ? tmp + g->d.at : out;
  check_align(a, g->a.align), check_align(b, g->b.align), check_align(d, g->d.align);
  const float alpha = 1, beta = 0;
  CUBLAS_CHECK(
      cublasLtMatmul(e->lt, e->op, &alpha, a, e->la, b, e->lb, &beta, d, e->ld, d, e->ld, &e->algo, ws, ws_bytes, s));
  if (g->d.copied) cu_permute(s, out, d, g->d.copy.rank, g->d.copy.size, g->d.copy.stride, g->esize_out);
}

void cu_einsum_free(CuEinsum *e) {
  if (!e) return;
  if (e->op) CUBLAS_CHECK(cublasLtMatmulDescDestroy(e->op));
  cublasLtMatrixLayout_t l[3] = {e->la, e->lb, e->ld};
  for (int k = 0; k < 3; k++)
    if (l[k]) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(l[k]));
  free(e);
}
