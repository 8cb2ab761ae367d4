/* gemm.c: carve's CUDA einsums against cuBLASLt called directly, in bf16.
 *
 * Every matrix product of a GPT-2 124M training step (batch 16, seq 1024:
 * the q/k/v, attention-output, MLP and tied-head projections, the
 * attention scores and values, and their backward products) and of a GPT-3
 * 175B layer (hidden 12288, seq 2048, a microbatch of one sequence) runs
 *   - through carve's einsum path: the plan cu_einsum_prepare makes when a
 *     program is loaded (runtime/cuda/einsum.c), run by cu_einsum_exec on
 *     device buffers in the operands' own layouts;
 *   - as the plain product a hand-written trainer would ask cuBLASLt for:
 *     contiguous row-major [batch, m, k] x [batch, k, n], the same M, N, K
 *     and batch, bf16 inputs, f32 accumulation (CUBLAS_COMPUTE_32F), a bf16
 *     output (f32 for the weight gradients, as carve's bf16 programs write
 *     them), the algorithm cuBLASLt's heuristic ranks first, the same 32 MiB
 *     workspace.
 * The two alternate, REPS pairs after a warm-up; each run is timed with CUDA
 * events on one stream. The table gives the median TFLOP/s of each and the
 * median of the per-pair ratios (carve's speed over cuBLASLt's); the last
 * lines weigh each shape by its FLOPs (the ratio of summed medians).
 * Target: carve's path at 95% of cuBLASLt's or better.
 *
 * usage: gemm [--model gpt2|gpt3|all] [--reps N]
 * Exits 77 ("SKIPPED: why") where no GPU answers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/cuda/cuda.h"
#include "kmath.h"
#include "../median.h"
#include "../gemm_case.h"

#define CK(call)                                                                                                       \
  do {                                                                                                                 \
    cudaError_t e_ = (call);                                                                                           \
    if (e_ != cudaSuccess) {                                                                                           \
      fprintf(stderr, "gemm: %s: %s (%s:%d)\n", #call, cudaGetErrorString(e_), __FILE__, __LINE__);                    \
      exit(1);                                                                                                         \
    }                                                                                                                  \
  } while (0)
#define LT(call)                                                                                                       \
  do {                                                                                                                 \
    cublasStatus_t s_ = (call);                                                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                                 \
      fprintf(stderr, "gemm: %s: cuBLAS status %d (%s:%d)\n", #call, (int)s_, __FILE__, __LINE__);                     \
      exit(1);                                                                                                         \
    }                                                                                                                  \
  } while (0)

/* The einsums of one transformer layer and its head, as bench_runtime.c
   lists them for the CPU. */
#define GPT_CASES(B, T, H, N, D, F, V)                                                                                 \
  {"q/k/v projection", "abc,cde->abde", S(B, T, H), S(H, N, D), S(B, T, N, D), 1, B * T, H, H, false},                 \
      {"attention scores", "abcd,aecd->acbe", S(B, T, N, D), S(B, T, N, D), S(B, N, T, T), B * N, T, T, D, false},     \
      {"attention x values", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T, false},   \
      {"output projection", "abcd,cde->abe", S(B, T, N, D), S(N, D, H), S(B, T, H), 1, B * T, H, H, false},            \
      {"mlp up", "abc,cd->abd", S(B, T, H), S(H, F), S(B, T, F), 1, B * T, F, H, false},                               \
      {"mlp down", "abd,dc->abc", S(B, T, F), S(F, H), S(B, T, H), 1, B * T, H, F, false},                             \
      {"logits (tied)", "abc,dc->abd", S(B, T, H), S(V, H), S(B, T, V), 1, B * T, V, H, false},                        \
      {"q/k/v: d weight", "abc,abde->cde", S(B, T, H), S(B, T, N, D), S(H, N, D), 1, H, H, B * T, true},               \
      {"q/k/v: d input", "abde,cde->abc", S(B, T, N, D), S(H, N, D), S(B, T, H), 1, B * T, H, H, false},               \
      {"mlp up: d weight", "abc,abd->cd", S(B, T, H), S(B, T, F), S(H, F), 1, H, F, B * T, true},                      \
      {"mlp up: d input", "abd,cd->abc", S(B, T, F), S(H, F), S(B, T, H), 1, B * T, H, F, false},                      \
      {"mlp down: d weight", "abd,abc->dc", S(B, T, F), S(B, T, H), S(F, H), 1, F, H, B * T, true},                    \
      {"logits: d weight", "abd,abc->dc", S(B, T, V), S(B, T, H), S(V, H), 1, V, H, B * T, true},                      \
      {"logits: d input", "abd,dc->abc", S(B, T, V), S(V, H), S(B, T, H), 1, B * T, H, V, false},                      \
      {"scores: d query", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T, false},      \
      {"scores: d key", "abcd,acbe->aecd", S(B, T, N, D), S(B, N, T, T), S(B, T, N, D), B * N, T, D, T, false},        \
      {"values: d probs", "abcd,aecd->acbe", S(B, T, N, D), S(B, T, N, D), S(B, N, T, T), B * N, T, T, D, false}, {    \
    "values: d values", "acbe,abcd->aecd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B *N, T, D, T, false           \
  }

static const Case gpt2[] = {GPT_CASES(16, 1024, 768, 12, 64, 3072, 50257)};
static const Case gpt3[] = {GPT_CASES(1, 2048, 12288, 96, 128, 49152, 50257)};

/* Device memory of n bf16 values: copies of one pool of 2^24 normal draws
   (drawing billions on the host would take a minute; the products' speed
   does not depend on the values). */
static void *pool;
#define POOL ((int64_t)1 << 24)
static void *dev_random(int64_t n, uint64_t key) {
  if (!pool) {
    uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)POOL);
    for (int64_t i = 0; i < POOL; i++) h[i] = km_bf16(rng_normal(1, (uint64_t)i));
    CK(cudaMalloc(&pool, sizeof(uint16_t) * (size_t)POOL));
    CK(cudaMemcpy(pool, h, sizeof(uint16_t) * (size_t)POOL, cudaMemcpyHostToDevice));
    free(h);
  }
  uint16_t *d;
  CK(cudaMalloc((void **)&d, sizeof(uint16_t) * (size_t)n));
  int64_t shift = (int64_t)(key * 7919) % POOL; /* a and b start at different draws */
  for (int64_t at = 0; at < n;) {
    int64_t from = (at + shift) % POOL, len = POOL - from < n - at ? POOL - from : n - at;
    CK(cudaMemcpy(d + at, (uint16_t *)pool + from, sizeof(uint16_t) * (size_t)len, cudaMemcpyDeviceToDevice));
    at += len;
  }
  return d;
}

