/* interp.c: the program interpreter. One allocation (the arena) holds every
 * buffer; the step loop is a `for` over instructions and a `switch` over
 * opcodes, each case a call into kernels.c or einsum.c.
 *
 * Before anything runs, program_check verifies every instruction against
 * its buffers' shapes and dtypes, so a kernel never reads or writes outside
 * a buffer whatever the program file says. */
#include "runtime.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct Run {
  const Program *p;
  const RunOptions *o;
  unsigned char *arena;
  int step;    /* 1-based step being executed */
  double loss; /* accumulated by OP_LOSS */
  EinsumScratch scratch;
  const char *error;        /* a data error found by a kernel */
  double op_time[OP_COUNT]; /* seconds per opcode, with RunOptions.profile */
  int64_t op_count[OP_COUNT];
  Transport *net, *own_net; /* own_net: made here (local), closed here */
  float *pad;               /* zero-padded staging for gathers and scatters */
  double comm_s;            /* seconds in communication instructions */
  double *trace;            /* when set: start and end of each step instruction */
  size_t pad_cap;
} Run;

static float *F(Run *R, int b) { return (float *)(R->arena + R->p->bufs[b].offset); }
static int32_t *ibuf(Run *R, int b) { return (int32_t *)(R->arena + R->p->bufs[b].offset); }
static const Shape *S(const Program *p, int b) { return &p->bufs[b].shape; }
static int64_t N(const Program *p, int b) { return shape_numel(&p->bufs[b].shape); }
static int64_t last(const Program *p, int b) {
  const Shape *s = S(p, b);
  return s->rank ? s->d[s->rank - 1] : 1;
}

/* [outer, n, inner] around axis */
static void around(const Shape *s, int axis, int64_t *outer, int64_t *n, int64_t *inner) {
  *outer = *inner = 1;
  for (int i = 0; i < axis; i++) *outer *= s->d[i];
  *n = s->d[axis];
  for (int i = axis + 1; i < s->rank; i++) *inner *= s->d[i];
}

/* ---------------------------------------------------------------- checks */

/* This rank's position in group g, or -1. */
static int group_pos(const Program *p, int64_t g, int rank) {
  if (g < 0 || g >= p->ngroups) return -1;
  for (int k = 0; k < p->group_size[g]; k++)
    if (p->group_ranks[g][k] == rank) return k;
  return -1;
}

/* Gathers, scatters and shards split a flat buffer of n elements into
   group-size chunks of c, the last one zero-padded. */
static bool chunks_fit(int64_t n, int64_t c, int size) { return c > 0 && n <= c * size && n > c * (size - 1); }

static const char *check_comm(const Program *p, const Instr *in) {
  int o = in->out, x = in->nin ? in->in[0] : -1;
  if (in->op == OP_SEND || in->op == OP_RECV) {
    if (in->i[0] < 0 || in->i[0] >= p->world || in->i[0] == p->rank) return "peer is not another rank of the world";
    if (in->i[1] < 0 || in->i[1] > (1 << 30)) return "tag out of range";
    return NULL;
  }
  int pos = group_pos(p, in->i[0], p->rank);
  if (pos < 0) return "this rank is not in the instruction's group";
  int size = p->group_size[in->i[0]];
  bool moves = in->op == OP_GATHER_DIM || in->op == OP_SPLIT_DIM || in->op == OP_ALL_TO_ALL_DIM;
  if (moves ? p->bufs[o].dtype != p->bufs[x].dtype : p->bufs[o].dtype != DT_F32 || p->bufs[x].dtype != DT_F32)
    return "expected f32 buffers";
  if (in->op == OP_GATHER_DIM || in->op == OP_SPLIT_DIM) { /* the whole tensor is `size` parts along axis */
    const Shape *whole = S(p, in->op == OP_GATHER_DIM ? o : x), *part = S(p, in->op == OP_GATHER_DIM ? x : o);
    int64_t a = in->i[1];
    if (a < 0 || a >= whole->rank || whole->rank != part->rank) return "axis out of range";
    for (int k = 0; k < whole->rank; k++)
      if (whole->d[k] != (k == a ? part->d[k] * size : part->d[k])) return "shapes are not the group's parts";
    return NULL;
  }
  if (in->op == OP_ALL_TO_ALL_DIM) { /* split along `from` in, along `to` out */
    const Shape *a = S(p, x), *b = S(p, o);
    int64_t f = in->i[1], t = in->i[2];
    if (f < 0 || t < 0 || f == t || f >= a->rank || t >= a->rank || a->rank != b->rank) return "axes out of range";
    for (int k = 0; k < a->rank; k++)
      if (k == f ? b->d[k] != a->d[k] * size : k == t ? a->d[k] != b->d[k] * size : a->d[k] != b->d[k])
        return "shapes are not the group's parts";
    return NULL;
  }
  switch (in->op) {
  case OP_ALL_REDUCE: return N(p, o) == N(p, x) ? NULL : "input and output sizes differ";
  case OP_ALL_GATHER: return chunks_fit(N(p, o), N(p, x), size) ? NULL : "output is not the group's chunks";
  default: return chunks_fit(N(p, x), N(p, o), size) ? NULL : "input is not the group's chunks";
  }
}

