/* cmd_export.c: `carve export CK -o FILE`, a checkpoint's whole parameters
 * as one safetensors file: an 8-byte little-endian header length, a JSON
 * header naming each tensor's dtype, shape and byte range, then the raw
 * little-endian data. Tensors keep carve's parameter names (the rule
 * --init-from reads them back by; docs/checkpoints.md). Each tensor is
 * assembled from the ranks' pieces one at a time, so memory stays that of
 * the largest tensor. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/store.h"
#include "tools.h"

static void shape_json(FILE *f, const Shape *s) {
  fputc('[', f);
  for (int k = 0; k < s->rank; k++) fprintf(f, "%s%" PRId64, k ? "," : "", s->d[k]);
  fputc(']', f);
}

/* The JSON header, padded with spaces to a multiple of 8 bytes (malloc). */
static char *header(const TensorStore *s, const char **names, const Shape *shapes, int n, size_t *len) {
  char *text = NULL;
  FILE *m = open_memstream(&text, len);
  fprintf(m, "{\"__metadata__\":{\"format\":\"pt\",\"carve_model\":");
  json_write_str(m, s->model);
  fprintf(m, ",\"carve_step\":\"%d\",\"carve_plan\":\"%016" PRIx64 "\"}", s->step, s->plan);
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    int64_t bytes = 4 * shape_numel(&shapes[i]);
    fputc(',', m);
    json_write_str(m, names[i]);
    fprintf(m, ":{\"dtype\":\"F32\",\"shape\":");
    shape_json(m, &shapes[i]);
    fprintf(m, ",\"data_offsets\":[%" PRId64 ",%" PRId64 "]}", at, at + bytes);
    at += bytes;
  }
  fputc('}', m);
  while ((ftell(m) + 8) % 8) fputc(' ', m);
  fclose(m);
  return text;
}

static bool export_tensors(const TensorStore *s, const char *out) {
  int n = store_tensors(s, BUF_PARAM, NULL, NULL);
  const char **names = xcalloc((size_t)n + 1, sizeof(char *));
  Shape *shapes = xcalloc((size_t)n + 1, sizeof(Shape));
  store_tensors(s, BUF_PARAM, names, shapes);
  size_t hlen;
  char *head = header(s, names, shapes, n, &hlen);
  const char *tmp;
  FILE *f = temp_beside(out, &tmp);
  uint64_t len64 = hlen;
  bool ok = f && fwrite(&len64, 8, 1, f) == 1 && fwrite(head, 1, hlen, f) == hlen, data = true;
  for (int i = 0; ok && data && i < n; i++) {
    int64_t numel = shape_numel(&shapes[i]);
    float *v = xmalloc(sizeof(float) * (size_t)numel);
    data = store_fill(s, names[i], &shapes[i], &(Piece){.parts = 1}, numel, v, stderr); /* says what is wrong */
    ok = !data || fwrite(v, sizeof(float), (size_t)numel, f) == (size_t)numel;
    free(v);
  }
  ok = temp_close(f, tmp, out, ok && data);
  if (!ok && data) fprintf(stderr, "carve: error: cannot write '%s': %s\n", out, strerror(errno));
  if (ok) printf("wrote %s: %d parameter tensors of %s after step %d\n", out, n, s->model, s->step);
  free(head);
  free(names);
  free(shapes);
  return ok;
}

int cmd_export(int argc, char **argv) {
  if (wants_help(argc, argv)) {
    printf("usage: carve export CK -o FILE.safetensors\n\n"
           "Writes the parameters of checkpoint CK (a step-N folder, or the newest checkpoint in a\n"
           "--checkpoint-dir) as one safetensors file of whole f32 tensors named as carve names them\n"
           "(\"layers.0.w_q\"), which PyTorch and Hugging Face tools read and '--init-from' starts from.\n"
           "Optimizer state stays in the checkpoint.\n");
    return 0;
  }
  const char *ck = NULL, *out = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
      if (i + 1 == argc) return usage_error("export", "%s needs a value", argv[i]);
      out = argv[++i];
    } else if (argv[i][0] == '-' || ck) {
      return usage_error("export", "unexpected argument '%s'", argv[i]);
    } else {
      ck = argv[i];
    }
  }
  if (!ck || !out) return usage_error("export", "give a checkpoint and -o FILE");
  const char *why, *path = checkpoint_resolve(ck, &why);
  if (!path) {
    fprintf(stderr, "carve: error: %s\n", why);
    return 1;
  }
  char in_way[128]; /* a folder, a FIFO or a device in the way: said before the work, not after */
  if (!output_free(out, in_way, sizeof in_way)) {
    fprintf(stderr, "carve: error: cannot write '%s': %s\n", out, in_way);
    return 1;
  }
  TensorStore *s = store_open(path, stderr);
  bool ok = s && export_tensors(s, out);
  store_close(s);
  return ok ? 0 : 1;
}
