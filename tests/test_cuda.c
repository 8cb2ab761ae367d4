/* test_cuda.c: the CUDA backend against the CPU backend, op by op.
 *
 *   test_cuda              the test (ctest cuda_ops): exits 77 with
 *                          "SKIPPED: <why>" when backend "cuda" cannot be
 *                          opened (no driver, no device, a carve built
 *                          without CUDA, a backend not finished)
 *   test_cuda --probe      only that question: 0 and the backend's
 *                          description, or 77 and why not (scripts ask it
 *                          before spending time on GPU runs)
 *   test_cuda --against cpu  the same checks with the CPU backend in the
 *                          GPU's place (ctest cuda_ops_harness): proves the
 *                          comparison, the coverage and the tolerances on a
 *                          machine without a GPU
 *   test_cuda --against cpu --perturb OP  the same, with one element of
 *                          every OP output made wrong: must fail (ctest
 *                          cuda_ops_harness_fails: the comparison can fail)
 *
 * Tiny models (below, in the graph language) are compiled in fp32 and in
 * bf16 mixed precision, with AdamW and with SGD, with one microbatch and
 * two. Together their programs hold every instruction kind of ops.def that
 * is not communication; the test fails if one is missing.
 *
 * Lockstep: each program is loaded into both backends; every init and step
 * instruction runs on both, both synchronize, both arenas are read back and
 * every buffer that differs is judged (llm.c's rule, per element):
 *   |gpu - cpu| <= atol + rtol * |cpu|
 *   f32 buffer   rtol 1e-5, atol 1e-5 x the buffer's largest |cpu| + 1e-8
 *   bf16 buffer  rtol 1e-2, atol 1e-2 x the buffer's largest |cpu|
 *   i32 buffer   equal
 * (test_bf16.c's tolerances for bf16 outputs and for f32 outputs.) Then the
 * CPU's arena is copied into the GPU's, so the next instruction starts from
 * identical inputs: every op is judged on its own, errors do not compound,
 * and AdamW never meets a gradient whose sign rounding decided. The
 * difference is charged to the instruction's op; the table printed at the
 * end gives each op's instructions and its largest |gpu - cpu| relative to
 * the buffer's largest magnitude. The loss each synchronize reports, and
 * any error, must agree too.
 *
 * Whole step: the same programs run one step each through the Runtime API
 * (runtime_new with the backend, runtime_step, runtime_read of every float
 * buffer); the losses within 1e-5 (fp32) or 1e-2 (bf16) relative and every
 * float buffer within 1e-4 (fp32) or 2e-2 (bf16) in relative 2-norm, as
 * param_compare judges whole runs.
 *
 * Bad data: an embedding id out of range is reported by the GPU's
 * synchronize naming the instruction, and the step fails, as on the CPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/backend.h"
#include "bad_ids.h"
#include "harness.h"
#include "kmath.h"

static const char *dut_name = "cuda"; /* the backend under test */

/* --perturb OP: the backend under test gets one element of every OP
   instruction's output wrong by 5% of the output's largest magnitude (the
   test must then fail: ctest cuda_ops_harness_fails) */
static int perturb_op = -1;
static const Program *perturb_prog;
static void (*perturb_exec)(Backend *b, const Instr *in, int index, bool init, const StepInfo *si);
static bool (*perturb_load)(Backend *b, const Program *p, FILE *err);

static bool perturbed_load(Backend *b, const Program *p, FILE *err) {
  perturb_prog = p;
  return perturb_load(b, p, err);
}

static void perturbed_exec(Backend *b, const Instr *in, int index, bool init, const StepInfo *si) {
  perturb_exec(b, in, index, init, si);
  if ((int)in->op != perturb_op || in->out < 0) return;
  const Buffer *o = &perturb_prog->bufs[in->out];
  int64_t n = shape_numel(&o->shape);
  if (o->dtype == DT_I32 || n == 0) return;
  unsigned char *raw = xmalloc((size_t)o->bytes);
  b->download(b, raw, o->offset, o->bytes);
  double big = 0;
  for (int64_t i = 0; i < n; i++)
    big = fmax(big, fabs(o->dtype == DT_BF16 ? km_f32(((uint16_t *)raw)[i]) : ((float *)raw)[i]));
  float add = (float)(0.05 * (big > 0 ? big : 1));
  if (o->dtype == DT_BF16)
    ((uint16_t *)raw)[n / 2] = km_bf16(km_f32(((uint16_t *)raw)[n / 2]) + add);
  else
    ((float *)raw)[n / 2] += add;
  b->upload(b, o->offset, raw, o->bytes);
  free(raw);
}

