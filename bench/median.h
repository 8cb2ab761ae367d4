/* median.h: the median of a benchmark's timed runs (sorts v in place). */
#ifndef CARVE_BENCH_MEDIAN_H
#define CARVE_BENCH_MEDIAN_H
#include <stdlib.h>

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static inline double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return v[n / 2];
}

#endif
