/* comm.h: the device communication interface. The communication
 * instructions (comm.c) move the backend's memory through it: collectives
 * and point-to-point transfers on addresses the backend gives (Backend.addr,
 * Backend.alloc: device pointers on a GPU), in the tensor's dtype, enqueued
 * in order on the backend's communication stream (1).
 *
 * Two implementations:
 *   host   (comm_host.c) the Transport (MPI, or the local one) on host
 *          memory: on a host arena the transport reads and writes it as it
 *          is; on a device arena every operand is staged through host
 *          memory (pinned on a GPU), waiting for the stream around each
 *          transfer.
 *   nccl   (cuda/nccl.c, built with CUDA and NCCL) NCCL communicators, one
 *          for the world and one per program group, on the CUDA backend's
 *          communication stream; nothing waits on the host except flush.
 *
 * Sends: `send` may return before its transfer (its data is copied first,
 * so the buffer can be reused at once, as the Transport's). Transfers
 * between group_begin and group_end are issued together and progress
 * concurrently (NCCL needs that where two ranks both send, then receive).
 * Deadlines: every wait on another rank ends, past Transport.timeout, in
 * the Transport's message naming `doing` and whom it waited for, and the
 * job ends; abort ends the communicators and then the job. */
#ifndef CARVE_COMM_H
#define CARVE_COMM_H
#include "backend.h"

typedef struct Comm Comm;
struct Comm {
  const char *name; /* "host" or "nccl" */
  bool on_stream;   /* its transfers run on stream 1 with no host wait (nccl): compute on stream 0 goes on
                       until it needs their output (runtime/overlap.c) */
  /* collectives over program group `group` (counts in elements) */
  bool (*all_reduce)(Comm *c, int group, void *buf, int64_t n, DType dt);
  /* out holds chunk x group size elements: the members' chunks in rank order */
  bool (*all_gather)(Comm *c, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* in holds chunk x group size elements; out gets the sum of this member's chunk */
  bool (*reduce_scatter)(Comm *c, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* chunk k of in goes to member k; out gets every member's chunk for this one, in rank order */
  bool (*all_to_all)(Comm *c, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* to and from world rank `peer` */
  bool (*send)(Comm *c, const void *buf, int64_t bytes, int peer, int tag);
  bool (*recv)(Comm *c, void *buf, int64_t bytes, int peer, int tag);
  void (*group_begin)(Comm *c);
  bool (*group_end)(Comm *c);
  /* waits (under the deadline) until everything issued, sends included, is done */
  bool (*flush)(Comm *c);
  void (*abort)(Comm *c, int code); /* does not return */
  void (*close)(Comm *c);
  void *impl;
};

/* The host implementation over t for programs like p (any backend). */
Comm *comm_host(Backend *be, Transport *t, const Program *p);
#ifdef CARVE_HAVE_NCCL
/* NCCL on the CUDA backend be: collective over the world (every rank calls
   it). NULL with why (on every rank alike where the reason is shared: two
   ranks on one GPU) when it cannot be had. */
Comm *comm_nccl(Backend *be, Transport *t, const Program *p, char *why, size_t n);
#endif

#endif
