/* distribute.c: a training graph and a layout to one program per rank.
 *
 * The layout: dp data-parallel replicas of a pipeline of pp devices, each
 * device holding v consecutive-in-turn virtual stages (v > 1: interleaved);
 * each replica on tp ranks that split its tensors as an intra-operator plan
 * says (see Shard below); m microbatches per replica and step; a schedule
 * (GPipe, 1F1B, interleaved, ZB-H1) that orders each device's (stage,
 * microbatch, phase) tasks; a ZeRO stage; recomputation per stage (none,
 * selective: the attention core, or full). Rank = (device x dp + replica) x
 * tp + position.
 *
 * The graph is one microbatch of one replica (batch / (m dp) rows), its loss
 * gradient seeded with 1 / (m dp), so summing every replica's and
 * microbatch's parameter gradients gives the gradient of the whole batch's
 * mean loss: the step a single device would take.
 *
 * How the graph is cut:
 *   - forward nodes go to the virtual stage of their layer (never earlier
 *     than an input's stage, so values only flow to later stages);
 *   - a backward node goes where the forward node whose rule made it is;
 *   - parameters and inputs are copied to every stage that reads them; a
 *     parameter read on several devices (a tied embedding) has a copy and a
 *     partial gradient on each, summed over the copies once per step;
 *   - a parameter's gradient is the sum of its contributions (autodiff's add
 *     chain is not emitted): each is added into the rank's accumulator as
 *     soon as it is made.
 *
 * How a rank's step is emitted: its device's tasks in schedule order; in a
 * task, its stage's nodes of that phase in graph order. Values cross devices
 * between tasks: the sends of the tasks before and the receives of the
 * next, adjacent (one group on a rendezvous transport; a forward and the
 * backward after it exchange as one where that cannot wait on itself, see
 * pair_tasks), so that the plan runs where sends wait for their receives
 * (NCCL), which rendezvous.c checks once every rank is made. Every
 * (node, microbatch) has its own buffer; placing them over the whole step
 * makes the arena hold exactly what the schedule keeps in flight. With
 * recomputation, a backward task first runs its stage's forward (selective:
 * its attention core) again into fresh buffers, so the forward task's
 * buffers die after their sends and forward readers.
 *
 * Then, once per step: parameter gradients left partial over the tp ranks
 * all-reduced over them, gradients summed over replicas and parameter copies
 * (ZeRO 0: all-reduce; ZeRO 1: reduce-scatter at the end; ZeRO 2 and 3:
 * reduce-scatter after each microbatch), the global gradient norm (each
 * rank's sum of squares weighted by how many ranks hold the same elements,
 * summed over the world), clipping, the optimizer on the rank's part, and
 * (ZeRO 1, 2) an all-gather of the updated parameters. ZeRO 3 keeps only a
 * shard of each parameter and gathers it at the start of every task that
 * reads it.
 *
 * Precision: as in codegen.c; under bf16 a parameter's bf16 copy is cast
 * once per step, or, under ZeRO 3, its shard is cast and then gathered in
 * bf16. Gradient reductions stay f32 (the accumulators are). */
#include <stdlib.h>
#include <string.h>

#include "lower.h"
#include "planner.h"

typedef struct Dist {
  const Graph *g;
  const Train *t;
  const Layout *L;
  int S, world;
  int U, M;     /* graph instances ("units") per microbatch and per step: a stage of dp replicas gives each U / dp */
  int *dpd;     /* device -> its replicas */
  int *base;    /* device -> its first rank */
  int *repbase; /* device -> replicas on earlier devices */
  int maxdp;
  Schedule *sched;
  bool **paired;    /* [device][task]: exchanges with the next task as one (pair_tasks) */
  int *vst;         /* node -> virtual stage, -1 for leaves and add-chain nodes */
  bool *live;       /* node is emitted */
  bool *chain;      /* add node of a parameter's gradient sum */
  bool *wphase;     /* backward node runs in the W task (split schedules) */
  PtrVec *contribs; /* param -> its gradient contributions (node ids) */
  PtrVec *feeds;    /* node -> the params it contributes to */
  bool *need;       /* [node][device]: a node on that device reads it */
  bool *held;       /* [param][device]: a node on that device reads it */
  int *ndev;        /* param -> devices holding it */
  int *ncontrib;    /* [param][device]: contributions made on that device per microbatch */
  /* groups, the same list in every program */
  int ngroups, capg;
  int *gsize;
  int **granks;
  int world_group;
  int *dp_group;   /* [device][position] -> the replicas' ranks at that position */
  int *tp_group;   /* [device][replica] -> the replica's tp ranks */
  int *hold_group; /* [param][position] -> every rank holding the same part (ZeRO 0) */
  int *tie_group;  /* [param][replica][position] -> the copies on other devices (ZeRO >= 1, ndev > 1) */
  int tp;
  struct Shard *sh; /* per node: how the tp ranks of a replica split it */
  uint64_t plan_id; /* what the programs are made from: graph, training, layout, splits */
  DType *dt;        /* per node: the dtype of its values (value_dtypes) */
  bool *sel;        /* forward nodes selective recomputation re-runs */
  PtrVec *runs;     /* [virtual stage][TaskPhase, or 3: recomputed]: the nodes a task emits, in order */
  bool *tp_acc;     /* param x device -> its contributions there are added unreduced, its accumulator all-reduced
                       over tp per step */
  bool *tp_pend;    /* param x device -> those partial contributions are held whole for the split param: summed in
                       a whole buffer (Rank.pend), all-reduced and cut; its accumulator itself is never all-reduced */
} Dist;

/* Tensor parallelism inside a replica: each tensor is whole on every one of
   the tp ranks, or split along one dim (`out`: the dim of the node's value;
   `in[k]`: the dim the op reads input k in, -1 whole). An op whose output is
   a partial sum (a split contracted or reduced dim) all-reduces it over the
   tp ranks; a mean over split rows also divides by tp (`mean`), and so does
   the gradient of a mean loss over split rows (`post_scale`). */
typedef struct Shard {
  int8_t out, in[MAXIN];
  bool partial, mean, post_scale;
  bool cut;    /* computed whole, then cut to `out` (an expert-parallel dispatch) */
  bool defer;  /* partial, left unreduced: its one reader adds it to other partials (merge_partials) */
  int8_t once; /* an add of a whole input (this one) and a partial one: the first tp rank adds it, the others copy
                  the partial, and the sum is reduced (merge_partials); -1 */
} Shard;

static int dev_of(const Dist *D, int vs) { return vs % D->L->pp; }
static int rc_of(const Dist *D, int vs) { /* RC_NONE, RC_SELECTIVE or RC_FULL */
  return D->L->stage_recompute ? D->L->stage_recompute[vs % D->L->pp] : D->L->recompute;
}
static int rank_of(const Dist *D, int dev, int rep, int t) { return D->base[dev] + rep * D->tp + t; }
/* the replica of device dev that runs unit q */
static int owner(const Dist *D, int dev, int q) { return q % D->U / (D->U / D->dpd[dev]); }

static int intern_group(Dist *D, const int *ranks, int n) {
  for (int g = 0; g < D->ngroups; g++)
    if (D->gsize[g] == n && memcmp(D->granks[g], ranks, sizeof(int) * (size_t)n) == 0) return g;
  if (D->ngroups == D->capg) {
    D->capg = D->capg ? 2 * D->capg : 16;
    int *s = arena_alloc(sizeof(int) * (size_t)D->capg);
    int **r = arena_alloc(sizeof(int *) * (size_t)D->capg);
    if (D->ngroups) {
      memcpy(s, D->gsize, sizeof(int) * (size_t)D->ngroups);
      memcpy(r, D->granks, sizeof(int *) * (size_t)D->ngroups);
    }
    D->gsize = s, D->granks = r;
  }
  D->gsize[D->ngroups] = n;
  D->granks[D->ngroups] = arena_alloc(sizeof(int) * (size_t)n);
  memcpy(D->granks[D->ngroups], ranks, sizeof(int) * (size_t)n);
  return D->ngroups++;
}

static void collect(Dist *D, int p, int node) {
  const Node *n = D->g->nodes[node];
  if (grad_chain_of(D->g, n, D->g->nodes[p])) {
    D->chain[node] = true;
    for (int k = 0; k < n->nin; k++) collect(D, p, n->in[k]);
    return;
  }
  ptrvec_push(&D->contribs[p], (void *)(intptr_t)node);
  ptrvec_push(&D->feeds[node], (void *)(intptr_t)p);
}

