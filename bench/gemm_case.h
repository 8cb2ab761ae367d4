/* gemm_case.h: one einsum of a training step, as the product benchmarks
 * (bench_runtime.c on the CPU, gpu/gemm.c on a GPU) time it: through
 * carve's einsum path in the operands' own layouts, and as the plain
 * batched product a hand-written trainer would ask the library for. */
#ifndef CARVE_BENCH_GEMM_CASE_H
#define CARVE_BENCH_GEMM_CASE_H
#include <stdbool.h>

#include "carve.h"

typedef struct Case {
  const char *what, *spec;
  Shape a, b, c;
  int64_t batch, m, n, k; /* the plain product */
  bool f32_out;           /* a weight gradient: f32 in bf16 programs */
} Case;

/* a Shape from its dims: S(B, T, H) */
#define S(...)                                                                                                         \
  {                                                                                                                    \
    .rank = sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), .d = { __VA_ARGS__ }                                   \
  }

#endif
