/* test_grad.c: every op's gradient, as autodiff builds it and the CPU
 * kernels compute it, against central finite differences of the loss.
 *
 * Each case is a small model whose loss depends on the op under test through
 * parameters; the program runs with SGD at learning rate 0 (parameters stay
 * put) and fixed data, so the loss is a deterministic function of the
 * parameters. For sampled elements of each parameter we compare
 * (L(p+e) - L(p-e)) / 2e with the gradient the program computed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "harness.h"

typedef struct Case {
  const char *name;
  const char *text;
  const char *params; /* comma-separated parameters to check */
  double eps;
} Case;

static const Case cases[] = {
    {"einsum matmul",
     "dim b = 3, i = 4, j = 5\nparam x[b, i] ~ normal(1)\nparam w[i, j] ~ normal(0.5)\ninput t[b, j] ~ normal(1)\n"
     "loss = mse(einsum(\"b i, i j -> b j\", x, w), t)\n",
     "x,w", 1e-2},
    {"einsum attention scores",
     "dim b = 2, s = 3, n = 2, d = 4\nparam q[b, s, n, d] ~ normal(1)\nparam k[b, s, n, d] ~ normal(1)\n"
     "input t[b, n, s, s] ~ normal(1)\nloss = mse(einsum(\"b s n d, b t n d -> b n s t\", q, k), t)\n",
     "q,k", 1e-2},
    {"einsum contraction over two labels, output transposed",
     "param a[2, 3, 4] ~ normal(1)\nparam w[3, 4, 5] ~ normal(1)\ninput t[5, 2] ~ normal(1)\n"
     "loss = mse(einsum(\"i j k, j k l -> l i\", a, w), t)\n",
     "a,w", 1e-2},
    {"einsum transpose and reshape",
     "param x[2, 3, 4] ~ normal(1)\ninput t[4, 6] ~ normal(1)\n"
     "loss = mse(reshape(einsum(\"a b c -> c a b\", x), [4, 6]), t)\n",
     "x", 1e-2},
    {"broadcast arithmetic",
     "param x[2, 3, 4] ~ normal(1)\nparam w[3, 4] ~ normal(1)\nparam v[4] ~ normal(1)\ninput t[2, 3, 4] ~ normal(1)\n"
     "y = (x * w + v - x) / exp(v)\nz = v / exp(x) + 0.5 * x - 1 - w\nloss = mse(y + z - (-x), t)\n",
     "x,w,v", 1e-2},
    {"unary ops",
     "param x[3, 5] ~ normal(1)\ninput t[3, 5] ~ normal(1)\n"
     "y = gelu(x) + relu(x) + silu(x) + tanh(x) + exp(0.3 * x) + rsqrt(exp(x))\nloss = mse(y, t)\n",
     "x", 1e-3},
    {"reductions",
     "dim a = 3, c = 4, e = 5\nparam x[a, c, e] ~ normal(1)\ninput t1[a, e] ~ normal(1)\ninput t2[a, c] ~ normal(1)\n"
     "input t3[c, e] ~ normal(1)\nloss = mse(sum(x, c), t1) + mse(mean(x, e), t2) + mse(max(x, 0), t3)\n",
     "x", 1e-3},
    {"softmax and causal softmax",
     "param x[2, 3, 5] ~ normal(1)\nparam y[2, 4, 4] ~ normal(1)\ninput t[2, 3, 5] ~ normal(1)\n"
     "input u[2, 4, 4] ~ normal(1)\nloss = mse(softmax(x), t) + mse(softmax(y, causal), u)\n",
     "x,y", 1e-2},
    {"layernorm and rmsnorm",
     "param x[3, 6] ~ normal(1)\nparam g[6] ~ normal(1)\nparam b[6] ~ normal(1)\nparam h[6] ~ normal(1)\n"
     "input t[3, 6] ~ normal(1)\nloss = mse(layernorm(x, g, b), t) + mse(rmsnorm(x, h, eps=1e-6), t)\n",
     "x,g,b,h", 1e-2},
    {"embed and cross_entropy",
     "dim b = 2, s = 3, v = 7, h = 4\ninput ids[b, s] : i32 ~ tokens(v)\ninput lab[b, s] : i32 ~ next_tokens(v)\n"
     "param table[v, h] ~ normal(1)\nparam w[h, v] ~ normal(1)\n"
     "loss = cross_entropy(einsum(\"b s h, h v -> b s v\", embed(table, ids), w), lab)\n",
     "table,w", 1e-2},
    {"moe gate, dispatch and combine",
     "dim t = 6, h = 4, e = 3, c = 3, f = 5\nparam x[t, h] ~ normal(1)\nparam wr[h, e] ~ normal(1)\n"
     "param we[e, h, f] ~ normal(1)\ninput target[t, f] ~ normal(1)\n"
     "dispatch, combine = moe_gate(einsum(\"t h, h e -> t e\", x, wr), 2, c)\n"
     "y = einsum(\"e c h, e h f -> e c f\", einsum(\"t e c, t h -> e c h\", dispatch, x), we)\n"
     "loss = mse(einsum(\"t e c, e c f -> t f\", combine, y), target)\n",
     "x,wr,we", 1e-3},
    {"one gradient shared by two parameters",
     "param a[8] ~ normal(0.1)\nparam b[8] ~ normal(0.1)\ninput x[8] ~ normal(1)\ninput t[8] ~ normal(1)\n"
     "loss = mse((a + b) * x, t)\n",
     "a,b", 1e-2},
    {"mse of two parameters", "param p[4, 2] ~ normal(1)\nparam q[4, 2] ~ normal(1)\nloss = mse(p, q)\n", "p,q", 1e-2},
};

