/* intra.c: the intra-operator pass: how every tensor of the training step is
 * split over a logical mesh, chosen by an integer linear program (GLPK).
 *
 * The model. Every forward op is a loop nest over *iteration dims*: an
 * einsum's labels; an elementwise op's output dims; a reduction's input
 * dims; embed's ids dims, hidden and vocab. Each tensor the op touches maps
 * its dims onto iteration dims. A strategy assigns each mesh axis to at most
 * one iteration dim (or none: replicated along that axis). That one choice
 * fixes everything:
 *   - every tensor's sharding (a dim gets the axes of its iteration dim);
 *   - compute per device: the op's FLOPs (forward and backward) divided by
 *     the product of the assigned axes;
 *   - forward communication: an axis on an iteration dim the output lacks
 *     (a contracted label, a reduced or vocabulary dim) leaves partial sums:
 *     an all-reduce of the output over that axis,
 *     or, a strategy variant (rs), a reduce-scatter along the output's
 *     "seq" dim, which that axis then splits: sequence parallelism;
 *   - backward communication: an input's gradient is a sum over the
 *     iteration dims that input lacks; an axis on one of them leaves it
 *     partial. For a weight this is the data-parallel gradient all-reduce;
 *     for an activation, Megatron's backward all-reduce, or a
 *     reduce-scatter where the producer holds it split on that axis (a
 *     gradient edge to the producer's variable). Normalisations (softmax,
 *     layernorm, cross-entropy) over a split dim all-reduce their row
 *     statistics instead;
 *   - memory: parameters with their gradients and optimizer state, and the
 *     activations the backward pass keeps.
 * A mixture-of-experts einsum (one operand a dispatch or combine tensor) has
 * one more kind of strategy: tokens split on an axis for the token-side
 * tensors and experts split on the same axis for the expert-side ones, which
 * costs an all-to-all of the expert-side tensor (GShard's dispatch and
 * combine).
 *
 * Variables. Elementwise ops, normalisations and softmax follow their main
 * input (same layout), so a chain of them joins the group of the op that
 * produced it (in a plan that is to be lowered, not an op whose input's
 * layout may split a dim its kernel needs whole: it has its own variable).
 * A parameter or input read by one op is stored the way that op reads it. Each remaining group is one ILP variable; the
 * groups of repeated layers (same name but for the layer index, same op and shapes) share one variable per layer parity
 * (a period of two, so consecutive layers can alternate), and the problem does not grow with depth.
 *
 * The ILP (Alpa's formulation, with the memory constraint always on):
 *   minimise    sum_v sum_s c_v[s] x_v[s]  +  sum_(u,v) sum_(l,m) r_uv[l,m] e_uv[l,m]
 *   subject to  sum_s x_v[s] = 1                            for every variable v
 *               sum_m e_uv[l,m] = sum_(s: L_u(s) = l) x_u[s]  for every edge, layout l
 *               sum_l e_uv[l,m] = sum_(t: R_v(t) = m) x_v[t]  for every edge, layout m
 *               sum_v sum_s mem_v[s] x_v[s] <= device memory
 *               x binary, e >= 0
 * c is compute plus communication time of all the ops in v's groups; r is
 * the resharding time between the layout u produces (L_u) and the layout v
 * reads (R_v), both ways (the gradient flows back); e is indexed by layouts,
 * not strategies, which keeps it small, and is integral whenever x is,
 * because its row and column sums are then 0 or 1 with one 1 each. */
#include <float.h>
#include <glpk.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

#define MAXID 16 /* iteration dims of one op */

/* ---------------------------------------------------------------- op models */

typedef struct OpModel {
  int nd;
  int64_t size[MAXID];
  int nt; /* tensors: the inputs, then the output */
  int rank[MAXIN + 1];
  int8_t map[MAXIN + 1][MAXRANK]; /* tensor dim -> iteration dim, -1: none */
  int norm;                       /* iteration dim normalised over, -1: none */
  int moe_e;                      /* expert iteration dim of an MoE einsum, -1: none */
  uint32_t moe_tokens;            /* token iteration dims (bit mask) */
  uint32_t frozen;                /* iteration dims that may not be split */
  uint32_t unlowered;             /* iteration dims a kernel needs whole (op_whole_dims): not split when the
                                     plan is to be lowered (PlanOptions.lowerable) */
  int batch;                      /* the iteration dim named "batch" (else one computed from it, as an MoE
                                     capacity), -1: none */
  uint32_t scaled;                /* the other iteration dims computed from the batch (graph_dim_per_batch) */
  bool batch_scaled;              /* the batch is one of those (the op has no dim named batch) */
  int rep;                        /* the replica axis: splitting the batch over it splits the scaled dims too */
  int seq;                        /* the output's dim named "seq" as an iteration dim, -1: none */
  bool scatter;                   /* a two-operand einsum: its partial sums may be reduce-scattered */
} OpModel;

typedef struct Strategy {
  int8_t ax[2]; /* iteration dim of mesh axis 0 and 1, -1: none */
  int8_t a2a;   /* MoE: the axis carrying both tokens and experts, -1: none */
  int8_t rs[2]; /* the partial sums over mesh axis a (ax[a] contracted) reduce-scattered along this
                   iteration dim of the output, which that axis then splits (sequence parallelism
                   after a row-parallel product); -1: all-reduced, the output whole on that axis */
} Strategy;

static const Strategy no_split = {{-1, -1}, -1, {-1, -1}};

/* Whether tensor t of the op maps iteration dim id. */
static bool maps(const OpModel *m, int t, int id) {
  for (int i = 0; i < m->rank[t]; i++)
    if (m->map[t][i] == id) return true;
  return false;
}

static void map_identity(OpModel *m, int t, int rank, int offset) {
  m->rank[t] = rank;
  for (int i = 0; i < rank; i++) m->map[t][i] = (int8_t)(offset + i);
}

/* Iteration dims = the dims of tensor `of` (its shape). */
static void dims_of(OpModel *m, const Shape *s) {
  m->nd = s->rank;
  for (int i = 0; i < s->rank; i++) m->size[i] = s->d[i];
}

static const Node *tensor_node(const Graph *g, const Node *v, const OpModel *m, int t) {
  return t < m->nt - 1 && !is_leaf(v) ? g->nodes[v->in[t]] : v;
}

static int batch_idim(const Graph *g, const Node *v, const OpModel *m) {
  for (int t = 0; t < m->nt; t++) {
    const Node *n = tensor_node(g, v, m, t);
    for (int i = 0; i < m->rank[t]; i++)
      if (m->map[t][i] >= 0 && i < n->shape.rank && n->dimname[i] && strcmp(n->dimname[i], "batch") == 0)
        return m->map[t][i];
  }
  return -1;
}

/* The batch and the dims computed from it. Data-parallel replicas each run
   the model at their share of the batch (codegen/distribute.c), so such a
   dim (an MoE capacity) is split with the batch over the replica axis, and
   an op without a batch dim (an expert's product, over the capacity) takes
   one of them as its batch. A contraction over the batch then leaves no
   partial sum where the output keeps a scaled dim: each replica holds its
   own block (its tokens' expert slots). */
static void per_batch_dims(const Graph *g, const Node *v, OpModel *m) {
  m->batch = batch_idim(g, v, m);
  for (int t = 0; t < m->nt; t++) {
    const Node *n = tensor_node(g, v, m, t);
    for (int i = 0; i < m->rank[t]; i++)
      if (m->map[t][i] >= 0 && m->map[t][i] != m->batch && graph_dim_per_batch(g, n, i))
        m->scaled |= 1u << m->map[t][i];
  }
  if (m->batch < 0 && (m->scaled & ~m->frozen)) {
    m->batch = __builtin_ctz(m->scaled & ~m->frozen);
    m->scaled &= ~(1u << m->batch);
    m->batch_scaled = true;
  }
}

/* Whether strategy st splits the op's scaled dims over axis a with its batch. */
static bool diag(const OpModel *m, const Strategy *st, int a) {
  return m->scaled && a == m->rep && st->ax[a] >= 0 && st->ax[a] == m->batch;
}

/* Whether tensor t of the op is split over axis a (a reduce-scatter's output and an all-to-all's other side
   aside): an op whose output is not leaves partial sums over a. */
static bool split_by(const OpModel *m, int t, const Strategy *st, int a) {
  if (st->ax[a] >= 0 && maps(m, t, st->ax[a])) return true;
  if (!diag(m, st, a)) return false;
  for (int i = 0; i < m->rank[t]; i++)
    if (m->map[t][i] >= 0 && (m->scaled >> m->map[t][i] & 1)) return true;
  return false;
}

static void op_dims(const Graph *g, const Node *v, OpModel *m);

static int rep_axis(const PlanOptions *o) { return o->batch_axis >= 0 ? o->batch_axis : 0; }

/* The op's loop nest; the iteration dims its kernel needs whole come from
   the rule book (frontend/rules.c), which the code generator reads too.
   rep: the mesh axis of the data-parallel replicas (PlanOptions.batch_axis, else 0, the axis codegen runs as
   replicas: pipeline.c, pipeline_layout). */
static void op_model(const Graph *g, const Node *v, int rep, OpModel *m) {
  op_dims(g, v, m);
  m->rep = rep;
  per_batch_dims(g, v, m);
  int out = m->nt - 1;
  m->seq = -1;
  for (int i = 0; i < m->rank[out] && !is_leaf(v); i++)
    if (v->dimname[i] && strcmp(v->dimname[i], "seq") == 0) m->seq = m->map[out][i];
  m->scatter = v->op == OP_EINSUM && v->nin == 2 && m->rank[out] > 0;
  for (int t = 0; t < m->nt; t++) {
    uint32_t whole = op_whole_dims(g, v, t == m->nt - 1 && !is_leaf(v) ? v->nin : t);
    for (int i = 0; i < m->rank[t]; i++)
      if (whole >> i & 1 && m->map[t][i] >= 0) m->unlowered |= 1u << m->map[t][i];
  }
}

static void op_dims(const Graph *g, const Node *v, OpModel *m) {
  memset(m, 0, sizeof *m);
  memset(m->map, -1, sizeof m->map);
  m->norm = m->moe_e = -1;
  int nin = is_leaf(v) ? 0 : v->nin;
  m->nt = nin + 1;
  const Node *in0 = nin ? g->nodes[v->in[0]] : NULL;
  switch (v->op) {
  case OP_EINSUM: {
    char labels[3 * MAXRANK + 1] = "";
    for (int k = 0; k <= nin; k++) {
      const char *l = v->labels[k];
      const Shape *s = k < nin ? &g->nodes[v->in[k]]->shape : &v->shape;
      m->rank[k == nin ? nin : k] = s->rank;
      for (int i = 0; i < s->rank; i++) {
        char *p = strchr(labels, l[i]);
        int id = p ? (int)(p - labels) : m->nd;
        if (!p) {
          labels[m->nd] = l[i];
          labels[m->nd + 1] = 0;
          m->size[m->nd++] = s->d[i];
        }
        m->map[k][i] = (int8_t)id;
      }
    }
    for (int k = 0; k < nin; k++) {
      const Node *u = g->nodes[v->in[k]];
      if ((u->op == OP_MOE_DISPATCH || u->op == OP_MOE_COMBINE) && u->shape.rank >= 2) {
        m->moe_e = m->map[k][u->shape.rank - 2];
        for (int i = 0; i < u->shape.rank - 2; i++) m->moe_tokens |= 1u << m->map[k][i];
      }
    }
    return;
  }
  case OP_EMBED: { /* ids dims, hidden, vocab */
    const Node *ids = g->nodes[v->in[1]];
    int r = ids->shape.rank;
    dims_of(m, &ids->shape);
    m->size[r] = in0->shape.d[1];
    m->size[r + 1] = in0->shape.d[0];
    m->nd = r + 2;
    m->rank[0] = 2, m->map[0][0] = (int8_t)(r + 1), m->map[0][1] = (int8_t)r;
    map_identity(m, 1, r, 0);
    map_identity(m, 2, r + 1, 0);
    return;
  }
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX:
    dims_of(m, &in0->shape);
    map_identity(m, 0, in0->shape.rank, 0);
    m->rank[1] = v->shape.rank;
    for (int i = 0, j = 0; i < in0->shape.rank; i++)
      if (i != v->i[0]) m->map[1][j++] = (int8_t)i;
    return;
  case OP_XENT:
  case OP_MSE:
    dims_of(m, &in0->shape);
    map_identity(m, 0, in0->shape.rank, 0);
    map_identity(m, 1, g->nodes[v->in[1]]->shape.rank, 0);
    m->rank[2] = 0;
    if (v->op == OP_XENT) m->norm = in0->shape.rank - 1;
    return;
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE:
    dims_of(m, &v->shape);
    map_identity(m, 0, in0->shape.rank, 0);
    map_identity(m, 1, v->shape.rank, 0);
    m->frozen = 1u << (v->shape.rank - 1); /* capacity */
    return;
  case OP_RESHAPE: { /* dims of a common prefix keep their splits; the rest may not split */
    dims_of(m, &v->shape);
    map_identity(m, 1, v->shape.rank, 0);
    m->rank[0] = in0->shape.rank;
    int p = 0;
    while (p < v->shape.rank && p < in0->shape.rank && v->shape.d[p] == in0->shape.d[p]) p++;
    for (int i = 0; i < p; i++) m->map[0][i] = (int8_t)i;
    for (int i = p; i < v->shape.rank; i++) m->frozen |= 1u << i;
    return;
  }
  default: /* leaves, elementwise, softmax, norms: iteration dims = the output's */
    dims_of(m, &v->shape);
    map_identity(m, nin, v->shape.rank, 0);
    for (int k = 0; k < nin; k++) { /* trailing-aligned inputs */
      const Shape *s = &g->nodes[v->in[k]]->shape;
      m->rank[k] = s->rank;
      for (int i = 0; i < s->rank; i++) m->map[k][i] = (int8_t)(v->shape.rank - s->rank + i);
    }
    if (v->op == OP_SOFTMAX || v->op == OP_LAYERNORM || v->op == OP_RMSNORM) m->norm = v->shape.rank - 1;
    return;
  }
}

/* The layout of tensor t under strategy st. */
static Spec tensor_spec(const OpModel *m, int t, const Strategy *st) {
  Spec s = {.rank = m->rank[t]};
  bool has_token = false;
  if (st->a2a >= 0)
    for (int i = 0; i < m->rank[t]; i++) has_token |= m->map[t][i] == st->ax[st->a2a];
  for (int i = 0; i < m->rank[t]; i++) {
    int id = m->map[t][i];
    if (id < 0) continue;
    for (int a = 0; a < 2; a++)
      if (st->ax[a] == id || (t == m->nt - 1 && st->rs[a] == id) || (diag(m, st, a) && (m->scaled >> id & 1)))
        s.d[i] |= (uint8_t)(1 << a);
    if (st->a2a >= 0 && !has_token && id == m->moe_e) s.d[i] |= (uint8_t)(1 << st->a2a);
  }
  return s;
}

/* The parts a layout cuts a tensor into: an axis that splits the batch and a dim computed from it (diag)
   cuts both. */
