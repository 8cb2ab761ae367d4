/* test_optim.c: the optimizer instructions against the formulas, step by
 * step: AdamW (bias correction, decoupled weight decay on matrices only,
 * linear warm-up), momentum SGD, and clipping by the global gradient norm.
 * Each step reads the gradients the program computed and the parameters
 * before and after, and recomputes the update in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "harness.h"

static const char *model = "param w[2, 3] ~ normal(1)\nparam b[3] ~ normal(1)\ninput t[2, 3] ~ normal(1)\n"
                           "loss = mse(w + b, t)\n";

typedef struct State {
  double m[9], v[9], mom[9];
} State;

static void run(OptKind opt, double clip, int warmup, const char *what) {
  Diag d;
  diag_init(&d, stderr);
  Graph *g = frontend_load_text("optim", model, strlen(model), NULL, &d);
  CHECK(g && autodiff(g, 1, stderr), "%s: model", what);
  if (!g) return;
  Train t;
  train_defaults(&t);
  t.opt = opt, t.lr = 0.05, t.wd = 0.1, t.clip = clip, t.warmup = warmup, t.momentum = 0.8;
  Program *p = codegen(g, &t, 3);
  RunOptions ro = {.steps = 4, .quiet = true, .data_step = 1};
  Runtime *rt = runtime_new(p, &ro);
  CHECK(rt != NULL, "%s: runtime", what);
  if (!rt) return;
  int64_t nw, nb;
  float *w = runtime_buffer(rt, "w", &nw), *b = runtime_buffer(rt, "b", &nb);
  float *gw = runtime_buffer(rt, "w.grad", NULL), *gb = runtime_buffer(rt, "b.grad", NULL);
  State st;
  memset(&st, 0, sizeof st);
  double worst = 0;
  for (int step = 1; step <= 4; step++) {
    double before[9];
    for (int i = 0; i < 6; i++) before[i] = w[i];
    for (int i = 0; i < 3; i++) before[6 + i] = b[i];
    double loss;
    CHECK(runtime_step(rt, &loss) == 0, "%s: step %d", what, step);
    double grad[9], norm = 0;
    for (int i = 0; i < 6; i++) grad[i] = gw[i];
    for (int i = 0; i < 3; i++) grad[6 + i] = gb[i];
    for (int i = 0; i < 9; i++) norm += grad[i] * grad[i];
    norm = sqrt(norm);
    double factor = clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1;
    double lr = t.lr * (warmup > 0 && step < warmup ? (double)step / warmup : 1);
    for (int i = 0; i < 9; i++) {
      double gi = grad[i] * factor, p0 = before[i], wd = i < 6 ? t.wd : 0, want;
      if (opt == OPT_ADAMW) {
        st.m[i] = t.beta1 * st.m[i] + (1 - t.beta1) * gi;
        st.v[i] = t.beta2 * st.v[i] + (1 - t.beta2) * gi * gi;
        double mh = st.m[i] / (1 - pow(t.beta1, step)), vh = st.v[i] / (1 - pow(t.beta2, step));
        want = p0 - lr * (mh / (sqrt(vh) + t.eps) + wd * p0);
      } else {
        st.mom[i] = t.momentum * st.mom[i] + gi;
        want = p0 - lr * (st.mom[i] + wd * p0);
      }
      double got = i < 6 ? w[i] : b[i - 6];
      worst = fmax(worst, fabs(got - want) / (fabs(want) + 1e-3));
    }
    if (clip > 0 && step == 1) CHECK(norm > clip, "%s: the gradient norm %.3f exceeds the clip %.3f", what, norm, clip);
  }
  CHECK(worst < 1e-5, "%s: parameters follow the update rule (worst relative difference %.2g)", what, worst);
  printf("%-40s worst relative difference %.2g\n", what, worst);
  runtime_free(rt);
  arena_reset();
}

int main(void) {
  run(OPT_ADAMW, 0, 0, "adamw");
  run(OPT_ADAMW, 0.05, 3, "adamw, clipped, warm-up 3");
  run(OPT_SGD, 0, 0, "sgd with momentum");
  run(OPT_SGD, 0.05, 2, "sgd, clipped, warm-up 2");
  return test_summary();
}
