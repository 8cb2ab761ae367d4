/* test_comm_pack.c: the cuts, interleavings and padding of the
 * communication instructions (runtime/comm.c), done by the backend's
 * strided copy, against the plain host loops comm.c ran before the device
 * communication interface: gather_dim's interleaving, split_dim's slice,
 * all_to_all_dim's cutting and placing, reduce_scatter_dim's parts laid
 * out as chunks, shard's slice of a padded input, reduce_scatter's zero
 * padding and a padded all_gather's trim, on random
 * shapes (odd sizes, size-1 dimensions, 1 to 5 parts, 2- and 4-byte
 * elements), on the CPU backend and on cpu-staged. And NCCL's condition on
 * point-to-point order (comm_p2p_in_order) on a world of two. */
#include <stdlib.h>
#include <string.h>

#include "../runtime/runtime.h"
#include "harness.h"

static uint64_t seed = 12345;
static int64_t pick(int64_t lo, int64_t hi) { /* [lo, hi] */
  seed = seed * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (int64_t)((seed >> 33) % (uint64_t)(hi - lo + 1));
}
static void fill(unsigned char *p, int64_t n) {
  for (int64_t i = 0; i < n; i++) p[i] = (unsigned char)pick(0, 255);
}

/* ---------------------------------------------------------------- the old host loops */

/* [outer, parts x len, inner] <-> part [outer, len, inner]: gather (all the
   members' parts one after another into place) or this member's part */
static void old_dim_move(bool gather, unsigned char *dst, const unsigned char *all, const Shape *part, int dim,
                         int64_t parts, int64_t me, size_t es) {
  int64_t outer = 1, len = part->d[dim], inner = 1;
  for (int k = 0; k < part->rank; k++)
    if (k != dim) *(k < dim ? &outer : &inner) *= part->d[k];
  int64_t n = outer * len * inner;
  size_t row = (size_t)(len * inner) * es;
  for (int64_t q = 0; q < (gather ? parts : 1); q++)
    for (int64_t a = 0; a < outer; a++) {
      int64_t pi = gather ? q : me;
      const unsigned char *src =
          gather ? all + (size_t)(q * n + a * len * inner) * es : all + (size_t)(a * parts + pi) * row;
      unsigned char *d = gather ? dst + (size_t)(a * parts + pi) * row : dst + (size_t)a * row;
      memcpy(d, src, row);
    }
}

/* all_to_all_dim's send block from x (cut along `to`) and its output from the received block (along `f`) */
static void old_a2a(unsigned char *send, unsigned char *dst, const unsigned char *src, const unsigned char *recv,
                    const Shape *xs, const Shape *ys, int f, int to, int64_t parts, size_t es) {
  int64_t n = shape_numel(xs) / parts;
  int64_t ot = 1, lt = ys->d[to], it = 1, of = 1, lf = xs->d[f], inf = 1;
  for (int k = 0; k < xs->rank; k++) {
    if (k != to) *(k < to ? &ot : &it) *= xs->d[k];
    if (k != f) *(k < f ? &of : &inf) *= ys->d[k];
  }
  for (int64_t k = 0; k < parts; k++)
    for (int64_t a = 0; a < ot; a++)
      memcpy(send + (size_t)(k * n + a * lt * it) * es, src + (size_t)((a * parts + k) * lt * it) * es,
             (size_t)(lt * it) * es);
  for (int64_t k = 0; k < parts; k++)
    for (int64_t a = 0; a < of; a++)
      memcpy(dst + (size_t)((a * parts + k) * lf * inf) * es, recv + (size_t)(k * n + a * lf * inf) * es,
             (size_t)(lf * inf) * es);
}

/* x (nx elements) zero-padded to c x parts */
static void old_pad(unsigned char *pad, const unsigned char *x, int64_t nx, int64_t whole, size_t es) {
  memcpy(pad, x, (size_t)nx * es);
  memset(pad + (size_t)nx * es, 0, (size_t)(whole - nx) * es);
}

/* ---------------------------------------------------------------- cases */

typedef struct Mem {
  Backend *be;
  unsigned char *p[6];
} Mem;
static unsigned char *get(Mem *m, int k, int64_t bytes) { return m->p[k] = m->be->alloc(m->be, bytes, false); }
static void put_back(Mem *m) {
  for (int k = 0; k < 6; k++)
    if (m->p[k]) m->be->release(m->be, m->p[k], false), m->p[k] = NULL;
}

