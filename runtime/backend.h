/* backend.h: the compute-backend seam. The interpreter (interp.c) runs a
 * program through this table and knows no kernel: a backend owns the
 * arena, runs one instruction at a time, and reports at `synchronize`, the
 * one host wait per step, the step's loss and whether a kernel found bad
 * data (an id or label out of range).
 *
 * A backend fills the table; the CPU one (runtime/cpu/) is the readable
 * reference, a GPU one is its fast twin. Communication instructions are not
 * kernels: they go through the device communication interface (comm.h),
 * which works on the backend's memory (`addr`); the cuts, interleavings and
 * padding they need are the backend's `copy_rows`, on its communication
 * stream (1).
 *
 * Lifetime: backend_open, then load (checks that every instruction is
 * supported, naming the first that is not, allocates the arena and prepares
 * what the kernels need for this program: the matrix-product primitive of
 * each einsum shape is made here, never per step), then exec ... synchronize
 * once per step, then close. */
#ifndef CARVE_BACKEND_H
#define CARVE_BACKEND_H
#include "carve.h"

/* What a step's kernels read besides their instruction. */
typedef struct StepInfo {
  int step;              /* 1-based step being run (learning-rate warm-up, bias corrections) */
  uint64_t data_step;    /* the step whose data loads draw */
  const TokenData *data; /* NULL: synthetic data from the seed */
} StepInfo;

/* What synchronize reports about the instructions run since the last one. */
typedef struct StepStatus {
  double loss;       /* sum of the loss instructions' weighted values */
  const char *error; /* NULL, or what a kernel found (the first) */
  int error_instr;   /* index of that instruction in its list */
  bool error_init;   /* it was in the init list */
} StepStatus;

typedef struct Backend Backend;
struct Backend {
  const char *name;     /* "cpu" */
  const char *describe; /* what does the work: "oneDNN 2.6, avx512_core_bf16" */
  bool bf16_fast;       /* bf16 matrix units: bf16 is this backend's default precision */
  int64_t workspace;    /* bytes it holds besides the arena for a bf16 program's row-wise ops, at most (a
                           cluster file's `workspace`: memory the planner leaves free) */
  /* Checks and prepares p: false with a message naming the instruction it
     cannot run, or why the arena cannot be had. */
  bool (*load)(Backend *b, const Program *p, FILE *err);
  /* NULL when the backend runs in (list, index) order, or why it cannot */
  const char *(*supports)(Backend *b, const Program *p, const Instr *in);
  /* the arena: host address of an offset (NULL if the arena is not host memory) */
  void *(*host)(Backend *b, int64_t offset);
  void (*upload)(Backend *b, int64_t offset, const void *src, int64_t bytes);
  void (*download)(Backend *b, void *dst, int64_t offset, int64_t bytes);
  void (*copy)(Backend *b, int64_t dst, int64_t src, int64_t bytes);
  /* The backend's memory as addresses (device pointers on a GPU; host
     pointers on the CPU, also for cpu-staged): the arena's offset, and
     blocks outside it (host = true: host memory the device copies to and
     from quickly, pinned on a GPU). */
  void *(*addr)(Backend *b, int64_t offset);
  void *(*alloc)(Backend *b, int64_t bytes, bool host);
  void (*release)(Backend *b, void *p, bool host);
  /* Enqueued on `stream`: `rows` rows of row_bytes each from src (rows
     src_stride bytes apart) to dst (dst_stride apart); src NULL zero-fills
     the rows (padding). Either side may be the backend's memory or host
     memory from alloc(host). */
  void (*copy_rows)(Backend *b, int stream, void *dst, int64_t dst_stride, const void *src, int64_t src_stride,
                    int64_t row_bytes, int64_t rows);
  /* waits on the host for what is enqueued on `stream` */
  void (*drain)(Backend *b, int stream);
  /* runs instruction `index` of the init (init = true) or step list */
  void (*exec)(Backend *b, const Instr *in, int index, bool init, const StepInfo *si);
  /* streams and events: an event recorded on one stream, waited for on
     another, at any time until the next synchronize (the CPU runs
     everything in order: both are no-ops there) */
  int (*record)(Backend *b, int stream);
  void (*wait)(Backend *b, int stream, int event);
  /* waits for everything issued; fills st and clears the loss and error */
  void (*synchronize)(Backend *b, StepStatus *st);
  /* bytes the backend holds besides the arena (scratch, staging) at most so far */
  int64_t (*extra_bytes)(Backend *b);
  void (*close)(Backend *b);
  void *impl;
};

/* "cpu" (the default when name is NULL) or "cuda". NULL with the reason in why when
   the backend is not available here. */
Backend *backend_open(const char *name, char *why, size_t n);
Backend *backend_cpu(void);
/* the first GPU; NULL with why when there is none that answers (no driver,
   no device) */
Backend *backend_cuda(char *why, size_t n);

/* Checks every instruction of p against b->supports; false with the first
   refused instruction named. */
bool backend_check(Backend *b, const Program *p, FILE *err);

/* Do two einsum instructions compute the same product (spec, shapes and
   dtypes)? Backends prepare one plan for each such product. */
bool einsum_same(const Program *p, const Instr *a, const Instr *b);

#endif
