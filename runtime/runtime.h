/* runtime.h: what the parts of the interpreter share (runtime/): the state of
 * one rank's run. interp.c owns the step loop; comm.c the communication
 * instructions; report.c the per-step lines, the profile and traces;
 * params.c parameter files; checkpoint.c checkpoints (store.c reads them). Kernels are the backend's (backend.h). */
#ifndef CARVE_RUNTIME_H
#define CARVE_RUNTIME_H
#include "backend.h"

typedef struct Run {
  const Program *p;
  const RunOptions *o;
  Backend *be;
  int step;                 /* 1-based step being executed */
  Transport *net, *own_net; /* own_net: made here (local), closed here */
  void *pad;                /* host staging for gathers and scatters (comm.c) */
  size_t pad_cap;           /* bytes */
  void *stage;              /* host copies of a device arena's communication operands (comm.c) */
  size_t stage_cap;         /* bytes */
  int sx, so;               /* the buffers staged now (-1: none) */
  void *hx, *ho;            /* their host copies */
  double comm_s;            /* seconds in communication instructions */
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

/* comm.c: runs a communication instruction through the transport on the
   arena's host memory; NULL or what failed. */
const char *comm_exec(Run *R, const Instr *in);

/* report.c */
typedef struct RunTotals {
  double step_s, comm_s; /* summed over the timed steps (all but the first) */
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
