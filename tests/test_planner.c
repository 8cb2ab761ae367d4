/* test_planner.c: the intra-operator planner on cases whose answer is known.
 *   - MLP on a 1x4 mesh: large batch, small hidden -> data parallel; small
 *     batch, large hidden -> Megatron (column then row, one activation
 *     all-reduce per layer pair forward, no weight all-reduce);
 *   - the same on 2x2 with a cheap and an expensive axis: data parallel along
 *     the expensive one, Megatron along the cheap one;
 *   - a GPT layer at small batch, large hidden on one 8-GPU node: heads split,
 *     MLP column then row; at large batch and small hidden: data parallel;
 *   - an MoE layer: experts split over the mesh, all-to-all dispatch/combine;
 *   - memory: a model that does not fit replicated is sharded; one that fits
 *     nowhere gets the infeasibility message;
 *   - the ILP optimum equals brute force over every strategy combination;
 *   - impossible meshes and unsplittable dims are refused with a message;
 *   - the rule book: every split offered to a plan that is to be lowered, and
 *     every split of a tensor-parallel plan, is one codegen's kernels take. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "planner.h"

static const char *tests_dir;

static Plan *plan(const char *model, const char *sets, const char *cluster, int n0, int n1, PlanOptions *po,
                  char **err_text) {
  Diag d;
  diag_init(&d, stderr);
  ElabOptions eo = {0};
  parse_sets(sets, &eo.sets, &eo.nsets, stderr);
  Graph *g = frontend_load(model_resolve(model), &eo, &d);
  free(eo.sets);
  if (!g || !autodiff(g, 1, stderr)) return NULL;
  const char *path = strchr(cluster, '.') ? arena_printf("%s/clusters/%s", tests_dir, cluster) : cluster;
  Cluster *c = cluster_load(path, stderr);
  if (!c) return NULL;
  PlanOptions dflt = {.zero = -1, .batch_axis = -1, .time_limit = 30};
  if (!po) po = &dflt;
  if (po->time_limit == 0) po->time_limit = 30;
  char *buf = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&buf, &len);
  Mesh me;
  Plan *p = NULL;
  if (mesh_make(c, n0, n1, po->mixed, &me, err)) p = plan_intra(g, c, &me, po, err);
  fclose(err);
  if (err_text)
    *err_text = buf;
  else {
    if (len) fputs(buf, stderr);
    free(buf);
  }
  return p;
}

static const char *spec_of(const Plan *p, const char *name) {
  static char buf[8][64];
  static int k;
  for (int i = 0; i < p->g->nfwd; i++)
    if (strcmp(p->g->nodes[i]->name, name) == 0) return spec_str(&p->layout[i], buf[k++ % 8], 64);
  return "(no such tensor)";
}

/* Collectives whose tensor is a parameter (or a bucket of a layer's
   parameter gradients, which counts one a parameter), and forward
   collectives. */
static int count_comms(const Plan *p, bool params, CommPhase phase, int axes) {
  int n = 0;
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *c = &p->comms[i];
    bool is_param = c->what && (strstr(c->what, ".gradients") || strstr(c->what, "gradients outside"));
    for (int j = 0; j < p->g->nfwd; j++)
      if (p->g->nodes[j]->op == OP_PARAM && c->what && strcmp(p->g->nodes[j]->name, c->what) == 0) is_param = true;
    if (is_param == params && (phase < 0 || c->phase == phase) && (axes == 0 || c->axes == axes)) n += c->count;
  }
  return n;
}

