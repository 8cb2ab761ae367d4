/* optim.cu: the step's scalars (the loss sum, the gradients' sum of
 * squares, the clip factor) and the optimizers (AdamW, SGD with momentum)
 * on f32 master parameters, optionally writing the bf16 working copy in the
 * same pass.
 *
 * Everything stays on the device: the clip factor is read by the optimizer
 * kernels from device memory, so nothing waits for the host. The sum of
 * squares is deterministic: per-block partials in double, combined in
 * order by one block. */
#include "kern.cuh"

/* *acc += weight * x[0] (one thread: the loss of one micro-batch) */
__global__ void loss_kernel(double *acc, DIn x, double weight) { *acc += weight * ld(x, 0); }

extern "C" void cu_loss(cudaStream_t s, double *acc, DIn x, double weight) {
  loss_kernel<<<1, 1, 0, s>>>(acc, x, weight);
  CU_LAUNCHED();
}

/* ---------------------------------------------------------------- sum of squares */

#define SQ_BLOCKS 1024     /* most partials: enough blocks to fill any GPU */
#define SQ_SMALL (1 << 15) /* up to this many elements, one block does it all */

/* part[b] = the sum over block b's elements of x^2, in double; with one
   block (part NULL), out[0] += weight * the sum at once */
__global__ void __launch_bounds__(KTHREADS)
    sumsq_part_kernel(double *part, float *out, double weight, DIn x, int64_t n, bool vec) {
  __shared__ double red[32];
  double s = 0;
  int64_t nvec = vec ? n / KVEC : 0;
  for (int64_t v = k_tid(); v < nvec; v += k_stride()) {
    float t[KVEC], q = 0;
    ld8(x, v * KVEC, t);
    for (int k = 0; k < KVEC; k++) q += t[k] * t[k];
    s += q;
  }
  for (int64_t i = nvec * KVEC + k_tid(); i < n; i += k_stride()) {
    float t = ld(x, i);
    s += t * t;
  }
  s = block_sum_d(s, red);
  if (threadIdx.x == 0 && part) part[blockIdx.x] = s;
  if (threadIdx.x == 0 && !part) out[0] += (float)(weight * s);
}

/* out[0] += weight * the partials' sum, the weight in double and the product rounded once, as the CPU's
   run_sumsq */
__global__ void __launch_bounds__(KTHREADS)
    sumsq_total_kernel(float *out, const double *part, int nparts, double weight) {
  __shared__ double red[32];
  double s = 0;
  for (int b = threadIdx.x; b < nparts; b += blockDim.x) s += part[b];
  s = block_sum_d(s, red);
  if (threadIdx.x == 0) out[0] += (float)(weight * s);
}

extern "C" void cu_sumsq(cudaStream_t s, float *out, DIn x, int64_t n, double weight) {
  if (n <= 0) return;
  bool vec = k_aligned(x.p);
  int blocks = k_blocks(vec ? n / KVEC + n % KVEC : n, KTHREADS);
  blocks = blocks < SQ_BLOCKS ? blocks : SQ_BLOCKS;
  if (n <= SQ_SMALL) { /* one block, one launch: biases and gains */
    sumsq_part_kernel<<<1, KTHREADS, 0, s>>>(NULL, out, weight, x, n, vec);
    CU_LAUNCHED();
    return;
  }
  double *part = (double *)k_scratch(s, sizeof(double) * (size_t)blocks);
  sumsq_part_kernel<<<blocks, KTHREADS, 0, s>>>(part, out, weight, x, n, vec);
  CU_LAUNCHED();
  sumsq_total_kernel<<<1, KTHREADS, 0, s>>>(out, part, blocks, weight);
  CU_LAUNCHED();
  k_scratch_free(s, part);
}

__global__ void clip_kernel(float *out, const float *sumsq, float max_norm) { out[0] = km_clip(sumsq[0], max_norm); }

extern "C" void cu_clip(cudaStream_t s, float *out, const float *sumsq, float max_norm) {
  clip_kernel<<<1, 1, 0, s>>>(out, sumsq, max_norm);
  CU_LAUNCHED();
}

/* ---------------------------------------------------------------- optimizers */

