/* bench_runtime.c: the CPU runtime's einsums against oneDNN's own matrix
 * product called directly.
 *
 * Every einsum a GPT-2 124M training step runs (batch 4, seq 256), in one
 * precision (--precision bf16, the default, or fp32): through carve's einsum
 * engine (the plan einsum_prepare makes when a program is loaded, run by
 * einsum_exec) and as the plain oneDNN matmul a hand-written trainer would
 * create: contiguous row-major operands, the same M, N, K and batch, the
 * inputs' dtype, a bf16 output (f32 for the weight gradients, as carve's
 * bf16 programs write them). The two alternate, 9 pairs after a warm-up
 * pair; the table shows the median rate of each and the median of the
 * per-pair ratios (carve's speed over oneDNN's); the last line weighs each
 * shape by its FLOPs (the ratio of summed median times).
 *
 * Where oneDNN has no bf16 product (a CPU without AVX-512, or one limited
 * with ONEDNN_MAX_CPU_ISA=AVX2), carve widens bf16 operands to f32 and the
 * oneDNN column reads nan.
 *
 * usage: bench_runtime [--precision bf16|fp32] */
#include <dnnl.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/cpu/cpu.h"
#include "median.h"
#include "gemm_case.h"

/* n random values of dtype dt */
static void *randn(int64_t n, uint64_t key, DType dt) {
  void *p = xmalloc((size_t)n * (size_t)dtype_size(dt));
  for (int64_t i = 0; i < n; i++) {
    float v = rng_normal(key, (uint64_t)i);
    if (dt == DT_BF16)
      ((uint16_t *)p)[i] = km_bf16(v);
    else
      ((float *)p)[i] = v;
  }
  return p;
}

/* The plain batched product [batch, m, k] x [batch, k, n] -> [batch, m, n]. */
typedef struct Plain {
  dnnl_engine_t eng;
  dnnl_stream_t st;
  dnnl_primitive_t prim;
  dnnl_memory_t mem[3];
} Plain;

/* false when oneDNN has no such product on this CPU (bf16 without AVX-512) */
static bool plain_make(Plain *p, const Case *c, DType dt, DType out) {
  dnnl_engine_create(&p->eng, dnnl_cpu, 0);
  dnnl_stream_create(&p->st, p->eng, dnnl_stream_default_flags);
  dnnl_dims_t d[3] = {{c->batch, c->m, c->k}, {c->batch, c->k, c->n}, {c->batch, c->m, c->n}};
  dnnl_memory_desc_t md[3];
  for (int k = 0; k < 3; k++) {
    dnnl_data_type_t t = (k < 2 ? dt : out) == DT_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_init_by_tag(&md[k], 3, d[k], t, dnnl_abc);
  }
  dnnl_matmul_desc_t desc;
  dnnl_primitive_desc_t pd;
  if (dnnl_matmul_desc_init(&desc, &md[0], &md[1], NULL, &md[2]) != dnnl_success ||
      dnnl_primitive_desc_create(&pd, &desc, NULL, p->eng, NULL) != dnnl_success)
    return false;
  if (dnnl_primitive_create(&p->prim, pd) != dnnl_success) carve_fatal("oneDNN: %s: no primitive", c->what);
  dnnl_primitive_desc_destroy(pd);
  for (int k = 0; k < 3; k++) dnnl_memory_create(&p->mem[k], &md[k], p->eng, DNNL_MEMORY_NONE);
  return true;
}

static double plain_run(Plain *p, void *a, void *b, void *out) {
  double t0 = now_seconds();
  void *ptr[3] = {a, b, out};
  for (int k = 0; k < 3; k++) dnnl_memory_set_data_handle(p->mem[k], ptr[k]);
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p->mem[0]}, {DNNL_ARG_WEIGHTS, p->mem[1]}, {DNNL_ARG_DST, p->mem[2]}};
  dnnl_primitive_execute(p->prim, p->st, 3, args);
  dnnl_stream_wait(p->st);
  return now_seconds() - t0;
}

static void plain_free(Plain *p) {
  for (int k = 0; k < 3; k++) dnnl_memory_destroy(p->mem[k]);
  dnnl_primitive_destroy(p->prim);
  dnnl_stream_destroy(p->st);
  dnnl_engine_destroy(p->eng);
}

static double carve_run(const EinsumPlan *e, void *a, void *b, void *out, Scratch *s) {
  double t0 = now_seconds();
  const void *in[2] = {a, b};
  einsum_exec(e, in, out, s);
  return now_seconds() - t0;
}

#define REPS 9

