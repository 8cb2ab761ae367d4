/* lower.c: what both code generators (codegen.c, one rank; distribute.c,
 * one program per rank) need to build a program: buffers, instructions, and
 * the placement of transient buffers in the arena. */
#include "lower.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64

int prog_buf(Program *p, int *cap, const char *name, DType dt, const Shape *s, BufKind kind) {
  if (p->nbufs == *cap) {
    *cap = *cap ? 2 * *cap : 256;
    Buffer *v = arena_alloc(sizeof(Buffer) * (size_t)*cap);
    if (p->nbufs) memcpy(v, p->bufs, sizeof(Buffer) * (size_t)p->nbufs);
    p->bufs = v;
  }
  Buffer *b = &p->bufs[p->nbufs];
  *b = (Buffer){
      .name = name, .dtype = dt, .shape = *s, .kind = kind, .offset = -1, .bytes = shape_numel(s) * dtype_size(dt)};
  return p->nbufs++;
}

#define HASH(x, h) hash_bytes(&(x), sizeof(x), h)

uint64_t prog_recipe(const Graph *g, const Train *t, uint64_t seed) {
  uint64_t h = hash_str(CARVE_VERSION) ^ hash_str(g->model ? g->model : "");
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    h = hash_bytes(n->name, strlen(n->name), h);
    h = HASH(n->op, h), h = HASH(n->in, h), h = HASH(n->shape, h), h = HASH(n->dtype, h), h = HASH(n->i, h);
    h = HASH(n->f, h), h = HASH(n->labels, h), h = HASH(n->init, h), h = HASH(n->init_a, h), h = HASH(n->init_b, h);
  }
  h = HASH(t->opt, h), h = HASH(t->lr, h), h = HASH(t->beta1, h), h = HASH(t->beta2, h), h = HASH(t->eps, h);
  h = HASH(t->wd, h), h = HASH(t->momentum, h), h = HASH(t->clip, h), h = HASH(t->warmup, h);
  h = HASH(t->microbatches, h), h = HASH(t->precision, h);
  return HASH(seed, h);
}

Instr *prog_emit(PtrVec *list, OpKind op, int out) {
  Instr *in = arena_alloc(sizeof(Instr));
  in->op = op;
  in->out = out;
  ptrvec_push(list, in);
  return in;
}

Instr *prog_emit1(PtrVec *list, OpKind op, int out, int x) {
  Instr *in = prog_emit(list, op, out);
  in->nin = 1;
  in->in[0] = x;
  return in;
}

typedef struct Interval {
  int buf, def, last;
} Interval;

/* iv's n intervals in order of key (def or last, in [first, end)), ties in
   buffer order: a counting sort, as keys are instruction indices. */
static void sort_by(Interval *out, const Interval *iv, int n, bool by_last, int first, int end) {
  int *start = xcalloc((size_t)(end - first + 1), sizeof(int));
  for (int k = 0; k < n; k++) start[(by_last ? iv[k].last : iv[k].def) - first + 1]++;
  for (int i = 1; i <= end - first; i++) start[i] += start[i - 1];
  for (int k = 0; k < n; k++) out[start[(by_last ? iv[k].last : iv[k].def) - first]++] = iv[k];
  free(start);
}

static int64_t aligned(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* The arena's free ranges above the persistent buffers, by offset; the last
   runs to the end of the address space. */
typedef struct Holes {
  struct Hole {
    int64_t at, end;
  } * v;
  int n, cap;
} Holes;

/* First fit: the lowest free range of `size` bytes. */
static int64_t hole_take(Holes *H, int64_t size) {
  int k = 0;
  while (H->v[k].end - H->v[k].at < size) k++; /* the last hole is endless */
  int64_t at = H->v[k].at;
  H->v[k].at += size;
  if (H->v[k].at == H->v[k].end) memmove(H->v + k, H->v + k + 1, sizeof *H->v * (size_t)(--H->n - k));
  return at;
}

/* Frees [at, end), merging it with the free ranges it touches. */
static void hole_give(Holes *H, int64_t at, int64_t end) {
  int lo = 0, hi = H->n; /* k: the first hole above it */
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (H->v[mid].at < at)
      lo = mid + 1;
    else
      hi = mid;
  }
  int k = lo;
  bool left = k > 0 && H->v[k - 1].end == at, right = k < H->n && H->v[k].at == end;
  if (left && right) {
    H->v[k - 1].end = H->v[k].end;
    memmove(H->v + k, H->v + k + 1, sizeof *H->v * (size_t)(--H->n - k));
  } else if (left) {
    H->v[k - 1].end = end;
  } else if (right) {
    H->v[k].at = at;
  } else {
    if (H->n == H->cap) H->v = xrealloc(H->v, sizeof *H->v * (size_t)(H->cap *= 2));
    memmove(H->v + k + 1, H->v + k, sizeof *H->v * (size_t)(H->n++ - k));
    H->v[k] = (struct Hole){at, end};
  }
}

