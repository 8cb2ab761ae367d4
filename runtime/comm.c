/* comm.c: communication instructions, and the choice of the device
 * communication interface (comm.h) a run uses. Each instruction moves the
 * backend's memory through that interface: collectives in the buffer's
 * dtype; the cuts and interleavings that gathers, splits and all-to-alls
 * need, and the padding to whole chunks, are the backend's strided copies
 * (Backend.copy_rows) on its communication stream, into a scratch block of
 * the backend's memory (R->pad) where an operand is not a buffer as it is.
 * The communication stream waits for the compute before an instruction and
 * the compute stream for the instruction's end (backend events), so its
 * output is there for later compute without a host wait. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "runtime.h"

static unsigned char *A(Run *R, int b) { return R->be->addr(R->be, R->p->bufs[b].offset); }
static int64_t N(const Program *p, int b) { return shape_numel(&p->bufs[b].shape); }
static int64_t E(const Program *p, int b) { return dtype_size(p->bufs[b].dtype); }
/* instruction i of the init list, then of the step list */
static const Instr *nth(const Program *p, int i) { return i < p->ninit ? &p->init[i] : &p->step[i - p->ninit]; }

/* ---------------------------------------------------------------- cuts */

Cut cut_of(const Shape *s, int dim, int64_t len, int64_t parts, int64_t es) {
  Cut c = {.outer = 1, .len = len, .inner = 1, .parts = parts, .es = es};
  for (int k = 0; k < s->rank; k++)
    if (k != dim) *(k < dim ? &c.outer : &c.inner) *= s->d[k];
  return c;
}
static int64_t cut_row(const Cut *c) { return c->len * c->inner * c->es; }

void cut_take(Backend *be, const Cut *c, void *part, const void *whole, int64_t q) {
  int64_t row = cut_row(c);
  be->copy_rows(be, 1, part, row, (const unsigned char *)whole + q * row, c->parts * row, row, c->outer);
}
void cut_put(Backend *be, const Cut *c, void *whole, const void *part, int64_t q) {
  int64_t row = cut_row(c);
  be->copy_rows(be, 1, (unsigned char *)whole + q * row, c->parts * row, part, row, row, c->outer);
}
void cut_join(Backend *be, const Cut *c, void *whole, const void *parts) {
  int64_t n = c->outer * cut_row(c);
  for (int64_t q = 0; q < c->parts; q++) cut_put(be, c, whole, (const unsigned char *)parts + q * n, q);
}
void cut_deal(Backend *be, const Cut *c, void *parts, const void *whole) {
  int64_t n = c->outer * cut_row(c);
  for (int64_t q = 0; q < c->parts; q++) cut_take(be, c, (unsigned char *)parts + q * n, whole, q);
}
void comm_fit(Backend *be, void *dst, int64_t dst_bytes, const void *src, int64_t src_bytes) {
  int64_t n = src_bytes < dst_bytes ? (src_bytes > 0 ? src_bytes : 0) : dst_bytes;
  be->copy_rows(be, 1, dst, n, src, n, n, 1);
  be->copy_rows(be, 1, (unsigned char *)dst + n, dst_bytes - n, NULL, 0, dst_bytes - n, 1);
}

/* ---------------------------------------------------------------- staging */

/* The scratch bytes instruction `in` takes (see the instructions below). */
static int64_t staging_of(const Program *p, const Instr *in) {
  int x = in->nin ? in->in[0] : -1, o = in->out;
  int64_t parts =
      (op_info[in->op].flags & OPF_COMM) && in->op != OP_SEND && in->op != OP_RECV ? p->group_size[in->i[0]] : 1;
  switch (in->op) {
  case OP_ALL_GATHER: return N(p, x) * parts == N(p, o) ? 0 : N(p, x) * parts * E(p, o);
  case OP_REDUCE_SCATTER: return N(p, o) * parts == N(p, x) ? 0 : N(p, o) * parts * E(p, x);
  case OP_GATHER_DIM: return N(p, x) * parts * E(p, x);
  case OP_ALL_TO_ALL_DIM: return 2 * N(p, x) * E(p, x);
  case OP_REDUCE_SCATTER_DIM: return N(p, x) * E(p, x);
  default: return 0;
  }
}

int64_t comm_staging_bytes(const Program *p) {
  int64_t most = 0;
  for (int i = 0; i < p->ninit + p->nstep; i++)
    most = staging_of(p, nth(p, i)) > most ? staging_of(p, nth(p, i)) : most;
  return most;
}

/* ---------------------------------------------------------------- instructions */

/* An open send group ends after the next operation that is not a send. */
static bool closed(Run *R, bool ok) {
  if (R->grouped) ok = R->comm->group_end(R->comm) && ok, R->grouped = false;
  return ok;
}

