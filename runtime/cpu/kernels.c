/* kernels.c: the CPU kernels behind every non-einsum op, fp32, contiguous
 * row-major arrays. They are the readable reference a GPU backend is
 * checked against. Reductions accumulate in double so that results do not
 * depend on the blocking of a faster implementation more than necessary.
 * bf16 operands reach them converted (backend.c); the per-element formulas
 * shared with other backends are in kmath.h. Element-wise ops, for either
 * dtype, are in elementwise.c. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Loops over more than this many elements are split across threads
 * (OpenMP, static schedule). Every kernel gives each output element to
 * exactly one thread and sums in a fixed order, so results do not depend on
 * the number of threads. */
#define PRAGMA(x) _Pragma(#x)

/* Row sums and maxima in 16 float lanes, combined in a fixed order (the sum
 * in double): the loops vectorise, and the result is the same on any
 * number of threads. */
#define LANES 16
CARVE_CLONES static double sum_lanes(const float *x, int64_t n) {
  float lane[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) lane[k] += x[j + k];
  double s = 0;
  for (; j < n; j++) s += x[j];
  for (int k = 0; k < LANES; k++) s += lane[k];
  return s;
}

CARVE_CLONES static float max_lanes(const float *x, int64_t n) {
  float lane[LANES];
  for (int k = 0; k < LANES; k++) lane[k] = x[0];
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) lane[k] = x[j + k] > lane[k] ? x[j + k] : lane[k];
  float m = x[0];
  for (; j < n; j++) m = x[j] > m ? x[j] : m;
  for (int k = 0; k < LANES; k++) m = lane[k] > m ? lane[k] : m;
  return m;
}
#define PARALLEL(n) PRAGMA(omp parallel for schedule(static) if ((n) > 32768))

/* Sum of squares in fixed chunks, each summed in float lanes and the
 * chunks added in order in double: fast and thread-count independent. */
CARVE_CLONES double k_sumsq(const float *x, int64_t n) {
  enum { CHUNK = 8192 };
  int64_t nc = (n + CHUNK - 1) / CHUNK;
  double *part = xmalloc(sizeof(double) * (size_t)(nc ? nc : 1));
  PARALLEL(n)
  for (int64_t c = 0; c < nc; c++) {
    float lane[8] = {0};
    int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n, i = lo;
    for (; i + 8 <= hi; i += 8)
      for (int k = 0; k < 8; k++) lane[k] += x[i + k] * x[i + k];
    double s = 0;
    for (; i < hi; i++) s += (double)x[i] * x[i];
    for (int k = 0; k < 8; k++) s += lane[k];
    part[c] = s;
  }
  double total = 0;
  for (int64_t c = 0; c < nc; c++) total += part[c];
  free(part);
  return total;
}

/* x viewed as [outer, n, inner], reduced over n. */
CARVE_CLONES void k_reduce(OpKind op, float *out, const float *x, int64_t outer, int64_t n, int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const float *p = x + o * n * inner + i;
      if (op == OP_MAX) {
        float m = p[0];
        for (int64_t j = 1; j < n; j++) m = p[j * inner] > m ? p[j * inner] : m;
        out[o * inner + i] = m;
      } else {
        double s = 0;
        for (int64_t j = 0; j < n; j++) s += p[j * inner];
        out[o * inner + i] = (float)(op == OP_MEAN ? s / (double)n : s);
      }
    }
}

CARVE_CLONES void k_expand(float *out, const float *dy, int64_t outer, int64_t n, int64_t inner, float scale) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < inner; i++) out[(o * n + j) * inner + i] = dy[o * inner + i] * scale;
}

/* The gradient goes to the first maximum, as the forward picked it. */
void k_max_bwd(float *dx, const float *x, const float *dy, int64_t outer, int64_t n, int64_t inner) {
  memset(dx, 0, sizeof(float) * (size_t)(outer * n * inner));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const float *p = x + o * n * inner + i;
      int64_t best = 0;
      for (int64_t j = 1; j < n; j++)
        if (p[j * inner] > p[best * inner]) best = j;
      dx[(o * n + best) * inner + i] = dy[o * inner + i];
    }
}

/* Softmax over the last dim. Causal: the row's query position is its index
 * modulo n (the last two dims are [query, key], both of size n); keys after
 * the query get probability 0. */
CARVE_CLONES void k_softmax(float *y, const float *x, int64_t rows, int64_t n, bool causal) {
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    int64_t valid = causal ? r % n + 1 : n;
    float m = max_lanes(xr, valid);
    for (int64_t j = 0; j < valid; j++) yr[j] = km_exp(xr[j] - m);
    float inv = (float)(1.0 / sum_lanes(yr, valid));
    for (int64_t j = 0; j < valid; j++) yr[j] *= inv;
    for (int64_t j = valid; j < n; j++) yr[j] = 0;
  }
}

