/* bench_planner.c: how long the intra-operator ILP takes, and how its size
 * grows with depth (it should not: repeated layers share variables).
 *
 * Cases: gpt3-175b shapes (hidden 12288, 96 heads, seq 2048, vocab 50257,
 * batch 8): 12 layers (a pipeline stage's share) on one DGX A100 node as 1x8,
 * and 12, 24, 48 and 96 layers on 16 nodes as 16x8; gpt2-1.5b on a 2x2 mesh
 * of one node. Each is planned 5
 * times after one warm-up; the table gives the median time of plan_intra
 * (building the problem, GLPK, assembling the plan) and of GLPK alone.
 * Targets: 12 layers on 1x8 under 1 s; 96 layers on 16x8 under 5 s. */
#include <stdlib.h>
#include <string.h>

#include "planner.h"

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void run(const char *preset, int layers, int nodes, int n0, int n1) {
  double total[5], solver[5];
  Plan *p = NULL;
  for (int r = -1; r < 5; r++) {
    Diag d;
    diag_init(&d, stderr);
    ElabOptions eo = {.preset = preset};
    char sets[64];
    snprintf(sets, sizeof sets, "layers=%d,batch=8", layers);
    parse_sets(sets, &eo.sets, &eo.nsets, stderr);
    Graph *g = frontend_load(model_resolve("gpt"), &eo, &d);
    free(eo.sets);
    if (!g || !autodiff(g, 1, stderr)) exit(1);
    Cluster *c = cluster_load("dgx-a100", stderr);
    if (!c || !cluster_resize(c, nodes, 0, stderr)) exit(1);
    Mesh me;
    PlanOptions po = {.zero = -1, .batch_axis = -1, .mixed = true, .time_limit = 60};
    if (!mesh_make(c, n0, n1, true, &me, stderr)) exit(1);
    double t0 = now_seconds();
    p = plan_intra(g, c, &me, &po, stderr);
    double t = now_seconds() - t0;
    if (!p) exit(1);
    if (r >= 0) total[r] = t, solver[r] = p->solve_s;
  }
  qsort(total, 5, sizeof(double), cmp);
  qsort(solver, 5, sizeof(double), cmp);
  printf("%-10s %6d %6s %6d %8d %8d %11d %9.3f %9.3f %8.3f %5d\n", preset, layers, arena_printf("%dx%d", n0, n1),
         p->groups, p->binaries, p->vars - p->binaries, p->constraints, total[2], solver[2], p->compute_s + p->comm_s,
         p->zero);
  arena_reset();
}

int main(int argc, char **argv) {
  carve_passive_threads(argv);
  (void)argc;
  printf("intra-operator ILP (carve %s), median of 5\n\n", CARVE_VERSION);
  printf("%-10s %6s %6s %6s %8s %8s %11s %9s %9s %8s %5s\n", "model", "layers", "mesh", "groups", "binary", "contin.",
         "constraints", "plan (s)", "GLPK (s)", "step (s)", "ZeRO");
  static const int depths[] = {12, 24, 48, 96};
  run("gpt3-175b", 12, 1, 1, 8); /* one pipeline stage's share of the layers */
  for (int i = 0; i < 4; i++) run("gpt3-175b", depths[i], 16, 16, 8);
  run("gpt2-1.5b", 48, 1, 2, 2);
  return 0;
}
