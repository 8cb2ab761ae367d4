/* rows.cu: the row-wise ops (softmax, layernorm, rmsnorm and their
 * backward passes), the indexed ones (embed and its gradient,
 * cross-entropy and its gradient), mse and MoE routing.
 *
 * A row is one block's (a grid-stride loop over rows, so any count fits);
 * the block's threads stride along it and meet in kern.cuh's block
 * reductions. Rows up to RCACHE elements are read into shared memory once
 * (8 at a time where alignment allows) and every pass reads them there;
 * longer rows are read from global memory in each pass (cross-entropy's
 * vocabulary-long rows: twice for the loss, three times for its gradient).
 * Per-element formulas are kmath.h's, as the CPU's kernels.c computes them;
 * sums are in f32 trees where the CPU sums in f32 lanes, in double where
 * it multiplies in double (softmax_bwd, mse). Two follow the CPU's order
 * exactly, for the same bits: MoE routing's probabilities (a top-k choice
 * hangs on them) and the embedding gradient (sorted by id, no atomics). */
#include <cub/device/device_radix_sort.cuh>

#include "kern.cuh"

/* Longest row cached in shared memory: 64 KiB, past the 48 KiB a launch
   gets without asking, so row_smem opts the kernel in (cudaFuncSetAttribute)
   when its cache needs more; two blocks of 1024 threads still fit an SM of
   sm_80 or sm_90. A 175B model's rows of 12288 are cached. */
#define RCACHE 16384
#define RTHREADS 1024 /* most threads of a row kernel (row_threads) */

/* threads for rows of n: about 4 elements each, 32 to 1024 */
static int row_threads(int64_t n) {
  int t = 32;
  while (t < RTHREADS && t * 4 < n) t *= 2;
  return t;
}
/* the dynamic shared memory of a row kernel for rows of n (the cache), the
   kernel allowed that much; its static part is at most 256 bytes */
template <typename K> static size_t row_smem(K kernel, int64_t n) {
  size_t bytes = n <= RCACHE ? sizeof(float) * (size_t)n : 0;
  if (bytes + 256 > 48 * 1024)
    CU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  return bytes;
}
static int row_blocks(int64_t rows) { return k_blocks(rows, 1); }

/* Elements [0, n) of the row at base into the cache c (when the row is
   cached), then a barrier; vec: 8 at a time (the row 16-byte aligned) */
__device__ void row_load(DIn x, int64_t base, int64_t n, float *c, bool vec) {
  __syncthreads(); /* the previous row's readers are done with c */
  if (!c) return;
  if (vec) {
    for (int64_t v = threadIdx.x; v * KVEC < n; v += blockDim.x) {
      float t[KVEC];
      ld8(x, base + v * KVEC, t);
      float4 *q = (float4 *)(c + v * KVEC);
      q[0] = make_float4(t[0], t[1], t[2], t[3]), q[1] = make_float4(t[4], t[5], t[6], t[7]);
    }
  } else {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) c[j] = ld(x, base + j);
  }
  __syncthreads();
}
/* element j of the row: cached or from global memory */
__device__ __forceinline__ float row_at(DIn x, int64_t base, const float *c, int64_t j) {
  return c ? c[j] : ld(x, base + j);
}

/* ---------------------------------------------------------------- softmax */

/* Causal: row r's query is r % n and keys after it get 0 (the CPU's rule).
   The exponentials overwrite the cache; the same thread reads each back. */
__global__ void __launch_bounds__(RTHREADS)
    softmax_kernel(DOut y, DIn x, int64_t rows, int64_t n, int causal, bool cached, bool vec) {
  extern __shared__ float4 smem4[];
  __shared__ float red[32];
  float *c = cached ? (float *)smem4 : NULL;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * n, valid = causal ? r % n + 1 : n;
    row_load(x, base, valid, c, vec);
    float m = -INFINITY, s = 0;
    for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, row_at(x, base, c, j));
    m = block_max(m, red);
    for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) {
      float e = km_exp(row_at(x, base, c, j) - m);
      if (c) c[j] = e;
      s += e;
    }
    float inv = (float)(1.0 / (double)block_sum(s, red));
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      st(y, base + j, j < valid ? (c ? c[j] : km_exp(ld(x, base + j) - m)) * inv : 0.0f);
  }
}