static int spec_shards(const Mesh *me, const Spec *s) {
  int n = 1;
  for (int i = 0; i < s->rank; i++) n *= (s->d[i] & 1 ? me->n[0] : 1) * (s->d[i] & 2 ? me->n[1] : 1);
  return n;
}

/* ---------------------------------------------------------------- strategies */

typedef struct Ctx {
  const Graph *g;
  const Mesh *me;
  const PlanOptions *o;
  int zero;
  double act_bytes; /* bytes per activation element */
  bool *live, *kept, *needs_grad;
  bool *read_bwd;     /* a backward op reads it (a weight's transpose in an input gradient; a bias is not read) */
  bool *reread;       /* per forward op x MAXIN: its backward reads input k's value (an einsum's other operand,
                         an activation's input): a backward task reshards it again (codegen/distribute.c) */
  int *consumers;     /* live forward consumers per node */
  int *main_in;       /* follower -> its main input, -1 for leaders */
  int *var;           /* node -> variable */
  double *layer_grad; /* per layer + 1 (0: outside every layer): elements of its trained parameters */
} Ctx;

static bool valid(const Ctx *C, const OpModel *m, const Strategy *st, int bdim) {
  int64_t split[MAXID];
  for (int i = 0; i < m->nd; i++) split[i] = 1;
  for (int a = 0; a < 2; a++) {
    int id = st->ax[a];
    if (id < 0) continue;
    if (C->me->n[a] == 1 || (m->frozen >> id & 1)) return false;
    if (C->o->lowerable && a == 1 && (m->unlowered >> id & 1)) return false; /* the rule book binds tp ranks */
    if (C->o->batch_not_axis1 && a == 1 && id == bdim) return false;
    if (C->o->force_dp && id != bdim) return false;
    split[id] *= C->me->n[a];
  }
  int out = m->nt - 1;
  for (int a = 0; a < 2; a++) { /* partial sums reduce-scattered into a dim of the output */
    int d = st->rs[a];
    if (d < 0) continue;
    if (st->ax[a] < 0 || split_by(m, out, st, a) || !maps(m, out, d) || d == st->ax[1 - a]) return false;
    if ((C->o->lowerable && a == 1 && (m->unlowered >> d & 1)) || (C->o->batch_not_axis1 && a == 1 && d == bdim))
      return false;
    split[d] *= C->me->n[a];
  }
  /* sequence parallelism asked for: partial sums over the tensor-parallel axis scattered along the sequence */
  if (C->o->seq_scatter && m->scatter && m->seq >= 0 && st->ax[1] >= 0 && !split_by(m, out, st, 1) &&
      st->rs[1] != m->seq)
    return false;
  /* an all-to-all over the replica axis would move the replicas' own capacity slots: the expert side of a
     routing split there is split along its capacity (diag) and reaches the experts by resharding */
  if (st->a2a >= 0 && diag(m, st, st->a2a)) return false;
  for (int i = 0; i < m->nd; i++) { /* a dim computed from the batch is the replicas' own: any size over them */
    int64_t sp = split[i];
    if (((m->scaled >> i & 1) || (m->batch_scaled && i == m->batch)) && st->ax[m->rep] == i) sp /= C->me->n[m->rep];
    if (m->size[i] % sp) return false;
  }
  if (st->a2a >= 0 && m->size[m->moe_e] % C->me->n[st->a2a]) return false;
  /* a plan to be lowered: mesh axis 0 is the data-parallel replicas (pipeline.c, pipeline_layout), which
     split the batch and nothing else */
  if (C->o->lowerable && C->me->n[0] > 1 && (st->ax[0] != bdim || st->rs[0] >= 0)) return false;
  /* the batch axis splits the batch; a tensor without one (a shared
     parameter's own layout) is held whole by each replica, as the programs
     hold it: splitting it over the replicas is ZeRO's, priced by its stage */
  if (C->o->batch_axis >= 0 && C->me->n[C->o->batch_axis] > 1 && st->ax[C->o->batch_axis] != bdim) return false;
  /* data parallel means the batch is split over every axis */
  for (int a = 0; a < 2 && C->o->force_dp && bdim >= 0; a++)
    if (C->me->n[a] > 1 && st->ax[a] != bdim) return false;
  return true;
}

/* The variants of strategy st that reduce-scatter an einsum's partial sums
   along the sequence (rs: its output's dim named "seq") or, for the tokens an
   MoE einsum gathers into expert slots, along the experts (each rank then
   holds its experts' slots, as the programs reduce-scatter them). */
static int variants(const Ctx *C, const OpModel *m, int bdim, const Strategy *st, Strategy *out, int n, int max) {
  int along[2] = {m->seq, m->moe_e};
  for (int a = 0; a < 2 && m->scatter && !C->o->no_scatter; a++) {
    if (st->ax[a] < 0 || split_by(m, m->nt - 1, st, a)) continue;
    for (int j = 0; j < 2; j++) {
      if (along[j] < 0 || !maps(m, m->nt - 1, along[j])) continue;
      Strategy x = *st;
      x.rs[a] = (int8_t)along[j];
      if (valid(C, m, &x, bdim) && n < max) out[n++] = x;
    }
  }
  return n;
}

/* Every valid strategy of an op, in a fixed order. */
static int enumerate(const Ctx *C, const OpModel *m, int bdim, Strategy *out, int max) {
  int n = 0;
  for (int a0 = -1; a0 < m->nd; a0++)
    for (int a1 = -1; a1 < m->nd; a1++) {
      Strategy st = no_split;
      st.ax[0] = (int8_t)a0, st.ax[1] = (int8_t)a1;
      if (valid(C, m, &st, bdim) && n < max) out[n++] = st;
      n = variants(C, m, bdim, &st, out, n, max);
      /* MoE: axis a on a token dim also splits the experts of the other side */
      for (int a = 0; a < 2 && m->moe_e >= 0 && !C->o->lowerable; a++) {
        int id = a ? a1 : a0;
        if (id < 0 || !(m->moe_tokens >> id & 1)) continue;
        Strategy x = st;
        x.a2a = (int8_t)a;
        if (valid(C, m, &x, bdim) && n < max) out[n++] = x;
      }
    }
  return n;
}

/* The layouts of every strategy offered to op v, MAXIN + 1 specs each (its
   inputs, then its output); their count, at most max. */
int plan_offers(const Graph *g, const Node *v, const Mesh *me, const PlanOptions *o, Spec *out, int max) {
  Ctx C = {.g = g, .me = me, .o = o};
  OpModel m;
  op_model(g, v, rep_axis(o), &m);
  Strategy *st = arena_alloc(sizeof(Strategy) * (size_t)(max + 1));
  int n = enumerate(&C, &m, m.batch, st, max);
  for (int s = 0; s < n; s++)
    for (int t = 0; t < m.nt; t++) out[s * (MAXIN + 1) + (t == m.nt - 1 ? MAXIN : t)] = tensor_spec(&m, t, &st[s]);
  return n;
}

/* ---------------------------------------------------------------- costs */

typedef struct Acc {
  double compute, comm;
  double update;         /* seconds per step of the optimizer update (once per step) */
  double once;           /* seconds per step of the once-per-step collectives (unweighted) */
  double reread;         /* seconds per microbatch of resharding forward values again for the backward pass */
  double fwd, wgrad;     /* the forward's share of compute + comm, and the weight gradients' */
  double mp, mg, mo, ma; /* memory per device: params, grads, optimizer state, activations */
  PtrVec *rec;           /* if set: the collectives, for the plan */
  bool rerun;            /* forward collectives recorded now are run again by a recomputed forward (Comm.rerun) */
  const int8_t *scatter; /* if set, per forward op: the dim every reader reads its partial sum along, split over
                            tp (reduce-scattered into that split, as the programs do: scattered_reads); -1 */
} Acc;

/* A collective over mesh axes c.axes (one group of their devices). One that
 * happens once per step (a parameter's gradient sync, the weights' gather
 * after the update) while the graph is one of several microbatches weighs
 * plan_once_weight in the objective. A gradient that `share` readers each
 * leave partial is summed first and reduced once: each reader pays 1/share
 * of it, and the plan lists it once (Comm.summed). */
static void comm_c(const Ctx *C, Acc *acc, Comm c, int share) {
  double lat, t = comm_time(C->me, &c, &lat);
  if (c.lat_share > 0 && t > 0) /* a bucket member: its share of the bucket's one latency */
    t -= (1 - c.lat_share) * lat;
  t /= share > 1 ? share : 1;
  if (t <= 0) return;
  acc->comm += c.once ? t * plan_once_weight(C->o) : t;
  acc->once += c.once ? t : 0;
  if (c.phase == PHASE_FORWARD) acc->fwd += t;
  if (acc->rec) {
    Comm *r = arena_alloc(sizeof(Comm));
    *r = c;
    r->count = 1, r->summed = share > 1;
    r->rerun |= acc->rerun && c.phase == PHASE_FORWARD;
    ptrvec_push(acc->rec, r);
  }
}

static void comm_w(const Ctx *C, Acc *acc, CollKind k, int axis, double bytes, CommPhase ph, const char *what,
                   bool once) {
  comm_c(C, acc, (Comm){.kind = k, .axes = 1 << axis, .bytes = bytes, .phase = ph, .what = what, .once = once}, 1);
}

static void comm(const Ctx *C, Acc *acc, CollKind k, int axis, double bytes, CommPhase ph, const char *what) {
  comm_w(C, acc, k, axis, bytes, ph, what, false);
}

/* A forward op's own reduction (Comm.rerun). */
static void comm_rerun(const Ctx *C, Acc *acc, CollKind k, int axis, double bytes, const char *what) {
  comm_c(C, acc,
         (Comm){.kind = k, .axes = 1 << axis, .bytes = bytes, .phase = PHASE_FORWARD, .what = what, .rerun = true}, 1);
}

/* How many pipeline stages hold parameter u (Graph.copies): 1 unless it is tied across stages. */
static int param_copies(const Ctx *C, const Node *u) {
  return C->g->copies && C->g->copies[u->id] > 1 ? C->g->copies[u->id] : 1;
}

/* A parameter's layout as the programs store it, read in `s` by its one reader: as read, but for a tied
   parameter an earlier stage holds too, which the programs store as that stage does (codegen/distribute.c
   keeps one layout over the copies, the first reader's), whole over tp as the first stage's embedding
   holds it in a plan to be lowered. */
static Spec stored_as(const Ctx *C, const Node *u, const Spec *s) {
  Spec t = *s;
  if (C->o->lowerable && C->g->copied_before && C->g->copied_before[u->id])
    for (int d = 0; d < t.rank; d++) t.d[d] &= (uint8_t)~2;
  return t;
}

/* Whether a parameter several ops read (stored with its own layout) has its
   gradient summed over the data-parallel replicas as it is stored: the
   programs sum the readers' contributions over tp in the layout they read
   it in, cut them to the stored part, and bucket that over the replicas.
   Priced on the parameter's own variable (node_cost), where the stored
   layout is known, when the batch is on mesh axis 0 by construction (a
   manual layout's dp) and without ZeRO; otherwise each reader prices the
   bucket at the size it reads. */
static bool leaf_syncs_replicas(const Ctx *C, const Node *u) {
  return C->zero == 0 && C->o->batch_axis == 0 && C->me->n[0] > 1 && u->op == OP_PARAM && C->needs_grad[u->id] &&
         C->consumers[u->id] > 1;
}

/* The all-reduce of parameter u's gradient (`bytes`) over the devices of
   `axes`, once per step: over each axis in turn, as the programs run it
   (codegen/distribute.c), the whole gradient each time, rather than one
   ring over both. Over an axis in `batch` (the data-parallel replicas,
   without ZeRO) the programs reduce a layer's gradients as one bucket, each
   64-byte aligned in it: a member pays its bytes and its share of the
   bucket's one latency. (An activation's partial gradient is reduced on a
   gradient edge: reduction.) */
static void grad_reduce(const Ctx *C, Acc *acc, const Node *u, int axes, int batch, double bytes, int share,
                        int copies) {
  for (int a = 0; a <= 2; a++) {
    /* a = 2: a tied parameter's copies on other stages, where no batch axis took them in (below) */
    if (a < 2 ? !(axes >> a & 1) : copies < 2) continue;
    Comm c = {.kind = COLL_ALL_REDUCE,
              .axes = a < 2 ? 1 << a : 0,
              .bytes = bytes,
              .phase = PHASE_BACKWARD,
              .what = u->name,
              .once = true,
              .param = u};
    double whole = C->layer_grad ? C->layer_grad[u->layer + 1] : 0;
    if ((a == 2 || batch >> a & 1) && whole > 0) {
      c.bytes = ceil(bytes / 64) * 64;
      c.lat_share = (double)shape_numel(&u->shape) / whole;
      /* the programs' bucket holds every device with the same part: the replicas and the other stages' copies */
      c.copies = copies, copies = 0;
    }
    comm_c(C, acc, c, share);
  }
}

static double tensor_bytes(const Ctx *C, const Node *n, const Spec *s) {
  return value_bytes(n, C->o->mixed) / spec_shards(C->me, s);
}

/* Optimizer-related bytes per parameter element, as the runtime holds them
 * (docs/program-format.md, Precision): P the parameter (bf16: its f32 master
 * and its bf16 working copy), G its f32 gradient accumulator, O AdamW's two
 * f32 moments. */
static void state_bytes(const Ctx *C, double *P, double *G, double *O) {
  *P = C->o->mixed ? 6 : 4;
  *G = 4;
  *O = 8;
}

/* The memory-bound passes over a parameter's state that the step's
 * programs make besides the products (docs/cost-model.md, "Per-parameter
 * passes"), for `e` elements of it on the device, `upd` of which it updates,
 * at the mesh's pass bandwidth (Cluster.pass_bandwidth) plus the 2 us of an
 * op each:
 *   - gradient accumulation: from the second microbatch on, the weight
 *     gradient is added into its f32 accumulator (`acc`: read both, write
 *     one, 12 bytes per element), B - 1 times per step, so (B - 1)/B of a
 *     pass per microbatch; the first microbatch writes the accumulator;
 *   - the update, once per step: the gradient norm (`sumsq`, 4 bytes) and
 *     AdamW in place (read gradient, parameter and two moments, write the
 *     parameter and the moments, 28 bytes); under mixed precision also the
 *     `cast` of the f32 master to its bf16 working copy (6).
 * The update weighs plan_once_weight in the objective, like the once-per-
 * step syncs; its time per step is kept apart (Plan.update_s) and paid at
 * the step's end. */
static void param_passes(const Ctx *C, Acc *acc, double e, double upd) {
  double bw = C->me->pass_bw, B = C->o->microbatches > 1 ? C->o->microbatches : 1;
  double accum = (e * 12 / bw + 2e-6) * (B - 1) / B;
  double update = upd * (4 + 28 + (C->o->mixed ? 6 : 0)) / bw + 6e-6;
  acc->compute += accum + update * plan_once_weight(C->o);
  acc->wgrad += accum;
  acc->update += update;
}

/* Memory of parameter u stored with spec s, its gradient reduced over
 * `dp` devices (the ZeRO stage divides by it), and its passes. */
