/* stages.c: cutting a model's layers into pipeline stages, and the layers
 * themselves.
 *
 * The recurrence (Alpa's inter-operator DP, Zheng et al. OSDI'22). A plan
 * cuts layers 0..L-1 into consecutive stages; stage s runs layers i..j on a
 * submesh of n_s devices, with sum n_s = D, and costs t_s per microbatch.
 * With B microbatches a pipeline step takes
 *
 *     T = sum_s t_s + (B - 1) max_s t_s.
 *
 * For a fixed bound t_max on the slowest stage,
 *
 *     F(i, d) = min over j >= i and submesh k with t(i, j, k) <= t_max and
 *               n_k <= d  of  t(i, j, k) + F(j + 1, d - n_k),
 *     F(L, 0) = 0,  F(L, d > 0) = infinity,
 *
 * and T*(t_max) = F(0, D) + (B - 1) t_max is an upper bound on any plan
 * whose slowest stage is at most t_max, exact for the plan F finds when its
 * slowest stage equals t_max. Trying every distinct stage cost as t_max in
 * increasing order and keeping the best T* gives the optimum; the loop stops
 * once (B - 1) t_max alone exceeds the best total found. Stages that do not
 * fit in memory (negative cost) are never used. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

typedef struct Table {
  const StageProblem *sp;
  double *t; /* t[(i * L + j) * nsub + k], or -1 */
} Table;

