/* compile_tiny.h: the rank programs of a model's tiny preset (with `sets`
 * on top, "batch=8,layers=4") under layout L, each handed to `each` as
 * codegen makes it (tests that look at every rank's program). */
#ifndef CARVE_COMPILE_TINY_H
#define CARVE_COMPILE_TINY_H
#include "carve.h"
#include "harness.h"

static inline bool compile_tiny(const char *model, const char *sets, Precision prec, const Layout *L, RankSink each,
                                void *ctx) {
  ElabOptions eo = {.preset = arena_printf("%s-tiny", model)};
  CHECK(parse_sets(sets, &eo.sets, &eo.nsets, stderr), "sets parse: %s", sets);
  Train t;
  train_defaults(&t);
  t.precision = prec;
  return compile_layout(model_resolve(model), &eo, &t, 1, L, each, ctx, stderr);
}
#endif