static Shape random_shape(void) {
  Shape s = {.rank = (int)pick(1, 4)};
  for (int k = 0; k < s.rank; k++) s.d[k] = pick(1, 5);
  return s;
}

/* gather_dim and split_dim on one shape */
static void dim_case(Backend *be) {
  Shape part = random_shape();
  int dim = (int)pick(0, part.rank - 1);
  int64_t parts = pick(1, 5), me = pick(0, parts - 1), es = pick(0, 1) ? 4 : 2;
  int64_t n = shape_numel(&part) * es;
  Cut c = cut_of(&part, dim, part.d[dim], parts, es);
  Mem m = {.be = be};
  unsigned char *all = get(&m, 0, n * parts), *want = get(&m, 1, n * parts), *got = get(&m, 2, n * parts);
  fill(all, n * parts), fill(want, n * parts), memcpy(got, want, (size_t)(n * parts));
  old_dim_move(true, want, all, &part, dim, parts, me, (size_t)es);
  cut_join(be, &c, got, all);
  CHECK(memcmp(want, got, (size_t)(n * parts)) == 0, "gather_dim: rank %d dim %d parts %lld", part.rank, dim,
        (long long)parts);
  old_dim_move(false, want, all, &part, dim, parts, me, (size_t)es);
  cut_take(be, &c, got, all, me);
  CHECK(memcmp(want, got, (size_t)n) == 0, "split_dim: rank %d dim %d parts %lld member %lld", part.rank, dim,
        (long long)parts, (long long)me);
  put_back(&m);
}

/* reduce_scatter_dim's send block: member k's part (slice k along `dim` of
   the whole) as chunk k, each laid out as split_dim would take it */
static void rs_dim_case(Backend *be) {
  Shape part = random_shape();
  int dim = (int)pick(0, part.rank - 1);
  int64_t parts = pick(1, 5), es = pick(0, 1) ? 4 : 2;
  int64_t n = shape_numel(&part) * es;
  Cut c = cut_of(&part, dim, part.d[dim], parts, es);
  Mem m = {.be = be};
  unsigned char *x = get(&m, 0, n * parts), *want = get(&m, 1, n * parts), *got = get(&m, 2, n * parts);
  fill(x, n * parts), fill(want, n * parts), memcpy(got, want, (size_t)(n * parts));
  for (int64_t k = 0; k < parts; k++) old_dim_move(false, want + k * n, x, &part, dim, parts, k, (size_t)es);
  cut_deal(be, &c, got, x);
  CHECK(memcmp(want, got, (size_t)(n * parts)) == 0, "reduce_scatter_dim: rank %d dim %d parts %lld", part.rank, dim,
        (long long)parts);
  put_back(&m);
}

/* all_to_all_dim from `f` to `to` */
static void a2a_case(Backend *be) {
  Shape xs = random_shape();
  if (xs.rank < 2) xs.rank = 2, xs.d[1] = pick(1, 5);
  int f = (int)pick(0, xs.rank - 1), to = (int)pick(0, xs.rank - 2);
  to += to >= f;
  int64_t parts = pick(1, 4), es = pick(0, 1) ? 4 : 2;
  Shape ys = xs;
  xs.d[to] *= parts, ys.d[f] *= parts;
  int64_t bytes = shape_numel(&xs) * es;
  Cut cto = cut_of(&xs, to, ys.d[to], parts, es), cfrom = cut_of(&ys, f, xs.d[f], parts, es);
  Mem m = {.be = be};
  unsigned char *x = get(&m, 0, bytes), *recv = get(&m, 1, bytes), *ws = get(&m, 2, bytes), *wo = get(&m, 3, bytes),
                *gs = get(&m, 4, bytes), *go = get(&m, 5, bytes);
  fill(x, bytes), fill(recv, bytes), fill(ws, bytes), fill(wo, bytes);
  memcpy(gs, ws, (size_t)bytes), memcpy(go, wo, (size_t)bytes);
  old_a2a(ws, wo, x, recv, &xs, &ys, f, to, parts, (size_t)es);
  cut_deal(be, &cto, gs, x);
  cut_join(be, &cfrom, go, recv);
  CHECK(memcmp(ws, gs, (size_t)bytes) == 0 && memcmp(wo, go, (size_t)bytes) == 0,
        "all_to_all_dim: rank %d from %d to %d parts %lld", xs.rank, f, to, (long long)parts);
  put_back(&m);
}