CARVE_CLONES void k_softmax_bwd(float *dx, const float *y, const float *dy, int64_t rows, int64_t n) {
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    const float *yr = y + r * n, *dr = dy + r * n;
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += (double)yr[j] * dr[j];
    for (int64_t j = 0; j < n; j++) dx[r * n + j] = yr[j] * (dr[j] - (float)s);
  }
}

/* Per-row statistics: mean (0 for rms) and 1/sqrt(var + eps). */
/* Sums of squared deviations from m, in lanes like sum_lanes. */
CARVE_CLONES static double sqdev_lanes(const float *x, int64_t n, float m) {
  float lane[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) lane[k] += (x[j + k] - m) * (x[j + k] - m);
  double s = 0;
  for (; j < n; j++) s += ((double)x[j] - m) * ((double)x[j] - m);
  for (int k = 0; k < LANES; k++) s += lane[k];
  return s;
}

/* The mean (0 for rms) and 1/sqrt(variance + eps) of a row: sums in lanes,
   two passes (the deviations from the mean, not the raw squares). */
CARVE_CLONES static void row_stats(const float *x, int64_t n, float eps, bool rms, float *mean, float *rstd) {
  float mu = rms ? 0 : (float)(sum_lanes(x, n) / (double)n);
  *mean = mu;
  *rstd = km_rstd(sqdev_lanes(x, n, mu), n, eps);
}

CARVE_CLONES void k_layernorm(float *y, const float *x, const float *g, const float *b, int64_t rows, int64_t n,
                              float eps) {
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    float mu, rs;
    row_stats(x + r * n, n, eps, false, &mu, &rs);
    for (int64_t j = 0; j < n; j++) y[r * n + j] = km_layernorm(x[r * n + j], mu, rs, g[j], b[j]);
  }
}

CARVE_CLONES void k_rmsnorm(float *y, const float *x, const float *g, int64_t rows, int64_t n, float eps) {
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    float mu, rs;
    row_stats(x + r * n, n, eps, true, &mu, &rs);
    for (int64_t j = 0; j < n; j++) y[r * n + j] = km_rmsnorm(x[r * n + j], rs, g[j]);
  }
}

/* dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g;
 * for rms the mean(dxh) term is absent. */
CARVE_CLONES void k_layernorm_bwd_x(float *dx, const float *x, const float *g, const float *dy, int64_t rows, int64_t n,
                                    float eps, bool rms) {
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n, *dr = dy + r * n;
    float mu, rs;
    row_stats(xr, n, eps, rms, &mu, &rs);
    float ld[LANES] = {0}, ldx[LANES] = {0}; /* sums of dxh and dxh * xh, in lanes */
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
      for (int k = 0; k < LANES; k++) {
        float dxh = dr[j + k] * g[j + k], xh = (xr[j + k] - mu) * rs;
        ld[k] += dxh, ldx[k] += dxh * xh;
      }
    double sd = 0, sdx = 0;
    for (; j < n; j++) {
      double dxh = (double)dr[j] * g[j], xh = ((double)xr[j] - mu) * rs;
      sd += dxh, sdx += dxh * xh;
    }
    for (int k = 0; k < LANES; k++) sd += ld[k], sdx += ldx[k];
    float md = rms ? 0 : (float)(sd / (double)n), mdx = (float)(sdx / (double)n);
    for (j = 0; j < n; j++) {
      float dxh = dr[j] * g[j], xh = (xr[j] - mu) * rs;
      dx[r * n + j] = km_norm_dx(dxh, xh, rs, md, mdx);
    }
  }
}

/* Column sums over rows, parallel by column blocks: each thread owns its
 * columns and adds rows in order. */
#define COLBLOCK 64

/* The column sums below read their inputs in either float dtype (Arr), a
 * block of 64 columns per thread, each column summed over the rows in order
 * in double: no widened copy, and the same sums in both dtypes and on any
 * number of threads. */
static inline float at(Arr a, int64_t i) {
  return a.bf16 ? km_f32(((const uint16_t *)a.p)[i]) : ((const float *)a.p)[i];
}

