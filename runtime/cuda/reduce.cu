/* reduce.cu: reductions over one axis of [outer, n, inner] (sum, mean,
 * max), their gradients (expand, max_bwd), column sums (sum_to) and the
 * column machinery the norms' gain gradients use (rows.cu), and the
 * stream-ordered scratch memory of kern.cuh.
 *
 * A reduction splits its axis into chunks so that there are enough blocks
 * to fill the GPU whatever the shape: each block reduces one chunk, of one
 * contiguous row (inner == 1, a block of threads along the row) or of 32
 * columns (inner > 1, 8 warps each taking a run of the chunk's rows, every
 * warp reading 32 neighbouring columns). Chunks' results go to a scratch
 * of partials in double, combined in chunk order by a second kernel; with
 * one chunk the first kernel writes the result itself. Sums are in double
 * as the CPU's, and the order is fixed, so results repeat exactly. */
#include "kern.cuh"

/* ---------------------------------------------------------------- scratch */

/* Stream-ordered: every user allocates, enqueues its kernels and frees on
   the same stream, so the memory is reused only after its last reader.
   Users and their sizes: a norm's gain gradient (8 bytes a row), a chunked
   reduction's partials (at most about 1 MiB: chunks only while there are
   fewer than 2048 units of work), MoE routing (12 bytes per token and
   expert, 4 per choice), the embedding gradient's sort (16 bytes a token
   and CUB's temporary storage). None of these is in backend.c's scratch,
   whose size the launchers' contracts fix.
   Side effect: the device's default memory pool gets a release threshold of
   UINT64_MAX, so what is freed stays in the pool (no trips to the driver
   after the first step), for every user of that pool in the process. The
   pool holds at most the largest of the sizes above at a time, memory that
   cudaMalloc elsewhere cannot have until cudaMemPoolTrimTo. */
void *k_scratch(cudaStream_t s, size_t bytes) {
  static bool kept[64]; /* per device: the default pool keeps freed memory (one host thread per device) */
  int dev;
  CU_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && !kept[dev]) {
    cudaMemPool_t pool;
    uint64_t keep = UINT64_MAX;
    CU_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    CU_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    kept[dev] = true;
  }
  void *p;
  CU_CHECK(cudaMallocAsync(&p, bytes ? bytes : 1, s));
  return p;
}

void k_scratch_free(cudaStream_t s, void *p) { CU_CHECK(cudaFreeAsync(p, s)); }

/* ---------------------------------------------------------------- reductions */

/* A reduction of x over n in [outer, n, inner]. With dy and stats it is a
   norm's gain gradient instead: the sum over rows of dy * (x - mean) * rstd;
   with t (inner == 1 only) the sum or mean of (x - t)^2, in double (mse). */
typedef struct Red {
  DIn x, dy, t;
  const float2 *stats; /* per row of x: mean, rstd */
  int op;              /* OP_SUM, OP_MEAN or OP_MAX */
  int64_t outer, n, inner;
  int64_t nch, len; /* chunks of the axis, and their length (the last may be shorter) */
  double *part;     /* [outer][nch][inner] partials, or NULL: one chunk, the result written at once */
  DOut out;
} Red;

__device__ __forceinline__ float red_finish(const Red &r, double v) {
  return r.op == OP_MEAN ? (float)(v / (double)r.n) : (float)v;
}

/* one chunk's result */
__device__ __forceinline__ void red_put(const Red &r, int64_t o, int64_t c, int64_t i, double v) {
  if (r.part)
    r.part[(o * r.nch + c) * r.inner + i] = v;
  else
    st(r.out, o * r.inner + i, red_finish(r, v));
}

/* inner == 1: block b reduces chunk c of row o */
__global__ void __launch_bounds__(KTHREADS) red_rows(Red r) {
  __shared__ double redd[32];
  __shared__ float redf[32];
  for (int64_t b = blockIdx.x; b < r.outer * r.nch; b += gridDim.x) {
    int64_t o = b / r.nch, c = b % r.nch, lo = c * r.len, hi = lo + r.len < r.n ? lo + r.len : r.n;
    const int64_t base = o * r.n;
    if (r.op == OP_MAX) {
      float m = -INFINITY;
      for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, ld(r.x, base + j));
      m = block_max(m, redf);
      if (threadIdx.x == 0) red_put(r, o, c, 0, m);
    } else {
      double s = 0;
      if (r.t.p)
        for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
          double d = (double)ld(r.x, base + j) - ld(r.t, base + j); /* as the CPU's k_mse */
          s += d * d;
        }
      else
        for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) s += ld(r.x, base + j);
      s = block_sum_d(s, redd);
      if (threadIdx.x == 0) red_put(r, o, c, 0, s);
    }
  }
}