/* The plain product through cuBLASLt: row-major C[m,n] = A[m,k] B[k,n] is
   column-major C^T[n,m] = B^T[n,k] A^T[k,m], so B goes first. */
typedef struct Plain {
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulHeuristicResult_t h;
} Plain;

static void layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t batch) {
  LT(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, rows));
  if (batch > 1) {
    int32_t count = (int32_t)batch;
    int64_t stride = rows * cols;
    LT(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    LT(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
}

static bool plain_make(cublasLtHandle_t lt, Plain *p, const Case *c, bool f32_out) {
  LT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  layout(&p->la, CUDA_R_16BF, c->n, c->k, c->batch); /* B^T: n x k */
  layout(&p->lb, CUDA_R_16BF, c->k, c->m, c->batch); /* A^T: k x m */
  layout(&p->lc, f32_out ? CUDA_R_32F : CUDA_R_16BF, c->n, c->m, c->batch);
  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = CU_LT_WORKSPACE;
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  int found = 0;
  cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &p->h, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  return s == CUBLAS_STATUS_SUCCESS && found > 0;
}

static void plain_free(Plain *p) {
  cublasLtMatrixLayoutDestroy(p->la);
  cublasLtMatrixLayoutDestroy(p->lb);
  cublasLtMatrixLayoutDestroy(p->lc);
  cublasLtMatmulDescDestroy(p->op);
}

static cudaEvent_t ev0, ev1;

static double plain_run(cublasLtHandle_t lt, const Plain *p, cudaStream_t st, const void *a, const void *b, void *c,
                        void *ws) {
  float one = 1, zero = 0;
  CK(cudaEventRecord(ev0, st));
  LT(cublasLtMatmul(lt, p->op, &one, b, p->la, a, p->lb, &zero, c, p->lc, c, p->lc, &p->h.algo, ws, CU_LT_WORKSPACE,
                    st));
  CK(cudaEventRecord(ev1, st));
  CK(cudaEventSynchronize(ev1));
  float ms;
  CK(cudaEventElapsedTime(&ms, ev0, ev1));
  return ms * 1e-3;
}

static double carve_run(const CuEinsum *e, cudaStream_t st, const void *a, const void *b, void *c, void *scratch,
                        void *ws) {
  const void *in[2] = {a, b};
  CK(cudaEventRecord(ev0, st));
  cu_einsum_exec(e, st, in, c, scratch, ws, CU_LT_WORKSPACE);
  CK(cudaEventRecord(ev1, st));
  CK(cudaEventSynchronize(ev1));
  float ms;
  CK(cudaEventElapsedTime(&ms, ev0, ev1));
  return ms * 1e-3;
}

static int reps = 9;

/* One shape: medians of carve's and cuBLASLt's seconds (NAN where absent). */
static void bench_case(cublasLtHandle_t lt, cudaStream_t st, void *ws, const Case *c, double *tc, double *tr,
                       double *ratio) {
  DType out = c->f32_out ? DT_F32 : DT_BF16;
  char why[256] = "";
  const Shape *ins[2] = {&c->a, &c->b};
  int64_t scratch_bytes = 0;
  CuEinsum *e = cu_einsum_prepare(lt, c->spec, 2, ins, DT_BF16, &c->c, out, &scratch_bytes, why, sizeof why);
  if (!e) fprintf(stderr, "gemm: %s: carve's einsum refuses it: %s\n", c->what, why);
  Plain p;
  bool plain = plain_make(lt, &p, c, c->f32_out);
  if (!plain) fprintf(stderr, "gemm: %s: cuBLASLt offers no algorithm\n", c->what);
  void *a = dev_random(shape_numel(&c->a), 1), *b = dev_random(shape_numel(&c->b), 2), *o, *scratch = NULL;
  CK(cudaMalloc(&o, (size_t)shape_numel(&c->c) * (size_t)dtype_size(out)));
  if (scratch_bytes > 0) CK(cudaMalloc(&scratch, (size_t)scratch_bytes));
  double vc[64], vr[64], q[64];
  if (e) carve_run(e, st, a, b, o, scratch, ws); /* warm-up */
  if (plain) plain_run(lt, &p, st, a, b, o, ws);
  for (int r = 0; r < reps; r++) {
    vc[r] = e ? carve_run(e, st, a, b, o, scratch, ws) : NAN;
    vr[r] = plain ? plain_run(lt, &p, st, a, b, o, ws) : NAN;
    q[r] = vr[r] / vc[r];
  }
  *tc = median(vc, reps);
  *tr = median(vr, reps);
  *ratio = median(q, reps);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(o));
  if (scratch) CK(cudaFree(scratch));
  if (plain) plain_free(&p);
  if (e) cu_einsum_free(e);
}

static void bench_model(cublasLtHandle_t lt, cudaStream_t st, void *ws, const char *title, const Case *cases, int n) {
  printf("\n%s\n%-20s %-16s %8s %9s %9s %7s\n", title, "einsum", "spec", "GFLOP", "carve", "cuBLASLt", "ratio");
  double flops_all = 0, tc_all = 0, tr_all = 0;
  for (int i = 0; i < n; i++) {
    const Case *c = &cases[i];
    double flops = 2.0 * (double)c->batch * (double)c->m * (double)c->n * (double)c->k, tc, tr, ratio;
    bench_case(lt, st, ws, c, &tc, &tr, &ratio);
    printf("%-20s %-16s %8.1f %5.0f TF/s %5.0f TF/s %6.1f%%\n", c->what, c->spec, flops * 1e-9, flops / tc * 1e-12,
           flops / tr * 1e-12, 100 * ratio);
    fflush(stdout);
    flops_all += flops, tc_all += tc, tr_all += tr;
  }
  printf("%-20s %-16s %8.1f %5.0f TF/s %5.0f TF/s %6.1f%%   (FLOP-weighted; target >= 95%%)\n", "all of the above", "",
         flops_all * 1e-9, flops_all / tc_all * 1e-12, flops_all / tr_all * 1e-12, 100 * tr_all / tc_all);
}

int main(int argc, char **argv) {
  const char *which = "all";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc)
      which = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc && atoi(argv[i + 1]) > 0 && atoi(argv[i + 1]) <= 64)
      reps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: gemm [--model gpt2|gpt3|all] [--reps N (1-64)]\n");
      return 2;
    }
  }
  if (strcmp(which, "gpt2") && strcmp(which, "gpt3") && strcmp(which, "all")) {
    fprintf(stderr, "gemm: --model is gpt2, gpt3 or all, not '%s'\n", which);
    return 2;
  }
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    printf("SKIPPED: no usable GPU (%s)\n", e != cudaSuccess ? cudaGetErrorName(e) : "no device");
    return 77;
  }
  struct cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("carve's CUDA einsums against cuBLASLt (bf16 x bf16, f32 accumulation; cuBLASLt %zu), %s, median of %d\n",
         cublasLtGetVersion(), prop.name, reps);
  cublasLtHandle_t lt;
  LT(cublasLtCreate(&lt));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  CK(cudaEventCreate(&ev0));
  CK(cudaEventCreate(&ev1));
  void *ws;
  CK(cudaMalloc(&ws, CU_LT_WORKSPACE));
  if (strcmp(which, "gpt3"))
    bench_model(lt, st, ws, "GPT-2 124M, batch 16 x seq 1024 (16384 tokens)", gpt2, (int)(sizeof gpt2 / sizeof *gpt2));
  if (strcmp(which, "gpt2"))
    bench_model(lt, st, ws, "GPT-3 175B layer, hidden 12288, 96 heads, microbatch 1 x seq 2048", gpt3,
                (int)(sizeof gpt3 / sizeof *gpt3));
  CK(cudaFree(ws));
  cublasLtDestroy(lt);
  return 0;
}