extern "C" void cu_softmax(cudaStream_t s, DOut y, DIn x, int64_t rows, int64_t n, int causal) {
  if (rows <= 0 || n <= 0) return;
  bool vec = n % KVEC == 0 && k_aligned(x.p);
  softmax_kernel<<<row_blocks(rows), row_threads(n), row_smem(softmax_kernel, n), s>>>(y, x, rows, n, causal,
                                                                                       n <= RCACHE, vec);
  CU_LAUNCHED();
}

/* dx = y * (dy - sum(y * dy)), the sum in double as the CPU's */
__global__ void __launch_bounds__(RTHREADS) softmax_bwd_kernel(DOut dx, DIn y, DIn dy, int64_t rows, int64_t n) {
  __shared__ double red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * n;
    double s = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += (double)ld(y, base + j) * ld(dy, base + j);
    float sf = (float)block_sum_d(s, red);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) st(dx, base + j, ld(y, base + j) * (ld(dy, base + j) - sf));
  }
}

extern "C" void cu_softmax_bwd(cudaStream_t s, DOut dx, DIn y, DIn dy, int64_t rows, int64_t n) {
  if (rows <= 0 || n <= 0) return;
  softmax_bwd_kernel<<<row_blocks(rows), row_threads(n), 0, s>>>(dx, y, dy, rows, n);
  CU_LAUNCHED();
}

/* ---------------------------------------------------------------- norms */

/* The row's mean (0 for rms) and 1/sqrt(variance + eps), two passes as the
   CPU's row_stats (the deviations from the mean, not the raw squares) */
__device__ void row_stats(DIn x, int64_t base, const float *c, int64_t n, float eps, bool rms, float *red, float *mu,
                          float *rs) {
  float s = 0, q = 0, m = 0;
  if (!rms) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += row_at(x, base, c, j);
    m = (float)((double)block_sum(s, red) / (double)n);
  }
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float d = row_at(x, base, c, j) - m;
    q += d * d;
  }
  *mu = m;
  *rs = km_rstd((double)block_sum(q, red), n, eps);
}

/* layernorm (b given) or rmsnorm (b.p NULL) */
__global__ void __launch_bounds__(RTHREADS)
    norm_kernel(DOut y, DIn x, DIn g, DIn b, int64_t rows, int64_t n, float eps, bool cached, bool vec) {
  extern __shared__ float4 smem4[];
  __shared__ float red[32];
  float *c = cached ? (float *)smem4 : NULL;
  bool rms = !b.p;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * n;
    float mu, rs;
    row_load(x, base, n, c, vec);
    row_stats(x, base, c, n, eps, rms, red, &mu, &rs);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      float v = row_at(x, base, c, j);
      st(y, base + j, rms ? km_rmsnorm(v, rs, ld(g, j)) : km_layernorm(v, mu, rs, ld(g, j), ld(b, j)));
    }
  }
}

static void norm_launch(cudaStream_t s, DOut y, DIn x, DIn g, DIn b, int64_t rows, int64_t n, float eps) {
  if (rows <= 0 || n <= 0) return;
  bool vec = n % KVEC == 0 && k_aligned(x.p);
  norm_kernel<<<row_blocks(rows), row_threads(n), row_smem(norm_kernel, n), s>>>(y, x, g, b, rows, n, eps, n <= RCACHE,
                                                                                 vec);
  CU_LAUNCHED();
}

extern "C" void cu_layernorm(cudaStream_t s, DOut y, DIn x, DIn g, DIn b, int64_t rows, int64_t n, float eps) {
  norm_launch(s, y, x, g, b, rows, n, eps);
}

extern "C" void cu_rmsnorm(cudaStream_t s, DOut y, DIn x, DIn g, int64_t rows, int64_t n, float eps) {
  DIn none = {NULL, 0};
  norm_launch(s, y, x, g, none, rows, n, eps);
}

/* dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g (rms:
   no mean(dxh)); x cached, dy read twice */
