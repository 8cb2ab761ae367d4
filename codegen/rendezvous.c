/* rendezvous.c: would a plan's rank programs deadlock on a transport whose
 * sends wait for their receives (NCCL), rather than one that buffers them
 * (MPI as runtime/transport.c uses it)? The rule is in docs/distributed.md,
 * "Deadlock under rendezvous".
 *
 * What is kept of each rank: its communication instructions only (a few
 * words each), so the programs of a big plan can be checked as they are
 * made one at a time. The check then simulates one step (the init list, then
 * the step list) under rendezvous semantics:
 *   - a maximal run of consecutive send/recv instructions is one group, as
 *     between ncclGroupStart and ncclGroupEnd: it is posted as a whole, each
 *     of its operations completes once its partner is posted too (the k-th
 *     send from a to b with a tag pairs with the k-th recv on b from a with
 *     that tag), and the rank goes on when all of them have;
 *   - a collective that talks (all_reduce, all_gather, reduce_scatter,
 *     gather_dim, all_to_all_dim, reduce_scatter_dim) completes when every
 *     member of its group is at a collective on that group, and those must
 *     be the same op
 *     (counts and dtypes are collectives_agree's, runtime/interp.c);
 *   - everything else (shard and split_dim cut locally) completes at once.
 * Ranks that can go on wait in a worklist; each operation is posted once and
 * matched once, so the work is linear in the communication instructions
 * (plus hashing the send/recv pairs). A rank left waiting when the worklist
 * is empty is stuck: the report follows whom it waits for until a rank
 * repeats (a cycle), a rank has finished, or a partner does not exist. */
#include <stdlib.h>
#include <string.h>

#include "carve.h"

#define RDV_MAX_WORLD (1 << 16)
#define RDV_MAX_OPS (1 << 25) /* communication instructions over all ranks: about 25 bytes each */

enum { F_JOINED = 1, F_MATCHED = 2 };           /* ZOp.flags */
enum { R_MISSING, R_READY, R_WAITING, R_DONE }; /* ZRank.state */

typedef struct ZOp {
  int32_t at;      /* index into init, then step (at >= ninit: step instruction at - ninit) */
  int32_t peer;    /* send/recv: the world rank; a collective: its group */
  int32_t tag;     /* send/recv */
  int32_t partner; /* send/recv: the matching operation's index on peer, -1 */
  uint8_t kind;    /* OpKind */
  uint8_t flags;
} ZOp;

typedef struct ZRank {
  ZOp *op;
  int n, cap, ninit;
  int cur, end; /* the operation (group) this rank is at: [cur, end) */
  int pending;  /* its operations not yet matched */
  int state;
} ZRank;

struct Rendezvous {
  int world;
  int64_t total;   /* operations kept */
  bool too_big;    /* past the bounds: not checked */
  const char *bad; /* a program that cannot be checked (heap), or NULL */
  ZRank *r;
  int ngroups, *gsize, **granks; /* the first program's groups (every rank's must be the same) */
  int *arrived;                  /* per group: members waiting at a collective on it */
  int *work, nwork;              /* ranks that can go on */
  int clash[2];                  /* two ranks that met on a group at different collectives, or -1 */
};

static bool is_p2p(int op) { return op == OP_SEND || op == OP_RECV; }
static bool talks(int op) {
  return (op_info[op].flags & OPF_COMM) && !is_p2p(op) && op != OP_SHARD && op != OP_SPLIT_DIM;
}

Rendezvous *rendezvous_new(int world) {
  Rendezvous *z = xcalloc(1, sizeof *z);
  z->world = world;
  z->too_big = world < 1 || world > RDV_MAX_WORLD;
  if (!z->too_big) z->r = xcalloc((size_t)world, sizeof(ZRank));
  z->ngroups = -1;
  z->clash[0] = z->clash[1] = -1;
  return z;
}

void rendezvous_free(Rendezvous *z) {
  if (!z) return;
  for (int r = 0; z->r && r < z->world; r++) free(z->r[r].op);
  for (int g = 0; g < z->ngroups; g++) free(z->granks[g]);
  free(z->gsize), free(z->granks), free(z->arrived), free(z->work), free(z->r), free((void *)z->bad);
  free(z);
}

static void set_bad(Rendezvous *z, const char *fmt, int a, int b) {
  if (z->bad) return;
  char *s = xmalloc(200);
  snprintf(s, 200, fmt, a, b);
  z->bad = s;
}