/* the value a column reduction adds for element e of row j */
__device__ __forceinline__ double red_value(const Red &r, int64_t e, int64_t j) {
  float x = ld(r.x, e);
  if (!r.stats) return x;
  float2 st = r.stats[j];
  return (double)ld(r.dy, e) * ((x - st.x) * st.y); /* as the CPU: xh in float, the product in double */
}

#define RCOLS 32 /* columns per block */
#define RRUNS 8  /* warps per block, each a run of the chunk's rows */

/* inner > 1: block b reduces 32 columns over chunk c; warp ty takes the
   ty-th run of the chunk's rows, and the runs are combined in order (so a
   max keeps the first maximum, as the CPU's) */
__global__ void __launch_bounds__(RCOLS *RRUNS) red_cols(Red r) {
  __shared__ double acc[RRUNS][RCOLS + 1];
  int tx = threadIdx.x % RCOLS, ty = threadIdx.x / RCOLS;
  int64_t ncb = (r.inner + RCOLS - 1) / RCOLS;
  for (int64_t b = blockIdx.x; b < r.outer * ncb * r.nch; b += gridDim.x) {
    int64_t c = b % r.nch, cb = b / r.nch % ncb, o = b / r.nch / ncb, i = cb * RCOLS + tx;
    int64_t lo = c * r.len, hi = lo + r.len < r.n ? lo + r.len : r.n, run = (hi - lo + RRUNS - 1) / RRUNS;
    int64_t j0 = lo + ty * run, j1 = j0 + run < hi ? j0 + run : hi;
    double s = r.op == OP_MAX ? -INFINITY : 0.0;
    if (i < r.inner)
#pragma unroll 4
      for (int64_t j = j0; j < j1; j++) {
        double v = red_value(r, (o * r.n + j) * r.inner + i, j);
        s = r.op == OP_MAX ? (v > s ? v : s) : s + v;
      }
    acc[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && i < r.inner) {
      for (int k = 1; k < RRUNS; k++) s = r.op == OP_MAX ? (acc[k][tx] > s ? acc[k][tx] : s) : s + acc[k][tx];
      red_put(r, o, c, i, s);
    }
    __syncthreads();
  }
}

/* the chunks' partials of each output, combined in order */
__global__ void __launch_bounds__(KTHREADS) red_combine(Red r) {
  for (int64_t e = k_tid(); e < r.outer * r.inner; e += k_stride()) {
    int64_t o = e / r.inner, i = e % r.inner;
    const double *p = r.part + o * r.nch * r.inner + i;
    double s = p[0];
    for (int64_t c = 1; c < r.nch; c++) {
      double v = p[c * r.inner];
      s = r.op == OP_MAX ? (v > s ? v : s) : s + v;
    }
    st(r.out, e, red_finish(r, s));
  }
}

/* Enqueues a reduction: chunks enough for about 2048 blocks, each at least
   64 rows of columns or 2048 elements of a row. */
static void red_run(cudaStream_t s, Red r) {
  if (r.outer * r.inner <= 0) return;
  bool cols = r.inner > 1 || r.stats;
  int64_t units = cols ? r.outer * ((r.inner + RCOLS - 1) / RCOLS) : r.outer;
  int64_t least = cols ? 64 : 2048, want = (2048 + units - 1) / units;
  int64_t nch = (r.n + least - 1) / least;
  nch = nch < want ? nch : want;
  nch = nch < 1 ? 1 : nch;
  r.len = (r.n + nch - 1) / nch;
  r.nch = r.len ? (r.n + r.len - 1) / r.len : 1;
  r.part = r.nch > 1 ? (double *)k_scratch(s, sizeof(double) * (size_t)(r.outer * r.nch * r.inner)) : NULL;
  if (cols)
    red_cols<<<k_blocks(units * r.nch, 1), RCOLS * RRUNS, 0, s>>>(r);
  else
    red_rows<<<k_blocks(units * r.nch, 1), KTHREADS, 0, s>>>(r);
  CU_LAUNCHED();
  if (!r.part) return;
  red_combine<<<k_blocks(r.outer * r.inner, KTHREADS), KTHREADS, 0, s>>>(r);
  CU_LAUNCHED();
  k_scratch_free(s, r.part);
}

