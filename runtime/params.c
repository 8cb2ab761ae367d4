/* params.c: parameter files. A rank writes the parameters it holds
 * (--save-params), each with where its elements sit in the whole tensor,
 * so that runs on different rank counts can be compared. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

static bool write_buffer(Backend *be, const Buffer *B, FILE *f) {
  void *tmp = xmalloc((size_t)B->bytes + 1);
  be->download(be, tmp, B->offset, B->bytes);
  bool ok = fwrite(tmp, 1, (size_t)B->bytes, f) == (size_t)B->bytes;
  free(tmp);
  return ok;
}

/* Writes every parameter this rank holds: "name numel offset parts part
   len inner\n", then the raw floats: element e is element offset + e of the
   tensor (a ZeRO-3 shard) or of this rank's part of it, one of `parts`
   slices of a dim with `len` elements of it here and `inner` elements in the
   dims after it (see init). Tests compare runs on different rank counts. */
bool runtime_save_params(Runtime *rt, const char *path, FILE *err) {
  const Program *p = rt->r.p;
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  bool ok = f != NULL;
  for (int b = 0; ok && b < p->nbufs; b++) {
    const Buffer *B = &p->bufs[b];
    if (B->kind != BUF_PARAM) continue;
    int64_t at[MAXIATTR] = {0};
    const Instr *in = program_init_of(p, b);
    if (in) memcpy(at, in->i, sizeof at);
    ok = fprintf(f, "%s %lld %lld %lld %lld %lld %lld\n", B->name, (long long)shape_numel(&B->shape), (long long)at[1],
                 (long long)at[3], (long long)at[4], (long long)at[5], (long long)at[6]) > 0 &&
         write_buffer(rt->r.be, B, f);
  }
  ok = temp_close(f, tmp, path, ok);
  if (!ok) fprintf(err, "carve: error: cannot write parameters to '%s': %s\n", path, strerror(errno));
  return ok;
}
