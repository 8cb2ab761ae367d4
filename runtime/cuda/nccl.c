/* nccl.c: the "nccl" device communication interface (../comm.h) on the
 * CUDA backend's device memory and communication stream.
 *
 * Communicators: one for the world, made from an id rank 0 draws and the
 * transport broadcasts, and one per program group split from it
 * (ncclCommSplit: every rank takes part in every split, non-members with
 * NCCL_SPLIT_NOCOLOR; members ordered by world rank, as the transport's).
 * All are non-blocking, so no NCCL call can hang the host: a call that
 * answers ncclInProgress is polled (ncclCommGetAsyncError) under the
 * transport's deadline.
 *
 * Operations are enqueued on the backend's communication stream and the
 * host does not wait for them (flush does, at the end of a step). A
 * watchdog thread follows every issued operation by an event: one still
 * running past Transport.timeout, or an asynchronous NCCL error, ends the
 * job with the transport's message (what the rank was doing when it issued
 * the operation, and whom it waits for) after ncclCommAbort.
 *
 * Collectives run in the tensor's dtype (ncclFloat, ncclBfloat16,
 * ncclInt32); all-to-all is grouped sends and receives. Point to point
 * runs on the world communicator, peers by world rank. NCCL has no tags:
 * the messages between two ranks match in the order they are issued, which
 * is the programs' order. A send is copied into a block of its own first
 * (the buffer may be reused at once, as the transport's), and is issued
 * with the group comm.c opens for sends and closes after the next receive
 * or collective, so two ranks that both send and then receive do not wait
 * on each other. The blocks are reused after flush. */
#include <nccl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../comm.h"
#include "cuda.h"

#define RING 256 /* operations the watchdog follows at once */

typedef struct Flight {
  cudaEvent_t done;
  double since; /* when it was issued */
  char doing[96], whom[160], call[32];
} Flight;

typedef struct Nccl {
  Backend *be;
  Transport *t;
  const Program *p;
  cudaStream_t s;
  int device;
  ncclComm_t world, *comm; /* comm: per group, NULL where this rank is not a member */
  int ncomm;
  char (*members)[160]; /* per group: "the members of group 3 (ranks 0 2)" */
  int depth;            /* open groups */
  char peers[96];       /* the open group's peers, for the deadline's message */
  void **slot;          /* the sends' copies since the last flush */
  int64_t *slot_cap;
  int nslot, used;
  pthread_mutex_t mu; /* guards the ring */
  Flight ring[RING];
  int head, count;
  pthread_t watchdog;
  bool watching;
  atomic_bool stop;
} Nccl;

static ncclDataType_t nccl_type(DType dt) {
  return dt == DT_BF16 ? ncclBfloat16 : dt == DT_I32 ? ncclInt32 : ncclFloat;
}

static void pause_ms(int ms) { nanosleep(&(struct timespec){0, (long)ms * 1000 * 1000}, NULL); }

static void abort_all(Nccl *n) {
  for (int g = 0; g < n->ncomm; g++)
    if (n->comm[g]) ncclCommAbort(n->comm[g]);
  if (n->world) ncclCommAbort(n->world);
}

/* The first asynchronous error of any communicator (ncclSuccess: none). */
static ncclResult_t async_error(Nccl *n) {
  ncclResult_t r = ncclSuccess;
  for (int g = -1; g < n->ncomm; g++) {
    ncclComm_t c = g < 0 ? n->world : n->comm[g];
    if (c && ncclCommGetAsyncError(c, &r) == ncclSuccess && r != ncclSuccess && r != ncclInProgress) return r;
  }
  return ncclSuccess;
}

/* ---------------------------------------------------------------- deadlines */

/* A non-blocking call's end: polled while in progress, under the
   deadline (past it the job ends). Its result. */
static ncclResult_t settle(Nccl *n, ncclComm_t comm, ncclResult_t r, const char *call, const char *whom) {
  double t0 = now_seconds();
  while (r == ncclInProgress && comm) {
    if (n->t->timeout > 0 && now_seconds() - t0 > n->t->timeout) {
      transport_overdue(n->t, n->t->doing, whom, call);
      abort_all(n);
      n->t->abort(n->t, 1);
    }
    pause_ms(0);
    if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
  }
  return r;
}

/* false after a message naming the call when r is an error */
static bool fine(Nccl *n, ncclComm_t comm, ncclResult_t r, const char *call) {
  if (r == ncclSuccess) return true;
  const char *last = comm ? ncclGetLastError(comm) : NULL;
  fprintf(stderr, "carve: error: rank %d, %s: %s failed: %s%s%s\n", n->t->rank, n->t->doing, call,
          ncclGetErrorString(r), last && last[0] ? ": " : "", last ? last : "");
  return false;
}