/* Transient buffers in order of definition, each at the lowest offset free
   over its live interval (first fit); a buffer's range is free again once
   the instruction after its last use is reached. Returns the top. */
static int64_t place_transient(Program *p, const Interval *all, int n, int64_t base, int first, int end) {
  Interval *iv = xmalloc(sizeof(Interval) * (size_t)(n + 1)), *byend = xmalloc(sizeof(Interval) * (size_t)(n + 1));
  sort_by(iv, all, n, false, first, end);
  sort_by(byend, all, n, true, first, end);
  Holes H = {xmalloc(sizeof(struct Hole) * 16), 1, 16};
  H.v[0] = (struct Hole){base, INT64_MAX};
  int64_t top = base;
  for (int i = 0, e = 0; i < n; i++) {
    for (; e < n && byend[e].last < iv[i].def; e++) {
      const Buffer *b = &p->bufs[byend[e].buf];
      if (aligned(b->bytes) > 0) hole_give(&H, b->offset, b->offset + aligned(b->bytes));
    }
    int64_t size = aligned(p->bufs[iv[i].buf].bytes);
    int64_t at = size > 0 ? hole_take(&H, size) : base; /* nothing to hold: the bottom */
    p->bufs[iv[i].buf].offset = at;
    if (at + size > top) top = at + size;
  }
  free(iv);
  free(byend);
  free(H.v);
  return top;
}

int prog_bucket(Program *p, int *cap, Buckets *b, const char *name, const int *members, int n) {
  int64_t span = 0;
  for (int k = 0; k < n; k++) {
    CARVE_ASSERT(p->bufs[members[k]].dtype == DT_F32, "a gradient bucket holds f32 sums");
    span += aligned(p->bufs[members[k]].bytes);
  }
  Shape s = {1, {span / (int64_t)sizeof(float)}};
  int id = prog_buf(p, cap, name, DT_F32, &s, BUF_GRAD);
  if (b->n + 1 >= b->cap) {
    b->cap = b->cap ? 2 * b->cap : 16;
    b->bufs = xrealloc(b->bufs, sizeof(int) * (size_t)b->cap);
    b->start = xrealloc(b->start, sizeof(int) * (size_t)(b->cap + 1));
  }
  if (b->nmember + n > b->member_cap) {
    b->member_cap = 2 * (b->nmember + n);
    b->member = xrealloc(b->member, sizeof(int) * (size_t)b->member_cap);
  }
  b->bufs[b->n] = id;
  b->start[b->n] = b->nmember;
  memcpy(b->member + b->nmember, members, sizeof(int) * (size_t)n);
  b->nmember += n;
  b->start[++b->n] = b->nmember;
  return id;
}

/* Per buffer: 1 + the bucket it is in or spans, 0 if none. */
static int *bucket_of(const Program *p, const Buckets *bk) {
  int *of = xcalloc((size_t)p->nbufs + 1, sizeof(int));
  for (int k = 0; bk && k < bk->n; k++) {
    of[bk->bufs[k]] = k + 1;
    for (int m = bk->start[k]; m < bk->start[k + 1]; m++) of[bk->member[m]] = k + 1;
  }
  return of;
}