static void test_mlp_1d(void) {
  Plan *dp = plan("mlp", "batch=256,hidden=32,layers=6", "node4.cluster", 1, 4, NULL, NULL);
  CHECK(dp != NULL, "data-parallel case plans");
  if (dp) {
    for (int l = 0; l < 6; l++)
      CHECK(strcmp(spec_of(dp, arena_printf("layers.%d.w", l)), "R R") == 0, "layer %d weight replicated: %s", l,
            spec_of(dp, arena_printf("layers.%d.w", l)));
    CHECK(strcmp(spec_of(dp, "layers.0.x/einsum"), "S1 R") == 0, "activations split on batch");
    CHECK(count_comms(dp, false, -1, 0) == 0, "no activation collectives (%d)", count_comms(dp, false, -1, 0));
    CHECK(count_comms(dp, true, PHASE_BACKWARD, 0) >= 6, "gradient all-reduces for every weight");
  }
  Plan *mg = plan("mlp", "batch=32,hidden=256,layers=6", "node4.cluster", 1, 4, NULL, NULL);
  CHECK(mg != NULL, "Megatron case plans");
  if (mg) {
    for (int l = 0; l < 6; l++) {
      const char *want = l % 2 ? "S1 R" : "R S1", *got = spec_of(mg, arena_printf("layers.%d.w", l));
      CHECK(strcmp(got, want) == 0, "layer %d weight %s, expected %s (column, then row)", l, got, want);
    }
    CHECK(count_comms(mg, true, -1, 0) == 0, "no weight collectives (%d)", count_comms(mg, true, -1, 0));
    int fwd = 0;
    for (int i = 0; i < mg->ncomms; i++)
      if (mg->comms[i].phase == PHASE_FORWARD && mg->comms[i].kind == COLL_ALL_REDUCE &&
          strstr(mg->comms[i].what, "layers."))
        fwd += mg->comms[i].count;
    CHECK(fwd == 3, "one forward activation all-reduce per layer pair: %d for 6 layers", fwd);
  }
}

/* Two nodes of two devices, priced as a run without overlap (every gradient
   sync after the backward pass): Megatron inside the node, data parallel
   across. With overlap (the default), this small model's syncs hide behind
   its backward pass, and pure data parallelism costs no sync time at all. */
static void test_mlp_2d(void) {
  PlanOptions serial = {.zero = -1, .batch_axis = -1, .serial_comm = true};
  Plan *o = plan("mlp", "batch=512,hidden=256,layers=6", "two-nodes.cluster", 2, 2, NULL, NULL);
  CHECK(o && !strcmp(spec_of(o, "layers.0.w"), "R R") && !strcmp(spec_of(o, "layers.1.w"), "R R") &&
            o->sync_hidden_s > 0,
        "overlapped: data parallel on both axes, its sync hidden (%s, %s)", o ? spec_of(o, "layers.0.w") : "-",
        o ? spec_of(o, "layers.1.w") : "-");
  Plan *p = plan("mlp", "batch=512,hidden=256,layers=6", "two-nodes.cluster", 2, 2, &serial, NULL);
  CHECK(p != NULL, "2x2 case plans");
  if (!p) return;
  CHECK(p->sync_hidden_s == 0, "without overlap nothing is hidden");
  CHECK(p->mesh.inter[0] && !p->mesh.inter[1], "axis 0 crosses nodes, axis 1 does not");
  /* tensor parallel along the cheap axis: Megatron's column then row split
     (an all-reduce a layer pair, forward and backward), or columns both
     (each layer gathers its input and reduce-scatters its input gradient:
     the same bytes) */
  for (int l = 0; l < 2; l++) {
    const char *w = spec_of(p, arena_printf("layers.%d.w", l));
    CHECK(!strcmp(w, "R S1") || !strcmp(w, "S1 R"), "layer %d's weight split along the cheap axis: %s", l, w);
  }
  CHECK(spec_of(p, "layers.0.x/einsum")[0] == 'S' && spec_of(p, "layers.0.x/einsum")[1] == '0',
        "data parallel along the expensive axis: activations %s", spec_of(p, "layers.0.x/einsum"));
  CHECK(count_comms(p, true, -1, 2) == 0, "no weight collectives on the cheap axis");
  CHECK(count_comms(p, true, PHASE_BACKWARD, 1) >= 6, "weight gradients all-reduced on the expensive axis");
}