/* An operation just enqueued on the stream: the watchdog follows it. */
static void follow(Nccl *n, const char *call, const char *whom) {
  pthread_mutex_lock(&n->mu);
  while (n->count == RING) { /* the oldest must end first (the watchdog ends the job if it never does) */
    pthread_mutex_unlock(&n->mu);
    pause_ms(1);
    pthread_mutex_lock(&n->mu);
  }
  Flight *f = &n->ring[(n->head + n->count) % RING];
  CU_CHECK(cudaEventRecord(f->done, n->s));
  f->since = now_seconds();
  snprintf(f->doing, sizeof f->doing, "%s", n->t->doing);
  snprintf(f->whom, sizeof f->whom, "%s", whom);
  snprintf(f->call, sizeof f->call, "%s", call);
  n->count++;
  pthread_mutex_unlock(&n->mu);
}

/* Drops the operations that ended; true with *late filled when the oldest
   is past the deadline. */
static bool overdue(Nccl *n, Flight *late) {
  bool over = false;
  pthread_mutex_lock(&n->mu);
  while (n->count && cudaEventQuery(n->ring[n->head].done) == cudaSuccess) n->head = (n->head + 1) % RING, n->count--;
  cudaGetLastError(); /* cudaErrorNotReady is not an error */
  if (n->count && n->t->timeout > 0 && now_seconds() - n->ring[n->head].since > n->t->timeout)
    *late = n->ring[n->head], over = true;
  pthread_mutex_unlock(&n->mu);
  return over;
}

/* The watchdog: a few times a second, the oldest operation's age and the
   communicators' asynchronous errors. */
static void *watch(void *arg) {
  Nccl *n = arg;
  cudaSetDevice(n->device);
  while (!atomic_load(&n->stop)) {
    pause_ms(100);
    Flight late;
    ncclResult_t bad = async_error(n);
    if (overdue(n, &late))
      transport_overdue(n->t, late.doing, late.whom, late.call);
    else if (bad != ncclSuccess)
      fprintf(stderr, "carve: error: rank %d: NCCL reports %s; ending the job\n", n->t->rank, ncclGetErrorString(bad));
    else
      continue;
    fflush(stderr);
    abort_all(n);
    _exit(1); /* the launcher ends the other ranks */
  }
  return NULL;
}

/* ---------------------------------------------------------------- operations */

/* A call that enqueues an operation on comm: outside a group it is settled
   and followed; inside one, group_end does that for the whole group. */
static bool issue(Nccl *n, ncclComm_t comm, ncclResult_t r, const char *call, const char *whom) {
  if (n->depth) return r == ncclInProgress || fine(n, comm, r, call);
  if (!fine(n, comm, settle(n, comm, r, call, whom), call)) return false;
  follow(n, call, whom);
  return true;
}

static void nccl_group_begin(Comm *c) {
  Nccl *n = c->impl;
  if (n->depth++ == 0) n->peers[0] = 0;
  ncclGroupStart();
}

/* the outermost end launches the group: every communicator settled */
static bool nccl_group_end(Comm *c) {
  Nccl *n = c->impl;
  ncclResult_t r = ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress) return n->depth--, fine(n, NULL, r, "ncclGroupEnd");
  if (--n->depth > 0) return true;
  char whom[160];
  snprintf(whom, sizeof whom, "ranks%s (a group of sends and receives)", n->peers[0] ? n->peers : " of the group");
  bool ok = true;
  for (int g = -1; g < n->ncomm; g++) {
    ncclComm_t k = g < 0 ? n->world : n->comm[g];
    if (k) ok = fine(n, k, settle(n, k, ncclInProgress, "ncclGroupEnd", whom), "ncclGroupEnd") && ok;
  }
  if (ok) follow(n, "ncclGroupEnd", whom);
  return ok;
}

static void note_peer(Nccl *n, int peer) {
  size_t len = strlen(n->peers);
  if (len + 12 < sizeof n->peers) snprintf(n->peers + len, sizeof n->peers - len, " %d", peer);
}

static bool nccl_all_reduce(Comm *c, int g, void *buf, int64_t cnt, DType dt) {
  Nccl *n = c->impl;
  return issue(n, n->comm[g], ncclAllReduce(buf, buf, (size_t)cnt, nccl_type(dt), ncclSum, n->comm[g], n->s),
               "ncclAllReduce", n->members[g]);
}
static bool nccl_all_gather(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  Nccl *n = c->impl;
  return issue(n, n->comm[g], ncclAllGather(in, out, (size_t)chunk, nccl_type(dt), n->comm[g], n->s), "ncclAllGather",
               n->members[g]);
}
static bool nccl_reduce_scatter(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  Nccl *n = c->impl;
  return issue(n, n->comm[g], ncclReduceScatter(in, out, (size_t)chunk, nccl_type(dt), ncclSum, n->comm[g], n->s),
               "ncclReduceScatter", n->members[g]);
}

