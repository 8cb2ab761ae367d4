/* runtime.h: what the parts of the interpreter share (runtime/): the state of
 * one rank's run. interp.c owns the step loop; comm.c the communication
 * instructions; overlap.c runs them on a communication thread beside the
 * compute; report.c the per-step lines, the profile and traces;
 * params.c parameter files; checkpoint.c checkpoints (store.c reads them). Kernels are the backend's (backend.h). */
#ifndef CARVE_RUNTIME_H
#define CARVE_RUNTIME_H
#include "backend.h"

typedef struct Overlap Overlap;

typedef struct Run {
  const Program *p;
  const RunOptions *o;
  Backend *be;
  int step;                 /* 1-based step being executed */
  Transport *net, *own_net; /* own_net: made here (local), closed here */
  struct Comm *comm;        /* the device communication interface (comm.h) */
  bool grouped;             /* a group of sends is open (comm.c) */
  void *pad;                /* the backend's memory for cut, gathered and padded operands (comm.c) */
  size_t pad_cap;           /* bytes */
  double comm_s;            /* seconds in communication instructions */
  double exposed_s;         /* seconds the step's thread spent on them or waiting for them */
  Overlap *ov;              /* the communication thread, or NULL: communication on the step's thread */
  double *trace;            /* when set: start and end of each step instruction */
  int ck_lock;              /* 1 + the descriptor of the checkpoint folder's lock (rank 0), or 0 */
  double op_time[OP_COUNT]; /* seconds per opcode, with RunOptions.profile */
  int64_t op_count[OP_COUNT];
} Run;

struct Runtime {
  Run r;
};

/* checkpoint.c: after step `step`, every rank its shard, then rank 0 the
   manifest; false (on every rank) after a message when it could not. */
bool checkpoint_write(Run *R, int step);
/* Before the first step: the checkpoint folder is made (rank 0) and locked
   for this run, so a second run writing into it is refused at once; false
   on every rank after the message. */
bool checkpoint_open(Run *R);
/* --resume or --init-from: fills this rank's buffers (and R->step); false on
   every rank after the first failing rank's message. */
bool checkpoint_restore(Run *R);

/* comm.c: runs a communication instruction through R->comm; NULL or what
   failed. When it returns, later compute sees its output (stream order). */
const char *comm_exec(Run *R, const Instr *in);
/* Says what the rank does now, for the deadline's message (Transport.doing):
   "step 3, instruction 42 (all_reduce)", or "init, ..." */
void comm_doing(Run *R, const Instr *in, int i, bool init);
/* The same, but compute is not made to wait: *done gets the event on the
   communication stream (1) after the transfer, which compute that reads
   its output waits for (runtime/overlap.c). */
const char *comm_post(Run *R, const Instr *in, int *done);
/* ends an open group of sends and waits for everything issued (step end) */
bool comm_flush(Run *R);
/* Chooses and opens R->comm (RunOptions.comm: auto, host or nccl) after the
   transport's groups exist; collective over the world; false after a
   message on every rank. comm_close undoes it. */
bool comm_open(Run *R);
void comm_close(Run *R);
/* NCCL matches the messages between two ranks in the order they are
   issued (it has no tags): every rank's sends to each peer in program
   order (tag and bytes), hashed, against that peer's receives from it.
   Collective over the world, the same answer on every rank; false with
   why when a pair's orders differ. */
bool comm_p2p_in_order(const Program *p, Transport *t, char *why, size_t n);

/* comm.c's cuts, on the backend's communication stream (tests check them
   against plain loops). A tensor cut along one dimension into `parts`
   parts is [outer, parts x len, inner]; a part is [outer, len, inner];
   elements of es bytes. */
typedef struct Cut {
  int64_t outer, len, inner, parts, es;
} Cut;
/* the cut along `dim` of s's other dimensions, parts of `len` along it */
Cut cut_of(const Shape *s, int dim, int64_t len, int64_t parts, int64_t es);
/* part (contiguous) <- part q of whole */
void cut_take(Backend *be, const Cut *c, void *part, const void *whole, int64_t q);
/* part q of whole <- part (contiguous) */
void cut_put(Backend *be, const Cut *c, void *whole, const void *part, int64_t q);
/* whole <- the parts one after another (gather_dim, all_to_all_dim's placing) */
void cut_join(Backend *be, const Cut *c, void *whole, const void *parts);
/* the parts one after another <- whole (all_to_all_dim's cutting) */
void cut_deal(Backend *be, const Cut *c, void *parts, const void *whole);
/* dst_bytes of dst: src's first bytes, zeros past src_bytes (padding) */
void comm_fit(Backend *be, void *dst, int64_t dst_bytes, const void *src, int64_t src_bytes);

/* overlap.c: per instruction of list (n of them), the ordinal (among the
   list's communication instructions) of the last transfer it must wait for,
   or -1 (need), and its own ordinal or -1 (ord). */
void overlap_needs(const Program *p, const Instr *list, int n, int *need, int *ord);
/* Starts the communication thread when the run can overlap (R->ov stays
   NULL otherwise); false after a message when the thread cannot start. */
bool overlap_open(Run *R);
void overlap_close(Run *R);
void overlap_free(Overlap *ov);
/* For the step list: before running it, before instruction i (waits for
   what i needs), at a transfer i (posts it), and at its end (waits for
   all). The waits are false when a transfer failed, with its error and
   instruction in *err and *at. */
void overlap_begin(Run *R);
bool overlap_need(Run *R, int i, const char **err, int *at);
bool overlap_post(Run *R, int i, const char **err, int *at);
bool overlap_end(Run *R, const char **err, int *at);

/* report.c */
typedef struct RunTotals {
  double step_s, comm_s; /* summed over the timed steps (all but the first) */
  double exposed_s;      /* of comm_s, what the step's thread spent on or waited for */
  bool overlap;          /* communication ran on its own thread */
  int timed;
  double peak_bytes;
  const char *precision, *backend;
} RunTotals;
void report_step(const Program *p, int step, double loss, double dt, FILE *out);
void report_done(const Program *p, const RunTotals *t, int steps, FILE *out);
void report_profile(const Run *R, FILE *out);
/* every rank's traced step to rank 0, which writes `path` */
bool trace_write(Run *R, double t0, const char *path);

#endif