/* Stages, liveness, what crosses devices, who holds which parameter. */
static bool analyse(Dist *D, FILE *err) {
  const Graph *g = D->g;
  const Layout *L = D->L;
  int n = g->n, P = L->pp;
  D->vst = arena_alloc(sizeof(int) * (size_t)n);
  D->live = arena_alloc(sizeof(bool) * (size_t)n);
  D->chain = arena_alloc(sizeof(bool) * (size_t)n);
  D->wphase = arena_alloc(sizeof(bool) * (size_t)n);
  D->contribs = arena_alloc(sizeof(PtrVec) * (size_t)n);
  D->feeds = arena_alloc(sizeof(PtrVec) * (size_t)n);
  D->need = arena_alloc(sizeof(bool) * (size_t)n * (size_t)P);
  D->held = arena_alloc(sizeof(bool) * (size_t)n * (size_t)P);
  D->ndev = arena_alloc(sizeof(int) * (size_t)n);
  D->ncontrib = arena_alloc(sizeof(int) * (size_t)n * (size_t)P);

  int *layer_of = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1));
  int nl = graph_layers(g, L->layers_want > 0 ? L->layers_want : D->S, layer_of);
  if (nl < D->S) {
    fprintf(err, "carve: error: the model has %d layer%s, too few for %d pipeline stages\n", nl, nl == 1 ? "" : "s",
            D->S);
    return false;
  }
  int *stage_of_layer = arena_alloc(sizeof(int) * (size_t)nl);
  for (int l = 0, s = 0; l < nl; l++) {
    if (L->stage_last) {
      while (s < D->S - 1 && l > L->stage_last[s]) s++;
      stage_of_layer[l] = s;
    } else {
      stage_of_layer[l] = (int)((int64_t)l * D->S / nl);
    }
  }
  if (L->stage_last)
    for (int s = 0; s < D->S; s++)
      if (L->stage_last[s] < (s ? L->stage_last[s - 1] + 1 : 0) || (s == D->S - 1 && L->stage_last[s] != nl - 1)) {
        fprintf(err,
                "carve: error: stage %d ends at layer %d: stages must cover layers 0-%d in order, each "
                "non-empty\n",
                s, L->stage_last[s], nl - 1);
        return false;
      }
  for (int i = 0; i < n; i++) {
    const Node *v = g->nodes[i];
    D->vst[i] = -1;
    if (is_leaf(v)) continue;
    int s;
    if (i < g->nfwd) {
      s = stage_of_layer[layer_of[i]];
      for (int k = 0; k < v->nin; k++)
        if (D->vst[v->in[k]] > s) s = D->vst[v->in[k]];
    } else {
      CARVE_ASSERT(v->origin >= 0 && v->origin < g->nfwd, "a backward node without its forward node");
      s = D->vst[v->origin];
    }
    D->vst[i] = s;
  }
  /* gradient contributions and the add chains that sum them */
  for (int p = 0; p < g->nfwd; p++)
    if (g->nodes[p]->op == OP_PARAM && g->grad[p] >= 0) collect(D, p, g->grad[p]);
  /* live: the loss, every contribution, and what they read */
  D->live[g->loss] = true;
  for (int p = 0; p < g->nfwd; p++)
    for (int k = 0; k < D->contribs[p].n; k++) D->live[(intptr_t)D->contribs[p].v[k]] = true;
  for (int i = n - 1; i >= 0; i--)
    if (D->live[i] && !D->chain[i])
      for (int k = 0; k < g->nodes[i]->nin; k++) D->live[g->nodes[i]->in[k]] = true;
  for (int i = 0; i < n; i++)
    if (D->chain[i]) D->live[i] = false;
  /* what crosses devices; who holds parameters */
  for (int i = 0; i < n; i++) {
    if (!D->live[i] || is_leaf(g->nodes[i])) continue;
    int d = dev_of(D, D->vst[i]);
    for (int k = 0; k < g->nodes[i]->nin; k++) {
      int u = g->nodes[i]->in[k];
      if (g->nodes[u]->op == OP_PARAM)
        D->held[(size_t)u * P + d] = true;
      else if (!is_leaf(g->nodes[u]) && dev_of(D, D->vst[u]) != d)
        D->need[(size_t)u * P + d] = true;
    }
    for (int k = 0; k < D->feeds[i].n; k++) D->ncontrib[(size_t)(intptr_t)D->feeds[i].v[k] * P + d]++;
  }
  for (int p = 0; p < g->nfwd; p++)
    for (int d = 0; d < P; d++) D->ndev[p] += D->held[(size_t)p * P + d];
  /* split schedules: B is the backward work an earlier stage waits for (the
     gradients sent back, and everything of this stage they need); all the
     rest, weight gradients above all, is W */
  bool *b = arena_alloc(sizeof(bool) * (size_t)n);
  for (int i = n - 1; i >= g->nfwd; i--) {
    if (!D->live[i]) continue;
    for (int d = 0; d < P; d++) b[i] |= D->need[(size_t)i * P + d];
    D->wphase[i] = D->sched->split_w && !b[i];
    for (int k = 0; k < g->nodes[i]->nin && b[i]; k++) {
      int u = g->nodes[i]->in[k];
      if (u >= g->nfwd && D->vst[u] == D->vst[i]) b[u] = true;
    }
  }
  return true;
}

static void make_groups(Dist *D) {
  const Layout *L = D->L;
  int P = L->pp, T = D->tp, *r = arena_alloc(sizeof(int) * (size_t)D->world);
  for (int k = 0; k < D->world; k++) r[k] = k;
  D->world_group = intern_group(D, r, D->world);
  D->dp_group = arena_alloc(sizeof(int) * (size_t)(P * T));
  D->tp_group = arena_alloc(sizeof(int) * (size_t)(D->repbase[P - 1] + D->dpd[P - 1]));
  for (int d = 0; d < P; d++) {
    for (int t = 0; t < T; t++) {
      for (int j = 0; j < D->dpd[d]; j++) r[j] = rank_of(D, d, j, t);
      D->dp_group[d * T + t] = intern_group(D, r, D->dpd[d]);
    }
    for (int j = 0; j < D->dpd[d]; j++) {
      for (int t = 0; t < T; t++) r[t] = rank_of(D, d, j, t);
      D->tp_group[D->repbase[d] + j] = intern_group(D, r, T);
    }
  }
  const Graph *g = D->g;
  D->hold_group = arena_alloc(sizeof(int) * (size_t)g->nfwd * (size_t)T);
  D->tie_group = arena_alloc(sizeof(int) * (size_t)g->nfwd * (size_t)(D->maxdp * T));
  for (int p = 0; p < g->nfwd; p++) {
    if (g->nodes[p]->op != OP_PARAM || g->grad[p] < 0 || !D->ndev[p]) continue;
    for (int t = 0; t < T; t++) {
      int n = 0;
      for (int d = 0; d < P; d++)
        if (D->held[(size_t)p * P + d])
          for (int j = 0; j < D->dpd[d]; j++) r[n++] = rank_of(D, d, j, t);
      if (L->zero == 0) D->hold_group[(size_t)p * T + t] = intern_group(D, r, n);
      if (L->zero == 0 || D->ndev[p] < 2) continue;
      for (int j = 0; j < D->maxdp; j++) { /* copies of one replica's shard (equal replicas: checked) */
        n = 0;
        for (int d = 0; d < P; d++)
          if (D->held[(size_t)p * P + d] && j < D->dpd[d]) r[n++] = rank_of(D, d, j, t);
        D->tie_group[((size_t)p * D->maxdp + j) * T + t] = intern_group(D, r, n);
      }
    }
  }
}

/* ---------------------------------------------------------------- tensor parallelism */

static int split_of(const Spec *s) { /* the dim mesh axis 1 (tp) splits, -1 */
  for (int d = 0; d < s->rank; d++)
    if (s->d[d] & 2) return d;
  return -1;
}

/* Whether two nodes are the same op of a layer: up to the layer numbers in
   their names (and the batch in their shapes), as the planner shares a stage
   plan between spans of identical layers (pipeline.c, signature). */
static bool same_role(const Node *a, const Node *b) {
  return a->op == b->op && a->nin == b->nin && a->shape.rank == b->shape.rank && same_but_numbers(a->name, b->name);
}

/* The next computing node (not a parameter or input) of a plan's graph from
 *k on, or NULL past its forward. */
static const Node *next_computing(const Graph *pg, int *k) {
  while (*k < pg->nfwd && is_leaf(pg->nodes[*k])) (*k)++;
  return *k < pg->nfwd ? pg->nodes[*k] : NULL;
}

/* Whether every chunk of a device follows the same plan (what plan_nodes
   matches a device's nodes against). */
static bool one_plan_per_device(const Dist *D, FILE *err) {
  int P = D->L->pp;
  for (int d = 0; d < P; d++)
    for (int c = 1; c < D->L->v; c++)
      if (D->L->plans[c * P + d] != D->L->plans[d]) {
        fprintf(err, "carve: error: the chunks of pipeline device %d follow different plans\n", d);
        return false;
      }
  return true;
}

/* After matching: what a device's plan holds past its layers may only be
   the stand-in loss of a stage graph (stages.c stage_graph). */
static bool plan_used_up(const Dist *D, int d, int k, FILE *err) {
  const Graph *pg = D->L->plans[d]->g;
  for (const Node *n; pg != D->g && (n = next_computing(pg, &k)); k++)
    if (strncmp(n->name, "stand-in", 8) != 0) {
      fprintf(err, "carve: error: the plan of pipeline device %d has %s, which the device's layers do not\n", d,
              n->name);
      return false;
    }
  return true;
}

/* Each computing forward node's counterpart in its device's plan, pn[node].
   A plan of the whole graph holds the node itself. A stage plan's graph is
   one span of layers (stages.c stage_graph), perhaps another span of the
   same structure (stage plans are shared by signature), with as many layers
   as the device holds in all its chunks: so the k-th computing node a
   device holds, in graph order, is the k-th computing node of its plan's
   graph. Names are not matched: the plan's may be another span's. */
static bool plan_nodes(const Dist *D, const Node **pn, FILE *err) {
  const Graph *g = D->g;
  int P = D->L->pp, *next = arena_alloc(sizeof(int) * (size_t)P);
  if (!one_plan_per_device(D, err)) return false;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (is_leaf(n)) continue;
    int d = dev_of(D, D->vst[i]);
    const Graph *pg = D->L->plans[d]->g;
    const Node *m = pg == g ? n : next_computing(pg, &next[d]);
    if (!m || !same_role(n, m)) {
      fprintf(err, "carve: error: the plan of pipeline device %d does not match its layers at %s (the plan has %s)\n",
              d, n->name, m ? m->name : "no more nodes");
      return false;
    }
    pn[i] = m;
    if (pg != g) next[d]++;
  }
  for (int d = 0; d < P; d++)
    if (!plan_used_up(D, d, next[d], err)) return false;
  return true;
}

/* A backward op's split, from how its inputs are held (its forward op's
   strategy for einsums, whose labels the backward einsums share). */