__global__ void __launch_bounds__(RTHREADS) norm_bwd_x_kernel(DOut dx, DIn x, DIn g, DIn dy, int64_t rows, int64_t n,
                                                              float eps, int rms, bool cached, bool vec) {
  extern __shared__ float4 smem4[];
  __shared__ float red[32];
  float *c = cached ? (float *)smem4 : NULL;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * n;
    float mu, rs, sd = 0, sdx = 0;
    row_load(x, base, n, c, vec);
    row_stats(x, base, c, n, eps, rms, red, &mu, &rs);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      float dxh = ld(dy, base + j) * ld(g, j), xh = (row_at(x, base, c, j) - mu) * rs;
      sd += dxh, sdx += dxh * xh;
    }
    float md = rms ? 0.0f : (float)((double)block_sum(sd, red) / (double)n);
    float mdx = (float)((double)block_sum(sdx, red) / (double)n);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      float dxh = ld(dy, base + j) * ld(g, j), xh = (row_at(x, base, c, j) - mu) * rs;
      st(dx, base + j, km_norm_dx(dxh, xh, rs, md, mdx));
    }
  }
}

extern "C" void cu_norm_bwd_x(cudaStream_t s, DOut dx, DIn x, DIn g, DIn dy, int64_t rows, int64_t n, float eps,
                              int rms) {
  if (rows <= 0 || n <= 0) return;
  bool vec = n % KVEC == 0 && k_aligned(x.p);
  norm_bwd_x_kernel<<<row_blocks(rows), row_threads(n), row_smem(norm_bwd_x_kernel, n), s>>>(dx, x, g, dy, rows, n, eps,
                                                                                             rms, n <= RCACHE, vec);
  CU_LAUNCHED();
}

/* each row's (mean, rstd) for the gain gradient */
__global__ void __launch_bounds__(RTHREADS)
    norm_stats_kernel(float2 *stats, DIn x, int64_t rows, int64_t n, float eps, int rms, bool cached, bool vec) {
  extern __shared__ float4 smem4[];
  __shared__ float red[32];
  float *c = cached ? (float *)smem4 : NULL;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float mu, rs;
    row_load(x, r * n, n, c, vec);
    row_stats(x, r * n, c, n, eps, rms, red, &mu, &rs);
    if (threadIdx.x == 0) stats[r] = make_float2(mu, rs);
  }
}

/* dg = the column sums of dy * xh: the rows' statistics, then reduce.cu's
   column reduction over them */
extern "C" void cu_norm_bwd_g(cudaStream_t s, DOut dg, DIn x, DIn dy, int64_t rows, int64_t n, float eps, int rms) {
  if (n <= 0) return;
  float2 *stats = NULL;
  if (rows > 0) {
    bool vec = n % KVEC == 0 && k_aligned(x.p);
    stats = (float2 *)k_scratch(s, sizeof(float2) * (size_t)rows);
    norm_stats_kernel<<<row_blocks(rows), row_threads(n), row_smem(norm_stats_kernel, n), s>>>(stats, x, rows, n, eps,
                                                                                               rms, n <= RCACHE, vec);
    CU_LAUNCHED();
  }
  k_norm_gain(s, dg, x, dy, stats, rows, n);
  if (stats) k_scratch_free(s, stats);
}

/* ---------------------------------------------------------------- embeddings */

/* store tag in *err unless an earlier one is there */
__device__ __forceinline__ void k_flag(int *err, int tag) { atomicCAS(err, 0, tag); }

/* o[t] = table[ids[t]], 8 at a time when rows allow; a bad id: zeros */
__global__ void __launch_bounds__(KTHREADS) embed_kernel(DOut o, DIn table, const int32_t *ids, int64_t nids,
                                                         int64_t vocab, int64_t h, int *err, int tag, bool vec) {
  int64_t total = nids * h, w = vec ? KVEC : 1;
  for (int64_t v = k_tid(); v * w < total; v += k_stride()) {
    int64_t e = v * w, t = e / h, j = e % h;
    int32_t id = ids[t];
    bool ok = id >= 0 && id < vocab;
    if (!ok && j == 0) k_flag(err, tag);
    if (vec) {
      float x[KVEC] = {0};
      if (ok) ld8(table, (int64_t)id * h + j, x);
      st8(o, e, x);
    } else {
      st(o, e, ok ? ld(table, (int64_t)id * h + j) : 0.0f);
    }
  }
}