static void test_gpt(void) {
  const char *big = "batch=1,seq=2048,hidden=12288,heads=96,layers=2,vocab=51200";
  Plan *p = plan("gpt", big, "dgx-a100", 1, 8, NULL, NULL);
  CHECK(p != NULL, "GPT at small batch, large hidden plans");
  if (p) {
    CHECK(strcmp(spec_of(p, "layers.0.w_q"), "R S1 R") == 0, "attention heads split: w_q %s",
          spec_of(p, "layers.0.w_q"));
    CHECK(strcmp(spec_of(p, "layers.0.w_k"), "R S1 R") == 0 && strcmp(spec_of(p, "layers.0.w_v"), "R S1 R") == 0,
          "k and v by heads too");
    CHECK(strcmp(spec_of(p, "layers.0.w_fc"), "R S1") == 0 && strcmp(spec_of(p, "layers.0.w_proj"), "S1 R") == 0,
          "MLP column then row: %s, %s", spec_of(p, "layers.0.w_fc"), spec_of(p, "layers.0.w_proj"));
    CHECK(count_comms(p, true, -1, 0) == 0, "no weight gradient collectives");
  }
  Plan *d = plan("gpt", "batch=64,seq=128,hidden=128,heads=4,layers=2,vocab=256", "dgx-a100", 1, 8, NULL, NULL);
  CHECK(d != NULL, "GPT at large batch, small hidden plans");
  if (d) {
    int replicated = 0, params = 0;
    for (int i = 0; i < d->g->nfwd; i++)
      if (d->g->nodes[i]->op == OP_PARAM) {
        params++;
        int bits = 0;
        for (int k = 0; k < d->layout[i].rank; k++) bits |= d->layout[i].d[k];
        replicated += bits == 0;
      }
    CHECK(replicated == params, "data parallel: %d of %d parameters replicated", replicated, params);
    CHECK(strncmp(spec_of(d, "tokens"), "S1", 2) == 0, "tokens split on batch: %s", spec_of(d, "tokens"));
  }
}

/* Two DGX nodes, every mesh shape tried: the tensor-parallel axis (the one
 * splitting attention heads) stays on NVLink inside a node. At batch 128:
 * gradients are reduced in f32, so at small batches (32 here) the 1.6 GB
 * gradient all-reduce across nodes costs more than the activations' and
 * splitting the heads across nodes is the cheaper plan. */
static void test_tp_inside_nodes(void) {
  Diag d;
  diag_init(&d, stderr);
  ElabOptions eo = {0};
  parse_sets("batch=128,seq=512,vocab=1024,hidden=4096,heads=32,layers=2", &eo.sets, &eo.nsets, stderr);
  Graph *g = frontend_load(model_resolve("gpt"), &eo, &d);
  free(eo.sets);
  Cluster *c = cluster_load("dgx-a100", stderr);
  CHECK(g && c && autodiff(g, 1, stderr) && cluster_resize(c, 2, 0, stderr), "model and cluster");
  if (!g || !c) return;
  PlanOptions po = {.zero = -1, .batch_axis = -1, .mixed = true, .time_limit = 30};
  Plan *p = plan_best_mesh(g, c, &po, NULL, stderr);
  CHECK(p != NULL, "plans");
  if (!p) return;
  int heads_bits = 0;
  for (int i = 0; i < g->nfwd; i++)
    if (!strcmp(g->nodes[i]->name, "layers.0.w_q")) heads_bits = p->layout[i].d[1];
  CHECK(heads_bits != 0, "heads are split");
  for (int a = 0; a < 2; a++)
    if (heads_bits >> a & 1) CHECK(!p->mesh.inter[a], "the heads' mesh axis %d stays inside a node", a);
  printf("two DGX nodes: mesh %dx%d, heads split on axis %s\n", p->mesh.n[0], p->mesh.n[1],
         heads_bits == 1   ? "0"
         : heads_bits == 2 ? "1"
                           : "0 and 1");
}