static Backend *open_dut(void) {
  char why[256] = "";
  Backend *b = backend_open(dut_name, why, sizeof why);
  if (!b) fprintf(stderr, "test_cuda: backend %s: %s\n", dut_name, why);
  if (b && perturb_op >= 0) {
    perturb_exec = b->exec, perturb_load = b->load;
    b->exec = perturbed_exec, b->load = perturbed_load;
  }
  return b;
}

/* ------------------------------------------------------------------ models */

typedef struct Model {
  const char *name, *text;
  int microbatches; /* the text's batch is one microbatch's */
} Model;

/* GPT block: embed, layernorm, causal softmax, gelu, cross-entropy, tied head */
static const char *gpt_text =
    "model gpt_t\n"
    "dim batch = 2, seq = 16, vocab = 64, hidden = 32, heads = 2\n"
    "dim head = hidden / heads, ffn = 4 * hidden\n"
    "input tokens[batch, seq] : i32 ~ tokens(vocab)\n"
    "input labels[batch, seq] : i32 ~ next_tokens(vocab)\n"
    "param wte[vocab, hidden] ~ normal(0.1)\n"
    "param wpe[seq, hidden] ~ normal(0.1)\n"
    "param ln1_g[hidden] ~ ones\nparam ln1_b[hidden] ~ zeros\n"
    "param w_q[hidden, heads, head] ~ normal(0.1)\nparam w_k[hidden, heads, head] ~ normal(0.1)\n"
    "param w_v[hidden, heads, head] ~ normal(0.1)\nparam b_q[heads, head] ~ zeros\n"
    "param b_v[heads, head] ~ zeros\nparam w_o[heads, head, hidden] ~ normal(0.1)\nparam b_o[hidden] ~ zeros\n"
    "param ln2_g[hidden] ~ ones\nparam ln2_b[hidden] ~ zeros\n"
    "param w_fc[hidden, ffn] ~ normal(0.1)\nparam b_fc[ffn] ~ zeros\nparam w_proj[ffn, hidden] ~ normal(0.1)\n"
    "x = embed(wte, tokens) + wpe\n"
    "h = layernorm(x, ln1_g, ln1_b)\n"
    "q = einsum(\"b s h, h n d -> b s n d\", h, w_q) + b_q\n"
    "k = einsum(\"b s h, h n d -> b s n d\", h, w_k)\n"
    "v = einsum(\"b s h, h n d -> b s n d\", h, w_v) + b_v\n"
    "att = softmax(einsum(\"b s n d, b t n d -> b n s t\", q, k) / sqrt(head), causal)\n"
    "o = einsum(\"b n s t, b t n d -> b s n d\", att, v)\n"
    "x = x + einsum(\"b s n d, n d h -> b s h\", o, w_o) + b_o\n"
    "h = layernorm(x, ln2_g, ln2_b)\n"
    "f = gelu(einsum(\"b s h, h f -> b s f\", h, w_fc) + b_fc)\n"
    "x = x + einsum(\"b s f, f h -> b s h\", f, w_proj)\n"
    "logits = einsum(\"b s h, v h -> b s v\", x, wte)\n"
    "loss = cross_entropy(logits, labels)\n";

