/* elementwise.c: element-wise ops over operands of either float dtype, for
 * instructions with bf16 operands (all-f32 ones run kernels.c as they are).
 *
 * Each element is read (a bf16 widened: a shift), computed in f32 with the
 * formulas of kmath.h, and stored once (rounded to nearest even into bf16):
 * the same values as widening whole operands, running the f32 kernel and
 * rounding, but in one pass over memory. The loops are written out per
 * combination of dtypes (the macros below), so each one vectorises. */
#include "cpu.h"

/* Elements are handled in blocks of BLOCK, the blocks shared over threads. */
#define BLOCK 4096
#define PRAGMA(x) _Pragma(#x)
#define BLOCKS(n) PRAGMA(omp parallel for schedule(static) if ((n) > 8 * BLOCK))

#define LD_F(p, i) (((const float *)(p))[i])
#define LD_B(p, i) km_f32(((const uint16_t *)(p))[i])
#define ST_F(p, i, v) (((float *)(p))[i] = (v))
#define ST_B(p, i, v) (((uint16_t *)(p))[i] = km_bf16(v))

/* for i in [lo, hi): x := in[i]; out[i] := expr */
#define LOOP1(LD, ST, in, out, lo, hi, expr)                                                                           \
  for (int64_t i = (lo); i < (hi); i++) {                                                                              \
    float x = LD(in, i);                                                                                               \
    ST(out, i, (expr));                                                                                                \
  }
#define UNARY(a, o, lo, hi, expr)                                                                                      \
  do {                                                                                                                 \
    if (a.bf16 && o.bf16)                                                                                              \
      LOOP1(LD_B, ST_B, a.p, o.p, lo, hi, expr)                                                                        \
    else if (a.bf16)                                                                                                   \
      LOOP1(LD_B, ST_F, a.p, o.p, lo, hi, expr)                                                                        \
    else if (o.bf16)                                                                                                   \
      LOOP1(LD_F, ST_B, a.p, o.p, lo, hi, expr)                                                                        \
    else                                                                                                               \
      LOOP1(LD_F, ST_F, a.p, o.p, lo, hi, expr)                                                                        \
  } while (0)

/* x := a[ia + i], y := b[ib + i]; out[io + i] := expr, for i in [0, len) */
#define LOOP2(LA, LB, ST, a, ia, b, ib, out, io, len, expr)                                                            \
  for (int64_t i = 0; i < (len); i++) {                                                                                \
    float x = LA(a, (ia) + i), y = LB(b, (ib) + i);                                                                    \
    ST(out, (io) + i, (expr));                                                                                         \
  }
