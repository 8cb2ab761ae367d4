/* kern.cuh: what the kernel files (*.cu) share: reading and writing f32 or
 * bf16 operands (one element, or 8 at a time in 16-byte accesses), warp and
 * block reductions, grid sizes, and stream-ordered scratch memory.
 *
 * Dtypes are a flag of the operand, tested per access: the branch is the
 * same for every thread of a launch, so it costs next to nothing, and one
 * kernel serves every combination of dtypes. */
#ifndef CARVE_KERN_CUH
#define CARVE_KERN_CUH

#include <cuda_runtime.h>
#include <string.h>

#include "cuda.h"
#include "kmath.h"

#define KTHREADS 256 /* threads per block of the grid-stride kernels */
#define KVEC 8       /* elements per vector access: 16 bytes of bf16, two float4s of f32 */

/* Blocks for `work` items handled by KTHREADS threads each block, capped:
   the kernels loop over the rest (grid-stride), so any n fits. */
static inline int k_blocks(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  return (int)(b < 1 ? 1 : b > 32768 ? 32768 : b);
}

/* global thread index and the grid's stride, in int64 */
__device__ __forceinline__ int64_t k_tid(void) { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t k_stride(void) { return (int64_t)gridDim.x * blockDim.x; }

/* ---------------------------------------------------------------- operands */

__device__ __forceinline__ float ld(DIn a, int64_t i) {
  return a.bf16 ? km_f32(((const uint16_t *)a.p)[i]) : ((const float *)a.p)[i];
}
__device__ __forceinline__ void st(DOut o, int64_t i, float v) {
  if (o.bf16)
    ((uint16_t *)o.p)[i] = km_bf16(v);
  else
    ((float *)o.p)[i] = v;
}

/* elements i .. i+7 (i a multiple of 8, the pointer 16-byte aligned) */
__device__ __forceinline__ void ld8(DIn a, int64_t i, float *v) {
  if (a.bf16) {
    uint4 u = *(const uint4 *)((const uint16_t *)a.p + i);
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; k++) v[2 * k] = km_float(w[k] << 16), v[2 * k + 1] = km_float(w[k] & 0xffff0000u);
  } else {
    const float4 *p = (const float4 *)((const float *)a.p + i);
    float4 lo = p[0], hi = p[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  }
}
__device__ __forceinline__ void st8(DOut o, int64_t i, const float *v) {
  if (o.bf16) {
    uint32_t w[4];
    for (int k = 0; k < 4; k++) w[k] = (uint32_t)km_bf16(v[2 * k]) | (uint32_t)km_bf16(v[2 * k + 1]) << 16;
    *(uint4 *)((uint16_t *)o.p + i) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    float4 *p = (float4 *)((float *)o.p + i);
    p[0] = make_float4(v[0], v[1], v[2], v[3]);
    p[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

/* whether 8-element accesses suit a pointer */
static inline bool k_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---------------------------------------------------------------- reductions */

/* a warp's sum (float or double) or max, the result in every lane */
template <typename T> __device__ __forceinline__ T warp_add(T v) {
  for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int d = 16; d > 0; d /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, d));
  return v;
}

/* Block-wide reduction by `warp` (a warp's reduction; `none` its identity),
   the result in every thread: warps reduce, their results meet in `red` (32
   slots of shared memory). A fixed tree, so the result does not vary from
   run to run. The caller's threads all call it. */
template <typename T, T (*warp)(T)> __device__ __forceinline__ T block_reduce(T v, T *red, T none) {
  int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
  v = warp(v);
  __syncthreads(); /* red may still be read from a previous reduction */
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : none;
  return warp(v);
}
__device__ __forceinline__ float block_sum(float v, float *red) {
  return block_reduce<float, warp_add<float>>(v, red, 0.0f);
}
__device__ __forceinline__ double block_sum_d(double v, double *red) {
  return block_reduce<double, warp_add<double>>(v, red, 0.0);
}
__device__ __forceinline__ float block_max(float v, float *red) {
  return block_reduce<float, warp_max>(v, red, -INFINITY);
}

/* ---------------------------------------------------------------- scratch */

/* Device memory for partial results, allocated and freed in stream order
   (cudaMallocAsync: no host synchronisation; the pool keeps the memory, so
   after the first step it is only bookkeeping). */
void *k_scratch(cudaStream_t s, size_t bytes);
void k_scratch_free(cudaStream_t s, void *p);

/* reduce.cu: a norm's gain gradient, the sum over rows of
   dy * (x - mean) * rstd, given each row's (mean, rstd) in stats */
void k_norm_gain(cudaStream_t s, DOut dg, DIn x, DIn dy, const float2 *stats, int64_t rows, int64_t n);
/* reduce.cu: o[0] = the mean of (p - t)^2 over n elements (n > 0), in double */
void k_mse(cudaStream_t s, DOut o, DIn p, DIn t, int64_t n);

#endif
