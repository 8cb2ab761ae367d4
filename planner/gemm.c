/* gemm.c: how close to its device's peak FLOP/s one einsum runs, by shape
 * and precision (the compute-efficiency part of the cost model;
 * docs/cost-model.md, "Compute", gives the model and its sources).
 *
 * An einsum is a batched matrix product: batch labels (in both operands and
 * the result), M (first operand and result), N (second operand and result)
 * and K (contracted). Its efficiency is
 *
 *   e = e_max * s(M) s(N) s(K) * q(M) q(N)
 *   s(x) = x / (x + x_half)          (ramp-up: short dims reuse less data)
 *   q(x) = x / (x rounded up to a multiple of GEMM_TILE)   (tile quantisation)
 *
 * e_max is the efficiency of a large square product (cluster key
 * gemm_efficiency, per precision), x_half the dim at which a product runs at
 * half of it (gemm_half_dim). Memory-bound products are priced by the
 * roofline's bytes term where the einsum's time is computed, not here. */
#include <math.h>
#include <string.h>

#include "planner.h"

double gemm_best_efficiency(const Cluster *c, bool mixed) {
  double eff16 = c->gemm_efficiency > 0 ? c->gemm_efficiency : GEMM_EFF_DEFAULT;
  double eff32 = c->gemm_efficiency_f32 > 0 ? c->gemm_efficiency_f32 : eff16;
  return mixed && c->flops_bf16 > 0 ? eff16 : eff32;
}

static double ramp(double x, double half) { return x / (x + half); }

static double tile_fill(double x) { return x / (ceil(x / GEMM_TILE) * GEMM_TILE); }

double gemm_efficiency(const Mesh *me, const GemmShape *s) {
  double e = me->gemm_eff > 0 ? me->gemm_eff : GEMM_EFF_DEFAULT;
  double half = me->gemm_half > 0 ? me->gemm_half : GEMM_HALF_DIM_DEFAULT;
  e *= ramp(s->m, half) * ramp(s->n, half) * ramp(s->k, half);
  return e * tile_fill(s->m) * tile_fill(s->n);
}

/* Which of batch, M, N, K a label is: by where it appears. */
static double *role(GemmShape *s, bool in_a, bool in_b, bool in_out) {
  if (in_a && in_b) return in_out ? &s->batch : &s->k;
  if (in_out) return in_a ? &s->m : &s->n;
  return NULL; /* summed away within one operand: no product dim */
}

GemmShape gemm_shape(const char *a, const char *b, const char *out, const double *size_of_label) {
  GemmShape s = {1, 1, 1, 1};
  char seen[3 * MAXRANK + 1] = "";
  const char *all[3] = {a, b, out};
  for (int t = 0; t < 3; t++)
    for (const char *l = all[t]; *l; l++) {
      if (strchr(seen, *l)) continue;
      size_t n = strlen(seen);
      seen[n] = *l, seen[n + 1] = 0;
      double *d = role(&s, strchr(a, *l), strchr(b, *l), strchr(out, *l));
      if (d) *d *= size_of_label[(unsigned char)*l];
    }
  return s;
}

GemmShape node_gemm_shape(const Graph *g, const Node *v, double shards) {
  double size[256] = {0};
  for (int k = 0; k <= v->nin; k++) {
    const Shape *sh = k < v->nin ? &g->nodes[v->in[k]]->shape : &v->shape;
    for (int i = 0; i < sh->rank; i++) size[(unsigned char)v->labels[k][i]] = (double)sh->d[i];
  }
  GemmShape s = gemm_shape(v->labels[0], v->labels[1], v->labels[v->nin], size);
  if (s.batch >= s.m * shards) /* the split taken to fall on the largest of batch and M */
    s.batch /= shards;
  else
    s.m /= shards;
  return s;
}
