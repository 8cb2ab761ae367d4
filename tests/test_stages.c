/* test_stages.c: the pipeline-stage DP against brute force over every
 * partition and submesh assignment, on random instances (layers 4-8, one or
 * two nodes of 1-4 devices, microbatches 1-16, some stages out of memory);
 * and how a graph's nodes are grouped into layers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "planner.h"

typedef struct Inst {
  int L, nsub;
  double w[16]; /* per-layer work */
  int devs[8];
  uint64_t seed;
} Inst;

/* A cost that scales sublinearly with devices, with noise, and sometimes
 * does not fit (negative) when a long span meets a small submesh. */
static double cost(void *ctx, int i, int j, int k) {
  const Inst *in = ctx;
  double work = 0;
  for (int l = i; l <= j; l++) work += in->w[l];
  uint64_t h = rng_u64(in->seed, (uint64_t)((i * 16 + j) * 8 + k));
  if ((j - i + 1) > 2 * in->devs[k] && h % 4 == 0) return -1;
  return work / pow(in->devs[k], 0.8) + 0.05 * (double)(h % 100) / 100.0;
}

static void test_random(void) {
  int worst_stages = 0;
  for (int t = 0; t < 300; t++) {
    Inst in = {.seed = (uint64_t)t + 1};
    in.L = 4 + (int)(rng_u64(77, (uint64_t)t) % 5);
    int nodes = 1 + (int)(rng_u64(78, (uint64_t)t) % 2), dpn = 1 + (int)(rng_u64(79, (uint64_t)t) % 4);
    for (int l = 0; l < in.L; l++) in.w[l] = 0.5 + rng_uniform(80, (uint64_t)(t * 16 + l));
    for (int k = 1; k <= dpn; k++) /* parts of a node, then whole nodes */
      if (dpn % k == 0) in.devs[in.nsub++] = k;
    if (nodes > 1) in.devs[in.nsub++] = nodes * dpn;
    int B = 1 + (int)(rng_u64(81, (uint64_t)t) % 16);
    StageProblem sp = {in.L, in.nsub, in.devs, nodes * dpn, B, cost, &in};
    Stage st[16];
    int ns = 0;
    double dp = stage_dp(&sp, st, &ns), bf = stage_brute_force(&sp);
    CHECK((dp < 0 && bf < 0) || fabs(dp - bf) <= 1e-9 * fabs(bf),
          "instance %d (L=%d, D=%d, B=%d): DP %.9g, brute force %.9g", t, in.L, nodes * dpn, B, dp, bf);
    if (dp < 0) continue;
    int next = 0, devices = 0;
    double sum = 0, mx = 0;
    for (int s = 0; s < ns; s++) {
      CHECK(st[s].first == next && st[s].last >= st[s].first, "stages are consecutive");
      next = st[s].last + 1;
      devices += in.devs[st[s].submesh];
      sum += st[s].t, mx = fmax(mx, st[s].t);
    }
    CHECK(next == in.L && devices == nodes * dpn, "stages cover the layers and use every device");
    CHECK(fabs(sum + (B - 1) * mx - dp) <= 1e-9 * dp, "the stages' own total is the returned one");
    if (ns > worst_stages) worst_stages = ns;
  }
  printf("300 random instances: the DP equals brute force; up to %d stages\n", worst_stages);
}

static Graph *gpt_tiny(void) {
  Diag d;
  diag_init(&d, stderr);
  Graph *g = frontend_load(model_resolve("gpt"), &(ElabOptions){.preset = "gpt-tiny"}, &d);
  CHECK(g != NULL, "gpt-tiny");
  return g;
}

static void test_layers(void) {
  Diag d;
  diag_init(&d, stderr);
  Graph *g = gpt_tiny();
  if (!g) return;
  int *lay = xmalloc(sizeof(int) * (size_t)g->nfwd);
  int L = graph_layers(g, 0, lay);
  CHECK(L == 2, "gpt-tiny has 2 layers (%d)", L);
  int first_einsum = -1, last = g->nfwd - 1;
  for (int i = 0; i < g->nfwd && first_einsum < 0; i++)
    if (g->nodes[i]->op == OP_EINSUM) first_einsum = i;
  CHECK(lay[0] == 0 && lay[last] == L - 1, "the embedding joins the first layer, the head the last");
  bool monotone = true;
  for (int i = 1; i < g->nfwd; i++) monotone &= lay[i] >= lay[i - 1] || g->nodes[i]->op == OP_PARAM;
  CHECK(monotone, "layers do not go backwards along the graph");
  free(lay);
  const char *text =
      "dim b = 8, h = 64\ninput x[b, h]\nparam w1[h, h]\nparam w2[h, h]\nparam w3[h, h]\nparam w4[h, h]\n"
      "y = einsum(\"b i, i j -> b j\", einsum(\"b i, i j -> b j\", x, w1), w2)\n"
      "z = einsum(\"b i, i j -> b j\", einsum(\"b i, i j -> b j\", y, w3), w4)\nloss = mse(z, x)\n";
  Graph *f = frontend_load_text("flat", text, strlen(text), NULL, &d);
  CHECK(f != NULL, "a graph without repeat blocks");
  if (!f) return;
  lay = xmalloc(sizeof(int) * (size_t)f->nfwd);
  int n2 = graph_layers(f, 2, lay), n9 = graph_layers(f, 9, lay);
  CHECK(n2 == 2, "cut into 2 layers of balanced FLOPs (%d)", n2);
  CHECK(n9 == 4, "never more layers than einsums (%d)", n9);
  free(lay);
}

