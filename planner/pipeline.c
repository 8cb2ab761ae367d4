/* pipeline.c: the whole plan. For each microbatch count B that divides the
 * batch, the model is elaborated at batch / B; its layers (repeat
 * iterations) are grouped into at most MAXGROUPS groups; every span of
 * groups on every submesh (1, 2, ... devices of a node that divide it, as a
 * 1 x k mesh, or n whole nodes as an n x devices-per-node mesh; beyond 8
 * nodes only whole nodes, n dividing the node count) gets the
 * intra-operator plan of its stage graph (planner/stages.c), with memory
 * for the activations of as many microbatches as a 1F1B pipeline keeps in
 * flight at most (min(B, devices / stage devices)). A stage's time per
 * microbatch is its plan's time less the once-per-step gradient
 * synchronisation, which is paid once at the end. The stage DP picks spans
 * and submeshes; the 1F1B schedule is simulated with those times and with
 * point-to-point transfers of the stage boundaries; the best B wins.
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
#include <stdlib.h>
#include <string.h>

#include "planner.h"

#define MAXGROUPS 8
#define MAXSUB 32

typedef struct Sub {
  int nodes, per_node, devices;
} Sub;

typedef struct Ctx {
  const Graph *g;
  int *group; /* forward node -> group */
  int G;
  int *first_layer, *last_layer; /* per group */
  const Cluster *cl;
  const PlanOptions *po;
  Sub sub[MAXSUB];
  int nsub, D, B;
  int unit;               /* devices per unit the stage DP counts: 1, or a node */
  bool compose;           /* search with composed span costs (large clusters) */
  double *t, *sync, *mem; /* [i][j][k] cache; NAN: not yet */
  uint64_t *sig;          /* [i][j][k]: the span's signature, once known */
  const Plan **plan;
  int ilps;
} Ctx;

static size_t idx(const Ctx *c, int i, int j, int k) {
  return ((size_t)i * (size_t)c->G + (size_t)j) * (size_t)c->nsub + (size_t)k;
}

/* Gradient syncs and ZeRO gathers happen once per step, not per microbatch. */
static double once_per_step(const Plan *p) {
  double t = 0;
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *c = &p->comms[i];
    if (!comm_once_per_step(p, c)) continue;
    for (int a = 0; a < 2; a++)
      if (c->axes >> a & 1) t += c->count * coll_time(&p->mesh, c->kind, a, c->bytes);
  }
  return t;
}

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
  }
  return h;
}

