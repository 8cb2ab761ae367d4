/* comm.c: communication instructions. Each moves arena data through the
 * transport (MPI, or the local one for world 1): collectives in the buffer's
 * dtype, the cuts and interleavings that gathers and all-to-alls need done
 * here on host memory, with a staging buffer for padded chunks. A backend
 * whose arena is device memory has each operand staged through host memory
 * (a host-staged path that works with any transport). */
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* Host memory of buffer b: the arena itself on a host backend; on a device
   backend, the host copy staged for this instruction (stage_in). */
static void *H(Run *R, int b) {
  void *p = R->be->host(R->be, R->p->bufs[b].offset);
  if (p) return p;
  CARVE_ASSERT(b == R->sx || b == R->so, "a communication operand that was not staged");
  return b == R->sx ? R->hx : R->ho;
}
static int64_t N(const Program *p, int b) { return shape_numel(&p->bufs[b].shape); }
static size_t E(const Program *p, int b) { return (size_t)dtype_size(p->bufs[b].dtype); }

/* *buf holding at least `bytes` (its contents are not kept) */
static void *grown(void **buf, size_t *cap, size_t bytes) {
  if (bytes > *cap) {
    free(*buf);
    *cap = bytes;
    *buf = xmalloc(bytes);
  }
  return *buf;
}
static void *pad_buf(Run *R, size_t bytes) { return grown(&R->pad, &R->pad_cap, bytes); }

/* A device arena (a GPU backend without a device transport): the
   instruction's input is downloaded into host memory and its output
   uploaded after it, so the transport works on host memory as ever. The
   copies wait for the compute that precedes them. */
static void stage_in(Run *R, const Instr *in) {
  const Program *p = R->p;
  int x = in->nin ? in->in[0] : -1, o = in->op == OP_SEND ? -1 : in->out;
  size_t bx = x >= 0 ? (size_t)(p->bufs[x].bytes + 63) / 64 * 64 : 0,
         bo = o >= 0 && o != x ? (size_t)p->bufs[o].bytes : 0;
  R->sx = x, R->so = o;
  R->hx = grown(&R->stage, &R->stage_cap, bx + bo);
  R->ho = o == x ? R->hx : (unsigned char *)R->stage + bx;
  if (x >= 0) R->be->download(R->be, R->hx, p->bufs[x].offset, p->bufs[x].bytes);
}
static void stage_out(Run *R) {
  if (R->so >= 0) R->be->upload(R->be, R->p->bufs[R->so].offset, R->ho, R->p->bufs[R->so].bytes);
  R->sx = R->so = -1;
}

/* The staging bytes instruction `in` takes (see the instructions below). */
static int64_t staging_of(const Program *p, const Instr *in) {
  int x = in->nin ? in->in[0] : -1, o = in->out;
  int64_t parts =
      (op_info[in->op].flags & OPF_COMM) && in->op != OP_SEND && in->op != OP_RECV ? p->group_size[in->i[0]] : 1;
  switch (in->op) {
  case OP_ALL_GATHER: return N(p, x) * parts == N(p, o) ? 0 : N(p, x) * parts * (int64_t)E(p, o);
  case OP_REDUCE_SCATTER:
  case OP_SHARD: return N(p, o) * parts == N(p, x) ? 0 : N(p, o) * parts * (int64_t)E(p, x);
  case OP_GATHER_DIM: return N(p, x) * parts * (int64_t)E(p, x);
  case OP_ALL_TO_ALL_DIM: return 2 * N(p, x) * (int64_t)E(p, x);
  default: return 0;
  }
}

int64_t comm_staging_bytes(const Program *p) {
  int64_t most = 0;
  for (int i = 0; i < p->ninit; i++) most = staging_of(p, &p->init[i]) > most ? staging_of(p, &p->init[i]) : most;
  for (int i = 0; i < p->nstep; i++) most = staging_of(p, &p->step[i]) > most ? staging_of(p, &p->step[i]) : most;
  return most;
}

/* all_gather into a padded block when the output is not a whole number of chunks */
static bool all_gather(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  int64_t c = N(p, x), whole = c * p->group_size[g];
  void *dst = whole == N(p, o) ? H(R, o) : pad_buf(R, (size_t)whole * E(p, o));
  bool ok = R->net->all_gather(R->net, g, H(R, x), c, dst, p->bufs[x].dtype);
  if (dst != H(R, o)) memcpy(H(R, o), dst, (size_t)N(p, o) * E(p, o));
  return ok;
}

/* reduce_scatter and shard: the input zero-padded to whole chunks */
static bool scatter(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  size_t es = E(p, x);
  int64_t c = N(p, o), whole = c * p->group_size[g];
  const unsigned char *src = H(R, x);
  if (whole != N(p, x)) {
    unsigned char *pad = pad_buf(R, (size_t)whole * es);
    memcpy(pad, src, (size_t)N(p, x) * es);
    memset(pad + (size_t)N(p, x) * es, 0, (size_t)(whole - N(p, x)) * es);
    src = pad;
  }
  if (in->op == OP_SHARD) {
    memcpy(H(R, o), src + (size_t)(c * group_pos(p, g, p->rank)) * es, (size_t)c * es);
    return true;
  }
  return R->net->reduce_scatter(R->net, g, src, c, H(R, o), p->bufs[x].dtype);
}