static Red red_make(int op, DOut o, DIn x, int64_t outer, int64_t n, int64_t inner) {
  Red r;
  memset(&r, 0, sizeof r);
  r.op = op, r.out = o, r.x = x, r.outer = outer, r.n = n, r.inner = inner;
  return r;
}

extern "C" void cu_reduce(cudaStream_t s, OpKind op, DOut o, DIn x, int64_t outer, int64_t n, int64_t inner) {
  if (op != OP_SUM && op != OP_MEAN && op != OP_MAX) cuda_fail("cu_reduce", "not a reduction", __FILE__, __LINE__);
  if (n <= 0) { /* an empty axis: the CPU's sum is 0, its mean 0/0 */
    cu_fill(s, o, outer * inner, op == OP_MEAN ? NAN : 0.0f);
    return;
  }
  red_run(s, red_make(op, o, x, outer, n, inner));
}

extern "C" void cu_sum_to(cudaStream_t s, DOut o, DIn x, int64_t reps, int64_t n) {
  if (reps <= 0) {
    cu_fill(s, o, n, 0.0f);
    return;
  }
  Red r = red_make(OP_SUM, o, x, 1, reps, n);
  if (n == 1) r.inner = 1; /* one column: a row reduction */
  red_run(s, r);
}

/* the gain gradient of a norm: the sum over rows of dy * (x - mean) * rstd,
   with the rows' statistics already in `stats` (rows.cu) */
void k_norm_gain(cudaStream_t s, DOut dg, DIn x, DIn dy, const float2 *stats, int64_t rows, int64_t n) {
  if (rows <= 0) {
    cu_fill(s, dg, n, 0.0f);
    return;
  }
  Red r = red_make(OP_SUM, dg, x, 1, rows, n);
  r.dy = dy, r.stats = stats;
  red_run(s, r);
}

/* mse's loss: o[0] = the mean of (p - t)^2 over n elements, in double */
void k_mse(cudaStream_t s, DOut o, DIn p, DIn t, int64_t n) {
  Red r = red_make(OP_MEAN, o, p, 1, n, 1);
  r.t = t;
  red_run(s, r);
}

/* ---------------------------------------------------------------- gradients */

/* out[(o, j, i)] = dy[(o, i)] * scale: 8 at a time when rows of inner allow */
__global__ void __launch_bounds__(KTHREADS)
    expand_kernel(DOut out, DIn dy, int64_t total, int64_t n, int64_t inner, float scale, bool vec) {
  int64_t nvec = vec ? total / KVEC : 0;
  for (int64_t v = k_tid(); v < nvec; v += k_stride()) {
    int64_t e = v * KVEC, o = e / (n * inner), i = e % inner;
    float x[KVEC];
    ld8(dy, o * inner + i, x);
    for (int k = 0; k < KVEC; k++) x[k] *= scale;
    st8(out, e, x);
  }
  for (int64_t e = nvec * KVEC + k_tid(); e < total; e += k_stride())
    st(out, e, ld(dy, e / (n * inner) * inner + e % inner) * scale);
}

extern "C" void cu_expand(cudaStream_t s, DOut o, DIn dy, int64_t outer, int64_t n, int64_t inner, float scale) {
  int64_t total = outer * n * inner;
  if (total <= 0) return;
  bool vec = inner % KVEC == 0 && k_aligned(o.p) && k_aligned(dy.p);
  expand_kernel<<<k_blocks(vec ? total / KVEC : total, KTHREADS), KTHREADS, 0, s>>>(o, dy, total, n, inner, scale, vec);
  CU_LAUNCHED();
}