static const char *check_instr(const Program *p, const Instr *in) {
  const Buffer *B = p->bufs;
  int o = in->out;
  const Shape *os = o >= 0 ? S(p, o) : NULL;
  for (int k = 0; k < in->nin; k++)
    if (in->in[k] < 0) return "missing input buffer";
  bool moves = in->op == OP_GATHER_DIM || in->op == OP_SPLIT_DIM || in->op == OP_ALL_TO_ALL_DIM; /* 4-byte, kept */
  bool want_i32_out =
      (moves && in->nin == 1 && B[in->in[0]].dtype == DT_I32) ||
      (in->op == OP_LOAD && (in->i[0] == SRC_TOKENS || in->i[0] == SRC_NEXT_TOKENS || in->i[0] == SRC_CLASSES));
  if (o >= 0 && (B[o].dtype == DT_I32) != want_i32_out) return "output buffer has the wrong dtype";
  int x = in->nin ? in->in[0] : -1;
  if (op_info[in->op].flags & OPF_COMM) return check_comm(p, in);
  switch (in->op) {
  case OP_FILL:
  case OP_INIT:
  case OP_LOAD:
    if (in->op == OP_INIT && (in->i[0] < INIT_ZEROS || in->i[0] > INIT_UNIFORM)) return "bad init kind";
    if (in->op == OP_INIT && (in->i[1] < 0 || in->i[1] > (1ll << 48))) return "bad element offset";
    if (in->op == OP_INIT && in->i[3] > 1 &&
        (in->i[3] > (1 << 20) || in->i[4] < 0 || in->i[4] >= in->i[3] || in->i[5] < 1 || in->i[6] < 1 ||
         in->i[5] > (1ll << 40) || in->i[6] > (1ll << 40)))
      return "bad part of a split dim";
    if (in->op == OP_LOAD && (in->i[0] < SRC_TOKENS || in->i[0] > SRC_UNIFORM)) return "bad load kind";
    if (in->op == OP_LOAD && (in->i[1] < 0 || in->i[1] > (1ll << 40))) return "bad row offset";
    if (in->op == OP_LOAD && want_i32_out && (in->f[0] < 1 || in->f[0] > 65536)) return "bad token range";
    return NULL;
  case OP_EINSUM: {
    const Shape *ins[2] = {S(p, in->in[0]), in->nin > 1 ? S(p, in->in[1]) : NULL};
    for (int k = 0; k < in->nin; k++)
      if (B[in->in[k]].dtype != DT_F32) return "einsum of a non-f32 buffer";
    return einsum_check(in->spec, in->nin, ins, os);
  }
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_DIV: {
    int64_t n = N(p, o), na = N(p, in->in[0]), nb = N(p, in->in[1]);
    if ((na != n && nb != n) || n % na || n % nb) return "operands do not broadcast to the output";
    break;
  }
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX:
  case OP_EXPAND:
  case OP_MAX_BWD: {
    const Shape *big = in->op == OP_EXPAND || in->op == OP_MAX_BWD ? os : S(p, x);
    if (in->i[0] < 0 || in->i[0] >= big->rank) return "axis out of range";
    if (N(p, in->op == OP_EXPAND ? x : in->op == OP_MAX_BWD ? in->in[1] : o) * big->d[in->i[0]] != shape_numel(big))
      return "reduction shapes disagree";
    if (in->op == OP_MAX_BWD && N(p, x) != N(p, o)) return "max_bwd shapes disagree";
    return NULL;
  }
  case OP_LAYERNORM:
  case OP_RMSNORM:
  case OP_LN_BWD_X:
  case OP_RMS_BWD_X:
    if (N(p, in->in[1]) != last(p, x) || (in->op == OP_LAYERNORM && N(p, in->in[2]) != last(p, x)))
      return "gain/bias size";
    if (N(p, o) != N(p, x) || last(p, o) != last(p, x) ||
        (in->nin == 3 && in->op != OP_LAYERNORM && N(p, in->in[2]) != N(p, x)))
      return "shapes disagree";
    if (in->f[0] <= 0) return "eps must be positive";
    return NULL;
  case OP_LN_BWD_G:
  case OP_RMS_BWD_G:
    if (N(p, o) != last(p, x) || N(p, in->in[1]) != N(p, x) || in->f[0] <= 0) return "shapes disagree";
    return NULL;
  case OP_EMBED:
    if (S(p, x)->rank != 2 || B[in->in[1]].dtype != DT_I32 || N(p, o) != N(p, in->in[1]) * S(p, x)->d[1])
      return "embed shapes";
    return NULL;
  case OP_EMBED_BWD:
    if (os->rank != 2 || B[x].dtype != DT_I32 || N(p, in->in[1]) != N(p, x) * os->d[1]) return "embed_bwd shapes";
    return NULL;
  case OP_XENT:
  case OP_XENT_BWD:
    if (B[in->in[1]].dtype != DT_I32 || N(p, x) != N(p, in->in[1]) * last(p, x)) return "cross_entropy shapes";
    if (in->op == OP_XENT ? N(p, o) != 1 : (N(p, o) != N(p, x) || N(p, in->in[2]) != 1)) return "cross_entropy shapes";
    return NULL;
  case OP_MSE:
  case OP_MSE_BWD:
    if (N(p, x) != N(p, in->in[1]) || (in->op == OP_MSE ? N(p, o) != 1 : N(p, o) != N(p, x))) return "mse shapes";
    return NULL;
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE:
  case OP_MOE_COMBINE_BWD: {
    const Shape *big = in->op == OP_MOE_COMBINE_BWD ? S(p, in->in[1]) : os;
    int64_t e = last(p, x);
    if (big->rank < 2 || big->d[big->rank - 2] != e || N(p, x) * big->d[big->rank - 1] != shape_numel(big))
      return "moe shapes";
    if (in->i[0] < 1 || in->i[0] > e) return "topk out of range";
    if (in->op == OP_MOE_COMBINE_BWD && N(p, o) != N(p, x)) return "moe shapes";
    return NULL;
  }
  case OP_SUM_TO:
    if (N(p, o) == 0 || N(p, x) % N(p, o)) return "sum_to shapes";
    return NULL;
  case OP_LOSS:
  case OP_SUMSQ:
    if (in->op == OP_LOSS ? N(p, x) != 1 : N(p, o) != 1) return "needs a scalar";
    return NULL;
  case OP_CLIP:
    if (N(p, o) != 1 || N(p, x) != 1) return "needs scalars";
    return NULL;
  case OP_ADAMW:
  case OP_SGD:
    for (int k = 0; k + 1 < in->nin; k++)
      if (N(p, in->in[k]) != N(p, o)) return "optimizer buffers disagree";
    if (N(p, in->in[in->nin - 1]) != 1) return "clip factor must be a scalar";
    return NULL;
  default: /* elementwise unary, binary backward, scale, copy, acc, reshape */
    for (int k = 0; k < in->nin; k++)
      if (N(p, in->in[k]) != N(p, o)) return "input and output sizes differ";
    if (in->op == OP_SOFTMAX && in->i[0] && (os->rank < 2 || os->d[os->rank - 1] != os->d[os->rank - 2]))
      return "causal softmax needs square last dims";
  }
  for (int k = 0; k < in->nin; k++)
    if (B[in->in[k]].dtype != DT_F32) return "expected f32 inputs";
  return NULL;
}