static void param_memory(const Ctx *C, Acc *acc, const Node *u, const Spec *s, int dp) {
  double e = (double)shape_numel(&u->shape) / spec_shards(C->me, s), P, G, O;
  state_bytes(C, &P, &G, &O);
  double z = C->zero;
  acc->mp += e * P / (z >= 3 ? dp : 1);
  acc->mg += e * G / (z >= 2 ? dp : 1);
  acc->mo += e * O / (z >= 1 ? dp : 1);
  param_passes(C, acc, e, e / (z >= 1 ? dp : 1));
}

/* The gradient of parameter u (spec s) is summed over `axes`: all-reduce,
 * or under ZeRO reduce-scatter then all-gather of the updated weights, as
 * the programs run them (codegen/distribute.c): ZeRO 1 reduce-scatters once
 * per step, ZeRO 2 and 3 keep only a shard of the gradient and so
 * reduce-scatter every microbatch's; ZeRO 1 and 2 gather the updated
 * weights once per step, ZeRO 3 gathers them before the forward pass of
 * every microbatch and again before its backward pass if that reads them. */
static void param_sync(const Ctx *C, Acc *acc, const Node *u, const Spec *s, int axes, int batch, int share) {
  double P, G, O;
  state_bytes(C, &P, &G, &O); /* gradients are reduced in f32, as they are accumulated */
  double e = (double)shape_numel(&u->shape) / spec_shards(C->me, s);
  if (C->zero == 0 && leaf_syncs_replicas(C, u)) { /* the replicas' bucket is the stored part's (node_cost) */
    grad_reduce(C, acc, u, axes & ~1, batch & ~1, e * G, share, 1);
    return;
  }
  if (C->zero == 0) { /* one all-reduce over every device holding the same part */
    grad_reduce(C, acc, u, axes, batch, e * G, share, param_copies(C, u));
    return;
  }
  /* partial over a non-batch axis (tensor parallelism): all-reduced first; under ZeRO 2 and 3, whose
     accumulators are shards reduced every microbatch, each contribution on its own every microbatch (the
     programs sum a tied parameter's readers' contributions first only under ZeRO 0 and 1) */
  for (int a = 0; a < 2; a++)
    if (axes >> a & 1 && !(batch >> a & 1))
      comm_c(C, acc,
             (Comm){.kind = COLL_ALL_REDUCE,
                    .axes = 1 << a,
                    .bytes = e * G,
                    .phase = PHASE_BACKWARD,
                    .what = u->name,
                    .once = C->zero < 2,
                    .param = u},
             C->zero < 2 ? share : 1);
  for (int a = 0; a < 2; a++) { /* after a reduce-scatter over this axis, the next one moves 1/n of it */
    if (!(axes >> a & 1) || !(batch >> a & 1)) continue;
    Comm c = {.axes = 1 << a, .what = u->name};
    c.kind = COLL_REDUCE_SCATTER, c.bytes = e * G, c.phase = PHASE_BACKWARD, c.once = C->zero < 2;
    comm_c(C, acc, c, share);
    /* ZeRO 3 gathers the working copy (bf16 under mixed precision) for every
       microbatch; ZeRO 1 and 2 gather the updated f32 masters once */
    c.kind = COLL_ALL_GATHER, c.bytes = e * (C->zero >= 3 && C->o->mixed ? 2 : 4);
    c.phase = C->zero >= 3 ? PHASE_FORWARD : PHASE_UPDATE, c.once = C->zero < 3;
    comm_c(C, acc, c, share);
    c.phase = PHASE_BACKWARD;
    if (C->zero >= 3 && C->read_bwd[u->id]) comm_c(C, acc, c, share);
    e /= C->me->n[a];
  }
  if (param_copies(C, u) > 1) /* a tied parameter: the shard summed over its copies on other stages */
    comm_c(C, acc,
           (Comm){.kind = COLL_ALL_REDUCE,
                  .bytes = e * G,
                  .phase = PHASE_BACKWARD,
                  .what = u->name,
                  .once = true,
                  .param = u,
                  .copies = param_copies(C, u)},
           share);
}

static int axes_size(const Mesh *me, int axes) { return (axes & 1 ? me->n[0] : 1) * (axes & 2 ? me->n[1] : 1); }

/* Compute, communication and memory of node v run with strategy st. */
/* Activations that evaluate tanh or exp per element (forward or backward): on a
   device with a separate elementwise rate (Cluster.flops_vector) they are
   priced at it, everything else at the peak or the memory bandwidth. */
static bool transcendental(OpKind op) {
  switch (op) {
  case OP_GELU:
  case OP_GELU_BWD:
  case OP_TANH:
  case OP_TANH_BWD:
  case OP_SILU:
  case OP_SILU_BWD:
  case OP_EXP: return true;
  default: return false;
  }
}

/* Ops that work a row at a time with statistics (norms, softmax,
   cross-entropy and their input gradients): a CPU backend runs bf16 ones on
   rows widened to f32 (Mesh.row_bw, row_elem). */
static bool row_wise(OpKind op) {
  switch (op) {
  case OP_LAYERNORM:
  case OP_RMSNORM:
  case OP_SOFTMAX:
  case OP_XENT:
  case OP_LN_BWD_X:
  case OP_RMS_BWD_X:
  case OP_SOFTMAX_BWD:
  case OP_XENT_BWD: return true;
  default: return false;
  }
}

/* A two-operand einsum's efficiency on one device: its labels' roles
 * (batch, M, N, K) from the operands they appear in, each label's size
 * divided by the mesh axes the strategy splits it over. */
static double product_efficiency(const OpModel *m, const Strategy *st, const Mesh *me) {
  double size[MAXID];
  char lab[3][MAXID + 1];
  for (int i = 0; i < m->nd; i++) {
    size[i] = (double)m->size[i];
    for (int a = 0; a < 2; a++)
      if (st->ax[a] == i || (diag(m, st, a) && (m->scaled >> i & 1))) size[i] /= me->n[a];
  }
  double by_char[256] = {0};
  for (int t = 0; t < 3; t++) {
    for (int i = 0; i < m->rank[t]; i++) lab[t][i] = (char)('A' + m->map[t][i]);
    lab[t][m->rank[t]] = 0;
  }
  for (int i = 0; i < m->nd; i++) by_char['A' + i] = size[i];
  GemmShape s = gemm_shape(lab[0], lab[1], lab[2], by_char);
  return gemm_efficiency(me, &s);
}

/* The mesh axes (a bit each) over which the op leaves input k's gradient a
   partial sum: those on an iteration dim the input lacks, but for a
   normalised dim (its statistics are reduced instead) and an all-to-all's. */
static int partial_grad(const OpModel *m, int k, const Strategy *st) {
  int axes = 0;
  for (int a = 0; a < 2; a++)
    if (st->ax[a] >= 0 && st->a2a != a && !split_by(m, k, st, a) && st->ax[a] != m->norm) axes |= 1 << a;
  return axes;
}

static int split_axes(const Spec *s);
static double reduction(const Ctx *C, int split, int rg, int parts, double total, int share, Acc *acc,
                        const char *what);
static double move(const Ctx *C, const Spec *held, const Spec *read, double total, bool reread, bool grad, Acc *acc,
                   const char *what);

static void node_cost(const Ctx *C, const Node *v, const OpModel *m, const Strategy *st, Acc *acc) {
  const Graph *g = C->g;
  const Mesh *me = C->me;
  int nin = m->nt - 1;
  if (is_leaf(v)) { /* a shared parameter or input stored with its own layout */
    Spec s = tensor_spec(m, nin, st);
    if (v->op == OP_PARAM) {
      int repl = 0;
      for (int a = 0; a < 2; a++)
        if (st->ax[a] < 0 && me->n[a] > 1) repl |= 1 << a;
      /* ZeRO shards over the replicas: a manual layout's batch axis, not the tp axis it is also whole on */
      param_memory(C, acc, v, &s, axes_size(me, C->o->batch_axis >= 0 ? repl & 1 << C->o->batch_axis : repl));
      if (leaf_syncs_replicas(C, v) && (repl & 1)) /* the replicas' bucket of the stored part (tied copies too) */
        grad_reduce(C, acc, v, 1, 1, (double)shape_numel(&v->shape) / spec_shards(me, &s) * 4, 1, param_copies(C, v));
    } else {
      acc->ma += tensor_bytes(C, v, &s);
    }
    return;
  }
  int shards = 1; /* the parts its work is cut into: a replica's share of a scaled dim too */
  for (int a = 0; a < 2; a++)
    for (int j = 0; st->ax[a] >= 0 && j <= (diag(m, st, a) ? __builtin_popcount(m->scaled) : 0); j++)
      shards *= me->n[a];
  /* compute: forward and backward, a roofline at a product's efficiency
     (gemm.c; other ops 80%) of peak FLOP/s or at 80% of memory bandwidth,
     plus a fixed 2 us per op (launch and ramp-up) */
  int ngrad = 0;
  for (int k = 0; k < nin; k++) ngrad += C->needs_grad[v->in[k]];
  double f = node_flops(g, v), flops = f * (1 + (v->op == OP_EINSUM ? ngrad : ngrad ? 2 : 0)) / shards;
  double bytes = 0;
  for (int k = 0; k < nin; k++) bytes += (double)shape_numel(&g->nodes[v->in[k]]->shape);
  bool rows = row_wise(v->op);
  bytes = (bytes + (double)shape_numel(&v->shape)) * (rows ? me->row_elem : C->act_bytes) * (ngrad ? 3 : 1) / shards;
  double rate = transcendental(v->op) ? me->vec_flops : me->flops; /* tanh and exp run slower than products */
  double eff = v->op == OP_EINSUM && nin == 2 ? product_efficiency(m, st, me) : PEAK_FRACTION;
  double t = fmax(flops / (eff * rate), bytes / (PEAK_FRACTION * (rows ? me->row_bw : me->mem_bw))) + 2e-6;
  acc->compute += t;
  /* its parts: the forward (1), input gradients, weight gradients (an
     einsum's product per input that needs one; other ops' backward is two
     passes over the input's gradient) */
  int wgrads = 0;
  for (int k = 0; k < nin && v->op == OP_EINSUM; k++)
    wgrads += C->needs_grad[v->in[k]] && g->nodes[v->in[k]]->op == OP_PARAM;
  double units = 1 + (v->op == OP_EINSUM ? ngrad : ngrad ? 2 : 0);
  acc->fwd += t / units, acc->wgrad += t * wgrads / units;

  Spec out = tensor_spec(m, nin, st);
  double out_b = tensor_bytes(C, v, &out);
  for (int a = 0; a < 2; a++) {
    int id = st->ax[a];
    if (id < 0 || st->a2a == a) continue;
    if (id == m->norm) { /* row statistics, forward and backward */
      double rows = (double)shape_numel(&g->nodes[v->in[0]]->shape) / m->size[id] / (shards / me->n[a]);
      comm_rerun(C, acc, COLL_ALL_REDUCE, a, rows * 8, v->name);
      comm(C, acc, COLL_ALL_REDUCE, a, rows * 8, PHASE_BACKWARD, v->name);
    } else if (!split_by(m, nin, st, a) && m->rank[nin] > 0 && st->rs[a] >= 0) {
      /* partial sums reduce-scattered into the split output; the output's
         gradient arrives split the same way and is gathered back */
      comm_rerun(C, acc, COLL_REDUCE_SCATTER, a, out_b * me->n[a], v->name);
      comm(C, acc, COLL_ALL_GATHER, a, out_b * me->n[a], PHASE_BACKWARD, v->name);
    } else if (!split_by(m, nin, st, a) && m->rank[nin] > 0) { /* partial sums */
      bool rs = a == 1 && acc->scatter && acc->scatter[v->id] >= 0;
      comm_rerun(C, acc, rs ? COLL_REDUCE_SCATTER : COLL_ALL_REDUCE, a, out_b, v->name);
    }
  }
  for (int k = 0; k < nin; k++) {
    const Node *u = g->nodes[v->in[k]];
    Spec s = tensor_spec(m, k, st);
    int reduce = partial_grad(m, k, st); /* axes the gradient of input k is summed over */
    bool owned = is_leaf(u) && C->consumers[u->id] == 1;
    int batch = 0; /* the axes this strategy splits the batch over */
    for (int a = 0; a < 2; a++)
      if (st->ax[a] >= 0 && st->ax[a] == m->batch) batch |= 1 << a;
    if (owned && u->op == OP_PARAM) {
      Spec kept = stored_as(C, u, &s); /* read split from whole: cut, and the contribution gathered */
      acc->rerun = true;               /* a recomputed forward reads it again */
      move(C, &kept, &s, (double)shape_numel(&u->shape) * C->act_bytes, false, C->needs_grad[u->id], acc, u->name);
      acc->rerun = false;
      param_memory(C, acc, u, &kept, axes_size(me, reduce & batch)); /* ZeRO shards over the replicas */
      param_sync(C, acc, u, &kept, reduce, batch, 1);
    } else if (u->op == OP_PARAM && C->needs_grad[u->id]) { /* tied: its readers' gradients summed, synced once */
      param_sync(C, acc, u, &s, reduce, batch, C->consumers[u->id]);
    } else if (owned) { /* an input, stored as read here; one from the stage before (SRC_STAGE) hands its
                           gradient back reduced. An op's output read here hands its partial gradient back to its
                           producer over a gradient edge (add_edges, reduction) */
      acc->ma += tensor_bytes(C, u, &s);
      if (C->needs_grad[u->id])
        reduction(C, split_axes(&s), reduce, spec_shards(me, &s), (double)shape_numel(&u->shape) * C->act_bytes, 1, acc,
                  u->name);
    }
    if (st->a2a >= 0 && !maps(m, k, st->ax[st->a2a]) && maps(m, k, m->moe_e)) {
      comm(C, acc, COLL_ALL_TO_ALL, st->a2a, tensor_bytes(C, u, &s), PHASE_FORWARD, u->name);
      comm(C, acc, COLL_ALL_TO_ALL, st->a2a, tensor_bytes(C, u, &s), PHASE_BACKWARD, u->name);
    }
  }
  if (st->a2a >= 0 && !maps(m, nin, st->ax[st->a2a]) && maps(m, nin, m->moe_e)) {
    comm(C, acc, COLL_ALL_TO_ALL, st->a2a, out_b, PHASE_FORWARD, v->name);
    comm(C, acc, COLL_ALL_TO_ALL, st->a2a, out_b, PHASE_BACKWARD, v->name);
  }
  if (C->kept[v->id]) acc->ma += out_b * (C->o->inflight > 1 ? C->o->inflight : 1);
}

/* Moving a tensor of `total` bytes from layout src to dst, axis by axis:
 * a split that goes away is an all-gather, one that moves to another dim is
 * an all-to-all, a new split is a local slice (free). With acc, the
 * collectives are recorded under `phase`. */
