/* test_frontend.c: what the frontend builds from good input: dims and their
 * overrides, presets, repeat naming and scoping, if/else, shape inference of
 * every op, and the `carve check` figures of the GPT model against the
 * Megatron-LM formulas (shared reference: P = 12 l h^2 (1 + 13/(12h) +
 * (V+s)/(12 l h)); training FLOPs without recomputation 72 B s l h^2 (1 +
 * s/(6h) + V/(12 l h))). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "harness.h"

/* A model from text, or (text NULL) the shipped model `name`. */
static Graph *load(const char *name, const char *text, const char *preset, const char *sets) {
  Diag d;
  diag_init(&d, stderr);
  ElabOptions o = {.preset = preset};
  if (sets && !parse_sets(sets, &o.sets, &o.nsets, stderr)) return NULL;
  Graph *g = text ? frontend_load_text(name, text, strlen(text), &o, &d) : frontend_load(model_resolve(name), &o, &d);
  free(o.sets);
  return g;
}

static Graph *load_text(const char *text, const char *preset, const char *sets) {
  return load("test.graph", text, preset, sets);
}

static Graph *load_model(const char *name, const char *preset, const char *sets) {
  return load(name, NULL, preset, sets);
}

static const Node *find(const Graph *g, const char *name) {
  for (int i = 0; i < g->n; i++)
    if (strcmp(g->nodes[i]->name, name) == 0) return g->nodes[i];
  return NULL;
}

static bool has_shape(const Node *n, int rank, const int64_t *d) {
  if (!n || n->shape.rank != rank) return false;
  for (int i = 0; i < rank; i++)
    if (n->shape.d[i] != d[i]) return false;
  return true;
}

static void test_dims_and_blocks(void) {
  const char *text = "model t\n"
                     "dim batch = 4, hidden = 6, heads = 2, layers = 3\n"
                     "dim head = hidden / heads, big = 10 // 3, flag = 0\n"
                     "preset small: layers = 2, hidden = 8\n"
                     "input x[batch, hidden] ~ normal(1)\n"
                     "a = x\n"
                     "repeat layers {\n"
                     "  param w[hidden, hidden] ~ normal(0.1)\n"
                     "  a = relu(einsum(\"b h, h g -> b g\", a, w))\n"
                     "}\n"
                     "if flag {\n  param extra[hidden]\n  y = a + extra\n} else {\n  y = a * 2\n}\n"
                     "loss = mean(sum(y, hidden), 0)\n";
  Graph *g = load_text(text, NULL, NULL);
  CHECK(g != NULL, "the model elaborates");
  if (!g) return;
  CHECK(graph_dim(g, "head", -1) == 3 && graph_dim(g, "big", -1) == 3, "dim arithmetic: head %lld big %lld",
        (long long)graph_dim(g, "head", -1), (long long)graph_dim(g, "big", -1));
  CHECK(find(g, "layers.0.w") && find(g, "layers.2.w") && !find(g, "layers.3.w"), "one parameter per iteration");
  CHECK(!find(g, "extra"), "the else branch was taken");
  CHECK(strcmp(g->model, "t") == 0, "model name");
  const Node *w = find(g, "layers.1.w");
  CHECK(w && w->layer == 1, "layer index of an iteration's parameter");
  Graph *p = load_text(text, "small", "hidden=10,flag=1");
  CHECK(p && graph_dim(p, "layers", -1) == 2, "the preset sets layers");
  CHECK(p && graph_dim(p, "hidden", -1) == 10, "--set wins over the preset");
  CHECK(p && find(p, "extra") && !find(p, "layers.2.w"), "the if branch and two layers");
  int64_t d10[] = {10, 10};
  CHECK(p && has_shape(find(p, "layers.0.w"), 2, d10), "shapes follow the overridden dims");
}