/* Llama block: rmsnorm, silu gate, attention without a mask, an untied head */
static const char *llama_text =
    "model llama_t\n"
    "dim batch = 2, seq = 8, vocab = 48, hidden = 32, heads = 4, ffn = 40\n"
    "dim head = hidden / heads\n"
    "input tokens[batch, seq] : i32 ~ tokens(vocab)\n"
    "input labels[batch, seq] : i32 ~ next_tokens(vocab)\n"
    "param emb[vocab, hidden] ~ normal(0.1)\n"
    "param n1[hidden] ~ ones\nparam n2[hidden] ~ ones\nparam nf[hidden] ~ ones\n"
    "param w_q[hidden, heads, head] ~ normal(0.1)\nparam w_k[hidden, heads, head] ~ normal(0.1)\n"
    "param w_v[hidden, heads, head] ~ normal(0.1)\nparam w_o[heads, head, hidden] ~ normal(0.1)\n"
    "param w_gate[hidden, ffn] ~ normal(0.1)\nparam w_up[hidden, ffn] ~ normal(0.1)\n"
    "param w_down[ffn, hidden] ~ normal(0.1)\nparam w_head[hidden, vocab] ~ normal(0.1)\n"
    "x = embed(emb, tokens)\n"
    "h = rmsnorm(x, n1, eps=1e-6)\n"
    "q = einsum(\"b s h, h n d -> b s n d\", h, w_q)\n"
    "k = einsum(\"b s h, h n d -> b s n d\", h, w_k)\n"
    "v = einsum(\"b s h, h n d -> b s n d\", h, w_v)\n"
    "att = softmax(einsum(\"b s n d, b t n d -> b n s t\", q, k) / sqrt(head))\n"
    "o = einsum(\"b n s t, b t n d -> b s n d\", att, v)\n"
    "x = x + einsum(\"b s n d, n d h -> b s h\", o, w_o)\n"
    "h = rmsnorm(x, n2, eps=1e-6)\n"
    "g = silu(einsum(\"b s h, h f -> b s f\", h, w_gate)) * einsum(\"b s h, h f -> b s f\", h, w_up)\n"
    "x = x + einsum(\"b s f, f h -> b s h\", g, w_down)\n"
    "x = rmsnorm(x, nf, eps=1e-6)\n"
    "logits = einsum(\"b s h, h v -> b s v\", x, w_head)\n"
    "loss = cross_entropy(logits, labels)\n";

/* Mixture of experts: moe_gate's dispatch and combine, expert products */
static const char *moe_text =
    "model moe_t\n"
    "dim batch = 2, seq = 8, vocab = 32, hidden = 16, experts = 4, topk = 2, ffn = 32\n"
    "dim capacity = (topk * batch * seq * 125) // (100 * experts)\n"
    "input tokens[batch, seq] : i32 ~ tokens(vocab)\n"
    "input labels[batch, seq] : i32 ~ next_tokens(vocab)\n"
    "param wte[vocab, hidden] ~ normal(0.1)\n"
    "param ln_g[hidden] ~ ones\nparam ln_b[hidden] ~ zeros\n"
    "param w_router[hidden, experts] ~ normal(0.5)\n"
    "param w_in[experts, hidden, ffn] ~ normal(0.1)\nparam w_out[experts, ffn, hidden] ~ normal(0.1)\n"
    "x = embed(wte, tokens)\n"
    "h = layernorm(x, ln_g, ln_b)\n"
    "router = einsum(\"b s h, h e -> b s e\", h, w_router)\n"
    "dispatch, combine = moe_gate(router, topk, capacity)\n"
    "xe = einsum(\"b s e c, b s h -> e c h\", dispatch, h)\n"
    "f = gelu(einsum(\"e c h, e h f -> e c f\", xe, w_in))\n"
    "y = einsum(\"e c f, e f h -> e c h\", f, w_out)\n"
    "x = x + einsum(\"b s e c, e c h -> b s h\", combine, y)\n"
    "logits = einsum(\"b s h, v h -> b s v\", x, wte)\n"
    "loss = cross_entropy(logits, labels)\n";

/* The rest of the element-wise ops, the reductions, a transposition and mse;
   b and b2 share one gradient (a copy into each one's sum) */
static const char *ops_text = "model ops_t\n"
                              "dim batch = 8, hidden = 16, out = 12\n"
                              "input x[batch, hidden] : f32 ~ normal(1)\n"
                              "input y[batch, out] : f32 ~ normal(1)\n"
                              "param w[hidden, out] ~ normal(0.3)\n"
                              "param b[out] ~ zeros\n"
                              "param b2[out] ~ zeros\n"
                              "param g[out] ~ ones\n"
                              "a = einsum(\"b i, i o -> b o\", x, w) + (b + b2)\n"
                              "m = mean(a, batch)\n"
                              "s = sum(exp(a), batch)\n"
                              "mx = max(a, batch)\n"
                              "c = (a - m) / s * g + mx\n"
                              "d = tanh(c) + relu(c) + rsqrt(c * c + 1)\n"
                              "p = softmax(einsum(\"b o -> o b\", d))\n"
                              "e = einsum(\"o b -> b o\", p)\n"
                              "loss = mse(e, y)\n";

static const Model models[] = {
    {"gpt", NULL, 1}, {"gpt, 2 microbatches", NULL, 2}, {"llama", NULL, 1}, {"moe", NULL, 1}, {"ops", NULL, 1}};

static const char *model_text(int m) {
  switch (m) {
  case 0:
  case 1: return gpt_text;
  case 2: return llama_text;
  case 3: return moe_text;
  default: return ops_text;
  }
}

