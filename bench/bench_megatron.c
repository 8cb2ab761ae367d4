/* bench_megatron.c: Megatron-LM's Table 1 (Narayanan et al., SC'21) in
 * carve's cost model. For each row (GPT, V = 51200, s = 2048, DGX A100 80GB
 * nodes of 8, their GPU count and batch):
 *   (b) Megatron's published (t, p, d) as a manual plan (microbatches of one
 *       sample per data-parallel replica, full recomputation, with a
 *       pipeline the interleaved 1F1B schedule, gradient all-reduce after
 *       the backward pass, no sequence parallelism: as they ran);
 *   (c) carve's predicted TFLOP/s per GPU for (b), counted their way
 *       (F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), recomputation included),
 *       against their measured figure, as a ratio;
 *   (a) carve's own automatic plan and its search time (CPU and wall), for
 *       the rows up to `--auto-max` GPUs (default: all of them).
 * With --breakdown, (b)'s predicted step is split, on the device that
 * finishes last, into what the model charges: products and other compute,
 * tensor-parallel collectives, recomputation, idle time in the pipeline
 * (bubble and exposed transfers) and the once-per-step tail (gradient sync
 * and optimizer update).
 * usage: bench_megatron [--auto-max N] [--rows a-b] [--breakdown] */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

typedef struct Row {
  const char *params;
  int heads, hidden, layers, t, p, gpus, batch;
  double measured; /* TFLOP/s per GPU */
} Row;

static const Row rows[] = {
    {"1.7B", 24, 2304, 24, 1, 1, 32, 512, 137},          {"3.6B", 32, 3072, 30, 2, 1, 64, 512, 138},
    {"7.5B", 32, 4096, 36, 4, 1, 128, 512, 142},         {"18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135},
    {"39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138},       {"76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140},
    {"145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148},    {"310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155},
    {"529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163}, {"1008B", 160, 25600, 128, 8, 64, 3072, 3072, 163},
};

/* Where (b)'s step goes, on the device that finishes last (seconds). */
static void breakdown(const PipelinePlan *mp) {
  int last = 0;
  for (int d = 0; d < mp->nstages; d++)
    if (mp->sim.busy_s[d] > mp->sim.busy_s[last]) last = d;
  const PipeStage *st = &mp->stages[last];
  double m = mp->microbatches, per_mb = st->plan->compute_s - st->update * plan_once_weight(&st->plan->opt);
  double compute = m * per_mb, tp = m * (st->t - per_mb), busy = mp->sim.busy_s[last], tail = 0;
  for (int d = 0; d < mp->nstages; d++) tail = fmax(tail, mp->stages[d].sync + mp->stages[d].update);
  double finish = mp->step_s - tail;
  printf("          %s v=%d m=%d stage %d: step %.3f = compute %.3f + tp comm %.3f + recompute %.3f + idle %.3f"
         " + tail %.3f (of it, update %.3f; p2p %.2f ms/mb)\n",
         sched_names[mp->schedule], mp->v, mp->microbatches, last, mp->step_s, compute, tp, busy - compute - tp,
         finish - busy, tail, st->update, mp->stages[0].p2p * 1e3);
}

static double flops96(const Row *r) {
  double B = r->batch, s = 2048, l = r->layers, h = r->hidden, V = 51200;
  return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h));
}

int main(int argc, char **argv) {
  carve_passive_threads(argv);
  int auto_max = 1 << 20, lo = 1, hi = 10;
  bool split = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--breakdown")) split = true;
    if (!strcmp(argv[i], "--auto-max") && i + 1 < argc) auto_max = atoi(argv[++i]);
    if (!strcmp(argv[i], "--rows") && i + 1 < argc) sscanf(argv[++i], "%d-%d", &lo, &hi);
  }
  printf("Megatron-LM Table 1 in carve's cost model (carve %s)\n\n", CARVE_VERSION);
  printf("%-7s %5s %3s %3s %4s | %9s %9s %6s %8s | %9s %8s %5s %8s %8s\n", "model", "GPUs", "t", "p", "d", "measured",
         "predicted", "ratio", "plan (s)", "carve", "vs (b)", "stages", "cpu (s)", "wall (s)");
  for (int i = lo - 1; i < hi && i < 10; i++) {
    const Row *r = &rows[i];
    int d = r->gpus / (r->t * r->p);
    char sets[160];
    snprintf(sets, sizeof sets, "batch=%d,seq=2048,vocab=51200,hidden=%d,heads=%d,layers=%d", r->batch, r->hidden,
             r->heads, r->layers);
    ElabOptions eo = {0};
    parse_sets(sets, &eo.sets, &eo.nsets, stderr);
    Cluster *c = cluster_load("dgx-a100", stderr);
    if (!c || !cluster_resize(c, r->gpus / 8, 0, stderr)) return 1;
    PlanOptions po = {.zero = 0, .batch_axis = -1, .mixed = true, .time_limit = 60};
    /* as Megatron ran it: full recomputation, and the data-parallel gradient
       all-reduce after the backward pass (Megatron-LM overlapped it only
       from 2023, with --overlap-grad-reduce: NVIDIA/Megatron-LM issues 391
       and 456); with a pipeline, the interleaved 1F1B schedule (section 5.1);
       no sequence parallelism (sp=0: it came with Korthikanti et al., 2022) */
    SchedKind sched = r->p > 1 ? SCHED_INTERLEAVED : SCHED_KINDS;
    Manual m = {d, r->t, r->p, r->batch / d, sched, 0, RC_FULL, NULL, 0, true, -1};
    double t0 = now_seconds();
    PipelinePlan *mp = plan_manual(model_resolve("gpt"), &eo, c, &po, &m, stderr);
    double tm = now_seconds() - t0;
    double pred = mp ? flops96(r) / mp->step_s / r->gpus * 1e-12 : 0;
    printf("%-7s %5d %3d %3d %4d | %9.0f %9.1f %6.2f %8.1f |", r->params, r->gpus, r->t, r->p, d, r->measured, pred,
           pred / r->measured, tm);
    if (split) {
      printf("\n");
      if (mp) breakdown(mp);
    } else if (r->gpus <= auto_max) {
      PlanOptions pa = {.zero = -1, .batch_axis = -1, .mixed = true, .time_limit = 60};
      t0 = now_seconds();
      double c0 = cpu_seconds();
      PipelinePlan *ap = plan_pipeline(model_resolve("gpt"), &eo, c, &pa, 0, NULL, stderr);
      double ta = now_seconds() - t0, tc = cpu_seconds() - c0;
      if (ap)
        printf(" %9.1f %7.2fx %5d %8.1f %8.1f\n", flops96(r) / ap->step_s / r->gpus * 1e-12,
               mp ? mp->step_s / ap->step_s : 0, ap->nstages, tc, ta);
      else
        printf(" %9s\n", "no plan");
    } else {
      printf(" %9s\n", "-");
    }
    fflush(stdout);
    free(eo.sets);
    arena_reset();
  }
  printf("\npredicted: carve's TFLOP/s per GPU for Megatron's plan, counted with the 96-factor formula;\n"
         "ratio = predicted / measured; carve: its own plan's TFLOP/s the same way; vs (b): (b)'s step / carve's;\n"
         "cpu, wall: the search's CPU time (this process, user and system) and wall-clock time.\n");
  return 0;
}