/* dx is zero but at the first maximum of each (o, i), which gets dy: the
   CPU's rule (k_max_bwd), where index 0 wins if x[0] is NaN and otherwise
   NaNs never win. A candidate is (value, index), index -1 for none yet. */
__device__ __forceinline__ void max_take(float v, int64_t j, float *m, int64_t *best) {
  if (*best < 0 ? !isnan(v) : v > *m) *m = v, *best = j;
}
/* whether candidate (v, j) beats (m, best): larger, or equal and earlier */
__device__ __forceinline__ bool max_beats(float v, int64_t j, float m, int64_t best) {
  return j >= 0 && (best < 0 || v > m || (v == m && j < best));
}

/* inner == 1: a block per row; each thread scans its strided part of the
   row in order, and the candidates meet in a tree that prefers the earlier
   of equal values, so the result is the sequential scan's */
__global__ void __launch_bounds__(KTHREADS) max_bwd_rows(DOut dx, DIn x, DIn dy, int64_t outer, int64_t n) {
  __shared__ float rm[32];
  __shared__ int64_t rb[32];
  int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  for (int64_t o = blockIdx.x; o < outer; o += gridDim.x) {
    const int64_t base = o * n;
    float m = 0;
    int64_t best = -1;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) max_take(ld(x, base + j), j, &m, &best);
    for (int d = 16; d > 0; d /= 2) {
      float om = __shfl_xor_sync(0xffffffffu, m, d);
      int64_t ob = __shfl_xor_sync(0xffffffffu, best, d);
      if (max_beats(om, ob, m, best)) m = om, best = ob;
    }
    __syncthreads(); /* the previous row's readers of rm, rb are done */
    if (lane == 0) rm[w] = m, rb[w] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int k = 1; k < nw; k++)
        if (max_beats(rm[k], rb[k], m, best)) m = rm[k], best = rb[k];
      if (best < 0 || isnan(ld(x, base))) best = 0;
      st(dx, base + best, ld(dy, o));
    }
  }
}

/* inner > 1: as red_cols, a block per 32 columns of one o, warp ty scanning
   the ty-th run of the axis; the runs are combined in order */
__global__ void __launch_bounds__(RCOLS *RRUNS)
    max_bwd_cols(DOut dx, DIn x, DIn dy, int64_t outer, int64_t n, int64_t inner) {
  __shared__ float am[RRUNS][RCOLS + 1];
  __shared__ int64_t ab[RRUNS][RCOLS + 1];
  int tx = threadIdx.x % RCOLS, ty = threadIdx.x / RCOLS;
  int64_t ncb = (inner + RCOLS - 1) / RCOLS, run = (n + RRUNS - 1) / RRUNS;
  for (int64_t b = blockIdx.x; b < outer * ncb; b += gridDim.x) {
    int64_t o = b / ncb, i = b % ncb * RCOLS + tx, base = o * n * inner + i;
    int64_t j0 = ty * run, j1 = j0 + run < n ? j0 + run : n, best = -1;
    float m = 0;
    if (i < inner)
      for (int64_t j = j0; j < j1; j++) max_take(ld(x, base + j * inner), j, &m, &best);
    am[ty][tx] = m, ab[ty][tx] = best;
    __syncthreads();
    if (ty == 0 && i < inner) {
      for (int k = 1; k < RRUNS; k++)
        if (ab[k][tx] >= 0 && (best < 0 || am[k][tx] > m)) m = am[k][tx], best = ab[k][tx];
      if (best < 0 || isnan(ld(x, base))) best = 0;
      st(dx, base + best * inner, ld(dy, o * inner + i));
    }
    __syncthreads();
  }
}

extern "C" void cu_max_bwd(cudaStream_t s, DOut dx, DIn x, DIn dy, int64_t outer, int64_t n, int64_t inner) {
  cu_fill(s, dx, outer * n * inner, 0.0f);
  if (outer * n * inner <= 0) return;
  if (inner == 1)
    max_bwd_rows<<<k_blocks(outer, 1), KTHREADS, 0, s>>>(dx, x, dy, outer, n);
  else
    max_bwd_cols<<<k_blocks(outer * ((inner + RCOLS - 1) / RCOLS), 1), RCOLS * RRUNS, 0, s>>>(dx, x, dy, outer, n,
                                                                                              inner);
  CU_LAUNCHED();
}