extern "C" void cu_embed(cudaStream_t s, DOut o, DIn table, const int32_t *ids, int64_t nids, int64_t vocab, int64_t h,
                         int *err, int tag) {
  if (nids <= 0 || h <= 0) return;
  bool vec = h % KVEC == 0 && k_aligned(o.p) && k_aligned(table.p);
  embed_kernel<<<k_blocks(nids * h / (vec ? KVEC : 1), KTHREADS), KTHREADS, 0, s>>>(o, table, ids, nids, vocab, h, err,
                                                                                    tag, vec);
  CU_LAUNCHED();
}

/* The table's gradient without atomics, in the CPU's order: the tokens are
   sorted by id (a stable radix sort: an id's tokens stay in token order),
   then each id's row is the sum of its tokens' dy rows, added in f32 from
   0 in token order as k_embed_bwd adds them (so the same bits), and stored
   once in o's dtype. Rows no token names stay as the memset left them. */

/* key[t] = ids[t], or vocab for a bad id (flagged); val[t] = t */
__global__ void __launch_bounds__(KTHREADS)
    embed_keys_kernel(uint32_t *key, int32_t *val, const int32_t *ids, int64_t nids, int64_t vocab, int *err, int tag) {
  for (int64_t t = k_tid(); t < nids; t += k_stride()) {
    int32_t id = ids[t];
    bool ok = id >= 0 && id < vocab;
    if (!ok) k_flag(err, tag);
    key[t] = ok ? (uint32_t)id : (uint32_t)vocab, val[t] = (int32_t)t;
  }
}

/* block b: columns [cb * KTHREADS, +KTHREADS) of the run of equal keys that
   starts at sorted position p (other positions have nothing to do) */
__global__ void __launch_bounds__(KTHREADS)
    embed_bwd_kernel(DOut o, const uint32_t *key, const int32_t *tok, DIn dy, int64_t nids, int64_t vocab, int64_t h) {
  int64_t ncb = (h + KTHREADS - 1) / KTHREADS;
  for (int64_t b = blockIdx.x; b < nids * ncb; b += gridDim.x) {
    int64_t p = b / ncb, j = b % ncb * KTHREADS + threadIdx.x;
    uint32_t id = key[p];
    if ((p > 0 && key[p - 1] == id) || id >= (uint64_t)vocab || j >= h) continue; /* no barriers here */
    int64_t end = p + 1;
    while (end < nids && key[end] == id) end++;
    float a = 0;
    for (int64_t q = p; q < end; q++) a += ld(dy, (int64_t)tok[q] * h + j);
    st(o, (int64_t)id * h + j, a);
  }
}

extern "C" void cu_embed_bwd(cudaStream_t s, DOut o, const int32_t *ids, DIn dy, int64_t nids, int64_t vocab, int64_t h,
                             int *err, int tag) {
  if (vocab <= 0 || h <= 0) return;
  CU_CHECK(cudaMemsetAsync(o.p, 0, (o.bf16 ? 2 : 4) * (size_t)(vocab * h), s));
  if (nids <= 0) return;
  if (nids > INT32_MAX) cuda_fail("cu_embed_bwd", "more than 2^31 tokens", __FILE__, __LINE__);
  int bits = 1; /* keys are 0 .. vocab */
  while (bits < 32 && (uint64_t)vocab >> bits) bits++;
  size_t temp = 0, arr = ((size_t)nids * 4 + 255) / 256 * 256;
  CU_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp, (const uint32_t *)NULL, (uint32_t *)NULL, (const int32_t *)NULL,
                                           (int32_t *)NULL, (int)nids, 0, bits, s));
  char *mem = (char *)k_scratch(s, 4 * arr + temp);
  uint32_t *key = (uint32_t *)mem, *skey = (uint32_t *)(mem + arr);
  int32_t *val = (int32_t *)(mem + 2 * arr), *sval = (int32_t *)(mem + 3 * arr);
  embed_keys_kernel<<<k_blocks(nids, KTHREADS), KTHREADS, 0, s>>>(key, val, ids, nids, vocab, err, tag);
  CU_LAUNCHED();
  CU_CHECK(cub::DeviceRadixSort::SortPairs(mem + 4 * arr, temp, key, skey, val, sval, (int)nids, 0, bits, s));
  int64_t ncb = (h + KTHREADS - 1) / KTHREADS;
  embed_bwd_kernel<<<k_blocks(nids * ncb, 1), KTHREADS, 0, s>>>(o, skey, sval, dy, nids, vocab, h);
  CU_LAUNCHED();
  k_scratch_free(s, mem);
}

