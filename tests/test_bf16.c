/* test_bf16.c: every op's kernel on bf16 operands against the same kernel on
 * f32 operands, through the CPU backend, on random data.
 *
 * Each case is one instruction over fresh buffers. The f32 run gets the
 * bf16-rounded inputs, so the two runs differ only by what bf16 changes: the
 * output's rounding (8 significant bits: a relative error up to 2^-9 per
 * element) and, for products, bf16 x bf16 with f32 accumulation. Tolerances,
 * relative to the output's largest magnitude:
 *   bf16 output            1e-2 (several roundings can meet in one element)
 *   f32 output from bf16   1e-5 (the loss, parameter-gradient sums: only f32 sums differ)
 * Cases are big enough to run in several chunks (more than 2^18 elements)
 * where the op is row-wise, so chunking is checked too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/backend.h"
#include "harness.h"
#include "kmath.h"

typedef struct Case {
  const char *what;
  OpKind op;
  int nin;
  Shape in[3], out;
  bool ids[3];   /* input k holds ids in [0, range) */
  int64_t range; /* of the ids */
  int64_t i0;    /* attribute i[0] */
  double f0;     /* attribute f[0] */
  bool f32_out;  /* the output stays f32 in bf16 programs */
  bool positive; /* inputs positive (rsqrt) */
  const char *spec;
} Case;

#define SH(...)                                                                                                        \
  {                                                                                                                    \
    .rank = sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), .d = { __VA_ARGS__ }                                   \
  }

/* Runs c once; inputs from the seed (rounded to bf16 values either way),
   float operands as dt. Returns the output as f32 (malloc). */
static float *run(const Case *c, DType dt, int64_t *nout) {
  Buffer bufs[4];
  int64_t off = 0;
  for (int k = 0; k <= c->nin; k++) {
    const Shape *s = k < c->nin ? &c->in[k] : &c->out;
    bool ids = k < c->nin && c->ids[k];
    DType t = ids ? DT_I32 : (k == c->nin && c->f32_out) ? DT_F32 : dt;
    bufs[k] = (Buffer){.name = k == c->nin ? "out" : "in", .dtype = t, .shape = *s, .kind = BUF_ACT, .offset = off};
    bufs[k].bytes = shape_numel(s) * dtype_size(t);
    off += (bufs[k].bytes + 63) / 64 * 64;
  }
  Instr in = {.op = c->op, .out = c->nin, .nin = c->nin, .i = {c->i0}, .f = {c->f0}};
  for (int k = 0; k < c->nin; k++) in.in[k] = k;
  if (c->spec) snprintf(in.spec, sizeof in.spec, "%s", c->spec);
  Program p = {.precision = dt == DT_BF16 ? PREC_BF16 : PREC_FP32,
               .model = "t",
               .world = 1,
               .bufs = bufs,
               .nbufs = c->nin + 1,
               .arena_bytes = off,
               .step = &in,
               .nstep = 1};
  CHECK(program_verify(&p, stderr), "%s: program verifies", c->what);
  char why[256];
  Backend *be = backend_open(NULL, why, sizeof why);
  CHECK(be && be->load(be, &p, stderr), "%s: backend loads it", c->what);
  for (int k = 0; k < c->nin; k++) {
    int64_t n = shape_numel(&c->in[k]);
    void *x = xmalloc((size_t)bufs[k].bytes + 4);
    for (int64_t i = 0; i < n; i++) {
      if (c->ids[k]) {
        ((int32_t *)x)[i] = (int32_t)(rng_u64(7 + (uint64_t)k, (uint64_t)i) % (uint64_t)c->range);
        continue;
      }
      float v = rng_normal(3 + (uint64_t)k, (uint64_t)i);
      if (c->positive) v = fabsf(v) + 0.5f;
      if (bufs[k].dtype == DT_BF16)
        ((uint16_t *)x)[i] = km_bf16(v);
      else
        ((float *)x)[i] = km_f32(km_bf16(v));
    }
    be->upload(be, bufs[k].offset, x, bufs[k].bytes);
    free(x);
  }
  StepInfo si = {.step = 1, .data_step = 1};
  be->exec(be, &in, 0, false, &si);
  StepStatus st;
  be->synchronize(be, &st);
  CHECK(st.error == NULL, "%s: no kernel error (%s)", c->what, st.error ? st.error : "");
  *nout = shape_numel(&c->out);
  const Buffer *o = &bufs[c->nin];
  void *raw = xmalloc((size_t)o->bytes + 4);
  be->download(be, raw, o->offset, o->bytes);
  float *y = xmalloc(sizeof(float) * (size_t)*nout);
  for (int64_t i = 0; i < *nout; i++) y[i] = o->dtype == DT_BF16 ? km_f32(((uint16_t *)raw)[i]) : ((float *)raw)[i];
  free(raw);
  be->close(be);
  return y;
}

