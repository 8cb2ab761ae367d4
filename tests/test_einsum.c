/* test_einsum.c: the CPU backend's einsum engine (oneDNN products, prepared
 * per shape) against a naive loop over every label assignment, for fixed
 * cases (every layout autodiff produces for a matmul and for attention) and
 * for random specs and permutations; in f32, and in bf16 with f32 and bf16
 * outputs (against the naive loop over the bf16-rounded inputs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/cpu/cpu.h"
#include "einsum_specs.h"
#include "harness.h"

static void naive(const char *spec, int nin, const float *const *in, const Shape *const *ins, float *out,
                  const Shape *outs) {
  char parts[3][16] = {{0}};
  const char *arrow = strstr(spec, "->");
  const char *comma = strchr(spec, ',');
  if (nin == 2) {
    memcpy(parts[0], spec, (size_t)(comma - spec));
    memcpy(parts[1], comma + 1, (size_t)(arrow - comma - 1));
  } else {
    memcpy(parts[0], spec, (size_t)(arrow - spec));
  }
  strcpy(parts[2], arrow + 2);
  char labs[32] = "";
  int64_t size[32];
  int nl = 0;
  for (int k = 0; k < nin; k++)
    for (int i = 0; parts[k][i]; i++)
      if (!strchr(labs, parts[k][i])) {
        labs[nl] = parts[k][i];
        size[nl++] = ins[k]->d[i];
        labs[nl] = 0;
      }
  int64_t total = 1, idx[32] = {0};
  for (int i = 0; i < nl; i++) total *= size[i];
  memset(out, 0, sizeof(float) * (size_t)shape_numel(outs));
  for (int64_t t = 0; t < total; t++) {
    double v = 1;
    for (int k = 0; k < nin; k++) {
      int64_t off = 0;
      for (int i = 0; parts[k][i]; i++) off = off * ins[k]->d[i] + idx[strchr(labs, parts[k][i]) - labs];
      v *= in[k][off];
    }
    int64_t off = 0;
    for (int i = 0; parts[2][i]; i++) off = off * outs->d[i] + idx[strchr(labs, parts[2][i]) - labs];
    out[off] += (float)v;
    for (int i = nl - 1; i >= 0; i--) {
      if (++idx[i] < size[i]) break;
      idx[i] = 0;
    }
  }
}

/* dt: the inputs' dtype; out: the output's */
static double run_case(const char *spec, int nin, const Shape *const *ins, const Shape *sc, const float *const *in,
                       float *want, DType dt, DType out, Scratch *scratch) {
  char why[256];
  EinsumPlan *e = einsum_prepare(spec, nin, ins, dt, sc, out, why, sizeof why);
  CHECK(e != NULL, "%s: prepared (%s)", spec, e ? "" : why);
  if (!e) return 1;
  int64_t n[3] = {shape_numel(ins[0]), nin > 1 ? shape_numel(ins[1]) : 0, shape_numel(sc)};
  void *x[2] = {malloc(4 * (size_t)n[0]), malloc(4 * (size_t)(n[1] + 1))}, *got = malloc(4 * (size_t)n[2]);
  for (int k = 0; k < nin; k++)
    for (int64_t i = 0; i < n[k]; i++)
      if (dt == DT_BF16)
        ((uint16_t *)x[k])[i] = km_bf16(in[k][i]);
      else
        ((float *)x[k])[i] = in[k][i];
  einsum_exec(e, (const void *const *)x, got, scratch);
  double worst = 0;
  for (int64_t i = 0; i < n[2]; i++) {
    double g = out == DT_BF16 ? km_f32(((uint16_t *)got)[i]) : ((float *)got)[i];
    double err = fabs(g - want[i]) / (1 + fabs(want[i]));
    if (err > worst) worst = err;
  }
  einsum_free(e);
  free(x[0]), free(x[1]), free(got);
  return worst;
}

static void compare(const char *spec, const int64_t *sizes, Scratch *scratch) {
  Shape sa, sb, sc;
  int nin = spec_shapes(spec, sizes, &sa, &sb, &sc);
  const Shape *ins[2] = {&sa, &sb};
  CHECK(einsum_check(spec, nin, ins, &sc) == NULL, "%s: spec accepted", spec);
  float *x = malloc(sizeof(float) * (size_t)shape_numel(&sa)), *y = malloc(sizeof(float) * (size_t)shape_numel(&sb));
  float *want = malloc(sizeof(float) * (size_t)shape_numel(&sc));
  for (int64_t i = 0; i < shape_numel(&sa); i++) x[i] = rng_normal(1, (uint64_t)i);
  for (int64_t i = 0; i < shape_numel(&sb); i++) y[i] = rng_normal(2, (uint64_t)i);
  const float *in[2] = {x, y};
  naive(spec, nin, in, ins, want, &sc);
  double e = run_case(spec, nin, ins, &sc, in, want, DT_F32, DT_F32, scratch);
  CHECK(e < 1e-4, "%s: f32 einsum differs from the naive loop by %g", spec, e);
  /* bf16: the naive loop over the rounded inputs */
  for (int64_t i = 0; i < shape_numel(&sa); i++) x[i] = km_f32(km_bf16(x[i]));
  for (int64_t i = 0; i < shape_numel(&sb); i++) y[i] = km_f32(km_bf16(y[i]));
  naive(spec, nin, in, ins, want, &sc);
  e = run_case(spec, nin, ins, &sc, in, want, DT_BF16, nin == 1 ? DT_BF16 : DT_F32, scratch);
  CHECK(e < 1e-4, "%s: bf16 einsum (f32 out) differs from the naive loop by %g", spec, e);
  e = run_case(spec, nin, ins, &sc, in, want, DT_BF16, DT_BF16, scratch);
  CHECK(e < 1e-2, "%s: bf16 einsum (bf16 out) differs from the naive loop by %g", spec, e);
  free(x), free(y), free(want);
}

int main(void) {
  Scratch scratch = {0};
  const int64_t sizes[26] = {2, 3, 4, 5, 3, 2, 4, 3, 2, 5, 3, 2, 4, 2, 3, 2, 2, 3, 2, 2, 3, 2, 2, 2, 2, 2};
  static const char *fixed[] = {
      "ab,bc->ac",     "ab,ac->bc",       "ac,bc->ab",       "abc,cd->abd",     "abd,cd->abc",
      "abc,abd->cd",   "abcd,aecd->acbe", "acbe,aecd->abcd", "acbe,abcd->aecd", "acbe,aecd->abcd",
      "abcd,cde->abe", "abe,cde->abcd",   "abcd,abe->cde",   "ijk,jkl->li",     "li,jkl->ijk",
      "ijk,li->jkl",   "abc->cab",        "abc->acb",        "ab,ab->ab",       "a,b->ab",
      "ab,b->a",       "bca,cd->dab",     "tec,th->ech",     "ech,ehf->ecf",    "tec,ecf->tf",
  };
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) compare(fixed[i], sizes, &scratch);
  /* random specs: labels from a pool, each label in two or three places */
  for (int t = 0; t < 300; t++) {
    char spec[32];
    if (random_spec(t, spec, sizeof spec)) compare(spec, sizes, &scratch);
  }
  free(scratch.p);
  return test_summary();
}
