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
