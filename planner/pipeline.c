/* pipeline.c: the whole plan. For each microbatch count B (every divisor
 * of the batch, powers of two first, or the count asked for), the model is
 * elaborated at batch / B; its layers (repeat iterations) are grouped into
 * at most MAXGROUPS groups; every span of groups on every submesh (1, 2, ...
 * devices of a node that divide it, as a 1 x k mesh, or n whole nodes as an
 * n x devices-per-node mesh; beyond 8 nodes only whole nodes, n dividing the
 * node count) gets the intra-operator plan of its stage graph
 * (planner/stages.c), with memory for the activations of as many
 * microbatches as a 1F1B pipeline keeps in flight at most (min(B, devices /
 * stage devices)). The stage ILP sees one microbatch: its gradient syncs
 * and its optimizer update, which happen once per step, weigh 1 / (B + s -
 * 1) in its objective, the step's length in its microbatch times under 1F1B
 * with s equal stages (s: the in-flight count above, the stages a 1F1B
 * pipeline of such stages would have); a stage's time per microbatch is the
 * objective less that share, and the sync and update are paid once per
 * step. The stage DP picks spans and submeshes; the schedule is simulated
 * with those times and with point-to-point transfers of the stage
 * boundaries; the best B wins. The search is pruned by bounds, not capped:
 * a step takes at least B times a stage's objective (its B microbatches
 * and its sync), so once a plan is found, a stage whose FLOPs alone, its
 * cheapest strategies, or its ILP's LP bound rule that out is dropped
 * unsolved or mid-solve. The DP itself is run on lower bounds (FLOPs at the
 * cost model's rate) for the stages not yet planned, and plans only the
 * stages of the plan it picks, until that plan's stages are all planned
 * (known_cost): the same optimum, with far fewer stage plans. The ILPs of
 * one search warm-start from the last basis of the same structure
 * (plan_warm_starts).
 *
 * On clusters of more than 16 devices the DP is restricted (composed span
 * costs, whole nodes, at most MAXGROUPS stages), so the search also tries
 * balanced pipelines: p equal stages on equal submeshes, for every p and
 * every microbatch count that divides the batch, in the order of a lower
 * bound and cut off by it (balanced_search). Stage plans made once are
 * shared across the whole search (Cache).
 *
 * The schedule is chosen last, by simulation, among GPipe, 1F1B, interleaved
 * 1F1B (two chunks per device) and ZB-H1, as the fastest whose in-flight
 * activations fit in memory.
 *
 * Simplifications (stated so that the next pass can remove them): the
 * backward pass is taken as twice the forward in the simulation (ZB-H1: the
 * input and weight gradients one forward each); an interleaved chunk is half
 * of its stage's work; recomputation is not searched. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "planner.h"

#define MAXGROUPS 8
#define MAXSUB 32
/* Branch-and-bound nodes a stage plan of the search may use. Almost every
 * stage ILP is solved to optimality in a few dozen; under tight memory a few
 * run on for minutes with a gap of 5-15% that closes slowly, and then the
 * best plan found after this many nodes (a fraction of a second) is kept. */
#define STAGE_NODE_LIMIT 100
#define MAXSTAGES 128 /* stages of a balanced pipeline */

typedef struct Sub {
  int nodes, per_node, devices;
} Sub;

/* Stage plans already made in this search, by the stage graph's signature,
 * the submesh and the in-flight microbatches: the DP at each microbatch
 * count and the balanced pipelines ask for many of the same. */
typedef struct Cached {
  uint64_t key;
  const Plan *plan; /* NULL: does not fit */
  double t, sync, mem;
} Cached;

typedef struct Cache {
  Cached *e;
  int n, cap;
} Cache;

typedef struct Ctx {
  const Graph *g;
  Cache *cache;
  int *group; /* forward node -> group */
  int G;
  int *first_layer, *last_layer; /* per group */
  const Cluster *cl;
  const PlanOptions *po;
  Sub sub[MAXSUB];
  int nsub, D, B;
  int unit;               /* devices per unit the stage DP counts: 1, or a node */
  int64_t batch;          /* the step's batch (0: none) */
  double cutoff;          /* the best step found so far, 0 if none: a stage B times slower cannot help */
  bool compose;           /* search with composed span costs (large clusters) */
  double *t, *sync, *mem; /* [i][j][k] cache; NAN: not yet */
  double *flops;          /* [i][j]: a span's einsum FLOPs per microbatch (stage_flops); NAN: not yet */
  uint64_t *sig;          /* [i][j]: a span's stage graph signature (signature); 0: not yet */
  const Plan **plan;
  int ilps;
} Ctx;

static size_t idx(const Ctx *c, int i, int j, int k) {
  return ((size_t)i * (size_t)c->G + (size_t)j) * (size_t)c->nsub + (size_t)k;
}

/* A stage plan's time per microbatch, its sync per step (beside the last
 * backward pass, or at the end) and its memory. The plan's objective holds
 * plan_once_weight of the sync and of the optimizer update (Plan.update_s,
 * paid once at the end). */
static void stage_costs(const Plan *p, double *t, double *sync, double *mem) {
  *sync = plan_sync_s(p);
  *mem = p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts;
  *t = p->microbatch_s;
}

/* The step's length in a stage's microbatch times, which weighs its
 * once-per-step costs (PlanOptions.step_mbs): B microbatches and the
 * bubble of 1F1B with `stages` equal stages (stages - 1 of them). ZB-H1 and
 * the interleaved schedule have less bubble; weighing by 1F1B's step keeps
 * the stage plans from trading microbatch time for once-per-step time that
 * a shorter bubble would not repay. */
static double step_mbs(int B, int stages) { return B + (stages > 1 ? stages - 1 : 0); }

/* A stage graph's structure, up to the layer numbers in its names: spans of
 * identical layers get the same signature, so their plans are shared. */
static uint64_t signature(const Graph *g) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    int64_t v[4 + MAXRANK + MAXIN];
    int m = 0;
    v[m++] = n->op, v[m++] = n->dtype, v[m++] = n->shape.rank, v[m++] = n->nin;
    for (int d = 0; d < n->shape.rank; d++) v[m++] = n->shape.d[d];
    for (int k = 0; k < n->nin; k++) v[m++] = i - n->in[k];
    h = hash_bytes(v, sizeof(int64_t) * (size_t)m, h);
    h = hash_bytes(n->labels, sizeof n->labels, h);
    h = hash_bytes(n->i, sizeof n->i, h);
    h = hash_bytes(n->f, sizeof n->f, h);
    for (const char *q = n->name; *q; q++) /* the name with its digits left out */
      if (*q < '0' || *q > '9') h = hash_bytes(q, 1, h);
    if (g->copies && i < g->nfwd) h = hash_bytes(&g->copies[i], sizeof(int), h);
    if (g->copied_before && i < g->nfwd) h = hash_bytes(&g->copied_before[i], sizeof(bool), h);
  }
  return h;
}

/* Einsum FLOPs of a stage graph per microbatch as the cost model counts
 * them: the forward, and one more product per input whose gradient is
 * needed (it depends on a parameter or on the stage before's activation). */
static double stage_flops(const Graph *sg) {
  bool *dep = arena_alloc(sizeof(bool) * (size_t)sg->n);
  double flops = 0;
  for (int v = 0; v < sg->n; v++) {
    const Node *n = sg->nodes[v];
    int ngrad = 0;
    dep[v] = n->op == OP_PARAM || (n->op == OP_INPUT && n->init == SRC_STAGE);
    for (int k = 0; k < n->nin; k++) dep[v] |= dep[n->in[k]], ngrad += dep[n->in[k]];
    if (n->op == OP_EINSUM) flops += node_flops(sg, n) * (1 + ngrad);
  }
  return flops;
}

/* A lower bound on a stage's time per microbatch, without solving: its
 * FLOPs on its devices at the cost model's best rate. -1 when the stage
 * cannot be used: on large clusters a node of it would get less than a
 * sample, or B microbatches at that rate already take the best step found. */
static double stage_bound(Ctx *c, int i, int j, int k) {
  if (c->D > 16 && c->batch > 0 && c->batch / c->B < c->sub[k].nodes)
    return -1; /* large clusters: each node of a stage gets a sample at least (see balanced_search) */
  double *f = &c->flops[i * c->G + j];
  if (isnan(*f)) *f = stage_flops(stage_graph(c->g, c->group, i, j));
  double peak = c->po->mixed && c->cl->flops_bf16 > 0 ? c->cl->flops_bf16 : c->cl->flops_f32;
  double t = *f / (gemm_best_efficiency(c->cl, c->po->mixed) * peak * c->sub[k].devices);
  return c->cutoff > 0 && c->B * t >= c->cutoff ? -1 : t;
}

/* The link between a stage and the other stages' copies of a tied parameter
   (Mesh.copy_bw): the first and the last stage of `devices` (a tied
   embedding's holders) are on different nodes once they fill more than one. */
static void copies_link(Mesh *me, const Cluster *cl, int devices) {
  bool inter = devices > cl->devices_per_node;
  me->copy_bw = inter ? cl->inter_bandwidth : cl->intra_bandwidth;
  me->copy_lat = inter ? cl->inter_latency : cl->intra_latency;
}

static double exact_cost(Ctx *c, int i, int j, int k) {
  size_t x = idx(c, i, j, k);
  if (!isnan(c->t[x])) return c->t[x];
  if (stage_bound(c, i, j, k) < 0) return c->t[x] = -1; /* no solve needed to rule it out */
  int most = c->D / c->sub[k].devices;                  /* stages a pipeline could still have */
  int inflight = c->B < most ? c->B : most;
  Graph *sg = NULL;
  uint64_t *sig = &c->sig[i * c->G + j]; /* a cached span needs no graph: its signature is kept */
  if (!*sig) {
    sg = stage_graph(c->g, c->group, i, j);
    *sig = signature(sg) | 1;
  }
  int64_t what[4] = {c->sub[k].nodes, c->sub[k].per_node, inflight, c->B};
  uint64_t key = hash_bytes(what, sizeof what, *sig);
  for (int y = 0; y < c->cache->n; y++) {
    const Cached *e = &c->cache->e[y];
    if (e->key == key) { /* an identical span on the same submesh */
      c->plan[x] = e->plan, c->sync[x] = e->sync, c->mem[x] = e->mem;
      return c->t[x] = e->t;
    }
  }
  if (!sg) sg = stage_graph(c->g, c->group, i, j);
  Cluster sub = *c->cl;
  sub.nodes = c->sub[k].nodes;
  sub.devices_per_node = c->sub[k].per_node;
  PlanOptions po = *c->po;
  po.inflight = inflight;
  po.microbatches = c->B;
  po.step_mbs = step_mbs(c->B, inflight); /* as many stages as its in-flight microbatches assume */
  po.quiet = true;
  po.node_limit = STAGE_NODE_LIMIT;
  /* the step is at least B times the stage's objective (B microbatches of
     its time, and its sync): a stage plan that cannot get below the best
     step over B is of no use, and its solve stops once that is proved */
  po.cutoff = c->cutoff > 0 ? c->cutoff / c->B * (1 + 1e-6) : 0;
  FILE *quiet = fopen("/dev/null", "w");
  const Plan *p = NULL;
  /* a part of a node is a 1 x k mesh; whole nodes are nodes x devices-per-node,
     axis 0 across nodes and axis 1 inside them */
  Mesh me;
  if (autodiff(sg, 1, quiet) && mesh_make(&sub, sub.nodes, sub.devices_per_node, po.mixed, &me, quiet)) {
    copies_link(&me, c->cl, c->D);
    p = plan_intra(sg, &sub, &me, &po, quiet);
    if (!p && !plan_last_cut() && po.inflight > 1) { /* room for one microbatch only: recomputation may fit it */
      po.inflight = 1;
      p = plan_intra(sg, &sub, &me, &po, quiet);
    }
  }
  fclose(quiet);
  c->ilps++;
  c->plan[x] = p;
  c->t[x] = -1;
  if (p) stage_costs(p, &c->t[x], &c->sync[x], &c->mem[x]);
  Cache *cc = c->cache;
  if (cc->n == cc->cap) {
    cc->cap = cc->cap ? 2 * cc->cap : 256;
    Cached *e = arena_alloc(sizeof(Cached) * (size_t)cc->cap);
    if (cc->n) memcpy(e, cc->e, sizeof(Cached) * (size_t)cc->n);
    cc->e = e;
  }
  cc->e[cc->n++] = (Cached){key, p, c->t[x], c->sync[x], c->mem[x]};
  return c->t[x];
}

