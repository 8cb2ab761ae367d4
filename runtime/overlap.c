/* overlap.c: communication off the step's critical path.
 *
 * On a host arena under MPI, a step's communication instructions run on a
 * communication thread, in program order, while the step's thread goes on
 * with the compute that does not need them. Which compute needs which
 * transfer is worked out once, when the program is loaded, from the bytes
 * of the arena each instruction reads and writes (buffers share arena
 * ranges over time, so names are not enough):
 *
 *   compute i waits for communication c (c before i) when i reads what c
 *   writes, or writes what c reads or writes;
 *
 * and as the thread completes transfers in order, waiting for c waits for
 * every transfer before it too. need[i] is the last such c; the step's
 * thread posts each communication instruction as it reaches it and, before
 * instruction i, waits until need[i] is done. The end of the list waits for
 * all. Every rank thus sends and receives in exactly its program's order (a
 * program free of deadlock stays so), only sooner.
 *
 * The thread makes every MPI call of a step; the step's thread makes MPI
 * calls only between steps, when the thread is idle (MPI_THREAD_SERIALIZED).
 * While compute goes on, a transfer that waits on its peers sleeps between
 * polls (Transport.hurry is 0); while the step's thread waits for one, it
 * polls flat out.
 * A transfer the step waits for within a few instructions (SOON), with
 * nothing queued before it, runs on the step's thread (a hand-off would only add
 * latency). A failed transfer stops the thread's queue: the step's thread
 * sees the error at its next wait and ends the step as before.
 *
 * Used when the arena is host memory, the run has more than one rank, the
 * transport lets another thread call it, and RunOptions.serial_comm is not
 * set.
 *
 * With a device communication that runs on its own stream (NCCL: Comm.
 * on_stream) there is no thread: each transfer is enqueued on the
 * communication stream (1) after an event of the compute stream (0), an
 * event is recorded after it, and compute waits for that event only before
 * instruction i needs it (need[i], the same analysis); the GPU runs the
 * rest beside it. Otherwise communication runs on the step's thread and
 * compute waits right after each transfer (comm.c). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "runtime.h"

struct Overlap {
  int *need;   /* per step instruction: the ordinal of the transfer it waits for, or -1 */
  int *ord;    /* per step instruction: its ordinal among the step's transfers, or -1 */
  int *at;     /* per ordinal: the instruction */
  int *waiter; /* per ordinal: the first instruction that waits for it (nstep: none) */
  int ncomm;
  int *event;   /* streams: per ordinal, the event after the transfer on the communication stream */
  bool streams; /* transfers on a stream, not a thread */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t posted_cv, done_cv;
  int posted, done; /* transfers of the running list: posted and completed */
  bool quit;
  const char *error; /* the first failed transfer's error, and its instruction */
  int error_at;
};

/* ------------------------------------------------------------ the analysis */

typedef struct Range {
  int64_t lo, hi;
} Range;

static Range range_of(const Program *p, int b) {
  return (Range){p->bufs[b].offset, p->bufs[b].offset + p->bufs[b].bytes};
}
static bool meets(Range a, Range b) { return a.lo < b.hi && b.lo < a.hi && a.lo < a.hi && b.lo < b.hi; }

/* Does instruction a conflict with instruction b (either order)? Outputs
   count as read too: accumulating instructions read what they write. */
static bool conflict(const Program *p, const Instr *a, const Instr *b) {
  if (a->out >= 0 && b->out >= 0 && meets(range_of(p, a->out), range_of(p, b->out))) return true;
  for (int k = 0; k < b->nin; k++)
    if (a->out >= 0 && meets(range_of(p, a->out), range_of(p, b->in[k]))) return true;
  for (int k = 0; k < a->nin; k++)
    if (b->out >= 0 && meets(range_of(p, b->out), range_of(p, a->in[k]))) return true;
  return false;
}

void overlap_needs(const Program *p, const Instr *list, int n, int *need, int *ord) {
  int *pending = xmalloc(sizeof(int) * (size_t)(n + 1)), np = 0, nc = 0;
  for (int i = 0; i < n; i++) {
    need[i] = -1;
    ord[i] = instr_comm(&list[i]) ? nc++ : -1;
    if (ord[i] >= 0) {
      pending[np++] = i;
      continue;
    }
    int last = -1; /* the latest pending transfer it conflicts with */
    for (int k = np - 1; k >= 0 && last < 0; k--)
      if (conflict(p, &list[pending[k]], &list[i])) last = k;
    if (last < 0) continue;
    need[i] = ord[pending[last]];
    memmove(pending, pending + last + 1, sizeof(int) * (size_t)(np - last - 1)); /* done with those */
    np -= last + 1;
  }
  free(pending);
}