/* member k's chunk to member k, and member k's chunk for this one into place k: one group */
static bool nccl_all_to_all(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  Nccl *n = c->impl;
  ncclComm_t k = n->comm[g];
  size_t bytes = (size_t)(chunk * dtype_size(dt));
  bool ok = true;
  nccl_group_begin(c); /* inside it, issue only checks each call */
  for (int q = 0; q < n->p->group_size[g]; q++) {
    note_peer(n, n->p->group_ranks[g][q]);
    ok = issue(n, k, ncclSend((const char *)in + q * bytes, (size_t)chunk, nccl_type(dt), q, k, n->s), "ncclSend",
               NULL) &&
         ok;
    ok = issue(n, k, ncclRecv((char *)out + q * bytes, (size_t)chunk, nccl_type(dt), q, k, n->s), "ncclRecv", NULL) &&
         ok;
  }
  return nccl_group_end(c) && ok;
}

/* a block of the backend's memory for the next send's copy */
static void *slot(Nccl *n, int64_t bytes) {
  if (n->used == n->nslot) {
    n->nslot = n->nslot ? 2 * n->nslot : 8;
    n->slot = xrealloc(n->slot, sizeof(void *) * (size_t)n->nslot);
    n->slot_cap = xrealloc(n->slot_cap, sizeof(int64_t) * (size_t)n->nslot);
    for (int k = n->used; k < n->nslot; k++) n->slot[k] = NULL, n->slot_cap[k] = 0;
  }
  int k = n->used++;
  if (n->slot_cap[k] < bytes) {
    n->be->release(n->be, n->slot[k], false);
    n->slot[k] = n->be->alloc(n->be, bytes, false);
    n->slot_cap[k] = bytes;
  }
  return n->slot[k];
}

static bool nccl_send(Comm *c, const void *buf, int64_t bytes, int peer, int tag) {
  Nccl *n = c->impl;
  (void)tag; /* matched in issue order */
  void *copy = slot(n, bytes);
  n->be->copy_rows(n->be, 1, copy, bytes, buf, bytes, bytes, 1);
  note_peer(n, peer);
  char whom[64];
  snprintf(whom, sizeof whom, "rank %d (a send)", peer);
  return issue(n, n->world, ncclSend(copy, (size_t)bytes, ncclInt8, peer, n->world, n->s), "ncclSend", whom);
}
static bool nccl_recv(Comm *c, void *buf, int64_t bytes, int peer, int tag) {
  Nccl *n = c->impl;
  (void)tag;
  note_peer(n, peer);
  char whom[64];
  snprintf(whom, sizeof whom, "rank %d (a receive)", peer);
  return issue(n, n->world, ncclRecv(buf, (size_t)bytes, ncclInt8, peer, n->world, n->s), "ncclRecv", whom);
}

/* everything done (the watchdog keeps the deadline meanwhile); the sends' blocks free again */
static bool nccl_flush(Comm *c) {
  Nccl *n = c->impl;
  bool ok = true;
  while (n->depth) ok = nccl_group_end(c) && ok;
  CU_CHECK(cudaStreamSynchronize(n->s));
  n->used = 0;
  return fine(n, NULL, async_error(n), "a NCCL operation") && ok;
}

static void nccl_abort(Comm *c, int code) {
  Nccl *n = c->impl;
  abort_all(n);
  n->t->abort(n->t, code);
}

/* ncclCommAbort, not Finalize and Destroy: it neither waits for the other
   ranks nor fails when another rank never made its communicators; the
   stream is drained first, so nothing is in flight */
static void nccl_close(Comm *c) {
  Nccl *n = c->impl;
  if (n->watching) atomic_store(&n->stop, true), pthread_join(n->watchdog, NULL);
  cudaStreamSynchronize(n->s);
  abort_all(n);
  for (int k = 0; k < n->nslot; k++) n->be->release(n->be, n->slot[k], false);
  for (int k = 0; k < RING; k++) cudaEventDestroy(n->ring[k].done);
  pthread_mutex_destroy(&n->mu);
  free(n->slot), free(n->slot_cap), free(n->comm), free(n->members), free(n), free(c);
}

/* ---------------------------------------------------------------- opening */