/* On large clusters the DP searches with composed costs: a span's time,
 * sync and memory are the sums of its groups' own plans (one ILP per group
 * and submesh instead of one per span); the stages it picks are then planned
 * exactly (assemble). Small clusters plan every span exactly. */
static double span_cost(void *vctx, int i, int j, int k) {
  Ctx *c = vctx;
  if (!c->compose || i == j) return exact_cost(c, i, j, k);
  size_t x = idx(c, i, j, k);
  if (!isnan(c->t[x])) return c->t[x];
  double t = 0, sync = 0, mem = 0;
  for (int q = i; q <= j; q++) {
    double tq = exact_cost(c, q, q, k);
    if (tq < 0) return c->t[x] = -1;
    size_t y = idx(c, q, q, k);
    t += tq, sync += c->sync[y], mem += c->mem[y];
  }
  c->sync[x] = sync, c->mem[x] = mem, c->plan[x] = NULL;
  return c->t[x] = mem > c->cl->memory ? -1 : t;
}

/* What the stage DP is told of a stage before it is planned: its lower
 * bound (stage_bound; a composed span: its groups' costs or bounds), and
 * once planned, its cost. The DP is run on these until the stages it picks
 * are all planned: a plan it then returns is optimal for the planned costs
 * too, since every other plan's total is at least its total under the
 * bounds. So only stages of plans that could still win are ever solved. */
static double known_cost(void *vctx, int i, int j, int k) {
  Ctx *c = vctx;
  size_t x = idx(c, i, j, k);
  if (!isnan(c->t[x])) return c->t[x];
  if (!c->compose || i == j) return stage_bound(c, i, j, k);
  double t = 0;
  bool planned = true;
  for (int q = i; q <= j; q++) {
    double tq = known_cost(c, q, q, k);
    if (tq < 0) return -1;
    t += tq, planned &= !isnan(c->t[idx(c, q, q, k)]);
  }
  return planned ? span_cost(c, i, j, k) : t;
}

/* Plans the stages the DP picked that are not planned yet; true if all
 * already were. */
static bool all_planned(Ctx *c, const Stage *st, int ns) {
  bool all = true;
  for (int s = 0; s < ns; s++)
    if (isnan(c->t[idx(c, st[s].first, st[s].last, st[s].submesh)]))
      span_cost(c, st[s].first, st[s].last, st[s].submesh), all = false;
  return all;
}

/* TFLOP/s per device and MFU of a finished plan (model FLOPs over the step). */
static void throughput(PipelinePlan *p, const PlanOptions *po) {
  const Cluster *cl = p->cluster;
  double peak = po->mixed && cl->flops_bf16 > 0 ? cl->flops_bf16 : cl->flops_f32;
  p->tflops_per_device = p->model_flops / p->step_s / p->devices * 1e-12;
  p->mfu = p->model_flops / p->step_s / p->devices / peak;
}

/* Submeshes: the parts of a node that divide it, and whole nodes. On large
 * clusters (more than 8 nodes) only whole nodes, in counts that divide the
 * node count, so that the DP counts nodes instead of devices. */
static void submeshes(Ctx *c) {
  int dpn = c->cl->devices_per_node, N = c->cl->nodes;
  if (N <= 8) {
    for (int k = 1; k <= dpn && c->nsub < MAXSUB; k++)
      if (dpn % k == 0) c->sub[c->nsub++] = (Sub){1, k, k};
    for (int n = 2; n <= N && c->nsub < MAXSUB; n++) c->sub[c->nsub++] = (Sub){n, dpn, n * dpn};
    c->unit = 1;
    return;
  }
  for (int n = 1; n <= N && c->nsub < MAXSUB; n++)
    if (N % n == 0) c->sub[c->nsub++] = (Sub){n, dpn, n * dpn};
  c->unit = dpn;
}

/* The training graph of one of B microbatches (the compile chain's front,
   frontend_training). */
static Graph *load_at(const char *path, const ElabOptions *eo, int B, FILE *err) {
  return frontend_training(&(Front){.path = path, .eo = eo, .microbatches = B}, err);
}

/* Groups of consecutive layers, at most `most`. */
static void group_layers(Ctx *c, int L, const int *layer_of, int most) {
  c->G = L < most ? L : most;
  c->group = arena_alloc(sizeof(int) * (size_t)(c->g->nfwd + 1));
  c->first_layer = arena_alloc(sizeof(int) * (size_t)c->G);
  c->last_layer = arena_alloc(sizeof(int) * (size_t)c->G);
  for (int q = 0; q < c->G; q++) c->first_layer[q] = L, c->last_layer[q] = -1;
  for (int i = 0; i < c->g->nfwd; i++) {
    int q = layer_of[i] * c->G / L;
    c->group[i] = q;
    if (layer_of[i] < c->first_layer[q]) c->first_layer[q] = layer_of[i];
    if (layer_of[i] > c->last_layer[q]) c->last_layer[q] = layer_of[i];
  }
}

/* Bytes a stage sends to the next per microbatch: what the next one receives. */
static double boundary_bytes(const Graph *g, const int *layer_of, int first, int last, bool mixed) {
  Graph *sg = stage_graph(g, layer_of, first, last);
  double b = 0;
  for (int i = 0; i < sg->n; i++)
    if (!strncmp(sg->nodes[i]->name, "recv:", 5)) b += (double)shape_numel(&sg->nodes[i]->shape) * (mixed ? 2 : 4);
  return b;
}
/* Per-stage times of schedule `kind` with v chunks: the forward, input-
 * gradient and weight-gradient shares of a stage's time as its plan's cost
 * model counts them (a third each when unknown: a plan read from JSON
 * without them); ZB-H1 runs the weight gradients apart (W). An interleaved
 * chunk does 1/v of its stage and passes its boundary on like the stage does. */
static void stage_fractions(const PipeStage *st, double *ff, double *wf) {
  bool known = st->plan ? st->plan->fwd_frac > 0 : st->fwd_frac > 0;
  *ff = !known ? 1.0 / 3 : st->plan ? st->plan->fwd_frac : st->fwd_frac;
  *wf = !known ? 1.0 / 3 : st->plan ? st->plan->wgrad_frac : st->wgrad_frac;
}

/* Layers of chunk c of a stage under v chunks: its layers split as evenly
   as they go, the larger chunks first. */
static int chunk_layers(const PipeStage *st, int v, int c) {
  int n = st->last - st->first + 1;
  return n / v + (c < n % v);
}

/* Each virtual stage's last layer (PipelinePlan.chunk_last): the layers run
   through the virtual stages in order, each stage's in its chunks. */
static int *chunk_spans(const PipelinePlan *pp) {
  int p = pp->nstages, S = p * pp->v, end = -1;
  int *last = arena_alloc(sizeof(int) * (size_t)S);
  for (int vs = 0; vs < S; vs++) last[vs] = end += chunk_layers(&pp->stages[vs % p], pp->v, vs / p);
  return last;
}

const char *pipeline_stage_layers(const PipelinePlan *p, int d) {
  const PipeStage *st = &p->stages[d];
  if (p->v == 1 || !p->chunk_last) return arena_printf("%d-%d", st->first, st->last);
  const char *s = "";
  for (int c = 0; c < p->v; c++) {
    int vs = c * p->nstages + d, first = vs ? p->chunk_last[vs - 1] + 1 : 0;
    s = arena_printf("%s%s%d-%d", s, c ? "," : "", first, p->chunk_last[vs]);
  }
  return s;
}

static bool sim_input_rc(const PipelinePlan *pp, SchedKind kind, int v, const int *rc, SimInput *in, FILE *err) {
  int p = pp->nstages, S = p * v;
  Schedule *sched = schedule_make(kind, p, pp->microbatches, v, err);
  if (!sched) return false;
  double *tf = arena_alloc(sizeof(double) * (size_t)S), *tb = arena_alloc(sizeof(double) * (size_t)S);
  double *tw = arena_alloc(sizeof(double) * (size_t)S), *p2p = arena_alloc(sizeof(double) * (size_t)S);
  double tail = 0, link = 0, *sync = arena_alloc(sizeof(double) * (size_t)S);
  int *buckets = arena_alloc(sizeof(int) * (size_t)S);
  for (int d = 0; d < p; d++) link = fmax(link, pp->stages[d].p2p);
  for (int vs = 0; vs < S; vs++) {
    const PipeStage *st = &pp->stages[vs % p];
    double t = st->t / v;
    double ff, wf;
    stage_fractions(st, &ff, &wf);
    tf[vs] = ff * t;
    int mode = rc[vs % p];
    double reread = st->plan ? st->plan->reread_s / v : 0; /* a recomputing task's forward does it */
    double again = mode == RC_FULL        ? fmax(0, tf[vs] - reread)
                   : mode == RC_SELECTIVE ? st->sel_t / v
                                          : 0; /* re-run (part of) the forward */
    tb[vs] = (kind == SCHED_ZB_H1 ? (1 - ff - wf) * t : (1 - ff) * t) + again;
    tw[vs] = wf * t;
    p2p[vs] = vs % p == p - 1 ? link : st->p2p; /* a chunk's last device hands on to device 0 */
    /* without ZeRO the gradients are all-reduced a layer at a time beside
       the backward pass (unless the run is serial); ZeRO's reduce-scatters
       and gathers come after it */
    bool overlaps = (!st->plan || st->plan->zero == 0) && !pp->serial_comm;
    sync[vs] = overlaps ? st->sync / v : 0;
    buckets[vs] = chunk_layers(st, v, vs / p);
    tail = fmax(tail, (overlaps ? 0 : st->sync) + st->update); /* the optimizer update follows the sync */
  }
  *in = (SimInput){.sched = sched,
                   .t_f = tf,
                   .t_b = tb,
                   .t_w = tw,
                   .t_p2p = p2p,
                   .t_tail = tail,
                   .t_sync = sync,
                   .sync_buckets = buckets,
                   .overlap_cost = pp->cluster ? pp->cluster->overlap_cost : 0,
                   .blocking_p2p = pp->serial_comm};
  return true;
}