CARVE_CLONES void k_layernorm_bwd_g(float *dg, Arr x, Arr dy, int64_t rows, int64_t n, float eps, bool rms) {
  float *mu = xmalloc(sizeof(float) * (size_t)rows), *rs = xmalloc(sizeof(float) * (size_t)rows);
  PARALLEL(rows * n)
  for (int64_t r = 0; r < rows; r++) {
    float row[n > 0 ? n : 1]; /* a row, widened */
    for (int64_t j = 0; j < n; j++) row[j] = at(x, r * n + j);
    row_stats(row, n, eps, rms, &mu[r], &rs[r]);
  }
  int64_t nb = (n + COLBLOCK - 1) / COLBLOCK;
  PARALLEL(rows * n)
  for (int64_t blk = 0; blk < nb; blk++) {
    double acc[COLBLOCK] = {0};
    int64_t lo = blk * COLBLOCK, w = lo + COLBLOCK < n ? COLBLOCK : n - lo;
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < w; j++)
        acc[j] += (double)at(dy, r * n + lo + j) * ((at(x, r * n + lo + j) - mu[r]) * rs[r]);
    for (int64_t j = 0; j < w; j++) dg[lo + j] = (float)acc[j];
  }
  free(mu);
  free(rs);
}

CARVE_CLONES void k_sum_to(float *out, Arr x, int64_t reps, int64_t n) {
  int64_t nb = (n + COLBLOCK - 1) / COLBLOCK;
  PARALLEL(reps * n)
  for (int64_t blk = 0; blk < nb; blk++) {
    double acc[COLBLOCK] = {0};
    int64_t lo = blk * COLBLOCK, w = lo + COLBLOCK < n ? COLBLOCK : n - lo;
    for (int64_t r = 0; r < reps; r++)
      for (int64_t j = 0; j < w; j++) acc[j] += at(x, r * n + lo + j);
    for (int64_t j = 0; j < w; j++) out[lo + j] = (float)acc[j];
  }
}

bool k_embed(float *out, const float *table, const int32_t *ids, int64_t nids, int64_t vocab, int64_t h) {
  for (int64_t t = 0; t < nids; t++) {
    if (ids[t] < 0 || ids[t] >= vocab) return false;
    memcpy(out + t * h, table + (int64_t)ids[t] * h, sizeof(float) * (size_t)h);
  }
  return true;
}

CARVE_CLONES bool k_embed_bwd(float *dtable, const int32_t *ids, const float *dy, int64_t nids, int64_t vocab,
                              int64_t h) {
  memset(dtable, 0, sizeof(float) * (size_t)(vocab * h));
  for (int64_t t = 0; t < nids; t++) {
    if (ids[t] < 0 || ids[t] >= vocab) return false;
    float *row = dtable + (int64_t)ids[t] * h;
    for (int64_t j = 0; j < h; j++) row[j] += dy[t * h + j];
  }
  return true;
}

/* sum of e^(x - max), max = the row's maximum */
CARVE_CLONES static double sumexp(const float *x, int64_t n, float *max) {
  float m = max_lanes(x, n);
  float lane[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) lane[k] += km_exp(x[j + k] - m);
  double s = 0;
  for (; j < n; j++) s += km_exp(x[j] - m);
  for (int k = 0; k < LANES; k++) s += lane[k];
  *max = m;
  return s;
}

/* -log softmax(logits)[label] of each row, in double. */
CARVE_CLONES bool k_xent_rows(double *row, const float *logits, const int32_t *labels, int64_t rows, int64_t v) {
  for (int64_t r = 0; r < rows; r++)
    if (labels[r] < 0 || labels[r] >= v) return false;
  PARALLEL(rows * v)
  for (int64_t r = 0; r < rows; r++) {
    float m;
    double s = sumexp(logits + r * v, v, &m);
    row[r] = km_xent_row(s, m, logits[r * v + labels[r]]);
  }
  return true;
}

/* d logits = (softmax - onehot) * scale (dy / all rows of the loss), one
 * exp per logit: the exponentials are written first, then scaled by 1 / their
 * sum. */
CARVE_CLONES bool k_xent_bwd(float *dx, const float *logits, const int32_t *labels, float scale, int64_t rows,
                             int64_t v) {
  for (int64_t r = 0; r < rows; r++)
    if (labels[r] < 0 || labels[r] >= v) return false;
  PARALLEL(rows * v)
  for (int64_t r = 0; r < rows; r++) {
    const float *x = logits + r * v;
    float *d = dx + r * v;
    float m = max_lanes(x, v);
    for (int64_t j = 0; j < v; j++) d[j] = km_exp(x[j] - m);
    float k = (float)(scale / sum_lanes(d, v));
    for (int64_t j = 0; j < v; j++) d[j] *= k;
    d[labels[r]] -= scale;
  }
  return true;
}

CARVE_CLONES void k_mse(float *loss, const float *p, const float *t, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += ((double)p[i] - t[i]) * ((double)p[i] - t[i]);
  *loss = (float)(s / (double)n);
}