/* ---------------------------------------------------------------- cross-entropy */

/* the row's maximum and sum of e^(x - max), from global memory */
__device__ void xent_stats(DIn x, int64_t base, int64_t v, float *red, float *max, float *sum) {
  float m = -INFINITY, s = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, ld(x, base + j));
  m = block_max(m, red);
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) s += km_exp(ld(x, base + j) - m);
  *max = m;
  *sum = block_sum(s, red);
}

/* rowloss[r] = -log softmax(x_r)[label] (0 for a bad label) */
__global__ void __launch_bounds__(RTHREADS)
    xent_kernel(float *rowloss, DIn x, const int32_t *labels, int64_t rows, int64_t v, int *err, int tag) {
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int32_t l = labels[r];
    if (l < 0 || l >= v) { /* the same for every thread of the block */
      if (threadIdx.x == 0) k_flag(err, tag), rowloss[r] = 0;
      continue;
    }
    float m, sum;
    xent_stats(x, r * v, v, red, &m, &sum);
    if (threadIdx.x == 0) rowloss[r] = (float)km_xent_row(sum, m, ld(x, r * v + l));
  }
}

/* o[0] = the mean of the rows' losses, summed in double in a fixed order */
__global__ void __launch_bounds__(1024) xent_mean_kernel(DOut o, const float *rowloss, int64_t rows) {
  __shared__ double red[32];
  double s = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += rowloss[r];
  s = block_sum_d(s, red);
  if (threadIdx.x == 0) st(o, 0, (float)(s / (double)rows));
}

extern "C" void cu_xent(cudaStream_t s, DOut o, DIn logits, const int32_t *labels, int64_t rows, int64_t v,
                        float *rowloss, int *err, int tag) {
  if (rows <= 0 || v <= 0) return;
  xent_kernel<<<row_blocks(rows), row_threads(v), 0, s>>>(rowloss, logits, labels, rows, v, err, tag);
  CU_LAUNCHED();
  xent_mean_kernel<<<1, 1024, 0, s>>>(o, rowloss, rows);
  CU_LAUNCHED();
}

/* dx = (softmax(x) - onehot(label)) * dy[0] / rows, as the CPU's k_xent_bwd:
   e^(x - max) * (scale / sum), then scale off at the label */
__global__ void __launch_bounds__(RTHREADS)
    xent_bwd_kernel(DOut dx, DIn x, const int32_t *labels, DIn dy, int64_t rows, int64_t v, int *err, int tag) {
  __shared__ float red[32];
  float scale = ld(dy, 0) / (float)rows;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * v;
    int32_t l = labels[r];
    if (l < 0 || l >= v) {
      if (threadIdx.x == 0) k_flag(err, tag);
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) st(dx, base + j, 0.0f);
      continue;
    }
    float m, sum;
    xent_stats(x, base, v, red, &m, &sum);
    float k = (float)(scale / (double)sum);
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      float d = km_exp(ld(x, base + j) - m) * k;
      st(dx, base + j, j == l ? d - scale : d);
    }
  }
}

extern "C" void cu_xent_bwd(cudaStream_t s, DOut dx, DIn logits, const int32_t *labels, DIn dy, int64_t rows, int64_t v,
                            int *err, int tag) {
  if (rows <= 0 || v <= 0) return;
  xent_bwd_kernel<<<row_blocks(rows), row_threads(v), 0, s>>>(dx, logits, labels, dy, rows, v, err, tag);
  CU_LAUNCHED();
}

/* ---------------------------------------------------------------- mse */

