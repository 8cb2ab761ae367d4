/* pipe.c: rank programs made on one thread and handed, in rank order, to a
 * sink on another, so that making rank i + 1 overlaps writing rank i.
 *
 * The maker (the calling thread) makes program i in arena side i % 2 (see
 * arena_switch), hands it over, and goes on to i + 1 in the other side. It
 * empties side i % 2 again only after the sink is done with program i - 2,
 * the last one made there, so at most two programs are alive: the one being
 * written and the one being made. The sink's thread has its own arena, and
 * whatever the sink allocates there for a program is freed after it. A sink
 * that fails stops the writing at that rank: later programs may have been
 * made, but none is handed to the sink. */
#include <pthread.h>

#include "lower.h"

typedef struct Pipe {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const Program *slot[2]; /* program i waits in slot[i % 2] */
  int handed, written;    /* programs handed over; programs the sink is done with */
  bool done;              /* the maker hands over no more */
  bool failed;            /* the sink said no */
  RankSink each;
  void *ctx;
} Pipe;

/* The sink's thread: each program in turn, until the maker is done or the
   sink fails. */
static void *sink_thread(void *arg) {
  Pipe *P = arg;
  pthread_mutex_lock(&P->mu);
  for (;;) {
    while (P->written == P->handed && !P->done) pthread_cond_wait(&P->cv, &P->mu);
    if (P->written == P->handed) break;
    const Program *p = P->slot[P->written % 2];
    pthread_mutex_unlock(&P->mu);
    ArenaMark m = arena_mark();
    bool ok = P->each(p, P->ctx);
    arena_release(m);
    pthread_mutex_lock(&P->mu);
    P->written++;
    P->failed |= !ok;
    pthread_cond_broadcast(&P->cv);
    if (!ok) break;
  }
  pthread_mutex_unlock(&P->mu);
  arena_reset(); /* this thread's arena */
  return NULL;
}

/* Waits until the sink is done with the first `n` programs (or failed);
   false if it failed. */
static bool wait_written(Pipe *P, int n) {
  pthread_mutex_lock(&P->mu);
  while (P->written < n && !P->failed) pthread_cond_wait(&P->cv, &P->mu);
  bool ok = !P->failed;
  pthread_mutex_unlock(&P->mu);
  return ok;
}

static void hand_over(Pipe *P, int i, const Program *p) {
  pthread_mutex_lock(&P->mu);
  P->slot[i % 2] = p;
  P->handed = i + 1;
  pthread_cond_broadcast(&P->cv);
  pthread_mutex_unlock(&P->mu);
}

/* Makes program i in `side`, emptied first (the sink is done with what it
   held). */
static const Program *make_in(Arena *side, ArenaMark *m, RankMaker make, void *mctx, int i) {
  arena_switch(side);
  arena_release(*m);
  *m = arena_mark();
  const Program *p = make(mctx, i);
  arena_switch(side);
  return p;
}

bool ranks_pipelined(int n, RankMaker make, void *mctx, RankSink each, void *ctx) {
  Pipe P = {.each = each, .ctx = ctx};
  pthread_mutex_init(&P.mu, NULL);
  pthread_cond_init(&P.cv, NULL);
  pthread_t th;
  if (pthread_create(&th, NULL, sink_thread, &P) != 0) carve_fatal("cannot start a thread to write programs");
  Arena side[2] = {{0}};
  ArenaMark mark[2] = {{0}}; /* where each side was empty */
  for (int i = 0; i < n && wait_written(&P, i - 1); i++)
    hand_over(&P, i, make_in(&side[i % 2], &mark[i % 2], make, mctx, i));
  pthread_mutex_lock(&P.mu);
  P.done = true;
  pthread_cond_broadcast(&P.cv);
  pthread_mutex_unlock(&P.mu);
  pthread_join(th, NULL);
  arena_free(&side[0]);
  arena_free(&side[1]);
  pthread_mutex_destroy(&P.mu);
  pthread_cond_destroy(&P.cv);
  return !P.failed;
}
