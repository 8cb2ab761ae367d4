/* cmd_compare.c: `carve simulate PLAN [--trace out.json]` replays a plan's
 * step through the simulator; `carve compare PLAN...` puts plans side by
 * side. PLAN is a plan.json or a directory holding one (carve plan -o DIR). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"
#include "tools.h"

static const Json *load_plan(const char *arg, const char **path_out) {
  const char *path = *path_out = plan_path(arg);
  char why[512];
  const Json *j = plan_read(path, why, sizeof why);
  if (!j) fprintf(stderr, "carve: error: %s: %s\n", path, why);
  return j;
}

int cmd_simulate(int argc, char **argv) {
  if (wants_help(argc, argv)) {
    printf("usage: carve simulate PLAN [--trace out.json]\n\n"
           "Replays one training step of PLAN (a plan.json, or the directory carve plan -o wrote) through the\n"
           "event-driven simulator: per-device busy time, the bubble, the step time; --trace writes a\n"
           "Chrome/Perfetto trace of the timeline (open it at ui.perfetto.dev or chrome://tracing).\n");
    return 0;
  }
  const char *plan = NULL, *trace = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--trace")) {
      if (++i >= argc) return usage_error("simulate", "--trace needs a file");
      trace = argv[i];
    } else if (argv[i][0] == '-') {
      return usage_error("simulate", "unknown option '%s'", argv[i]);
    } else if (plan) {
      return usage_error("simulate", "one plan at a time");
    } else {
      plan = argv[i];
    }
  }
  if (!plan) return usage_error("simulate", "which plan? give a plan.json or a directory from carve plan -o");
  const char *path;
  const Json *j = load_plan(plan, &path);
  PipelinePlan *p = j ? plan_pipeline_of(j) : NULL;
  SimInput in;
  SimResult r;
  if (!p || !pipeline_sim_input(p, &in, stderr) || !simulate(&in, &r, stderr)) return 1;
  printf("%s: %d stage%s, %s, %d microbatch%s, %s\n", path, p->nstages, p->nstages == 1 ? "" : "s",
         sched_names[p->schedule], p->microbatches, p->microbatches == 1 ? "" : "es", json_str(j, "precision", "fp32"));
  printf("step %.6g s, bubble %.1f%%\n", r.step_s, 100 * r.bubble);
  for (int d = 0; d < p->nstages; d++) printf("  stage %d: busy %.6g s\n", d, r.busy_s[d]);
  if (trace) {
    if (!sim_trace_write(&r, trace, stderr)) return 1;
    printf("trace written to %s\n", trace);
  }
  return 0;
}

typedef struct Row {
  const char *name;
  double v[12];
} Row;

int cmd_compare(int argc, char **argv) {
  if (wants_help(argc, argv) || argc < 2) {
    printf("usage: carve compare PLAN PLAN...\n\n"
           "Puts plans (plan.json files or carve plan -o directories) side by side: predicted step time,\n"
           "TFLOP/s per device, MFU, bubble, memory per device and headroom, communication by kind, and\n"
           "what separates each plan from the fastest.\n");
    return argc < 2 && !wants_help(argc, argv) ? 2 : 0;
  }
  int n = argc - 1;
  const Json **plans = arena_alloc(sizeof(Json *) * (size_t)n);
  const char **paths = arena_alloc(sizeof(char *) * (size_t)n);
  for (int i = 0; i < n; i++)
    if (!(plans[i] = load_plan(argv[i + 1], &paths[i]))) return 1;
  static const char *const kinds[] = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "send-recv"};
  printf("%-28s", "");
  for (int i = 0; i < n; i++) printf(" %16s", arena_printf("[%d]", i + 1));
  printf("\n");
#define ROW(label, expr)                                                                                               \
  do {                                                                                                                 \
    printf("%-28s", label);                                                                                            \
    for (int i = 0; i < n; i++) {                                                                                      \
      const Json *j = plans[i];                                                                                        \
      (void)j;                                                                                                         \
      printf(" %16s", expr);                                                                                           \
    }                                                                                                                  \
    printf("\n");                                                                                                      \
  } while (0)
  char b[64];
  ROW("model", json_str(j, "model", "?"));
  ROW("cluster", json_str(j, "cluster", "?"));
  ROW("stages", json_get(j, "stages") ? arena_printf("%d", json_get(j, "stages")->n) : "1 (one mesh)");
  ROW("schedule", json_str(j, "schedule", "-"));
  ROW("microbatches", arena_printf("%g", json_num(j, "microbatches", 1)));
  ROW("precision", json_str(j, "precision", "-"));
  ROW("predicted step (s)", arena_printf("%.4g", json_num(j, "predicted_step_s", NAN)));
  ROW("TFLOP/s per device", json_get(j, "predicted_tflops_per_device")
                                ? arena_printf("%.1f", json_num(j, "predicted_tflops_per_device", 0))
                                : "-");
  ROW("MFU", json_get(j, "predicted_mfu") ? arena_printf("%.1f%%", 100 * json_num(j, "predicted_mfu", 0)) : "-");
  ROW("bubble", arena_printf("%.1f%%", 100 * json_num(j, "bubble", 0)));
  ROW("memory per device", fmt_bytes(json_num(j, "memory_per_device_bytes", 0), b, sizeof b));
  ROW("headroom", arena_printf("%.0f%%", 100 * (1 - json_num(j, "memory_per_device_bytes", 0) /
                                                        json_num(j, "device_memory_bytes", INFINITY))));
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
    ROW(arena_printf("%s per device", kinds[k]),
        fmt_bytes(json_num(json_get(j, "communication_bytes_per_device"), kinds[k], 0), b, sizeof b));
#undef ROW
  /* what separates each plan from the fastest */
  int best = 0;
  for (int i = 1; i < n; i++)
    if (json_num(plans[i], "predicted_step_s", INFINITY) < json_num(plans[best], "predicted_step_s", INFINITY))
      best = i;
  printf("\nfastest: [%d] %s\n", best + 1, paths[best]);
  for (int i = 0; i < n; i++) {
    if (i == best) continue;
    double ratio = json_num(plans[i], "predicted_step_s", NAN) / json_num(plans[best], "predicted_step_s", NAN);
    double ci = 0, cb = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
      ci += json_num(json_get(plans[i], "communication_bytes_per_device"), kinds[k], 0);
      cb += json_num(json_get(plans[best], "communication_bytes_per_device"), kinds[k], 0);
    }
    printf("[%d] is %.2fx slower: communication %s vs %s per device", i + 1, ratio, fmt_bytes(ci, b, sizeof b),
           fmt_bytes(cb, b + 32, 32));
    double bi = json_num(plans[i], "bubble", 0), bb = json_num(plans[best], "bubble", 0);
    if (fabs(bi - bb) > 0.01) printf(", bubble %.1f%% vs %.1f%%", 100 * bi, 100 * bb);
    printf("\n");
  }
  return 0;
}