bool pipeline_sim_input(const PipelinePlan *p, SimInput *in, FILE *err) {
  int *rc = arena_alloc(sizeof(int) * (size_t)p->nstages);
  for (int d = 0; d < p->nstages; d++) rc[d] = p->stages[d].recompute;
  return sim_input_rc(p, p->schedule, p->v, rc, in, err);
}

const char *pipeline_recompute(const PipelinePlan *p) {
  for (int d = 1; d < p->nstages; d++)
    if (p->stages[d].recompute != p->stages[0].recompute) return "per stage";
  return rc_names[p->stages[0].recompute];
}

/* What selective recomputation saves and costs on stage d, per microbatch
   and device: the attention probabilities it does not keep, and the time to
   remake them (products at their efficiency, gemm.c; other ops at 80% of memory bandwidth). */
static double einsum_efficiency(const Plan *pl, const Graph *g, const Node *n, int shards) {
  if (n->nin != 2) return PEAK_FRACTION;
  GemmShape s = node_gemm_shape(g, n, shards);
  return gemm_efficiency(&pl->mesh, &s);
}

static void selective_cost(PipelinePlan *pp, int d) {
  PipeStage *st = &pp->stages[d];
  const Plan *pl = st->plan;
  const Graph *g = pl->g;
  const Cluster *cl = pp->cluster;
  bool *sel = selective_nodes(g);
  double peak = pl->opt.mixed && cl->flops_bf16 > 0 ? cl->flops_bf16 : cl->flops_f32, elem = pl->opt.mixed ? 2 : 4;
  st->sel_bytes = st->sel_t = 0;
  for (int i = 0; i < g->nfwd; i++) {
    if (!sel[i]) continue;
    const Node *n = g->nodes[i];
    int shards = 1;
    for (int k = 0; k < pl->layout[i].rank; k++)
      shards *= (pl->layout[i].d[k] & 1 ? pl->mesh.n[0] : 1) * (pl->layout[i].d[k] & 2 ? pl->mesh.n[1] : 1);
    double bytes = (double)shape_numel(&n->shape) * elem / shards;
    if (n->op == OP_SOFTMAX) st->sel_bytes += bytes; /* what the backward would have kept */
    st->sel_t += n->op == OP_EINSUM ? node_flops(g, n) / shards / (einsum_efficiency(pl, g, n, shards) * peak)
                                    : 2 * bytes / (PEAK_FRACTION * cl->mem_bandwidth);
  }
}

/* The schedule that is fastest within memory; false if none fits. */
/* Memory of stage d under a schedule keeping `inflight` microbatches: with
 * full recomputation a stage keeps only its input per microbatch, plus one
 * microbatch's activations while it recomputes. */
static double stage_memory(const PipelinePlan *pp, int d, double inflight, int mode) {
  const Plan *pl = pp->stages[d].plan;
  double per_mb = pl->mem_acts / (pl->opt.inflight > 1 ? pl->opt.inflight : 1);
  double input = d > 0 ? pp->stages[d - 1].p2p_bytes : 0, sel = fmin(pp->stages[d].sel_bytes, per_mb);
  double acts = mode == RC_FULL        ? input * inflight + per_mb
                : mode == RC_SELECTIVE ? (per_mb - sel) * inflight + sel
                                       : per_mb * inflight;
  return pl->mem_params + pl->mem_grads + pl->mem_optim + acts + pp->cluster->workspace;
}

/* Whether every one of v chunks of every stage gets a layer of its own. */
static bool chunks_fit(const PipelinePlan *pp, int v) {
  for (int d = 0; d < pp->nstages; d++)
    if (pp->stages[d].last - pp->stages[d].first + 1 < v) return false;
  return pp->layers >= pp->nstages * v;
}

/* The schedule and each stage's recomputation that are fastest within
 * memory; false if nothing fits. `only` fixes the schedule (SCHED_KINDS:
 * any), `rc` the recomputation of every stage (-1: per stage, the cheapest
 * that fits: none, then selective, then full). */
static bool choose_schedule(PipelinePlan *pp, double device_memory, SchedKind only, int rc, FILE *err) {
  static const SchedKind kinds[] = {SCHED_1F1B, SCHED_GPIPE, SCHED_INTERLEAVED, SCHED_ZB_H1};
  bool found = false, why = false; /* why: the one schedule asked for cannot run, and the error says why */
  FILE *quiet = fopen("/dev/null", "w");
  int p = pp->nstages, *mode = arena_alloc(sizeof(int) * (size_t)p);
  double *inflight = arena_alloc(sizeof(double) * (size_t)p);
  for (int d = 0; d < p; d++) selective_cost(pp, d);
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    if (only != SCHED_KINDS && kinds[i] != only) continue;
    int v = kinds[i] == SCHED_INTERLEAVED ? 2 : 1;
    if (v > 1 && !chunks_fit(pp, v)) {
      if (only != SCHED_KINDS)
        fprintf(err,
                "carve: error: the interleaved schedule gives each stage %d chunks of at least a layer, but %d "
                "layers over %d stages leave a stage fewer\n",
                v, pp->layers, p);
      why = only != SCHED_KINDS;
      continue;
    }
    Schedule *sched = schedule_make(kinds[i], p, pp->microbatches, v, only != SCHED_KINDS ? err : quiet);
    if (!sched) {
      why = only != SCHED_KINDS;
      continue;
    }
    bool fits = true;
    for (int d = 0; d < p && fits; d++) {
      inflight[d] = kinds[i] == SCHED_ZB_H1 ? fmin(p, pp->microbatches) : (double)schedule_max_inflight(sched, d) / v;
      mode[d] = -1;
      for (int m = RC_NONE; m < RC_KINDS && mode[d] < 0; m++) {
        if (rc >= 0 && m != rc) continue;
        if (m == RC_SELECTIVE && pp->stages[d].sel_bytes <= 0 && rc < 0) continue; /* nothing to drop */
        if (stage_memory(pp, d, inflight[d], m) <= device_memory) mode[d] = m;
      }
      fits = mode[d] >= 0;
    }
    SimInput in;
    SimResult r;
    if (!fits || !sim_input_rc(pp, kinds[i], v, mode, &in, quiet) || !simulate(&in, &r, quiet)) continue;
    if (!found || r.step_s < pp->step_s * (1 - 1e-9)) { /* a tie (rounding) keeps the simpler schedule */
      found = true;
      pp->schedule = kinds[i], pp->v = v, pp->sim = r, pp->step_s = r.step_s, pp->bubble = r.bubble;
      for (int d = 0; d < p; d++) { /* the memory at the schedule's peak */
        pp->stages[d].recompute = mode[d];
        pp->stages[d].memory = stage_memory(pp, d, inflight[d], mode[d]);
      }
    }
  }
  fclose(quiet);
  if (!found && !why)
    fprintf(err, "carve: error: no schedule fits the stages' activations in memory, even with recomputation\n");
  pp->chunk_last = found && pp->v > 1 ? chunk_spans(pp) : NULL;
  return found;
}

/* Collectives to add to (count > 0) or take from (count < 0) a stage's plan, each of every microbatch, with
   their seconds (t, signed; of a phase: forward or not). */
typedef struct Adds {
  Comm *c;
  double *t;
  bool *again; /* a backward reshard of a forward value (Plan.reread_s: a recomputed forward does it) */
  int n, cap;
} Adds;

/* A reshard of `bytes` on stage plan pl, added to a (sign -1: taken away). */
static void reshard_to(Adds *a, const Plan *pl, const Spec *src, const Spec *dst, double bytes, CommPhase ph,
                       const char *what, int sign, bool again) {
  Comm got[8];
  int n = 0;
  plan_reshard(pl, src, dst, bytes, ph, what, got, &n, 8);
  for (int k = 0; k < n; k++) {
    if (a->n == a->cap) {
      a->cap = 2 * a->cap + 8;
      Comm *c = arena_alloc(sizeof(Comm) * (size_t)a->cap);
      double *t = arena_alloc(sizeof(double) * (size_t)a->cap);
      bool *g = arena_alloc(sizeof(bool) * (size_t)a->cap);
      if (a->n) {
        memcpy(c, a->c, sizeof(Comm) * (size_t)a->n);
        memcpy(t, a->t, sizeof(double) * (size_t)a->n);
        memcpy(g, a->again, sizeof(bool) * (size_t)a->n);
      }
      a->c = c, a->t = t, a->again = g;
    }
    a->c[a->n] = got[k];
    a->c[a->n].count = sign;
    a->again[a->n] = again;
    a->t[a->n++] = sign * comm_time(&pl->mesh, &got[k], NULL);
  }
}

/* Whether two collectives are of one kind, group, phase and size, and move the same tensor up to layer
   numbers. */
static bool like_comm(const Comm *a, const Comm *b) {
  return a->kind == b->kind && a->axes == b->axes && a->phase == b->phase && a->bytes == b->bytes &&
         same_but_numbers(a->what ? a->what : "", b->what ? b->what : "");
}

/* Stage s's plan, copied once it gets the boundary collectives a: each added to or taken from the plan's
   own of its kind and tensor (up to layer numbers), else listed apart (one to take away that the plan
   does not list is left, its seconds too). */
static void add_boundary(PipeStage *st, const Adds *a) {
  Plan *p = arena_alloc(sizeof(Plan));
  *p = *st->plan;
  p->comms = arena_alloc(sizeof(Comm) * (size_t)(p->ncomms + a->n + 1));
  memcpy(p->comms, st->plan->comms, sizeof(Comm) * (size_t)p->ncomms);
  double dt = 0, fwd = 0;
  for (int k = 0; k < a->n; k++) {
    const Comm *c = &a->c[k];
    int j = 0;
    while (j < p->ncomms && !(like_comm(&p->comms[j], c) && !p->comms[j].once && p->comms[j].count > 0)) j++;
    if (j < p->ncomms)
      p->comms[j].count += c->count;
    else if (c->count > 0)
      p->comms[p->ncomms++] = *c;
    else
      continue;
    dt += a->t[k], fwd += c->phase == PHASE_FORWARD ? a->t[k] : 0;
    p->reread_s += a->again[k] ? a->t[k] : 0;
  }
  int kept = 0; /* those taken away to none */
  for (int j = 0; j < p->ncomms; j++)
    if (p->comms[j].count > 0) p->comms[kept++] = p->comms[j];
  p->ncomms = kept;
  double t = p->microbatch_s;
  p->microbatch_s += dt, p->comm_s += dt;
  if (p->microbatch_s > 0) p->fwd_frac = (p->fwd_frac * t + fwd) / p->microbatch_s;
  if (p->microbatch_s > 0) p->wgrad_frac = p->wgrad_frac * t / p->microbatch_s;
  st->plan = p;
  st->t += dt;
}

