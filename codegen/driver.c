/* driver.c: the compile chain, written once, as a list of passes:
 *
 *   load -> check -> autodiff      frontend_training (frontend/load.c)
 *   -> plan                        plan_tp: tensor parallelism asked for by
 *                                  hand, planned on 1 x tp (a searched plan
 *                                  comes in through the Layout instead)
 *   -> codegen                     codegen (one rank) or codegen_ranks
 *
 * The commands (check, compile, plan) and the planner's searches enter the
 * chain here or at frontend_training; none writes it out again. It also
 * holds the one reading of layout text ("dp=2,tp=2,pp=2,mb=4,..."), parsed
 * by manual_parse (planner/pipeline.c), as a Layout. */
#include "planner.h"

Program *compile_program(const char *model_path, const ElabOptions *eo, const Train *t, uint64_t seed, Graph **graph,
                         FILE *err) {
  Front f = {.path = model_path, .eo = eo, .microbatches = t->microbatches, .scale = t->microbatches};
  Graph *g = frontend_training(&f, err);
  if (graph) *graph = g;
  return g ? codegen(g, t, seed) : NULL;
}

/* The plan pass of tensor parallelism by hand: one replica split over a
   1 x tp mesh, with only the strategies codegen lowers (PlanOptions.lowerable). */
const Plan *plan_tp(const Graph *g, int tp, FILE *err) {
  Cluster *cl = cluster_load("local", err);
  Mesh me;
  if (!cl || !cluster_resize(cl, 1, tp, err)) return NULL;
  /* communication priced near free: tp was asked for, so split whatever divides the work */
  cl->intra_bandwidth = cl->inter_bandwidth = 1e15, cl->intra_latency = cl->inter_latency = 0;
  if (!mesh_make(cl, 1, tp, false, &me, err)) return NULL;
  me.gemm_half = 1e-6; /* and products priced alike however narrow their splits: heads split as Megatron does */
  PlanOptions po = {.zero = 0,
                    .batch_axis = -1,
                    .time_limit = 60,
                    .quiet = true,
                    .lowerable = true,
                    .batch_not_axis1 = true,
                    .no_scatter = true}; /* sp=1 is lowered by the code generator's own rule (Layout.sp) */
  return plan_intra(g, cl, &me, &po, err);
}

bool compile_layout(const char *model_path, const ElabOptions *eo, const Train *t, uint64_t seed, const Layout *L,
                    RankSink each, void *ctx, FILE *err) {
  int64_t total = (int64_t)L->microbatches * layout_units(L);
  if (total < 1 || total > 1 << 20) {
    fprintf(err, "carve: error: %lld microbatches x replicas is out of range\n", (long long)total);
    return false;
  }
  /* one microbatch of one replica */
  Front f = {.path = model_path, .eo = eo, .microbatches = (int)total, .scale = (int)total};
  Graph *g = frontend_training(&f, err);
  if (!g) return false;
  Train tl = *t;
  tl.microbatches = L->microbatches;
  Layout with = *L;
  if (L->tp > 1 && !L->plans) {
    const Plan *pl = plan_tp(g, L->tp, err);
    if (!pl) return false;
    const Plan **plans = arena_alloc(sizeof(Plan *) * (size_t)(L->pp * L->v));
    for (int s = 0; s < L->pp * L->v; s++) plans[s] = pl;
    with.plans = plans;
  }
  return codegen_ranks(g, &tl, seed, &with, each, ctx, err);
}

/* Manual -> Layout: keys left out are one replica, one stage, no tensor
   parallelism, the given microbatches, 1F1B (two virtual stages per device
   when interleaved), ZeRO 0 and no recomputation. */
Layout layout_of_manual(const Manual *m, int microbatches) {
  Layout L = {.dp = m->dp ? m->dp : 1,
              .pp = m->pp ? m->pp : 1,
              .v = 1,
              .tp = m->tp ? m->tp : 1,
              .microbatches = m->mb ? m->mb : microbatches,
              .schedule = m->schedule == SCHED_KINDS ? SCHED_1F1B : m->schedule,
              .zero = m->zero < 0 ? 0 : m->zero,
              .recompute = m->recompute < 0 ? RC_NONE : m->recompute,
              .stage_dp = m->stage_dp,
              .sp = m->sp > 0};
  if (L.schedule == SCHED_INTERLEAVED) L.v = 2;
  return L;
}