static double T(const Table *tb, int i, int j, int k) {
  return tb->t[((size_t)i * (size_t)tb->sp->layers + (size_t)j) * (size_t)tb->sp->nsub + (size_t)k];
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* F(i, d) for one t_max; choice[i][d] = (j, k) packed. */
static double run_dp(const Table *tb, double tmax, double *F, int *choice) {
  const StageProblem *sp = tb->sp;
  int L = sp->layers, D = sp->devices;
  for (int i = L; i >= 0; i--)
    for (int d = 0; d <= D; d++) {
      double best = INFINITY;
      int arg = -1;
      if (i == L) {
        best = d == 0 ? 0 : INFINITY;
      } else {
        for (int j = i; j < L; j++)
          for (int k = 0; k < sp->nsub; k++) {
            double t = T(tb, i, j, k);
            int n = sp->sub_devs[k];
            if (t < 0 || t > tmax || n > d) continue;
            double rest = F[(j + 1) * (D + 1) + (d - n)];
            if (t + rest < best) best = t + rest, arg = j * sp->nsub + k;
          }
      }
      F[i * (D + 1) + d] = best;
      choice[i * (D + 1) + d] = arg;
    }
  return F[D];
}

double stage_dp(const StageProblem *sp, Stage *out, int *nstages) {
  int L = sp->layers, D = sp->devices, K = sp->nsub;
  Table tb = {sp, xmalloc(sizeof(double) * (size_t)L * (size_t)L * (size_t)K)};
  double *cand = xmalloc(sizeof(double) * ((size_t)L * (size_t)L * (size_t)K + 1));
  int nc = 0;
  for (int i = 0; i < L; i++)
    for (int j = 0; j < L; j++)
      for (int k = 0; k < K; k++) {
        double t = j >= i ? sp->cost(sp->ctx, i, j, k) : -1;
        tb.t[((size_t)i * (size_t)L + (size_t)j) * (size_t)K + (size_t)k] = t;
        if (t >= 0) cand[nc++] = t;
      }
  qsort(cand, (size_t)nc, sizeof(double), cmp_double);
  double *F = xmalloc(sizeof(double) * (size_t)(L + 1) * (size_t)(D + 1));
  int *choice = xmalloc(sizeof(int) * (size_t)(L + 1) * (size_t)(D + 1));
  double best = -1, best_tmax = 0;
  for (int c = 0; c < nc; c++) {
    if (c > 0 && cand[c] == cand[c - 1]) continue;
    double tmax = cand[c];
    if (best >= 0 && (sp->microbatches - 1) * tmax >= best) break; /* no later t_max can win */
    double f = run_dp(&tb, tmax, F, choice);
    if (!isfinite(f)) continue;
    double total = f + (sp->microbatches - 1) * tmax;
    if (best < 0 || total < best) best = total, best_tmax = tmax;
  }
  *nstages = 0;
  if (best >= 0) { /* rebuild the stages of the best t_max */
    run_dp(&tb, best_tmax, F, choice);
    int i = 0, d = D;
    double tmax_used = 0, sum = 0;
    while (i < L) {
      int a = choice[i * (D + 1) + d], j = a / K, k = a % K;
      out[(*nstages)++] = (Stage){i, j, k, T(&tb, i, j, k)};
      sum += T(&tb, i, j, k);
      tmax_used = fmax(tmax_used, T(&tb, i, j, k));
      d -= sp->sub_devs[k];
      i = j + 1;
    }
    best = sum + (sp->microbatches - 1) * tmax_used; /* the plan's own total */
  }
  free(tb.t), free(cand), free(F), free(choice);
  return best;
}

/* Enumerates every cut into stages and every submesh per stage. */
static void brute(const StageProblem *sp, int i, int d, double sum, double mx, double *best) {
  if (i == sp->layers) {
    if (d == 0) {
      double total = sum + (sp->microbatches - 1) * mx;
      if (*best < 0 || total < *best) *best = total;
    }
    return;
  }
  for (int j = i; j < sp->layers; j++)
    for (int k = 0; k < sp->nsub; k++) {
      if (sp->sub_devs[k] > d) continue;
      double t = sp->cost(sp->ctx, i, j, k);
      if (t < 0) continue;
      brute(sp, j + 1, d - sp->sub_devs[k], sum + t, fmax(mx, t), best);
    }
}

double stage_brute_force(const StageProblem *sp) {
  double best = -1;
  brute(sp, 0, sp->devices, 0, 0, &best);
  return best;
}

/* ---------------------------------------------------------------- layers */

int graph_layers(const Graph *g, int want, int *layer_of) {
  int n = g->nfwd, maxl = -1;
  for (int i = 0; i < n; i++) maxl = g->nodes[i]->layer > maxl ? g->nodes[i]->layer : maxl;
  if (maxl >= 0) { /* repeat iterations (numbered across blocks); what stands
                       between or after them joins the layer before it, what
                       stands before the first joins the first */
    int prev = 0;
    for (int i = 0; i < n; i++) {
      int l = g->nodes[i]->layer;
      if (l >= 0) prev = l;
      layer_of[i] = l >= 0 ? l : prev;
    }
    return maxl + 1;
  }
  /* no repeat blocks: cut the node sequence into `want` runs of about equal
     FLOPs, never more runs than there are einsums */
  int heavy = 0;
  double total = 0;
  for (int i = 0; i < n; i++) {
    heavy += g->nodes[i]->op == OP_EINSUM;
    total += node_flops(g, g->nodes[i]);
  }
  int L = want < 1 ? 1 : want > heavy ? (heavy ? heavy : 1) : want;
  double acc = 0;
  int cur = 0;
  for (int i = 0; i < n; i++) {
    acc += node_flops(g, g->nodes[i]);
    layer_of[i] = cur;
    if (cur < L - 1 && acc >= total * (cur + 1) / L && g->nodes[i]->op == OP_EINSUM) cur++;
  }
  return cur + 1;
}

/* ---------------------------------------------------------------- stage graphs */

static int copy_leaf(Graph *sg, const Node *u, int *map) {
  if (map[u->id] < 0) {
    Node *n = graph_add(sg, u->op, u->name);
    int id = n->id;
    *n = *u;
    n->id = id;
    map[u->id] = id;
  }
  return map[u->id];
}

/* An activation computed before the span arrives as an input. */
static int receive(Graph *sg, const Node *u, int *map, const bool *trained) {
  if (map[u->id] < 0) {
    Node *n = graph_add(sg, OP_INPUT, arena_printf("recv:%s", u->name));
    n->shape = u->shape;
    memcpy(n->dimname, u->dimname, sizeof n->dimname);
    n->dtype = u->dtype;
    n->layer = u->layer;
    n->init = trained[u->id] ? SRC_STAGE : SRC_NORMAL; /* its gradient goes back to the stage before */
    n->init_a = 1;
    map[u->id] = n->id;
  }
  return map[u->id];
}

/* loss = sum over outputs read by later layers of mse(out, grad:out) */
static int stand_in_loss(Graph *sg, const Graph *g, const int *layer_of, int last, const int *map) {
  int loss = -1;
  for (int i = 0; i < g->nfwd; i++) {
    if (map[i] < 0 || g->nodes[i]->op == OP_PARAM || g->nodes[i]->op == OP_INPUT) continue;
    bool read_later = false;
    for (int v = i + 1; v < g->nfwd && !read_later; v++)
      for (int k = 0; k < g->nodes[v]->nin; k++)
        if (g->nodes[v]->in[k] == i && layer_of[v] > last) read_later = true;
    if (!read_later || g->nodes[i]->dtype != DT_F32) continue;
    Node *t = graph_add(sg, OP_INPUT, arena_printf("grad:%s", g->nodes[i]->name));
    t->shape = g->nodes[i]->shape;
    memcpy(t->dimname, g->nodes[i]->dimname, sizeof t->dimname);
    t->init = SRC_NORMAL;
    t->init_a = 1;
    t->layer = g->nodes[i]->layer;
    Node *m = graph_add(sg, OP_MSE, arena_printf("stand-in:%s", g->nodes[i]->name));
    m->nin = 2, m->in[0] = map[i], m->in[1] = t->id, m->layer = t->layer;
    if (loss < 0) {
      loss = m->id;
    } else {
      Node *a = graph_add(sg, OP_ADD, arena_printf("stand-in-sum:%s", g->nodes[i]->name));
      a->nin = 2, a->in[0] = loss, a->in[1] = m->id, a->layer = t->layer;
      loss = a->id;
    }
  }
  return loss;
}

/* A parameter of the span also read before it or after it is held by those
   stages too, its gradient summed over the copies (codegen/distribute.c):
   Graph.copies counts this stage, one before and one after (a tied
   embedding read by the first and the last stage: 2). */
static void tied_copies(Graph *sg, const Graph *g, const int *layer_of, int first, int last, const int *map) {
  bool *before = arena_alloc(sizeof(bool) * (size_t)(2 * g->nfwd + 2)), *after = before + g->nfwd + 1;
  bool any = false;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (v->op == OP_PARAM || v->op == OP_INPUT || (layer_of[i] >= first && layer_of[i] <= last)) continue;
    for (int k = 0; k < v->nin; k++) {
      const Node *u = g->nodes[v->in[k]];
      if (u->op != OP_PARAM || map[u->id] < 0) continue;
      (layer_of[i] < first ? before : after)[u->id] = true;
      any = true;
    }
  }
  if (!any) return;
  sg->copies = arena_alloc(sizeof(int) * (size_t)(sg->nfwd + 1));
  sg->copied_before = arena_alloc(sizeof(bool) * (size_t)(sg->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++)
    if (map[i] >= 0 && g->nodes[i]->op == OP_PARAM)
      sg->copies[map[i]] = 1 + before[i] + after[i], sg->copied_before[map[i]] = before[i];
}

Graph *stage_graph(const Graph *g, const int *layer_of, int first, int last) {
  Graph *sg = graph_new(arena_printf("%s[%d-%d]", g->model, first, last));
  sg->dims = g->dims, sg->ndims = g->ndims;
  int *map = arena_alloc(sizeof(int) * (size_t)(g->nfwd + 1));
  const bool *trained = graph_trained(g);
  for (int i = 0; i < g->nfwd; i++) map[i] = -1;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (layer_of[i] < first || layer_of[i] > last || v->op == OP_PARAM || v->op == OP_INPUT) continue;
    int in[MAXIN];
    for (int k = 0; k < v->nin; k++) {
      const Node *u = g->nodes[v->in[k]];
      in[k] = map[u->id] >= 0                          ? map[u->id]
              : u->op == OP_PARAM || u->op == OP_INPUT ? copy_leaf(sg, u, map)
                                                       : receive(sg, u, map, trained);
    }
    Node *n = graph_add(sg, v->op, v->name);
    int id = n->id;
    *n = *v;
    n->id = id;
    for (int k = 0; k < v->nin; k++) n->in[k] = in[k];
    map[i] = id;
  }
  sg->loss = g->loss >= 0 && map[g->loss] >= 0 ? map[g->loss] : stand_in_loss(sg, g, layer_of, last, map);
  sg->nfwd = sg->n;
  tied_copies(sg, g, layer_of, first, last, map);
  return sg;
}

/* ---------------------------------------------------------------- selective recomputation */

const char *const rc_names[RC_KINDS] = {"none", "selective", "full"};

static bool scales_or_masks(OpKind op) {
  return op == OP_DIV || op == OP_SCALE || op == OP_MUL || op == OP_ADD || op == OP_SUB;
}

/* Each softmax of the forward graph, and back from it through the ops that
   scale or mask its input, up to and with the einsum that made the scores. */
bool *selective_nodes(const Graph *g) {
  bool *sel = arena_alloc(sizeof(bool) * (size_t)(g->n + 1));
  for (int i = 0; i < g->nfwd; i++) {
    if (g->nodes[i]->op != OP_SOFTMAX) continue;
    sel[i] = true;
    const Node *u = g->nodes[g->nodes[i]->in[0]];
    while (scales_or_masks(u->op) && u->nin >= 1 && !sel[u->id]) {
      sel[u->id] = true;
      u = g->nodes[u->in[0]];
    }
    if (u->op == OP_EINSUM) sel[u->id] = true;
  }
  return sel;
}