/* ------------------------------------------------------------ the thread */

/* A transfer whose first waiter is at most this many instructions on runs
   on the step's thread when nothing is queued. */
#define SOON 3

/* Runs transfer i; NULL or what failed. */
static const char *run_one(Run *R, int i) {
  const Instr *in = &R->p->step[i];
  double t0 = now_seconds();
  comm_doing(R, in, i, false);
  const char *err = comm_exec(R, in);
  if (R->trace) R->trace[2 * i] = t0, R->trace[2 * i + 1] = now_seconds();
  if (R->o->profile) {
    R->op_time[in->op] += now_seconds() - t0;
    R->op_count[in->op]++;
  }
  return err;
}

/* Counts transfer i done (the caller holds the lock), keeping the first error. */
static void finished(Overlap *ov, int i, const char *err) {
  if (err && !ov->error) ov->error = err, ov->error_at = i;
  ov->done++;
}

static void *comm_thread(void *arg) {
  Run *R = arg;
  Overlap *ov = R->ov;
  pthread_mutex_lock(&ov->mu);
  for (;;) {
    while (!ov->quit && ov->done == ov->posted) pthread_cond_wait(&ov->posted_cv, &ov->mu);
    if (ov->quit) break;
    int i = ov->at[ov->done];
    bool failed = ov->error != NULL;
    pthread_mutex_unlock(&ov->mu);
    const char *err = failed ? NULL : run_one(R, i); /* after a failure the peers are gone: skip the rest */
    pthread_mutex_lock(&ov->mu);
    finished(ov, i, err);
    pthread_cond_broadcast(&ov->done_cv);
  }
  pthread_mutex_unlock(&ov->mu);
  return NULL;
}

bool overlap_open(Run *R) {
  const Program *p = R->p;
  bool streams = R->comm && R->comm->on_stream;
  if (R->o->serial_comm || (!streams && (R->net->world < 2 || !R->net->threads || !R->be->host(R->be, 0)))) return true;
  Overlap *ov = xcalloc(1, sizeof(Overlap));
  size_t n = (size_t)p->nstep + 1;
  ov->need = xmalloc(sizeof(int) * n), ov->ord = xmalloc(sizeof(int) * n), ov->at = xmalloc(sizeof(int) * n);
  overlap_needs(p, p->step, p->nstep, ov->need, ov->ord);
  for (int i = 0; i < p->nstep; i++)
    if (ov->ord[i] >= 0) ov->at[ov->ncomm++] = i;
  ov->waiter = xmalloc(sizeof(int) * n);
  for (int k = 0; k < ov->ncomm; k++) ov->waiter[k] = p->nstep;
  for (int i = p->nstep - 1; i >= 0; i--) /* the first waiter of a transfer waits for it or a later one */
    if (ov->need[i] >= 0)
      for (int k = ov->need[i]; k >= 0 && ov->at[k] < i && ov->waiter[k] > i; k--) ov->waiter[k] = i;
  ov->streams = streams;
  ov->event = streams ? xcalloc(n, sizeof(int)) : NULL;
  pthread_mutex_init(&ov->mu, NULL);
  pthread_cond_init(&ov->posted_cv, NULL);
  pthread_cond_init(&ov->done_cv, NULL);
  R->ov = ov;
  if (streams || pthread_create(&ov->thread, NULL, comm_thread, R) == 0) return true;
  fprintf(stderr, "carve: error: rank %d: cannot start the communication thread\n", p->rank);
  R->ov = NULL;
  overlap_free(ov);
  return false;
}

void overlap_free(Overlap *ov) {
  if (!ov) return;
  free(ov->need), free(ov->ord), free(ov->at), free(ov->event), free(ov->waiter);
  pthread_mutex_destroy(&ov->mu);
  pthread_cond_destroy(&ov->posted_cv);
  pthread_cond_destroy(&ov->done_cv);
  free(ov);
}