/* One side of a boundary between (virtual) stages, in one stage plan: a tensor that crosses it, with its
   name (up to layer numbers, as the whole graph names it), how the plan has it (held by the sender, read
   by the receiver) and whether a gradient goes back. */
typedef struct Crossing {
  const char *name;
  const Node *u;
  Spec s;
  bool grad, again; /* again: a reader's backward reads the value again, resharded again there */
} Crossing;

typedef struct Crossings {
  Crossing *x;
  int n;
} Crossings;

/* Adds a crossing unless one of the tensor in the same layout is there (the programs reshard a value
   into a layout once); a gradient goes back once a tensor. */
static void cross(Crossings *c, const char *name, const Node *u, Spec s, bool grad, bool again) {
  for (int j = 0; j < c->n; j++) {
    if (c->x[j].u != u) continue;
    if (c->x[j].grad) grad = false;
    if (spec_eq(&c->x[j].s, &s)) {
      c->x[j].grad |= grad, c->x[j].again |= again;
      return;
    }
  }
  c->x[c->n++] = (Crossing){.name = name, .u = u, .s = s, .grad = grad, .again = again};
}

/* Whether an op of stage plan pl reads node u again in its backward pass. */
static bool read_again(const Plan *pl, int u) {
  for (int i = 0; i < pl->g->nfwd; i++)
    for (int k = 0; k < pl->g->nodes[i]->nin; k++)
      if (pl->g->nodes[i]->in[k] == u && (pl->edge[(size_t)i * MAXIN + k] & 2)) return true;
  return false;
}

/* The first layer of a stage plan's graph (a plan may be another span's, numbered as that one); -1 when
   its layers are not repeat blocks (graph_layers cuts those by FLOPs). */
static int plan_first_layer(const Graph *g) {
  int f = -1;
  for (int i = 0; i < g->nfwd; i++)
    if (!is_leaf(g->nodes[i]) && g->nodes[i]->layer >= 0 && (f < 0 || g->nodes[i]->layer < f)) f = g->nodes[i]->layer;
  return f;
}

/* Whether op i's input k crosses a cut before layer `cut` of a stage plan's graph: a tensor computed in a
   layer before it, read by an op of a layer from it on over a layout edge (as the plan priced it). */
static bool read_across_cut(const Plan *pl, int i, int k, int cut) {
  const Node *n = pl->g->nodes[i], *u = pl->g->nodes[n->in[k]];
  return n->layer >= cut && !is_leaf(n) && u->layer >= 0 && u->layer < cut && !is_leaf(u) &&
         (pl->edge[(size_t)i * MAXIN + k] & 1);
}

/* The ends of a stage plan: `in` (the values it receives, as it reads them) or not (those it hands on,
   as it holds them), or with cut >= 0 the values read across the cut before layer `cut` of its graph
   (an interleaved device's plan spans its chunks as one run of layers). */
static Crossings crossings(const Plan *pl, bool in, int cut) {
  const Graph *g = pl->g;
  Crossings c = {.x = arena_alloc(sizeof(Crossing) * (size_t)(g->nfwd * MAXIN + 1))};
  bool *trained = cut >= 0 ? graph_trained(g) : NULL;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (cut < 0 && in && n->op == OP_INPUT && !strncmp(n->name, "recv:", 5))
      cross(&c, n->name + 5, n, pl->layout[i], n->init == SRC_STAGE, read_again(pl, i));
    else if (cut < 0 && !in && n->op == OP_MSE && !strncmp(n->name, "stand-in:", 9))
      cross(&c, n->name + 9, g->nodes[n->in[0]], pl->layout[n->in[0]], false, false);
    else if (cut >= 0)
      for (int k = 0; k < n->nin; k++) {
        const Node *u = g->nodes[n->in[k]];
        if (!read_across_cut(pl, i, k, cut)) continue;
        if (in)
          cross(&c, u->name, u, pl->reads[(size_t)i * MAXIN + k], trained[u->id] && op_differentiates(n, k),
                (pl->edge[(size_t)i * MAXIN + k] & 2) != 0);
        else
          cross(&c, u->name, u, pl->layout[u->id], false, false);
      }
  }
  return c;
}

/* What stage plan pl priced for its reads across the cut before layer `cut`, which the programs do not
   have, taken away: each such read's layout edge from where the tensor is kept (planner/intra.c, `move`),
   and a tensor's move into its layout variable where every reader from other groups is across the cut. */
