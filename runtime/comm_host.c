/* comm_host.c: the "host" device communication interface (comm.h): the
 * Transport on host memory. On a backend whose arena is host memory the
 * transport reads and writes the operands where they are; otherwise each
 * operand is copied into a host block (Backend.alloc(host): pinned on a
 * GPU) on the communication stream, the stream is drained, the transport
 * runs, and the result is copied back on the stream (later work on it
 * waits for that copy in stream order). */
#include <stdlib.h>

#include "comm.h"

typedef struct Host {
  Backend *be;
  Transport *t;
  const Program *p;
  bool staged;        /* the arena is not host memory */
  unsigned char *buf; /* the host block (staged) */
  int64_t cap;        /* its bytes */
} Host;

/* The host block of at least `bytes`, after every copy into or out of it
   is done (the host writes it next). */
static unsigned char *room(Host *h, int64_t bytes) {
  h->be->drain(h->be, 1);
  if (bytes > h->cap) {
    h->be->release(h->be, h->buf, true);
    h->buf = h->be->alloc(h->be, bytes, true);
    h->cap = bytes;
  }
  return h->buf;
}
static void flat(Host *h, void *dst, const void *src, int64_t bytes) {
  h->be->copy_rows(h->be, 1, dst, bytes, src, bytes, bytes, 1);
}

enum { AR, AG, RS, A2A };

/* One collective: `kind` over group g, chunk elements per member. */
static bool collective(Comm *c, int kind, int g, const void *in, int64_t chunk, void *out, DType dt) {
  Host *h = c->impl;
  Transport *t = h->t;
  int64_t es = dtype_size(dt), parts = h->p->group_size[g];
  int64_t nin = (kind == AG || kind == AR ? chunk : chunk * parts) * es;
  int64_t nout = (kind == RS || kind == AR ? chunk : chunk * parts) * es;
  const void *hin = in;
  void *hout = out;
  if (h->staged) {
    unsigned char *s = room(h, kind == AR ? nout : nin + nout);
    flat(h, s, in, nin);
    h->be->drain(h->be, 1);
    hin = s, hout = kind == AR ? s : s + nin;
  }
  bool ok = kind == AR   ? t->all_reduce(t, g, hout, chunk, dt)
            : kind == AG ? t->all_gather(t, g, hin, chunk, hout, dt)
            : kind == RS ? t->reduce_scatter(t, g, hin, chunk, hout, dt)
                         : t->all_to_all(t, g, hin, chunk, hout, dt);
  if (h->staged) flat(h, out, hout, nout);
  return ok;
}

static bool host_all_reduce(Comm *c, int g, void *buf, int64_t n, DType dt) {
  return collective(c, AR, g, buf, n, buf, dt);
}
static bool host_all_gather(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  return collective(c, AG, g, in, chunk, out, dt);
}
static bool host_reduce_scatter(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  return collective(c, RS, g, in, chunk, out, dt);
}
static bool host_all_to_all(Comm *c, int g, const void *in, int64_t chunk, void *out, DType dt) {
  return collective(c, A2A, g, in, chunk, out, dt);
}

/* the transport's send copies the data: the host block is free after it */
static bool host_send(Comm *c, const void *buf, int64_t bytes, int peer, int tag) {
  Host *h = c->impl;
  if (!h->staged) return h->t->send(h->t, buf, bytes, peer, tag);
  unsigned char *s = room(h, bytes);
  flat(h, s, buf, bytes);
  h->be->drain(h->be, 1);
  return h->t->send(h->t, s, bytes, peer, tag);
}
static bool host_recv(Comm *c, void *buf, int64_t bytes, int peer, int tag) {
  Host *h = c->impl;
  if (!h->staged) return h->t->recv(h->t, buf, bytes, peer, tag);
  unsigned char *s = room(h, bytes);
  bool ok = h->t->recv(h->t, s, bytes, peer, tag);
  flat(h, buf, s, bytes);
  return ok;
}

/* MPI's sends never wait for their receiver: groups change nothing */
static void host_group_begin(Comm *c) { (void)c; }
static bool host_group_end(Comm *c) {
  (void)c;
  return true;
}
static bool host_flush(Comm *c) {
  Host *h = c->impl;
  h->be->drain(h->be, 1);
  return true;
}
static void host_abort(Comm *c, int code) {
  Host *h = c->impl;
  h->t->abort(h->t, code);
}
static void host_close(Comm *c) {
  Host *h = c->impl;
  if (h->buf) h->be->drain(h->be, 1), h->be->release(h->be, h->buf, true);
  free(h);
  free(c);
}

Comm *comm_host(Backend *be, Transport *t, const Program *p) {
  Host *h = xcalloc(1, sizeof(Host));
  *h = (Host){.be = be, .t = t, .p = p, .staged = !be->host(be, 0)};
  Comm *c = xcalloc(1, sizeof(Comm));
  *c = (Comm){.name = "host",
              .all_reduce = host_all_reduce,
              .all_gather = host_all_gather,
              .reduce_scatter = host_reduce_scatter,
              .all_to_all = host_all_to_all,
              .send = host_send,
              .recv = host_recv,
              .group_begin = host_group_begin,
              .group_end = host_group_end,
              .flush = host_flush,
              .abort = host_abort,
              .close = host_close,
              .impl = h};
  return c;
}