void overlap_close(Run *R) {
  Overlap *ov = R->ov;
  if (!ov) return;
  if (ov->streams) { /* no thread to stop */
    overlap_free(ov);
    R->ov = NULL;
    return;
  }
  pthread_mutex_lock(&ov->mu);
  ov->quit = true;
  pthread_cond_broadcast(&ov->posted_cv);
  pthread_mutex_unlock(&ov->mu);
  pthread_join(ov->thread, NULL);
  overlap_free(ov);
  R->ov = NULL;
}

/* ------------------------------------------------------------ the step's side */

void overlap_begin(Run *R) {
  Overlap *ov = R->ov;
  ov->posted = ov->done = 0;
  ov->error = NULL;
  if (!ov->streams) __atomic_store_n(&R->net->hurry, 0, __ATOMIC_RELAXED); /* compute goes on beside the transfers */
}

/* Waits until transfer `ordinal` (and all before it) is done; false when
   one failed (its error and instruction in *err, *at). */
static bool wait_done(Run *R, int ordinal, const char **err, int *at) {
  Overlap *ov = R->ov;
  pthread_mutex_lock(&ov->mu);
  if (ov->done <= ordinal) { /* the step waits: the thread's transfers poll flat out until it may go on */
    __atomic_store_n(&R->net->hurry, 1, __ATOMIC_RELAXED);
    while (ov->done <= ordinal) pthread_cond_wait(&ov->done_cv, &ov->mu);
    __atomic_store_n(&R->net->hurry, 0, __ATOMIC_RELAXED);
  }
  bool ok = ov->error == NULL;
  if (!ok) *err = ov->error, *at = ov->error_at;
  pthread_mutex_unlock(&ov->mu);
  return ok;
}

bool overlap_need(Run *R, int i, const char **err, int *at) {
  Overlap *ov = R->ov;
  if (ov->need[i] >= 0 && ov->streams) R->be->wait(R->be, 0, ov->event[ov->need[i]]);
  return ov->need[i] < 0 || ov->streams || wait_done(R, ov->need[i], err, at);
}

/* Streams: transfer i enqueued on the communication stream, its event kept. */
static bool post_on_stream(Run *R, int i, const char **err, int *at) {
  Overlap *ov = R->ov;
  const Instr *in = &R->p->step[i];
  double t0 = now_seconds();
  comm_doing(R, in, i, false);
  const char *e = comm_post(R, in, &ov->event[ov->ord[i]]);
  if (R->trace) R->trace[2 * i] = t0, R->trace[2 * i + 1] = now_seconds();
  ov->posted++, ov->done++;
  if (e) *err = e, *at = i;
  return !e;
}

bool overlap_post(Run *R, int i, const char **err, int *at) {
  Overlap *ov = R->ov;
  if (ov->streams) return post_on_stream(R, i, err, at);
  pthread_mutex_lock(&ov->mu);
  /* a transfer the step waits for within a few instructions, nothing queued: a hand-off would only add latency */
  bool inline_ = !ov->error && ov->done == ov->posted && ov->waiter[ov->ord[i]] - i <= SOON;
  if (!inline_) {
    ov->posted++;
    pthread_cond_signal(&ov->posted_cv);
  }
  pthread_mutex_unlock(&ov->mu);
  if (!inline_) return true;
  __atomic_store_n(&R->net->hurry, 1, __ATOMIC_RELAXED); /* the step waits for it */
  const char *e = run_one(R, i); /* the thread is idle and nothing is queued: no MPI call can overlap this one */
  __atomic_store_n(&R->net->hurry, 0, __ATOMIC_RELAXED);
  pthread_mutex_lock(&ov->mu);
  ov->posted++;
  finished(ov, i, e);
  bool ok = ov->error == NULL;
  if (!ok) *err = ov->error, *at = ov->error_at;
  pthread_mutex_unlock(&ov->mu);
  return ok;
}

bool overlap_end(Run *R, const char **err, int *at) {
  Overlap *ov = R->ov;
  if (ov->streams) { /* the compute stream after every transfer: the step's synchronize covers both */
    if (ov->posted) R->be->wait(R->be, 0, ov->event[ov->posted - 1]);
    return true;
  }
  pthread_mutex_lock(&ov->mu);
  int last = ov->posted - 1;
  pthread_mutex_unlock(&ov->mu);
  bool ok = last < 0 || wait_done(R, last, err, at);
  __atomic_store_n(&R->net->hurry, 1, __ATOMIC_RELAXED); /* between steps the step's thread calls, and waits */
  return ok;
}