static bool program_check(const Program *p, FILE *err) {
  const Instr *lists[2] = {p->init, p->step};
  int counts[2] = {p->ninit, p->nstep};
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < counts[s]; i++) {
      const char *why = check_instr(p, &lists[s][i]);
      if (why) {
        fprintf(err, "carve: error: program for rank %d, %s instruction %d (%s): %s\n", p->rank, s ? "step" : "init", i,
                op_info[lists[s][i].op].name, why);
        return false;
      }
    }
  return true;
}

/* ---------------------------------------------------------------- data */

static void load(Run *R, const Instr *in) {
  const Program *p = R->p;
  const Buffer *b = &p->bufs[in->out];
  int64_t n = shape_numel(&b->shape);
  int64_t rows = b->shape.rank ? b->shape.d[0] : 1, per = n / (rows ? rows : 1);
  uint64_t dstep = (uint64_t)(R->o->data_step ? R->o->data_step : R->step);
  uint64_t key = hash_str(b->name) ^ p->seed ^ (dstep << 32);
  int kind = (int)in->i[0];
  const TokenData *td = R->o->data;
  for (int64_t r = 0; r < rows; r++) {
    int64_t grow = in->i[1] + r; /* the row in the global batch */
    if (kind == SRC_TOKENS || kind == SRC_NEXT_TOKENS) {
      int shift = kind == SRC_NEXT_TOKENS;
      int32_t *out = ibuf(R, in->out) + r * per;
      uint64_t wkey = p->seed ^ (dstep * 0x9e3779b97f4a7c15ull);
      if (td) {
        int64_t span = td->n - per - 1;
        int64_t pos = span > 0 ? (int64_t)(rng_u64(wkey, (uint64_t)grow) % (uint64_t)span) : 0;
        for (int64_t j = 0; j < per; j++) out[j] = td->tok[(pos + j + shift) % td->n];
      } else { /* synthetic: a random sequence per row; labels are it shifted */
        for (int64_t j = 0; j < per; j++)
          out[j] = (int32_t)(rng_u64(wkey, (uint64_t)(grow * (per + 1) + j + shift)) % (uint64_t)in->f[0]);
      }
    } else {
      for (int64_t j = 0; j < per; j++) {
        uint64_t idx = (uint64_t)(grow * per + j);
        if (kind == SRC_CLASSES)
          ibuf(R, in->out)[r * per + j] = (int32_t)(rng_u64(key, idx) % (uint64_t)in->f[0]);
        else if (kind == SRC_NORMAL)
          F(R, in->out)[r * per + j] = (float)in->f[0] * rng_normal(key, idx);
        else
          F(R, in->out)[r * per + j] = (float)(in->f[0] + (in->f[1] - in->f[0]) * rng_uniform(key, idx));
      }
    }
  }
}