static void compare(const Case *c) {
  int64_t n, n2;
  float *want = run(c, DT_F32, &n), *got = run(c, DT_BF16, &n2);
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
  for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
  double rel = worst / (scale > 0 ? scale : 1), tol = c->f32_out ? 1e-5 : 1e-2;
  printf("%-44s max difference %.2e of |y| %.3g (tolerance %.0e)\n", c->what, rel, scale, tol);
  CHECK(rel <= tol && scale > 0, "%s: bf16 differs from f32 by %.3g of the largest output", c->what, rel);
  free(want), free(got);
}

int main(void) {
  /* rows x width: 600 x 512 = 307200 elements, two chunks */
  const Case cases[] = {
      {.what = "gelu", .op = OP_GELU, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "relu", .op = OP_RELU, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "silu", .op = OP_SILU, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "tanh", .op = OP_TANH, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "exp", .op = OP_EXP, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "rsqrt", .op = OP_RSQRT, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512), .positive = true},
      {.what = "gelu_bwd", .op = OP_GELU_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "relu_bwd", .op = OP_RELU_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "silu_bwd", .op = OP_SILU_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "tanh_bwd", .op = OP_TANH_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "rsqrt_bwd", .op = OP_RSQRT_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "add", .op = OP_ADD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "add, broadcast bias", .op = OP_ADD, .nin = 2, .in = {SH(600, 512), SH(512)}, .out = SH(600, 512)},
      {.what = "sub, broadcast first", .op = OP_SUB, .nin = 2, .in = {SH(512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "mul", .op = OP_MUL, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "div", .op = OP_DIV, .nin = 2, .in = {SH(600, 512), SH(512)}, .out = SH(600, 512), .positive = true},
      {.what = "scale", .op = OP_SCALE, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512), .f0 = 0.125},
      {.what = "copy", .op = OP_COPY, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "cast (to f32)", .op = OP_CAST, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512), .f32_out = true},
      {.what = "acc into f32", .op = OP_ACC, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512), .f32_out = true},
      {.what = "sum over an axis", .op = OP_SUM, .nin = 1, .in = {SH(24, 50, 32)}, .out = SH(24, 32), .i0 = 1},
      {.what = "mean over an axis", .op = OP_MEAN, .nin = 1, .in = {SH(24, 50, 32)}, .out = SH(24, 32), .i0 = 1},
      {.what = "max over an axis", .op = OP_MAX, .nin = 1, .in = {SH(24, 50, 32)}, .out = SH(24, 32), .i0 = 1},
      {.what = "expand", .op = OP_EXPAND, .nin = 1, .in = {SH(24, 32)}, .out = SH(24, 50, 32), .i0 = 1, .f0 = 0.5},
      {.what = "max_bwd",
       .op = OP_MAX_BWD,
       .nin = 2,
       .in = {SH(24, 50, 32), SH(24, 32)},
       .out = SH(24, 50, 32),
       .i0 = 1},
      {.what = "softmax", .op = OP_SOFTMAX, .nin = 1, .in = {SH(600, 512)}, .out = SH(600, 512)},
      {.what = "softmax, causal", .op = OP_SOFTMAX, .nin = 1, .in = {SH(6, 256, 256)}, .out = SH(6, 256, 256), .i0 = 1},
      {.what = "softmax_bwd", .op = OP_SOFTMAX_BWD, .nin = 2, .in = {SH(600, 512), SH(600, 512)}, .out = SH(600, 512)},
      {.what = "layernorm",
       .op = OP_LAYERNORM,
       .nin = 3,
       .in = {SH(600, 512), SH(512), SH(512)},
       .out = SH(600, 512),
       .f0 = 1e-5},
      {.what = "rmsnorm", .op = OP_RMSNORM, .nin = 2, .in = {SH(600, 512), SH(512)}, .out = SH(600, 512), .f0 = 1e-5},
      {.what = "layernorm_bwd_x",
       .op = OP_LN_BWD_X,
       .nin = 3,
       .in = {SH(600, 512), SH(512), SH(600, 512)},
       .out = SH(600, 512),
       .f0 = 1e-5},
      {.what = "rmsnorm_bwd_x",
       .op = OP_RMS_BWD_X,
       .nin = 3,
       .in = {SH(600, 512), SH(512), SH(600, 512)},
       .out = SH(600, 512),
       .f0 = 1e-5},
      {.what = "layernorm_bwd_g (f32 gradient)",
       .op = OP_LN_BWD_G,
       .nin = 2,
       .in = {SH(600, 512), SH(600, 512)},
       .out = SH(512),
       .f0 = 1e-5,
       .f32_out = true},
      {.what = "rmsnorm_bwd_g (f32 gradient)",
       .op = OP_RMS_BWD_G,
       .nin = 2,
       .in = {SH(600, 512), SH(600, 512)},
       .out = SH(512),
       .f0 = 1e-5,
       .f32_out = true},
      {.what = "sum_to (f32 gradient)",
       .op = OP_SUM_TO,
       .nin = 1,
       .in = {SH(600, 512)},
       .out = SH(512),
       .f32_out = true},
      {.what = "embed",
       .op = OP_EMBED,
       .nin = 2,
       .in = {SH(1000, 64), SH(8, 600)},
       .out = SH(8, 600, 64),
       .ids = {false, true},
       .range = 1000},
      {.what = "embed_bwd (f32 gradient)",
       .op = OP_EMBED_BWD,
       .nin = 2,
       .in = {SH(8, 600), SH(8, 600, 64)},
       .out = SH(1000, 64),
       .ids = {true, false},
       .range = 1000,
       .f32_out = true},
      {.what = "cross_entropy (f32 loss)",
       .op = OP_XENT,
       .nin = 2,
       .in = {SH(700, 1000), SH(700)},
       .out = SH(),
       .ids = {false, true},
       .range = 1000,
       .f32_out = true},
      {.what = "cross_entropy_bwd",
       .op = OP_XENT_BWD,
       .nin = 3,
       .in = {SH(700, 1000), SH(700), SH()},
       .out = SH(700, 1000),
       .ids = {false, true},
       .range = 1000},
      {.what = "mse (f32 loss)",
       .op = OP_MSE,
       .nin = 2,
       .in = {SH(300, 100), SH(300, 100)},
       .out = SH(),
       .f32_out = true},
      {.what = "mse_bwd", .op = OP_MSE_BWD, .nin = 3, .in = {SH(300, 100), SH(300, 100), SH()}, .out = SH(300, 100)},
      {.what = "moe_dispatch", .op = OP_MOE_DISPATCH, .nin = 1, .in = {SH(64, 8)}, .out = SH(64, 8, 12), .i0 = 2},
      {.what = "moe_combine", .op = OP_MOE_COMBINE, .nin = 1, .in = {SH(64, 8)}, .out = SH(64, 8, 12), .i0 = 2},
      {.what = "moe_combine_bwd",
       .op = OP_MOE_COMBINE_BWD,
       .nin = 2,
       .in = {SH(64, 8), SH(64, 8, 12)},
       .out = SH(64, 8),
       .i0 = 2},
      {.what = "einsum x @ W",
       .op = OP_EINSUM,
       .nin = 2,
       .in = {SH(4, 64, 96), SH(96, 128)},
       .out = SH(4, 64, 128),
       .spec = "bsh,hf->bsf"},
      {.what = "einsum weight gradient (f32)",
       .op = OP_EINSUM,
       .nin = 2,
       .in = {SH(4, 64, 96), SH(4, 64, 128)},
       .out = SH(96, 128),
       .spec = "bsh,bsf->hf",
       .f32_out = true},
      {.what = "einsum attention scores",
       .op = OP_EINSUM,
       .nin = 2,
       .in = {SH(2, 32, 4, 16), SH(2, 32, 4, 16)},
       .out = SH(2, 4, 32, 32),
       .spec = "bsnd,btnd->bnst"},
      {.what = "einsum transpose",
       .op = OP_EINSUM,
       .nin = 1,
       .in = {SH(2, 32, 4, 16)},
       .out = SH(4, 16, 2, 32),
       .spec = "bsnd->ndbs"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) compare(&cases[i]);
  return test_summary();
}