/* o[0] = mean of (p - t)^2, in double: reduce.cu's chunked row reduction
   (many blocks, the chunks combined in order), not one block for any n */
extern "C" void cu_mse(cudaStream_t s, DOut o, DIn p, DIn t, int64_t n) {
  if (n <= 0) return;
  k_mse(s, o, p, t, n);
}

__global__ void __launch_bounds__(KTHREADS) mse_bwd_kernel(DOut dp, DIn p, DIn t, DIn dy, int64_t n) {
  float scale = km_mse_scale(ld(dy, 0), n);
  for (int64_t i = k_tid(); i < n; i += k_stride()) st(dp, i, km_mse_bwd(ld(p, i), ld(t, i), scale));
}

extern "C" void cu_mse_bwd(cudaStream_t s, DOut dp, DIn p, DIn t, DIn dy, int64_t n) {
  if (n <= 0) return;
  mse_bwd_kernel<<<k_blocks(n, KTHREADS), KTHREADS, 0, s>>>(dp, p, t, dy, n);
  CU_LAUNCHED();
}

/* ---------------------------------------------------------------- MoE routing */

/* The CPU's route (kernels.c): each token's probabilities (softmax of its
   logits) and its top-k experts, the first of equals; then slots: choice
   level by level, tokens in order, an expert's slot is its count so far,
   dropped (-1) at or past the capacity. */
typedef struct Route {
  float *prob;     /* [T, E] */
  int32_t *slot;   /* [T, E], -1: not routed or dropped */
  int32_t *choice; /* [T, topk] */
} Route;

/* The CPU's sum_lanes (kernels.c) exactly: 16 float lanes, the tail and
   then the lanes added in double. The routing's probabilities must be the
   CPU's to the bit: a top-k tie, or a near tie, decides a token's expert. */
__device__ double sum_lanes(const float *x, int64_t n) {
  float lane[16] = {0};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
#pragma unroll
    for (int k = 0; k < 16; k++) lane[k] += x[j + k];
  double s = 0;
  for (; j < n; j++) s += x[j];
#pragma unroll
  for (int k = 0; k < 16; k++) s += lane[k];
  return s;
}

/* a thread per token: its softmax as the CPU's k_softmax, then its choices */
__global__ void __launch_bounds__(KTHREADS) moe_choose_kernel(Route rt, DIn logits, int64_t T, int64_t E, int topk) {
  for (int64_t t = k_tid(); t < T; t += k_stride()) {
    float m = ld(logits, t * E), *p = rt.prob + t * E;
    for (int64_t e = 1; e < E; e++) m = fmaxf(m, ld(logits, t * E + e));
    for (int64_t e = 0; e < E; e++) p[e] = km_exp(ld(logits, t * E + e) - m);
    float inv = (float)(1.0 / sum_lanes(p, E));
    for (int64_t e = 0; e < E; e++) p[e] *= inv;
    for (int k = 0; k < topk; k++) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; e++) {
        bool taken = false;
        for (int j = 0; j < k; j++) taken |= rt.choice[t * topk + j] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;
      }
      rt.choice[t * topk + k] = (int32_t)best;
    }
  }
}

/* A block per expert: the choices in the CPU's order (level k, then token
   t: q = k * T + t) in tiles of the block's threads; a choice of this
   expert takes as its slot the count of those before it (ballots within a
   warp, the warps' counts in shared memory). */
__global__ void __launch_bounds__(1024) moe_slot_kernel(Route rt, int64_t T, int64_t E, int64_t cap, int topk) {
  __shared__ int wsum[32];
  int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  int64_t total = T * topk;
  for (int64_t e = blockIdx.x; e < E; e += gridDim.x) {
    int64_t count = 0;
    for (int64_t q0 = 0; q0 < total; q0 += blockDim.x) { /* the same trip count in every thread */
      int64_t q = q0 + threadIdx.x, k = q / T, t = q % T;
      bool hit = q < total && rt.choice[t * topk + k] == e;
      unsigned b = __ballot_sync(0xffffffffu, hit); /* blockDim is a multiple of 32: all lanes here */
      __syncthreads();                              /* the previous tile's readers of wsum are done */
      if (lane == 0) wsum[w] = __popc(b);
      __syncthreads();
      int64_t before = count + __popc(b & ((1u << lane) - 1u)), tile = 0;
      for (int i = 0; i < nw; i++) {
        if (i < w) before += wsum[i];
        tile += wsum[i];
      }
      if (hit && before < cap) rt.slot[t * E + e] = (int32_t)before;
      count += tile;
    }
  }
}