static double reshard_rec(const Ctx *C, const Spec *src, const Spec *dst, double total, Acc *acc, CommPhase phase,
                          const char *what) {
  const Mesh *me = C->me;
  Spec cur = *src;
  double t = 0;
  for (int a = 0; a < 2; a++) {
    if (me->n[a] == 1) continue;
    int bit = 1 << a, from = 0, to = 0; /* the dims axis a splits (several: the batch and dims computed from it) */
    for (int d = 0; d < src->rank; d++) from |= (src->d[d] & bit) << d >> a, to |= (dst->d[d] & bit) << d >> a;
    if (from == to) continue;
    CollKind k = COLL_ALL_GATHER; /* splits that go are gathered, new ones cut, moved ones exchanged */
    double bytes = total / spec_shards(me, &cur);
    bool cut_only = (from & to) == from;
    if ((from & to) == to) /* only fewer */
      for (int d = 0; d < src->rank; d++) bytes *= (from >> d & 1) && !(to >> d & 1) ? me->n[a] : 1;
    else
      k = COLL_ALL_TO_ALL;
    for (int d = 0; d < src->rank; d++) cur.d[d] = (uint8_t)((cur.d[d] & ~bit) | ((to >> d & 1) << a));
    if (cut_only) continue;
    t += coll_time(me, k, a, bytes);
    if (acc) comm(C, acc, k, a, bytes, phase, what);
  }
  return t;
}

double plan_reshard(const Plan *pl, const Spec *src, const Spec *dst, double bytes, CommPhase phase, const char *what,
                    Comm *out, int *n, int max) {
  Ctx C = {.g = pl->g, .me = &pl->mesh, .o = &pl->opt};
  PtrVec rec = {0};
  Acc acc = {.rec = &rec};
  double t = reshard_rec(&C, src, dst, bytes, &acc, phase, what);
  for (int k = 0; k < rec.n && *n < max; k++) out[(*n)++] = *(const Comm *)rec.v[k];
  return t;
}

/* The mesh axes (a bit each) a layout splits. */
static int split_axes(const Spec *s) {
  int axes = 0;
  for (int d = 0; d < s->rank; d++) axes |= s->d[d];
  return axes;
}

/* A gradient handed back in `parts` pieces (the reader's layout), partial
 * over the mesh axes rg, reduced into the layout its producer holds the
 * tensor in (splitting the axes `split`): over each such axis,
 * reduce-scattered where the producer splits it (sequence parallelism's
 * backward; the programs reduce-scatter only where partial sums may be,
 * PlanOptions.no_scatter), else all-reduced. `share` readers whose
 * gradients are summed first each pay 1/share of it, listed once (comm_c).
 * With acc, recorded. */
static double reduction(const Ctx *C, int split, int rg, int parts, double total, int share, Acc *acc,
                        const char *what) {
  double t = 0;
  for (int a = 0; a < 2; a++) {
    if (!(rg >> a & 1) || C->me->n[a] == 1) continue;
    bool rs = split >> a & 1 && !C->o->no_scatter;
    Comm c = {.kind = rs ? COLL_REDUCE_SCATTER : COLL_ALL_REDUCE,
              .axes = 1 << a,
              .bytes = total / parts,
              .phase = PHASE_BACKWARD,
              .what = what};
    t += coll_time(C->me, c.kind, a, c.bytes) / share;
    if (acc) comm_c(C, acc, c, share);
    parts *= rs ? C->me->n[a] : 1;
  }
  return t;
}

/* A tensor of `total` bytes held in layout `held` and read in layout
   `read`: resharded on the way there, and its gradient on the way back;
   with `reread` (the reader's backward reads the value) resharded again in
   the backward pass, as the programs do rather than keep the forward's copy
   (Megatron's sequence parallelism gathers its input again likewise). */
static double move(const Ctx *C, const Spec *held, const Spec *read, double total, bool reread, bool grad, Acc *acc,
                   const char *what) {
  double again = reread ? reshard_rec(C, held, read, total, acc, PHASE_BACKWARD, what) : 0;
  if (acc) acc->reread += again;
  return reshard_rec(C, held, read, total, acc, PHASE_FORWARD, what) +
         (grad ? reshard_rec(C, read, held, total, acc, PHASE_BACKWARD, what) : 0) + again;
}

/* ---------------------------------------------------------------- the problem */

#define MAXSTRAT 512

typedef struct Var {
  const OpModel *layout_model; /* set for a layout variable: where a tensor read by several groups is kept */
  int leader;                  /* the first instance */
  int count;                   /* instances sharing the variable */
  const char *key;
  int ns;
  Strategy *st;
  double *cost, *mem;
  double *hide, *bwd; /* the gradient sync that overlaps the backward pass (seconds per step), and the
                         backward time per microbatch it overlaps (Problem.exposure) */
  bool *dead;         /* strategies no cheapest plan needs (prune) */
} Var;

/* How one side of an edge has a tensor. A layout edge: its layout (s). A
   gradient edge: for the producer, the mesh axes (a bit each) its layout
   splits (rg); for a reader, the axes over which it hands the gradient back
   partial (rg) and how many parts its layout cuts the tensor into (parts). */
typedef struct Side {
  Spec s;
  int rg, parts;
} Side;

typedef struct Edge {
  int u, v;
  const char *key;
  int share; /* a gradient edge (from the producer to a reader): the reduction of the reader's partial
                gradient, summed first with those of the tensor's other `share` readers (1/share of it);
                0: a layout edge (the reshards both ways); -1: one whose reader's backward reads the value,
                resharded again (move) */
  bool grad; /* a layout edge: the tensor has a gradient, which moves back the other way */
  int nl, nm;
  Side *lu, *lv; /* how u holds it and how v reads it, by class */
  int *cu, *cv;  /* strategy -> layout class */
  double *c;     /* nl x nm */
} Edge;

typedef struct Problem {
  Ctx C;
  OpModel *model;
  int *main_k;  /* follower: the input slot it follows */
  int *shared;  /* node read by several groups -> its layout variable, or -1 */
  int *readers; /* node -> its reads from other groups (reads_across) */
  Var *vars;
  int nvars, capvars;
  Edge *edges;
  int nedges, capedges;
  Strategy **strat; /* node -> its strategy under each strategy of its variable (strategy_of), once known */
  /* Overlap (ZeRO 0, unless PlanOptions.serial_comm): the gradient syncs run
     beside the last microbatch's backward pass, as the simulator runs them.
     Of a variable's sync H per step the objective counts, at
     plan_once_weight w, overlap_cost x H (what the compute loses beside it)
     plus (1 - overlap_cost) x max(0, H - W), W the backward time of its own
     ops per microbatch: each variable's sync hides behind its own backward.
     That keeps the objective a sum over variables; it overstates the
     exposure where one variable's sync could hide behind another's
     backward, as the simulator's last buckets (the first layers') cannot. */
  bool exposure;
  double w_hide, w_exposed;
  PtrVec self; /* SelfCost: edges between a variable and itself, as costs on its strategies */
  bool edges_made;
  bool *again; /* per forward node: resharded into its layout variable again for the backward pass
                  (shared_rereads), found with the edges */
} Problem;

/* An edge within one variable: what it adds to each strategy's cost. */
typedef struct SelfCost {
  int x;
  double *add;
} SelfCost;

/* "layers.7.attn.x" -> "layers.*.attn.x": the name shared by a node's
 * counterparts in other iterations. */
static const char *layer_key(const Node *v) {
  char *k = arena_printf("%s|%s|%s", v->name, op_info[v->op].name, shape_str(&v->shape));
  char *w = k;
  for (const char *p = k; *p; p++) {
    if (*p >= '0' && *p <= '9' && (p == k || p[-1] == '.')) {
      const char *q = p;
      while (*q >= '0' && *q <= '9') q++;
      if (*q == '.') {
        *w++ = '*';
        p = q - 1;
        continue;
      }
    }
    *w++ = *p;
  }
  *w = 0;
  return k;
}

static Spec layout_of(const Problem *P, int u, int s);

/* The strategy node v runs with when its variable takes strategy s. */
static Strategy strategy_of(const Problem *P, int v, int s) {
  if (P->strat && P->strat[v]) return P->strat[v][s];
  const Var *x = &P->vars[P->C.var[v]];
  if (P->C.main_in[v] < 0) return x->st[s];
  Spec in = layout_of(P, P->C.main_in[v], s); /* followers: same layout as the main input */
  Strategy st = no_split;
  for (int d = 0; d < in.rank; d++) /* an axis on the batch and dims computed from it: on the batch (diag) */
    for (int a = 0; a < 2; a++)
      if ((in.d[d] >> a & 1) && (st.ax[a] < 0 || d == P->model[v].batch)) st.ax[a] = (int8_t)d;
  return st;
}

static Spec layout_of(const Problem *P, int u, int s) {
  Strategy st = strategy_of(P, u, s);
  const OpModel *m = &P->model[u];
  return tensor_spec(m, m->nt - 1, &st);
}

/* Every node's strategies, kept: a follower's comes from its main input's
 * layout, along chains of followers, and the costs, edges and plan ask for
 * them many times. Inputs come first, so each chain is walked once. */
static void keep_strategies(Problem *P) {
  const Graph *g = P->C.g;
  Strategy **memo = arena_alloc(sizeof(Strategy *) * (size_t)(g->nfwd + 1));
  for (int v = 0; v < g->nfwd; v++) {
    memo[v] = NULL;
    if (P->C.var[v] < 0) continue;
    int ns = P->vars[P->C.var[v]].ns;
    Strategy *st = arena_alloc(sizeof(Strategy) * (size_t)(ns + 1));
    for (int s = 0; s < ns; s++) st[s] = strategy_of(P, v, s);
    P->strat = memo; /* the nodes before v are kept */
    memo[v] = st;
  }
  P->strat = memo;
}

static bool can_follow(OpKind op) {
  switch (op) {
  case OP_SCALE:
  case OP_GELU:
  case OP_RELU:
  case OP_SILU:
  case OP_TANH:
  case OP_EXP:
  case OP_RSQRT:
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_DIV:
  case OP_SOFTMAX:
  case OP_LAYERNORM:
  case OP_RMSNORM: return true;
  default: return false;
  }
}

static int new_var(Problem *P, int leader, const char *key, const OpModel *layout_model) {
  if (P->nvars == P->capvars) {
    P->capvars = P->capvars ? 2 * P->capvars : 64;
    Var *v = arena_alloc(sizeof(Var) * (size_t)P->capvars);
    if (P->nvars) memcpy(v, P->vars, sizeof(Var) * (size_t)P->nvars);
    P->vars = v;
  }
  Var *x = &P->vars[P->nvars];
  memset(x, 0, sizeof *x);
  x->leader = leader;
  x->count = 1;
  x->key = key;
  x->layout_model = layout_model;
  Strategy buf[MAXSTRAT];
  const OpModel *m = layout_model ? layout_model : &P->model[leader];
  x->ns = enumerate(&P->C, m, m->batch, buf, MAXSTRAT);
  x->st = arena_alloc(sizeof(Strategy) * (size_t)(x->ns + 1));
  memcpy(x->st, buf, sizeof(Strategy) * (size_t)x->ns);
  x->cost = arena_alloc(sizeof(double) * (size_t)(x->ns + 1));
  x->mem = arena_alloc(sizeof(double) * (size_t)(x->ns + 1));
  x->hide = arena_alloc(sizeof(double) * (size_t)(x->ns + 1));
  x->dead = arena_alloc(sizeof(bool) * (size_t)(x->ns + 1));
  x->bwd = arena_alloc(sizeof(double) * (size_t)(x->ns + 1));
  return P->nvars++;
}

static bool reads_across(const Problem *P, int v, int k) {
  const Node *n = P->C.g->nodes[v];
  return P->C.var[v] >= 0 && !is_leaf(n) && k != P->main_k[v] && P->C.var[n->in[k]] >= 0;
}

/* A tensor that several groups read gets a layout variable: it is resharded
 * once into that layout, and each reader pays only for its own difference
 * from it (q, k and v reading one layernorm output gather it once). */
static bool add_layout_vars(Problem *P) {
  const Graph *g = P->C.g;
  int *readers = P->readers = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  P->shared = arena_alloc(sizeof(int) * (size_t)g->nfwd);
  for (int v = 0; v < g->nfwd; v++)
    for (int k = 0; k < g->nodes[v]->nin; k++)
      if (reads_across(P, v, k)) readers[g->nodes[v]->in[k]]++;
  for (int u = 0; u < g->nfwd; u++) {
    P->shared[u] = -1;
    const Node *n = g->nodes[u];
    if (readers[u] < 2) continue;
    const char *key = n->layer >= 0 ? arena_printf("%s|%d@", layer_key(n), n->layer % 2) : arena_printf("%d@", u);
    for (int x = 0; x < P->nvars && n->layer >= 0; x++)
      if (P->vars[x].layout_model && strcmp(P->vars[x].key, key) == 0) P->shared[u] = x;
    if (P->shared[u] >= 0) {
      P->vars[P->shared[u]].count++;
      continue;
    }
    OpModel *m = arena_alloc(sizeof(OpModel));
    memset(m, 0, sizeof *m);
    memset(m->map, -1, sizeof m->map);
    m->norm = m->moe_e = m->seq = -1;
    m->nt = 1;
    dims_of(m, &n->shape);
    map_identity(m, 0, n->shape.rank, 0);
    m->rep = rep_axis(P->C.o);
    per_batch_dims(g, n, m);
    P->shared[u] = new_var(P, u, key, m);
  }
  return true;
}

/* Liveness, followers, variables. False if some op has no valid strategy. */
static bool build_vars(Problem *P, FILE *err) {
  Ctx *C = &P->C;
  const Graph *g = C->g;
  int n = g->nfwd;
  C->live = arena_alloc(sizeof(bool) * (size_t)g->n);
  C->kept = arena_alloc(sizeof(bool) * (size_t)g->n);
  C->needs_grad = arena_alloc(sizeof(bool) * (size_t)g->n);
  C->consumers = arena_alloc(sizeof(int) * (size_t)g->n);
  C->main_in = arena_alloc(sizeof(int) * (size_t)g->n);
  C->var = arena_alloc(sizeof(int) * (size_t)g->n);
  P->main_k = arena_alloc(sizeof(int) * (size_t)g->n);
  P->model = arena_alloc(sizeof(OpModel) * (size_t)n);
  C->live[g->loss] = true;
  for (int i = n - 1; i >= 0; i--)
    if (C->live[i])
      for (int k = 0; k < g->nodes[i]->nin; k++) C->live[g->nodes[i]->in[k]] = true;
  memcpy(C->needs_grad, graph_trained(g), sizeof(bool) * (size_t)n);
  for (int i = 0; i < n; i++) {
    const Node *v = g->nodes[i];
    if (C->live[i])
      for (int k = 0; k < v->nin; k++) C->consumers[v->in[k]]++;
  }
  C->read_bwd = arena_alloc(sizeof(bool) * (size_t)g->n);
  C->reread = arena_alloc(sizeof(bool) * (size_t)(n + 1) * MAXIN);
  for (int i = n; i < g->n; i++) {
    const Node *b = g->nodes[i], *f = b->origin >= 0 && b->origin < n ? g->nodes[b->origin] : NULL;
    for (int k = 0; k < b->nin; k++) {
      if (b->in[k] >= n) continue;
      C->kept[b->in[k]] = C->read_bwd[b->in[k]] = true;
      for (int j = 0; f && j < f->nin; j++)
        if (f->in[j] == b->in[k]) C->reread[(size_t)f->id * MAXIN + j] = true;
    }
  }
  int layers = 0;
  for (int i = 0; i < n; i++) layers = g->nodes[i]->layer + 1 > layers ? g->nodes[i]->layer + 1 : layers;
  C->layer_grad = arena_alloc(sizeof(double) * (size_t)(layers + 2));
  memset(C->layer_grad, 0, sizeof(double) * (size_t)(layers + 2));
  for (int i = 0; i < n; i++)
    if (g->nodes[i]->op == OP_PARAM && C->live[i])
      C->layer_grad[g->nodes[i]->layer + 1] += (double)shape_numel(&g->nodes[i]->shape);
  for (int i = 0; i < n; i++) {
    const Node *v = g->nodes[i];
    C->main_in[i] = P->main_k[i] = C->var[i] = -1;
    if (!C->live[i]) continue;
    op_model(g, v, rep_axis(C->o), &P->model[i]);
    /* a follower takes its input's layout as it is: not one that would split a dim its kernel needs whole
       when the plan is to be lowered (the rule book); such an op chooses its own */
    if (can_follow(v->op) && !(C->o->lowerable && P->model[i].unlowered))
      for (int k = 0; k < v->nin && C->main_in[i] < 0; k++) {
        const Node *u = g->nodes[v->in[k]];
        if (!is_leaf(u) && shape_eq(&u->shape, &v->shape)) C->main_in[i] = u->id, P->main_k[i] = k;
      }
    if (C->main_in[i] >= 0) {
      C->var[i] = C->var[C->main_in[i]];
      continue;
    }
    if (is_leaf(v) && C->consumers[i] <= 1) continue; /* stored as its one reader reads it */
    /* layers of the same parity share: period two lets consecutive layers
       alternate (Megatron's column then row split) */
    const char *key = v->layer >= 0 ? arena_printf("%s|%d", layer_key(v), v->layer % 2) : arena_printf("%d", i);
    int found = -1;
    for (int x = 0; x < P->nvars && v->layer >= 0; x++)
      if (strcmp(P->vars[x].key, key) == 0) found = x;
    if (found >= 0) {
      C->var[i] = found;
      P->vars[found].count++;
      continue;
    }
    C->var[i] = new_var(P, i, key, NULL);
    if (P->vars[C->var[i]].ns == 0) {
      fprintf(err, "carve: error: %s (%s %s) cannot be split on a %dx%d mesh under these options%s\n", v->name,
              op_info[v->op].name, shape_str(&v->shape), C->me->n[0], C->me->n[1],
              C->o->force_dp || C->o->batch_axis >= 0 ? " (the batch must divide by the devices it is split over)"
                                                      : "");
      return false;
    }
  }
  return add_layout_vars(P);
}