static void infer_backward(Dist *D, int i) {
  const Graph *g = D->g;
  const Node *n = g->nodes[i], *f = g->nodes[n->origin];
  Shard *s = &D->sh[i];
  int R = n->shape.rank;
  int h[MAXIN]; /* how each input is held */
  for (int k = 0; k < n->nin; k++) h[k] = D->sh[n->in[k]].out;
  switch (n->op) {
  case OP_EINSUM: {
    char c = 0; /* the label the forward einsum split */
    const Shard *fs = &D->sh[f->id];
    if (f->op == OP_EINSUM) {
      for (int k = 0; k < f->nin && !c; k++)
        if (fs->in[k] >= 0) c = f->labels[k][fs->in[k]];
      if (!c && fs->out >= 0) c = f->labels[f->nin][fs->out];
    }
    bool in_any = false;
    for (int k = 0; k < n->nin; k++) {
      const char *p = c ? strchr(n->labels[k], c) : NULL;
      s->in[k] = p ? (int8_t)(p - n->labels[k]) : -1;
      in_any |= p != NULL;
    }
    const char *p = c ? strchr(n->labels[n->nin], c) : NULL;
    s->out = p ? (int8_t)(p - n->labels[n->nin]) : -1;
    s->partial = in_any && !p;
    return;
  }
  case OP_SUM_TO: { /* sums leading dims away, of the gradient its forward op's output has: read as that is held */
    int lead = g->nodes[n->in[0]]->shape.rank - R;
    if (!is_leaf(f) && shape_eq(&f->shape, &g->nodes[n->in[0]]->shape)) h[0] = D->sh[f->id].out;
    s->in[0] = (int8_t)h[0];
    s->out = h[0] >= lead ? (int8_t)(h[0] - lead) : -1;
    s->partial = h[0] >= 0 && h[0] < lead;
    return;
  }
  case OP_EXPAND: /* inserts dim i[0] */
    s->in[0] = (int8_t)h[0];
    s->out = h[0] < 0 ? -1 : (int8_t)(h[0] >= n->i[0] ? h[0] + 1 : h[0]);
    return;
  case OP_MAX_BWD: { /* (x, dy) over axis i[0] */
    int d = h[0] == n->i[0] ? -1 : h[0];
    s->out = s->in[0] = (int8_t)d;
    s->in[1] = d < 0 ? -1 : (int8_t)(d > n->i[0] ? d - 1 : d);
    return;
  }
  case OP_LN_BWD_G:
  case OP_RMS_BWD_G: { /* (x, dy) rows x h -> h: split rows leave a partial sum */
    int d = h[0] == g->nodes[n->in[0]]->shape.rank - 1 ? -1 : h[0]; /* the normalised dim stays whole */
    s->in[0] = s->in[1] = (int8_t)d;
    s->out = -1;
    s->partial = d >= 0;
    return;
  }
  case OP_EMBED_BWD: { /* (ids, dy) -> [vocab, hidden] */
    int r = g->nodes[n->in[1]]->shape.rank;
    if (h[1] == r - 1) {
      s->in[0] = -1, s->in[1] = (int8_t)h[1], s->out = 1;
    } else {
      s->in[0] = s->in[1] = (int8_t)h[1], s->out = -1, s->partial = h[1] >= 0;
    }
    return;
  }
  case OP_XENT_BWD: { /* (logits, labels, dy): rows may split, classes may not; as the forward read them */
    int fd = D->sh[f->id].in[0], d = fd >= 0 && fd != R - 1 ? fd : h[0] == R - 1 ? -1 : h[0];
    s->out = s->in[0] = s->in[1] = (int8_t)d;
    s->in[2] = -1;
    s->post_scale = d >= 0;
    return;
  }
  case OP_MSE_BWD:
    s->out = s->in[0] = s->in[1] = (int8_t)h[0];
    s->in[2] = -1;
    s->post_scale = h[0] >= 0;
    return;
  case OP_RESHAPE: {
    const Shape *a = &g->nodes[n->in[0]]->shape;
    int pre = 0;
    while (pre < R && pre < a->rank && n->shape.d[pre] == a->d[pre]) pre++;
    s->out = s->in[0] = h[0] >= 0 && h[0] < pre ? (int8_t)h[0] : -1;
    return;
  }
  case OP_MOE_COMBINE_BWD:
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX:
  case OP_FILL: return; /* whole */
  default: {            /* elementwise, trailing-aligned: the layout of the forward op it differentiates, as the
                           plan has it (the gradient arriving split for a tensor held whole is gathered here, once),
                           else follow the first split input of the output's rank */
    int d = -1;
    if (n->op != OP_ADD && !is_leaf(f) && shape_eq(&f->shape, &n->shape))
      d = D->sh[f->id].out;
    else
      for (int k = 0; k < n->nin && d < 0; k++)
        if (g->nodes[n->in[k]]->shape.rank == R) d = h[k];
    bool norm = n->op == OP_SOFTMAX_BWD || n->op == OP_LN_BWD_X || n->op == OP_RMS_BWD_X || n->op == OP_SOFTMAX ||
                n->op == OP_LAYERNORM || n->op == OP_RMSNORM;
    if (norm && d == R - 1) d = -1;
    s->out = (int8_t)d;
    for (int k = 0; k < n->nin; k++) {
      int r = g->nodes[n->in[k]]->shape.rank;
      int a = d < 0 ? -1 : d - (R - r);
      s->in[k] = (int8_t)(a >= 0 && g->nodes[n->in[k]]->shape.d[a] == n->shape.d[d] ? a : -1);
    }
    return;
  }
  }
}

/* Can partial node u's reduction wait for its reader r, an add of partials
   in the same task? Then u is used nowhere else: one read, no send, no
   parameter gradient, not the loss. */
static bool may_defer(const Dist *D, int u, int r, const int *reads) {
  const Shard *s = &D->sh[u];
  if (u < D->g->nfwd || !s->partial || s->cut || s->mean || s->post_scale || reads[u] != 1) return false;
  if (D->feeds[u].n || u == D->g->loss || D->vst[u] != D->vst[r] || D->wphase[u] != D->wphase[r]) return false;
  for (int d = 0; d < D->L->pp; d++)
    if (D->need[(size_t)u * D->L->pp + d]) return false;
  return s->out == D->sh[r].out;
}

/* The partial gradients of one tensor (q, k and v each leave one of the
   hidden state they all read) are summed first and all-reduced once: an
   add whose inputs are all partials, held as it reads them and read by
   it alone, is itself partial, and its inputs are not reduced. An add of
   a whole value and such a partial (a post-norm residual: the gradient
   through the skip, whole, plus the attention's, partial) is partial too:
   the first tp rank adds the whole value, the others only copy their
   partial, so the one reduction of the sum counts the whole value once
   (the sum, reassociated: exact but for rounding). */
static void merge_partials(Dist *D) {
  const Graph *g = D->g;
  int *reads = arena_alloc(sizeof(int) * (size_t)g->n);
  for (int i = 0; i < g->n; i++)
    for (int k = 0; D->live[i] && k < g->nodes[i]->nin; k++) reads[g->nodes[i]->in[k]]++;
  for (int i = 0; i < g->n; i++) D->sh[i].once = -1;
  for (int i = g->nfwd; i < g->n; i++) {
    const Node *n = g->nodes[i];
    Shard *s = &D->sh[i];
    if (!D->live[i] || n->op != OP_ADD || s->partial) continue;
    int npart = 0, whole = -1;
    bool all = true;
    for (int k = 0; k < n->nin && all; k++) {
      int u = n->in[k];
      all = s->in[k] == s->out && shape_eq(&g->nodes[u]->shape, &n->shape);
      if (!all) break;
      if (may_defer(D, u, i, reads))
        npart++;
      else if (whole < 0 && !D->sh[u].partial && !D->sh[u].cut && D->sh[u].out == s->out && n->in[0] != n->in[1])
        whole = k;
      else
        all = false;
    }
    if (!all || !npart) continue;
    s->partial = true;
    s->once = (int8_t)whole;
    for (int k = 0; k < n->nin; k++)
      if (k != whole) D->sh[n->in[k]].defer = true;
  }
}

/* Can contribution u to parameter p be added to p's accumulator unreduced?
   A partial read by nothing else (no reader, send or other parameter), held
   as p is, so all-reducing the accumulator sums it as its own reduction
   would. */
static bool partial_contrib(const Dist *D, int u, int p, const int *reads) {
  const Shard *s = &D->sh[u];
  /* under ZeRO 2 and 3 the accumulators are shards reduced every microbatch: kept as they were */
  if (D->L->zero >= 2 || !s->partial || s->cut || reads[u] || D->feeds[u].n != 1 || u == D->g->loss) return false;
  for (int d = 0; d < D->L->pp; d++)
    if (D->need[(size_t)u * D->L->pp + d]) return false;
  return s->out == D->sh[p].out || s->out < 0; /* a whole one: summed, then cut */
}

/* Parameters whose gradient contributions are partial sums over the tp
   ranks: they are left unreduced (defer) and the accumulator is all-reduced
   once per step instead of each contribution per microbatch. Contributions
   held whole for a split parameter are summed in a whole buffer, all-reduced
   and cut once per step; beside those, a split parameter may also have
   contributions held as it is and complete (a tied embedding's output
   product, split over the vocabulary), added to the accumulator as they
   come. A parameter with any other contribution, or partial ones in two
   layouts, keeps per-contribution reductions. */
static void defer_param_partials(Dist *D) {
  const Graph *g = D->g;
  if (D->tp == 1) return;
  int *reads = arena_alloc(sizeof(int) * (size_t)g->n);
  for (int i = 0; i < g->n; i++)
    for (int k = 0; D->live[i] && k < g->nodes[i]->nin; k++) reads[g->nodes[i]->in[k]]++;
  for (int p = 0; p < g->nfwd; p++)
    for (int d = 0; d < D->L->pp; d++) { /* each device its own contributions (a tied parameter's copies) */
      const PtrVec *c = &D->contribs[p];
      const Shard *ps = &D->sh[p];
      bool ok = g->nodes[p]->op == OP_PARAM, exact = false;
      int lay = -2; /* the partial ones' layout */
      for (int k = 0; k < c->n && ok; k++) {
        int u = (int)(intptr_t)c->v[k];
        const Shard *s = &D->sh[u];
        if (dev_of(D, D->vst[u]) != d) continue;
        if (partial_contrib(D, u, p, reads)) {
          ok = lay == -2 || s->out == lay;
          lay = s->out;
        } else {
          exact = true;
          ok = D->L->zero < 2 && !s->partial && !s->cut && ps->out >= 0 && s->out == ps->out;
        }
      }
      ok = ok && lay != -2 && !(exact && lay == ps->out); /* complete ones only beside the whole buffer */
      D->tp_acc[(size_t)p * D->L->pp + d] = ok, D->tp_pend[(size_t)p * D->L->pp + d] = ok && lay != ps->out;
      for (int k = 0; k < c->n && ok; k++) {
        int u = (int)(intptr_t)c->v[k];
        if (dev_of(D, D->vst[u]) == d && D->sh[u].partial) D->sh[u].defer = true;
      }
    }
}

/* Can op n's kernel run on the parts this split gives it (out: the dim of
   its value split over the tp ranks, in[k]: input k's, -1 whole)? Not when
   the split cuts a dim the rule book (op_whole_dims) says the kernel needs
   whole. A plan made for speed (not PlanOptions.lowerable) may ask for
   that: the op then runs whole. */
bool kernel_takes(const Graph *g, const Node *n, int out, const int8_t *in) {
  for (int t = 0; t <= n->nin; t++) {
    int d = t == n->nin ? out : in[t];
    if (d >= 0 && (op_whole_dims(g, n, t) >> d & 1)) return false;
  }
  return true;
}

/* Sequence parallelism (Layout.sp): the ops of the residual stream (the
   tensors shaped like a norm's output) that a sequence split leaves exact
   row by row (the norms, elementwise ops, residual adds) are split along
   their dim named "seq", whatever the plan split: inputs are read along the
   dim aligned with it (trailing-aligned), or whole where they lack it (a
   norm's scale, a bias). Readers that take another layout reshard (a
   column-parallel product gathers the sequence), and a partial sum that
   only such ops read is reduce-scattered along the sequence (scatter_partials)
   instead of all-reduced. */
