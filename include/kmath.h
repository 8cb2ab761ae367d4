/* kmath.h: the per-element formulas every backend computes, written once.
 *
 * static inline functions only, marked host-and-device when a CUDA compiler
 * reads this file, so the CPU tests exercise the very formulas a GPU runs:
 * bf16 rounding, the activations and their derivatives, the norms' and
 * cross-entropy's per-element steps, the learning rate, clipping and the
 * AdamW and SGD updates. The file is C11 and C++17 both (no compound
 * literals, no designated initialisers). */
#ifndef CARVE_KMATH_H
#define CARVE_KMATH_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define KM_FN static inline __host__ __device__
#else
#define KM_FN static inline
#endif

/* bf16: the top 16 bits of an f32 (8 exponent bits, 7 stored mantissa bits).
   Rounding is to nearest, ties to even; a NaN stays a (quiet) NaN. */
/* the bits of a float and back (a union: loops over it vectorise) */
typedef union {
  float f;
  uint32_t u;
} KmBits;

/* the bits of a float and back: a union on the host (GCC defines the type
   pun in C and C++), the intrinsics on a GPU */
KM_FN uint32_t km_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  KmBits b;
  b.f = f;
  return b.u;
#endif
}
KM_FN float km_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  KmBits b;
  b.u = u;
  return b.f;
#endif
}

KM_FN uint16_t km_bf16(float f) {
  uint32_t u = km_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

KM_FN float km_f32(uint16_t h) { return km_float((uint32_t)h << 16); }

/* e^x without branches or calls, so loops over it vectorise: x = n ln 2 + r with
   |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact), e^r by its degree-6
   Taylor polynomial (relative error below 2e-7 there), 2^n put into the
   exponent bits. Inputs are clamped to [-87.3, 88.3], where e^x and 2^n are
   normal floats: below, the result is 1e-38 where 0 is the true value;
   above, 2e38 stands for larger values (and for the infinity expf gives past
   88.7). */
KM_FN float km_exp(float x) {
  x = x < -87.33654f ? -87.33654f : x > 88.3f ? 88.3f : x;
  float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to the nearest integer: 1.5 x 2^23 */
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p =
      1.0f +
      r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f + r * (8.3333333e-3f + r * 1.3888889e-3f)))));
  int32_t e = (int32_t)n + 127;
  return p * km_float((uint32_t)(e < 1 ? 1 : e) << 23);
}

/* tanh from one exponential: 1 - 2 / (exp(2u) + 1), exact at the float limits */
KM_FN float km_tanh(float u) {
  u = u > 10 ? 10 : u < -10 ? -10 : u;
  float t = 1.0f - 2.0f / (km_exp(2.0f * u) + 1.0f);
  return u >= 10 ? 1 : u <= -10 ? -1 : t;
}

#define KM_GELU_C 0.7978845608028654f /* sqrt(2/pi) */

/* gelu, tanh approximation */
KM_FN float km_gelu(float v) { return 0.5f * v * (1.0f + km_tanh(KM_GELU_C * (v + 0.044715f * v * v * v))); }

KM_FN float km_gelu_bwd(float v, float dy) {
  float u = KM_GELU_C * (v + 0.044715f * v * v * v), t = km_tanh(u);
  float du = KM_GELU_C * (1.0f + 3.0f * 0.044715f * v * v);
  return dy * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
}

/* the other activations; bwd takes the forward input x (relu, silu) or
   output y (tanh, rsqrt) and the output's gradient dy. tanh itself is
   tanhf on either side (the libraries' own, within 2 ulp of each other). */
KM_FN float km_relu(float x) { return x > 0 ? x : 0; }
KM_FN float km_relu_bwd(float x, float dy) { return x > 0 ? dy : 0; }
KM_FN float km_silu(float x) { return x / (1.0f + km_exp(-x)); }
KM_FN float km_silu_bwd(float x, float dy) {
  float s = 1.0f / (1.0f + km_exp(-x));
  return dy * s * (1.0f + x * (1.0f - s));
}
KM_FN float km_tanh_bwd(float y, float dy) { return dy * (1.0f - y * y); }
KM_FN float km_rsqrt(float x) { return 1.0f / sqrtf(x); }
KM_FN float km_rsqrt_bwd(float y, float dy) { return dy * -0.5f * y * y * y; }

/* scale: a * mul + add (a copy or cast skips it: -0 * 1 + 0 would be +0) */
KM_FN float km_scale(float x, float mul, float add) { return x * mul + add; }

/* mse's gradient: (p - t) * scale, scale = 2 dy / n */
KM_FN float km_mse_scale(float dy, int64_t n) { return 2.0f * dy / (float)n; }
KM_FN float km_mse_bwd(float p, float t, float scale) { return (p - t) * scale; }

/* ---- norms: a row's 1/sqrt(variance + eps) from its summed squared
   deviations (in double), the output, and the input's gradient
   dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g,
   xh = (x - mean) * rstd (rms: mean 0 and no mean(dxh) term) */
KM_FN float km_rstd(double sqdev, int64_t n, float eps) { return (float)(1.0 / sqrt(sqdev / (double)n + eps)); }
KM_FN float km_layernorm(float x, float mu, float rs, float g, float b) { return (x - mu) * rs * g + b; }
KM_FN float km_rmsnorm(float x, float rs, float g) { return x * rs * g; }
KM_FN float km_norm_dx(float dxh, float xh, float rs, float md, float mdx) { return rs * (dxh - md - xh * mdx); }

/* ---- cross-entropy: a row's loss log(sum e^(x - max)) + max - x[label] */
KM_FN double km_xent_row(double sumexp, float max, float xl) { return log(sumexp) + max - xl; }

/* ---- the step's scalars */

/* the step's learning rate: lr, ramped linearly over the warm-up steps */
KM_FN float km_lr_at(float lr, int64_t warmup, int step) {
  if (warmup > 0 && step < warmup) lr *= (float)step / (float)warmup;
  return lr;
}

/* the gradient's factor for a global norm sqrt(sumsq) clipped to max_norm */
KM_FN float km_clip(float sumsq, float max_norm) {
  float norm = sqrtf(sumsq);
  return norm > max_norm ? max_norm / (norm + 1e-6f) : 1.0f;
}

/* AdamW's bias correction 1 - beta^step (computed on the host for a GPU) */
KM_FN float km_bias_corr(float beta, int step) { return 1.0f - powf(beta, (float)step); }

/* One AdamW step of one element: moments m, v updated in place, the new
   parameter returned. c1, c2 are the bias corrections 1 - beta^step. */
KM_FN float km_adamw(float p, float g, float *m, float *v, float lr, float b1, float b2, float c1, float c2, float eps,
                     float wd) {
  *m = b1 * *m + (1 - b1) * g;
  *v = b2 * *v + (1 - b2) * g * g;
  return p - lr * ((*m / c1) / (sqrtf(*v / c2) + eps) + wd * p);
}

/* SGD with momentum (the momentum buffer holds the running sum) */
KM_FN float km_sgd(float p, float g, float *mom, float lr, float mu, float wd) {
  *mom = mu * *mom + g;
  return p - lr * (*mom + wd * p);
}

#endif