/* The first program's group list is kept; every other must be the same. */
static void keep_groups(Rendezvous *z, const Program *p) {
  if (z->ngroups < 0) {
    z->ngroups = p->ngroups;
    z->gsize = xcalloc((size_t)p->ngroups + 1, sizeof(int));
    z->granks = xcalloc((size_t)p->ngroups + 1, sizeof(int *));
    for (int g = 0; g < p->ngroups; g++) {
      z->gsize[g] = p->group_size[g];
      z->granks[g] = xmalloc(sizeof(int) * ((size_t)p->group_size[g] + 1));
      memcpy(z->granks[g], p->group_ranks[g], sizeof(int) * (size_t)p->group_size[g]);
    }
    return;
  }
  bool same = p->ngroups == z->ngroups;
  for (int g = 0; same && g < p->ngroups; g++)
    same = p->group_size[g] == z->gsize[g] &&
           !memcmp(p->group_ranks[g], z->granks[g], sizeof(int) * (size_t)p->group_size[g]);
  if (!same) set_bad(z, "rank %d's program lists other rank groups than rank %d's", p->rank, -1);
}

static void push_op(Rendezvous *z, ZRank *R, const Program *p, const Instr *in, int at, bool joined) {
  if (R->n == R->cap) {
    R->cap = R->cap ? 2 * R->cap : 64;
    R->op = xrealloc(R->op, sizeof(ZOp) * (size_t)R->cap);
  }
  ZOp *o = &R->op[R->n++];
  *o = (ZOp){.at = at, .peer = (int32_t)in->i[0], .partner = -1, .kind = (uint8_t)in->op};
  o->flags = joined ? F_JOINED : 0;
  if (is_p2p(in->op)) {
    o->tag = (int32_t)in->i[1];
    if (in->i[0] < 0 || in->i[0] >= z->world || in->i[0] == p->rank || in->i[1] < 0 || in->i[1] > (1 << 30))
      set_bad(z, "rank %d, instruction %d: a send or recv to no other rank of the world", p->rank, at);
  } else if (group_pos(p, in->i[0], p->rank) < 0) {
    set_bad(z, "rank %d, instruction %d: a collective on a group without this rank", p->rank, at);
  }
  z->total++;
}

void rendezvous_add(Rendezvous *z, const Program *p) {
  if (z->too_big) return;
  if (p->rank < 0 || p->rank >= z->world || p->world != z->world || z->r[p->rank].state != R_MISSING) {
    set_bad(z, "a program for rank %d (of a world of %d) does not belong here", p->rank, p->world);
    return;
  }
  keep_groups(z, p);
  ZRank *R = &z->r[p->rank];
  R->state = R_READY;
  R->ninit = p->ninit;
  bool prev_p2p = false;
  for (int at = 0; at < p->ninit + p->nstep; at++) {
    const Instr *in = at < p->ninit ? &p->init[at] : &p->step[at - p->ninit];
    bool p2p = is_p2p(in->op);
    if (p2p || talks(in->op)) push_op(z, R, p, in, at, p2p && prev_p2p && at != p->ninit);
    prev_p2p = p2p;
  }
  if (z->total > RDV_MAX_OPS) {
    z->too_big = true;
    for (int r = 0; r < z->world; r++) free(z->r[r].op), z->r[r].op = NULL;
  }
}

bool rendezvous_checked(const Rendezvous *z) { return !z->too_big; }

/* ------------------------------------------------------------ pairing */

typedef struct Slot {
  int32_t src, dst, tag; /* a recv on dst from src with tag; src < 0: empty */
  int32_t head, tail;    /* its recvs not yet paired, in order (global indices, chained by next) */
} Slot;

static Slot *slot_of(Slot *t, size_t mask, int src, int dst, int tag) {
  int32_t key[3] = {src, dst, tag};
  for (size_t h = hash_bytes(key, sizeof key, 0) & mask;; h = (h + 1) & mask)
    if (t[h].src < 0 || (t[h].src == src && t[h].dst == dst && t[h].tag == tag)) return &t[h];
}

/* Each send's partner: the recv of the same (source, destination, tag) that
   comes in the same place in order. */
static void pair(Rendezvous *z) {
  int64_t *base = xmalloc(sizeof(int64_t) * ((size_t)z->world + 1));
  base[0] = 0;
  for (int r = 0; r < z->world; r++) base[r + 1] = base[r] + z->r[r].n;
  size_t cap = 16;
  while (cap < 2 * (size_t)base[z->world]) cap *= 2;
  Slot *t = xmalloc(sizeof(Slot) * cap);
  for (size_t h = 0; h < cap; h++) t[h].src = -1;
  int32_t *next = xmalloc(sizeof(int32_t) * ((size_t)base[z->world] + 1));
  for (int b = 0; b < z->world; b++)
    for (int k = 0; k < z->r[b].n; k++) {
      const ZOp *o = &z->r[b].op[k];
      if (o->kind != OP_RECV) continue;
      Slot *s = slot_of(t, cap - 1, o->peer, b, o->tag);
      int32_t g = (int32_t)(base[b] + k);
      next[g] = -1;
      if (s->src < 0)
        *s = (Slot){o->peer, b, o->tag, g, g};
      else if (s->head < 0)
        s->head = s->tail = g;
      else
        next[s->tail] = g, s->tail = g;
    }
  for (int a = 0; a < z->world; a++)
    for (int k = 0; k < z->r[a].n; k++) {
      ZOp *o = &z->r[a].op[k];
      if (o->kind != OP_SEND) continue;
      Slot *s = slot_of(t, cap - 1, a, o->peer, o->tag);
      if (s->src < 0 || s->head < 0) continue; /* no recv left for it */
      int32_t j = (int32_t)(s->head - base[o->peer]);
      s->head = next[s->head];
      o->partner = j;
      z->r[o->peer].op[j].partner = k;
    }
  free(t), free(next), free(base);
}

