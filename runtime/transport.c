/* transport.c: the ranks' communication, behind the Transport table.
 *
 * Two implementations:
 *   local  one process (world 1): a group has one member, so an all-reduce
 *          leaves the buffer as it is and a gather or scatter is a copy;
 *          point-to-point has no peer and fails.
 *   mpi    one MPI process per rank. Each program group becomes a
 *          communicator (MPI_Comm_split, once, before the first step).
 *          Sends copy the data into a staging block and post MPI_Isend, so
 *          a send never waits for its receiver: whatever order a pipeline
 *          schedule puts sends and receives in, no rank blocks on a send.
 *          Receives and collectives are MPI's non-blocking calls, tested
 *          until done: flat out while the step waits for them, with short
 *          sleeps while compute goes on beside them (Transport.hurry,
 *          runtime/overlap.c); flush waits for the posted sends. MPI is
 *          initialised serialized: one thread at a time calls it. Errors return
 *          (MPI_ERRORS_RETURN) and are printed with the call and the rank;
 *          a rank that dies is the launcher's to report, which ends the job.
 *          Every blocking call has a deadline (Transport.timeout): a
 *          watchdog thread ends the process when one runs past it, naming
 *          the instruction and whom it waited for, and the launcher then
 *          ends the others, so a stopped peer, a receive whose send never
 *          comes or ranks at odds never hang the job.
 *
 * The device communication interface (comm.h) runs over this table on host
 * memory ("host"), and its NCCL implementation uses it for the NCCL id's
 * broadcast, its checks over the ranks and its deadline message. */
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carve.h"
#include "kmath.h"

/* ---------------------------------------------------------------- local */

static bool local_groups(Transport *t, int n, const int *sizes, int *const *ranks) {
  (void)t;
  for (int g = 0; g < n; g++)
    if (sizes[g] != 1 || ranks[g][0] != 0) {
      fprintf(stderr, "carve: error: group %d names ranks other than 0, but this run has one rank\n", g);
      return false;
    }
  return true;
}
static bool local_all_reduce(Transport *t, int group, void *buf, int64_t n, DType dt) {
  (void)t, (void)group, (void)buf, (void)n, (void)dt;
  return true;
}
static bool local_copy(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt) {
  (void)t, (void)group;
  memmove(out, in, (size_t)dtype_size(dt) * (size_t)chunk);
  return true;
}
static bool local_p2p(Transport *t, int peer) {
  (void)t;
  fprintf(stderr, "carve: error: this program sends to rank %d, but this run has one rank\n", peer);
  return false;
}
static bool local_send(Transport *t, const void *buf, int64_t bytes, int peer, int tag) {
  (void)buf, (void)bytes, (void)tag;
  return local_p2p(t, peer);
}
static bool local_recv(Transport *t, void *buf, int64_t bytes, int peer, int tag) {
  (void)buf, (void)bytes, (void)tag;
  return local_p2p(t, peer);
}
static bool local_flush(Transport *t) {
  (void)t;
  return true;
}
static bool local_agree(Transport *t, bool ok) {
  (void)t;
  return ok;
}
static double local_value(Transport *t, double v) {
  (void)t;
  return v;
}
static bool local_gather_all(Transport *t, const void *in, int64_t bytes, void *out) {
  (void)t;
  memmove(out, in, (size_t)bytes);
  return true;
}
static bool local_broadcast(Transport *t, void *buf, int64_t bytes, int root) {
  (void)t, (void)buf, (void)bytes, (void)root;
  return true;
}
static void local_abort(Transport *t, int code) {
  (void)t;
  exit(code);
}
static void local_close(Transport *t) { free(t); }

