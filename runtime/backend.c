/* backend.c: choosing a backend, and the load-time checks every backend
 * shares (backend.h). */
#include <string.h>

#include "backend.h"

/* "cpu-staged": the CPU backend with its arena out of the host's reach, as
   a GPU's is (host() is NULL; only upload and download touch it), so any
   machine can test the paths a device backend takes: communication staged
   through host memory, parameters and checkpoints copied in and out. */
static void *no_host(Backend *b, int64_t offset) {
  (void)b, (void)offset;
  return NULL;
}

Backend *backend_open(const char *name, char *why, size_t n) {
  if (!name || strcmp(name, "cpu") == 0) return backend_cpu();
  if (strcmp(name, "cpu-staged") == 0) {
    Backend *b = backend_cpu();
    b->name = "cpu-staged";
    b->host = no_host;
    return b;
  }
  if (strcmp(name, "cuda") == 0) {
#ifdef CARVE_HAVE_CUDA
    return backend_cuda(why, n);
#else
    snprintf(why, n, "this carve was built without the CUDA backend (no CUDA toolkit when it was configured)");
    return NULL;
#endif
  }
  snprintf(why, n, "unknown backend '%s' (backends: cpu, cuda, cpu-staged)", name);
  return NULL;
}

bool backend_check(Backend *b, const Program *p, FILE *err) {
  const Instr *lists[2] = {p->init, p->step};
  int counts[2] = {p->ninit, p->nstep};
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < counts[s]; i++) {
      const Instr *in = &lists[s][i];
      const char *why = b->supports(b, p, in);
      if (why) {
        fprintf(err, "carve: error: program for rank %d, %s instruction %d (%s): the %s backend cannot run it: %s\n",
                p->rank, s ? "step" : "init", i, op_info[in->op].name, b->name, why);
        return false;
      }
    }
  return true;
}

bool einsum_same(const Program *p, const Instr *a, const Instr *b) {
  if (strcmp(a->spec, b->spec) || a->nin != b->nin) return false;
  int ba[MAXIN + 1], bb[MAXIN + 1];
  for (int k = 0; k < a->nin; k++) ba[k] = a->in[k], bb[k] = b->in[k];
  ba[a->nin] = a->out, bb[a->nin] = b->out;
  for (int k = 0; k <= a->nin; k++)
    if (p->bufs[ba[k]].dtype != p->bufs[bb[k]].dtype || !shape_eq(&p->bufs[ba[k]].shape, &p->bufs[bb[k]].shape))
      return false;
  return true;
}