/* The edges within a variable, added to its strategies' costs (in the
 * order they were made). */
static void add_self_costs(Problem *P) {
  for (int i = 0; i < P->self.n; i++) {
    const SelfCost *sc = P->self.v[i];
    for (int s = 0; s < P->vars[sc->x].ns; s++) P->vars[sc->x].cost[s] += sc->add[s];
  }
}

/* Each variable's strategies' compute, communication and memory at the
 * problem's ZeRO stage; the edges within variables are added when made. */
static void add_costs(Problem *P) {
  const Graph *g = P->C.g;
  double w = plan_once_weight(P->C.o), oc = P->C.me->overlap_cost;
  P->exposure = P->C.zero == 0 && !P->C.o->serial_comm;
  P->w_hide = w * oc, P->w_exposed = w * (1 - oc);
  for (int x = 0; x < P->nvars; x++)
    for (int s = 0; s < P->vars[x].ns; s++)
      P->vars[x].cost[s] = P->vars[x].mem[s] = P->vars[x].hide[s] = P->vars[x].bwd[s] = 0;
  for (int i = 0; i < g->nfwd; i++) {
    if (P->C.var[i] < 0) continue;
    Var *x = &P->vars[P->C.var[i]];
    for (int s = 0; s < x->ns; s++) {
      Strategy st = strategy_of(P, i, s);
      Acc acc = {0};
      node_cost(&P->C, g->nodes[i], &P->model[i], &st, &acc);
      x->cost[s] += acc.compute + acc.comm;
      x->mem[s] += acc.mp + acc.mg + acc.mo + acc.ma;
      if (!P->exposure) continue;
      x->cost[s] -= w * acc.once; /* added back below, in the exposure's terms */
      x->hide[s] += acc.once;
      x->bwd[s] += acc.compute + acc.comm - w * (acc.once + acc.update) - acc.fwd;
    }
  }
  for (int x = 0; x < P->nvars && P->exposure; x++)
    for (int s = 0; s < P->vars[x].ns; s++) {
      double h = P->vars[x].hide[s];
      P->vars[x].cost[s] += P->w_hide * h + P->w_exposed * fmax(0, h - P->vars[x].bwd[s]);
    }
  add_self_costs(P);
}

static int side_class(Side *list, int *n, const Side *s) {
  for (int i = 0; i < *n; i++)
    if (list[i].rg == s->rg && list[i].parts == s->parts && list[i].s.rank == s->s.rank &&
        memcmp(list[i].s.d, s->s.d, (size_t)s->s.rank) == 0)
      return i;
  list[*n] = *s;
  return (*n)++;
}

static double edge_cost(const Ctx *C, int share, bool grad, const Side *held, const Side *read, double bytes) {
  if (share > 0) return reduction(C, held->rg, read->rg, read->parts, bytes, share, NULL, NULL);
  return move(C, &held->s, &read->s, bytes, share < 0, grad, NULL, NULL);
}

/* One edge (or, between a variable and itself, a cost on its strategies):
 * lu[s] is how the producing side holds the tensor under its strategy s,
 * lv[t] how the reading side reads it under its strategy t (Edge.share: a
 * gradient edge). Edges of repeated layers with the same key are merged. */
static void add_edge(Problem *P, int xu, int xv, const Side *lu, const Side *lv, const char *key, double bytes,
                     int share, bool grad) {
  const Var *U = &P->vars[xu], *V = &P->vars[xv];
  if (xu == xv) {
    SelfCost *sc = arena_alloc(sizeof(SelfCost));
    sc->x = xu, sc->add = arena_alloc(sizeof(double) * (size_t)(U->ns + 1));
    for (int s = 0; s < U->ns; s++) sc->add[s] = edge_cost(&P->C, share, grad, &lu[s], &lv[s], bytes);
    ptrvec_push(&P->self, sc);
    return;
  }
  Edge *e = NULL;
  for (int j = 0; j < P->nedges && !e; j++)
    if (strcmp(P->edges[j].key, key) == 0) e = &P->edges[j];
  if (!e) {
    if (P->nedges == P->capedges) {
      P->capedges = P->capedges ? 2 * P->capedges : 64;
      Edge *ne = arena_alloc(sizeof(Edge) * (size_t)P->capedges);
      if (P->nedges) memcpy(ne, P->edges, sizeof(Edge) * (size_t)P->nedges);
      P->edges = ne;
    }
    e = &P->edges[P->nedges++];
    memset(e, 0, sizeof *e);
    e->u = xu, e->v = xv, e->key = key, e->share = share, e->grad = grad;
    e->lu = arena_alloc(sizeof(Side) * (size_t)U->ns);
    e->lv = arena_alloc(sizeof(Side) * (size_t)V->ns);
    e->cu = arena_alloc(sizeof(int) * (size_t)U->ns);
    e->cv = arena_alloc(sizeof(int) * (size_t)V->ns);
    for (int s = 0; s < U->ns; s++) e->cu[s] = side_class(e->lu, &e->nl, &lu[s]);
    for (int t = 0; t < V->ns; t++) e->cv[t] = side_class(e->lv, &e->nm, &lv[t]);
    e->c = arena_alloc(sizeof(double) * (size_t)(e->nl * e->nm));
  }
  for (int l = 0; l < e->nl; l++)
    for (int m = 0; m < e->nm; m++) e->c[l * e->nm + m] += edge_cost(&P->C, share, grad, &e->lu[l], &e->lv[m], bytes);
}

/* The layouts tensor u has under each strategy of the variable that holds it
   (a layout edge's sides), or (gradient) the mesh axes the producer splits. */
static Side *held_layouts(const Problem *P, int u, bool via_shared, bool gradient) {
  int x = via_shared && P->shared[u] >= 0 ? P->shared[u] : P->C.var[u];
  const Var *X = &P->vars[x];
  Side *l = arena_alloc(sizeof(Side) * (size_t)(X->ns + 1));
  for (int s = 0; s < X->ns; s++) {
    Spec sp = X->layout_model ? tensor_spec(X->layout_model, 0, &X->st[s]) : layout_of(P, u, s);
    if (gradient)
      l[s].rg = split_axes(&sp);
    else
      l[s].s = sp;
  }
  return l;
}

/* The axes over which op i hands back input k's gradient partial under
   strategy st (an op's output; a parameter's gradient is synced as the
   parameter's, param_sync). */
static int read_partial(const Problem *P, int i, int k, const Strategy *st) {
  const Node *v = P->C.g->nodes[i], *u = P->C.g->nodes[v->in[k]];
  return P->C.needs_grad[u->id] && u->op != OP_PARAM && op_differentiates(v, k) ? partial_grad(&P->model[i], k, st) : 0;
}

/* Per forward node u: whether a reader across groups reads its value again
   in the backward pass (Ctx.reread); then u is resharded into its layout
   variable again. */
static bool *shared_rereads(const Problem *P) {
  const Graph *g = P->C.g;
  bool *r = arena_alloc(sizeof(bool) * (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++)
    for (int k = 0; k < g->nodes[i]->nin; k++)
      if (P->C.reread[(size_t)i * MAXIN + k] && reads_across(P, i, k)) r[g->nodes[i]->in[k]] = true;
  return r;
}

/* The edges. Each read of a tensor by another group: a layout edge from
 * where it is held (its producer, or its layout variable when several
 * groups read it: the producer has one more layout edge into that) with the
 * reshards both ways, and, where the reader may hand its gradient back
 * partial, a gradient edge from the producer: the reduction into the
 * producer's layout, which the tensor's readers share (the programs sum
 * their partial gradients first, codegen/distribute.c merge_partials: exact
 * when they all leave one). */
static void add_edges(Problem *P) {
  const Graph *g = P->C.g;
  P->nedges = 0;
  bool *again = P->again = shared_rereads(P);
  for (int u = 0; u < g->nfwd; u++) { /* producers into their layout variables */
    int x = P->shared[u];
    if (x < 0) continue;
    const Node *n = g->nodes[u];
    double bytes = value_bytes(n, P->C.o->mixed);
    add_edge(P, P->C.var[u], x, held_layouts(P, u, false, false), held_layouts(P, u, true, false),
             arena_printf("%d>%d:%s", P->C.var[u], x, layer_key(n)), bytes, again[u] ? -1 : 0, P->C.needs_grad[u]);
  }
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    for (int k = 0; k < v->nin; k++) {
      if (!reads_across(P, i, k)) continue;
      const Node *u = g->nodes[v->in[k]];
      int xu = P->shared[u->id] >= 0 ? P->shared[u->id] : P->C.var[u->id], xv = P->C.var[i], partial = 0;
      const Var *V = &P->vars[xv];
      Side *lv = arena_alloc(sizeof(Side) * (size_t)(V->ns + 1)), *gv = arena_alloc(sizeof(Side) * (size_t)(V->ns + 1));
      for (int t = 0; t < V->ns; t++) {
        Strategy st = strategy_of(P, i, t);
        lv[t].s = tensor_spec(&P->model[i], k, &st);
        gv[t].rg = read_partial(P, i, k, &st), gv[t].parts = spec_shards(P->C.me, &lv[t].s);
        partial |= gv[t].rg;
      }
      double bytes = value_bytes(u, P->C.o->mixed);
      const char *key = layer_key(v);
      add_edge(P, xu, xv, held_layouts(P, u->id, true, false), lv, arena_printf("%d>%d:%s:%d", xu, xv, key, k), bytes,
               P->C.reread[(size_t)i * MAXIN + k] ? -1 : 0, P->C.needs_grad[u->id] && op_differentiates(v, k));
      if (partial)
        add_edge(P, P->C.var[u->id], xv, held_layouts(P, u->id, false, true), gv,
                 arena_printf("g%d>%d:%s:%d", P->C.var[u->id], xv, key, k), bytes, P->readers[u->id], true);
    }
  }
}

/* ---------------------------------------------------------------- pruning */

/* The most that edge e's cost can grow when its variable x moves from
   strategy s to t, whatever the other end chooses. */
static double edge_growth(const Edge *e, int x, int t, int s) {
  double most = -DBL_MAX;
  if (e->u == x) {
    if (e->cu[t] == e->cu[s]) return 0;
    for (int m = 0; m < e->nm; m++) most = fmax(most, e->c[e->cu[t] * e->nm + m] - e->c[e->cu[s] * e->nm + m]);
  } else {
    if (e->cv[t] == e->cv[s]) return 0;
    for (int l = 0; l < e->nl; l++) most = fmax(most, e->c[l * e->nm + e->cv[t]] - e->c[l * e->nm + e->cv[s]]);
  }
  return most;
}

/* Strategy s of a variable is dead when one of its few cheapest strategies
 * t needs no more memory and stays cheaper however the other variables
 * choose: cost[t] plus the most each of its edges can grow from s to t is
 * at most cost[s] (ties: the first kept). An optimal plan never needs a
 * dead strategy, and the solver fixes it at 0 with the edge columns only
 * dead ones reach, a smaller problem with the same optimum (test_planner's
 * brute force over every strategy checks it). */
static void prune(Problem *P) {
  enum { CANDIDATES = 6 };
  for (int x = 0; x < P->nvars; x++) {
    Var *X = &P->vars[x];
    int best[CANDIDATES], nb = 0; /* the cheapest strategies, cheapest first */
    for (int s = 0; s < X->ns; s++) {
      X->dead[s] = false;
      int at = nb < CANDIDATES ? nb++ : CANDIDATES;
      while (at > 0 && X->cost[s] < X->cost[best[at - 1]]) {
        if (at < CANDIDATES) best[at] = best[at - 1];
        at--;
      }
      if (at < CANDIDATES) best[at] = s;
    }
    for (int s = 0; s < X->ns; s++)
      for (int k = 0; k < nb && !X->dead[s]; k++) {
        int t = best[k];
        if (t == s || X->dead[t] || X->mem[t] > X->mem[s]) continue;
        double grow = 0;
        for (int e = 0; e < P->nedges; e++)
          if (P->edges[e].u == x || P->edges[e].v == x) grow += edge_growth(&P->edges[e], x, t, s);
        double d = X->cost[t] + grow - X->cost[s];
        X->dead[s] = d < -1e-12 * fabs(X->cost[s]) || (d <= 0 && t < s);
      }
  }
}

/* ---------------------------------------------------------------- solving */

typedef struct Solution {
  int *choice; /* per variable */
  double objective, gap, seconds;
  bool optimal, feasible, timed_out;
  bool cut; /* stopped at the cutoff (Search.cut) */
  int cols, binaries, rows;
} Solution;

/* GLPK's search calls this: it keeps the relative gap between the best plan
 * found and the best bound (for a search that is stopped), stops the search
 * after `node_limit` subproblems when there is one, or AFTER_FIRST
 * subproblems after the first plan found, and stops it as soon as the lowest
 * bound of the open subproblems (the LP relaxations) reaches the cutoff: no
 * plan of this problem can then get below it. The memory-bound stage plans
 * of a search (data parallelism whose sync hides behind the backward pass
 * fills the devices) seldom improve after their first plan: stopping 10
 * nodes after it took the deepest Megatron rows' searches from 10.9-11.9 s
 * to 8.1-8.7 s of CPU with every plan the same (bench/README.md). */