Transport *transport_local(void) {
  Transport *t = xcalloc(1, sizeof(Transport));
  *t = (Transport){.name = "local",
                   .rank = 0,
                   .world = 1,
                   .threads = true,
                   .hurry = 1,
                   .groups = local_groups,
                   .all_reduce = local_all_reduce,
                   .all_gather = local_copy,
                   .reduce_scatter = local_copy,
                   .all_to_all = local_copy,
                   .send = local_send,
                   .recv = local_recv,
                   .flush = local_flush,
                   .agree = local_agree,
                   .sum = local_value,
                   .max = local_value,
                   .gather_all = local_gather_all,
                   .broadcast = local_broadcast,
                   .abort = local_abort,
                   .close = local_close};
  return t;
}

/* ---------------------------------------------------------------- MPI */

typedef struct Pending {
  MPI_Request req;
  void *data;
  int peer, tag;
} Pending;

typedef struct Mpi {
  MPI_Comm *comm; /* per group: its communicator, MPI_COMM_NULL if not a member */
  int ncomm;
  char (*members)[160]; /* per group, for deadline messages: "the members of group 3 (ranks 0 2 4 6)" */
  Pending *pend;
  int npend, cap;
  MPI_Op bf16_sum;
  /* the deadline: when the call in progress began (0: none), what it is
     and whom it waits for; read by the watchdog thread */
  _Atomic double since;
  char call[64], whom[160];
  pthread_t watchdog;
  bool watching;
} Mpi;

/* ---------------------------------------------------------------- deadlines */

static void busy(Transport *t, const char *call, const char *whom) {
  Mpi *m = t->impl;
  snprintf(m->call, sizeof m->call, "%s", call);
  snprintf(m->whom, sizeof m->whom, "%s", whom);
  atomic_store(&m->since, now_seconds());
}
static void idle(Transport *t) { atomic_store(&((Mpi *)t->impl)->since, 0.0); }

/* An MPI call under the deadline: `whom` is who must answer for it to end. */
static int guard_end(Transport *t, int rc) {
  idle(t);
  return rc;
}
#define GUARD(t, call, whom, expr) (busy((t), (call), (whom)), guard_end((t), (expr)))

/* Waits for a request begun by `rc`'s call: tests it; a wait that has
   taken a while yields the core between tests (a peer may share it), or,
   unless the step waits for it (Transport.hurry), sleeps between them, so
   that a thread waiting on its peers leaves the cores to the compute
   beside it. */
static int await(Transport *t, int rc, MPI_Request *req, MPI_Status *st) {
  int done = 0;
  for (long spin = 0; rc == MPI_SUCCESS; spin++) {
    rc = MPI_Test(req, &done, st);
    if (done) break;
    if (spin < 64) continue;
    if (__atomic_load_n(&t->hurry, __ATOMIC_RELAXED))
      sched_yield(); /* a peer on this core (more ranks than cores) gets to answer */
    else
      nanosleep(&(struct timespec){0, spin < 4096 ? 10 * 1000 : 100 * 1000}, NULL);
  }
  return rc;
}
/* a non-blocking MPI call `expr` (its request &R), then the wait, under the deadline */
#define AWAIT(t, call, whom, expr)                                                                                     \
  (busy((t), (call), (whom)), guard_end((t), await((t), (expr), &R, MPI_STATUS_IGNORE)))
#define IN_GROUP(t, g) (((Mpi *)(t)->impl)->members[g])
#define EVERY_RANK "the other ranks"

void transport_members(char *buf, size_t n, int g, int size, const int *ranks) {
  int len = snprintf(buf, n, "the members of group %d (ranks", g);
  for (int k = 0; k < size && len < (int)n; k++) len += snprintf(buf + len, n - (size_t)len, " %d", ranks[k]);
  if (len < (int)n) snprintf(buf + len, n - (size_t)len, ")");
}

void transport_overdue(const Transport *t, const char *doing, const char *whom, const char *call) {
  fprintf(stderr,
          "carve: error: rank %d, %s: no answer from %s within %g s (%s): a rank stopped, hangs or runs another "
          "plan's program; ending the job (--comm-timeout sets the limit)\n",
          t->rank, doing[0] ? doing : "outside the steps (the checks before the first, a checkpoint or trace)", whom,
          t->timeout, call);
  fflush(stdout);
  fflush(stderr);
}