static Route moe_route(cudaStream_t s, DIn logits, int64_t T, int64_t E, int64_t cap, int topk) {
  Route rt;
  rt.prob = (float *)k_scratch(s, sizeof(float) * (size_t)(T * E));
  rt.slot = (int32_t *)k_scratch(s, sizeof(int32_t) * (size_t)(T * E));
  rt.choice = (int32_t *)k_scratch(s, sizeof(int32_t) * (size_t)(T * (topk > 0 ? topk : 1)));
  CU_CHECK(cudaMemsetAsync(rt.slot, 0xff, sizeof(int32_t) * (size_t)(T * E), s)); /* all -1 */
  moe_choose_kernel<<<k_blocks(T, KTHREADS), KTHREADS, 0, s>>>(rt, logits, T, E, topk);
  CU_LAUNCHED();
  int64_t q = T * topk;
  moe_slot_kernel<<<k_blocks(E, 1), (int)(q < 1024 ? (q + 31) / 32 * 32 : 1024), 0, s>>>(rt, T, E, cap, topk);
  CU_LAUNCHED();
  return rt;
}

static void moe_free(cudaStream_t s, Route rt) {
  k_scratch_free(s, rt.prob);
  k_scratch_free(s, rt.slot);
  k_scratch_free(s, rt.choice);
}

/* out[t, e, slot] = the probability (combine) or 1 (dispatch) */
__global__ void __launch_bounds__(KTHREADS) moe_gate_kernel(DOut o, Route rt, int64_t TE, int64_t cap, int combine) {
  for (int64_t q = k_tid(); q < TE; q += k_stride())
    if (rt.slot[q] >= 0) st(o, q * cap + rt.slot[q], combine ? rt.prob[q] : 1.0f);
}

extern "C" void cu_moe_gate(cudaStream_t s, DOut o, int combine, DIn logits, int64_t tokens, int64_t experts,
                            int64_t cap, int topk) {
  if (tokens <= 0 || experts <= 0 || cap <= 0) return;
  cu_fill(s, o, tokens * experts * cap, 0.0f);
  Route rt = moe_route(s, logits, tokens, experts, cap, topk);
  moe_gate_kernel<<<k_blocks(tokens * experts, KTHREADS), KTHREADS, 0, s>>>(o, rt, tokens * experts, cap, combine);
  CU_LAUNCHED();
  moe_free(s, rt);
}

/* dp[t, e] = dy[t, e, slot] where routed, else 0 */
__global__ void __launch_bounds__(KTHREADS) moe_dp_kernel(float *dp, Route rt, DIn dy, int64_t TE, int64_t cap) {
  for (int64_t q = k_tid(); q < TE; q += k_stride()) dp[q] = rt.slot[q] >= 0 ? ld(dy, q * cap + rt.slot[q]) : 0.0f;
}

/* d logits = the softmax backward of dp */
extern "C" void cu_moe_combine_bwd(cudaStream_t s, DOut dx, DIn logits, DIn dy, int64_t tokens, int64_t experts,
                                   int64_t cap, int topk) {
  if (tokens <= 0 || experts <= 0) return;
  Route rt = moe_route(s, logits, tokens, experts, cap, topk);
  float *dp = (float *)k_scratch(s, sizeof(float) * (size_t)(tokens * experts));
  moe_dp_kernel<<<k_blocks(tokens * experts, KTHREADS), KTHREADS, 0, s>>>(dp, rt, dy, tokens * experts, cap);
  CU_LAUNCHED();
  DIn prob = {rt.prob, 0}, dpi = {dp, 0};
  cu_softmax_bwd(s, dx, prob, dpi, tokens, experts);
  k_scratch_free(s, dp);
  moe_free(s, rt);
}