CARVE_CLONES void k_mse_bwd(float *dp, const float *p, const float *t, const float *dy, int64_t n) {
  float scale = km_mse_scale(dy[0], n);
  for (int64_t i = 0; i < n; i++) dp[i] = km_mse_bwd(p[i], t[i], scale);
}

/* GShard-style top-k routing with a capacity per expert. Probabilities are
 * the softmax of each token's logits. Choice j of every token is placed
 * before choice j+1 of any token; within a choice level, tokens go in order.
 * A token's slot in expert e is the number of tokens placed there before it;
 * slots at or past the capacity are dropped. dispatch is 1 at a kept slot,
 * combine is the token's probability for that expert there. */
static void route(const float *logits, int64_t T, int64_t E, int64_t cap, int topk, float *prob, int32_t *slot) {
  /* slot[t*E+e] = slot index, or -1 if not routed/dropped */
  int64_t *count = xcalloc((size_t)E, sizeof(int64_t));
  int32_t *choice = xcalloc((size_t)(T * topk), sizeof(int32_t));
  for (int64_t t = 0; t < T; t++) {
    k_softmax(prob + t * E, logits + t * E, 1, E, false);
    for (int64_t e = 0; e < E; e++) slot[t * E + e] = -1;
    for (int k = 0; k < topk; k++) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; e++) {
        bool taken = false;
        for (int j = 0; j < k; j++) taken |= choice[t * topk + j] == e;
        if (!taken && (best < 0 || prob[t * E + e] > prob[t * E + best])) best = e;
      }
      choice[t * topk + k] = (int32_t)best;
    }
  }
  for (int k = 0; k < topk; k++)
    for (int64_t t = 0; t < T; t++) {
      int64_t e = choice[t * topk + k];
      if (count[e] < cap) slot[t * E + e] = (int32_t)count[e];
      count[e]++;
    }
  free(count);
  free(choice);
}

void k_moe_gate(float *out, bool combine, const float *logits, int64_t T, int64_t E, int64_t cap, int topk) {
  float *prob = xmalloc(sizeof(float) * (size_t)(T * E));
  int32_t *slot = xmalloc(sizeof(int32_t) * (size_t)(T * E));
  route(logits, T, E, cap, topk, prob, slot);
  memset(out, 0, sizeof(float) * (size_t)(T * E * cap));
  for (int64_t t = 0; t < T; t++)
    for (int64_t e = 0; e < E; e++)
      if (slot[t * E + e] >= 0) out[(t * E + e) * cap + slot[t * E + e]] = combine ? prob[t * E + e] : 1.0f;
  free(prob);
  free(slot);
}

/* d logits = softmax backward of dp, dp[t,e] = dcombine at the token's slot. */
void k_moe_combine_bwd(float *dx, const float *logits, const float *dy, int64_t T, int64_t E, int64_t cap, int topk) {
  float *prob = xmalloc(sizeof(float) * (size_t)(T * E));
  int32_t *slot = xmalloc(sizeof(int32_t) * (size_t)(T * E));
  float *dp = xcalloc((size_t)(T * E), sizeof(float));
  route(logits, T, E, cap, topk, prob, slot);
  for (int64_t t = 0; t < T; t++)
    for (int64_t e = 0; e < E; e++)
      if (slot[t * E + e] >= 0) dp[t * E + e] = dy[(t * E + e) * cap + slot[t * E + e]];
  k_softmax_bwd(dx, prob, dp, T, E);
  free(prob);
  free(slot);
  free(dp);
}

/* ---------------------------------------------------------------- optimizers */

CARVE_CLONES void k_adamw(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, int64_t n,
                          float clip, float lr, float b1, float b2, float eps, float wd, int step) {
  float c1 = km_bias_corr(b1, step), c2 = km_bias_corr(b2, step);
  PARALLEL(n)
  for (int64_t i = 0; i < n; i++) {
    float mi = m[i], vi = v[i]; /* in registers, so the loop vectorises */
    p[i] = km_adamw(p[i], g[i] * clip, &mi, &vi, lr, b1, b2, c1, c2, eps, wd);
    m[i] = mi, v[i] = vi;
  }
}

CARVE_CLONES void k_sgd(float *restrict p, const float *restrict g, float *restrict mom, int64_t n, float clip,
                        float lr, float mu, float wd) {
  PARALLEL(n)
  for (int64_t i = 0; i < n; i++) {
    float mi = mom[i];
    p[i] = km_sgd(p[i], g[i] * clip, &mi, lr, mu, wd);
    mom[i] = mi;
  }
}