/* Wakes a few times a second; a call past the deadline ends this process
   with the message (the launcher then ends every rank). The main thread is
   inside MPI then, so this thread calls no MPI itself. */
static void *watch(void *arg) {
  Transport *t = arg;
  Mpi *m = t->impl;
  for (;;) {
    nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
    double since = atomic_load(&m->since);
    if (since <= 0 || t->timeout <= 0 || now_seconds() - since <= t->timeout) continue;
    transport_overdue(t, t->doing, m->whom, m->call);
    _exit(1);
  }
  return NULL;
}

static bool mpi_ok(Transport *t, int rc, const char *call) {
  if (rc == MPI_SUCCESS) return true;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fprintf(stderr, "carve: error: rank %d: %s failed: %.*s\n", t->rank, call, len, msg);
  return false;
}

static MPI_Comm comm_of(Transport *t, int group) {
  Mpi *m = t->impl;
  CARVE_ASSERT(group >= 0 && group < m->ncomm && m->comm[group] != MPI_COMM_NULL,
               "collective on a group this rank is not in (the program checker admits only member groups)");
  return m->comm[group];
}

static bool count_fits(Transport *t, int64_t n) {
  if (n <= 0x7fffffff) return true;
  fprintf(stderr, "carve: error: rank %d: a message of %lld elements is over MPI's count limit\n", t->rank,
          (long long)n);
  return false;
}

static bool mpi_groups(Transport *t, int n, const int *sizes, int *const *ranks) {
  Mpi *m = t->impl;
  m->comm = xcalloc((size_t)n + 1, sizeof(MPI_Comm));
  m->ncomm = n;
  for (int g = 0; g < n; g++) {
    bool member = false;
    for (int k = 0; k < sizes[g]; k++) member |= ranks[g][k] == t->rank;
    m->comm[g] = MPI_COMM_NULL;
    if (!mpi_ok(t,
                GUARD(t, "MPI_Comm_split", EVERY_RANK,
                      MPI_Comm_split(MPI_COMM_WORLD, member ? 0 : MPI_UNDEFINED, t->rank, &m->comm[g])),
                "MPI_Comm_split"))
      return false;
    if (member) MPI_Comm_set_errhandler(m->comm[g], MPI_ERRORS_RETURN);
  }
  m->members = xcalloc((size_t)n + 1, sizeof *m->members);
  for (int g = 0; g < n; g++) /* the text once, not at every collective */
    transport_members(m->members[g], sizeof *m->members, g, sizes[g], ranks[g]);
  return true;
}

/* MPI has no bf16: bf16 data moves as 16-bit words and sums through an
   operation of carve's own (each pair added in f32, rounded back). */
static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
  (void)type;
  const uint16_t *a = in;
  uint16_t *b = inout;
  for (int i = 0; i < *len; i++) b[i] = km_bf16(km_f32(a[i]) + km_f32(b[i]));
}

static MPI_Datatype mpi_type(DType dt) { return dt == DT_BF16 ? MPI_UINT16_T : dt == DT_I32 ? MPI_INT32_T : MPI_FLOAT; }

static MPI_Op sum_op(Transport *t, DType dt) { return dt == DT_BF16 ? ((Mpi *)t->impl)->bf16_sum : MPI_SUM; }

static bool mpi_all_reduce(Transport *t, int group, void *buf, int64_t n, DType dt) {
  MPI_Request R;
  return count_fits(t, n) &&
         mpi_ok(t,
                AWAIT(t, "MPI_Allreduce", IN_GROUP(t, group),
                      MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, mpi_type(dt), sum_op(t, dt), comm_of(t, group), &R)),
                "MPI_Allreduce");
}

static bool mpi_all_gather(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt) {
  MPI_Request R;
  return count_fits(t, chunk) && mpi_ok(t,
                                        AWAIT(t, "MPI_Allgather", IN_GROUP(t, group),
                                              MPI_Iallgather(in, (int)chunk, mpi_type(dt), out, (int)chunk,
                                                             mpi_type(dt), comm_of(t, group), &R)),
                                        "MPI_Allgather");
}