static void untie_cut(const Plan *pl, int cut, Adds *a) {
  const Graph *g = pl->g;
  bool *trained = graph_trained(g), *before = arena_alloc(sizeof(bool) * (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++) /* read over a layout edge on its own side of the cut */
    for (int k = 0; k < g->nodes[i]->nin && !is_leaf(g->nodes[i]); k++)
      if ((pl->edge[(size_t)i * MAXIN + k] & 1) && !read_across_cut(pl, i, k, cut)) before[g->nodes[i]->in[k]] = true;
  bool *done = arena_alloc(sizeof(bool) * (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++)
    for (int k = 0; k < g->nodes[i]->nin && !is_leaf(g->nodes[i]); k++) {
      if (!read_across_cut(pl, i, k, cut)) continue;
      const Node *n = g->nodes[i], *u = g->nodes[n->in[k]];
      const Spec *kept = &pl->kept[u->id], *read = &pl->reads[(size_t)i * MAXIN + k];
      double bytes = value_bytes(u, pl->opt.mixed);
      reshard_to(a, pl, kept, read, bytes, PHASE_FORWARD, u->name, -1, false);
      if (trained[u->id] && op_differentiates(n, k))
        reshard_to(a, pl, read, kept, bytes, PHASE_BACKWARD, u->name, -1, false);
      if (pl->edge[(size_t)i * MAXIN + k] & 2) reshard_to(a, pl, kept, read, bytes, PHASE_BACKWARD, u->name, -1, true);
      if (done[u->id] || before[u->id] || !(pl->to_kept[u->id] & 1)) continue;
      done[u->id] = true;
      reshard_to(a, pl, &pl->layout[u->id], kept, bytes, PHASE_FORWARD, u->name, -1, false);
      if (trained[u->id]) reshard_to(a, pl, kept, &pl->layout[u->id], bytes, PHASE_BACKWARD, u->name, -1, false);
      if (pl->to_kept[u->id] & 2) reshard_to(a, pl, &pl->layout[u->id], kept, bytes, PHASE_BACKWARD, u->name, -1, true);
    }
}

/* The value of `sent` a crossing read names (same name up to layer numbers, same shape): -1 none. */
static int crossing_of(const Crossings *sent, const Crossing *r) {
  for (int pass = 0; pass < 2; pass++)
    for (int j = 0; j < sent->n; j++)
      if (shape_eq(&sent->x[j].u->shape, &r->u->shape) &&
          (pass ? same_but_numbers(sent->x[j].name, r->name) : !strcmp(sent->x[j].name, r->name)))
        return j;
  return -1;
}

/* Layout `from`'s split over the tp ranks (mesh axis 1) with `as`'s over the replicas (axis 0): each
   stage's replicas hold their own rows, so only the tp split moves. */
static Spec tp_from(Spec as, const Spec *from) {
  for (int d = 0; d < as.rank && d < from->rank; d++) as.d[d] = (uint8_t)((as.d[d] & 1) | (from->d[d] & 2));
  return as;
}

/* A boundary from stage plan S (its device's additions aS) to stage plan R (aR), as the programs reshard
   it: the receiver reshards what arrives for its readers (forward, and again in the backward where a
   reader's backward reads the value), the sender the gradient handed back in the receiver's layout into
   its own (backward). */
static void junction(const Plan *S, const Crossings *sent, Adds *aS, const Plan *R, const Crossings *got, Adds *aR) {
  for (int i = 0; i < got->n; i++) {
    const Crossing *r = &got->x[i];
    int j = crossing_of(sent, r);
    if (j < 0) continue;
    const Spec *held = &sent->x[j].s;
    Spec arrives = tp_from(r->s, held), back = tp_from(*held, &r->s);
    double bytes = value_bytes(r->u, R->opt.mixed);
    reshard_to(aR, R, &arrives, &r->s, bytes, PHASE_FORWARD, sent->x[j].name, 1, false);
    if (r->again) reshard_to(aR, R, &arrives, &r->s, bytes, PHASE_BACKWARD, sent->x[j].name, 1, true);
    if (r->grad) reshard_to(aS, S, &back, held, bytes, PHASE_BACKWARD, sent->x[j].name, 1, false);
  }
}

/* Chunk c's first layer in device d's plan graph. */
static int chunk_cut(const PipelinePlan *pp, int d, int c) {
  int cut = plan_first_layer(pp->stages[d].plan->g);
  for (int k = 0; k < c; k++) cut += chunk_layers(&pp->stages[d], pp->v, k);
  return cut;
}

/* Whether every stage has the same tp width, and with interleaved chunks, layers of repeat blocks (whose
   chunk boundaries are found by layer number). */
static bool boundaries_known(const PipelinePlan *pp) {
  for (int d = 0; d < pp->nstages; d++)
    if (pp->stages[d].plan->mesh.n[1] != pp->stages[0].plan->mesh.n[1] ||
        (pp->v > 1 && plan_first_layer(pp->stages[d].plan->g) < 0))
      return false;
  return true;
}

/* The boundaries between stages, resharded as the programs do: a stage
 * sends an activation in the layout it holds it in, the next stage reshards
 * it for its readers (forward) and hands the gradient back in the layout it
 * holds the activation in, which the sender reshards into its own
 * (backward). The stage plans, made apart, see neither side: priced here
 * once the stages are known, over the tp ranks, into copies of the stage
 * plans. With interleaved chunks, each device's plan is made for one run of
 * its layers, so it prices a boundary inside it, between one chunk's last
 * layer and the next's first, that the programs do not have: that is taken
 * away (untie_cut), and each boundary between consecutive chunks (virtual
 * stages, on neighbouring devices) priced instead. Not when stages differ
 * in tp width (not lowered), nor, interleaved, for layers that are not
 * repeat blocks. Whether any was added. */
static bool boundary_reshards(PipelinePlan *pp) {
  int P = pp->nstages, v = pp->v;
  if (!boundaries_known(pp)) return false;
  Adds *a = arena_alloc(sizeof(Adds) * (size_t)P);
  memset(a, 0, sizeof(Adds) * (size_t)P);
  for (int d = 0; d < P; d++) /* the boundaries inside an interleaved device's plan */
    for (int c = 1; c < v; c++) untie_cut(pp->stages[d].plan, chunk_cut(pp, d, c), &a[d]);
  for (int vs = 0; vs + 1 < P * v; vs++) { /* virtual stage vs hands on to vs + 1 */
    int ds = vs % P, cs = vs / P, dr = (vs + 1) % P, cr = (vs + 1) / P;
    const Plan *S = pp->stages[ds].plan, *R = pp->stages[dr].plan;
    Crossings sent = crossings(S, false, cs == v - 1 ? -1 : chunk_cut(pp, ds, cs + 1));
    Crossings got = crossings(R, true, cr == 0 ? -1 : chunk_cut(pp, dr, cr));
    junction(S, &sent, &a[ds], R, &got, &a[dr]);
  }
  bool any = false;
  for (int d = 0; d < P; d++)
    if (a[d].n) add_boundary(&pp->stages[d], &a[d]), any = true;
  return any;
}

/* Under full recomputation a stage runs each microbatch's forward again
   before its backward: its forward ops' own reductions (Comm.rerun) are
   listed twice a microbatch, in copies of the stage plans (their seconds
   are in the simulated backward already: sim_input_rc). Once the schedule
   and each stage's recomputation are chosen. */
static void rerun_listing(PipelinePlan *pp) {
  for (int d = 0; d < pp->nstages; d++) {
    PipeStage *st = &pp->stages[d];
    if (st->recompute != RC_FULL || !st->plan) continue;
    Plan *p = arena_alloc(sizeof(Plan));
    *p = *st->plan;
    p->comms = arena_alloc(sizeof(Comm) * (size_t)(p->ncomms + 1));
    memcpy(p->comms, st->plan->comms, sizeof(Comm) * (size_t)p->ncomms);
    for (int j = 0; j < p->ncomms; j++)
      if (p->comms[j].rerun && !p->comms[j].once) p->comms[j].count *= 2;
    st->plan = p;
  }
}

static PipelinePlan *assemble(Ctx *c, const Stage *st, int ns, FILE *err) {
  PipelinePlan *pp = arena_alloc(sizeof(PipelinePlan));
  pp->cluster = c->cl, pp->devices = c->D, pp->microbatches = c->B, pp->nstages = ns;
  pp->layers = c->last_layer[c->G - 1] + 1;
  pp->stages = arena_alloc(sizeof(PipeStage) * (size_t)ns);
  int dev = 0;
  for (int s = 0; s < ns; s++) {
    size_t x = idx(c, st[s].first, st[s].last, st[s].submesh);
    if (!c->plan[x]) { /* chosen with a composed cost: plan the stage itself */
      c->t[x] = NAN;
      if (exact_cost(c, st[s].first, st[s].last, st[s].submesh) < 0) {
        fprintf(err, "carve: error: stage %d (groups %d-%d) does not fit when planned as a whole\n", s, st[s].first,
                st[s].last);
        return NULL;
      }
    }
    const Sub *sb = &c->sub[st[s].submesh];
    PipeStage *ps = &pp->stages[s];
    *ps = (PipeStage){.first = c->first_layer[st[s].first],
                      .last = c->last_layer[st[s].last],
                      .nodes = sb->nodes,
                      .per_node = sb->per_node,
                      .device0 = dev,
                      .plan = c->plan[x],
                      .t = c->t[x],
                      .sync = c->sync[x],
                      .update = c->plan[x]->update_s,
                      .memory = c->mem[x]};
    dev += sb->devices;
    if (s + 1 < ns) { /* the next stage starts at device `dev`: same node or not */
      int dpn = c->cl->devices_per_node;
      bool inter = (dev - 1) / dpn != dev / dpn || sb->nodes > 1;
      double bytes = boundary_bytes(c->g, c->group, st[s + 1].first, st[s + 1].last, c->po->mixed) /
                     c->sub[st[s + 1].submesh].devices;
      ps->p2p_bytes = bytes;
      ps->p2p = inter ? c->cl->inter_latency + bytes / c->cl->inter_bandwidth
                      : c->cl->intra_latency + bytes / c->cl->intra_bandwidth;
    }
  }
  return choose_schedule(pp, c->cl->memory, SCHED_KINDS, -1, err) ? pp : NULL;
}

/* The graph at a microbatch count, loaded once per search. */
typedef struct AtB {
  int B, L;
  Graph *g;
  int *layer_of;
} AtB;

typedef struct Search {
  const char *path;
  const ElabOptions *eo;
  const Cluster *cl;
  const PlanOptions *po;
  const Graph *g1;
  AtB *at;
  int nat;
  PipelinePlan *best;
  int ilps;
  Cache cache;
  double t0;
  int64_t batch;
  int *micro, nmicro; /* the microbatch counts searched: every divisor of the batch */
  bool tty;           /* progress goes to a terminal (status) */
  double shown;       /* when status last wrote, in seconds from t0 (0: never) */
} Search;

/* The search's progress, once it has run for a second: on a terminal one
 * line (what is searched, the best plan so far, the stage plans made and
 * the time) redrawn in place at most four times a second and cleared at the
 * end (status_end); elsewhere a plain line every five seconds at most. */
static void status(Search *S, FILE *progress, const char *fmt, ...) {
  double t = now_seconds() - S->t0;
  if (!progress || t < 1 || (S->shown > 0 && t - S->shown < (S->tty ? 0.25 : 5))) return;
  S->shown = t;
  va_list ap;
  va_start(ap, fmt);
  fputs(S->tty ? "\r\033[Ksearching: " : "searching: ", progress);
  vfprintf(progress, fmt, ap);
  va_end(ap);
  if (S->best)
    fprintf(progress, ", best %.1f TFLOP/s per device so far",
            S->best->model_flops / S->best->step_s / cluster_devices(S->cl) * 1e-12);
  fprintf(progress, " (%d stage plans, %.1f s)%s", S->ilps, t, S->tty ? "" : "\n");
  fflush(progress);
}

static void status_end(Search *S, FILE *progress) {
  if (!progress || S->shown <= 0) return;
  if (S->tty)
    fputs("\r\033[K", progress);
  else
    fprintf(progress, "search done: %d stage plans, %.1f s\n", S->ilps, now_seconds() - S->t0);
  fflush(progress);
}

static const AtB *graph_at(Search *S, int B, FILE *err) {
  for (int i = 0; i < S->nat; i++)
    if (S->at[i].B == B) return &S->at[i];
  Graph *g = B == 1 ? (Graph *)S->g1 : load_at(S->path, S->eo, B, err);
  if (!g) return NULL;
  AtB *a = &S->at[S->nat++];
  a->B = B, a->g = g;
  a->layer_of = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1));
  a->L = graph_layers(g, MAXGROUPS, a->layer_of);
  return a;
}

static void cache_alloc(Ctx *c) {
  size_t cells = (size_t)c->G * (size_t)c->G * (size_t)c->nsub;
  c->t = arena_alloc(sizeof(double) * cells), c->sync = arena_alloc(sizeof(double) * cells);
  c->mem = arena_alloc(sizeof(double) * cells), c->plan = arena_alloc(sizeof(Plan *) * cells);
  for (size_t i = 0; i < cells; i++) c->t[i] = NAN;
  c->flops = arena_alloc(sizeof(double) * (size_t)c->G * (size_t)c->G);
  c->sig = arena_alloc(sizeof(uint64_t) * (size_t)c->G * (size_t)c->G);
  for (int i = 0; i < c->G * c->G; i++) c->flops[i] = NAN;
}

/* Keeps pp if it is the fastest so far. */
static void consider(Search *S, PipelinePlan *pp, const AtB *a) {
  if (!pp || (S->best && pp->step_s >= S->best->step_s)) return;
  S->best = pp;
  pp->layers = a->L;
  pp->model = S->g1->model;
  Summary s;
  summarize(a->g, &s);
  pp->model_flops = s.flops_einsum * a->B;
}

/* A context for stage plans at a's microbatch count, its layers in at most
 * `groups` groups. */
static Ctx search_ctx(Search *S, const AtB *a, int groups) {
  Ctx c = {.cl = S->cl,
           .po = S->po,
           .D = cluster_devices(S->cl),
           .B = a->B,
           .g = a->g,
           .unit = 1,
           .cache = &S->cache,
           .batch = S->batch,
           .cutoff = S->best ? S->best->step_s : 0};
  group_layers(&c, a->L, a->layer_of, groups);
  return c;
}

/* The stage DP at B microbatches (groups of layers x submeshes). */
static void dp_at(Search *S, const AtB *a) {
  Ctx c = search_ctx(S, a, MAXGROUPS);
  submeshes(&c);
  c.compose = c.D > 16;
  cache_alloc(&c);
  int devs[MAXSUB];
  for (int k = 0; k < c.nsub; k++) devs[k] = c.sub[k].devices / c.unit;
  StageProblem sp = {c.G, c.nsub, devs, c.D / c.unit, a->B, known_cost, &c};
  Stage st[MAXGROUPS];
  int ns = 0;
  double total;
  do total = stage_dp(&sp, st, &ns);
  while (total >= 0 && !all_planned(&c, st, ns));
  PipelinePlan *pp = NULL;
  if (total >= 0) {
    FILE *quiet = fopen("/dev/null", "w"); /* a microbatch count that fails is just not chosen */
    pp = assemble(&c, st, ns, quiet);
    fclose(quiet);
  }
  S->ilps += c.ilps;
  consider(S, pp, a);
}

/* A balanced pipeline: p stages of equal layer counts (as near as the
 * layers divide) on equal submeshes of D / p devices. Its middle stage is
 * planned first: B microbatches of it, the bubble of ZB-H1 with equal
 * stages ((p - 1) / 3 of a microbatch), its gradient sync and its
 * optimizer update bound the
 * step from below, and the other stages are planned only when that bound
 * beats the best plan so far. */
static void balanced_at(Search *S, const AtB *a, int p) {
  Ctx c = search_ctx(S, a, p);
  int per = c.D / p, dpn = S->cl->devices_per_node;
  c.sub[0] = per >= dpn ? (Sub){per / dpn, dpn, per} : (Sub){1, per, per};
  c.nsub = 1;
  cache_alloc(&c);
  double t = exact_cost(&c, p / 2, p / 2, 0);
  S->ilps += c.ilps;
  c.ilps = 0;
  size_t x = idx(&c, p / 2, p / 2, 0);
  if (t < 0 || (S->best && (a->B + (p - 1) / 3.0) * t + c.sync[x] + c.plan[x]->update_s >= S->best->step_s)) return;
  Stage st[MAXSTAGES];
  for (int s = 0; s < p; s++) st[s] = (Stage){s, s, 0, 0};
  FILE *quiet = fopen("/dev/null", "w");
  PipelinePlan *pp = assemble(&c, st, p, quiet);
  fclose(quiet);
  S->ilps += c.ilps;
  consider(S, pp, a);
}

typedef struct Candidate {
  int B, p;
  double bound;
} Candidate;