static bool sp_takes(const Node *n) {
  switch (n->op) {
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_DIV:
  case OP_SCALE:
  case OP_LAYERNORM:
  case OP_RMSNORM: return true;
  default: return (op_info[n->op].flags & OPF_UNARY) != 0;
  }
}

static bool residual_shaped(const Graph *g, const Shape *s) {
  for (int i = 0; i < g->nfwd; i++)
    if ((g->nodes[i]->op == OP_LAYERNORM || g->nodes[i]->op == OP_RMSNORM) && shape_eq(&g->nodes[i]->shape, s))
      return true;
  return false;
}

static void sp_split(const Dist *D, const Node *n, Shard *s) {
  const Graph *g = D->g;
  int R = n->shape.rank, d = -1;
  if (s->partial || s->cut || !sp_takes(n) || !residual_shaped(g, &n->shape)) return;
  for (int k = 0; k < R; k++)
    if (n->dimname[k] && !strcmp(n->dimname[k], "seq")) d = k;
  if (d < 0 || n->shape.d[d] % D->tp) return;
  int8_t in[MAXIN];
  for (int k = 0; k < n->nin; k++) {
    const Shape *u = &g->nodes[n->in[k]]->shape;
    int a = d - (R - u->rank);
    in[k] = (int8_t)(a >= 0 && u->d[a] == n->shape.d[d] ? a : -1);
  }
  if (!kernel_takes(g, n, d, in)) return;
  s->out = (int8_t)d;
  memcpy(s->in, in, sizeof(int8_t) * (size_t)n->nin);
}

/* Whether reader r of a partial sum, reading it whole, is a sum_to that
   sums dim d away (a bias's gradient): it can read the sum's split along d
   instead and leave a partial sum of its own. */
static bool sums_away(const Dist *D, int r, int d) {
  const Node *n = D->g->nodes[r];
  return n->op == OP_SUM_TO && D->sh[r].in[0] < 0 && d < D->g->nodes[n->in[0]]->shape.rank - n->shape.rank;
}

/* A partial sum held whole whose every reader reads it split along one dim
   (under sequence parallelism: the residual after a row-parallel product,
   and in the backward the input gradient of a column-parallel one) is
   reduce-scattered along that dim: computed whole, summed and cut at once
   (cut + partial). A bias's gradient (sum_to) that summed the whole over
   that dim reads the split instead, and is a partial sum itself, reduced
   with the parameter's other contributions (defer_param_partials). Runs
   before that, after merge_partials. */
static void scatter_partials(Dist *D) {
  const Graph *g = D->g;
  int8_t *dim = arena_alloc(sizeof(int8_t) * (size_t)g->n); /* the one dim the readers read along; -1 none; -2 mixed */
  memset(dim, -1, (size_t)g->n);
  for (int i = 0; i < g->n; i++)
    for (int k = 0; D->live[i] && k < g->nodes[i]->nin; k++) {
      int u = g->nodes[i]->in[k], a = D->sh[i].in[k];
      if (g->nodes[i]->op == OP_SUM_TO && a < 0) continue; /* checked below */
      dim[u] = a < 0 || (dim[u] != -1 && dim[u] != a) ? -2 : (int8_t)a;
    }
  for (int i = 0; i < g->n; i++)
    if (D->live[i] && g->nodes[i]->op == OP_SUM_TO && D->sh[i].in[0] < 0) {
      int u = g->nodes[i]->in[0];
      if (dim[u] >= 0 && !sums_away(D, i, dim[u])) dim[u] = -2;
    }
  bool *scattered = arena_alloc(sizeof(bool) * (size_t)g->n);
  for (int i = 0; i < g->n; i++) {
    Shard *s = &D->sh[i];
    if (!D->live[i] || !s->partial || s->defer || s->cut || s->out >= 0 || s->mean || s->post_scale || dim[i] < 0)
      continue;
    if (D->feeds[i].n || i == g->loss) continue;
    s->out = dim[i], s->cut = scattered[i] = true;
  }
  for (int r = 0; r < g->n; r++) { /* the bias gradients that summed a scattered sum whole read its split */
    if (!D->live[r] || g->nodes[r]->op != OP_SUM_TO) continue;
    int u = g->nodes[r]->in[0];
    if (scattered[u] && sums_away(D, r, dim[u])) D->sh[r].in[0] = dim[u], D->sh[r].out = -1, D->sh[r].partial = true;
  }
}

/* How the tp ranks of a replica split every live node, from each stage's
   plan (forward ops: the strategy's mesh axis 1; parameters and inputs: as
   their first reader reads them) and, for backward ops, inferred. */
static bool shard_graph(Dist *D, FILE *err) {
  const Graph *g = D->g;
  D->sh = arena_alloc(sizeof(Shard) * (size_t)g->n);
  D->tp_acc = arena_alloc(sizeof(bool) * (size_t)g->nfwd * (size_t)D->L->pp);
  D->tp_pend = arena_alloc(sizeof(bool) * (size_t)g->nfwd * (size_t)D->L->pp);
  for (int i = 0; i < g->n; i++) {
    D->sh[i].out = -1;
    memset(D->sh[i].in, -1, sizeof D->sh[i].in);
  }
  if (D->tp == 1) {
    if (D->L->sp)
      fprintf(err, "carve: error: sp=1 splits the sequence over the tensor-parallel ranks: it needs tp >= 2\n");
    return !D->L->sp;
  }
  const Node **match = arena_alloc(sizeof(Node *) * (size_t)g->nfwd);
  if (!plan_nodes(D, match, err)) return false;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (!D->live[i] || is_leaf(n)) continue;
    const Plan *pl = D->L->plans[D->vst[i]]; /* its device's plan (plan_nodes) */
    const Node *pn = match[i];
    Shard *s = &D->sh[i];
    s->out = (int8_t)split_of(&pl->layout[pn->id]);
    for (int k = 0; k < n->nin; k++) s->in[k] = (int8_t)split_of(&pl->reads[(size_t)pn->id * MAXIN + k]);
    if (pl->a2a[pn->id]) { /* expert parallelism: tokens split on the token side, experts on the other */
      if (n->op != OP_EINSUM) {
        fprintf(err, "carve: error: %s: an all-to-all on a %s is not lowered\n", n->name, op_info[n->op].name);
        return false;
      }
      char tok = 0; /* the label the dispatch or combine tensor is split on */
      for (int k = 0; k < n->nin; k++) {
        const Node *u = g->nodes[n->in[k]];
        if ((u->op == OP_MOE_DISPATCH || u->op == OP_MOE_COMBINE) && s->in[k] >= 0) tok = n->labels[k][s->in[k]];
      }
      /* expert-side inputs are read whole; an expert-side output is made whole
         from the local tokens, summed over the ranks, and cut to its experts
         (the all-to-all's data, moved as an all-reduce) */
      for (int k = 0; k < n->nin; k++)
        if (s->in[k] >= 0 && n->labels[k][s->in[k]] != tok) s->in[k] = -1;
      if (s->out >= 0 && n->labels[n->nin][s->out] != tok) s->cut = true;
    }
    s->partial = pl->partial[pn->id] & 2;
    s->mean = s->partial && (n->op == OP_MEAN || n->op == OP_XENT || n->op == OP_MSE);
    /* partial sums the plan reduce-scatters into a split of the output (its sequence parallelism) */
    if (s->partial && s->out >= 0 && !pl->a2a[pn->id]) s->cut = true;
    if (!kernel_takes(g, n, s->out, s->in)) { /* run it whole: gathered in, whole out */
      s->out = -1, s->partial = s->mean = s->cut = false;
      for (int k = 0; k < n->nin; k++) s->in[k] = -1;
    }
    if (D->L->sp) sp_split(D, n, s);
    for (int k = 0; k < n->nin; k++) { /* parameters: stored as their first reader's plan holds them, a
                                           reader that reads one otherwise resharding it (sp=1, which
                                           overrides the plan's layouts: as that reader reads it); inputs
                                           load whole and are cut where read */
      Shard *u = &D->sh[n->in[k]];
      if (g->nodes[n->in[k]]->op == OP_PARAM && !u->partial) /* set */
        u->out = D->L->sp ? s->in[k] : (int8_t)split_of(&pl->layout[pn->in[k]]), u->partial = true;
    }
  }
  for (int i = 0; i < g->nfwd; i++)
    if (is_leaf(g->nodes[i])) D->sh[i].partial = false;
  for (int i = g->nfwd; i < g->n; i++)
    if (D->live[i]) infer_backward(D, i);
  merge_partials(D);
  bool scatter = D->L->sp; /* unless every plan keeps partial sums all-reduced (PlanOptions.no_scatter) */
  for (int v = 0; v < D->L->pp * D->L->v && !scatter; v++) scatter = !D->L->plans[v]->opt.no_scatter;
  if (scatter) scatter_partials(D);
  defer_param_partials(D);
  /* every split dim must divide */
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    const Shard *s = &D->sh[i];
    for (int k = -1; k < (D->live[i] ? n->nin : 0); k++) {
      int d = k < 0 ? s->out : s->in[k];
      const Shape *sh = k < 0 ? &n->shape : &g->nodes[n->in[k]]->shape;
      if (d >= 0 && (d >= sh->rank || sh->d[d] % D->tp)) {
        fprintf(err, "carve: error: %s: dim %d of size %lld does not split over %d ranks\n",
                k < 0 ? n->name : g->nodes[n->in[k]]->name, d, (long long)(d < sh->rank ? sh->d[d] : 0), D->tp);
        return false;
      }
    }
  }
  return true;
}

/* ---------------------------------------------------------------- one rank */

typedef struct Rank {
  const Dist *D;
  Program *p;
  int cap;
  PtrVec init, step;
  PtrVec sends; /* the current task's sends: emitted after it, with the next task's receives */
  int dev, rep, t;
  int per;       /* units of each microbatch this replica runs */
  int *have;     /* [node][unit][instance]: buffer, -1 (instance 1: recomputed); a
                    unit of this replica's own, numbered 0 .. microbatches x per - 1 */
  int *pbuf;     /* param -> its buffer (ZeRO 3: the shard) */
  Instr **pinit; /* param -> its init: which piece of the whole it holds */
  int *gacc;     /* param -> gradient accumulator (ZeRO >= 2: the shard) */
  int *gmb;      /* param -> this microbatch's gradient (ZeRO >= 2), -1 */
  int *gcount;   /* param -> contributions added to gmb so far */
  int *gathered; /* param -> this task's gathered copy (ZeRO 3), -1 */
  int *work;     /* param -> its bf16 copy for the step (bf16, ZeRO < 3), -1 */
  int *pend;     /* param -> the step's unreduced partial contributions, whole (tp_acc, split param), -1 */
  int *rs;       /* reshards made, open addressing: [2k] buffer x 16 + dim + 1, [2k + 1] the resharded buffer */
  int rs_n, rs_cap;
  Buckets bk; /* gradient buckets (ZeRO 0) */
} Rank;