#define BINARY(a, ia, b, ib, o, io, len, expr)                                                                         \
  do {                                                                                                                 \
    if (a.bf16 && b.bf16 && o.bf16)                                                                                    \
      LOOP2(LD_B, LD_B, ST_B, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (a.bf16 && b.bf16)                                                                                         \
      LOOP2(LD_B, LD_B, ST_F, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (a.bf16 && o.bf16)                                                                                         \
      LOOP2(LD_B, LD_F, ST_B, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (a.bf16)                                                                                                   \
      LOOP2(LD_B, LD_F, ST_F, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (b.bf16 && o.bf16)                                                                                         \
      LOOP2(LD_F, LD_B, ST_B, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (b.bf16)                                                                                                   \
      LOOP2(LD_F, LD_B, ST_F, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else if (o.bf16)                                                                                                   \
      LOOP2(LD_F, LD_F, ST_B, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
    else                                                                                                               \
      LOOP2(LD_F, LD_F, ST_F, a.p, ia, b.p, ib, o.p, io, len, expr)                                                    \
  } while (0)

CARVE_CLONES void e_unary(OpKind op, Out o, Arr a, int64_t n) {
  int64_t nb = (n + BLOCK - 1) / BLOCK;
  BLOCKS(n)
  for (int64_t k = 0; k < nb; k++) {
    int64_t lo = k * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
    switch (op) {
    case OP_GELU: UNARY(a, o, lo, hi, km_gelu(x)); break;
    case OP_RELU: UNARY(a, o, lo, hi, km_relu(x)); break;
    case OP_SILU: UNARY(a, o, lo, hi, km_silu(x)); break;
    case OP_TANH: UNARY(a, o, lo, hi, tanhf(x)); break;
    case OP_EXP: UNARY(a, o, lo, hi, km_exp(x)); break;
    case OP_RSQRT: UNARY(a, o, lo, hi, km_rsqrt(x)); break;
    default: CARVE_ASSERT(0, "not a unary op");
    }
  }
}

/* x is the forward input for gelu/relu/silu and the forward output for
   tanh/rsqrt; y the output's gradient */
CARVE_CLONES void e_unary_bwd(OpKind op, Out o, Arr a, Arr b, int64_t n) {
  int64_t nb = (n + BLOCK - 1) / BLOCK;
  BLOCKS(n)
  for (int64_t k = 0; k < nb; k++) {
    int64_t lo = k * BLOCK, len = (lo + BLOCK < n ? lo + BLOCK : n) - lo;
    switch (op) {
    case OP_GELU_BWD: BINARY(a, lo, b, lo, o, lo, len, km_gelu_bwd(x, y)); break;
    case OP_RELU_BWD: BINARY(a, lo, b, lo, o, lo, len, km_relu_bwd(x, y)); break;
    case OP_SILU_BWD: BINARY(a, lo, b, lo, o, lo, len, km_silu_bwd(x, y)); break;
    case OP_TANH_BWD: BINARY(a, lo, b, lo, o, lo, len, km_tanh_bwd(x, y)); break;
    case OP_RSQRT_BWD: BINARY(a, lo, b, lo, o, lo, len, km_rsqrt_bwd(x, y)); break;
    default: CARVE_ASSERT(0, "not a unary backward op");
    }
  }
}

/* out[i] := a[i % na] op b[i % nb], one operand as long as the output: the
   output in rows as long as the shorter one */
CARVE_CLONES void e_binary(OpKind op, Out o, int64_t n, Arr a, int64_t na, Arr b, int64_t nb) {
  int64_t w = na < nb ? na : nb, rows = n / w;
  if (na == nb) w = BLOCK < n ? BLOCK : n, rows = (n + w - 1) / w;
  BLOCKS(n)
  for (int64_t r = 0; r < rows; r++) {
    int64_t io = r * w, len = io + w < n ? w : n - io, ia = na == n ? io : 0, ib = nb == n ? io : 0;
    switch (op) {
    case OP_ADD: BINARY(a, ia, b, ib, o, io, len, x + y); break;
    case OP_SUB: BINARY(a, ia, b, ib, o, io, len, x - y); break;
    case OP_MUL: BINARY(a, ia, b, ib, o, io, len, x * y); break;
    default: BINARY(a, ia, b, ib, o, io, len, x / y); break;
    }
  }
}

/* out := a * mul + add (cast and copy: mul 1, add 0) */
CARVE_CLONES void e_scale(Out o, Arr a, int64_t n, float mul, float add) {
  int64_t nb = (n + BLOCK - 1) / BLOCK;
  BLOCKS(n)
  for (int64_t k = 0; k < nb; k++) {
    int64_t lo = k * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
    if (mul == 1 && add == 0)
      UNARY(a, o, lo, hi, x);
    else
      UNARY(a, o, lo, hi, km_scale(x, mul, add));
  }
}

/* out += a */
CARVE_CLONES void e_acc(Out o, Arr a, int64_t n) {
  int64_t nb = (n + BLOCK - 1) / BLOCK;
  Arr self = {o.p, o.bf16};
  BLOCKS(n)
  for (int64_t k = 0; k < nb; k++) {
    int64_t lo = k * BLOCK, len = (lo + BLOCK < n ? lo + BLOCK : n) - lo;
    BINARY(self, lo, a, lo, o, lo, len, x + y);
  }
}