static bool mpi_reduce_scatter(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt) {
  MPI_Request R;
  return count_fits(t, chunk) && mpi_ok(t,
                                        AWAIT(t, "MPI_Reduce_scatter_block", IN_GROUP(t, group),
                                              MPI_Ireduce_scatter_block(in, out, (int)chunk, mpi_type(dt),
                                                                        sum_op(t, dt), comm_of(t, group), &R)),
                                        "MPI_Reduce_scatter_block");
}

static bool mpi_all_to_all(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt) {
  MPI_Request R;
  return count_fits(t, chunk) && mpi_ok(t,
                                        AWAIT(t, "MPI_Alltoall", IN_GROUP(t, group),
                                              MPI_Ialltoall(in, (int)chunk, mpi_type(dt), out, (int)chunk, mpi_type(dt),
                                                            comm_of(t, group), &R)),
                                        "MPI_Alltoall");
}

/* Frees the staging blocks of completed sends; with `all`, waits for all. */
static bool reap(Transport *t, bool all) {
  Mpi *m = t->impl;
  int j = 0;
  bool ok = true;
  for (int i = 0; i < m->npend; i++) {
    int done = 0, rc;
    if (all) {
      char whom[64];
      snprintf(whom, sizeof whom, "rank %d (a send, tag %d)", m->pend[i].peer, m->pend[i].tag);
      rc = GUARD(t, "MPI_Wait", whom, MPI_Wait(&m->pend[i].req, MPI_STATUS_IGNORE));
    } else {
      rc = MPI_Test(&m->pend[i].req, &done, MPI_STATUS_IGNORE);
    }
    ok &= mpi_ok(t, rc, all ? "MPI_Wait (send)" : "MPI_Test (send)");
    if (all || done || rc != MPI_SUCCESS)
      free(m->pend[i].data);
    else
      m->pend[j++] = m->pend[i];
  }
  m->npend = j;
  return ok;
}

static bool mpi_send(Transport *t, const void *buf, int64_t bytes, int peer, int tag) {
  Mpi *m = t->impl;
  if (!count_fits(t, bytes) || !reap(t, false)) return false;
  if (m->npend == m->cap) {
    m->cap = m->cap ? 2 * m->cap : 64;
    m->pend = xrealloc(m->pend, sizeof(Pending) * (size_t)m->cap);
  }
  Pending *p = &m->pend[m->npend];
  p->peer = peer, p->tag = tag;
  p->data = xmalloc(bytes ? (size_t)bytes : 1);
  memcpy(p->data, buf, (size_t)bytes);
  if (!mpi_ok(t, MPI_Isend(p->data, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &p->req), "MPI_Isend")) {
    free(p->data);
    return false;
  }
  m->npend++;
  return true;
}

static bool mpi_recv(Transport *t, void *buf, int64_t bytes, int peer, int tag) {
  MPI_Status st;
  if (!count_fits(t, bytes)) return false;
  char whom[64];
  snprintf(whom, sizeof whom, "rank %d (tag %d)", peer, tag);
  MPI_Request R;
  busy(t, "MPI_Recv", whom);
  int rc = guard_end(t, await(t, MPI_Irecv(buf, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R), &R, &st)),
      cls = 0;
  MPI_Error_class(rc, &cls);
  if (rc != MPI_SUCCESS && cls == MPI_ERR_TRUNCATE) {
    fprintf(stderr,
            "carve: error: rank %d: the message from rank %d (tag %d) is larger than the %lld bytes expected: the "
            "ranks run programs of different plans\n",
            t->rank, peer, tag, (long long)bytes);
    return false;
  }
  if (!mpi_ok(t, rc, "MPI_Recv")) return false;
  int got = 0;
  MPI_Get_count(&st, MPI_BYTE, &got);
  if (got != bytes) {
    fprintf(stderr,
            "carve: error: rank %d: expected %lld bytes from rank %d (tag %d), got %d: the ranks run "
            "programs of different plans\n",
            t->rank, (long long)bytes, peer, tag, got);
    return false;
  }
  return true;
}