enum { AFTER_FIRST = 10 };
typedef struct Search {
  double gap, cutoff;
  int nodes, node_limit;
  int found;    /* the node count (+1) when the branch and bound found its first plan, 0 before */
  bool rounded; /* GLPK took rounded_plan's plan as its incumbent (it is offered until then) */
  bool cut;
  /* for rounded_plan: the problem, its columns, and the memory row's limit */
  const Problem *P;
  const int *xcol, *ecol;
  double mem_limit;
  bool same_columns; /* the search runs on the problem as built (not presolved) */
} Search;

/* A variable's incident edges, for rounded_plan. */
typedef struct Adj {
  int *e, n;
} Adj;

/* Strategy s of variable x's cost with its edges to the others' choices. */
static double cost_with_edges(const Problem *P, const Adj *adj, const int *choice, int x, int s) {
  double c = P->vars[x].cost[s];
  for (int k = 0; k < adj[x].n; k++) {
    const Edge *E = &P->edges[adj[x].e[k]];
    int l = E->u == x ? E->cu[s] : E->cu[choice[E->u]], m = E->v == x ? E->cv[s] : E->cv[choice[E->v]];
    c += E->c[l * E->nm + m];
  }
  return c;
}

/* A plan from the search's LP relaxation, offered to GLPK as its first
 * incumbent (at each subproblem until it takes one, before the branch and
 * bound finds a plan): each variable takes its largest strategy in the
 * relaxation, then, while the plan is over the memory limit, the move of
 * one variable to a smaller strategy that costs least per byte saved (its
 * edges to the others' choices counted). The branch and bound prunes
 * against it and, in a search, still stops AFTER_FIRST nodes after its own
 * first plan (or at the node limit, keeping the better of the two). The
 * memory-tight stage plans of a search otherwise ended their node limit
 * without a plan and then spent seconds in GLPK's feasibility pump. */
static bool rounded_plan(const Search *S, glp_tree *tree) {
  const Problem *P = S->P;
  glp_prob *lp = glp_ios_get_prob(tree);
  int *choice = arena_alloc(sizeof(int) * (size_t)(P->nvars + 1));
  Adj *adj = arena_alloc(sizeof(Adj) * (size_t)(P->nvars + 1));
  for (int e = 0; e < P->nedges; e++) adj[P->edges[e].u].n++, adj[P->edges[e].v].n++;
  for (int x = 0; x < P->nvars; x++) adj[x].e = arena_alloc(sizeof(int) * (size_t)(adj[x].n + 1)), adj[x].n = 0;
  for (int e = 0; e < P->nedges; e++) {
    Adj *a = &adj[P->edges[e].u], *b = &adj[P->edges[e].v];
    a->e[a->n++] = e;
    if (b != a) b->e[b->n++] = e;
  }
  double mem = 0;
  for (int x = 0; x < P->nvars; x++) {
    const Var *V = &P->vars[x];
    double best = -1;
    for (int s = 0; s < V->ns; s++) {
      double v = glp_get_col_prim(lp, S->xcol[x] + s);
      if (!V->dead[s] && v > best) best = v, choice[x] = s;
    }
    mem += V->mem[choice[x]];
  }
  while (mem > S->mem_limit) {
    int bx = -1, bs = 0;
    double brate = DBL_MAX;
    for (int x = 0; x < P->nvars; x++) {
      const Var *V = &P->vars[x];
      double now = cost_with_edges(P, adj, choice, x, choice[x]);
      for (int s = 0; s < V->ns; s++) {
        double saved = V->mem[choice[x]] - V->mem[s];
        if (V->dead[s] || saved <= 0) continue;
        double rate = (cost_with_edges(P, adj, choice, x, s) - now) / saved;
        if (rate < brate) brate = rate, bx = x, bs = s;
      }
    }
    if (bx < 0) return false;
    mem -= P->vars[bx].mem[choice[bx]] - P->vars[bx].mem[bs];
    choice[bx] = bs;
  }
  int n = glp_get_num_cols(lp);
  double *val = arena_alloc(sizeof(double) * (size_t)(n + 1));
  for (int x = 0; x < P->nvars; x++) val[S->xcol[x] + choice[x]] = 1;
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    val[S->ecol[e] + E->cu[choice[E->u]] * E->nm + E->cv[choice[E->v]]] = 1;
  }
  return glp_ios_heur_sol(tree, val) == 0;
}

static void search_callback(glp_tree *tree, void *info) {
  Search *s = info;
  int why = glp_ios_reason(tree);
  if (why == GLP_IBINGO || why == GLP_ISELECT) {
    double gap = glp_ios_mip_gap(tree);
    if (gap < DBL_MAX) s->gap = gap;
  }
  if (s->cutoff > 0 && why != GLP_IPREPRO) {
    int best = glp_ios_best_node(tree);
    if (best && glp_ios_node_bound(tree, best) >= s->cutoff) {
      s->cut = true;
      glp_ios_terminate(tree);
      return;
    }
  }
  if (why == GLP_IHEUR && !s->found && !s->rounded && s->P && s->same_columns) s->rounded = rounded_plan(s, tree);
  if (why == GLP_IBINGO && !s->found) s->found = s->nodes + 1;
  if (why == GLP_ISELECT && s->node_limit > 0 &&
      (++s->nodes > s->node_limit || (s->found && s->nodes - s->found >= AFTER_FIRST)))
    glp_ios_terminate(tree);
}

/* Warm starts. The search solves the same problem structure many times:
 * a stage on a submesh at each microbatch count, and spans whose layers
 * share variables (the problem does not grow with depth), differ only in
 * their costs and memory coefficients. The LP relaxation's optimal basis of
 * one is a good start for the next (dual simplex from it takes a fraction
 * of the iterations of a cold start), so the bases are kept, by a hash of
 * the problem's structure (variables' strategy counts, edges' endpoints and
 * layout classes: every coefficient but the memory row's and the costs).
 * A basis that does not fit or fails falls back to a cold start. */
enum { BASES = 64 };

typedef struct Basis {
  uint64_t key;
  int m, n;
  unsigned char *stat; /* rows then columns: GLP_BS, GLP_NL, ... */
} Basis;

static Basis bases[BASES];
static int bases_next;
static bool warm;

void plan_warm_starts(bool on) {
  warm = on;
  if (on) return;
  for (int i = 0; i < BASES; i++) free(bases[i].stat), bases[i] = (Basis){0};
  bases_next = 0;
}

static uint64_t structure_key(const Problem *P, int nrows, int ncols) {
  int head[3] = {nrows, ncols, P->nvars};
  uint64_t h = hash_bytes(head, sizeof head, 1469598103934665603ull);
  for (int x = 0; x < P->nvars; x++) h = hash_bytes(&P->vars[x].ns, sizeof(int), h);
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    int ends[4] = {E->u, E->v, E->nl, E->nm};
    h = hash_bytes(ends, sizeof ends, h);
    h = hash_bytes(E->cu, sizeof(int) * (size_t)P->vars[E->u].ns, h);
    h = hash_bytes(E->cv, sizeof(int) * (size_t)P->vars[E->v].ns, h);
  }
  return h;
}

static Basis *basis_find(uint64_t key) {
  if (!warm) return NULL;
  for (int i = 0; i < BASES; i++)
    if (bases[i].stat && bases[i].key == key) return &bases[i];
  return NULL;
}

static void basis_keep(glp_prob *lp, uint64_t key) {
  if (!warm) return;
  int m = glp_get_num_rows(lp), n = glp_get_num_cols(lp);
  Basis *b = basis_find(key);
  if (!b || b->m != m || b->n != n) {
    if (!b) b = &bases[bases_next], bases_next = (bases_next + 1) % BASES;
    free(b->stat);
    *b = (Basis){key, m, n, xmalloc((size_t)(m + n))};
  }
  for (int i = 1; i <= m; i++) b->stat[i - 1] = (unsigned char)glp_get_row_stat(lp, i);
  for (int j = 1; j <= n; j++) b->stat[m + j - 1] = (unsigned char)glp_get_col_stat(lp, j);
}

/* What became of the LP relaxation: GLPK's presolver is to solve it (it
 * failed here), it is solved (optimal), or its bound reached the cutoff. */
enum { LP_FAILED, LP_OPTIMAL, LP_ABOVE };

/* The LP relaxation by the dual simplex (stopped once its objective, a
 * bound that only rises, passes the cutoff), from a kept basis of the same
 * structure when there is one, otherwise from the basis of slacks, which
 * is dual feasible as no cost is negative (a third of the time GLPK's
 * advanced basis and the primal simplex took on a search's first
 * relaxations of each structure). Not scaled: the matrix is already (its
 * entries are 1 and -1, and the memory row's fractions of the device), and
 * GLPK's scaling took a fifth of a search's time in the relaxations. */
static int relaxation_from(glp_prob *lp, uint64_t key, glp_smcp *sm, double cutoff) {
  const Basis *b = basis_find(key);
  int m = glp_get_num_rows(lp), n = glp_get_num_cols(lp);
  if (b && b->m == m && b->n == n) {
    for (int i = 1; i <= m; i++) glp_set_row_stat(lp, i, b->stat[i - 1]);
    for (int j = 1; j <= n; j++) glp_set_col_stat(lp, j, b->stat[m + j - 1]);
    sm->meth = GLP_DUALP;
    sm->it_lim = m; /* a warm start takes a fraction of this; more means it stalls (it can cycle) */
    sm->obj_ul = cutoff > 0 ? cutoff : DBL_MAX;
    int rc = glp_simplex(lp, sm);
    if (rc == GLP_EOBJUL) return LP_ABOVE;
    if (rc == 0 && glp_get_status(lp) == GLP_OPT) {
      basis_keep(lp, key);
      return cutoff > 0 && glp_get_obj_val(lp) >= cutoff ? LP_ABOVE : LP_OPTIMAL;
    }
  }
  glp_std_basis(lp); /* every column at 0: dual feasible, as no cost is negative */
  sm->meth = GLP_DUALP, sm->it_lim = INT_MAX, sm->obj_ul = cutoff > 0 ? cutoff : DBL_MAX;
  int rc = glp_simplex(lp, sm);
  if (rc == GLP_EOBJUL) return LP_ABOVE;
  if (rc != 0 || glp_get_status(lp) != GLP_OPT) return LP_FAILED;
  basis_keep(lp, key);
  return cutoff > 0 && glp_get_obj_val(lp) >= cutoff ? LP_ABOVE : LP_OPTIMAL;
}

static int solve_relaxation(glp_prob *lp, uint64_t key, int tm_lim, double cutoff) {
  glp_smcp sm;
  glp_init_smcp(&sm);
  sm.msg_lev = GLP_MSG_OFF;
  sm.tm_lim = tm_lim;
  int was = glp_term_out(GLP_OFF); /* scaling and the advanced basis talk on stdout */
  int r = relaxation_from(lp, key, &sm, cutoff);
  glp_term_out(was);
  return r;
}

/* The branch and bound. With warm starts, from the LP relaxation solved
 * here when it is optimal, and none when the relaxation's bound already
 * reaches the cutoff (*cut); otherwise (and without warm starts) through
 * GLPK's presolver, which also reports an infeasible or unbounded
 * relaxation. */
static int integer_search(glp_prob *lp, glp_iocp *parm, uint64_t key, double cutoff, bool *cut) {
  double t0 = now_seconds();
  int r = warm ? solve_relaxation(lp, key, parm->tm_lim, cutoff) : LP_FAILED;
  if (r == LP_ABOVE) return *cut = true, GLP_ESTOP;
  parm->presolve = r == LP_OPTIMAL ? GLP_OFF : GLP_ON;
  ((Search *)parm->cb_info)->same_columns = parm->presolve == GLP_OFF; /* presolved, columns are renumbered */
  int limit = parm->tm_lim;
  parm->tm_lim = (int)fmax(1, limit - (now_seconds() - t0) * 1000);
  int rc = glp_intopt(lp, parm);
  parm->tm_lim = limit;
  return rc;
}

/* Builds and solves the ILP; with minimise_memory, the objective is the
 * memory sum instead and the memory row is left out (used to explain an
 * infeasible problem). */
static Solution solve(const Problem *P, double mem_limit, double time_limit, int node_limit, double cutoff,
                      bool minimise_memory) {
  /* costs enter the solver in milliseconds: in seconds (1e-6 to 1e-3 a
     variable) plans that differ by a few microseconds differ by less than
     the simplex's tolerances, and a warm-started search could stop at one
     that is not the cheapest (test_stages: a manual plan 0.3% faster); in
     microseconds the branch and bound separates plans far below what the
     model can tell apart and takes twice as long */
  double scale = minimise_memory ? 1 : 1e3;
  cutoff *= scale;
  Solution S = {0};
  S.choice = arena_alloc(sizeof(int) * (size_t)(P->nvars + 1));
  double t0 = now_seconds();
  glp_prob *lp = glp_create_prob();
  glp_set_obj_dir(lp, GLP_MIN);
  int *xcol = arena_alloc(sizeof(int) * (size_t)(P->nvars + 1));
  int ncols = 0;
  for (int x = 0; x < P->nvars; x++) ncols += P->vars[x].ns;
  for (int e = 0; e < P->nedges; e++) ncols += P->edges[e].nl * P->edges[e].nm;
  glp_add_cols(lp, ncols);
  int col = 1;
  for (int x = 0; x < P->nvars; x++) {
    xcol[x] = col;
    for (int s = 0; s < P->vars[x].ns; s++, col++) {
      glp_set_col_kind(lp, col, GLP_BV);
      if (!minimise_memory && P->vars[x].dead[s]) glp_set_col_bnds(lp, col, GLP_FX, 0, 0);
      glp_set_obj_coef(lp, col, minimise_memory ? P->vars[x].mem[s] : P->vars[x].cost[s] * scale);
    }
  }
  int *ecol = arena_alloc(sizeof(int) * (size_t)(P->nedges + 1));
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    ecol[e] = col;
    bool *lu = arena_alloc(sizeof(bool) * (size_t)(E->nl + E->nm)), *lv = lu + E->nl; /* classes a live strategy has */
    for (int s = 0; s < P->vars[E->u].ns; s++) lu[E->cu[s]] |= minimise_memory || !P->vars[E->u].dead[s];
    for (int t = 0; t < P->vars[E->v].ns; t++) lv[E->cv[t]] |= minimise_memory || !P->vars[E->v].dead[t];
    for (int i = 0; i < E->nl * E->nm; i++, col++) {
      if (lu[i / E->nm] && lv[i % E->nm])
        glp_set_col_bnds(lp, col, GLP_DB, 0, 1);
      else
        glp_set_col_bnds(lp, col, GLP_FX, 0, 0);
      glp_set_obj_coef(lp, col, minimise_memory ? 0 : E->c[i] * scale);
    }
  }
  /* rows: one-hot, edge marginals, memory */
  int nrows = P->nvars + (minimise_memory ? 0 : 1);
  for (int e = 0; e < P->nedges; e++) nrows += P->edges[e].nl + P->edges[e].nm;
  glp_add_rows(lp, nrows);
  int cap = 16, nz = 0; /* exact: one-hot and memory rows, then each edge's marginals */
  for (int x = 0; x < P->nvars; x++) cap += 2 * P->vars[x].ns;
  for (int e = 0; e < P->nedges; e++)
    cap += 2 * P->edges[e].nl * P->edges[e].nm + P->vars[P->edges[e].u].ns + P->vars[P->edges[e].v].ns;
  int *ia = xmalloc(sizeof(int) * (size_t)(cap + 1)), *ja = xmalloc(sizeof(int) * (size_t)(cap + 1));
  double *ar = xmalloc(sizeof(double) * (size_t)(cap + 1));