/* An optimizer's arrays and constants; mom is AdamW's m or SGD's momentum */
typedef struct Opt {
  float *p, *mom, *v;
  const float *g, *clip;
  uint16_t *half;
  int64_t n;
  float lr, b1, b2, c1, c2, eps, wd; /* SGD: b1 is the momentum */
  bool vec;
} Opt;

/* one element: the new parameter (and its bf16 copy) */
__device__ __forceinline__ float opt_adamw(const Opt &o, float p, float g, float *m, float *v) {
  return km_adamw(p, g, m, v, o.lr, o.b1, o.b2, o.c1, o.c2, o.eps, o.wd);
}

/* AdamW (adam true) or SGD: 4 elements at a time (float4) where aligned */
template <bool ADAM> __global__ void __launch_bounds__(KTHREADS) opt_kernel(Opt o) {
  float clip = *o.clip;
  int64_t nvec = o.vec ? o.n / 4 : 0;
  for (int64_t q = k_tid(); q < nvec; q += k_stride()) {
    float4 p = ((float4 *)o.p)[q], g = ((const float4 *)o.g)[q], m = ((float4 *)o.mom)[q], v = {0, 0, 0, 0};
    float *pp = &p.x, *gg = &g.x, *mm = &m.x, *vv = &v.x;
    if (ADAM) v = ((float4 *)o.v)[q];
    for (int k = 0; k < 4; k++)
      pp[k] = ADAM ? opt_adamw(o, pp[k], gg[k] * clip, &mm[k], &vv[k])
                   : km_sgd(pp[k], gg[k] * clip, &mm[k], o.lr, o.b1, o.wd);
    ((float4 *)o.p)[q] = p, ((float4 *)o.mom)[q] = m;
    if (ADAM) ((float4 *)o.v)[q] = v;
    if (o.half) {
      uint2 h = make_uint2((uint32_t)km_bf16(p.x) | (uint32_t)km_bf16(p.y) << 16,
                           (uint32_t)km_bf16(p.z) | (uint32_t)km_bf16(p.w) << 16);
      ((uint2 *)o.half)[q] = h;
    }
  }
  for (int64_t i = nvec * 4 + k_tid(); i < o.n; i += k_stride()) {
    float m = o.mom[i], v = ADAM ? o.v[i] : 0.0f, p;
    p = ADAM ? opt_adamw(o, o.p[i], o.g[i] * clip, &m, &v) : km_sgd(o.p[i], o.g[i] * clip, &m, o.lr, o.b1, o.wd);
    o.p[i] = p, o.mom[i] = m;
    if (ADAM) o.v[i] = v;
    if (o.half) o.half[i] = km_bf16(p);
  }
}

template <bool ADAM> static void opt_launch(cudaStream_t s, Opt o) {
  if (o.n <= 0) return;
  o.vec = k_aligned(o.p) && k_aligned(o.g) && k_aligned(o.mom) && (!ADAM || k_aligned(o.v)) &&
          (!o.half || ((uintptr_t)o.half & 7) == 0);
  opt_kernel<ADAM><<<k_blocks(o.vec ? o.n / 4 + o.n % 4 : o.n, KTHREADS), KTHREADS, 0, s>>>(o);
  CU_LAUNCHED();
}

/* the bias corrections are computed here, on the host, with the same powf
   as the CPU's k_adamw */
extern "C" void cu_adamw(cudaStream_t s, float *p, const float *g, float *m, float *v, int64_t n, const float *clip,
                         float lr, float b1, float b2, float eps, float wd, int step, uint16_t *half) {
  Opt o;
  memset(&o, 0, sizeof o);
  o.p = p, o.g = g, o.mom = m, o.v = v, o.n = n, o.clip = clip, o.half = half;
  o.lr = lr, o.b1 = b1, o.b2 = b2, o.eps = eps, o.wd = wd;
  o.c1 = km_bias_corr(b1, step), o.c2 = km_bias_corr(b2, step);
  opt_launch<true>(s, o);
}

extern "C" void cu_sgd(cudaStream_t s, float *p, const float *g, float *mom, int64_t n, const float *clip, float lr,
                       float mu, float wd, uint16_t *half) {
  Opt o;
  memset(&o, 0, sizeof o);
  o.p = p, o.g = g, o.mom = mom, o.n = n, o.clip = clip, o.half = half;
  o.lr = lr, o.b1 = mu, o.wd = wd;
  opt_launch<false>(s, o);
}