static Program *compile_model(int m, Precision prec, OptKind opt) {
  const char *text = model_text(m);
  Diag d;
  diag_init(&d, stderr);
  Graph *g = frontend_load_text(models[m].name, text, strlen(text), NULL, &d);
  if (!g || !autodiff(g, models[m].microbatches, stderr)) return NULL;
  Train t;
  train_defaults(&t);
  t.precision = prec;
  t.opt = opt;
  t.microbatches = models[m].microbatches;
  return codegen(g, &t, 5);
}

/* ------------------------------------------------------------------ judging */

typedef struct OpStat {
  int instrs;   /* instructions of this op run in lockstep */
  double worst; /* largest |gpu - cpu| / the buffer's largest |cpu| */
  int failed;   /* instructions whose outputs were out of tolerance */
} OpStat;
static OpStat stats[OP_COUNT];

/* The buffer's elements as f32 (from an arena image). */
static float *widen(const Buffer *b, const unsigned char *arena) {
  int64_t n = shape_numel(&b->shape);
  float *v = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++)
    v[i] = b->dtype == DT_BF16 ? km_f32(((const uint16_t *)(arena + b->offset))[i])
                               : ((const float *)(arena + b->offset))[i];
  return v;
}

/* Judges one buffer element by element; returns the largest |got - ref|
   over the largest |ref|, and sets *bad to the elements out of tolerance. */
static double judge(const Buffer *b, const float *ref, const float *got, int64_t n, int64_t *bad, int64_t *first) {
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(ref[i])) scale = fmax(scale, fabs(ref[i]));
  bool half = b->dtype == DT_BF16;
  double rtol = half ? 1e-2 : 1e-5, atol = half ? 1e-2 * scale : 1e-5 * scale + 1e-8;
  *bad = 0, *first = -1;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - ref[i]);
    bool ok = isfinite(ref[i]) ? d <= atol + rtol * fabs(ref[i]) : (isnan(ref[i]) ? isnan(got[i]) : got[i] == ref[i]);
    if (!ok && (*bad)++ == 0) *first = i;
    if (isfinite(d))
      worst = fmax(worst, d / (scale > 0 ? scale : 1));
    else if (!ok)
      worst = INFINITY;
  }
  return worst;
}

/* Compares every buffer of the two arena images after instruction `in`;
   charges what differs to its op. */
static void compare_arenas(const Program *p, const Instr *in, int index, bool init, const unsigned char *ref,
                           const unsigned char *got, const char *what) {
  OpStat *s = &stats[in->op];
  s->instrs++;
  bool failed = false;
  for (int k = 0; k < p->nbufs; k++) {
    const Buffer *b = &p->bufs[k];
    if (memcmp(ref + b->offset, got + b->offset, (size_t)b->bytes) == 0) continue;
    int64_t n = shape_numel(&b->shape), bad = 0, first = -1;
    if (b->dtype == DT_I32) {
      for (int64_t i = 0; i < n; i++)
        if (((const int32_t *)(ref + b->offset))[i] != ((const int32_t *)(got + b->offset))[i] && bad++ == 0) first = i;
      s->worst = bad ? INFINITY : s->worst;
    } else {
      float *a = widen(b, ref), *g = widen(b, got);
      s->worst = fmax(s->worst, judge(b, a, g, n, &bad, &first));
      if (bad)
        fprintf(stderr, "  %s: %s instruction %d (%s): %s[%lld] is %.8g, the CPU's %.8g\n", what,
                init ? "init" : "step", index, op_info[in->op].name, b->name, (long long)first, g[first], a[first]);
      free(a), free(g);
    }
    CHECK(bad == 0, "%s: %s instruction %d (%s): %lld of %lld elements of %s (%s) out of tolerance", what,
          init ? "init" : "step", index, op_info[in->op].name, (long long)bad, (long long)n, b->name,
          dtype_name(b->dtype));
    failed |= bad != 0;
  }
  s->failed += failed;
}

/* Runs p's init and step lists on both backends one instruction at a time,
   judging every instruction and resetting the GPU's arena to the CPU's
   after it. */