static int buf(Rank *R, const char *name, DType dt, const Shape *s, BufKind k) {
  return prog_buf(R->p, &R->cap, name, dt, s, k);
}

static Shape flat(int64_t n) { return (Shape){1, {n}}; }

/* A node's shape on one rank when dim `split` is split over the tp ranks. */
static Shape local_shape(const Rank *R, const Node *n, int split) {
  Shape s = n->shape;
  if (split >= 0) s.d[split] /= R->D->tp;
  return s;
}

/* elements per member when a flat tensor is split over a group */
static int64_t chunk_of(int64_t numel, int members) { return (numel + members - 1) / members; }

/* Unit q (of the step's M) is this replica's unit (q / U) x per + q % per. */
static int *slot(Rank *R, int node, int q, int inst) {
  const Dist *D = R->D;
  CARVE_ASSERT(q % D->U / R->per == R->rep, "a slot for another replica's unit");
  size_t own = (size_t)(q / D->U) * (size_t)R->per + (size_t)(q % R->per);
  return &R->have[((size_t)node * (size_t)D->L->microbatches * (size_t)R->per + own) * 2 + (size_t)inst];
}

/* "name", "name#mb", "name/re" or "name#mb/re" (made by hand: a big plan
   names hundreds of thousands of buffers per rank) */
static const char *inst_name(const Rank *R, const Node *n, int mb, int inst) {
  if (R->D->M == 1 && !inst) return n->name;
  size_t len = strlen(n->name);
  char *s = arena_alloc(len + 28), *e = s + len;
  memcpy(s, n->name, len);
  if (R->D->M > 1) *e++ = '#', e += int_str(mb, e);
  if (inst) memcpy(e, "/re", 4);
  return s;
}

/* The buffer a parameter is read from: its master, or its bf16 copy of the
   step; under ZeRO 3 the shard gathered at the start of each task (in bf16:
   the shard is cast, then gathered, so half the bytes move). */
static int param_value(Rank *R, int p) {
  const Dist *D = R->D;
  if (D->L->zero < 3) return R->work[p] >= 0 ? R->work[p] : R->pbuf[p];
  if (R->gathered[p] < 0) {
    const Node *n = D->g->nodes[p];
    Shape part = local_shape(R, n, D->sh[p].out);
    int shard = R->pbuf[p];
    DType dt = D->t->precision == PREC_BF16 ? DT_BF16 : DT_F32;
    if (dt == DT_BF16) {
      shard = buf(R, arena_printf("%s/bf16", n->name), DT_BF16, &R->p->bufs[shard].shape, BUF_ACT);
      prog_emit1(&R->step, OP_CAST, shard, R->pbuf[p]);
    }
    R->gathered[p] = buf(R, arena_printf("%s/gathered", n->name), dt, &part, BUF_ACT);
    prog_emit1(&R->step, OP_ALL_GATHER, R->gathered[p], shard)->i[0] = D->dp_group[R->dev * D->tp + R->t];
  }
  return R->gathered[p];
}

/* The buffer holding node u's value for microbatch mb on this rank:
   loading an input, receiving from another device, or the local one
   (instance 1, recomputed, when asked for and present). */
static int value(Rank *R, int u, int mb, int inst) {
  const Dist *D = R->D;
  const Node *n = D->g->nodes[u];
  if (n->op == OP_PARAM) return param_value(R, u);
  int *have = slot(R, u, mb, 0);
  if (n->op == OP_INPUT) {
    if (*have < 0) {
      /* named as the input itself: the data a load draws is keyed by the name */
      *have = buf(R, n->name, D->dt[u], &n->shape, BUF_INPUT);
      Instr *in = prog_emit(&R->step, OP_LOAD, *have);
      in->i[0] = n->init;
      in->i[1] = (int64_t)mb * (n->shape.rank ? n->shape.d[0] : 1); /* unit mb's rows of the step's batch */
      in->f[0] = n->init_a;
      in->f[1] = n->init_b;
    }
    return *have;
  }
  int from = dev_of(D, D->vst[u]);
  if (from != R->dev) {
    if (*have < 0) {
      Shape ls = local_shape(R, n, D->sh[u].out);
      *have = buf(R, inst_name(R, n, mb, 0), D->dt[u], &ls, BUF_ACT);
      Instr *in = prog_emit(&R->step, OP_RECV, *have);
      in->i[0] = rank_of(D, from, owner(D, from, mb), R->t);
      in->i[1] = u * D->M + mb;
    }
    return *have;
  }
  if (inst && *slot(R, u, mb, 1) >= 0) return *slot(R, u, mb, 1);
  CARVE_ASSERT(*have >= 0, "a value read before the task that makes it");
  return *have;
}

/* Buffer b, node u's value held split along dim `from`, as read split
   along `to` (-1: whole): gathered and/or cut over the replica's tp ranks,
   once per buffer, dim and task (a value's buffer is written once in a
   step, so every later reader in the task reads the same copy; a later task
   reshards again rather than keep the copy alive in between). */
static int reshard_new(Rank *R, int u, int b, int from, int to);

/* The buffer b was resharded to along dim `to`, or -1; made >= 0 records it. */
static int reshard_made(Rank *R, int b, int to, int made) {
  if (made >= 0 && 2 * (R->rs_n + 1) > R->rs_cap) { /* grow to keep the table at most half full */
    int cap = R->rs_cap ? 2 * R->rs_cap : 256, *old = R->rs, oc = R->rs_cap;
    R->rs = arena_alloc(sizeof(int) * 2 * (size_t)cap);
    for (int k = 0; k < 2 * cap; k++) R->rs[k] = -1;
    R->rs_cap = cap, R->rs_n = 0;
    for (int k = 0; k < oc; k++)
      if (old[2 * k] >= 0) reshard_made(R, old[2 * k] / 16, old[2 * k] % 16 - 1, old[2 * k + 1]);
  }
  if (!R->rs_cap) return -1;
  int key = b * 16 + to + 1;
  unsigned h = (unsigned)key * 2654435761u % (unsigned)R->rs_cap;
  while (R->rs[2 * h] >= 0 && R->rs[2 * h] != key) h = (h + 1) % (unsigned)R->rs_cap;
  if (made >= 0 && R->rs[2 * h] < 0) R->rs[2 * h] = key, R->rs[2 * h + 1] = made, R->rs_n++;
  return R->rs[2 * h] == key ? R->rs[2 * h + 1] : -1;
}

static int reshard_made(Rank *R, int b, int to, int made);

static int reshard(Rank *R, int u, int b, int from, int to) {
  if (from == to) return b;
  int have = reshard_made(R, b, to, -1);
  if (have >= 0) return have;
  int made = reshard_new(R, u, b, from, to);
  reshard_made(R, b, to, made);
  return made;
}

static int reshard_new(Rank *R, int u, int b, int from, int to) {
  const Dist *D = R->D;
  const Node *n = D->g->nodes[u];
  int group = D->tp_group[D->repbase[R->dev] + R->rep];
  DType dt = R->p->bufs[b].dtype;
  if (from >= 0 && to >= 0) { /* from one split to another: each rank sends each other rank its part */
    Shape ls = local_shape(R, n, to);
    Instr *in =
        prog_emit1(&R->step, OP_ALL_TO_ALL_DIM, buf(R, arena_printf("%s/split%d", n->name, to), dt, &ls, BUF_ACT), b);
    in->i[0] = group, in->i[1] = from, in->i[2] = to;
    return in->out;
  }
  if (from >= 0) {
    b = prog_emit1(&R->step, OP_GATHER_DIM, buf(R, arena_printf("%s/whole", n->name), dt, &n->shape, BUF_ACT), b)->out;
    Instr *in = &*(Instr *)R->step.v[R->step.n - 1];
    in->i[0] = group, in->i[1] = from;
  }
  if (to >= 0) {
    Shape ls = local_shape(R, n, to);
    Instr *in =
        prog_emit1(&R->step, OP_SPLIT_DIM, buf(R, arena_printf("%s/split%d", n->name, to), dt, &ls, BUF_ACT), b);
    in->i[0] = group, in->i[1] = to;
    b = in->out;
  }
  return b;
}

/* Adds a fresh gradient contribution into parameter p's accumulator. */
static void accumulate(Rank *R, int p, int cnode, int c) {
  const Dist *D = R->D;
  const Node *pn = D->g->nodes[p];
  /* reduced and cut once per step (reduce_tp_partials) */
  if (D->tp_acc[(size_t)p * D->L->pp + R->dev] && D->sh[cnode].out != D->sh[p].out) {
    if (R->pend[p] < 0) {
      R->pend[p] = buf(R, arena_printf("%s.grad/tp", pn->name), DT_F32, &pn->shape, BUF_ACT);
      prog_emit1(&R->step, OP_COPY, R->pend[p], c);
    } else {
      prog_emit1(&R->step, OP_ACC, R->pend[p], c);
    }
    return;
  }
  c = reshard(R, cnode, c, D->sh[cnode].out, D->sh[p].out);
  Shape pl = local_shape(R, pn, D->sh[p].out);
  if (D->L->zero < 2) {
    prog_emit1(&R->step, OP_ACC, R->gacc[p], c);
    return;
  }
  if (R->gcount[p]++ == 0) {
    R->gmb[p] = buf(R, arena_printf("%s.grad/mb", pn->name), DT_F32, &pl, BUF_ACT);
    prog_emit1(&R->step, OP_COPY, R->gmb[p], c);
  } else {
    prog_emit1(&R->step, OP_ACC, R->gmb[p], c);
  }
  if (R->gcount[p] < D->ncontrib[(size_t)p * D->L->pp + R->dev]) return;
  R->gcount[p] = 0;
  Shape cs = flat(chunk_of(shape_numel(&pl), D->dpd[R->dev]));
  int part = buf(R, arena_printf("%s.grad/part", pn->name), DT_F32, &cs, BUF_ACT);
  prog_emit1(&R->step, OP_REDUCE_SCATTER, part, R->gmb[p])->i[0] = D->dp_group[R->dev * D->tp + R->t];
  prog_emit1(&R->step, OP_ACC, R->gacc[p], part);
}