void prog_place(Program *p, const PtrVec *step, int first, int end, const Buckets *bk) {
  int64_t off = 0;
  int *in_bucket = bucket_of(p, bk);
  for (int b = 0; b < p->nbufs; b++) { /* persistent: parameters, their copies, gradients, state, scalars */
    BufKind k = p->bufs[b].kind;
    if (k == BUF_ACT || k == BUF_INPUT || in_bucket[b]) continue;
    p->bufs[b].offset = off;
    off += aligned(p->bufs[b].bytes);
  }
  for (int k = 0; bk && k < bk->n; k++) { /* each bucket's members one after another: the bucket */
    p->bufs[bk->bufs[k]].offset = off;
    for (int m = bk->start[k]; m < bk->start[k + 1]; m++) {
      p->bufs[bk->member[m]].offset = off;
      off += aligned(p->bufs[bk->member[m]].bytes);
    }
    CARVE_ASSERT(off == p->bufs[bk->bufs[k]].offset + p->bufs[bk->bufs[k]].bytes, "a bucket spans its members");
  }
  free(in_bucket);
  Interval *iv = xcalloc((size_t)p->nbufs + 1, sizeof(Interval));
  for (int b = 0; b < p->nbufs; b++) iv[b] = (Interval){b, -1, -1};
  for (int i = first; i < end; i++) {
    const Instr *in = step->v[i];
    if (in->out >= 0 && iv[in->out].def < 0) iv[in->out].def = i;
    if (in->out >= 0) iv[in->out].last = i;
    for (int k = 0; k < in->nin; k++) iv[in->in[k]].last = i;
  }
  int n = 0;
  for (int b = 0; b < p->nbufs; b++) {
    BufKind k = p->bufs[b].kind;
    if ((k == BUF_ACT || k == BUF_INPUT) && iv[b].def >= 0) iv[n++] = iv[b];
  }
  p->arena_bytes = place_transient(p, iv, n, off, first, end);
  free(iv);
}

/* ---------------------------------------------------------------- hoisting
 *
 * A transfer moves up past the compute before it until it meets an
 * instruction that writes what it reads, or reads or writes what it writes
 * (by buffer: a bucket and each of its members are one), and never past
 * another transfer: each rank's order of transfers, which the rendezvous
 * check holds free of deadlock, does not change. How far it may go:
 *   - a persistent output (gradient sums and their buckets, the norm's sum
 *     of squares, a parameter gathered back after its update): as far as
 *     that allows, so that a layer's gradient reduction starts once its
 *     sums are final and runs beside the rest of the backward pass;
 *   - a gather of a persistent buffer into a transient one (ZeRO 3's
 *     parameters, with the bf16 cast of the shard made for it moving along):
 *     one layer ahead, no higher than the first reader of the previous
 *     layer's first gather, so a layer's parameters arrive while the layer
 *     before computes, and the arena holds one layer's more;
 *   - sends and receives: where they are (codegen pairs them into the
 *     groups the rendezvous check proves; the runtime's thread already
 *     sends without holding up the compute);
 *   - any other transient output: where it is (its life is the arena's). */

typedef struct Stores {
  int *bucket; /* per buffer: 1 + its bucket (spanning or member), or 0 */
  bool *spans; /* per buffer: a bucket's own buffer */
} Stores;

/* Do buffers x and y share bytes? */
static bool shared(const Stores *S, int x, int y) {
  if (x < 0 || y < 0) return false;
  return x == y || (S->bucket[x] && S->bucket[x] == S->bucket[y] && (S->spans[x] || S->spans[y]));
}

/* Must transfer c stay below instruction a? */
static bool depends(const Stores *S, const Instr *a, const Instr *c) {
  if (instr_comm(a) || shared(S, a->out, c->out)) return true;
  for (int k = 0; k < c->nin; k++)
    if (shared(S, a->out, c->in[k])) return true;
  for (int k = 0; k < a->nin; k++)
    if (shared(S, a->in[k], c->out)) return true;
  return false;
}

static bool persistent(const Program *p, int b) {
  return b >= 0 && p->bufs[b].kind != BUF_ACT && p->bufs[b].kind != BUF_INPUT;
}

/* 1 when the instruction before transfer v[j] is a cast of a persistent
   buffer into the transfer's input (ZeRO 3's bf16 copy of a parameter's
   shard, made to be gathered): it moves up with the transfer; else 0. */
static int cast_for(const Program *p, void *const *v, int first, int j) {
  const Instr *c = v[j], *x = j > first ? v[j - 1] : NULL;
  return x && x->op == OP_CAST && c->nin && x->out == c->in[0] && persistent(p, x->in[0]);
}

/* The persistent buffer a parameter gather at v[j] gathers (through the
   cast made for it), or -1 when v[j] is no such gather. */