#define NZ(r, c, v) (nz++, ia[nz] = (r), ja[nz] = (c), ar[nz] = (v))
  int row = 1;
  for (int x = 0; x < P->nvars; x++, row++) {
    glp_set_row_bnds(lp, row, GLP_FX, 1, 1);
    for (int s = 0; s < P->vars[x].ns; s++) NZ(row, xcol[x] + s, 1);
  }
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    for (int l = 0; l < E->nl; l++, row++) {
      glp_set_row_bnds(lp, row, GLP_FX, 0, 0);
      for (int m = 0; m < E->nm; m++) NZ(row, ecol[e] + l * E->nm + m, 1);
      for (int s = 0; s < P->vars[E->u].ns; s++)
        if (E->cu[s] == l) NZ(row, xcol[E->u] + s, -1);
    }
    for (int m = 0; m < E->nm; m++, row++) {
      glp_set_row_bnds(lp, row, GLP_FX, 0, 0);
      for (int l = 0; l < E->nl; l++) NZ(row, ecol[e] + l * E->nm + m, 1);
      for (int t = 0; t < P->vars[E->v].ns; t++)
        if (E->cv[t] == m) NZ(row, xcol[E->v] + t, -1);
    }
  }
  if (!minimise_memory) { /* in fractions of the device's memory: bytes (1e10) beside the 1s slowed the simplex */
    double unit = mem_limit > 0 ? mem_limit : 1; /* (none left after the workspace: infeasible, as in bytes) */
    glp_set_row_bnds(lp, row, GLP_UP, 0, mem_limit / unit);
    for (int x = 0; x < P->nvars; x++)
      for (int s = 0; s < P->vars[x].ns; s++)
        if (P->vars[x].mem[s] != 0) NZ(row, xcol[x] + s, P->vars[x].mem[s] / unit);
  }
#undef NZ
  CARVE_ASSERT(nz <= cap, "ILP coefficient buffer large enough");
  glp_load_matrix(lp, nz, ia, ja, ar);
  free(ia), free(ja), free(ar);
  /* Two passes. The first, without heuristics, settles almost every problem
   * in a few dozen nodes. A problem under tight memory where it finds no
   * plan within FIRST_NODES nodes (or within a search's node limit) gets a
   * second pass with the feasibility pump, which finds such plans fast but
   * costs seconds on large problems; a search keeps the first pass's plan
   * if it has one. */
  enum { FIRST_NODES = 500 };
  uint64_t key = structure_key(P, nrows, ncols);
  glp_iocp parm;
  glp_init_iocp(&parm);
  parm.msg_lev = GLP_MSG_OFF;
  parm.tm_lim = (int)fmin(time_limit * 1000, 2e9);
  parm.mip_gap = 1e-6;
  Search search = {.gap = 1, .cutoff = cutoff, .node_limit = node_limit > 0 ? node_limit : FIRST_NODES};
  if (!minimise_memory) search.P = P, search.xcol = xcol, search.ecol = ecol, search.mem_limit = mem_limit;
  parm.cb_func = search_callback;
  parm.cb_info = &search;
  int rc = integer_search(lp, &parm, key, cutoff, &search.cut);
  bool stopped = rc == GLP_ESTOP, found = glp_mip_status(lp) == GLP_FEAS;
  if (stopped && !search.cut && !(node_limit > 0 && found)) {
    parm.fp_heur = GLP_ON;
    parm.tm_lim = (int)fmax(1, parm.tm_lim - (now_seconds() - t0) * 1000);
    search = (Search){.gap = 1,
                      .cutoff = cutoff,
                      .node_limit = node_limit,
                      .P = search.P,
                      .xcol = xcol,
                      .ecol = ecol,
                      .mem_limit = mem_limit};
    rc = integer_search(lp, &parm, key, cutoff, &search.cut);
  }
  S.gap = search.gap, S.cut = search.cut;
  int status = glp_mip_status(lp);
  S.feasible = status == GLP_OPT || status == GLP_FEAS;
  S.optimal = status == GLP_OPT;
  S.timed_out = (rc == GLP_ETMLIM || rc == GLP_ESTOP) && !S.feasible;
  S.cols = ncols, S.rows = nrows;
  for (int x = 0; x < P->nvars; x++) S.binaries += P->vars[x].ns;
  if (S.feasible) {
    S.objective = glp_mip_obj_val(lp) / scale;
    for (int x = 0; x < P->nvars; x++) {
      S.choice[x] = 0;
      for (int s = 0; s < P->vars[x].ns; s++)
        if (glp_mip_col_val(lp, xcol[x] + s) > 0.5) S.choice[x] = s;
    }
    if (S.optimal) S.gap = 0;
  }
  glp_delete_prob(lp);
  S.seconds = now_seconds() - t0;
  return S;
}

/* ---------------------------------------------------------------- instance for tests */

static IlpInstance last_instance;
static bool last_cut;

bool plan_last_cut(void) { return last_cut; }

static void keep_instance(const Problem *P, double mem_limit) {
  IlpInstance *I = &last_instance;
  I->nvars = P->nvars;
  I->ns = arena_alloc(sizeof(int) * (size_t)(P->nvars + 1));
  I->cost = arena_alloc(sizeof(double *) * (size_t)(P->nvars + 1));
  I->mem = arena_alloc(sizeof(double *) * (size_t)(P->nvars + 1));
  for (int x = 0; x < P->nvars; x++) {
    I->ns[x] = P->vars[x].ns;
    I->cost[x] = P->vars[x].cost;
    I->mem[x] = P->vars[x].mem;
  }
  I->nedges = P->nedges;
  I->eu = arena_alloc(sizeof(int) * (size_t)(P->nedges + 1));
  I->ev = arena_alloc(sizeof(int) * (size_t)(P->nedges + 1));
  I->ecost = arena_alloc(sizeof(double *) * (size_t)(P->nedges + 1));
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    int nu = P->vars[E->u].ns, nv = P->vars[E->v].ns;
    I->eu[e] = E->u, I->ev[e] = E->v;
    I->ecost[e] = arena_alloc(sizeof(double) * (size_t)(nu * nv));
    for (int s = 0; s < nu; s++)
      for (int t = 0; t < nv; t++) I->ecost[e][s * nv + t] = E->c[E->cu[s] * E->nm + E->cv[t]];
  }
  I->mem_limit = mem_limit;
}

const IlpInstance *plan_last_instance(void) { return &last_instance; }

double ilp_brute_force(const IlpInstance *I, double *combos) {
  int *s = xcalloc((size_t)I->nvars + 1, sizeof(int));
  double best = -1;
  *combos = 0;
  for (;;) {
    double cost = 0, mem = 0;
    for (int x = 0; x < I->nvars; x++) cost += I->cost[x][s[x]], mem += I->mem[x][s[x]];
    for (int e = 0; e < I->nedges; e++) cost += I->ecost[e][s[I->eu[e]] * I->ns[I->ev[e]] + s[I->ev[e]]];
    (*combos)++;
    if (mem <= I->mem_limit && (best < 0 || cost < best)) best = cost;
    int x = 0;
    while (x < I->nvars && ++s[x] == I->ns[x]) s[x++] = 0;
    if (x == I->nvars) break;
  }
  free(s);
  return best;
}

/* ---------------------------------------------------------------- the plan */

/* The layout an owned parameter or input is stored in: as its reader reads it. */
static Spec owned_layout(const Problem *P, const int *choice, int leaf) {
  const Graph *g = P->C.g;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (P->C.var[i] < 0 || is_leaf(v)) continue;
    for (int k = 0; k < v->nin; k++)
      if (v->in[k] == leaf) {
        Strategy st = strategy_of(P, i, choice[P->C.var[i]]);
        Spec s = tensor_spec(&P->model[i], k, &st);
        return stored_as(&P->C, g->nodes[leaf], &s);
      }
  }
  return (Spec){.rank = g->nodes[leaf]->shape.rank};
}

static bool same_comm(const Comm *a, const Comm *b) {
  return a->kind == b->kind && a->axes == b->axes && a->copies == b->copies && a->phase == b->phase &&
         a->once == b->once && a->rerun == b->rerun && fabs(a->bytes - b->bytes) < 0.5;
}

/* A summed gradient another reader of the same tensor already listed. */
static bool listed(PtrVec *rec, int i) {
  const Comm *c = rec->v[i];
  for (int j = 0; j < i && c->summed; j++) {
    const Comm *d = rec->v[j];
    if (d->summed && same_comm(c, d) && d->what && c->what && strcmp(d->what, c->what) == 0) return true;
  }
  return false;
}

/* The mesh axes the batch is split over (a bit each): the axes of the
   data-parallel replicas. */
static int batch_axes(const Plan *pl) {
  const Graph *g = pl->g;
  for (int i = 0; i < g->nfwd; i++)
    if (g->nodes[i]->op == OP_INPUT && pl->layout[i].rank > 0) return pl->layout[i].d[0];
  return 0;
}

/* Without ZeRO, the programs all-reduce a layer's parameter gradients over
 * the data-parallel replicas as one bucket (each gradient 64-byte aligned
 * in it; those outside every layer are one more bucket: codegen/
 * distribute.c): rec's gradient all-reduces over a batch axis become one
 * entry per layer and axis, those of tied parameters (over their copies on
 * other stages too) one more. Duplicates (listed) are dropped here. */
static void bucket_grads(const Plan *pl, PtrVec *rec) {
  int bax = batch_axes(pl);
  if (pl->zero != 0) return;
  PtrVec out = {0};
  size_t slots = 6 * (size_t)(pl->g->n + 2); /* per (layer + 1, axis 0, 1 or none, tied or not) */
  Comm **open = arena_alloc(sizeof(Comm *) * slots);
  memset(open, 0, sizeof(Comm *) * slots);
  for (int i = 0; i < rec->n; i++) {
    Comm *c = rec->v[i];
    bool over = (c->axes & bax) && (c->axes == 1 || c->axes == 2), tied = c->copies > 1;
    const Node *u =
        c->kind == COLL_ALL_REDUCE && c->once && c->phase == PHASE_BACKWARD && (over || tied) ? c->param : NULL;
    if (!u || listed(rec, i)) {
      if (!u) ptrvec_push(&out, c);
      continue;
    }
    Comm **b = &open[6 * (u->layer + 1) + 3 * tied + (c->axes == 0 ? 2 : c->axes == 2)];
    if (!*b) {
      *b = arena_alloc(sizeof(Comm));
      **b = *c;
      (*b)->bytes = 0, (*b)->summed = false;
      (*b)->what = arena_printf(
          "%s%s", u->layer >= 0 ? arena_printf("layer.%d.gradients", u->layer) : "gradients outside the layers",
          tied ? ", tied across stages" : "");
      ptrvec_push(&out, *b);
    }
    (*b)->bytes += ceil(c->bytes / 64) * 64;
  }
  *rec = out;
}

/* Aggregates identical collectives (same kind, axes, phase, size, and the
 * same tensor up to the layer index). */
static void aggregate(Plan *pl, PtrVec *rec) {
  pl->comms = arena_alloc(sizeof(Comm) * (size_t)(rec->n + 1));
  for (int i = 0; i < rec->n; i++) {
    Comm *c = rec->v[i];
    if (listed(rec, i)) continue;
    const char *what = c->what;
    Node tmp = {.name = what ? what : "-"};
    const char *key = layer_key(&tmp);
    int j = 0;
    for (; j < pl->ncomms; j++) {
      Comm *d = &pl->comms[j];
      Node t2 = {.name = d->what ? d->what : "-"};
      if (same_comm(c, d) && strcmp(layer_key(&t2), key) == 0) break;
    }
    if (j < pl->ncomms)
      pl->comms[j].count++;
    else
      pl->comms[pl->ncomms++] = *c;
  }
}

/* How the chosen plan's readers (across groups) hand the gradient of each
   tensor back, as the programs sum them (codegen/distribute.c): split, the
   mesh axes some reader hands it back split over and whole (the sum takes
   that split: another reader's partial gradient is reduce-scattered into
   it, over tp, and the sum gathered into the producer's layout once, as that
   reader's layout edge prices it); partial[rg], how many readers leave it
   partial over the axes rg (summed first, reduced once). The search prices
   each partial one all-reduced into the producer's layout, shared by all
   the tensor's readers (add_edges): this is what the plan lists. */
typedef struct HandBack {
  int split;
  int partial[4];
} HandBack;

static HandBack *hand_backs(const Problem *P, const Solution *S) {
  const Graph *g = P->C.g;
  HandBack *hb = arena_alloc(sizeof(HandBack) * (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++) {
    if (!P->C.live[i] || P->C.var[i] < 0) continue;
    const Node *v = g->nodes[i];
    Strategy st = strategy_of(P, i, S->choice[P->C.var[i]]);
    for (int k = 0; k < v->nin; k++) {
      int u = v->in[k];
      if (!reads_across(P, i, k) || !P->C.needs_grad[u] || !op_differentiates(v, k)) continue;
      int rg = read_partial(P, i, k, &st);
      Spec b = tensor_spec(&P->model[i], k, &st);
      hb[u].split |= split_axes(&b) & ~rg & 2; /* over tp: the replicas hold their own rows */
      if (rg) hb[u].partial[rg]++;
    }
  }
  return hb;
}

/* Per forward op whose output the chosen plan leaves a partial sum over tp
   (mesh axis 1) held whole there: the dim every reader reads it along,
   split over tp, or -1. The programs reduce-scatter such a sum into that
   split rather than all-reduce it (codegen/distribute.c, scatter_partials,
   unless PlanOptions.no_scatter), and its readers read it as it is then
   held; the search prices the all-reduce and a free cut. Not a mean or a
   loss (their partial sums are reduced whole). */
static int8_t *scattered_reads(const Problem *P, const Solution *S) {
  const Graph *g = P->C.g;
  int8_t *dim = arena_alloc(sizeof(int8_t) * (size_t)(g->nfwd + 1));
  memset(dim, -1, (size_t)(g->nfwd + 1));
  if (P->C.o->no_scatter || P->C.me->n[1] == 1) return dim;
  int8_t *seen = arena_alloc(sizeof(int8_t) * (size_t)(g->nfwd + 1)); /* -1 none yet, -2 mixed */
  memset(seen, -1, (size_t)(g->nfwd + 1));
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (!P->C.live[i] || P->C.var[i] < 0 || is_leaf(v)) continue;
    Strategy st = strategy_of(P, i, S->choice[P->C.var[i]]);
    /* a norm's gain gradient, a max's and a squared error's backward read the value as it is held (whole):
       never scattered; nor a value handed to the next stage (its stand-in loss reads it) */
    bool as_held = v->op == OP_LAYERNORM || v->op == OP_RMSNORM || v->op == OP_MAX || v->op == OP_MSE;
    for (int k = 0; k < v->nin && k < P->model[i].nt - 1; k++) {
      Spec r = tensor_spec(&P->model[i], k, &st);
      int d = as_held ? -3 : -2;
      for (int x = 0; x < r.rank && !as_held; x++)
        if (r.d[x] & 2) d = d == -2 ? x : -3;
      int u = v->in[k];
      seen[u] = d < 0 || (seen[u] != -1 && seen[u] != d) ? -2 : (int8_t)d;
    }
  }
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (!P->C.live[i] || P->C.var[i] < 0 || is_leaf(v) || seen[i] < 0 || i == g->loss) continue;
    if (v->op == OP_MEAN || v->op == OP_XENT || v->op == OP_MSE) continue;
    Strategy st = strategy_of(P, i, S->choice[P->C.var[i]]);
    const OpModel *m = &P->model[i];
    if (st.ax[1] >= 0 && st.a2a != 1 && st.rs[1] < 0 && !split_by(m, m->nt - 1, &st, 1) && m->rank[m->nt - 1] > 0)
      dim[i] = seen[i];
  }
  return dim;
}