static void emit_node(Rank *R, int i, int mb, int inst) {
  const Dist *D = R->D;
  const Node *n = D->g->nodes[i];
  bool bwd = i >= D->g->nfwd;
  const Shard *sh = &D->sh[i];
  int ins[MAXIN];
  for (int k = 0; k < n->nin; k++) {
    int u = n->in[k], b = value(R, u, mb, inst || (bwd && rc_of(D, D->vst[i]) != RC_NONE));
    ins[k] = reshard(R, u, b, D->sh[u].out, sh->in[k]);
  }
  if (n->op == OP_EINSUM && n->nin == 2) { /* both operands in one dtype */
    DType want = prog_einsum_dtype(R->p, ins);
    for (int k = 0; k < 2; k++)
      if (R->p->bufs[ins[k]].dtype != want) ins[k] = prog_cast(R->p, &R->cap, &R->step, ins[k], want, -1);
  }
  Instr *in = prog_emit(&R->step, n->op, -1); /* after the loads and receives value() emits */
  in->nin = n->nin;
  memcpy(in->in, ins, sizeof(int) * (size_t)n->nin);
  if (sh->once >= 0 && R->t) { /* the whole input is the first tp rank's to add (merge_partials) */
    in->nin = 1, in->in[0] = ins[1 - sh->once];
    in->op = R->p->bufs[in->in[0]].dtype == D->dt[i] ? OP_COPY : OP_CAST;
  }
  int *out = slot(R, i, mb, inst);
  Shape ls = local_shape(R, n, sh->cut ? -1 : sh->out);
  *out = buf(R, inst_name(R, n, mb, sh->cut ? inst + 0 : inst), D->dt[i], &ls, BUF_ACT);
  in->out = *out;
  in->i[0] = n->i[0], in->i[1] = n->i[1];
  in->f[0] = n->f[0], in->f[1] = n->f[1];
  if (n->op == OP_EINSUM) {
    int len = 0;
    for (int k = 0; k < n->nin; k++)
      len += snprintf(in->spec + len, sizeof in->spec - (size_t)len, "%s%s", k ? "," : "", n->labels[k]);
    snprintf(in->spec + len, sizeof in->spec - (size_t)len, "->%s", n->labels[n->nin]);
  }
  int tpg = D->tp_group[D->repbase[R->dev] + R->rep];
  if (sh->mean || sh->post_scale) prog_emit1(&R->step, OP_SCALE, *out, *out)->f[0] = 1.0 / D->tp;
  if (sh->cut && sh->partial && sh->out == 0) { /* experts lead: each rank's summed part is one contiguous chunk */
    Shape part = local_shape(R, n, 0);
    int whole = *out;
    *out = buf(R, arena_printf("%s/experts", n->name), D->dt[i], &part, BUF_ACT);
    prog_emit1(&R->step, OP_REDUCE_SCATTER, *out, whole)->i[0] = tpg;
  } else if (sh->cut && sh->partial) { /* summed and cut along out (scatter_partials) */
    Shape part = local_shape(R, n, sh->out);
    int whole = *out;
    *out = buf(R, arena_printf("%s/split%d", inst_name(R, n, mb, inst), sh->out), D->dt[i], &part, BUF_ACT);
    Instr *rs = prog_emit1(&R->step, OP_REDUCE_SCATTER_DIM, *out, whole);
    rs->i[0] = tpg, rs->i[1] = sh->out;
  } else {
    if (sh->partial && !sh->defer) prog_emit1(&R->step, OP_ALL_REDUCE, *out, *out)->i[0] = tpg;
    if (sh->cut) *out = reshard(R, i, *out, -1, sh->out);
  }
  if (inst) return; /* a recomputed value: used here, never sent or counted */
  if (i == D->g->loss) prog_emit1(&R->step, OP_LOSS, -1, *out)->f[0] = 1.0 / (D->M * D->tp);
  for (int d = 0; d < D->L->pp; d++)
    if (D->need[(size_t)i * D->L->pp + d]) {
      Instr *s = prog_emit1(&R->sends, OP_SEND, -1, *out);
      s->i[0] = rank_of(D, d, owner(D, d, mb), R->t);
      s->i[1] = i * D->M + mb;
    }
  for (int k = 0; k < D->feeds[i].n; k++) accumulate(R, (int)(intptr_t)D->feeds[i].v[k], i, *out);
}

#define RUN_RECOMPUTE 3 /* after TASK_F, TASK_B, TASK_W */

/* The nodes each kind of task emits, per virtual stage, made once for every
   rank: a forward task its stage's live forward nodes; B and W the backward
   ones of their phase; a backward task under recomputation first remakes
   what the forward did not keep (all of it, or selective's nodes). */
static void task_runs(Dist *D) {
  const Graph *g = D->g;
  D->runs = arena_alloc(sizeof(PtrVec) * (size_t)D->S * 4);
  for (int i = 0; i < g->n; i++) {
    int s = D->vst[i];
    if (!D->live[i] || s < 0) continue;
    PtrVec *r = &D->runs[s * 4];
    intptr_t node = i;
    if (i >= g->nfwd) {
      ptrvec_push(&r[D->wphase[i] ? TASK_W : TASK_B], (void *)node);
      continue;
    }
    ptrvec_push(&r[TASK_F], (void *)node);
    if (rc_of(D, s) == RC_FULL || (rc_of(D, s) == RC_SELECTIVE && D->sel[i]))
      ptrvec_push(&r[RUN_RECOMPUTE], (void *)node);
  }
}

/* Receives, now, the values from other devices that the nodes of `run`
   read for unit q (value() would receive them where first read). */
static void receive_inputs(Rank *R, const PtrVec *run, int q) {
  const Dist *D = R->D;
  for (int k = 0; k < run->n; k++) {
    const Node *n = D->g->nodes[(intptr_t)run->v[k]];
    for (int j = 0; j < n->nin; j++)
      if (!is_leaf(D->g->nodes[n->in[j]]) && dev_of(D, D->vst[n->in[j]]) != R->dev) value(R, n->in[j], q, 0);
  }
}

/* The sends of the tasks before, then the receives of the n tasks at t
   (none: the step's end), before they run: one run of send/recv
   instructions, which a rendezvous transport progresses as one group
   (rendezvous.c). Sending as soon as a value is made, two neighbouring
   devices of a 1F1B pipeline would each send before receiving what the
   other sends, and neither send would find its receive posted. */
static void exchange(Rank *R, const Task *t, int n) {
  const Dist *D = R->D;
  for (int k = 0; k < R->sends.n; k++) ptrvec_push(&R->step, R->sends.v[k]);
  R->sends.n = 0;
  for (int k = 0; k < n; k++)
    for (int w = 0; w < R->per; w++) {
      int q = t[k].mb * D->U + R->rep * R->per + w;
      if (t[k].phase == TASK_B) receive_inputs(R, &D->runs[t[k].stage * 4 + RUN_RECOMPUTE], q);
      receive_inputs(R, &D->runs[t[k].stage * 4 + t[k].phase], q);
    }
}

/* Must task `from` run before task `to` (a path of producer and same-device
   order edges back from `to`)? mark holds a stamp per task slot. */
static bool precedes(const Dist *D, const int *pos, int *mark, int stamp, int *stack, Task from, Task to) {
  const Schedule *s = D->sched;
  int S = D->S, n = 0, goal = task_slot(from, S, s->m);
  stack[n++] = task_slot(to, S, s->m);
  mark[stack[0]] = stamp;
  while (n) {
    int x = stack[--n], dev = x / s->m % S % s->p;
    if (x == goal) return true;
    Task t = {x / s->m % S, x % s->m, x / s->m / S}, dep[3];
    int nd = task_producers(t, S, dep);
    if (pos[x] > 0) dep[nd++] = s->order[dev][pos[x] - 1];
    for (int k = 0; k < nd; k++) {
      int y = task_slot(dep[k], S, s->m);
      if (mark[y] != stamp) mark[y] = stamp, stack[n++] = y;
    }
  }
  return false;
}

/* Per device and task, whether it exchanges with the task after as one
   (exchange_span): a forward followed by a backward whose input from
   another device does not wait for that forward (Megatron's steady state:
   the group between two such pairs sends both's outputs and receives both's
   inputs, so neighbours that each send before they receive meet). */
static void pair_tasks(Dist *D) {
  const Schedule *s = D->sched;
  int slots = 3 * D->S * s->m, stamp = 0;
  int *pos = arena_alloc(sizeof(int) * (size_t)slots), *mark = arena_alloc(sizeof(int) * (size_t)slots);
  int *stack = arena_alloc(sizeof(int) * (size_t)slots);
  for (int k = 0; k < slots; k++) pos[k] = -1, mark[k] = 0;
  D->paired = arena_alloc(sizeof(bool *) * (size_t)s->p);
  for (int d = 0; d < s->p; d++)
    for (int k = 0; k < s->ntasks[d]; k++) pos[task_slot(s->order[d][k], D->S, s->m)] = k;
  for (int d = 0; d < s->p; d++) {
    const Task *o = s->order[d];
    D->paired[d] = arena_alloc(sizeof(bool) * (size_t)s->ntasks[d]);
    for (int k = 0; k < s->ntasks[d]; k++) {
      bool pair = k + 1 < s->ntasks[d] && o[k].phase == TASK_F && o[k + 1].phase == TASK_B;
      Task dep[2];
      int nd = pair ? task_producers(o[k + 1], D->S, dep) : 0;
      for (int j = 0; j < nd && pair; j++)
        pair = dev_of(D, dep[j].stage) == d || !precedes(D, pos, mark, ++stamp, stack, o[k], dep[j]);
      D->paired[d][k] = pair;
    }
  }
}

/* The tasks from order[k] that communicate as one: two when paired, else one. */
static int exchange_span(const Dist *D, int dev, int k) { return D->paired[dev][k] ? 2 : 1; }

/* A task of microbatch t.mb: the units of it this replica runs, one after
   another (a stage of fewer replicas runs more units per microbatch). */
static void emit_task(Rank *R, Task t) {
  const Dist *D = R->D;
  for (int k = 0; k < 2 * R->rs_cap; k++) R->rs[k] = -1; /* reshards are reused within a task (reshard) */
  R->rs_n = 0;
  if (D->L->zero == 3)
    for (int p = 0; p < D->g->nfwd; p++) R->gathered[p] = -1;
  const PtrVec *run = &D->runs[t.stage * 4 + t.phase], *re = &D->runs[t.stage * 4 + RUN_RECOMPUTE];
  for (int w = 0; w < R->per; w++) {
    int q = t.mb * D->U + R->rep * R->per + w;
    for (int k = 0; t.phase == TASK_B && k < re->n; k++) emit_node(R, (int)(intptr_t)re->v[k], q, 1);
    for (int k = 0; k < run->n; k++) emit_node(R, (int)(intptr_t)run->v[k], q, 0);
  }
}