static void bench_case(const Case *c, DType dt, Scratch *s, double *tc, double *tr, double *ratio) {
  DType out = dt == DT_BF16 && !c->f32_out ? DT_BF16 : DT_F32;
  char why[256];
  const Shape *ins[2] = {&c->a, &c->b};
  EinsumPlan *e = einsum_prepare(c->spec, 2, ins, dt, &c->c, out, why, sizeof why);
  if (!e) carve_fatal("%s: %s", c->what, why);
  Plain p = {0};
  bool plain = plain_make(&p, c, dt, out);
  void *a = randn(shape_numel(&c->a), 1, dt), *b = randn(shape_numel(&c->b), 2, dt);
  void *o = xmalloc((size_t)shape_numel(&c->c) * (size_t)dtype_size(out));
  double vc[REPS], vr[REPS], q[REPS];
  carve_run(e, a, b, o, s);
  if (plain) plain_run(&p, a, b, o);
  for (int r = 0; r < REPS; r++) {
    vc[r] = carve_run(e, a, b, o, s);
    vr[r] = plain ? plain_run(&p, a, b, o) : NAN; /* no oneDNN product to compare with */
    q[r] = vr[r] / vc[r];
  }
  *tc = median(vc, REPS);
  *tr = median(vr, REPS);
  *ratio = median(q, REPS);
  free(a), free(b), free(o);
  if (plain) plain_free(&p);
  einsum_free(e);
}

int main(int argc, char **argv) {
  carve_passive_threads(argv);
  DType dt = DT_BF16;
  if (argc == 3 && !strcmp(argv[1], "--precision") && !strcmp(argv[2], "fp32"))
    dt = DT_F32;
  else if (argc > 1 && !(argc == 3 && !strcmp(argv[1], "--precision") && !strcmp(argv[2], "bf16"))) {
    fprintf(stderr, "usage: bench_runtime [--precision bf16|fp32]\n");
    return 2;
  }
  const int64_t B = 4, T = 256, H = 768, N = 12, D = 64, F = 3072, V = 50257, BT = B * T;
  const Case cases[] = {
      {"q/k/v projection", "abc,cde->abde", S(B, T, H), S(H, N, D), S(B, T, N, D), 1, BT, H, H, false},
      {"attention scores", "abcd,aecd->acbe", S(B, T, N, D), S(B, T, N, D), S(B, N, T, T), B * N, T, T, D, false},
      {"attention x values", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T, false},
      {"output projection", "abcd,cde->abe", S(B, T, N, D), S(N, D, H), S(B, T, H), 1, BT, H, H, false},
      {"mlp up", "abc,cd->abd", S(B, T, H), S(H, F), S(B, T, F), 1, BT, F, H, false},
      {"mlp down", "abd,dc->abc", S(B, T, F), S(F, H), S(B, T, H), 1, BT, H, F, false},
      {"logits (tied)", "abc,dc->abd", S(B, T, H), S(V, H), S(B, T, V), 1, BT, V, H, false},
      {"mlp up: d weight", "abc,abd->cd", S(B, T, H), S(B, T, F), S(H, F), 1, H, F, BT, true},
      {"mlp up: d input", "abd,cd->abc", S(B, T, F), S(H, F), S(B, T, H), 1, BT, H, F, false},
      {"logits: d weight", "abd,abc->dc", S(B, T, V), S(B, T, H), S(V, H), 1, V, H, BT, true},
      {"logits: d input", "abd,dc->abc", S(B, T, V), S(V, H), S(B, T, H), 1, BT, H, V, false},
      {"scores: d query", "acbe,aecd->abcd", S(B, N, T, T), S(B, T, N, D), S(B, T, N, D), B * N, T, D, T, false},
      {"scores: d key", "abcd,acbe->aecd", S(B, T, N, D), S(B, N, T, T), S(B, T, N, D), B * N, T, D, T, false},
  };
  printf("carve einsums against oneDNN's matmul called directly (%s, carve %s, %d threads)\n\n",
         dt == DT_BF16 ? "bf16 x bf16, f32 accumulation" : "fp32", CARVE_VERSION, omp_get_max_threads());
  printf("%-22s %-18s %12s %12s %7s\n", "einsum (gpt2-124m)", "spec", "carve", "oneDNN", "ratio");
  Scratch s = {0};
  double flops_all = 0, tc_all = 0, tr_all = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const Case *c = &cases[i];
    double flops = 2.0 * (double)(c->batch * c->m * c->n * c->k), tc, tr, ratio;
    bench_case(c, dt, &s, &tc, &tr, &ratio);
    printf("%-22s %-18s %7.1f GF/s %7.1f GF/s %6.1f%%\n", c->what, c->spec, flops / tc * 1e-9, flops / tr * 1e-9,
           100 * ratio);
    flops_all += flops, tc_all += tc, tr_all += tr;
  }
  printf("%-22s %-18s %7.1f GF/s %7.1f GF/s %6.1f%%   (FLOP-weighted)\n", "all of the above", "",
         flops_all / tc_all * 1e-9, flops_all / tr_all * 1e-9, 100 * tr_all / tc_all);
  free(s.p);
  return 0;
}