static int gathered_from(const Program *p, void *const *v, int first, int j) {
  const Instr *c = v[j];
  if (c->op != OP_ALL_GATHER || persistent(p, c->out)) return -1;
  if (persistent(p, c->in[0])) return c->in[0];
  return cast_for(p, v, first, j) ? ((const Instr *)v[j - 1])->in[0] : -1;
}

/* The first reader of buffer b after position q, or -1. */
static int first_reader(void *const *v, int q, int end, int b) {
  for (int k = q + 1; k < end; k++) {
    const Instr *r = v[k];
    for (int m = 0; m < r->nin; m++)
      if (r->in[m] == b) return k;
  }
  return -1;
}

/* The highest place transfer v[j] (with `with` instructions before it
   moving along) may take, given the previous transfer at prev (-1: none)
   and the layer of each persistent buffer. */
static int hoist_floor(const Program *p, void *const *v, int first, int j, int with, int prev, const int *layer) {
  const Instr *c = v[j];
  int lo = prev >= 0 ? prev + 1 : first, at = j - with, src = gathered_from(p, v, first, j);
  if (c->op == OP_SEND || c->op == OP_RECV) return at;
  if (persistent(p, c->out)) return lo;
  if (src < 0 || !layer) return at;
  for (int q = first; q < at; q++) { /* the previous layer's first gather: after its first reader */
    int from = gathered_from(p, v, first, q);
    if (from < 0 || layer[from] != layer[src] - 1) continue;
    int r = first_reader(v, q, at, ((const Instr *)v[q])->out);
    return r < 0 ? at : r + 1 > lo ? r + 1 : lo;
  }
  return at;
}

/* May instructions v[from .. to] all move above a? */
static bool free_of(const Stores *S, const Instr *a, void *const *v, int from, int to) {
  for (int k = from; k <= to; k++)
    if (depends(S, a, v[k])) return false;
  return true;
}

void prog_hoist_comm(const Program *p, PtrVec *step, int first, int end, const Buckets *bk, const int *layer) {
  Stores S = {bucket_of(p, bk), xcalloc((size_t)p->nbufs + 1, sizeof(bool))};
  for (int k = 0; bk && k < bk->n; k++) S.spans[bk->bufs[k]] = true;
  void **v = step->v, *moving[2];
  for (int j = first, prev = -1; j < end; j++) {
    if (!instr_comm(v[j])) continue;
    int with = cast_for(p, v, first, j), at = j - with, n = with + 1;
    int lo = hoist_floor(p, v, first, j, with, prev, layer), t = at;
    while (t > lo && free_of(&S, v[t - 1], v, at, j)) t--;
    memcpy(moving, v + at, sizeof(void *) * (size_t)n);
    memmove(v + t + n, v + t, sizeof(void *) * (size_t)(at - t));
    memcpy(v + t, moving, sizeof(void *) * (size_t)n);
    prev = t + with;
  }
  free(S.bucket);
  free(S.spans);
}

int prog_clip(Program *p, int *cap, PtrVec *step, const Train *t, const int *grads, const double *weight, int n,
              int group) {
  Shape scalar = {0};
  int clip = prog_buf(p, cap, "grad_clip_factor", DT_F32, &scalar, BUF_SCALAR);
  if (t->clip <= 0) {
    prog_emit(step, OP_FILL, clip)->f[0] = 1;
    return clip;
  }
  int ss = prog_buf(p, cap, "grad_sumsq", DT_F32, &scalar, BUF_SCALAR);
  prog_emit(step, OP_FILL, ss)->f[0] = 0;
  for (int k = 0; k < n; k++) prog_emit1(step, OP_SUMSQ, ss, grads[k])->f[0] = weight ? weight[k] : 1;
  if (group >= 0) prog_emit1(step, OP_ALL_REDUCE, ss, ss)->i[0] = group;
  prog_emit1(step, OP_CLIP, clip, ss)->f[0] = t->clip;
  return clip;
}

void prog_finish(Program *p, const PtrVec *init, const PtrVec *step) {
  p->ninit = init->n;
  p->init = arena_alloc(sizeof(Instr) * (size_t)(init->n + 1));
  for (int i = 0; i < init->n; i++) p->init[i] = *(Instr *)init->v[i];
  p->nstep = step->n;
  p->step = arena_alloc(sizeof(Instr) * (size_t)(step->n + 1));
  for (int i = 0; i < step->n; i++) p->step[i] = *(Instr *)step->v[i];
}