static void init(Run *R, const Instr *in) {
  const Buffer *b = &R->p->bufs[in->out];
  float *x = F(R, in->out);
  int64_t n = shape_numel(&b->shape);
  uint64_t key = hash_str(b->name) ^ R->p->seed;
  /* element e is element q = offset + e of the part (a ZeRO-3 shard starts
     at `offset`); with dim `axis` split in `parts` (the part's dims around
     it: len, inner), element (o, j, r) of the part is element
     (o, part x len + j, r) of the whole tensor */
  uint64_t off = (uint64_t)in->i[1];
  int64_t parts = in->i[3] > 1 ? in->i[3] : 1, part = in->i[4], len = in->i[5], inner = in->i[6];
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t e = 0; e < n; e++) {
    uint64_t i = off + (uint64_t)e; /* the element's index in the whole tensor */
    if (parts > 1) {
      int64_t q = (int64_t)i, o = q / (len * inner), j = q / inner % len, r = q % inner;
      i = (uint64_t)((o * parts * len + part * len + j) * inner + r);
    }
    switch (in->i[0]) {
    case INIT_ZEROS: x[e] = 0; break;
    case INIT_ONES: x[e] = 1; break;
    case INIT_CONST: x[e] = (float)in->f[0]; break;
    case INIT_NORMAL: x[e] = (float)in->f[0] * rng_normal(key, i); break;
    default: x[e] = (float)(in->f[0] + (in->f[1] - in->f[0]) * rng_uniform(key, i)); break;
    }
  }
}

/* ---------------------------------------------------------------- optimizer */

static float lr_at(const Instr *in, int step) {
  float lr = (float)in->f[0];
  if (in->i[0] > 0 && step < in->i[0]) lr *= (float)step / (float)in->i[0];
  return lr;
}

static void adamw(Run *R, const Instr *in) {
  float *p = F(R, in->out), *g = F(R, in->in[0]), *m = F(R, in->in[1]), *v = F(R, in->in[2]);
  float clip = F(R, in->in[3])[0], lr = lr_at(in, R->step);
  float b1 = (float)in->f[1], b2 = (float)in->f[2], eps = (float)in->f[3], wd = (float)in->f[4];
  float c1 = 1.0f - powf(b1, (float)R->step), c2 = 1.0f - powf(b2, (float)R->step);
  int64_t n = N(R->p, in->out);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i] * clip;
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    p[i] -= lr * ((m[i] / c1) / (sqrtf(v[i] / c2) + eps) + wd * p[i]);
  }
}

static void sgd(Run *R, const Instr *in) {
  float *p = F(R, in->out), *g = F(R, in->in[0]), *mom = F(R, in->in[1]);
  float clip = F(R, in->in[2])[0], lr = lr_at(in, R->step), mu = (float)in->f[1], wd = (float)in->f[2];
  int64_t n = N(R->p, in->out);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    mom[i] = mu * mom[i] + g[i] * clip;
    p[i] -= lr * (mom[i] + wd * p[i]);
  }
}

/* ---------------------------------------------------------------- communication */

static float *pad_buf(Run *R, int64_t n) {
  if ((size_t)n > R->pad_cap) {
    free(R->pad);
    R->pad_cap = (size_t)n;
    R->pad = xmalloc(sizeof(float) * R->pad_cap);
  }
  return R->pad;
}

static const char *communicate(Run *R, const Instr *in) {
  const Program *p = R->p;
  double t0 = now_seconds();
  Transport *t = R->net;
  int o = in->out, x = in->nin ? in->in[0] : -1, g = (int)in->i[0];
  bool ok = true;
  switch (in->op) {
  case OP_SEND: ok = t->send(t, F(R, x), p->bufs[x].bytes, g, (int)in->i[1]); break;
  case OP_RECV: ok = t->recv(t, F(R, o), p->bufs[o].bytes, g, (int)in->i[1]); break;
  case OP_ALL_REDUCE:
    if (o != x) k_copy(F(R, o), F(R, x), N(p, o));
    ok = t->all_reduce(t, g, F(R, o), N(p, o));
    break;
  case OP_ALL_GATHER: {
    int64_t c = N(p, x), whole = c * p->group_size[g];
    float *dst = whole == N(p, o) ? F(R, o) : pad_buf(R, whole);
    ok = t->all_gather(t, g, F(R, x), c, dst);
    if (dst != F(R, o)) k_copy(F(R, o), dst, N(p, o));
    break;
  }
  case OP_REDUCE_SCATTER:
  case OP_SHARD: {
    int64_t c = N(p, o), whole = c * p->group_size[g];
    const float *src = F(R, x);
    if (whole != N(p, x)) {
      float *pad = pad_buf(R, whole);
      k_copy(pad, src, N(p, x));
      memset(pad + N(p, x), 0, sizeof(float) * (size_t)(whole - N(p, x)));
      src = pad;
    }
    if (in->op == OP_SHARD)
      k_copy(F(R, o), src + c * group_pos(p, g, p->rank), c);
    else
      ok = t->reduce_scatter(t, g, src, c, F(R, o));
    break;
  }
  case OP_GATHER_DIM:
  case OP_SPLIT_DIM: { /* [outer, parts x len, inner] <-> part [outer, len, inner] */
    bool gather = in->op == OP_GATHER_DIM;
    const Shape *part = S(p, gather ? x : o);
    int64_t outer = 1, len = part->d[in->i[1]], inner = 1, parts = p->group_size[g];
    for (int k = 0; k < part->rank; k++)
      if (k != in->i[1]) *(k < in->i[1] ? &outer : &inner) *= part->d[k];
    int64_t n = outer * len * inner;
    const float *all = F(R, x);
    if (gather) { /* the members' parts one after another, then interleaved into place */
      float *tmp = pad_buf(R, n * parts);
      ok = t->all_gather(t, g, F(R, x), n, tmp);
      all = tmp;
    }
    int me = group_pos(p, g, p->rank);
    float *dst = F(R, o);
    for (int64_t q = 0; q < (gather ? parts : 1); q++)
      for (int64_t a = 0; a < outer; a++) {
        int64_t pi = gather ? q : me;
        const float *src = gather ? all + q * n + a * len * inner : all + (a * parts + pi) * len * inner;
        float *d = gather ? dst + (a * parts + pi) * len * inner : dst + a * len * inner;
        memcpy(d, src, sizeof(float) * (size_t)(len * inner));
      }
    break;
  }
  case OP_ALL_TO_ALL_DIM: { /* cut along `to` and send part k to member k; place what member k sends as part k
                              along `from` */
    int64_t f = in->i[1], to = in->i[2], parts = p->group_size[g], n = N(p, x) / parts;
    const Shape *xs = S(p, x), *ys = S(p, o);
    int64_t ot = 1, lt = ys->d[to], it = 1, of = 1, lf = xs->d[f], inf = 1;
    for (int k = 0; k < xs->rank; k++) {
      if (k != to) *(k < to ? &ot : &it) *= xs->d[k];
      if (k != f) *(k < f ? &of : &inf) *= ys->d[k];
    }
    float *send = pad_buf(R, 2 * n * parts), *recv = send + n * parts;
    const float *src = F(R, x);
    for (int64_t k = 0; k < parts; k++)
      for (int64_t a = 0; a < ot; a++)
        memcpy(send + k * n + a * lt * it, src + (a * parts + k) * lt * it, sizeof(float) * (size_t)(lt * it));
    ok = t->all_to_all(t, g, send, n, recv);
    float *dst = F(R, o);
    for (int64_t k = 0; k < parts; k++)
      for (int64_t a = 0; a < of; a++)
        memcpy(dst + (a * parts + k) * lf * inf, recv + k * n + a * lf * inf, sizeof(float) * (size_t)(lf * inf));
    break;
  }
  default: CARVE_ASSERT(0, "not a communication instruction");
  }
  R->comm_s += now_seconds() - t0;
  return ok ? NULL : "communication failed";
}