static void test_shapes(void) {
  const char *text =
      "dim b = 2, s = 3, h = 8, n = 2, d = 4, v = 11, e = 3, c = 2\n"
      "input ids[b, s] : i32 ~ tokens(v)\ninput lab[b, s] : i32 ~ next_tokens(v)\n"
      "param wte[v, h]\nparam wq[h, n, d]\nparam g[h]\nparam wr[h, e]\n"
      "x = embed(wte, ids)\n"
      "q = einsum(\"b s h, h n d -> b s n d\", x, wq)\n"
      "att = softmax(einsum(\"bsnd,btnd->bnst\", q, q) / sqrt(d), causal)\n"
      "m = max(att, -1)\n"
      "r = rmsnorm(x, g, eps=1e-6)\n"
      "flat = reshape(ids, [b * s])\n"
      "dispatch, combine = moe_gate(einsum(\"b s h, h e -> b s e\", r, wr), topk=2, capacity=c)\n"
      "loss = cross_entropy(einsum(\"b s h, v h -> b s v\", r, wte), lab) + mean(mean(sum(m, 2), 0), 0) * 0\n";
  Graph *g = load_text(text, NULL, NULL);
  CHECK(g != NULL, "the shape model elaborates");
  if (!g) return;
  int64_t q[] = {2, 3, 2, 4}, att[] = {2, 2, 3, 3}, m[] = {2, 2, 3}, flat[] = {6}, disp[] = {2, 3, 3, 2};
  CHECK(has_shape(find(g, "q"), 4, q), "einsum output shape");
  CHECK(has_shape(find(g, "att"), 4, att), "letter-style einsum and softmax shape");
  CHECK(has_shape(find(g, "m"), 3, m), "max over the last axis");
  CHECK(has_shape(find(g, "flat"), 1, flat) && find(g, "flat")->dtype == DT_I32, "reshape keeps i32");
  CHECK(has_shape(find(g, "dispatch"), 4, disp) && has_shape(find(g, "combine"), 4, disp), "moe_gate shapes");
  CHECK(find(g, "loss") && find(g, "loss")->shape.rank == 0, "scalar loss");
  CHECK(autodiff(g, 1, stderr), "autodiff of the shape model");
  for (int i = 0; i < g->nfwd; i++) {
    if (g->nodes[i]->op != OP_PARAM) continue;
    if (strcmp(g->nodes[i]->name, "wr") == 0) /* the router feeds only the unused gates */
      CHECK(g->grad[i] < 0, "wr does not reach the loss, so it has no gradient");
    else
      CHECK(g->grad[i] >= 0 && shape_eq(&g->nodes[g->grad[i]]->shape, &g->nodes[i]->shape),
            "parameter %s has a gradient of its shape", g->nodes[i]->name);
  }
  /* unique names in the training graph */
  int dup = 0;
  for (int i = 0; i < g->n; i++)
    for (int j = i + 1; j < g->n; j++) dup += strcmp(g->nodes[i]->name, g->nodes[j]->name) == 0;
  CHECK(dup == 0, "%d duplicate node names in the training graph", dup);
}

/* Megatron-LM Table 1 shapes (V = 51200, s = 2048). */
static void test_megatron_figures(void) {
  static const struct {
    int64_t h, heads, l;
  } rows[] = {
      {2304, 24, 24},  {3072, 32, 30},  {4096, 32, 36},   {6144, 48, 40},    {8192, 64, 48},
      {10240, 80, 60}, {12288, 96, 80}, {16384, 128, 96}, {20480, 128, 105}, {25600, 160, 128},
  };
  const int64_t V = 51200, s = 2048, B = 4;
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    char sets[160];
    int64_t h = rows[i].h, l = rows[i].l;
    snprintf(sets, sizeof sets, "batch=%lld,seq=%lld,vocab=%lld,hidden=%lld,heads=%lld,layers=%lld", (long long)B,
             (long long)s, (long long)V, (long long)h, (long long)rows[i].heads, (long long)l);
    Graph *g = load_model("gpt", NULL, sets);
    CHECK(g != NULL, "gpt with %s", sets);
    if (!g) continue;
    CHECK(autodiff(g, 1, stderr), "autodiff");
    Summary sm;
    summarize(g, &sm);
    /* the formula counts everything but the final layernorm's 2h */
    int64_t megatron = 12 * l * h * h + 13 * l * h + (V + s) * h;
    CHECK(sm.params == megatron + 2 * h, "h=%lld: %lld parameters, Megatron's formula + 2h gives %lld", (long long)h,
          (long long)sm.params, (long long)(megatron + 2 * h));
    double hd = (double)h, ld = (double)l;
    double f72 = 72.0 * B * s * ld * hd * hd * (1 + (double)s / (6 * hd) + (double)V / (12 * ld * hd));
    CHECK(fabs(sm.flops_einsum - f72) <= 1e-9 * f72, "h=%lld: einsum FLOPs %.6g vs the 72-factor formula %.6g",
          (long long)h, sm.flops_einsum, f72);
    double other = sm.flops_other / f72;
    CHECK(other < 0.02, "h=%lld: elementwise FLOPs are %.3f%% of the formula", (long long)h, 100 * other);
    printf("h=%-6lld l=%-4lld params %lld = formula + 2h; einsum FLOPs = 72-factor formula (rel. diff %.1e); "
           "other ops add %.3f%%\n",
           (long long)h, (long long)l, (long long)sm.params, fabs(sm.flops_einsum - f72) / f72, 100 * other);
    arena_reset();
  }
}