static int by_bound(const void *x, const void *y) {
  double a = ((const Candidate *)x)->bound, b = ((const Candidate *)y)->bound;
  return a < b ? -1 : a > b;
}

/* Balanced pipelines on large clusters, searched in the order of a lower
 * bound on their step: every device busy with its share of the model's
 * FLOPs at the cost model's rate, plus the bubble of the best schedule
 * with equal stages (ZB-H1, a third of a stage's microbatch per stage). The
 * search stops at the first candidate whose bound is no better than the
 * best plan found. Stage counts p: up to MAXSTAGES and the layer count, with
 * D / p devices a whole number of nodes or a divisor of a node; microbatch
 * counts: every divisor of the batch that leaves a sample per
 * node of a stage at least (a smaller microbatch would have to split single
 * samples across nodes, over the slow network; the stage DP on large
 * clusters skips such submeshes too). */
static void balanced_search(Search *S, int fixed_B, FILE *progress, FILE *err) {
  const Cluster *cl = S->cl;
  int64_t batch = S->batch;
  int D = cluster_devices(cl), dpn = cl->devices_per_node;
  Summary sm;
  summarize(S->g1, &sm);
  Mesh me;
  if (!mesh_make(cl, 1, 1, S->po->mixed, &me, err)) return;
  double ideal = sm.flops_einsum / (me.gemm_eff * me.flops * D); /* the whole batch */
  int L = S->at[0].L;
  Candidate *cand = arena_alloc(sizeof(Candidate) * (size_t)S->nmicro * MAXSTAGES);
  int n = 0;
  for (int m = 0; m < S->nmicro; m++) {
    int B = S->micro[m];
    if (fixed_B > 0 && B != fixed_B) continue;
    for (int p = 2; p <= MAXSTAGES && p <= L && p <= D; p++) {
      int per = D / p;
      if (D % p || (per % dpn && dpn % per) || batch / B < per / dpn) continue;
      cand[n++] = (Candidate){B, p, ideal * (1 + (p - 1) / (3.0 * B))};
    }
  }
  qsort(cand, (size_t)n, sizeof *cand, by_bound);
  int tried = 0;
  for (int i = 0; i < n; i++) {
    if (S->best && cand[i].bound >= S->best->step_s) break;
    const AtB *a = graph_at(S, cand[i].B, err);
    if (!a) return;
    balanced_at(S, a, cand[i].p);
    tried++;
    status(S, progress, "balanced pipelines, %d of %d candidates", tried, n);
  }
}

/* The microbatch counts to search: every divisor of the batch (1 without
 * one), powers of two first (usually the best; their best step then bounds
 * the stages of the others). */
static void micro_counts(Search *S) {
  int64_t b = S->batch > 0 ? S->batch : 1;
  int n = 0;
  for (int64_t B = 1; B <= b && B <= INT32_MAX; B++) n += b % B == 0;
  S->micro = arena_alloc(sizeof(int) * (size_t)n);
  for (int pow2 = 1; pow2 >= 0; pow2--)
    for (int64_t B = 1; B <= b && B <= INT32_MAX; B++)
      if (b % B == 0 && ((B & (B - 1)) == 0) == pow2) S->micro[S->nmicro++] = (int)B;
}

/* The balanced pipelines (large clusters), then the stage DP at each
 * microbatch count: the best plan, or NULL (said on err). */
static PipelinePlan *search(Search *S, int fixed_B, FILE *progress, FILE *err) {
  if (!graph_at(S, 1, err)) return NULL;
  /* on large clusters the balanced pipelines first: their best step cuts
     off every stage the DP would try that is too slow to beat it */
  if (cluster_devices(S->cl) > 16 && S->batch > 0) balanced_search(S, fixed_B, progress, err);
  /* the stage DP at the microbatch count asked for, or at every count */
  for (int m = 0; m < S->nmicro; m++) {
    if (fixed_B > 0 && S->micro[m] != fixed_B) continue;
    const AtB *a = graph_at(S, S->micro[m], err);
    if (!a) return NULL;
    dp_at(S, a);
    status(S, progress, "stage DP, %d of %d microbatch counts", fixed_B > 0 ? 1 : m + 1, fixed_B > 0 ? 1 : S->nmicro);
  }
  status_end(S, progress);
  if (!S->best)
    fprintf(err, "carve: error: no pipeline plan fits the %d devices of %s at any microbatch count tried\n",
            cluster_devices(S->cl), S->cl->name);
  return S->best;
}

PipelinePlan *plan_pipeline(const char *path, const ElabOptions *eo, const Cluster *cl, const PlanOptions *po,
                            int fixed_B, FILE *progress, FILE *err) {
  double t0 = now_seconds();
  Graph *g1 = load_at(path, eo, 1, err);
  if (!g1) return NULL;
  int64_t batch = graph_dim(g1, "batch", 0);
  Search S = {.path = path, .eo = eo, .cl = cl, .po = po, .g1 = g1, .t0 = t0, .batch = batch};
  S.tty = progress && isatty(fileno(progress));
  if (fixed_B > 0 && batch > 0 && batch % fixed_B) {
    fprintf(err, "carve: error: %d microbatches do not divide the batch of %lld\n", fixed_B, (long long)batch);
    return NULL;
  }
  micro_counts(&S);
  S.at = arena_alloc(sizeof(AtB) * (size_t)(S.nmicro + 1));
  plan_warm_starts(true);
  PipelinePlan *best = search(&S, fixed_B, progress, err);
  plan_warm_starts(false);
  if (!best) return NULL;
  best->ilps = S.ilps;
  if (boundary_reshards(best) && !choose_schedule(best, cl->memory, best->schedule, -1, err)) return NULL;
  rerun_listing(best);
  best->search_s = now_seconds() - t0;
  throughput(best, po);
  return best;
}
/* A predicted MFU above the best published for the device (cluster key
 * best_mfu) is said, with why the model can be above it. */
static void mfu_note(const PipelinePlan *p, FILE *out) {
  double best = p->cluster->best_mfu;
  if (best <= 0 || p->mfu <= best) return;
  fprintf(out,
          "note            the predicted MFU (%.1f%%) is above the best published for %s (%.1f%%): the cost model\n"
          "                prices products by shape, collectives and the bubble, and leaves out what end-to-end\n"
          "                runs also lose (stragglers, launch gaps, data loading); read it as a bound%s\n\n",
          100 * p->mfu, *p->cluster->device ? p->cluster->device : p->cluster->name, 100 * best,
          !strcmp(pipeline_recompute(p), "none")
              ? "\n                (this plan recomputes nothing; the published run re-ran part of its forward)"
              : "");
}

void pipeline_report(const PipelinePlan *p, FILE *out) {
  char a[32];
  fprintf(out, "plan for %s on %s (%d devices): %d stage%s, %s schedule%s, %d microbatch%s\n", p->model,
          p->cluster->name, p->devices, p->nstages, p->nstages == 1 ? "" : "s", sched_names[p->schedule],
          p->v > 1 ? arena_printf(" (%d chunks per device)", p->v) : "", p->microbatches,
          p->microbatches == 1 ? "" : "es");
  fprintf(out,
          "\npredicted step  %.4g s (bubble %.1f%%), %.1f TFLOP/s per device, MFU %.1f%% (model FLOPs)\n"
          "precision       %s\n"
          "recomputation   %s\n\n",
          p->step_s, 100 * p->bubble, p->tflops_per_device, 100 * p->mfu,
          precision_describe(p->stages[0].plan->opt.mixed ? PREC_BF16 : PREC_FP32, true),
          !strcmp(pipeline_recompute(p), "full")
              ? "full: each stage keeps only its inputs and re-runs its forward before the backward"
          : !strcmp(pipeline_recompute(p), "selective")
              ? "selective: the attention probabilities are remade before the backward, not kept"
              : pipeline_recompute(p));
  if (p->sim.sync_exposed_s > 0 || !p->serial_comm)
    fprintf(out, "gradient syncs  %s\n\n",
            p->serial_comm ? "after the backward pass (overlap=off: as carve run --overlap off runs them)"
                           : arena_printf("a layer at a time beside the backward pass; %.4g s of them past it",
                                          p->sim.sync_exposed_s));
  mfu_note(p, out);
  int w = 9; /* the layers column: as wide as its widest (interleaved stages list their chunks) */
  for (int s = 0; s < p->nstages; s++) w = (int)fmax(w, (double)strlen(pipeline_stage_layers(p, s)));
  fprintf(out, "  %-6s %-*s %-14s %-8s %12s %12s %10s  %s\n", "stage", w, "layers", "devices", "mesh", "s/microbatch",
          "sync s/step", "memory", "recompute");
  for (int s = 0; s < p->nstages; s++) {
    const PipeStage *st = &p->stages[s];
    int n = st->nodes * st->per_node;
    fprintf(out, "  %-6d %-*s %-14s %-8s %12.4g %12.4g %10s  %s\n", s, w, pipeline_stage_layers(p, s),
            arena_printf("%d-%d", st->device0, st->device0 + n - 1),
            arena_printf("%dx%d", st->plan->mesh.n[0], st->plan->mesh.n[1]), st->t, st->sync,
            fmt_bytes(st->memory, a, sizeof a), rc_names[st->recompute]);
  }
  fprintf(out, "\nsearch: %d intra-operator plans, %.2f s\n", p->ilps, p->search_s);
}