static void lockstep(const Program *p, const char *what) {
  char why[256];
  Backend *ref = backend_open("cpu", why, sizeof why), *dut = open_dut();
  if (!dut) {
    CHECK(false, "%s: backend %s opens", what, dut_name);
    ref->close(ref);
    return;
  }
  bool loaded = ref->load(ref, p, stderr) && dut->load(dut, p, stderr);
  CHECK(loaded, "%s: both backends load the program", what);
  size_t bytes = (size_t)p->arena_bytes;
  unsigned char *a = xmalloc(bytes + 64), *g = xmalloc(bytes + 64);
  StepInfo si = {.step = 1, .data_step = 1};
  for (int list = 0; loaded && list < 2; list++) {
    const Instr *ins = list ? p->step : p->init;
    int n = list ? p->nstep : p->ninit;
    for (int i = 0; i < n; i++) {
      StepStatus sa, sg;
      ref->exec(ref, &ins[i], i, !list, &si);
      ref->synchronize(ref, &sa);
      dut->exec(dut, &ins[i], i, !list, &si);
      dut->synchronize(dut, &sg);
      CHECK(!sa.error && !sg.error, "%s: %s instruction %d (%s) runs: cpu %s, %s %s", what, list ? "step" : "init", i,
            op_info[ins[i].op].name, sa.error ? sa.error : "ok", dut_name, sg.error ? sg.error : "ok");
      double lt = 1e-5 * fabs(sa.loss) + (p->precision == PREC_BF16 ? 1e-3 * fabs(sa.loss) : 0) + 1e-8;
      CHECK(fabs(sg.loss - sa.loss) <= lt, "%s: the loss after %s instruction %d (%s): %.8g, the CPU's %.8g", what,
            list ? "step" : "init", i, op_info[ins[i].op].name, sg.loss, sa.loss);
      ref->download(ref, a, 0, p->arena_bytes);
      dut->download(dut, g, 0, p->arena_bytes);
      compare_arenas(p, &ins[i], i, !list, a, g, what);
      if (memcmp(a, g, bytes)) dut->upload(dut, 0, a, p->arena_bytes);
    }
  }
  free(a), free(g);
  ref->close(ref);
  dut->close(dut);
}

/* One whole step through the Runtime API on each backend. */
static void whole_step(const Program *p, const char *what) {
  char why[256];
  Backend *ref = backend_open("cpu", why, sizeof why), *dut = open_dut();
  if (!dut) {
    ref->close(ref);
    return;
  }
  RunOptions ra = {.steps = 1, .quiet = true, .backend = ref}, rg = {.steps = 1, .quiet = true, .backend = dut};
  Runtime *A = runtime_new(p, &ra), *G = runtime_new(p, &rg);
  CHECK(A && G, "%s: whole step: both runtimes start", what);
  double la = 0, lg = 0;
  bool ran = A && G && runtime_step(A, &la) == 0 && runtime_step(G, &lg) == 0;
  CHECK(ran, "%s: whole step runs on both", what);
  bool bf16 = p->precision == PREC_BF16;
  double ltol = bf16 ? 1e-2 : 1e-5, ntol = bf16 ? 2e-2 : 1e-4, worst = 0;
  const char *worst_name = "";
  CHECK(!ran || fabs(lg - la) <= ltol * fabs(la), "%s: whole step loss %.8g, the CPU's %.8g", what, lg, la);
  for (int k = 0; ran && k < p->nbufs; k++) {
    const Buffer *b = &p->bufs[k];
    if (b->dtype == DT_I32) continue;
    int64_t n = shape_numel(&b->shape);
    float *x = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1)), *y = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    bool read = runtime_read(A, b->name, x, n) && runtime_read(G, b->name, y, n);
    CHECK(read, "%s: runtime_read %s", what, b->name);
    double dd = 0, rr = 0;
    /* an element the same on both sides counts nothing: a buffer whose memory a later one of another
       dtype reused can hold any bits there, NaN too */
    for (int64_t i = 0; read && i < n; i++) {
      if (memcmp(&x[i], &y[i], sizeof(float)) == 0 || (isnan(x[i]) && isnan(y[i]))) continue;
      double e = (double)y[i] - x[i];
      dd += isfinite(e) ? e * e : INFINITY;
      rr += isfinite(x[i]) ? (double)x[i] * x[i] : 0;
    }
    double rel = rr > 0 ? sqrt(dd / rr) : sqrt(dd);
    if (!(rel <= worst)) worst = rel, worst_name = b->name;
    CHECK(rel <= ntol, "%s: whole step: %s differs by %.3g (relative 2-norm; tolerance %.0e)", what, b->name, rel,
          ntol);
    free(x), free(y);
  }
  if (ran) printf("  whole step %-28s loss %.7g (cpu %.7g), worst buffer %s %.2e\n", what, lg, la, worst_name, worst);
  runtime_free(A);
  runtime_free(G);
  ref->close(ref);
  dut->close(dut);
}