/* Dims computed from the batch scale with it (data-parallel replicas
   compute their own); one set by --set does not, nor one that is not. */
static void test_per_batch_dims(void) {
  const char *text = "model t\n"
                     "dim batch = 4, seq = 3, experts = 2\n"
                     "dim tokens = batch * seq, cap = (2 * tokens) // experts, fixed = seq * 2\n"
                     "input x[batch, seq] ~ normal(1)\n"
                     "input c[cap, experts] ~ normal(1)\n"
                     "loss = mean(sum(x, seq), 0) + mean(sum(c, experts), 0)\n";
  Graph *g = load_text(text, NULL, NULL);
  CHECK(g != NULL, "the model elaborates");
  if (!g) return;
  const Node *x = find(g, "x"), *c = find(g, "c");
  CHECK(x && graph_dim_per_batch(g, x, 0) && !graph_dim_per_batch(g, x, 1), "x: the batch scales, seq does not");
  CHECK(c && graph_dim_per_batch(g, c, 0) && !graph_dim_per_batch(g, c, 1),
        "c: a dim computed through another from the batch scales, experts does not");
  bool fixed = true;
  for (int i = 0; i < g->ndims; i++)
    if (!strcmp(g->dims[i].name, "fixed")) fixed = g->dims[i].per_batch;
  CHECK(!fixed, "a dim not computed from the batch does not scale");
  Graph *s = load_text(text, NULL, "cap=5");
  c = s ? find(s, "c") : NULL;
  CHECK(c && !graph_dim_per_batch(s, c, 0), "a dim set by --set does not scale with the batch");
  Graph *m = load_model("moe", "moe-tiny", NULL);
  const Node *d = m ? find(m, "layers.0.xe") : NULL;
  CHECK(d && graph_dim_per_batch(m, d, 1) && !graph_dim_per_batch(m, d, 0),
        "moe: the dispatched tokens' capacity scales with the batch, the experts do not");
}

static void test_shipped_models(void) {
  static const char *models[][2] = {{"gpt", "gpt-tiny"},     {"gpt", "gpt3-175b"}, {"mlp", "mlp-tiny"},
                                    {"bert", "bert-tiny"},   {"bert", NULL},       {"moe", "moe-tiny"},
                                    {"llama", "llama-tiny"}, {"llama", "llama-7b"}};
  for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
    Graph *g = load_model(models[i][0], models[i][1], NULL);
    CHECK(g != NULL, "%s %s elaborates", models[i][0], models[i][1] ? models[i][1] : "(defaults)");
    CHECK(g && autodiff(g, 2, stderr), "%s differentiates", models[i][0]);
    arena_reset();
  }
}

int main(void) {
  test_dims_and_blocks();
  test_shapes();
  arena_reset();
  test_megatron_figures();
  test_per_batch_dims();
  arena_reset();
  test_shipped_models();
  return test_summary();
}