static bool trainable_here(const Rank *R, int p) {
  const Dist *D = R->D;
  return D->g->nodes[p]->op == OP_PARAM && D->g->grad[p] >= 0 && D->held[(size_t)p * D->L->pp + R->dev];
}

/* Ranks at one tp position holding parameter p: its devices' replicas. */
static int holders(const Dist *D, int p) {
  int n = 0;
  for (int d = 0; d < D->L->pp; d++)
    if (D->held[(size_t)p * D->L->pp + d]) n += D->dpd[d];
  return n;
}

/* Parameter p's partial gradient contributions of the whole step (tp_acc),
   all-reduced over the replica's tp ranks: the accumulator, or the whole
   buffer they were summed in, cut and added to it. */
static void reduce_tp_partials(Rank *R, int p) {
  const Dist *D = R->D;
  int tpg = D->tp_group[D->repbase[R->dev] + R->rep];
  size_t pd = (size_t)p * D->L->pp + R->dev;
  if (!D->tp_acc[pd] || !D->ncontrib[pd]) return;
  if (R->pend[p] < 0) { /* the accumulator holds the partial ones, or (tp_pend) only complete ones */
    if (!D->tp_pend[pd]) prog_emit1(&R->step, OP_ALL_REDUCE, R->gacc[p], R->gacc[p])->i[0] = tpg;
    return;
  }
  prog_emit1(&R->step, OP_ALL_REDUCE, R->pend[p], R->pend[p])->i[0] = tpg;
  prog_emit1(&R->step, OP_ACC, R->gacc[p], reshard(R, p, R->pend[p], -1, D->sh[p].out));
}

/* The trainable parameters in the order their gradient sums are final
   (the last instruction writing one), earliest first, ties by index: the
   order their reductions run in. *n receives the count. */
typedef struct Final {
  int last, p; /* the last instruction writing parameter p's sum */
} Final;

static int by_final(const void *a, const void *b) {
  const Final *x = a, *y = b;
  return x->last != y->last ? (x->last > y->last) - (x->last < y->last) : (x->p > y->p) - (x->p < y->p);
}

static int *final_order(const Rank *R, int *n) {
  const Dist *D = R->D;
  int np = D->g->nfwd, *owner = arena_alloc(sizeof(int) * (size_t)(R->p->nbufs + 1));
  int *last = arena_alloc(sizeof(int) * (size_t)(np + 1)), *order = arena_alloc(sizeof(int) * (size_t)(np + 1));
  for (int b = 0; b < R->p->nbufs; b++) owner[b] = -1;
  for (int p = 0; p < np; p++) {
    last[p] = -1;
    if (R->gacc[p] >= 0) owner[R->gacc[p]] = p;
    if (R->pend[p] >= 0) owner[R->pend[p]] = p;
  }
  for (int i = 0; i < R->step.n; i++) {
    const Instr *in = R->step.v[i];
    if (in->out >= 0 && owner[in->out] >= 0) last[owner[in->out]] = i;
  }
  Final *f = xmalloc(sizeof(Final) * (size_t)(np + 1));
  *n = 0;
  for (int p = 0; p < np; p++)
    if (trainable_here(R, p)) f[(*n)++] = (Final){last[p], p};
  qsort(f, (size_t)*n, sizeof(Final), by_final); /* by (last, index) */
  for (int k = 0; k < *n; k++) order[k] = f[k].p;
  free(f);
  return order;
}

/* ZeRO 0's data-parallel gradient all-reduces, one per bucket: the
   gradients of one layer (Node.layer; those outside every layer are one
   more) reduced over one group, laid out one after another in a buffer
   that spans them (prog_bucket). A bucket is reduced once its last member's
   sum is final. The planner lists the same buckets (planner/intra.c). */
typedef struct Bucketing {
  int n;       /* buckets */
  int *of;     /* per parameter: its bucket, -1 */
  int *left;   /* per bucket: members not yet final */
  int *group;  /* per bucket: the group it is reduced over */
  int *member; /* per bucket, its members so far: member[first[k] ..] */
  int *first, *count;
} Bucketing;

static Bucketing buckets_of(const Rank *R, const int *final, int nfinal) {
  const Dist *D = R->D;
  int np = D->g->nfwd;
  Bucketing b = {.of = arena_alloc(sizeof(int) * (size_t)(np + 1))};
  int *key_layer = arena_alloc(sizeof(int) * (size_t)(nfinal + 1));
  b.left = arena_alloc(sizeof(int) * (size_t)(nfinal + 1)), b.group = arena_alloc(sizeof(int) * (size_t)(nfinal + 1));
  b.first = arena_alloc(sizeof(int) * (size_t)(nfinal + 1)), b.count = arena_alloc(sizeof(int) * (size_t)(nfinal + 1));
  b.member = arena_alloc(sizeof(int) * (size_t)(nfinal + 1));
  for (int p = 0; p < np; p++) b.of[p] = -1;
  for (int k = 0; k < nfinal; k++) {
    int p = final[k], layer = D->g->nodes[p]->layer, group = D->hold_group[(size_t)p * D->tp + R->t], j = 0;
    while (j < b.n && (key_layer[j] != layer || b.group[j] != group)) j++;
    if (j == b.n) key_layer[j] = layer, b.group[j] = group, b.left[j] = 0, b.n++;
    b.of[p] = j;
    b.left[j]++;
  }
  for (int j = 0, at = 0; j < b.n; j++) b.first[j] = at, b.count[j] = 0, at += b.left[j];
  return b;
}

/* Parameter p's sum is final: into its bucket, which is reduced once full. */
static void bucket_add(Rank *R, Bucketing *b, int p) {
  int j = b->of[p];
  b->member[b->first[j] + b->count[j]++] = R->gacc[p];
  if (--b->left[j]) return;
  const int *m = b->member + b->first[j];
  int span = b->count[j] == 1
                 ? m[0]
                 : prog_bucket(R->p, &R->cap, &R->bk, arena_printf("grad.bucket%d", R->bk.n), m, b->count[j]);
  prog_emit1(&R->step, OP_ALL_REDUCE, span, span)->i[0] = b->group[j];
}

/* Gradient sums, norm, clipping and the optimizer, once per step. The
   reductions go in the order the sums are final, so that each can start
   beside the rest of the backward pass (prog_hoist_comm). */
static void emit_update(Rank *R) {
  const Dist *D = R->D;
  const Graph *g = D->g;
  const Train *t = D->t;
  const Layout *L = D->L;
  int *shard_grad = arena_alloc(sizeof(int) * (size_t)g->nfwd), nfinal;
  for (int p = 0; p < g->nfwd; p++) shard_grad[p] = -1;
  int *final = final_order(R, &nfinal);
  Bucketing bucket = buckets_of(R, final, nfinal);
  for (int k = 0; k < nfinal; k++) {
    int p = final[k];
    const Node *pn = g->nodes[p];
    reduce_tp_partials(R, p);
    if (L->zero == 0) {
      bucket_add(R, &bucket, p);
      shard_grad[p] = R->gacc[p];
      continue;
    }
    Shape pl = local_shape(R, pn, D->sh[p].out);
    if (L->zero == 1) {
      Shape cs = flat(chunk_of(shape_numel(&pl), D->dpd[R->dev]));
      shard_grad[p] = buf(R, arena_printf("%s.grad/part", pn->name), DT_F32, &cs, BUF_ACT);
      prog_emit1(&R->step, OP_REDUCE_SCATTER, shard_grad[p], R->gacc[p])->i[0] = D->dp_group[R->dev * D->tp + R->t];
    } else {
      shard_grad[p] = R->gacc[p];
    }
    if (D->ndev[p] > 1)
      prog_emit1(&R->step, OP_ALL_REDUCE, shard_grad[p], shard_grad[p])->i[0] =
          D->tie_group[((size_t)p * D->maxdp + R->rep) * D->tp + R->t];
  }
  int *grads = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1)), n = 0;
  double *weight = arena_alloc(sizeof(double) * (size_t)(g->nfwd + 1));
  for (int p = 0; p < g->nfwd; p++)
    if (shard_grad[p] >= 0) { /* weighed by how many ranks hold the same elements */
      grads[n] = shard_grad[p];
      weight[n++] = 1.0 / ((L->zero ? D->ndev[p] : holders(D, p)) * (D->sh[p].out < 0 ? D->tp : 1));
    }
  int clip = prog_clip(R->p, &R->cap, &R->step, t, grads, weight, n, D->world > 1 ? D->world_group : -1);
  for (int p = 0; p < g->nfwd; p++) {
    if (shard_grad[p] < 0) continue;
    const Node *n = g->nodes[p];
    Shape pl = local_shape(R, n, D->sh[p].out);
    Shape ss = L->zero ? flat(chunk_of(shape_numel(&pl), D->dpd[R->dev])) : pl;
    int target = R->pbuf[p];
    if (L->zero == 1 || L->zero == 2) { /* update this replica's part, then share it */
      target = buf(R, arena_printf("%s/part", n->name), DT_F32, &ss, BUF_ACT);
      prog_emit1(&R->step, OP_SHARD, target, R->pbuf[p])->i[0] = D->dp_group[R->dev * D->tp + R->t];
    }
    Instr piece = *R->pinit[p]; /* the state holds the elements its update writes: a chunk under ZeRO */
    piece.i[1] = L->zero ? shape_numel(&ss) * R->rep : 0;
    prog_optimizer(R->p, &R->cap, &R->init, &R->step, t, n, &ss, &piece, target, shard_grad[p], clip);
    if (target != R->pbuf[p])
      prog_emit1(&R->step, OP_ALL_GATHER, R->pbuf[p], target)->i[0] = D->dp_group[R->dev * D->tp + R->t];
  }
}