static void test_moe(void) {
  Plan *p = plan("moe", "layers=2,experts=8,batch=8", "dgx-a100", 1, 8, NULL, NULL);
  CHECK(p != NULL, "MoE plans");
  if (!p) return;
  CHECK(strcmp(spec_of(p, "layers.0.w_in"), "S1 R R") == 0 && strcmp(spec_of(p, "layers.0.w_out"), "S1 R R") == 0,
        "experts split over the mesh: %s, %s", spec_of(p, "layers.0.w_in"), spec_of(p, "layers.0.w_out"));
  int a2a = 0;
  for (int i = 0; i < p->ncomms; i++) a2a += p->comms[i].kind == COLL_ALL_TO_ALL;
  CHECK(a2a >= 2, "all-to-all dispatch and combine (%d all-to-all entries)", a2a);
}

static void test_memory(void) {
  /* about 58M parameters: 0.9 GB of weights, gradients and Adam state
     replicated, on devices of 1 GB with room for activations */
  Plan *p = plan("gpt", "batch=8,seq=64,hidden=768,heads=12,layers=8,vocab=256", "node4.cluster", 1, 4, NULL, NULL);
  CHECK(p != NULL, "a model that does not fit replicated still plans");
  if (p) {
    double mem = p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts;
    CHECK(mem <= p->mesh.memory, "the plan fits: %.3g of %.3g bytes", mem, p->mesh.memory);
    int sharded = 0;
    for (int i = 0; i < p->g->nfwd; i++)
      if (p->g->nodes[i]->op == OP_PARAM)
        for (int k = 0; k < p->layout[i].rank; k++) sharded += p->layout[i].d[k] != 0;
    CHECK(p->zero > 0 || sharded > 0, "sharded: ZeRO %d, %d sharded parameter dims", p->zero, sharded);
  }
  char *err = NULL;
  Plan *q = plan("gpt", "batch=8,seq=64,hidden=2048,heads=16,layers=24,vocab=256", "node4.cluster", 1, 4, NULL, &err);
  CHECK(q == NULL, "a model that fits nowhere is refused");
  CHECK(err && strstr(err, "does not fit") && strstr(err, "needs") && strstr(err, "per device"),
        "the message says how much it needs: %s", err ? err : "");
  free(err);
}

/* A node limit (what the pipeline search gives each stage plan) stops the
 * solver early; the plan it keeps still fits and is never better than the
 * optimum; the once-per-step gradient syncs weigh 1/microbatches. */