static Plan *assemble(const Problem *P, const Solution *S, const Cluster *cl, const PlanOptions *o) {
  const Graph *g = P->C.g;
  Plan *pl = arena_alloc(sizeof(Plan));
  pl->g = g, pl->cluster = cl, pl->mesh = *P->C.me, pl->opt = *o, pl->zero = P->C.zero;
  pl->layout = arena_alloc(sizeof(Spec) * (size_t)(g->nfwd + 1));
  pl->reads = arena_alloc(sizeof(Spec) * (size_t)(g->nfwd + 1) * MAXIN);
  pl->partial = arena_alloc(sizeof(uint8_t) * (size_t)(g->nfwd + 1));
  pl->a2a = arena_alloc(sizeof(bool) * (size_t)(g->nfwd + 1));
  pl->kept = arena_alloc(sizeof(Spec) * (size_t)(g->nfwd + 1));
  pl->to_kept = arena_alloc(sizeof(uint8_t) * (size_t)(g->nfwd + 1));
  pl->edge = arena_alloc(sizeof(uint8_t) * (size_t)(g->nfwd + 1) * MAXIN);
  PtrVec rec = {0};
  Acc acc = {.rec = &rec, .scatter = scattered_reads(P, S)};
  double w = plan_once_weight(o);
  const HandBack *hb = hand_backs(P, S);
  for (int i = 0; i < g->nfwd; i++) {
    const Node *v = g->nodes[i];
    if (!P->C.live[i]) continue;
    if (P->C.var[i] < 0) {
      pl->layout[i] = pl->kept[i] = owned_layout(P, S->choice, i);
      continue;
    }
    int s = S->choice[P->C.var[i]];
    pl->layout[i] = layout_of(P, i, s);
    Strategy st = strategy_of(P, i, s);
    node_cost(&P->C, v, &P->model[i], &st, &acc);
    const OpModel *m = &P->model[i];
    for (int k = 0; k < m->nt - 1 && k < MAXIN; k++) {
      pl->reads[(size_t)i * MAXIN + k] = tensor_spec(m, k, &st);
      pl->edge[(size_t)i * MAXIN + k] = (uint8_t)(P->C.reread[(size_t)i * MAXIN + k] << 1);
    }
    for (int a = 0; a < 2; a++)
      if (st.ax[a] >= 0 && !split_by(m, m->nt - 1, &st, a)) pl->partial[i] |= (uint8_t)(1 << a);
    pl->a2a[i] = st.a2a >= 0;
    double bytes = value_bytes(v, P->C.o->mixed);
    pl->kept[i] = pl->layout[i];
    if (P->shared[i] >= 0) { /* into its layout variable, once */
      Side b = held_layouts(P, i, true, false)[S->choice[P->shared[i]]];
      move(&P->C, &pl->layout[i], &b.s, bytes, P->again[i], P->C.needs_grad[i], &acc, v->name);
      pl->kept[i] = b.s, pl->to_kept[i] = (uint8_t)(1 | P->again[i] << 1);
    }
    for (int k = 0; k < v->nin; k++) { /* resharding between groups */
      if (!reads_across(P, i, k)) continue;
      const Node *u = g->nodes[v->in[k]];
      int xu = P->shared[u->id] >= 0 ? P->shared[u->id] : P->C.var[u->id];
      Spec a = held_layouts(P, u->id, true, false)[S->choice[xu]].s, b = tensor_spec(&P->model[i], k, &st);
      double ub = value_bytes(u, P->C.o->mixed);
      acc.rerun = u->op == OP_PARAM; /* a recomputed forward reads a parameter again (activations: Comm.rerun) */
      move(&P->C, &a, &b, ub, P->C.reread[(size_t)i * MAXIN + k], P->C.needs_grad[u->id] && op_differentiates(v, k),
           &acc, u->name); /* the layout edge, then the gradient edge's reduction */
      acc.rerun = false;
      pl->edge[(size_t)i * MAXIN + k] |= 1;
      int rg = read_partial(P, i, k, &st);
      if (rg)
        reduction(&P->C, split_axes(&pl->layout[u->id]) | hb[u->id].split, rg, spec_shards(P->C.me, &b), ub,
                  hb[u->id].partial[rg], &acc, u->name);
    }
  }
  pl->compute_s = acc.compute, pl->comm_s = acc.comm, pl->objective = S->objective, pl->update_s = acc.update;
  pl->reread_s = acc.reread;
  pl->microbatch_s = acc.compute + acc.comm - w * (acc.once + acc.update);
  for (int x = 0; x < P->nvars && P->exposure; x++) { /* hidden behind the backward pass (Problem.exposure) */
    int s = S->choice[x];
    pl->sync_hidden_s += P->w_exposed * fmin(P->vars[x].hide[s], P->vars[x].bwd[s]);
  }
  double per_mb = acc.compute + acc.comm;
  pl->fwd_frac = per_mb > 0 ? acc.fwd / per_mb : 1.0 / 3;
  pl->wgrad_frac = per_mb > 0 ? acc.wgrad / per_mb : 1.0 / 3;
  pl->mem_params = acc.mp, pl->mem_grads = acc.mg, pl->mem_optim = acc.mo, pl->mem_acts = acc.ma;
  bucket_grads(pl, &rec);
  aggregate(pl, &rec);
  pl->vars = S->cols, pl->binaries = S->binaries, pl->constraints = S->rows, pl->groups = P->nvars;
  pl->nodes = g->n, pl->solve_s = S->seconds, pl->gap = S->gap, pl->optimal = S->optimal;
  return pl;
}

/* Why nothing fits: the least memory any plan needs, and what dominates it. */
static void explain_infeasible(const Problem *P, const Mesh *me, FILE *err) {
  Solution S = solve(P, 0, 60, 0, 0, true);
  char a[32], b[32];
  if (!S.feasible) {
    fprintf(err, "carve: error: no plan fits in %s per device\n", fmt_bytes(me->memory, a, sizeof a));
    return;
  }
  fprintf(err,
          "carve: error: the model does not fit: the plan that needs the least memory on this %dx%d mesh needs %s "
          "per device (ZeRO-%d), but a device has %s\n",
          me->n[0], me->n[1], fmt_bytes(S.objective, a, sizeof a), P->C.zero, fmt_bytes(me->memory, b, sizeof b));
  /* the largest contributors under that plan */
  const Graph *g = P->C.g;
  typedef struct {
    const char *name;
    double bytes;
  } Item;
  Item top[5] = {{0}};
  for (int i = 0; i < g->nfwd; i++) {
    if (P->C.var[i] < 0) continue;
    Strategy st = strategy_of(P, i, S.choice[P->C.var[i]]);
    Acc acc = {0};
    node_cost(&P->C, g->nodes[i], &P->model[i], &st, &acc);
    double m = acc.mp + acc.mg + acc.mo + acc.ma;
    for (int k = 0; k < 5; k++)
      if (m > top[k].bytes) {
        memmove(top + k + 1, top + k, sizeof(Item) * (size_t)(4 - k));
        top[k] = (Item){g->nodes[i]->name, m};
        break;
      }
  }
  fprintf(err, "largest per device (with the parameters and activations each op holds):\n");
  for (int k = 0; k < 5 && top[k].name; k++)
    fprintf(err, "  %-40s %s\n", top[k].name, fmt_bytes(top[k].bytes, a, sizeof a));
  fprintf(err, "try more devices, a larger mesh, --zero 3, or a smaller batch\n");
}

/* CARVE_DEBUG_ILP=1: every variable's strategies with cost and memory, and
 * every edge's resharding costs. */
static void dump_problem(const Problem *P, const Solution *S, FILE *out) {
  for (int x = 0; x < P->nvars; x++) {
    const Var *v = &P->vars[x];
    fprintf(out, "var %d: %s (x%d), chosen %d\n", x, P->C.g->nodes[v->leader]->name, v->count, S->choice[x]);
    for (int s = 0; s < v->ns; s++) {
      char b[64];
      Spec o = v->layout_model ? tensor_spec(v->layout_model, 0, &v->st[s]) : layout_of(P, v->leader, s);
      fprintf(out, "  %2d ax=(%d,%d) a2a=%d rs=(%d,%d) out=%-12s cost %.4g mem %.4g\n", s, v->st[s].ax[0],
              v->st[s].ax[1], v->st[s].a2a, v->st[s].rs[0], v->st[s].rs[1], spec_str(&o, b, sizeof b), v->cost[s],
              v->mem[s]);
    }
  }
  for (int e = 0; e < P->nedges; e++) {
    const Edge *E = &P->edges[e];
    fprintf(out, "edge %d: var %d -> var %d (%s)\n", e, E->u, E->v, E->key);
    for (int l = 0; l < E->nl; l++)
      for (int m = 0; m < E->nm; m++) {
        char b1[64], b2[64];
        fprintf(out, "  %-10s %d -> %-10s %d/%d %.4g\n", spec_str(&E->lu[l].s, b1, 64), E->lu[l].rg,
                spec_str(&E->lv[m].s, b2, 64), E->lv[m].rg, E->lv[m].parts, E->c[l * E->nm + m]);
      }
  }
}

/* The sum over variables of each one's least cost (memory: its least
 * memory). Cost: a lower bound on the objective (the edges' resharding costs
 * are never negative). Memory: the least memory of any plan; the memory row
 * is the only one that couples the variables' choices (the edge variables
 * follow any choice), so the problem is feasible exactly when this fits. */
static double least_sum(const Problem *P, bool memory) {
  double sum = 0;
  for (int x = 0; x < P->nvars; x++) {
    const double *v = memory ? P->vars[x].mem : P->vars[x].cost;
    double least = v[0];
    for (int s = 1; s < P->vars[x].ns; s++) least = fmin(least, v[s]);
    sum += least;
  }
  return sum;
}

Plan *plan_intra(const Graph *g, const Cluster *cl, const Mesh *me, const PlanOptions *o, FILE *err) {
  CARVE_ASSERT(g->grad != NULL, "the planner takes a training graph");
  Problem P = {0};
  P.C.g = g, P.C.me = me, P.C.o = o, P.C.act_bytes = o->mixed ? 2 : 4;
  if (!build_vars(&P, err)) return NULL;
  keep_strategies(&P);
  int lo = o->zero >= 0 ? o->zero : 0, hi = o->zero >= 0 ? o->zero : 3;
  Solution S = {0};
  last_cut = false;
  for (int z = lo; z <= hi; z++) {
    P.C.zero = z;
    add_costs(&P);
    if (least_sum(&P, true) > me->memory) { /* no plan fits at this ZeRO stage: no need to ask the solver */
      S = (Solution){0};
      continue;
    }
    if (!P.edges_made) { /* the resharding costs do not depend on the ZeRO stage: made once */
      add_edges(&P);
      add_self_costs(&P);
      P.edges_made = true;
    }
    prune(&P);
    if (o->cutoff > 0 && least_sum(&P, false) >= o->cutoff) { /* it fits, but cannot beat the cutoff: no solve */
      last_cut = true;
      return NULL;
    }
    S = solve(&P, me->memory, o->time_limit > 0 ? o->time_limit : 60, o->node_limit, o->cutoff, false);
    if (S.cut) { /* it fits (this is its ZeRO stage) but cannot beat the cutoff */
      last_cut = true;
      return NULL;
    }
    if (S.feasible) break;
    if (S.timed_out && o->node_limit > 0 && z < hi) continue; /* a search: the next stage may be easy */
    if (S.timed_out && o->node_limit > 0) {
      fprintf(err, "carve: error: the solver found no plan within %d branch-and-bound nodes on the %dx%d mesh\n",
              o->node_limit, me->n[0], me->n[1]);
      return NULL;
    }
    if (S.timed_out) {
      fprintf(err,
              "carve: error: the solver found no plan within the time limit (%g s) on the %dx%d mesh; "
              "give it more with --time-limit\n",
              o->time_limit > 0 ? o->time_limit : 60, me->n[0], me->n[1]);
      return NULL;
    }
  }
  if (!S.feasible) {
    if (!o->quiet && !P.edges_made) add_edges(&P);
    if (!o->quiet)
      explain_infeasible(&P, me, err); /* searches skip the explanation: it is another ILP */
    else
      fprintf(err, "carve: error: no plan fits in memory\n");
    return NULL;
  }
  keep_instance(&P, me->memory);
  if (getenv("CARVE_DEBUG_ILP")) dump_problem(&P, &S, err);
  return assemble(&P, &S, cl, o);
}

/* Every n0 x n1 mesh of all the cluster's devices, each planned; the fastest
 * is returned. With `log`, one line per mesh tried. */
Plan *plan_best_mesh(const Graph *g, const Cluster *cl, const PlanOptions *o, FILE *log, FILE *err) {
  int total = cluster_devices(cl);
  Plan *best = NULL;
  char *why = NULL;
  size_t whylen = 0;
  for (int n0 = 1; n0 <= total; n0++) {
    if (total % n0 || (n0 == total && total > 1)) continue; /* N x 1 is 1 x N with the axes swapped */
    Mesh me;
    if (!mesh_make(cl, n0, total / n0, o->mixed, &me, err)) continue;
    FILE *quiet = open_memstream(&why, &whylen);
    Plan *p = plan_intra(g, cl, &me, o, quiet);
    fclose(quiet);
    if (log) {
      const char *reason = why && *why ? why : "no plan\n";
      if (!strncmp(reason, "carve: error: ", 14)) reason += 14;
      fprintf(log, "mesh %dx%d: ", n0, total / n0);
      if (p)
        fprintf(log, "%.4g s per step\n", p->compute_s + p->comm_s);
      else
        fprintf(log, "%.*s\n", (int)strcspn(reason, "\n"), reason);
    }
    if (p && (!best || p->objective < best->objective)) best = p;
    if (!p && n0 == total && !best) fputs(why, err); /* explain with the last mesh */
    free(why);
    why = NULL;
  }
  if (log && best) fprintf(log, "best: %dx%d\n\n", best->mesh.n[0], best->mesh.n[1]);
  return best;
}