static Program *emit_rank(const Dist *D, int dev, int rep, int t, uint64_t seed) {
  const Graph *g = D->g;
  const Layout *L = D->L;
  Rank R = {.D = D, .dev = dev, .rep = rep, .t = t};
  Program *p = R.p = arena_alloc(sizeof(Program));
  p->model = g->model;
  p->rank = rank_of(D, dev, rep, t);
  p->world = D->world;
  p->seed = seed;
  p->plan_id = D->plan_id;
  p->microbatches = D->M;
  p->precision = D->t->precision;
  p->ngroups = D->ngroups;
  p->group_size = D->gsize;
  p->group_ranks = D->granks;
  R.per = D->U / D->dpd[dev];
  size_t slots = (size_t)g->n * (size_t)L->microbatches * (size_t)R.per * 2;
  R.have = arena_alloc(sizeof(int) * slots);
  for (size_t k = 0; k < slots; k++) R.have[k] = -1;
  R.pbuf = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.pinit = arena_alloc(sizeof(Instr *) * (size_t)g->nfwd);
  R.gacc = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.gmb = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.gcount = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.gathered = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.work = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  R.pend = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  for (int i = 0; i < g->n; i++) /* model FLOPs of the whole step, every rank's share */
    if (g->nodes[i]->op == OP_EINSUM && D->live[i]) p->flops_per_step += node_flops(g, g->nodes[i]) * D->M;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    R.pbuf[i] = R.gacc[i] = R.work[i] = R.pend[i] = -1;
    if (D->live[i] && n->op == OP_INPUT && n->init == SRC_TOKENS) {
      p->tokens_per_step = shape_numel(&n->shape) * D->M;
      p->vocab = (int64_t)n->init_a;
    }
    if (n->op != OP_PARAM || !D->held[(size_t)i * L->pp + dev]) continue;
    /* ZeRO 3 keeps this replica's part of the flat parameter, drawn from
       the same random stream at the same element indices */
    Shape whole = local_shape(&R, n, D->sh[i].out); /* a tp part: a slice of one dim */
    int64_t numel = shape_numel(&whole), c = chunk_of(numel, D->dpd[dev]);
    Shape ps = L->zero == 3 ? flat(c) : whole;
    R.pbuf[i] = buf(&R, n->name, DT_F32, &ps, BUF_PARAM);
    Instr *in = R.pinit[i] = prog_emit(&R.init, OP_INIT, R.pbuf[i]);
    p->bufs[R.pbuf[i]].whole = n->shape;
    in->i[0] = n->init;
    in->i[1] = L->zero == 3 ? c * rep : 0;
    if (D->sh[i].out >= 0) { /* a tp part: its dims around the split one */
      int a = D->sh[i].out;
      int64_t inner = 1;
      for (int k = a + 1; k < whole.rank; k++) inner *= whole.d[k];
      in->i[2] = a, in->i[3] = D->tp, in->i[4] = t, in->i[5] = whole.d[a], in->i[6] = inner;
    }
    in->f[0] = n->init_a;
    in->f[1] = n->init_b;
    if (D->t->precision == PREC_BF16 && L->zero < 3) /* its bf16 copy, made at the step's start */
      R.work[i] = prog_work_copy(p, &R.cap, &R.step, n->name, &ps, R.pbuf[i]);
    if (g->grad[i] < 0) continue;
    Shape gs = L->zero >= 2 ? flat(c) : whole;
    R.gacc[i] = buf(&R, arena_printf("%s.grad", n->name), DT_F32, &gs, BUF_GRAD);
    prog_emit(&R.step, OP_FILL, R.gacc[i])->f[0] = 0;
  }
  const Schedule *s = D->sched;
  for (int k = 0, n; k < s->ntasks[dev]; k += n) {
    n = exchange_span(D, dev, k);
    exchange(&R, &s->order[dev][k], n);
    for (int j = 0; j < n; j++) emit_task(&R, s->order[dev][k + j]);
  }
  exchange(&R, NULL, 0);
  emit_update(&R);
  int *layer = arena_alloc(sizeof(int) * (size_t)(p->nbufs + 1)); /* of the parameters' buffers, for the gathers */
  for (int b = 0; b < p->nbufs; b++) layer[b] = -2;
  for (int i = 0; i < g->nfwd; i++)
    if (R.pbuf[i] >= 0) layer[R.pbuf[i]] = g->nodes[i]->layer;
  prog_hoist_comm(p, &R.step, 0, R.step.n, &R.bk, layer);
  prog_place(p, &R.step, 0, R.step.n, &R.bk);
  free(R.bk.bufs), free(R.bk.start), free(R.bk.member);
  prog_finish(p, &R.init, &R.step);
  return p;
}

/* The plan id: a hash of everything the rank programs are made from. */
static uint64_t plan_id(const Dist *D, uint64_t seed) {
  const Layout *L = D->L;
  int64_t f[] = {L->dp, L->pp, L->v, L->microbatches, D->tp, L->schedule, L->zero, L->recompute, L->sp};
  uint64_t h = hash_bytes(f, sizeof f, prog_recipe(D->g, D->t, seed));
  for (int d = 0; d < L->pp; d++) {
    int64_t st[2] = {D->dpd[d], L->stage_recompute ? L->stage_recompute[d] : -1};
    h = hash_bytes(st, sizeof st, h);
  }
  return hash_bytes(D->sh, sizeof(Shard) * (size_t)D->g->n, h);
}

typedef struct Making {
  const Dist *D;
  uint64_t seed;
} Making;

/* Rank i's program (ranks run over device, replica, position). */
static const Program *make_rank(void *making, int i) {
  const Making *mk = making;
  const Dist *D = mk->D;
  int d = 0;
  while (i >= D->base[d] + D->dpd[d] * D->tp) d++;
  int j = (i - D->base[d]) / D->tp, q = (i - D->base[d]) % D->tp;
  return emit_rank(D, d, j, q, mk->seed);
}

/* A sink that keeps each program's communication for the deadlock check
   (rendezvous.c) before handing it on. */
typedef struct Checked {
  RankSink each;
  void *ctx;
  Rendezvous *z;
} Checked;

static bool checked_sink(const Program *p, void *checked) {
  Checked *c = checked;
  rendezvous_add(c->z, p);
  return c->each(p, c->ctx);
}

/* Every rank's program in rank order, each handed to `each` and then
   released: what the ranks share (Dist) stays, what one rank's program
   takes is freed once it is written. Making one overlaps writing the one
   before (ranks_pipelined). Then the whole plan is held to the rendezvous
   rule: false, with the stuck ranks named, when it would deadlock on a
   transport whose sends wait for their receives. */
static bool emit_ranks(const Dist *D, uint64_t seed, RankSink each, void *ctx, FILE *err) {
  if (D->L->first_of_stage) { /* a device's first rank each: few programs, made one by one */
    for (int d = 0; d < D->L->pp; d++) {
      ArenaMark m = arena_mark();
      bool ok = each(emit_rank(D, d, 0, 0, seed), ctx);
      arena_release(m);
      if (!ok) return false;
    }
    return true;
  }
  Making mk = {D, seed};
  Checked c = {each, ctx, rendezvous_new(D->world)};
  bool ok = ranks_pipelined(D->world, make_rank, &mk, checked_sink, &c) && rendezvous_check(c.z, err);
  if (ok && !rendezvous_checked(c.z))
    fprintf(err,
            "carve: note: %d ranks' programs are more than the deadlock check under rendezvous takes: not checked\n",
            D->world);
  rendezvous_free(c.z);
  return ok;
}

static int gcd(int a, int b) { return b ? gcd(b, a % b) : a; }

int layout_units(const Layout *L) {
  int u = 1;
  for (int d = 0; d < L->pp; d++) {
    int dp = L->stage_dp ? L->stage_dp[d] : L->dp;
    if (dp > 0) u = u / gcd(u, dp) * dp;
  }
  return u;
}

int layout_world(const Layout *L) {
  int n = 0;
  for (int d = 0; d < L->pp; d++) n += L->stage_dp ? L->stage_dp[d] : L->dp;
  return n * (L->tp > 1 ? L->tp : 1);
}

bool codegen_ranks(const Graph *g, const Train *t, uint64_t seed, const Layout *L, RankSink each, void *ctx,
                   FILE *err) {
  CARVE_ASSERT(g->grad, "codegen takes a training graph");
  if (L->dp < 1 || L->pp < 1 || L->v < 1 || L->microbatches < 1 || L->zero < 0 || L->zero > 3) {
    fprintf(err, "carve: error: a layout needs dp, pp, v and microbatches of at least 1 and ZeRO 0-3\n");
    return false;
  }
  int tp = L->tp > 1 ? L->tp : 1;
  if (tp > 1 && !L->plans) {
    fprintf(err, "carve: error: tensor parallelism needs a plan for every stage\n");
    return false;
  }
  Dist D = {.g = g, .t = t, .L = L, .S = L->pp * L->v, .tp = tp, .U = layout_units(L)};
  D.M = L->microbatches * D.U;
  D.dpd = arena_alloc(sizeof(int) * (size_t)L->pp);
  D.base = arena_alloc(sizeof(int) * (size_t)L->pp);
  D.repbase = arena_alloc(sizeof(int) * (size_t)L->pp);
  for (int d = 0; d < L->pp; d++) {
    D.dpd[d] = L->stage_dp ? L->stage_dp[d] : L->dp;
    if (D.dpd[d] < 1) {
      fprintf(err, "carve: error: stage %d has no replicas\n", d);
      return false;
    }
    D.repbase[d] = d ? D.repbase[d - 1] + D.dpd[d - 1] : 0;
    D.base[d] = D.repbase[d] * tp;
    D.maxdp = D.dpd[d] > D.maxdp ? D.dpd[d] : D.maxdp;
  }
  D.world = (D.repbase[L->pp - 1] + D.dpd[L->pp - 1]) * tp;
  if ((int64_t)g->n * D.M >= (1 << 30)) {
    fprintf(err, "carve: error: %d nodes x %d microbatch units is too many to tag messages\n", g->n, D.M);
    return false;
  }
  D.sched = schedule_make((SchedKind)L->schedule, L->pp, L->microbatches, L->v, err);
  if (!D.sched || !analyse(&D, err) || !shard_graph(&D, err)) return false;
  D.sel = selective_nodes(g);
  D.dt = value_dtypes(g, t->precision);
  task_runs(&D);
  pair_tasks(&D);
  for (int p = 0; p < g->nfwd && L->zero; p++) /* a tied parameter's shards must line up across its copies */
    for (int d = 0; d < L->pp && D.ndev[p] > 1; d++)
      for (int e = 0; e < L->pp; e++)
        if (D.held[(size_t)p * L->pp + d] && D.held[(size_t)p * L->pp + e] && D.dpd[d] != D.dpd[e]) {
          fprintf(err,
                  "carve: error: %s is on stages %d and %d, which have %d and %d replicas: ZeRO %d would shard "
                  "it differently on each; use ZeRO 0 or equal replicas\n",
                  g->nodes[p]->name, d, e, D.dpd[d], D.dpd[e], L->zero);
          return false;
        }
  make_groups(&D);
  D.plan_id = plan_id(&D, seed);
  return emit_ranks(&D, seed, each, ctx, err);
}