static void test_limits(void) {
  const char *sets = "batch=8,seq=64,hidden=768,heads=12,layers=8,vocab=256";
  Plan *full = plan("gpt", sets, "node4.cluster", 1, 4, NULL, NULL);
  PlanOptions lim = {.zero = -1, .batch_axis = -1, .node_limit = 1};
  Plan *cut = plan("gpt", sets, "node4.cluster", 1, 4, &lim, NULL);
  CHECK(full && cut, "both plan");
  if (!full || !cut) return;
  CHECK(full->optimal, "without a limit the plan is optimal");
  CHECK(cut->objective >= full->objective * (1 - 1e-9), "a stopped search is no better than the optimum (%.6g, %.6g)",
        cut->objective, full->objective);
  CHECK(cut->optimal || cut->gap > 0, "a stopped search reports its gap (%g)", cut->gap);
  double mem = cut->mem_params + cut->mem_grads + cut->mem_optim + cut->mem_acts;
  CHECK(mem <= cut->mesh.memory, "and fits: %.3g of %.3g bytes", mem, cut->mesh.memory);
  /* data parallel at batch 256: the plan is dominated by gradient syncs at
     one microbatch; at 16 microbatches they weigh a sixteenth */
  const char *dp = "batch=256,hidden=32,layers=6";
  PlanOptions one = {.zero = 0, .batch_axis = -1, .force_dp = true};
  PlanOptions many = one;
  many.microbatches = 16;
  Plan *a = plan("mlp", dp, "node4.cluster", 1, 4, &one, NULL),
       *b = plan("mlp", dp, "node4.cluster", 1, 4, &many, NULL);
  CHECK(a && b, "mlp plans");
  if (!a || !b) return;
  double sync = plan_sync_s(a);
  CHECK(sync > 0, "data parallelism syncs gradients once per step (%g s)", sync);
  /* communication only: the compute also holds the optimizer update (its
     once-per-step share) and the gradient accumulation ((B - 1)/B of a pass
     per microbatch), docs/cost-model.md */
  CHECK(fabs(a->comm_s - b->comm_s - sync * 15 / 16) <= 1e-9 + 1e-6 * a->objective,
        "the sync weighs 1/16 at 16 microbatches (%.9g - %.9g vs %.9g)", a->comm_s, b->comm_s, sync * 15 / 16);
  CHECK(a->update_s > 0 && fabs(b->update_s - a->update_s) <= 1e-12 + 1e-9 * a->update_s,
        "the optimizer update is priced once per step (%g s)", a->update_s);
  PlanOptions longer = many; /* a step 20 microbatch times long (a pipeline's bubble): a twentieth */
  longer.step_mbs = 20;
  Plan *c = plan("mlp", dp, "node4.cluster", 1, 4, &longer, NULL);
  CHECK(c && fabs(a->comm_s - c->comm_s - sync * 19 / 20) <= 1e-9 + 1e-6 * a->objective,
        "the sync weighs 1/20 in a step of 20 microbatch times (%.9g)", c ? c->comm_s : 0);
}

/* Each case solved as `carve plan --manual` solves it (GLPK's presolver and
   search) and as a pipeline search does (warm starts: its own relaxation,
   and its first plan rounded from it, rounded_plan); the last case is tight
   in memory. (The rounding's repair, which moves variables to smaller
   strategies, runs in the searches of tight8.cluster's gpt plans, which
   the equivalence suite trains.) */
static void test_brute_force(void) {
  static const char *cases[][4] = {
      {"mlp", "batch=32,hidden=64,layers=2", "1x4", "node4.cluster"},
      {"mlp", "batch=64,hidden=32,layers=2", "2x2", "two-nodes.cluster"},
      {"mlp", "batch=16,hidden=128,layers=3", "2x2", "two-nodes.cluster"},
      {"mlp", "batch=64,hidden=64,layers=2,loss_kind=0", "1x4", "node4.cluster"},
      {"mlp", "batch=16,hidden=768,layers=2", "1x4", "tight8.cluster"},
  };
  for (size_t c = 0; c < 2 * sizeof cases / sizeof cases[0]; c++) {
    size_t i = c / 2;
    plan_warm_starts(c % 2);
    int n0, n1;
    mesh_parse(cases[i][2], &n0, &n1);
    Plan *p = plan(cases[i][0], cases[i][1], cases[i][3], n0, n1, NULL, NULL);
    plan_warm_starts(false);
    CHECK(p != NULL, "case %zu plans", i);
    if (!p) continue;
    double combos, best = ilp_brute_force(plan_last_instance(), &combos);
    CHECK(fabs(best - p->objective) <= 1e-9 * fabs(best) + 1e-12,
          "%s %s on %s%s: ILP %.9g, brute force %.9g (%.0f combinations)", cases[i][0], cases[i][1], cases[i][2],
          c % 2 ? " (warm)" : "", p->objective, best, combos);
    CHECK(fabs(p->compute_s + p->comm_s - p->sync_hidden_s - p->objective) <= 1e-6 * p->objective,
          "the plan's time breakdown, less the sync hidden behind the backward pass, adds up to the objective "
          "(%.9g - %.9g vs %.9g)",
          p->compute_s + p->comm_s, p->sync_hidden_s, p->objective);
    printf("brute force: %s %s on %s%s: %.0f combinations, optimum %.6g s = the ILP's\n", cases[i][0], cases[i][1],
           cases[i][2], c % 2 ? " (warm)" : "", combos, best);
  }
}