/* shard, reduce_scatter's padding and all_gather's trim: nx elements over `parts` chunks of c */
static void pad_case(Backend *be) {
  int64_t parts = pick(1, 5), c = pick(1, 9), es = pick(0, 1) ? 4 : 2;
  int64_t nx = pick(c * (parts - 1) + 1, c * parts), whole = c * parts, me = pick(0, parts - 1);
  Mem m = {.be = be};
  unsigned char *x = get(&m, 0, nx * es), *want = get(&m, 1, whole * es), *got = get(&m, 2, whole * es);
  fill(x, nx * es), fill(want, whole * es), memcpy(got, want, (size_t)(whole * es));
  old_pad(want, x, nx, whole, (size_t)es);
  comm_fit(be, got, whole * es, x, nx * es);
  CHECK(memcmp(want, got, (size_t)(whole * es)) == 0, "reduce_scatter padding: %lld of %lld x %lld", (long long)nx,
        (long long)parts, (long long)c);
  unsigned char *slice = get(&m, 3, c * es);
  int64_t from = c * me * es, bx = nx * es;
  comm_fit(be, slice, c * es, x + (from < bx ? from : bx), bx - from);
  CHECK(memcmp(want + from, slice, (size_t)(c * es)) == 0, "shard: member %lld of %lld, %lld elements", (long long)me,
        (long long)parts, (long long)nx);
  fill(got, whole * es), memcpy(want, got, (size_t)(whole * es));
  unsigned char *o = get(&m, 4, nx * es);
  comm_fit(be, o, nx * es, got, nx * es); /* the gathered block's first nx elements */
  CHECK(memcmp(o, want, (size_t)(nx * es)) == 0, "all_gather trim: %lld of %lld", (long long)nx, (long long)whole);
  put_back(&m);
}

/* ---------------------------------------------------------------- point-to-point order */

/* a world of two seen from one rank: gather_all returns this rank's
   block and the other rank's, captured from its own call earlier */
static unsigned char other[64];
static bool capturing;
static bool fake_gather(Transport *t, const void *in, int64_t bytes, void *out) {
  unsigned char *o = out;
  if (capturing) memcpy(other, in, (size_t)bytes);
  memcpy(o + t->rank * bytes, in, (size_t)bytes);
  memcpy(o + (1 - t->rank) * bytes, other, (size_t)bytes);
  return true;
}

/* rank 0 sends tags a then b to rank 1; rank 1 receives tags c then d */
static bool p2p_agree(int a, int b, int c, int d) {
  Buffer bufs[1] = {{.bytes = 16}};
  Instr s0[2] = {{.op = OP_SEND, .out = -1, .nin = 1, .in = {0}, .i = {1, a}},
                 {.op = OP_SEND, .out = -1, .nin = 1, .in = {0}, .i = {1, b}}};
  Instr s1[2] = {{.op = OP_RECV, .out = 0, .i = {0, c}}, {.op = OP_RECV, .out = 0, .i = {0, d}}};
  Program p0 = {.rank = 0, .world = 2, .bufs = bufs, .nbufs = 1, .step = s0, .nstep = 2}, p1 = p0;
  p1.rank = 1, p1.step = s1;
  Transport t = {.world = 2, .gather_all = fake_gather};
  char why[160];
  capturing = true, t.rank = 1;
  comm_p2p_in_order(&p1, &t, why, sizeof why);
  capturing = false, t.rank = 0;
  return comm_p2p_in_order(&p0, &t, why, sizeof why);
}

int main(void) {
  CHECK(p2p_agree(5, 6, 5, 6), "sends and receives in one order");
  CHECK(!p2p_agree(5, 6, 6, 5), "sends and receives in two orders");
  const char *names[2] = {"cpu", "cpu-staged"};
  for (int b = 0; b < 2; b++) {
    char why[128];
    Backend *be = backend_open(names[b], why, sizeof why);
    CHECK(be != NULL, "backend %s: %s", names[b], why);
    if (!be) continue;
    for (int i = 0; i < 3000; i++) dim_case(be), rs_dim_case(be), a2a_case(be), pad_case(be);
    be->drain(be, 1);
    be->close(be);
  }
  return test_summary();
}