static double loss_at(Runtime *rt) {
  double l = 0;
  CARVE_ASSERT(runtime_step(rt, &l) == 0, "step runs");
  return l;
}

static void run_case(const Case *c) {
  Diag d;
  diag_init(&d, stderr);
  Graph *g = frontend_load_text(c->name, c->text, strlen(c->text), NULL, &d);
  CHECK(g != NULL, "%s: the model elaborates", c->name);
  if (!g) return;
  CHECK(autodiff(g, 1, stderr), "%s: autodiff", c->name);
  Train t;
  train_defaults(&t);
  t.opt = OPT_SGD;
  t.lr = 0, t.wd = 0, t.momentum = 0, t.clip = 0;
  Program *p = codegen(g, &t, 7);
  RunOptions ro = {.steps = 1, .quiet = true, .data_step = 1};
  Runtime *rt = runtime_new(p, &ro);
  CHECK(rt != NULL, "%s: runtime starts", c->name);
  if (!rt) return;
  double l0 = loss_at(rt);
  CHECK(isfinite(l0), "%s: finite loss", c->name);
  /* keep every gradient of the unperturbed step before probing any */
  float *saved[8] = {0};
  int nsaved = 0;
  {
    char all[128];
    snprintf(all, sizeof all, "%s", c->params);
    char *sv;
    for (char *nm = strtok_r(all, ",", &sv); nm && nsaved < 8; nm = strtok_r(NULL, ",", &sv)) {
      int64_t n;
      float *gb = runtime_buffer(rt, arena_printf("%s.grad", nm), &n);
      saved[nsaved] = gb ? xmalloc(sizeof(float) * (size_t)n) : NULL;
      if (gb) memcpy(saved[nsaved], gb, sizeof(float) * (size_t)n);
      nsaved++;
    }
  }
  int which = 0;
  char names[128];
  snprintf(names, sizeof names, "%s", c->params);
  char *save;
  for (char *name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
    int64_t n, ng;
    float *w = runtime_buffer(rt, name, &n);
    float *gbuf = runtime_buffer(rt, arena_printf("%s.grad", name), &ng);
    CHECK(w && gbuf && n == ng, "%s: parameter %s and its gradient exist", c->name, name);
    if (!w || !gbuf) {
      free(saved[which++]);
      continue;
    }
    float *grad = saved[which++];
    double worst = 0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i<n; i += n> 24 ? n / 24 : 1) {
      float keep = w[i];
      w[i] = keep + (float)c->eps;
      double lp = loss_at(rt);
      w[i] = keep - (float)c->eps;
      double lm = loss_at(rt);
      w[i] = keep;
      double fd = (lp - lm) / (2 * c->eps);
      double err = fabs(fd - grad[i]) / (fabs(fd) + fabs(grad[i]) + 1e-2);
      if (err > worst) worst = err, worst_i = i;
    }
    CHECK(worst < 2e-2, "%s: d loss / d %s[%lld]: finite difference and autodiff differ (relative %.3g, grad %g)",
          c->name, name, (long long)worst_i, worst, grad[worst_i]);
    printf("%-50s %-6s max relative difference %.2e\n", c->name, name, worst);
    free(grad);
  }
  double l1 = loss_at(rt);
  CHECK(l1 == l0, "%s: the loss is a deterministic function of the parameters (%.9g vs %.9g)", c->name, l1, l0);
  runtime_free(rt);
}

int main(void) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
  arena_reset();
  return test_summary();
}