/* ---------------------------------------------------------------- dispatch */

static void exec(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->nin ? in->in[0] : -1, y = in->nin > 1 ? in->in[1] : -1;
  int64_t outer, n, inner;
  switch (in->op) {
  case OP_FILL: {
    float *d = F(R, o);
    for (int64_t i = 0; i < N(p, o); i++) d[i] = (float)in->f[0];
    break;
  }
  case OP_INIT: init(R, in); break;
  case OP_LOAD: load(R, in); break;
  case OP_EINSUM: {
    const float *ins[2] = {F(R, x), y >= 0 ? F(R, y) : NULL};
    const Shape *ss[2] = {S(p, x), y >= 0 ? S(p, y) : NULL};
    einsum_run(in->spec, in->nin, ins, ss, F(R, o), S(p, o), &R->scratch);
    break;
  }
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_DIV: k_binary(in->op, F(R, o), N(p, o), F(R, x), N(p, x), F(R, y), N(p, y)); break;
  case OP_SCALE: k_scale(F(R, o), F(R, x), N(p, o), (float)in->f[0], (float)in->f[1]); break;
  case OP_GELU:
  case OP_RELU:
  case OP_SILU:
  case OP_TANH:
  case OP_EXP:
  case OP_RSQRT: k_unary(in->op, F(R, o), F(R, x), N(p, o)); break;
  case OP_GELU_BWD:
  case OP_RELU_BWD:
  case OP_SILU_BWD:
  case OP_TANH_BWD:
  case OP_RSQRT_BWD: k_unary_bwd(in->op, F(R, o), F(R, x), F(R, y), N(p, o)); break;
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX:
    around(S(p, x), (int)in->i[0], &outer, &n, &inner);
    k_reduce(in->op, F(R, o), F(R, x), outer, n, inner);
    break;
  case OP_EXPAND:
    around(S(p, o), (int)in->i[0], &outer, &n, &inner);
    k_expand(F(R, o), F(R, x), outer, n, inner, (float)in->f[0]);
    break;
  case OP_MAX_BWD:
    around(S(p, o), (int)in->i[0], &outer, &n, &inner);
    k_max_bwd(F(R, o), F(R, x), F(R, y), outer, n, inner);
    break;
  case OP_SOFTMAX: k_softmax(F(R, o), F(R, x), N(p, o) / last(p, o), last(p, o), in->i[0] != 0); break;
  case OP_SOFTMAX_BWD: k_softmax_bwd(F(R, o), F(R, x), F(R, y), N(p, o) / last(p, o), last(p, o)); break;
  case OP_LAYERNORM:
    k_layernorm(F(R, o), F(R, x), F(R, y), F(R, in->in[2]), N(p, o) / last(p, o), last(p, o), (float)in->f[0]);
    break;
  case OP_RMSNORM: k_rmsnorm(F(R, o), F(R, x), F(R, y), N(p, o) / last(p, o), last(p, o), (float)in->f[0]); break;
  case OP_LN_BWD_X:
  case OP_RMS_BWD_X:
    k_layernorm_bwd_x(F(R, o), F(R, x), F(R, y), F(R, in->in[2]), N(p, o) / last(p, o), last(p, o), (float)in->f[0],
                      in->op == OP_RMS_BWD_X);
    break;
  case OP_LN_BWD_G:
  case OP_RMS_BWD_G:
    k_layernorm_bwd_g(F(R, o), F(R, x), F(R, y), N(p, x) / last(p, x), last(p, x), (float)in->f[0],
                      in->op == OP_RMS_BWD_G);
    break;
  case OP_EMBED:
    if (!k_embed(F(R, o), F(R, x), ibuf(R, y), N(p, y), S(p, x)->d[0], S(p, x)->d[1]))
      R->error = "a token id is outside the embedding table";
    break;
  case OP_EMBED_BWD:
    if (!k_embed_bwd(F(R, o), ibuf(R, x), F(R, y), N(p, x), S(p, o)->d[0], S(p, o)->d[1]))
      R->error = "a token id is outside the embedding table";
    break;
  case OP_XENT:
    if (!k_xent(F(R, o), F(R, x), ibuf(R, y), N(p, y), last(p, x))) R->error = "a label is outside the classes";
    break;
  case OP_XENT_BWD:
    if (!k_xent_bwd(F(R, o), F(R, x), ibuf(R, y), F(R, in->in[2]), N(p, y), last(p, x)))
      R->error = "a label is outside the classes";
    break;
  case OP_MSE: k_mse(F(R, o), F(R, x), F(R, y), N(p, x)); break;
  case OP_MSE_BWD: k_mse_bwd(F(R, o), F(R, x), F(R, y), F(R, in->in[2]), N(p, x)); break;
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE:
    k_moe_gate(F(R, o), in->op == OP_MOE_COMBINE, F(R, x), N(p, x) / last(p, x), last(p, x), last(p, o), (int)in->i[0]);
    break;
  case OP_MOE_COMBINE_BWD:
    k_moe_combine_bwd(F(R, o), F(R, x), F(R, y), N(p, x) / last(p, x), last(p, x), last(p, y), (int)in->i[0]);
    break;
  case OP_RESHAPE:
  case OP_COPY: k_copy(F(R, o), F(R, x), N(p, o)); break;
  case OP_SUM_TO: k_sum_to(F(R, o), F(R, x), N(p, x) / N(p, o), N(p, o)); break;
  case OP_ACC: k_acc(F(R, o), F(R, x), N(p, o)); break;
  case OP_LOSS: R->loss += in->f[0] * F(R, x)[0]; break;
  case OP_SUMSQ: F(R, o)[0] += (float)(in->f[0] * k_sumsq(F(R, x), N(p, x))); break;
  case OP_CLIP: {
    float norm = sqrtf(F(R, x)[0]);
    F(R, o)[0] = norm > (float)in->f[0] ? (float)in->f[0] / (norm + 1e-6f) : 1.0f;
    break;
  }
  case OP_ADAMW: adamw(R, in); break;
  case OP_SGD: sgd(R, in); break;
  default:
    CARVE_ASSERT(op_info[in->op].flags & OPF_COMM, "instruction checked but not executable");
    R->error = communicate(R, in);
  }
}

