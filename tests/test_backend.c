/* test_backend.c: the compute-backend seam.
 *   - a program with an instruction the backend does not support is refused
 *     when it is loaded, with the instruction named;
 *   - bad data a kernel finds (an embedding id out of range) is reported by
 *     the step's synchronize, naming the instruction, and the run stops;
 *   - the same seed and program give bit-identical losses in fp32 and bf16,
 *     and bf16 really runs in bf16 (its losses differ from fp32's a little). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/backend.h"
#include "bad_ids.h"
#include "harness.h"

/* The CPU backend, except that it refuses gelu. */
static const char *no_gelu(Backend *b, const Program *p, const Instr *in) {
  (void)b, (void)p;
  return in->op == OP_GELU ? "no gelu here" : NULL;
}

static Backend *open_cpu(void) {
  char why[128];
  return backend_open("cpu", why, sizeof why);
}

static Program *compile_text(const char *text, Precision prec) {
  Diag d;
  diag_init(&d, stderr);
  Graph *g = frontend_load_text("t", text, strlen(text), NULL, &d);
  if (!g || !autodiff(g, 1, stderr)) return NULL;
  Train t;
  train_defaults(&t);
  t.precision = prec;
  return codegen(g, &t, 5);
}

static const char *mlp = "param w[8, 16] ~ normal(0.5)\ninput x[4, 8] ~ normal(1)\ninput y[4, 16] ~ normal(1)\n"
                         "loss = mse(gelu(einsum(\"b i, i j -> b j\", x, w)), y)\n";

static void unsupported(void) {
  Program *p = compile_text(mlp, PREC_FP32);
  CHECK(p != NULL, "model compiles");
  if (!p) return;
  char why[128], *text = NULL;
  size_t len = 0;
  Backend *b = backend_open(NULL, why, sizeof why);
  b->supports = no_gelu;
  FILE *m = open_memstream(&text, &len);
  bool ok = b->load(b, p, m);
  fclose(m);
  CHECK(!ok, "a program with an unsupported instruction is refused at load");
  int gelu = -1;
  for (int i = 0; i < p->nstep && gelu < 0; i++)
    if (p->step[i].op == OP_GELU) gelu = i;
  char want[64];
  snprintf(want, sizeof want, "step instruction %d (gelu)", gelu);
  CHECK(text && strstr(text, want) && strstr(text, "no gelu here"), "the message names it: %s", text ? text : "");
  free(text);
  b->close(b);
}

static void losses(Precision prec, double *out) {
  Program *p = compile_text(mlp, prec);
  RunOptions ro = {.steps = 5, .quiet = true};
  Runtime *rt = runtime_new(p, &ro);
  CHECK(rt != NULL, "%s runtime", precision_name(prec));
  for (int s = 0; rt && s < 5; s++) CHECK(runtime_step(rt, &out[s]) == 0, "step %d", s);
  runtime_free(rt);
}

static void determinism(void) {
  double a[5], b[5], c[5], d[5];
  losses(PREC_FP32, a);
  losses(PREC_FP32, b);
  losses(PREC_BF16, c);
  losses(PREC_BF16, d);
  CHECK(memcmp(a, b, sizeof a) == 0, "fp32: two runs give bit-identical losses");
  CHECK(memcmp(c, d, sizeof c) == 0, "bf16: two runs give bit-identical losses");
  bool differ = false, close = true;
  for (int s = 0; s < 5; s++) {
    differ |= a[s] != c[s];
    close &= fabs(a[s] - c[s]) < 2e-2 * fabs(a[s]);
  }
  CHECK(differ && close, "bf16 losses are near fp32's but not equal (%.7g vs %.7g)", c[4], a[4]);
}

int main(void) {
  unsupported();
  check_bad_ids(open_cpu, "cpu");
  determinism();
  return test_summary();
}