static double exact_cost(Ctx *c, int i, int j, int k) {
  size_t x = idx(c, i, j, k);
  if (!isnan(c->t[x])) return c->t[x];
  Graph *sg = stage_graph(c->g, c->group, i, j);
  uint64_t sig = signature(sg) ^ ((uint64_t)k * 0x9e3779b97f4a7c15ull);
  for (size_t y = 0; y < (size_t)c->G * (size_t)c->G * (size_t)c->nsub; y++)
    if (c->sig[y] == sig && !isnan(c->t[y])) { /* an identical span on the same submesh */
      c->sig[x] = sig, c->plan[x] = c->plan[y], c->sync[x] = c->sync[y], c->mem[x] = c->mem[y];
      return c->t[x] = c->t[y];
    }
  c->sig[x] = sig;
  Cluster sub = *c->cl;
  sub.nodes = c->sub[k].nodes;
  sub.devices_per_node = c->sub[k].per_node;
  PlanOptions po = *c->po;
  int most = c->D / c->sub[k].devices; /* stages a pipeline could still have */
  po.inflight = c->B < most ? c->B : most;
  po.quiet = true;
  FILE *quiet = fopen("/dev/null", "w");
  const Plan *p = NULL;
  /* a part of a node is a 1 x k mesh; whole nodes are nodes x devices-per-node,
     axis 0 across nodes and axis 1 inside them */
  Mesh me;
  if (autodiff(sg, 1, quiet) && mesh_make(&sub, sub.nodes, sub.devices_per_node, po.mixed, &me, quiet)) {
    p = plan_intra(sg, &sub, &me, &po, quiet);
    if (!p && po.inflight > 1) { /* room for one microbatch only: recomputation may still fit it */
      po.inflight = 1;
      p = plan_intra(sg, &sub, &me, &po, quiet);
    }
  }
  fclose(quiet);
  c->ilps++;
  c->plan[x] = p;
  if (!p) return c->t[x] = -1;
  c->sync[x] = once_per_step(p);
  c->mem[x] = p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts;
  return c->t[x] = p->objective - c->sync[x];
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

static Graph *load_at(const char *path, const ElabOptions *eo, int B, FILE *err) {
  Diag d;
  diag_init(&d, err);
  return frontend_load_microbatch(path, eo, B, &d);
}

/* Groups of consecutive layers, at most MAXGROUPS. */
static void group_layers(Ctx *c, int L, const int *layer_of) {
  c->G = L < MAXGROUPS ? L : MAXGROUPS;
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
/* Per-stage times of schedule `kind` with v chunks: the forward is a third
 * of a stage's time, the backward two thirds (ZB-H1: one third for the input
 * gradient, one for the weight gradient); an interleaved chunk does 1/v of
 * its stage and passes its boundary on like the stage does. */
static bool sim_input_rc(const PipelinePlan *pp, SchedKind kind, int v, bool recompute, SimInput *in, FILE *err) {
  int p = pp->nstages, S = p * v;
  Schedule *sched = schedule_make(kind, p, pp->microbatches, v, err);
  if (!sched) return false;
  double *tf = arena_alloc(sizeof(double) * (size_t)S), *tb = arena_alloc(sizeof(double) * (size_t)S);
  double *tw = arena_alloc(sizeof(double) * (size_t)S), *p2p = arena_alloc(sizeof(double) * (size_t)S);
  double tail = 0, link = 0;
  for (int d = 0; d < p; d++) link = fmax(link, pp->stages[d].p2p);
  for (int vs = 0; vs < S; vs++) {
    const PipeStage *st = &pp->stages[vs % p];
    double t = st->t / v;
    tf[vs] = t / 3;
    tb[vs] = (kind == SCHED_ZB_H1 ? t / 3 : 2 * t / 3) + (recompute ? t / 3 : 0); /* re-run the forward */
    tw[vs] = t / 3;
    p2p[vs] = vs % p == p - 1 ? link : st->p2p; /* a chunk's last device hands on to device 0 */
    tail = fmax(tail, st->sync);
  }
  *in = (SimInput){.sched = sched, .t_f = tf, .t_b = tb, .t_w = tw, .t_p2p = p2p, .t_tail = tail};
  return true;
}

bool pipeline_sim_input(const PipelinePlan *p, SimInput *in, FILE *err) {
  return sim_input_rc(p, p->schedule, p->v, p->recompute, in, err);
}

/* The schedule that is fastest within memory; false if none fits. */
/* Memory of stage d under a schedule keeping `inflight` microbatches: with
 * full recomputation a stage keeps only its input per microbatch, plus one
 * microbatch's activations while it recomputes. */
static double stage_memory(const PipelinePlan *pp, int d, double inflight, bool recompute) {
  const Plan *pl = pp->stages[d].plan;
  double per_mb = pl->mem_acts / (pl->opt.inflight > 1 ? pl->opt.inflight : 1);
  double input = d > 0 ? pp->stages[d - 1].p2p_bytes : 0;
  double acts = recompute ? input * inflight + per_mb : per_mb * inflight;
  return pl->mem_params + pl->mem_grads + pl->mem_optim + acts;
}

/* The schedule and recomputation that are fastest within memory; false if
 * nothing fits. `only` fixes the schedule (SCHED_KINDS: any), `rc` the
 * recomputation (-1: either). */
static bool choose_schedule(PipelinePlan *pp, double device_memory, SchedKind only, int rc, FILE *err) {
  static const SchedKind kinds[] = {SCHED_1F1B, SCHED_GPIPE, SCHED_INTERLEAVED, SCHED_ZB_H1};
  bool found = false;
  FILE *quiet = fopen("/dev/null", "w");
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    for (int recompute = 0; recompute < 2; recompute++) {
      if ((only != SCHED_KINDS && kinds[i] != only) || (rc >= 0 && rc != recompute)) continue;
      int v = kinds[i] == SCHED_INTERLEAVED ? 2 : 1;
      SimInput in;
      SimResult r;
      if (!sim_input_rc(pp, kinds[i], v, recompute, &in, quiet) || !simulate(&in, &r, quiet)) continue;
      bool fits = true;
      for (int d = 0; d < pp->nstages; d++) {
        double inflight = (double)schedule_max_inflight(in.sched, d) / v;
        if (kinds[i] == SCHED_ZB_H1) inflight = fmin(pp->nstages, pp->microbatches);
        fits &= stage_memory(pp, d, inflight, recompute) <= device_memory;
      }
      if (fits && (!found || r.step_s < pp->step_s)) {
        found = true;
        pp->schedule = kinds[i], pp->v = v, pp->recompute = recompute, pp->sim = r, pp->step_s = r.step_s;
        pp->bubble = r.bubble;
        for (int d = 0; d < pp->nstages; d++) { /* report the memory at the schedule's peak */
          double inflight = (double)schedule_max_inflight(in.sched, d) / v;
          if (kinds[i] == SCHED_ZB_H1) inflight = fmin(pp->nstages, pp->microbatches);
          pp->stages[d].memory = stage_memory(pp, d, inflight, recompute);
        }
      }
    }
  fclose(quiet);
  if (!found)
    fprintf(err, "carve: error: no schedule fits the stages' activations in memory, even with recomputation\n");
  return found;
}

static PipelinePlan *assemble(Ctx *c, const Stage *st, int ns, FILE *err) {
  PipelinePlan *pp = arena_alloc(sizeof(PipelinePlan));
  pp->cluster = c->cl, pp->devices = c->D, pp->microbatches = c->B, pp->nstages = ns;
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

PipelinePlan *plan_pipeline(const char *path, const ElabOptions *eo, const Cluster *cl, const PlanOptions *po,
                            int fixed_B, FILE *progress, FILE *err) {
  double t0 = now_seconds();
  Graph *g1 = load_at(path, eo, 1, err);
  if (!g1) return NULL;
  int64_t batch = graph_dim(g1, "batch", 0);
  PipelinePlan *best = NULL;
  int ilps = 0;
  for (int B = 1; B <= 64 && (B == 1 || batch > 0); B *= 2) {
    if (fixed_B > 0 && B != fixed_B) {
      if (B > fixed_B) break;
      continue;
    }
    if (B > 1 && (batch % B || batch / B < 1)) break;
    Ctx c = {.cl = cl, .po = po, .D = cluster_devices(cl), .B = B};
    c.g = B == 1 ? g1 : load_at(path, eo, B, err);
    if (!c.g || !autodiff((Graph *)c.g, 1, err)) return NULL;
    int *layer_of = arena_alloc(sizeof(int) * (size_t)(c.g->nfwd + 1));
    int L = graph_layers(c.g, MAXGROUPS, layer_of);
    group_layers(&c, L, layer_of);
    submeshes(&c);
    c.compose = c.D > 16;
    size_t cells = (size_t)c.G * (size_t)c.G * (size_t)c.nsub;
    c.t = arena_alloc(sizeof(double) * cells), c.sync = arena_alloc(sizeof(double) * cells);
    c.mem = arena_alloc(sizeof(double) * cells), c.plan = arena_alloc(sizeof(Plan *) * cells);
    c.sig = arena_alloc(sizeof(uint64_t) * cells);
    for (size_t i = 0; i < cells; i++) c.t[i] = NAN;
    int devs[MAXSUB];
    for (int k = 0; k < c.nsub; k++) devs[k] = c.sub[k].devices / c.unit;
    StageProblem sp = {c.G, c.nsub, devs, c.D / c.unit, B, span_cost, &c};
    Stage st[MAXGROUPS];
    int ns = 0;
    double total = stage_dp(&sp, st, &ns);
    ilps += c.ilps;
    if (progress)
      fprintf(progress, "microbatches %d: %s (%d stage plans)\n", B,
              total < 0 ? "no plan fits" : arena_printf("%d stage%s", ns, ns == 1 ? "" : "s"), c.ilps);
    if (total < 0) continue;
    FILE *quiet = fopen("/dev/null", "w"); /* a microbatch count that fails is just not chosen */
    PipelinePlan *pp = assemble(&c, st, ns, quiet);
    fclose(quiet);
    if (progress && pp) fprintf(progress, "  predicted step %.4g s\n", pp->step_s);
    if (progress && !pp) fprintf(progress, "  the chosen stages do not fit in memory as a whole\n");
    if (pp && (!best || pp->step_s < best->step_s)) {
      best = pp;
      best->layers = L;
      best->model = g1->model;
      Summary s;
      summarize(c.g, &s);
      best->model_flops = s.flops_einsum * B;
    }
  }
  if (!best) {
    fprintf(err, "carve: error: no pipeline plan fits the %d devices of %s at any microbatch count tried\n",
            cluster_devices(cl), cl->name);
    return NULL;
  }
  best->ilps = ilps;
  best->search_s = now_seconds() - t0;
  throughput(best, po);
  return best;
}

void pipeline_report(const PipelinePlan *p, FILE *out) {
  char a[32];
  fprintf(out, "plan for %s on %s (%d devices): %d stage%s, %s schedule%s, %d microbatch%s\n", p->model,
          p->cluster->name, p->devices, p->nstages, p->nstages == 1 ? "" : "s", sched_names[p->schedule],
          p->v > 1 ? arena_printf(" (%d chunks per device)", p->v) : "", p->microbatches,
          p->microbatches == 1 ? "" : "es");
  fprintf(out,
          "\npredicted step  %.4g s (bubble %.1f%%), %.1f TFLOP/s per device, MFU %.1f%% (model FLOPs)\n"
          "recomputation   %s\n\n",
          p->step_s, 100 * p->bubble, p->tflops_per_device, 100 * p->mfu,
          p->recompute ? "full: each stage keeps only its inputs and re-runs its forward before the backward" : "none");
  fprintf(out, "  %-6s %-9s %-14s %-8s %12s %12s %10s\n", "stage", "layers", "devices", "mesh", "s/microbatch",
          "sync s/step", "memory");
  for (int s = 0; s < p->nstages; s++) {
    const PipeStage *st = &p->stages[s];
    int n = st->nodes * st->per_node;
    fprintf(out, "  %-6d %-9s %-14s %-8s %12.4g %12.4g %10s\n", s, arena_printf("%d-%d", st->first, st->last),
            arena_printf("%d-%d", st->device0, st->device0 + n - 1),
            arena_printf("%dx%d", st->plan->mesh.n[0], st->plan->mesh.n[1]), st->t, st->sync,
            fmt_bytes(st->memory, a, sizeof a));
  }
  fprintf(out, "\nsearch: %d intra-operator plans, %.2f s\n", p->ilps, p->search_s);
}

void pipeline_json(const PipelinePlan *p, FILE *out) {
  fprintf(out, "{\n  \"format\": \"carve-plan\",\n  \"version\": 1,\n  \"model\": \"%s\",\n  \"cluster\": \"%s\",\n",
          p->model, p->cluster->name);
  fprintf(out,
          "  \"devices\": %d,\n  \"schedule\": \"%s\",\n  \"chunks_per_device\": %d,\n  \"microbatches\": %d,\n"
          "  \"zero_stage\": %d,\n",
          p->devices, sched_names[p->schedule], p->v, p->microbatches, p->stages[0].plan->zero);
  fprintf(out, "  \"recompute\": \"%s\",\n  \"predicted_step_s\": %.9g,\n  \"bubble\": %.6g,\n",
          p->recompute ? "full" : "none", p->step_s, p->bubble);
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
    fprintf(out, "%s\n    {\"layers\": [%d, %d], \"devices\": [", s ? "," : "", st->first, st->last);
    for (int d = 0; d < n; d++) fprintf(out, "%s%d", d ? ", " : "", st->device0 + d);
    fprintf(out,
            "], \"logical_mesh\": [%d, %d], \"predicted_stage_s\": %.9g, \"sync_s\": %.9g, "
            "\"p2p_s\": %.9g, \"memory_per_device_bytes\": %.0f, \"zero_stage\": %d}",
            st->plan->mesh.n[0], st->plan->mesh.n[1], st->t, st->sync, st->p2p, st->memory, st->plan->zero);
  }
  fprintf(out, "\n  ],\n  \"search\": {\"intra_plans\": %d, \"seconds\": %.6f}\n}\n", p->ilps, p->search_s);
}

/* ---------------------------------------------------------------- manual plans */

bool manual_parse(const char *text, Manual *m, FILE *err) {
  *m = (Manual){0, 0, 0, 0, SCHED_KINDS, -1, -1};
  const char *p = text;
  while (*p) {
    size_t len = strcspn(p, ","), eq = strcspn(p, "=");
    if (eq >= len) {
      fprintf(err, "carve: error: --manual expects key=value pairs, got '%.*s'\n", (int)len, p);
      return false;
    }
    const char *v = p + eq + 1;
    int vlen = (int)(len - eq - 1);
    char key[16];
    snprintf(key, sizeof key, "%.*s", (int)(eq < 15 ? eq : 15), p);
    char *end;
    long x = strtol(v, &end, 10);
    bool num = end == v + vlen && vlen > 0 && x >= 0 && x <= 1000000;
    int *field = !strcmp(key, "dp")   ? &m->dp
                 : !strcmp(key, "tp") ? &m->tp
                 : !strcmp(key, "pp") ? &m->pp
                 : !strcmp(key, "mb") ? &m->mb
                                      : NULL;
    if (field) {
      if (!num || x < 1) {
        fprintf(err, "carve: error: --manual: %s must be a whole number >= 1, got '%.*s'\n", key, vlen, v);
        return false;
      }
      *field = (int)x;
    } else if (!strcmp(key, "zero")) {
      if (!num || x > 3) {
        fprintf(err, "carve: error: --manual: zero is 0, 1, 2 or 3, got '%.*s'\n", vlen, v);
        return false;
      }
      m->zero = (int)x;
    } else if (!strcmp(key, "schedule")) {
      int k = 0;
      while (k < SCHED_KINDS && !((int)strlen(sched_names[k]) == vlen && !strncmp(v, sched_names[k], (size_t)vlen)))
        k++;
      if (k == SCHED_KINDS) {
        fprintf(err, "carve: error: --manual: schedule is gpipe, 1f1b, interleaved or zb-h1, got '%.*s'\n", vlen, v);
        return false;
      }
      m->schedule = (SchedKind)k;
    } else if (!strcmp(key, "recompute")) {
      if (vlen == 4 && !strncmp(v, "none", 4))
        m->recompute = 0;
      else if (vlen == 4 && !strncmp(v, "full", 4))
        m->recompute = 1;
      else {
        fprintf(err, "carve: error: --manual: recompute is none or full, got '%.*s'\n", vlen, v);
        return false;
      }
    } else {
      fprintf(err, "carve: error: --manual: unknown key '%s' (dp, tp, pp, mb, schedule, zero, recompute)\n", key);
      return false;
    }
    p += len + (p[len] == ',');
  }
  return true;
}

/* Checks that the plan divides the cluster and the model; fills defaults. */
static bool manual_check(Manual *m, const Graph *g, const Cluster *cl, FILE *err) {
  int D = cluster_devices(cl);
  int64_t batch = graph_dim(g, "batch", 0), heads = graph_dim(g, "heads", 0);
  if (!m->tp) m->tp = 1;
  if (!m->pp) m->pp = 1;
  if (!m->dp) m->dp = D / (m->tp * m->pp);
  if ((long)m->dp * m->tp * m->pp != D) {
    fprintf(err, "carve: error: --manual: dp x tp x pp = %d x %d x %d = %ld, but %s has %d devices\n", m->dp, m->tp,
            m->pp, (long)m->dp * m->tp * m->pp, cl->name, D);
    return false;
  }
  if (heads > 0 && heads % m->tp) {
    fprintf(err, "carve: error: --manual: tp=%d does not divide the model's %lld attention heads\n", m->tp,
            (long long)heads);
    return false;
  }
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
  if (!g || !autodiff(g, 1, err)) return NULL;
  int *layer_of = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1));
  int L = graph_layers(g, m->pp, layer_of);
  if (m->pp > L) {
    fprintf(err, "carve: error: --manual: pp=%d stages but the model has %d layers\n", m->pp, L);
    return NULL;
  }
  for (int i = 0; i < g->nfwd; i++) layer_of[i] = layer_of[i] * m->pp / L; /* equal spans */
  PipelinePlan *pp = arena_alloc(sizeof(PipelinePlan));
  pp->cluster = cl, pp->devices = cluster_devices(cl), pp->microbatches = B, pp->nstages = m->pp, pp->layers = L;
  pp->model = g->model;
  pp->ilps = m->pp;
  pp->stages = arena_alloc(sizeof(PipeStage) * (size_t)m->pp);
  int n = m->dp * m->tp, dpn = cl->devices_per_node;
  Cluster sub = *cl;
  sub.nodes = n > dpn ? n / dpn : 1;
  sub.devices_per_node = n > dpn ? dpn : n;
  PlanOptions o = *po;
  o.zero = m->zero;
  o.batch_axis = m->dp > 1 ? 0 : -1;
  o.inflight = m->recompute == 1 ? 1 : B < m->pp ? B : m->pp; /* recomputing stages keep one microbatch */
  Mesh me;
  if (!mesh_make(&sub, m->dp, m->tp, po->mixed, &me, err)) return NULL;
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
    ps->sync = once_per_step(pl);
    ps->t = pl->objective - ps->sync;
    ps->memory = pl->mem_params + pl->mem_grads + pl->mem_optim + pl->mem_acts;
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
  return choose_schedule(pp, cl->memory, m->schedule, m->recompute, err) ? pp : NULL;
}

PipelinePlan *plan_manual(const char *path, const ElabOptions *eo, const Cluster *cl, const PlanOptions *po,
                          const Manual *given, FILE *err) {
  double t0 = now_seconds();
  Manual m = *given;
  Graph *g1 = load_at(path, eo, 1, err);
  if (!g1 || !manual_check(&m, g1, cl, err)) return NULL;
  int64_t batch = graph_dim(g1, "batch", 0);
  PipelinePlan *best = NULL;
  for (int B = m.mb ? m.mb : 1; B <= (m.mb ? m.mb : 64); B *= 2) {
    if (batch > 0 && (batch % B || (batch / B) % m.dp)) {
      if (m.mb) break;
      continue;
    }
    FILE *quiet = m.mb ? err : fopen("/dev/null", "w");
    PipelinePlan *pp = manual_at(path, eo, cl, po, &m, B, quiet);
    if (quiet != err) fclose(quiet);
    if (pp && (!best || pp->step_s < best->step_s)) best = pp;
    if (batch <= 0) break;
  }
  if (!best) {
    if (!m.mb) fprintf(err, "carve: error: the manual plan fits at no microbatch count tried\n");
    return NULL;
  }
  best->search_s = now_seconds() - t0;
  throughput(best, po);
  return best;
}