/* Stage graphs of gpt-tiny: the whole span is the model; two one-layer
 * stages hold every parameter (the tied embedding twice) and every einsum
 * once, and both differentiate. */
static void test_stage_graphs(void) {
  Graph *g = gpt_tiny();
  if (!g) return;
  int *lay = xmalloc(sizeof(int) * (size_t)g->nfwd);
  int L = graph_layers(g, 0, lay);
  Summary all, s0, s1, sw;
  summarize(g, &all);
  Graph *whole = stage_graph(g, lay, 0, L - 1), *a = stage_graph(g, lay, 0, 0), *b = stage_graph(g, lay, 1, 1);
  summarize(whole, &sw), summarize(a, &s0), summarize(b, &s1);
  CHECK(sw.params == all.params && sw.flops_einsum_fwd == all.flops_einsum_fwd, "the whole span is the model");
  CHECK(whole->nodes[whole->loss]->op == OP_XENT, "with the real loss");
  int64_t wte = 256 * 128;
  CHECK(s0.params + s1.params == all.params + wte,
        "parameters split between the stages, the tied embedding in both: "
        "%lld + %lld vs %lld",
        (long long)s0.params, (long long)s1.params, (long long)all.params);
  CHECK(s0.flops_einsum_fwd + s1.flops_einsum_fwd == all.flops_einsum_fwd, "every einsum in exactly one stage");
  CHECK(b->nodes[b->loss]->op == OP_XENT && a->nodes[a->loss]->op == OP_MSE,
        "the last stage has the real loss, "
        "the first a stand-in for the gradient it receives");
  int recv = 0;
  for (int i = 0; i < b->n; i++) recv += strncmp(b->nodes[i]->name, "recv:", 5) == 0;
  CHECK(recv == 1, "the second stage receives one activation (%d)", recv);
  CHECK(graph_verify(a, stderr) && graph_verify(b, stderr), "stage graphs are well formed");
  CHECK(autodiff(a, 1, stderr) && autodiff(b, 1, stderr), "stage graphs differentiate");
  Cluster *c = cluster_load("dgx-a100", stderr);
  Mesh me;
  PlanOptions po = {.zero = -1, .batch_axis = -1, .time_limit = 30};
  CHECK(c && mesh_make(c, 1, 2, false, &me, stderr), "a 1x2 mesh");
  if (c) CHECK(plan_intra(a, c, &me, &po, stderr) && plan_intra(b, c, &me, &po, stderr), "both stages plan");
  free(lay);
}

/* On a cluster of 4 nodes of 8 (where the search adds balanced pipelines to
 * the DP), carve's plan is predicted at least as fast as every Megatron-style
 * plan of dp x tp x pp = 32 it can express, each at its best microbatch
 * count: the search space contains them all. */
static void test_versus_manual(void) {
  ElabOptions eo = {0};
  parse_sets("batch=64,seq=256,vocab=1024,hidden=1024,heads=16,layers=16", &eo.sets, &eo.nsets, stderr);
  Cluster *c = cluster_load("dgx-a100", stderr);
  CHECK(c && cluster_resize(c, 4, 0, stderr), "4 DGX A100 nodes");
  if (!c) return;
  PlanOptions po = {.zero = -1, .batch_axis = -1, .time_limit = 30, .mixed = true};
  PipelinePlan *best = plan_pipeline(model_resolve("gpt"), &eo, c, &po, 0, NULL, stderr);
  CHECK(best != NULL, "the automatic plan");
  static const int cfg[][3] = {{32, 1, 1}, {16, 2, 1}, {8, 4, 1}, {4, 8, 1},  {16, 1, 2}, {8, 2, 2},
                               {4, 4, 2},  {2, 8, 2},  {8, 1, 4}, {4, 2, 4},  {2, 4, 4},  {1, 8, 4},
                               {4, 1, 8},  {2, 2, 8},  {1, 4, 8}, {2, 1, 16}, {1, 2, 16}};
  int worse = 0, n = 0;
  for (size_t i = 0; best && i < sizeof cfg / sizeof cfg[0]; i++) {
    Manual m = {cfg[i][0], cfg[i][1], cfg[i][2], 0, SCHED_KINDS, 0, -1, NULL, 0, false, false};
    FILE *quiet = fopen("/dev/null", "w");
    PipelinePlan *mp = plan_manual(model_resolve("gpt"), &eo, c, &po, &m, quiet);
    fclose(quiet);
    if (!mp) continue;
    n++;
    if (best->step_s > mp->step_s * (1 + 1e-9)) {
      worse++;
      printf("  dp=%d tp=%d pp=%d mb=%d: %.6g s, carve's plan %.6g s\n", m.dp, m.tp, m.pp, mp->microbatches, mp->step_s,
             best->step_s);
    }
  }
  CHECK(n >= 10, "most manual plans fit (%d)", n);
  CHECK(worse == 0, "carve's plan is at least as fast as each of %d manual plans (%d are faster)", n, worse);
  if (best)
    printf("carve's plan: %d stages, %d microbatches, %.6g s per step\n", best->nstages, best->microbatches,
           best->step_s);
  free(eo.sets);
}

int main(void) {
  test_random();
  test_layers();
  test_stage_graphs();
  test_versus_manual();
  arena_reset();
  return test_summary();
}