static bool mpi_flush(Transport *t) { return reap(t, true); }

static bool mpi_agree(Transport *t, bool ok) {
  int mine = ok, all = 0;
  if (!mpi_ok(t,
              GUARD(t, "MPI_Allreduce", EVERY_RANK, MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD)),
              "MPI_Allreduce"))
    return false;
  return all != 0;
}

static double mpi_reduce(Transport *t, double v, MPI_Op op) {
  double r = v;
  mpi_ok(t, GUARD(t, "MPI_Allreduce", EVERY_RANK, MPI_Allreduce(&v, &r, 1, MPI_DOUBLE, op, MPI_COMM_WORLD)),
         "MPI_Allreduce");
  return r;
}
static double mpi_sum(Transport *t, double v) { return mpi_reduce(t, v, MPI_SUM); }
static double mpi_max(Transport *t, double v) { return mpi_reduce(t, v, MPI_MAX); }

static bool mpi_gather_all(Transport *t, const void *in, int64_t bytes, void *out) {
  return count_fits(t, bytes) &&
         mpi_ok(t,
                GUARD(t, "MPI_Allgather", EVERY_RANK,
                      MPI_Allgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, MPI_COMM_WORLD)),
                "MPI_Allgather");
}

static bool mpi_broadcast(Transport *t, void *buf, int64_t bytes, int root) {
  return count_fits(t, bytes) &&
         mpi_ok(t, GUARD(t, "MPI_Bcast", EVERY_RANK, MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD)),
                "MPI_Bcast");
}

static void mpi_abort(Transport *t, int code) {
  (void)t;
  fflush(stdout);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  exit(code); /* MPI_Abort does not return; this is for the compiler */
}

static void mpi_close(Transport *t) {
  Mpi *m = t->impl;
  reap(t, true);
  if (m->watching) pthread_cancel(m->watchdog), pthread_join(m->watchdog, NULL);
  free(m->members);
  for (int g = 0; g < m->ncomm; g++)
    if (m->comm[g] != MPI_COMM_NULL) MPI_Comm_free(&m->comm[g]);
  free(m->comm);
  free(m->pend);
  MPI_Op_free(&m->bf16_sum);
  free(m);
  free(t);
  MPI_Finalize();
}

bool transport_launched(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK"); }

Transport *transport_open(int *argc, char ***argv) {
  if (!transport_launched()) return transport_local();
  /* serialized: the communication thread makes a step's calls, the main
     thread those between steps, never both at once (the watchdog makes none) */
  int level = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &level) != MPI_SUCCESS) carve_fatal("MPI_Init_thread failed");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  Transport *t = xcalloc(1, sizeof(Transport));
  *t = (Transport){.name = "mpi",
                   .world = 1,
                   .groups = mpi_groups,
                   .all_reduce = mpi_all_reduce,
                   .all_gather = mpi_all_gather,
                   .reduce_scatter = mpi_reduce_scatter,
                   .all_to_all = mpi_all_to_all,
                   .send = mpi_send,
                   .recv = mpi_recv,
                   .flush = mpi_flush,
                   .agree = mpi_agree,
                   .sum = mpi_sum,
                   .max = mpi_max,
                   .gather_all = mpi_gather_all,
                   .broadcast = mpi_broadcast,
                   .abort = mpi_abort,
                   .close = mpi_close,
                   .impl = xcalloc(1, sizeof(Mpi))};
  MPI_Op_create(bf16_sum, 1, &((Mpi *)t->impl)->bf16_sum);
  MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &t->world);
  t->timeout = 300;
  t->threads = level >= MPI_THREAD_SERIALIZED;
  t->hurry = 1;
  Mpi *m = t->impl;
  m->watching = pthread_create(&m->watchdog, NULL, watch, t) == 0;
  return t;
}