static int run_list(Run *R, const Instr *list, int n) {
  bool prof = R->o->profile;
  for (int i = 0; i < n; i++) {
    double t0 = prof ? now_seconds() : 0;
    if (R->trace && list == R->p->step) R->trace[2 * i] = now_seconds();
    exec(R, &list[i]);
    if (R->trace && list == R->p->step) R->trace[2 * i + 1] = now_seconds();
    if (prof) {
      R->op_time[list[i].op] += now_seconds() - t0;
      R->op_count[list[i].op]++;
    }
    if (R->error) {
      fprintf(stderr, "carve: error: rank %d, step %d, instruction %d (%s): %s\n", R->p->rank, R->step, i,
              op_info[list[i].op].name, R->error);
      return 1;
    }
  }
  return 0;
}

struct Runtime {
  Run r;
};

/* Every check before the first step ends in an agreement over the world,
   so a failure on one rank stops all of them: the failing rank says why,
   the others stop quietly, and none waits for a peer that gave up. */
Runtime *runtime_new(const Program *p, const RunOptions *o) {
  Transport *net = o->net, *own = NULL;
  if (!net) net = own = transport_local();
  bool ok = program_check(p, stderr);
  if (ok && p->world != net->world) {
    if (net->rank == 0) /* every rank sees it; one says it */
      fprintf(stderr, "carve: error: the program is for %d rank%s, but this run has %d: start it with mpirun -np %d\n",
              p->world, p->world == 1 ? "" : "s", net->world, p->world);
    ok = false;
  } else if (ok && p->rank != net->rank) {
    fprintf(stderr, "carve: error: rank %d was given the program of rank %d\n", net->rank, p->rank);
    ok = false;
  }
  if (ok && o->data && p->vocab && o->data->vocab > p->vocab) {
    fprintf(stderr, "carve: error: %s has a vocabulary of %lld tokens, but the model's token inputs take %lld\n",
            o->data->path, (long long)o->data->vocab, (long long)p->vocab);
    ok = false;
  }
  if (ok && o->data && p->tokens_per_step &&
      o->data->n < 2 * (p->tokens_per_step / (p->microbatches ? p->microbatches : 1))) {
    fprintf(stderr, "carve: error: %s has %lld tokens, too few for batches of this model\n", o->data->path,
            (long long)o->data->n);
    ok = false;
  }
  Runtime *rt = xcalloc(1, sizeof(Runtime));
  Run *R = &rt->r;
  R->p = p;
  R->o = o;
  R->net = net;
  R->own_net = own;
  if (ok) {
    R->arena = aligned_alloc(64, (size_t)((p->arena_bytes + 63) / 64 * 64 + 64));
    if (!R->arena) {
      char b[32];
      fprintf(stderr, "carve: error: rank %d cannot allocate its %s arena\n", p->rank,
              fmt_bytes((double)p->arena_bytes, b, sizeof b));
      ok = false;
    }
  }
  ok = net->agree(net, ok) && net->groups(net, p->ngroups, p->group_size, p->group_ranks);
  ok = net->agree(net, ok && run_list(R, p->init, p->ninit) == 0);
  if (!ok) {
    runtime_free(rt);
    return NULL;
  }
  return rt;
}