/* A JSON syntax check: value = object | array | string | number | literal. */
static const char *json_value(const char *p);
static const char *json_ws(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
  return p;
}
static const char *json_string(const char *p) {
  if (*p++ != '"') return NULL;
  for (; *p && *p != '"'; p++)
    if (*p == '\\' && !*++p) return NULL;
  return *p == '"' ? p + 1 : NULL;
}
static const char *json_value(const char *p) {
  p = json_ws(p);
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    p = json_ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
      if (close == '}') {
        if (!(p = json_string(json_ws(p)))) return NULL;
        p = json_ws(p);
        if (*p++ != ':') return NULL;
      }
      if (!(p = json_value(p))) return NULL;
      p = json_ws(p);
      if (*p == close) return p + 1;
      if (*p++ != ',') return NULL;
    }
  }
  if (*p == '"') return json_string(p);
  if (!strncmp(p, "true", 4) || !strncmp(p, "null", 4)) return p + 4;
  if (!strncmp(p, "false", 5)) return p + 5;
  char *end;
  strtod(p, &end);
  return end == p ? NULL : end;
}

static void test_json(void) {
  Plan *p = plan("moe", "layers=2,experts=8,batch=8", "dgx-a100", 1, 8, NULL, NULL);
  CHECK(p != NULL, "plans");
  if (!p) return;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  plan_json(p, f);
  fclose(f);
  const char *end = json_value(buf);
  CHECK(end && *json_ws(end) == 0, "the plan is one well-formed JSON value");
  static const char *keys[] = {"\"mesh\": [1, 8]",
                               "\"objective\":",
                               "\"predicted_step_s\":",
                               "\"memory_per_device_bytes\":",
                               "\"tensors\":",
                               "\"layers.0.w_in\": {\"kind\": \"parameter\", "
                               "\"shape\": [8, 768, 3072], \"sharding\": [\"S1\", \"R\", \"R\"]}",
                               "\"collectives\":",
                               "\"kind\": \"all-to-all\"",
                               "\"phase\": \"forward\"",
                               "\"count_per_step\":",
                               "\"mesh_axes\": [1]"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) CHECK(strstr(buf, keys[i]) != NULL, "JSON has %s", keys[i]);
  free(buf);
}

static void test_refusals(void) {
  char *err = NULL;
  CHECK(plan("mlp", "batch=32", "node4.cluster", 3, 3, NULL, &err) == NULL && strstr(err, "needs 9 devices"),
        "a mesh larger than the cluster: %s", err);
  free(err);
  PlanOptions dp = {.zero = -1, .batch_axis = -1, .force_dp = true};
  err = NULL;
  CHECK(plan("mlp", "batch=6", "node4.cluster", 1, 4, &dp, &err) == NULL && strstr(err, "cannot be split"),
        "a batch of 6 cannot be split 4 ways under --force-dp: %s", err);
  free(err);
}

/* The dim mesh axis a splits in spec s, -1 */
static int8_t axis_dim(const Spec *s, int a) {
  for (int d = 0; d < s->rank; d++)
    if (s->d[d] >> a & 1) return (int8_t)d;
  return -1;
}

/* Whether the code generator lowers op v split as specs (MAXIN + 1: the
   inputs, then the output at MAXIN) say: mesh axis 0 (the data-parallel
   replicas) splits only the batch and dims computed from it, and the
   kernel takes the split along axis 1 (tensor parallelism). */