void pipeline_json(const PipelinePlan *p, FILE *out) {
  fprintf(out, "{\n  \"format\": \"carve-plan\",\n  \"version\": 1,\n  \"model\": ");
  json_write_str(out, p->model);
  fprintf(out, ",\n  \"cluster\": ");
  json_write_str(out, p->cluster->name);
  fprintf(out, ",\n");
  fprintf(out,
          "  \"devices\": %d,\n  \"schedule\": \"%s\",\n  \"chunks_per_device\": %d,\n  \"microbatches\": %d,\n"
          "  \"zero_stage\": %d,\n  \"precision\": \"%s\",\n",
          p->devices, sched_names[p->schedule], p->v, p->microbatches, p->stages[0].plan->zero,
          p->stages[0].plan->opt.mixed ? "bf16" : "fp32");
  fprintf(out, "  \"recompute\": \"%s\",\n  \"predicted_step_s\": %.9g,\n  \"bubble\": %.6g,\n", pipeline_recompute(p),
          p->step_s, p->bubble);
  fprintf(out, "  \"overlap\": %s,\n  \"sync_exposed_s\": %.9g,\n", p->serial_comm ? "false" : "true",
          p->sim.sync_exposed_s);
  double most[COLL_KINDS] = {0}, mem = 0, p2p = 0;
  for (int s = 0; s < p->nstages; s++) {
    double b[COLL_KINDS];
    plan_comm_bytes(p->stages[s].plan, p->microbatches, b);
    for (int k = 0; k < COLL_KINDS; k++) most[k] = fmax(most[k], b[k]);
    mem = fmax(mem, p->stages[s].memory);
    p2p = fmax(p2p, p->stages[s].p2p_bytes * p->microbatches * 2);
  }
  fprintf(out, "  \"memory_per_device_bytes\": %.0f,\n  \"device_memory_bytes\": %.0f,\n", mem, p->cluster->memory);
  fprintf(out, "  \"communication_bytes_per_device\": {");
  for (int k = 0; k < COLL_KINDS; k++) fprintf(out, "\"%s\": %.0f, ", coll_names[k], most[k]);
  fprintf(out, "\"send-recv\": %.0f},\n", p2p);
  fprintf(out, "  \"predicted_tflops_per_device\": %.6g,\n  \"predicted_mfu\": %.6g,\n  \"stages\": [",
          p->tflops_per_device, p->mfu);
  for (int s = 0; s < p->nstages; s++) {
    const PipeStage *st = &p->stages[s];
    int n = st->nodes * st->per_node;
    double ff, wf;
    stage_fractions(st, &ff, &wf);
    fprintf(out, "%s\n    {\"layers\": [%d, %d], ", s ? "," : "", st->first, st->last);
    for (int c = 0; c < p->v && p->chunk_last; c++) { /* the layers each chunk holds */
      int vs = c * p->nstages + s;
      fprintf(out, "%s[%d, %d]%s", c ? ", " : "\"chunk_layers\": [", vs ? p->chunk_last[vs - 1] + 1 : 0,
              p->chunk_last[vs], c == p->v - 1 ? "], " : "");
    }
    fprintf(out, "\"devices\": [");
    for (int d = 0; d < n; d++) fprintf(out, "%s%d", d ? ", " : "", st->device0 + d);
    fprintf(out,
            "], \"logical_mesh\": [%d, %d], \"predicted_stage_s\": %.9g, \"sync_s\": %.9g, "
            "\"update_s\": %.9g, \"p2p_s\": %.9g, \"memory_per_device_bytes\": %.0f, \"zero_stage\": %d, "
            "\"recompute\": \"%s\", "
            "\"selective_recompute_s\": %.9g, \"forward_fraction\": %.6g, \"weight_grad_fraction\": %.6g, "
            "\"collectives\": ",
            st->plan->mesh.n[0], st->plan->mesh.n[1], st->t, st->sync, st->update, st->p2p, st->memory, st->plan->zero,
            rc_names[st->recompute], st->sel_t, ff, wf);
    plan_comms_json(st->plan, p->microbatches, 8, out);
    fprintf(out, "}");
  }
  fprintf(out, "\n  ],\n  \"search\": {\"intra_plans\": %d, \"seconds\": %.6f}\n}\n", p->ilps, p->search_s);
}

/* ---------------------------------------------------------------- manual plans */

/* dp=1:2: each pipeline stage's replicas; m->dp gets the most. */
static bool stage_dps(const char *opt, const char *v, int vlen, Manual *m, FILE *err) {
  int *dp = arena_alloc(sizeof(int) * (size_t)(vlen + 1)), n = 0;
  for (const char *q = v, *end = v + vlen; q < end;) {
    char *stop;
    long x = strtol(q, &stop, 10);
    if (stop == q || x < 1 || x > 1 << 16 || (stop < end && *stop != ':')) {
      fprintf(err, "carve: error: %s: dp=%.*s: replicas per stage are whole numbers joined by ':'\n", opt, vlen, v);
      return false;
    }
    dp[n++] = (int)x;
    m->dp = x > m->dp ? (int)x : m->dp;
    q = stop + (stop < end);
  }
  m->stage_dp = dp, m->nstage_dp = n;
  return true;
}

/* The one reader of layout text; opt names the option it came from. */
bool manual_parse(const char *text, const char *opt, Manual *m, FILE *err) {
  *m = (Manual){0, 0, 0, 0, SCHED_KINDS, -1, -1, NULL, 0, false, false};
  const char *p = text;
  char seen[16][16]; /* the keys given, each once */
  int nseen = 0;
  if (!*p) {
    fprintf(err, "carve: error: %s expects key=value pairs (dp=2,tp=4,...), got nothing\n", opt);
    return false;
  }
  for (bool more = true; more;) {
    size_t len = strcspn(p, ","), eq = strcspn(p, "=");
    more = p[len] == ',';
    if (eq >= len) {
      fprintf(err, "carve: error: %s expects key=value pairs, got '%.*s'%s\n", opt, (int)len, p,
              len ? "" : " (an empty one: a comma too many?)");
      return false;
    }
    const char *v = p + eq + 1;
    int vlen = (int)(len - eq - 1);
    char key[16];
    snprintf(key, sizeof key, "%.*s", (int)(eq < 15 ? eq : 15), p);
    for (int k = 0; k < nseen; k++)
      if (!strcmp(seen[k], key)) {
        fprintf(err, "carve: error: %s: %s is given twice\n", opt, key);
        return false;
      }
    if (nseen < 16) strcpy(seen[nseen++], key);
    char *end;
    long x = vlen > 0 && v[0] >= '0' && v[0] <= '9' ? strtol(v, &end, 10) : (end = (char *)v, -1);
    bool num = end == v + vlen && vlen > 0 && x >= 0 && x <= 1000000;
    if (end == v + vlen && vlen > 0 && x > 1000000) {
      fprintf(err, "carve: error: %s: %s=%.*s is more than carve takes (1000000)\n", opt, key, vlen, v);
      return false;
    }
    int *field = !strcmp(key, "dp")   ? &m->dp
                 : !strcmp(key, "tp") ? &m->tp
                 : !strcmp(key, "pp") ? &m->pp
                 : !strcmp(key, "mb") ? &m->mb
                                      : NULL;
    if (field == &m->dp && memchr(v, ':', (size_t)vlen)) {
      if (!stage_dps(opt, v, vlen, m, err)) return false;
    } else if (field) {
      if (!num || x < 1) {
        fprintf(err, "carve: error: %s: %s must be a whole number >= 1, got '%.*s'\n", opt, key, vlen, v);
        return false;
      }
      *field = (int)x;
    } else if (!strcmp(key, "zero")) {
      if (!num || x > 3) {
        fprintf(err, "carve: error: %s: zero is 0, 1, 2 or 3, got '%.*s'\n", opt, vlen, v);
        return false;
      }
      m->zero = (int)x;
    } else if (!strcmp(key, "schedule")) {
      int k = 0;
      while (k < SCHED_KINDS && !((int)strlen(sched_names[k]) == vlen && !strncmp(v, sched_names[k], (size_t)vlen)))
        k++;
      if (k == SCHED_KINDS) {
        fprintf(err, "carve: error: %s: schedule is gpipe, 1f1b, interleaved or zb-h1, got '%.*s'\n", opt, vlen, v);
        return false;
      }
      m->schedule = (SchedKind)k;
    } else if (!strcmp(key, "recompute")) {
      m->recompute = -1;
      for (int k = 0; k < RC_KINDS; k++)
        if ((int)strlen(rc_names[k]) == vlen && !strncmp(v, rc_names[k], (size_t)vlen)) m->recompute = k;
      if (m->recompute < 0) {
        fprintf(err, "carve: error: %s: recompute is none, selective or full, got '%.*s'\n", opt, vlen, v);
        return false;
      }
    } else if (!strcmp(key, "overlap")) {
      bool on = vlen == 2 && !strncmp(v, "on", 2), off = vlen == 3 && !strncmp(v, "off", 3);
      if (!on && !off) {
        fprintf(err, "carve: error: %s: overlap is on or off, got '%.*s'\n", opt, vlen, v);
        return false;
      }
      m->serial_comm = off;
    } else if (!strcmp(key, "sp")) {
      if (!num || x > 1) {
        fprintf(err, "carve: error: %s: sp is 0 or 1, got '%.*s'\n", opt, vlen, v);
        return false;
      }
      m->sp = x == 1 ? 1 : -1;
    } else {
      fprintf(err, "carve: error: %s: unknown key '%s' (dp, tp, pp, mb, schedule, zero, recompute, overlap, sp)\n", opt,
              key);
      return false;
    }
    p += len + more;
  }
  if (m->stage_dp && m->nstage_dp != (m->pp ? m->pp : 1)) {
    fprintf(err, "carve: error: %s: dp gives %d stages' replicas, but pp=%d\n", opt, m->nstage_dp, m->pp ? m->pp : 1);
    return false;
  }
  return true;
}

/* Checks that the plan divides the cluster and the model; fills defaults. */
static bool manual_check(Manual *m, const Graph *g, const Cluster *cl, FILE *err) {
  if (m->stage_dp) {
    fprintf(err, "carve: error: --manual: replicas per stage (dp=a:b) are for compile --layout; a plan takes one dp\n");
    return false;
  }
  int D = cluster_devices(cl);
  int64_t batch = graph_dim(g, "batch", 0), heads = graph_dim(g, "heads", 0);
  if (!m->tp) m->tp = 1;
  if (m->sp > 0 && m->tp < 2) {
    fprintf(err,
            "carve: error: --manual: sp=1 splits the sequence over the tensor-parallel devices: it needs tp >= 2\n");
    return false;
  }
  if (!m->pp) m->pp = 1;
  if (!m->dp && (long)m->tp * m->pp > D) {
    fprintf(err, "carve: error: --manual: tp x pp = %d x %d = %ld, more than the %d devices of %s\n", m->tp, m->pp,
            (long)m->tp * m->pp, D, cl->name);
    return false;
  }
  if (m->schedule == SCHED_INTERLEAVED && m->pp < 2) {
    fprintf(err, "carve: error: --manual: schedule=interleaved runs chunks of layers on the stages in turn: it needs "
                 "pp >= 2\n");
    return false;
  }
  if (!m->dp) m->dp = D / (m->tp * m->pp);
  if ((long)m->dp * m->tp * m->pp != D) {
    fprintf(err, "carve: error: --manual: dp x tp x pp = %d x %d x %d = %ld, but %s has %d devices\n", m->dp, m->tp,
            m->pp, (long)m->dp * m->tp * m->pp, cl->name, D);
    return false;
  }
  if (heads > 0 && heads % m->tp) /* the planner splits what divides: another dim of attention, or none */
    fprintf(err,
            "carve: note: --manual: tp=%d does not divide the model's %lld attention heads: attention is split "
            "along other dims or kept whole\n",
            m->tp, (long long)heads);
  if (m->mb && batch > 0 && batch % m->mb) {
    fprintf(err, "carve: error: --manual: mb=%d microbatches do not divide the batch of %lld\n", m->mb,
            (long long)batch);
    return false;
  }
  if (m->mb && batch > 0 && (batch / m->mb) % m->dp) {
    fprintf(err, "carve: error: --manual: a microbatch of %lld does not split over dp=%d\n", (long long)(batch / m->mb),
            m->dp);
    return false;
  }
  return true;
}

