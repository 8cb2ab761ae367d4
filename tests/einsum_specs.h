/* einsum_specs.h: what the einsum tests share: operand shapes from a spec
 * and per-label sizes, and random two-operand specs: 2 to 5 labels, each a batch, M, N or K label, every operand's
 * labels shuffled, all drawn from the counter-based RNG (seed t). */
#ifndef CARVE_TEST_EINSUM_SPECS_H
#define CARVE_TEST_EINSUM_SPECS_H
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "carve.h"

/* spec number t into spec (n bytes); false when it has an empty operand */
static inline bool random_spec(int t, char *spec, size_t n) {
  char a[8] = "", b[8] = "", c[8] = "";
  int na = 0, nb = 0, nc = 0;
  int nlab = 2 + (int)(rng_u64(9, (uint64_t)t) % 4);
  for (int l = 0; l < nlab; l++) {
    char ch = (char)('a' + l);
    int role = (int)(rng_u64(10, (uint64_t)(t * 16 + l)) % 4);
    if (role != 2) a[na++] = ch;
    if (role != 1) b[nb++] = ch;
    if (role != 3) c[nc++] = ch;
  }
  char *ops[3] = {a, b, c};
  int ns[3] = {na, nb, nc};
  for (int k = 0; k < 3; k++)
    for (int i = ns[k] - 1; i > 0; i--) {
      int j = (int)(rng_u64(11, (uint64_t)(t * 64 + k * 8 + i)) % (uint64_t)(i + 1));
      char tmp = ops[k][i];
      ops[k][i] = ops[k][j];
      ops[k][j] = tmp;
    }
  if (!na || !nb) return false;
  snprintf(spec, n, "%s,%s->%s", a, b, c);
  return true;
}

/* the shape of an operand with these labels, each label's size by letter */
static inline Shape shape_for(const char *labels, const int64_t *sizes) {
  Shape s = {.rank = (int)strlen(labels)};
  for (int i = 0; i < s.rank; i++) s.d[i] = sizes[labels[i] - 'a'];
  return s;
}

/* A spec's operand shapes on these sizes; returns the operand count (1 or 2). */
static inline int spec_shapes(const char *spec, const int64_t *sizes, Shape *sa, Shape *sb, Shape *sc) {
  char a[16] = "", b[16] = "", c[16] = "";
  const char *arrow = strstr(spec, "->"), *comma = strchr(spec, ',');
  memcpy(a, spec, (size_t)((comma ? comma : arrow) - spec));
  if (comma) memcpy(b, comma + 1, (size_t)(arrow - comma - 1));
  strcpy(c, arrow + 2);
  *sa = shape_for(a, sizes), *sb = shape_for(b, sizes), *sc = shape_for(c, sizes);
  return comma ? 2 : 1;
}

#endif
