/* sources.c: where values come from. init fills a parameter (or optimizer
 * state) from the counter-based RNG at each element's global index, so any
 * split of a tensor holds what the whole tensor would; load draws a step's
 * inputs, from a token file or synthetic from the seed, by the row's index in
 * the global batch. */
#include "cpu.h"

void k_init(float *x, int64_t n, const Instr *in, const char *name, uint64_t seed) {
  uint64_t key = hash_str(name) ^ seed;
  Piece g = piece_of(in);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t e = 0; e < n; e++) {
    uint64_t i = (uint64_t)piece_index(&g, e);
    switch (in->i[0]) {
    case INIT_ZEROS: x[e] = 0; break;
    case INIT_ONES: x[e] = 1; break;
    case INIT_CONST: x[e] = (float)in->f[0]; break;
    case INIT_NORMAL: x[e] = (float)in->f[0] * rng_normal(key, i); break;
    default: x[e] = (float)(in->f[0] + (in->f[1] - in->f[0]) * rng_uniform(key, i)); break;
    }
  }
}

/* One row of token ids: a window of the token file at a position drawn
   from (step, row), or a synthetic random sequence; labels are it shifted. */
static void token_row(int32_t *out, int64_t per, int64_t grow, bool shift, const Instr *in, uint64_t seed,
                      const StepInfo *si) {
  uint64_t wkey = seed ^ (si->data_step * 0x9e3779b97f4a7c15ull);
  const TokenData *td = si->data;
  if (td) {
    int64_t span = td->n - per - 1;
    int64_t pos = span > 0 ? (int64_t)(rng_u64(wkey, (uint64_t)grow) % (uint64_t)span) : 0;
    for (int64_t j = 0; j < per; j++) out[j] = td->tok[(pos + j + shift) % td->n];
  } else {
    for (int64_t j = 0; j < per; j++)
      out[j] = (int32_t)(rng_u64(wkey, (uint64_t)(grow * (per + 1) + j + shift)) % (uint64_t)in->f[0]);
  }
}

void k_load(void *dst, const Buffer *b, const Instr *in, uint64_t seed, const StepInfo *si) {
  int64_t n = shape_numel(&b->shape);
  int64_t rows = b->shape.rank ? b->shape.d[0] : 1, per = n / (rows ? rows : 1);
  uint64_t key = hash_str(b->name) ^ seed ^ (si->data_step << 32);
  int kind = (int)in->i[0];
  for (int64_t r = 0; r < rows; r++) {
    int64_t grow = in->i[1] + r; /* the row in the global batch */
    if (kind == SRC_TOKENS || kind == SRC_NEXT_TOKENS) {
      token_row((int32_t *)dst + r * per, per, grow, kind == SRC_NEXT_TOKENS, in, seed, si);
      continue;
    }
    for (int64_t j = 0; j < per; j++) {
      uint64_t idx = (uint64_t)(grow * per + j);
      if (kind == SRC_CLASSES)
        ((int32_t *)dst)[r * per + j] = (int32_t)(rng_u64(key, idx) % (uint64_t)in->f[0]);
      else if (kind == SRC_NORMAL)
        ((float *)dst)[r * per + j] = (float)in->f[0] * rng_normal(key, idx);
      else
        ((float *)dst)[r * per + j] = (float)(in->f[0] + (in->f[1] - in->f[0]) * rng_uniform(key, idx));
    }
  }
}