/* all_gather into the scratch when the output is not a whole number of chunks */
static bool all_gather(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  int64_t c = N(p, x), whole = c * p->group_size[g];
  void *dst = whole == N(p, o) ? A(R, o) : R->pad;
  bool ok = closed(R, R->comm->all_gather(R->comm, g, A(R, x), c, dst, p->bufs[x].dtype));
  if (dst != A(R, o)) comm_fit(R->be, A(R, o), N(p, o) * E(p, o), dst, N(p, o) * E(p, o));
  return ok;
}

/* reduce_scatter: the input zero-padded to whole chunks; shard: this member's chunk of it */
static bool scatter(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  int64_t es = E(p, x), c = N(p, o), whole = c * p->group_size[g], bx = N(p, x) * es;
  if (in->op == OP_SHARD) {
    int64_t from = c * group_pos(p, g, p->rank) * es;
    comm_fit(R->be, A(R, o), c * es, A(R, x) + (from < bx ? from : bx), bx - from);
    return closed(R, true);
  }
  const void *src = A(R, x);
  if (whole != N(p, x)) comm_fit(R->be, R->pad, whole * es, src, bx), src = R->pad;
  return closed(R, R->comm->reduce_scatter(R->comm, g, src, c, A(R, o), p->bufs[x].dtype));
}

/* gather_dim: the members' parts one after another, then each into place;
   split_dim: this member's part */
static bool dim_move(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  bool gather = in->op == OP_GATHER_DIM;
  const Shape *part = &p->bufs[gather ? x : o].shape;
  Cut c = cut_of(part, (int)in->i[1], part->d[in->i[1]], p->group_size[g], E(p, x));
  if (!gather) {
    cut_take(R->be, &c, A(R, o), A(R, x), group_pos(p, g, p->rank));
    return closed(R, true);
  }
  bool ok = closed(R, R->comm->all_gather(R->comm, g, A(R, x), N(p, x), R->pad, p->bufs[x].dtype));
  cut_join(R->be, &c, A(R, o), R->pad);
  return ok;
}

/* cut along `to` and send part k to member k; place what member k sends as part k along `from` */
static bool all_to_all(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  int64_t parts = p->group_size[g], es = E(p, x), n = N(p, x) / parts * es;
  const Shape *xs = &p->bufs[x].shape, *ys = &p->bufs[o].shape;
  int f = (int)in->i[1], t = (int)in->i[2];
  Cut to = cut_of(xs, t, ys->d[t], parts, es), from = cut_of(ys, f, xs->d[f], parts, es);
  unsigned char *send = R->pad, *recv = send + n * parts;
  cut_deal(R->be, &to, send, A(R, x));
  bool ok = closed(R, R->comm->all_to_all(R->comm, g, send, n / es, recv, p->bufs[x].dtype));
  cut_join(R->be, &from, A(R, o), recv);
  return ok;
}

/* reduce_scatter_dim: the members' parts along `axis` one after another (each
   part a chunk), then a reduce-scatter of the chunks: member k keeps part k */
static bool scatter_dim(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  const Shape *part = &p->bufs[o].shape;
  Cut c = cut_of(part, (int)in->i[1], part->d[in->i[1]], p->group_size[g], E(p, x));
  cut_deal(R->be, &c, R->pad, A(R, x));
  return closed(R, R->comm->reduce_scatter(R->comm, g, R->pad, N(p, o), A(R, o), p->bufs[x].dtype));
}

static bool point_to_point(Run *R, const Instr *in) {
  const Program *p = R->p;
  int peer = (int)in->i[0], tag = (int)in->i[1];
  if (in->op == OP_RECV) return closed(R, R->comm->recv(R->comm, A(R, in->out), p->bufs[in->out].bytes, peer, tag));
  if (!R->grouped) R->comm->group_begin(R->comm), R->grouped = true;
  return R->comm->send(R->comm, A(R, in->in[0]), p->bufs[in->in[0]].bytes, peer, tag);
}

static bool all_reduce(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0];
  if (o != x) comm_fit(R->be, A(R, o), p->bufs[o].bytes, A(R, x), p->bufs[o].bytes);
  return closed(R, R->comm->all_reduce(R->comm, (int)in->i[0], A(R, o), N(p, o), p->bufs[o].dtype));
}

void comm_doing(Run *R, const Instr *in, int i, bool init) {
  snprintf(R->net->doing, sizeof R->net->doing, "%s, instruction %d (%s)",
           init ? "init" : arena_printf("step %d", R->step), i, op_info[in->op].name);
}

const char *comm_exec(Run *R, const Instr *in) {
  int done = -1;
  const char *err = comm_post(R, in, &done);
  R->be->wait(R->be, 0, done); /* later compute after the output */
  return err;
}