int runtime_step(Runtime *rt, double *loss) {
  Run *R = &rt->r;
  R->step++;
  R->loss = 0;
  int rc = run_list(R, R->p->step, R->p->nstep);
  if (rc == 0 && !R->net->flush(R->net)) rc = 1;
  if (rc) return rc;
  /* the loss instructions weigh each rank's share; the step's loss is their sum */
  if (R->net->world > 1) R->loss = R->net->sum(R->net, R->loss);
  if (loss) *loss = R->loss;
  return 0;
}

float *runtime_buffer(Runtime *rt, const char *name, int64_t *numel) {
  const Program *p = rt->r.p;
  for (int b = 0; b < p->nbufs; b++)
    if (strcmp(p->bufs[b].name, name) == 0) {
      if (numel) *numel = shape_numel(&p->bufs[b].shape);
      return (float *)(rt->r.arena + p->bufs[b].offset);
    }
  return NULL;
}

/* Time by opcode, largest first. */
static void print_profile(const Run *R, FILE *out) {
  double total = 0;
  for (int op = 0; op < OP_COUNT; op++) total += R->op_time[op];
  fprintf(out, "time by instruction (all steps, including the first):\n");
  bool done[OP_COUNT] = {0};
  for (;;) {
    int best = -1;
    for (int op = 0; op < OP_COUNT; op++)
      if (!done[op] && R->op_count[op] && (best < 0 || R->op_time[op] > R->op_time[best])) best = op;
    if (best < 0) break;
    done[best] = true;
    fprintf(out, "  %-18s %9.1f ms %5.1f%%  %8lld calls\n", op_info[best].name, R->op_time[best] * 1e3,
            100 * R->op_time[best] / (total > 0 ? total : 1), (long long)R->op_count[best]);
  }
}

void runtime_free(Runtime *rt) {
  if (!rt) return;
  free(rt->r.arena);
  free(rt->r.scratch.p);
  free(rt->r.pad);
  free(rt->r.trace);
  if (rt->r.own_net) rt->r.own_net->close(rt->r.own_net);
  free(rt);
}

/* Writes every parameter this rank holds: "name numel offset parts part
   len inner\n", then the raw floats: element e is element offset + e of the
   tensor (a ZeRO-3 shard) or of this rank's part of it, one of `parts`
   slices of a dim with `len` elements of it here and `inner` elements in the
   dims after it (see init). Tests compare runs on different rank counts. */
bool runtime_save_params(Runtime *rt, const char *path, FILE *err) {
  const Program *p = rt->r.p;
  FILE *f = fopen(path, "wb");
  bool ok = f != NULL;
  for (int b = 0; ok && b < p->nbufs; b++) {
    const Buffer *B = &p->bufs[b];
    if (B->kind != BUF_PARAM) continue;
    int64_t at[MAXIATTR] = {0};
    for (int i = 0; i < p->ninit; i++)
      if (p->init[i].op == OP_INIT && p->init[i].out == b) memcpy(at, p->init[i].i, sizeof at);
    ok = fprintf(f, "%s %lld %lld %lld %lld %lld %lld\n", B->name, (long long)shape_numel(&B->shape), (long long)at[1],
                 (long long)at[3], (long long)at[4], (long long)at[5], (long long)at[6]) > 0 &&
         fwrite(rt->r.arena + B->offset, 1, (size_t)B->bytes, f) == (size_t)B->bytes;
  }
  if (f) ok &= fclose(f) == 0;
  if (!ok) fprintf(err, "carve: error: cannot write parameters to '%s': %s\n", path, strerror(errno));
  return ok;
}

static bool is_comm(OpKind op) { /* moves data between ranks (a shard or a cut does not) */
  return (op_info[op].flags & OPF_COMM) && op != OP_SHARD && op != OP_SPLIT_DIM;
}

/* The traced step as Chrome trace events, one track per rank: compute and
   communication instructions by name; the gaps are where the rank waited. */
static char *trace_events(const Run *R, double t0, size_t *len) {
  char *text = NULL;
  FILE *f = open_memstream(&text, len);
  const Program *p = R->p;
  fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":%d,\"args\":{\"name\":\"rank %d\"}}", p->rank,
          p->rank);
  for (int i = 0; i < p->nstep; i++) {
    const Instr *in = &p->step[i];
    int b = in->out >= 0 ? in->out : in->in[0];
    fprintf(f,
            ",\n{\"name\":\"%s %s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":0,\"tid\":%d,\"ts\":%.3f,"
            "\"dur\":%.3f}",
            op_info[in->op].name, p->bufs[b].name, is_comm(in->op) ? "communication" : "compute", p->rank,
            (R->trace[2 * i] - t0) * 1e6, (R->trace[2 * i + 1] - R->trace[2 * i]) * 1e6);
  }
  fclose(f);
  return text;
}

