/* bench_runtime.c: CPU runtime throughput against raw OpenBLAS sgemm.
 *
 * Part 1, einsum: every einsum a GPT-2 124M training step runs (batch 4,
 * seq 256), through carve's einsum engine and as the plain sgemm a hand
 * written trainer would call (contiguous operands, same M, N, K, batched
 * attention as a loop of sgemm over contiguous blocks). The two alternate,
 * 9 pairs after a warm-up pair; the table shows the median time of each and
 * the median of the per-pair ratios (carve speed / sgemm speed); the total
 * weights each shape by its FLOPs (ratio of the summed median times).
 *
 * Part 2, a whole step: gpt2-124m at batch 4, seq 256 (AdamW), median step
 * time of 5 steps after one warm-up, model FLOPs per step (einsum FLOPs: the
 * 6ND-style count) over time, against this machine's sgemm rate on 2048^3.
 *
 * usage: bench_runtime [--quick]   (--quick: smaller step model for smoke runs) */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/runtime.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return v[n / 2];
}

static float *randn(int64_t n, uint64_t key) {
  float *p = xmalloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) p[i] = rng_normal(key, (uint64_t)i);
  return p;
}

typedef struct Case {
  const char *what, *spec;
  Shape a, b, c;
  int batch, m, n, k; /* the equivalent plain sgemm */
} Case;

static double run_carve(const Case *c, const float *a, const float *b, float *out, EinsumScratch *s) {
  const float *in[2] = {a, b};
  const Shape *ins[2] = {&c->a, &c->b};
  double t0 = now_seconds();
  einsum_run(c->spec, 2, in, ins, out, &c->c, s);
  return now_seconds() - t0;
}

static double run_sgemm(const Case *c, const float *a, const float *b, float *out) {
  double t0 = now_seconds();
  for (int i = 0; i < c->batch; i++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->m, c->n, c->k, 1.0f, a + (int64_t)i * c->m * c->k, c->k,
                b + (int64_t)i * c->k * c->n, c->n, 0.0f, out + (int64_t)i * c->m * c->n, c->n);
  return now_seconds() - t0;
}

/* Alternates carve and sgemm, REPS pairs after one warm-up pair: medians of
 * each and the median of the per-pair ratios (robust to drifting speed). */
#define REPS 9
static void time_pair(const Case *c, const float *a, const float *b, float *out, EinsumScratch *s, double *tc,
                      double *tr, double *ratio) {
  double vc[REPS], vr[REPS], q[REPS];
  run_carve(c, a, b, out, s);
  run_sgemm(c, a, b, out);
  for (int r = 0; r < REPS; r++) {
    vc[r] = run_carve(c, a, b, out, s);
    vr[r] = run_sgemm(c, a, b, out);
    q[r] = vr[r] / vc[r];
  }
  *tc = median(vc, REPS);
  *tr = median(vr, REPS);
  *ratio = median(q, REPS);
}

#define S(...)                                                                                                         \
  {                                                                                                                    \
    .rank = sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), .d = { __VA_ARGS__ }                                   \
  }