void prog_optimizer(Program *p, int *cap, PtrVec *init, PtrVec *step, const Train *t, const Node *param,
                    const Shape *state_shape, const Instr *piece, int target, int grad, int clip) {
  int nstate = t->opt == OPT_ADAMW ? 2 : 1, state[2] = {-1, -1};
  for (int k = 0; k < nstate; k++) {
    const char *what = t->opt == OPT_SGD ? "mom" : k ? "v" : "m";
    state[k] = prog_buf(p, cap, arena_printf("%s.%s", param->name, what), DT_F32, state_shape, BUF_OPTSTATE);
    p->bufs[state[k]].whole = param->shape;
    Instr *in = prog_emit(init, OP_INIT, state[k]);
    memcpy(in->i, piece->i, sizeof in->i); /* the same piece of the whole as the parameter's update */
    in->i[0] = INIT_ZEROS;
  }
  double wd = param->shape.rank >= 2 ? t->wd : 0; /* matrices decay; biases and norm gains do not */
  Instr *in = prog_emit(step, t->opt == OPT_ADAMW ? OP_ADAMW : OP_SGD, target);
  in->i[0] = t->warmup;
  in->in[0] = grad;
  in->in[1] = state[0];
  if (t->opt == OPT_ADAMW) {
    in->nin = 4;
    in->in[2] = state[1];
    in->in[3] = clip;
    in->f[0] = t->lr, in->f[1] = t->beta1, in->f[2] = t->beta2, in->f[3] = t->eps, in->f[4] = wd;
  } else {
    in->nin = 3;
    in->in[2] = clip;
    in->f[0] = t->lr, in->f[1] = t->momentum, in->f[2] = wd;
  }
}

bool grad_chain_of(const Graph *g, const Node *n, const Node *p) {
  if (n->op != OP_ADD || n->phase != PH_BACKWARD) return false;
  size_t len = strlen(p->name);
  return strncmp(n->name, "d.", 2) == 0 && strncmp(n->name + 2, p->name, len) == 0 &&
         strncmp(n->name + 2 + len, "/acc.", 5) == 0 && g->grad[p->id] >= 0;
}

static void mark_grad(const Graph *g, bool *m, int node, const Node *p) {
  m[node] = true;
  const Node *n = g->nodes[node];
  if (grad_chain_of(g, n, p))
    for (int k = 0; k < n->nin; k++) mark_grad(g, m, n->in[k], p);
}

DType *value_dtypes(const Graph *g, Precision prec) {
  DType *dt = arena_alloc(sizeof(DType) * (size_t)(g->n + 1));
  bool *grad = arena_alloc(sizeof(bool) * (size_t)(g->n + 1));
  for (int p = 0; p < g->nfwd && g->grad; p++)
    if (g->nodes[p]->op == OP_PARAM && g->grad[p] >= 0) mark_grad(g, grad, g->grad[p], g->nodes[p]);
  for (int i = 0; i < g->n; i++) {
    const Node *n = g->nodes[i];
    bool keep = n->dtype != DT_F32 || n->op == OP_PARAM || n->shape.rank == 0 || grad[i];
    dt[i] = prec == PREC_BF16 && !keep ? DT_BF16 : n->dtype;
  }
  return dt;
}

int prog_work_copy(Program *p, int *cap, PtrVec *list, const char *name, const Shape *s, int master) {
  int w = prog_buf(p, cap, arena_printf("%s.bf16", name), DT_BF16, s, BUF_WORK);
  prog_emit1(list, OP_CAST, w, master);
  return w;
}

DType prog_einsum_dtype(const Program *p, const int *ins) {
  return p->bufs[ins[0]].dtype == DT_BF16 || p->bufs[ins[1]].dtype == DT_BF16 ? DT_BF16 : DT_F32;
}

int prog_cast(Program *p, int *cap, PtrVec *list, int b, DType dt, int into) {
  if (into < 0) {
    Buffer B = p->bufs[b]; /* prog_buf may move the array */
    into = prog_buf(p, cap, arena_printf("%s/%s", B.name, dtype_name(dt)), dt, &B.shape, BUF_ACT);
  }
  prog_emit1(list, OP_CAST, into, b);
  return into;
}