/* Every rank's events to rank 0, which writes the file. */
static bool trace_write(Run *R, double t0, const char *path) {
  Transport *t = R->net;
  size_t len = 0;
  char *mine = trace_events(R, t0, &len);
  int64_t block = (int64_t)t->max(t, (double)len) + 1;
  char *in = xcalloc((size_t)block, 1), *all = xmalloc((size_t)(block * t->world));
  memcpy(in, mine, len);
  bool ok = t->gather_all(t, in, block, all);
  if (ok && t->rank == 0) {
    const char *tmp = arena_printf("%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    ok = f != NULL;
    if (ok) {
      fprintf(f, "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"args\":{\"name\":"
                 "\"ranks (one step)\"}}");
      for (int r = 0; r < t->world; r++) fputs(all + (size_t)r * (size_t)block, f);
      fprintf(f, "\n],\"displayTimeUnit\":\"ms\"}\n");
      ok = !ferror(f);
      ok &= fclose(f) == 0;
    }
    if (ok) ok = rename(tmp, path) == 0;
    if (!ok) fprintf(stderr, "carve: error: cannot write the trace '%s': %s\n", path, strerror(errno));
  }
  free(mine);
  free(in);
  free(all);
  return ok;
}

int runtime_run(const Program *p, const RunOptions *o) {
  FILE *out = o->out ? o->out : stdout;
  Runtime *rt = runtime_new(p, o);
  if (!rt) return 1;
  Transport *net = rt->r.net;
  bool many = net->world > 1, speak = !o->quiet && net->rank == 0;
  int rc = 0;
  double t_total = 0, comm_total = 0;
  char b1[32], b2[32];
  for (int s = 1; s <= o->steps && rc == 0; s++) {
    bool traced = o->trace && s == o->steps;
    if (traced) { /* one start for every rank's track */
      rt->r.trace = xcalloc(2 * (size_t)p->nstep + 2, sizeof(double));
      net->agree(net, true);
    }
    double loss, t0 = now_seconds(), c0 = rt->r.comm_s;
    rc = runtime_step(rt, &loss);
    double dt = now_seconds() - t0, dc = rt->r.comm_s - c0;
    if (rc && many) net->abort(net, 1); /* the other ranks may be waiting on this one */
    if (rc) break;
    if (traced && !trace_write(&rt->r, t0, o->trace)) rc = 1;
    if (many) dt = net->max(net, dt), dc = net->max(net, dc); /* the step ends when its slowest rank does */
    if (s > 1 || o->steps == 1) t_total += dt, comm_total += dc;
    if (!isfinite(loss)) {
      if (net->rank == 0)
        fprintf(stderr, "carve: error: step %d: the loss is %g; training diverged (try a lower --lr)\n", s, loss);
      rc = 1;
      break;
    }
    if (o->losses) o->losses[s - 1] = loss;
    if (speak && (s == 1 || s == o->steps || (o->log_every > 0 && s % o->log_every == 0))) {
      fprintf(out, "step %5d  loss %.6f  %7.1f ms", s, loss, dt * 1e3);
      if (p->tokens_per_step) fprintf(out, "  %9.0f tok/s", (double)p->tokens_per_step / dt);
      fprintf(out, "  %7.2f GFLOP/s%s\n", p->flops_per_step / p->world / dt * 1e-9, many ? " per rank" : "");
      fflush(out);
    }
  }
  double arena = many ? net->max(net, (double)p->arena_bytes + (double)rt->r.pad_cap * 4) : (double)p->arena_bytes;
  if (rc == 0 && speak && o->steps > 0) {
    int timed = o->steps > 1 ? o->steps - 1 : 1;
    double per = t_total / timed;
    fprintf(out, "done: %d steps", o->steps);
    if (many) fprintf(out, " on %d ranks", p->world);
    fprintf(out, ", %.1f ms/step (after the first)", per * 1e3);
    if (p->tokens_per_step) fprintf(out, ", %s tok/s", fmt_si((double)p->tokens_per_step / per, b1, sizeof b1));
    fprintf(out, ", %s FLOP/s%s (einsum FLOPs), ", fmt_si(p->flops_per_step / p->world / per, b2, sizeof b2),
            many ? " per rank" : "");
    fprintf(out, "%s %s\n", many ? "peak memory per rank" : "arena", fmt_bytes(arena, b1, sizeof b1));
    if (many)
      fprintf(out, "communication: %.1f ms/step on the busiest rank (%.0f%%)\n", comm_total / timed * 1e3,
              100 * comm_total / (t_total > 0 ? t_total : 1));
    if (o->step_s) *o->step_s = per;
  }
  if (rc == 0 && o->save_params && !runtime_save_params(rt, arena_printf("%s.rank%d", o->save_params, p->rank), stderr))
    rc = 1;
  if (o->profile) print_profile(&rt->r, out);
  runtime_free(rt);
  return rc;
}