static void bench_einsum(void) {
  const int64_t B = 4, T = 256, H = 768, N = 12, D = 64, F = 3072, V = 50257, BT = B * T;
  const Case cases[] = {
      {"q/k/v projection", "abc,cde->abde", S(B, T, H), S(H, N, D), S(B, T, N, D), 1, BT, H, H},
      {"attention scores", "abcd,aecd->acbe", S(B, T, N, D), S(B, T, N, D), S(B, N, T, T), B * N, T, T, D},
      {"attention x values", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T},
      {"output projection", "abcd,cde->abe", S(B, T, N, D), S(N, D, H), S(B, T, H), 1, BT, H, H},
      {"mlp up", "abc,cd->abd", S(B, T, H), S(H, F), S(B, T, F), 1, BT, F, H},
      {"mlp down", "abd,dc->abc", S(B, T, F), S(F, H), S(B, T, H), 1, BT, H, F},
      {"logits (tied)", "abc,dc->abd", S(B, T, H), S(V, H), S(B, T, V), 1, BT, V, H},
      {"mlp up: d weight", "abc,abd->cd", S(B, T, H), S(B, T, F), S(H, F), 1, H, F, BT},
      {"mlp up: d input", "abd,cd->abc", S(B, T, F), S(H, F), S(B, T, H), 1, BT, H, F},
      {"logits: d weight", "abd,abc->dc", S(B, T, V), S(B, T, H), S(V, H), 1, V, H, BT},
      {"logits: d input", "abd,dc->abc", S(B, T, V), S(V, H), S(B, T, H), 1, BT, H, V},
      {"scores: d query", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T},
      {"scores: d key", "abcd,acbe->aecd", S(B, T, N, D), S(B, N, T, T), S(B, T, N, D), B * N, T, D, T},
  };
  EinsumScratch scratch = {0};
  double flops_all = 0, t_carve_all = 0, t_raw_all = 0;
  printf("%-22s %-18s %10s %10s %7s\n", "einsum (gpt2-124m)", "spec", "carve", "sgemm", "ratio");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const Case *c = &cases[i];
    float *a = randn(shape_numel(&c->a), 1), *b = randn(shape_numel(&c->b), 2);
    float *out = xmalloc(sizeof(float) * (size_t)shape_numel(&c->c));
    double flops = 2.0 * c->batch * c->m * c->n * c->k;
    double tc, tr, ratio;
    time_pair(c, a, b, out, &scratch, &tc, &tr, &ratio);
    printf("%-22s %-18s %7.1f GF %7.1f GF %6.1f%%\n", c->what, c->spec, flops / tc * 1e-9, flops / tr * 1e-9,
           100 * ratio);
    flops_all += flops, t_carve_all += tc, t_raw_all += tr;
    free(a), free(b), free(out);
  }
  printf("%-22s %-18s %7.1f GF %7.1f GF %6.1f%%   (FLOP-weighted)\n\n", "all of the above", "",
         flops_all / t_carve_all * 1e-9, flops_all / t_raw_all * 1e-9, 100 * t_raw_all / t_carve_all);
  free(scratch.p);
}

static double sgemm_rate(int n) {
  float *a = randn((int64_t)n * n, 3), *b = randn((int64_t)n * n, 4), *c = xmalloc(sizeof(float) * (size_t)n * n);
  double t[5] = {0};
  for (int r = -1; r < 5; r++) {
    double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    if (r >= 0) t[r] = now_seconds() - t0;
  }
  free(a), free(b), free(c);
  return 2.0 * n * n * (double)n / median(t, 5);
}

static void bench_step(bool quick) {
  const char *preset = quick ? "gpt-small" : "gpt2-124m";
  const char *sets = quick ? "batch=4,seq=128" : "batch=4,seq=256";
  Diag d;
  diag_init(&d, stderr);
  ElabOptions o = {.preset = preset};
  parse_sets(sets, &o.sets, &o.nsets, stderr);
  Graph *g = frontend_load(model_resolve("gpt"), &o, &d);
  free(o.sets);
  if (!g || !autodiff(g, 1, stderr)) exit(1);
  Train t;
  train_defaults(&t);
  Program *p = codegen(g, &t, 1);
  RunOptions ro = {.steps = 6, .quiet = true};
  Runtime *rt = runtime_new(p, &ro);
  if (!rt) exit(1);
  double ts[5], loss;
  runtime_step(rt, &loss);
  for (int s = 0; s < 5; s++) {
    double t0 = now_seconds();
    runtime_step(rt, &loss);
    ts[s] = now_seconds() - t0;
  }
  runtime_free(rt);
  double step = median(ts, 5), rate = sgemm_rate(2048);
  printf("training step, gpt %s (%s), AdamW\n", preset, sets);
  printf("  step time (median of 5)        %8.1f ms\n", step * 1e3);
  printf("  model FLOPs per step           %8.1f GFLOP\n", p->flops_per_step * 1e-9);
  printf("  achieved                       %8.1f GFLOP/s\n", p->flops_per_step / step * 1e-9);
  printf("  sgemm 2048^3 on this machine   %8.1f GFLOP/s\n", rate * 1e-9);
  printf("  step rate / sgemm rate         %8.1f%%\n", 100 * p->flops_per_step / step / rate);
}

int main(int argc, char **argv) {
  carve_passive_threads(argv);
  bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
  printf("carve runtime benchmark (carve %s)\n\n", CARVE_VERSION);
  if (!quick) bench_einsum();
  bench_step(quick);
  arena_reset();
  return 0;
}
