/* rng.c: counter-based random numbers. The value at (key, index) is a pure
 * function of the two, so a tensor split across ranks in any way holds
 * exactly the values the whole tensor would: every rank computes its
 * elements from their global indices. */
#include "carve.h"

#include <math.h>

static uint64_t mix(uint64_t z) { /* splitmix64's finaliser */
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rng_u64(uint64_t key, uint64_t index) { return mix(key ^ mix(index)); }

float rng_uniform(uint64_t key, uint64_t index) { return (float)(rng_u64(key, index) >> 40) * (1.0f / 16777216.0f); }

/* Box-Muller over two uniforms drawn at 2i and 2i+1. */
float rng_normal(uint64_t key, uint64_t index) {
  double u1 = ((double)(rng_u64(key, 2 * index) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = (double)(rng_u64(key, 2 * index + 1) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
