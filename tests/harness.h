/* harness.h: a tiny test harness. CHECK(cond, ...) records a failure with a
 * message and goes on; test programs end with `return test_summary();`,
 * which prints "N passed, M failed" and returns nonzero on any failure. */
#ifndef CARVE_HARNESS_H
#define CARVE_HARNESS_H
#include <stdio.h>

static int test_pass, test_fail;

#define CHECK(cond, ...)                                                                                               \
  do {                                                                                                                 \
    if (cond) {                                                                                                        \
      test_pass++;                                                                                                     \
    } else {                                                                                                           \
      test_fail++;                                                                                                     \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                                         \
      fprintf(stderr, __VA_ARGS__);                                                                                    \
      fprintf(stderr, "\n");                                                                                           \
    }                                                                                                                  \
  } while (0)

static inline int test_summary(void) {
  printf("%d passed, %d failed\n", test_pass, test_fail);
  return test_fail != 0;
}
#endif
