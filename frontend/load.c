/* load.c: from a model argument on the command line to a graph: resolving
 * shipped model names, reading the file, parsing --set lists. */
#include "carve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CARVE_MODELS_DIR
#define CARVE_MODELS_DIR "models"
#endif

/* A path that exists is used as it is; otherwise "gpt" names the shipped
 * models/gpt.graph (next to the binary's source tree or installed share). */
const char *model_resolve(const char *arg) {
  if (access(arg, R_OK) == 0 || strchr(arg, '/')) return arg;
  const char *dirs[] = {getenv("CARVE_MODELS"), CARVE_MODELS_DIR, "models"};
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    if (!dirs[i]) continue;
    const char *p = arena_printf("%s/%s%s", dirs[i], arg, strstr(arg, ".graph") ? "" : ".graph");
    if (access(p, R_OK) == 0) return p;
  }
  return arg;
}

Graph *frontend_load(const char *path, const ElabOptions *opt, Diag *d) {
  size_t len;
  char why[128];
  char *text = read_file_limit(path, LIMIT_TEXT, &len, why, sizeof why);
  if (!text) {
    diag_file(d, path, "cannot read the model: %s", why);
    return NULL;
  }
  Graph *g = frontend_load_text(path, text, len, opt, d);
  free(text);
  return g;
}

Graph *frontend_load_text(const char *name, const char *text, size_t len, const ElabOptions *opt, Diag *d) {
  Source *src = arena_alloc(sizeof(Source));
  src->path = arena_strdup(name);
  src->text = arena_strndup(text, len);
  src->len = len;
  int errors = d->errors;
  Ast *ast = parse(src, d);
  if (d->errors > errors) return NULL;
  return elaborate(ast, opt, d);
}

bool parse_sets(const char *text, Override **sets, int *nsets, FILE *err) {
  const char *p = text;
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    char *end = NULL;
    long long v = 0;
    if (eq && eq > p) {
      errno = 0;
      v = strtoll(eq + 1, &end, 10);
    }
    if (!eq || eq == p || end == eq + 1 || end != p + len || errno) {
      fprintf(err, "carve: error: --set expects name=integer[,name=integer...], got '%.*s'\n", (int)len, p);
      return false;
    }
    *sets = xrealloc(*sets, sizeof(Override) * (size_t)(*nsets + 1));
    (*sets)[(*nsets)++] = (Override){arena_strndup(p, (size_t)(eq - p)), v, false};
    p += len + (comma != NULL);
  }
  return true;
}

Graph *frontend_load_microbatch(const char *path, const ElabOptions *opt, int microbatches, Diag *d) {
  Graph *g = frontend_load(path, opt, d);
  if (!g || microbatches <= 1) return g;
  int64_t batch = graph_dim(g, "batch", -1);
  if (batch < 0) {
    diag_file(d, path, "%d microbatches need a dim named 'batch' in the model", microbatches);
    return NULL;
  }
  if (batch % microbatches) {
    diag_file(d, path, "%d microbatches do not divide the batch of %lld", microbatches, (long long)batch);
    return NULL;
  }
  ElabOptions e = *opt;
  e.sets = xcalloc((size_t)opt->nsets + 1, sizeof(Override));
  if (opt->nsets) memcpy(e.sets, opt->sets, sizeof(Override) * (size_t)opt->nsets);
  int k = 0;
  while (k < e.nsets && strcmp(e.sets[k].name, "batch")) k++;
  e.sets[k] = (Override){"batch", batch / microbatches, false};
  if (k == e.nsets) e.nsets++;
  g = frontend_load(path, &e, d);
  free(e.sets);
  return g;
}

/* The front of the compile chain, pass by pass: load and check, dump,
 * autodiff, dump. */
Graph *frontend_training(const Front *f, FILE *err) {
  Diag d;
  diag_init(&d, err);
  Graph *g = frontend_load_microbatch(f->path, f->eo, f->microbatches, &d); /* load, check */
  if (!g) {
    if (d.errors) fprintf(err, "%d error%s\n", d.errors, d.errors == 1 ? "" : "s");
    return NULL;
  }
  if (f->dump) graph_dump(g, f->dump);
  if (!autodiff(g, f->scale > 1 ? f->scale : 1, err)) return NULL;
  if (f->dump_training) graph_dump(g, f->dump_training);
  return g;
}