/* One manual plan at B microbatches. */
static PipelinePlan *manual_at(const char *path, const ElabOptions *eo, const Cluster *cl, const PlanOptions *po,
                               const Manual *m, int B, FILE *err) {
  Graph *g = load_at(path, eo, B, err);
  if (!g) return NULL;
  int *layer_of = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1));
  int L = graph_layers(g, MAXGROUPS, layer_of); /* the layers codegen finds (Layout.layers_want) */
  if (m->pp > L) {
    fprintf(err, "carve: error: --manual: pp=%d stages but the model has %d layer%s\n", m->pp, L, L == 1 ? "" : "s");
    return NULL;
  }
  int *stage_of = arena_alloc(sizeof(int) * (size_t)L);
  for (int s = 0; s < m->pp; s++) /* equal spans: stage s holds layers s L / pp to (s + 1) L / pp - 1 */
    for (int l = s * L / m->pp; l < (s + 1) * L / m->pp; l++) stage_of[l] = s;
  for (int i = 0; i < g->nfwd; i++) layer_of[i] = stage_of[layer_of[i]];
  PipelinePlan *pp = arena_alloc(sizeof(PipelinePlan));
  pp->cluster = cl, pp->devices = cluster_devices(cl), pp->microbatches = B, pp->nstages = m->pp, pp->layers = L;
  pp->model = g->model;
  pp->serial_comm = m->serial_comm;
  pp->ilps = m->pp;
  pp->stages = arena_alloc(sizeof(PipeStage) * (size_t)m->pp);
  int n = m->dp * m->tp, dpn = cl->devices_per_node;
  Cluster sub = *cl;
  sub.nodes = n > dpn ? n / dpn : 1;
  sub.devices_per_node = n > dpn ? dpn : n;
  PlanOptions o = *po;
  o.zero = m->zero;
  o.batch_axis = m->dp > 1 ? 0 : -1;
  o.batch_not_axis1 = m->tp > 1; /* tp means tensor parallelism, not more data parallelism */
  /* sequence parallelism as the layout says: sp=0 none, sp=1 wherever it applies, else the ILP's choice */
  o.no_scatter = m->sp < 0;
  o.seq_scatter = m->sp > 0;
  o.serial_comm = m->serial_comm;
  o.inflight = m->recompute == RC_FULL ? 1 : B < m->pp ? B : m->pp; /* recomputing stages keep one microbatch */
  o.microbatches = B;
  o.step_mbs = step_mbs(B, m->pp);
  Mesh me;
  if (!mesh_make(&sub, m->dp, m->tp, po->mixed, &me, err)) return NULL;
  copies_link(&me, cl, n * m->pp);
  for (int s = 0; s < m->pp; s++) {
    Graph *sg = stage_graph(g, layer_of, s, s);
    if (!autodiff(sg, 1, err)) return NULL;
    bool retry = o.inflight > 1 && m->recompute < 0; /* if it does not fit, perhaps with recomputation */
    FILE *first = retry ? fopen("/dev/null", "w") : err;
    const Plan *pl = plan_intra(sg, &sub, &me, &o, first);
    if (retry) fclose(first);
    if (!pl && retry) {
      PlanOptions one = o;
      one.inflight = 1;
      pl = plan_intra(sg, &sub, &me, &one, err);
    }
    if (!pl) return NULL;
    PipeStage *ps = &pp->stages[s];
    *ps = (PipeStage){.first = s * L / m->pp,
                      .last = (s + 1) * L / m->pp - 1,
                      .nodes = sub.nodes,
                      .per_node = sub.devices_per_node,
                      .device0 = s * n,
                      .plan = pl};
    stage_costs(pl, &ps->t, &ps->sync, &ps->memory);
    ps->update = pl->update_s;
    if (s + 1 < m->pp) {
      ps->p2p_bytes = boundary_bytes(g, layer_of, s + 1, s + 1, po->mixed) / n;
      bool inter = ((s + 1) * n - 1) / dpn != ((s + 1) * n) / dpn || sub.nodes > 1;
      ps->p2p = inter ? cl->inter_latency + ps->p2p_bytes / cl->inter_bandwidth
                      : cl->intra_latency + ps->p2p_bytes / cl->intra_bandwidth;
    }
  }
  Summary sm;
  summarize(g, &sm);
  pp->model_flops = sm.flops_einsum * B;
  if (!choose_schedule(pp, cl->memory, m->schedule, m->recompute, err)) return NULL;
  if (boundary_reshards(pp) && !choose_schedule(pp, cl->memory, pp->schedule, m->recompute, err)) return NULL;
  rerun_listing(pp);
  return pp;
}

PipelinePlan *plan_manual(const char *path, const ElabOptions *eo, const Cluster *cl, const PlanOptions *po,
                          const Manual *given, FILE *err) {
  double t0 = now_seconds();
  Manual m = *given;
  Graph *g1 = load_at(path, eo, 1, err);
  if (!g1 || !manual_check(&m, g1, cl, err)) return NULL;
  int64_t batch = graph_dim(g1, "batch", 0);
  PipelinePlan *best = NULL;
  char *why = NULL; /* without mb: why the last count tried failed */
  int last = 0;
  for (int B = m.mb ? m.mb : 1; B <= (m.mb ? m.mb : 64); B++) {
    /* without mb: powers of two, and the stages' count times one (an interleaved schedule's multiples) */
    int k = B % m.pp ? B : B / m.pp;
    if (!m.mb && (k & (k - 1))) continue;
    if (batch > 0 && (batch % B || (batch / B) % m.dp)) continue;
    size_t len = 0;
    free(why);
    why = NULL;
    FILE *quiet = m.mb ? err : open_memstream(&why, &len);
    PipelinePlan *pp = quiet ? manual_at(path, eo, cl, po, &m, B, quiet) : NULL;
    if (quiet && quiet != err) fclose(quiet);
    last = B;
    if (pp && (!best || pp->step_s < best->step_s)) best = pp;
    if (batch <= 0) break;
  }
  if (!best && !m.mb) {
    const char *r = why ? why : "", *e = r;
    while ((e = strstr(e, "carve: error: "))) r = e += 14; /* the error, past any notes before it */
    if (!last)
      fprintf(err, "carve: error: no microbatch count up to 64 divides the batch of %lld into a multiple of dp=%d\n",
              (long long)batch, m.dp);
    else if (batch <= 0)
      fprintf(err, "carve: error: the manual plan does not fit: %s%s", r, *r ? "" : "no plan\n");
    else
      fprintf(
          err,
          "carve: error: the manual plan fits at no microbatch count tried (powers of two%s, up to 64); at %d: %s%s",
          m.pp > 1 ? arena_printf(" and %d times them", m.pp) : "", last, r, *r ? "" : "no plan\n");
  }
  free(why);
  if (!best) return NULL;
  best->search_s = now_seconds() - t0;
  throughput(best, po);
  return best;
}

/* Does stage s's plan split anything but the batch (or a dim computed from it) over mesh axis 0? */
static bool axis0_beyond_batch(const Plan *pl, char *what, size_t n) {
  const Graph *g = pl->g;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (v->op == OP_PARAM) continue; /* a parameter kept whole on each replica is still correct */
    for (int k = -1; k < (v->op == OP_INPUT ? 0 : v->nin); k++) {
      const Spec *sp = k < 0 ? &pl->layout[i] : &pl->reads[(size_t)i * MAXIN + k];
      const Node *t = k < 0 ? v : g->nodes[v->in[k]];
      for (int d = 0; d < sp->rank && d < t->shape.rank; d++)
        if ((sp->d[d] & 1) && !graph_dim_per_batch(g, t, d)) {
          snprintf(what, n, "%s dim %d", t->name, d);
          return true;
        }
    }
  }
  return false;
}

/* A plan as a program layout. Stages whose parameters are all whole, one
   of them splitting the batch over mesh axis 1 (pure data parallelism on a
   1 x k mesh), are data parallel over all their devices (stages may differ
   in devices);
   otherwise each stage's n0 x n1 mesh becomes n0 replicas (the batch on
   axis 0) of n1 tensor-parallel ranks that follow the stage plan's axis 1
   (n1 the same on every stage). stage_last needs one int per stage. */
bool pipeline_layout(const PipelinePlan *p, Layout *L, int *stage_last, FILE *err) {
  const PipeStage *s0 = &p->stages[0];
  int *stage_rc = arena_alloc(sizeof(int) * (size_t)p->nstages);
  for (int s = 0; s < p->nstages; s++) stage_rc[s] = p->stages[s].recompute;
  int *stage_dp = arena_alloc(sizeof(int) * (size_t)p->nstages);
  bool split = false, batch1 = false, tp_wide = false; /* batch1: a stage splits the batch over mesh axis 1 */
  for (int s = 0; s < p->nstages; s++) {
    const PipeStage *st = &p->stages[s];
    stage_dp[s] = st->nodes * st->per_node;
    if (st->plan->zero != s0->plan->zero) {
      fprintf(err, "stages differ in ZeRO stage");
      return false;
    }
    const Graph *g = st->plan->g;
    for (int i = 0; i < g->nfwd; i++)
      for (int k = 0; k < st->plan->layout[i].rank; k++) {
        split |= g->nodes[i]->op == OP_PARAM && st->plan->layout[i].d[k] != 0;
        batch1 |= (st->plan->layout[i].d[k] & 2) && graph_dim_per_batch(g, g->nodes[i], k);
      }
    tp_wide |= st->plan->mesh.n[1] > 1;
    stage_last[s] = st->last;
  }
  split |= tp_wide && !batch1; /* tp ranks that keep the batch whole: tensor parallel, even splitting nothing */
  *L = (Layout){.dp = stage_dp[0],
                .stage_dp = stage_dp,
                .pp = p->nstages,
                .v = p->v,
                .tp = 1,
                .microbatches = p->microbatches,
                .schedule = p->schedule,
                .zero = s0->plan->zero,
                .recompute = p->stages[0].recompute,
                .stage_recompute = stage_rc,
                .stage_last = p->v > 1 ? p->chunk_last : stage_last, /* per virtual stage */
                .layers_want = MAXGROUPS};
  if (!split) return true;
  const Mesh *m0 = &s0->plan->mesh;
  const Plan **plans = arena_alloc(sizeof(Plan *) * (size_t)(p->nstages * p->v));
  for (int s = 0; s < p->nstages; s++) {
    const Plan *pl = p->stages[s].plan;
    char what[300];
    if (pl->mesh.n[1] != m0->n[1]) {
      fprintf(err, "stages with different tensor-parallel widths (%d, %d)", m0->n[1], pl->mesh.n[1]);
      return false;
    }
    stage_dp[s] = pl->mesh.n[0];
    if (axis0_beyond_batch(pl, what, sizeof what)) {
      fprintf(err, "stage %d splits %s over mesh axis 0, where carve lowers only the batch", s, what);
      return false;
    }
    for (int c = 0; c < p->v; c++) plans[c * p->nstages + s] = pl; /* virtual stage c x pp + s is on device s */
  }
  L->dp = m0->n[0], L->tp = m0->n[1], L->plans = plans;
  return true;
}