/* ------------------------------------------------------------ simulation */

static void ready(Rendezvous *z, int r) {
  z->r[r].state = R_READY;
  z->work[z->nwork++] = r;
}

/* Rank r's operation k is posted now (its rank waits in the group holding it). */
static bool posted(const Rendezvous *z, int r, int k) {
  const ZRank *R = &z->r[r];
  return R->state == R_WAITING && is_p2p(R->op[R->cur].kind) && k >= R->cur && k < R->end;
}

/* Posts rank r's send/recv group at cur: each operation whose partner is
   posted completes with it, and a peer whose group that completes goes on.
   True (r past the group) when the whole group has completed. */
static bool post_group(Rendezvous *z, int r) {
  ZRank *R = &z->r[r];
  R->end = R->cur + 1;
  while (R->end < R->n && (R->op[R->end].flags & F_JOINED)) R->end++;
  R->state = R_WAITING;
  R->pending = 0;
  for (int k = R->cur; k < R->end; k++) {
    ZOp *o = &R->op[k];
    if (o->partner < 0 || !posted(z, o->peer, o->partner)) {
      R->pending++;
      continue;
    }
    o->flags |= F_MATCHED;
    z->r[o->peer].op[o->partner].flags |= F_MATCHED;
    ZRank *P = &z->r[o->peer];
    if (--P->pending == 0) P->cur = P->end, ready(z, o->peer);
  }
  if (R->pending) return false;
  R->cur = R->end, R->state = R_READY;
  return true;
}

/* Rank r arrives at a collective on group g; when it is the last member to,
   every member goes on (the others through the worklist). False while r
   waits, or when the members disagree (z->bad says how). */
static bool arrive(Rendezvous *z, int r) {
  ZRank *R = &z->r[r];
  int g = R->op[R->cur].peer;
  R->state = R_WAITING;
  if (++z->arrived[g] < z->gsize[g]) return false;
  z->arrived[g] = 0;
  for (int k = 0; k < z->gsize[g]; k++) {
    int m = z->granks[g][k];
    ZRank *M = &z->r[m];
    if (M->op[M->cur].kind != R->op[R->cur].kind && !z->bad) {
      z->clash[0] = r, z->clash[1] = m;
      return false;
    }
  }
  for (int k = 0; k < z->gsize[g]; k++) {
    int m = z->granks[g][k];
    if (m != r) z->r[m].cur++, ready(z, m);
  }
  R->cur++, R->state = R_READY;
  return true;
}

/* Runs rank r until it waits or finishes. */
static void advance(Rendezvous *z, int r) {
  ZRank *R = &z->r[r];
  while (R->cur < R->n)
    if (!(is_p2p(R->op[R->cur].kind) ? post_group(z, r) : arrive(z, r))) return;
  R->state = R_DONE;
}

/* ------------------------------------------------------------ the report */

/* "step instruction 120 (send to rank 4, tag 17)" */
static const char *describe(const Rendezvous *z, int r, int k, char *buf, size_t n) {
  const ZRank *R = &z->r[r];
  const ZOp *o = &R->op[k];
  bool init = o->at < R->ninit;
  int at = init ? o->at : o->at - R->ninit, len = snprintf(buf, n, "%s instruction %d (", init ? "init" : "step", at);
  if (o->kind == OP_SEND)
    snprintf(buf + len, n - (size_t)len, "send to rank %d, tag %d)", o->peer, o->tag);
  else if (o->kind == OP_RECV)
    snprintf(buf + len, n - (size_t)len, "recv from rank %d, tag %d)", o->peer, o->tag);
  else
    snprintf(buf + len, n - (size_t)len, "%s over group %d)", op_info[o->kind].name, o->peer);
  return buf;
}

/* Is rank m waiting at a collective on group g? */
static bool at_collective(const Rendezvous *z, int m, int g) {
  const ZRank *M = &z->r[m];
  return M->state == R_WAITING && !is_p2p(M->op[M->cur].kind) && M->op[M->cur].peer == g;
}