/* [outer, parts x len, inner] <-> part [outer, len, inner] */
static bool dim_move(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  bool gather = in->op == OP_GATHER_DIM;
  const Shape *part = &p->bufs[gather ? x : o].shape;
  size_t es = E(p, x);
  int64_t outer = 1, len = part->d[in->i[1]], inner = 1, parts = p->group_size[g];
  for (int k = 0; k < part->rank; k++)
    if (k != in->i[1]) *(k < in->i[1] ? &outer : &inner) *= part->d[k];
  int64_t n = outer * len * inner;
  const unsigned char *all = H(R, x);
  bool ok = true;
  if (gather) { /* the members' parts one after another, then interleaved into place */
    unsigned char *tmp = pad_buf(R, (size_t)(n * parts) * es);
    ok = R->net->all_gather(R->net, g, H(R, x), n, tmp, p->bufs[x].dtype);
    all = tmp;
  }
  int64_t me = group_pos(p, g, p->rank);
  unsigned char *dst = H(R, o);
  size_t row = (size_t)(len * inner) * es;
  for (int64_t q = 0; q < (gather ? parts : 1); q++)
    for (int64_t a = 0; a < outer; a++) {
      int64_t pi = gather ? q : me;
      const unsigned char *src =
          gather ? all + (size_t)(q * n + a * len * inner) * es : all + (size_t)(a * parts + pi) * row;
      unsigned char *d = gather ? dst + (size_t)(a * parts + pi) * row : dst + (size_t)a * row;
      memcpy(d, src, row);
    }
  return ok;
}

/* cut along `to` and send part k to member k; place what member k sends as part k along `from` */
static bool all_to_all(Run *R, const Instr *in) {
  const Program *p = R->p;
  int o = in->out, x = in->in[0], g = (int)in->i[0];
  size_t es = E(p, x);
  int64_t f = in->i[1], to = in->i[2], parts = p->group_size[g], n = N(p, x) / parts;
  const Shape *xs = &p->bufs[x].shape, *ys = &p->bufs[o].shape;
  int64_t ot = 1, lt = ys->d[to], it = 1, of = 1, lf = xs->d[f], inf = 1;
  for (int k = 0; k < xs->rank; k++) {
    if (k != to) *(k < to ? &ot : &it) *= xs->d[k];
    if (k != f) *(k < f ? &of : &inf) *= ys->d[k];
  }
  unsigned char *send = pad_buf(R, (size_t)(2 * n * parts) * es), *recv = send + (size_t)(n * parts) * es;
  const unsigned char *src = H(R, x);
  for (int64_t k = 0; k < parts; k++)
    for (int64_t a = 0; a < ot; a++)
      memcpy(send + (size_t)(k * n + a * lt * it) * es, src + (size_t)((a * parts + k) * lt * it) * es,
             (size_t)(lt * it) * es);
  bool ok = R->net->all_to_all(R->net, g, send, n, recv, p->bufs[x].dtype);
  unsigned char *dst = H(R, o);
  for (int64_t k = 0; k < parts; k++)
    for (int64_t a = 0; a < of; a++)
      memcpy(dst + (size_t)((a * parts + k) * lf * inf) * es, recv + (size_t)(k * n + a * lf * inf) * es,
             (size_t)(lf * inf) * es);
  return ok;
}

const char *comm_exec(Run *R, const Instr *in) {
  const Program *p = R->p;
  double t0 = now_seconds();
  Transport *t = R->net;
  int o = in->out, x = in->nin ? in->in[0] : -1, g = (int)in->i[0];
  bool ok = true, staged = !R->be->host(R->be, 0);
  if (staged) stage_in(R, in);
  switch (in->op) {
  case OP_SEND: ok = t->send(t, H(R, x), p->bufs[x].bytes, g, (int)in->i[1]); break;
  case OP_RECV: ok = t->recv(t, H(R, o), p->bufs[o].bytes, g, (int)in->i[1]); break;
  case OP_ALL_REDUCE:
    if (o != x) memcpy(H(R, o), H(R, x), (size_t)p->bufs[o].bytes);
    ok = t->all_reduce(t, g, H(R, o), N(p, o), p->bufs[o].dtype);
    break;
  case OP_ALL_GATHER: ok = all_gather(R, in); break;
  case OP_REDUCE_SCATTER:
  case OP_SHARD: ok = scatter(R, in); break;
  case OP_GATHER_DIM:
  case OP_SPLIT_DIM: ok = dim_move(R, in); break;
  case OP_ALL_TO_ALL_DIM: ok = all_to_all(R, in); break;
  default: CARVE_ASSERT(0, "not a communication instruction");
  }
  if (staged) stage_out(R);
  R->comm_s += now_seconds() - t0;
  return ok ? NULL : "communication failed";
}