/* The write-read round trip of the Runtime API on the backend under test. */
static void read_write(void) {
  Program *p = compile_model(4, PREC_BF16, OPT_ADAMW);
  Backend *dut = open_dut();
  if (!p || !dut) return;
  RunOptions ro = {.steps = 1, .quiet = true, .backend = dut};
  Runtime *rt = runtime_new(p, &ro);
  CHECK(rt != NULL, "runtime on %s", dut_name);
  for (int k = 0; rt && k < p->nbufs; k++) {
    const Buffer *b = &p->bufs[k];
    if (b->dtype == DT_I32) continue;
    int64_t n = shape_numel(&b->shape);
    float *x = xmalloc(sizeof(float) * (size_t)n + 4), *y = xmalloc(sizeof(float) * (size_t)n + 4);
    for (int64_t i = 0; i < n; i++) x[i] = km_f32(km_bf16(rng_normal(11 + (uint64_t)k, (uint64_t)i)));
    CHECK(runtime_write(rt, b->name, x, n) && runtime_read(rt, b->name, y, n), "write and read %s", b->name);
    CHECK(memcmp(x, y, sizeof(float) * (size_t)n) == 0, "%s (%s) reads back what was written", b->name,
          dtype_name(b->dtype));
    CHECK(!runtime_read(rt, b->name, y, n + 1), "%s: a wrong element count is refused", b->name);
    free(x), free(y);
  }
  CHECK(!rt || !runtime_read(rt, "no such buffer", NULL, 1), "an unknown name is refused");
  runtime_free(rt);
  dut->close(dut);
}

int main(int argc, char **argv) {
  bool probe = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--probe"))
      probe = true;
    else if (!strcmp(argv[i], "--against") && i + 1 < argc)
      dut_name = argv[++i];
    else if (!strcmp(argv[i], "--perturb") && i + 1 < argc) {
      for (int op = 0; op < OP_COUNT; op++)
        if (!strcmp(op_info[op].name, argv[i + 1])) perturb_op = op;
      if (perturb_op < 0) {
        fprintf(stderr, "test_cuda: --perturb: no op '%s'\n", argv[i + 1]);
        return 2;
      }
      i++;
    } else {
      fprintf(stderr, "usage: test_cuda [--probe] [--against BACKEND] [--perturb OP]\n");
      return 2;
    }
  }
  char why[256] = "";
  Backend *b = backend_open(dut_name, why, sizeof why);
  if (!b) {
    printf("SKIPPED: %s\n", why);
    return 77;
  }
  printf("backend %s: %s%s\n", b->name, b->describe ? b->describe : "", b->bf16_fast ? " (bf16 units)" : "");
  b->close(b);
  if (probe) return 0;

  const Precision precs[2] = {PREC_FP32, PREC_BF16};
  for (int m = 0; m < (int)(sizeof models / sizeof models[0]); m++)
    for (int k = 0; k < 2; k++)
      for (int opt = 0; opt < 2; opt++) {
        if (opt == 1 && m != 4) continue; /* SGD: the ops model is enough */
        OptKind ok = opt ? OPT_SGD : OPT_ADAMW;
        const char *what = arena_printf("%s %s %s", models[m].name, precision_name(precs[k]), opt ? "sgd" : "adamw");
        Program *p = compile_model(m, precs[k], ok);
        CHECK(p != NULL, "%s compiles", what);
        if (!p) continue;
        lockstep(p, what);
        whole_step(p, what);
      }
  read_write();
  check_bad_ids(open_dut, dut_name);

  printf("\n%-20s %7s %22s %8s\n", "op", "instrs", "max |gpu-cpu|/max|cpu|", "failed");
  for (int op = 0; op < OP_COUNT; op++) {
    const OpStat *s = &stats[op];
    if (s->instrs) printf("%-20s %7d %22.2e %8d\n", op_info[op].name, s->instrs, s->worst, s->failed);
  }
  /* every instruction kind a program can hold, communication aside */
  for (int op = 0; op < OP_COUNT; op++) {
    bool prog = (op_info[op].flags & OPF_PROG) && !(op_info[op].flags & OPF_COMM);
    /* a reshape is never an instruction of a one-rank program: its output is its input's buffer */
    if (prog && op != OP_RESHAPE) CHECK(stats[op].instrs > 0, "op %s is covered by the models", op_info[op].name);
  }
  return test_summary();
}