/* Whom waiting rank r waits for, through its operation *k: the peer of its
   first unmatched send/recv (-1: that one has no partner), or the first
   member of its collective's group not there. */
static int blocker(const Rendezvous *z, int r, int *k) {
  const ZRank *R = &z->r[r];
  *k = R->cur;
  const ZOp *o = &R->op[R->cur];
  if (!is_p2p(o->kind)) {
    for (int j = 0; j < z->gsize[o->peer]; j++)
      if (!at_collective(z, z->granks[o->peer][j], o->peer)) return z->granks[o->peer][j];
    return -1;
  }
  while (*k < R->end && (R->op[*k].flags & F_MATCHED)) ++*k;
  return R->op[*k].partner < 0 ? -1 : R->op[*k].peer;
}

/* "ranks 3 -> 4 -> 3" along the waits from r (at most a few named). */
static void print_cycle(const Rendezvous *z, int r, FILE *err) {
  fprintf(err, "; ranks %d", r);
  int k, t = blocker(z, r, &k);
  for (int n = 0; t != r && n < 8; n++) fprintf(err, " -> %d", t), t = blocker(z, t, &k);
  fprintf(err, t == r ? " -> %d wait for each other in a cycle" : " -> ... wait for each other in a cycle", r);
}

/* Why the waiting ranks are stuck: the waits followed from the first of
   them until they end at a rank that finished, an operation without a
   partner, or a rank seen before (then the cycle is named). */
static void report_stuck(const Rendezvous *z, FILE *err) {
  int *seen = xcalloc((size_t)z->world, sizeof(int)), r = 0, stuck = 0;
  for (int q = z->world - 1; q >= 0; q--)
    if (z->r[q].state != R_DONE) r = q, stuck++;
  char a[160], b[160];
  fprintf(err, "carve: error: the plan would deadlock on a transport whose sends wait for their receives (NCCL): ");
  for (;;) {
    seen[r] = 1;
    int k, j, t = blocker(z, r, &k);
    if (t < 0) {
      const ZOp *o = &z->r[r].op[k];
      fprintf(err, "rank %d at %s waits for a %s that rank %d never posts", r, describe(z, r, k, a, sizeof a),
              o->kind == OP_SEND ? "matching recv" : "matching send", o->peer);
      break;
    }
    if (z->r[t].state == R_DONE) {
      fprintf(err, "rank %d at %s waits for rank %d, which has finished its step", r, describe(z, r, k, a, sizeof a),
              t);
      break;
    }
    if (seen[t]) { /* a cycle through t */
      int u = blocker(z, t, &k);
      blocker(z, u, &j);
      fprintf(err, "rank %d at %s waits for rank %d, which is at %s", t, describe(z, t, k, a, sizeof a), u,
              describe(z, u, j, b, sizeof b));
      print_cycle(z, t, err);
      break;
    }
    r = t;
  }
  fprintf(err, " (%d rank%s stuck)\n", stuck, stuck == 1 ? "" : "s");
  free(seen);
}

static void report_clash(const Rendezvous *z, FILE *err) {
  char a[160], b[160];
  int r = z->clash[0], m = z->clash[1];
  fprintf(err, "carve: error: ranks %d and %d meet on a group at different collectives: rank %d at %s, rank %d at %s\n",
          r, m, r, describe(z, r, z->r[r].cur, a, sizeof a), m, describe(z, m, z->r[m].cur, b, sizeof b));
}

bool rendezvous_check(Rendezvous *z, FILE *err) {
  if (z->too_big) return true;
  for (int r = 0; r < z->world && !z->bad; r++)
    if (z->r[r].state == R_MISSING) set_bad(z, "rank %d's program is missing (of %d)", r, z->world);
  if (z->bad) {
    fprintf(err, "carve: error: cannot check the plan for deadlock: %s\n", z->bad);
    return false;
  }
  pair(z);
  z->arrived = xcalloc((size_t)z->ngroups + 1, sizeof(int));
  z->work = xmalloc(sizeof(int) * (size_t)z->world);
  for (int r = z->world - 1; r >= 0; r--) ready(z, r);
  while (z->nwork && z->clash[0] < 0) advance(z, z->work[--z->nwork]);
  if (z->clash[0] >= 0) {
    report_clash(z, err);
    return false;
  }
  for (int r = 0; r < z->world; r++)
    if (z->r[r].state != R_DONE) {
      report_stuck(z, err);
      return false;
    }
  return true;
}

bool programs_rendezvous(const Program *const *ps, int n, FILE *err) {
  Rendezvous *z = rendezvous_new(n);
  for (int r = 0; r < n; r++) rendezvous_add(z, ps[r]);
  bool ok = rendezvous_check(z, err);
  rendezvous_free(z);
  return ok;
}