/* NCCL refuses two ranks on one GPU: every rank's GPU UUID, compared over
   the world (every rank reaches the same answer). */
static bool own_gpus(Transport *t, int device, char *why, size_t wn) {
  struct cudaDeviceProp prop;
  CU_CHECK(cudaGetDeviceProperties(&prop, device));
  unsigned char *all = xcalloc((size_t)t->world, 16);
  bool ok = t->gather_all(t, prop.uuid.bytes, 16, all);
  for (int a = 0; ok && a < t->world; a++)
    for (int b = a + 1; ok && b < t->world; b++)
      if (memcmp(all + 16 * a, all + 16 * b, 16) == 0) {
        snprintf(why, wn, "ranks %d and %d share one GPU, and NCCL takes one GPU per rank", a, b);
        ok = false;
      }
  free(all);
  return ok;
}

/* The world communicator from rank 0's id; false with why. */
static bool make_world(Nccl *n, ncclConfig_t *cfg, char *why, size_t wn) {
  Transport *t = n->t;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  ncclResult_t r = t->rank == 0 ? ncclGetUniqueId(&id) : ncclSuccess;
  if (!t->agree(t, r == ncclSuccess) || !t->broadcast(t, &id, sizeof id, 0)) {
    snprintf(why, wn, "rank 0 could not draw a NCCL id (%s)", ncclGetErrorString(r));
    return false;
  }
  r = ncclCommInitRankConfig(&n->world, t->world, id, t->rank, cfg);
  r = settle(n, n->world, r, "ncclCommInitRankConfig", "the other ranks");
  if (r == ncclSuccess) return true;
  snprintf(why, wn, "ncclCommInitRankConfig: %s", ncclGetErrorString(r));
  return false;
}

/* One communicator per program group, split from the world. */
static bool make_groups(Nccl *n, ncclConfig_t *cfg, char *why, size_t wn) {
  const Program *p = n->p;
  n->ncomm = p->ngroups;
  n->comm = xcalloc((size_t)p->ngroups + 1, sizeof(ncclComm_t));
  n->members = xcalloc((size_t)p->ngroups + 1, sizeof *n->members);
  for (int g = 0; g < p->ngroups; g++) {
    transport_members(n->members[g], sizeof *n->members, g, p->group_size[g], p->group_ranks[g]);
    int color = group_pos(p, g, p->rank) >= 0 ? 0 : NCCL_SPLIT_NOCOLOR;
    ncclResult_t r = ncclCommSplit(n->world, color, p->rank, &n->comm[g], cfg);
    r = settle(n, n->world, r, "ncclCommSplit", "the other ranks");
    if (r == ncclSuccess && n->comm[g]) r = settle(n, n->comm[g], ncclInProgress, "ncclCommSplit", n->members[g]);
    if (r != ncclSuccess) {
      snprintf(why, wn, "ncclCommSplit (group %d): %s", g, ncclGetErrorString(r));
      return false;
    }
  }
  return true;
}

static Comm *comm_of(Nccl *n) {
  Comm *c = xcalloc(1, sizeof(Comm));
  *c = (Comm){.name = "nccl",
              .on_stream = true,
              .all_reduce = nccl_all_reduce,
              .all_gather = nccl_all_gather,
              .reduce_scatter = nccl_reduce_scatter,
              .all_to_all = nccl_all_to_all,
              .send = nccl_send,
              .recv = nccl_recv,
              .group_begin = nccl_group_begin,
              .group_end = nccl_group_end,
              .flush = nccl_flush,
              .abort = nccl_abort,
              .close = nccl_close,
              .impl = n};
  return c;
}

Comm *comm_nccl(Backend *be, Transport *t, const Program *p, char *why, size_t wn) {
  int device = cuda_device(be);
  if (!own_gpus(t, device, why, wn)) return NULL;
  Nccl *n = xcalloc(1, sizeof(Nccl));
  *n = (Nccl){.be = be, .t = t, .p = p, .s = cuda_stream(be, 1), .device = device};
  pthread_mutex_init(&n->mu, NULL);
  for (int k = 0; k < RING; k++) CU_CHECK(cudaEventCreateWithFlags(&n->ring[k].done, cudaEventDisableTiming));
  Comm *c = comm_of(n);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;                       /* every call returns at once: the deadline can abort */
  bool ok = make_world(n, &cfg, why, wn); /* every rank's, before the splits over the world */
  if (!t->agree(t, ok) || !make_groups(n, &cfg, why, wn)) {
    nccl_close(c);
    return NULL;
  }
  atomic_store(&n->stop, false);
  n->watching = pthread_create(&n->watchdog, NULL, watch, n) == 0;
  return c;
}
