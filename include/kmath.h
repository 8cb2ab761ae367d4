/* kmath.h: the per-element formulas every backend computes, written once.
 *
 * static inline functions only, marked host-and-device when a CUDA compiler
 * reads this file, so the CPU tests exercise the very formulas a GPU runs:
 * bf16 rounding, gelu and its derivative, the AdamW and SGD updates. */
#ifndef CARVE_KMATH_H
#define CARVE_KMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define KM_FN static inline __host__ __device__
#else
#define KM_FN static inline
#endif

/* bf16: the top 16 bits of an f32 (8 exponent bits, 7 stored mantissa bits).
   Rounding is to nearest, ties to even; a NaN stays a (quiet) NaN. */
KM_FN uint16_t km_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

KM_FN float km_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* tanh from one expf: 1 - 2 / (exp(2u) + 1), exact at the float limits */
KM_FN float km_tanh(float u) {
  if (u > 10) return 1;
  if (u < -10) return -1;
  return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
}

#define KM_GELU_C 0.7978845608028654f /* sqrt(2/pi) */

/* gelu, tanh approximation */
KM_FN float km_gelu(float v) { return 0.5f * v * (1.0f + km_tanh(KM_GELU_C * (v + 0.044715f * v * v * v))); }

KM_FN float km_gelu_bwd(float v, float dy) {
  float u = KM_GELU_C * (v + 0.044715f * v * v * v), t = km_tanh(u);
  float du = KM_GELU_C * (1.0f + 3.0f * 0.044715f * v * v);
  return dy * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
}

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