const char *comm_post(Run *R, const Instr *in, int *done) {
  double t0 = now_seconds();
  Backend *be = R->be;
  be->wait(be, 1, be->record(be, 0)); /* after the compute that made the operands */
  bool ok = true;
  switch (in->op) {
  case OP_SEND:
  case OP_RECV: ok = point_to_point(R, in); break;
  case OP_ALL_REDUCE: ok = all_reduce(R, in); break;
  case OP_ALL_GATHER: ok = all_gather(R, in); break;
  case OP_REDUCE_SCATTER:
  case OP_SHARD: ok = scatter(R, in); break;
  case OP_GATHER_DIM:
  case OP_SPLIT_DIM: ok = dim_move(R, in); break;
  case OP_ALL_TO_ALL_DIM: ok = all_to_all(R, in); break;
  case OP_REDUCE_SCATTER_DIM: ok = scatter_dim(R, in); break;
  default: CARVE_ASSERT(0, "not a communication instruction");
  }
  *done = be->record(be, 1);
  R->comm_s += now_seconds() - t0;
  return ok ? NULL : "communication failed";
}

bool comm_flush(Run *R) { return closed(R, true) && R->comm->flush(R->comm); }

/* ---------------------------------------------------------------- choice */

/* (runtime.h) */
bool comm_p2p_in_order(const Program *p, Transport *t, char *why, size_t n) {
  int w = t->world;
  uint64_t *mine = xcalloc(2 * (size_t)w, sizeof(uint64_t)),
           *all = xcalloc(2 * (size_t)w * (size_t)w, sizeof(uint64_t));
  for (int i = 0; i < p->ninit + p->nstep; i++) {
    const Instr *in = nth(p, i);
    if (in->op != OP_SEND && in->op != OP_RECV) continue;
    int64_t rec[2] = {in->i[1], p->bufs[in->op == OP_SEND ? in->in[0] : in->out].bytes};
    uint64_t *h = &mine[(in->op == OP_RECV) * w + in->i[0]];
    *h = hash_bytes(rec, sizeof rec, *h ? *h : 1);
  }
  bool ok = t->gather_all(t, mine, 2 * w * (int64_t)sizeof(uint64_t), all);
  for (int a = 0; ok && a < w; a++)
    for (int b = 0; ok && b < w; b++)
      if (all[(size_t)a * 2 * w + b] != all[(size_t)b * 2 * w + w + a]) {
        snprintf(why, n,
                 "rank %d's sends to rank %d come in another order than its receives (NCCL matches them in order)", a,
                 b);
        ok = false;
      }
  free(mine);
  free(all);
  return ok;
}

/* --comm nccl, or auto on the CUDA backend: NCCL where it is built in and
   every rank has a GPU of its own; NULL after a message on every rank when
   nccl was asked for and cannot be had; otherwise NULL quietly, or with a
   one-line note under auto */
static Comm *nccl_or_note(Run *R, bool asked) {
  Transport *t = R->net;
  char why[256] = "this carve was built without NCCL";
  Comm *c = NULL;
#ifdef CARVE_HAVE_NCCL
  why[0] = 0;
  if (comm_p2p_in_order(R->p, t, why, sizeof why)) c = comm_nccl(R->be, t, R->p, why, sizeof why);
#endif
  if (t->agree(t, c != NULL)) return c;
  if (c) c->close(c), c = NULL;
  if (!why[0]) snprintf(why, sizeof why, "another rank could not open it");
  if (asked)
    fprintf(stderr, "carve: error: rank %d: --comm nccl: %s\n", t->rank, why);
  else if (t->rank == 0)
    fprintf(stderr, "carve: note: communication staged through host memory, not NCCL: %s\n", why);
  return NULL;
}

/* Does any rank's program communicate? (collective over the world) */
static bool communicates(const Program *p, Transport *t) {
  bool any = false;
  for (int i = 0; i < p->ninit + p->nstep; i++) any |= (op_info[nth(p, i)->op].flags & OPF_COMM) != 0;
  return t->world == 1 ? any : t->max(t, any) > 0;
}

/* auto: NCCL on the CUDA backend where the programs communicate at all
   (nothing to gain from making communicators otherwise) */
bool comm_open(Run *R) {
  const char *want = R->o->comm_name ? R->o->comm_name : "auto";
  bool cuda = strcmp(R->be->name, "cuda") == 0, asked = strcmp(want, "nccl") == 0;
  if (asked && !cuda) {
    if (R->net->rank == 0) fprintf(stderr, "carve: error: --comm nccl needs --backend cuda\n");
    return false;
  }
  if (asked || (cuda && strcmp(want, "auto") == 0 && communicates(R->p, R->net))) R->comm = nccl_or_note(R, asked);
  if (!R->comm && asked) return false;
  if (!R->comm) R->comm = comm_host(R->be, R->net, R->p);
  int64_t pad = comm_staging_bytes(R->p);
  if (pad > 0) R->pad = R->be->alloc(R->be, pad, false), R->pad_cap = (size_t)pad;
  return true;
}

void comm_close(Run *R) {
  if (R->comm) R->comm->close(R->comm);
  if (R->pad) R->be->release(R->be, R->pad, false);
  R->comm = NULL, R->pad = NULL;
}