static bool lowers(const Graph *g, const Node *v, const Spec *specs) {
  for (int k = -1; k < v->nin; k++) {
    const Spec *s = &specs[k < 0 ? MAXIN : k];
    const Node *t = k < 0 ? v : g->nodes[v->in[k]];
    for (int d = 0; d < s->rank; d++)
      if ((s->d[d] & 1) && !graph_dim_per_batch(g, t, d)) {
        char b[64];
        CHECK(false, "%s (%s): the planner offers %s, which splits %s dim %d over the replicas", v->name,
              op_info[v->op].name, spec_str(s, b, sizeof b), t->name, d);
        return false;
      }
  }
  int8_t in[MAXIN];
  for (int k = 0; k < v->nin; k++) in[k] = axis_dim(&specs[k], 1);
  if (!kernel_takes(g, v, axis_dim(&specs[MAXIN], 1), in)) {
    char b[64];
    CHECK(false, "%s (%s): the planner offers %s, which codegen runs whole", v->name, op_info[v->op].name,
          spec_str(&specs[MAXIN], b, sizeof b));
    return false;
  }
  return true;
}

/* The rule book: for every op of every shipped model, every strategy the
   planner offers a plan that is to be lowered is one codegen's kernels take,
   and so is every op of the plan chosen for tensor parallelism by hand
   (followers included, whose split is their input's). */
static void test_rule_book(void) {
  const char *models[] = {"mlp", "gpt", "bert", "moe", "llama"};
  Cluster *c = cluster_load("local", stderr);
  CHECK(c && cluster_resize(c, 1, 4, stderr), "the local cluster with 4 devices");
  const int meshes[][2] = {{1, 2}, {1, 4}, {2, 2}};
  Spec *specs = arena_alloc(sizeof(Spec) * (MAXIN + 1) * 512);
  for (int m = 0; m < 5; m++) {
    Diag d;
    diag_init(&d, stderr);
    ElabOptions eo = {.preset = arena_printf("%s-tiny", models[m])};
    Graph *g = frontend_load(model_resolve(models[m]), &eo, &d);
    CHECK(g && autodiff(g, 1, stderr), "%s loads", models[m]);
    if (!g) continue;
    int bad = 0, offers = 0;
    for (int k = 0; k < 3; k++) {
      Mesh me;
      if (!mesh_make(c, meshes[k][0], meshes[k][1], false, &me, stderr)) continue;
      PlanOptions po = {.zero = 0, .batch_axis = -1, .time_limit = 30, .quiet = true, .lowerable = true};
      for (int i = 0; i < g->nfwd; i++) {
        const Node *v = g->nodes[i];
        if (v->op == OP_PARAM || v->op == OP_INPUT) continue;
        int n = plan_offers(g, v, &me, &po, specs, 512);
        offers += n;
        for (int s = 0; s < n && bad < 5; s++) bad += !lowers(g, v, &specs[s * (MAXIN + 1)]);
      }
    }
    CHECK(offers > 0, "%s: the planner offers strategies", models[m]);
    const Plan *p = plan_tp(g, 2, stderr);
    CHECK(p != NULL, "%s: a tp=2 plan", models[m]);
    for (int i = 0; p && i < g->nfwd && bad < 5; i++) {
      const Node *v = g->nodes[i];
      if (v->op == OP_PARAM || v->op == OP_INPUT) continue;
      Spec sp[MAXIN + 1] = {0};
      for (int k = 0; k < v->nin; k++) sp[k] = p->reads[(size_t)i * MAXIN + k];
      sp[MAXIN] = p->layout[i];
      bad += !lowers(g, v, sp);
    }
  }
}

int main(int argc, char **argv) {
  tests_dir = argc > 1 ? argv[1] : "tests";
  test_mlp_1d();
  test_mlp_2d();
  test_gpt();
  test_tp_inside_nodes();
  test_moe();
  test_memory();
  test_limits();
  test_brute_force();
  test_json();
  test_refusals();
  test_rule_book();
  arena_reset();
  return test_summary();
}
