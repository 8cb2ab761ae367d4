/* cmd_compare.c: `carve simulate PLAN [--trace out.json]` replays a plan's
 * step through the simulator; `carve compare PLAN... [--html FILE]` puts
 * plans side by side (the page: tools/compare_html.c). PLAN is a plan.json
 * or a directory holding one (carve plan -o DIR). */
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

/* The side-by-side table: a label and one cell per plan, row after row. */
typedef struct Table {
  int n, rows; /* plans; rows so far */
  const char **cells;
} Table;

#define MAX_ROWS 24

static const char **row_new(Table *t, const char *label) {
  const char **row = t->cells + (size_t)t->rows++ * (size_t)(t->n + 1);
  row[0] = label;
  return row + 1;
}

static const char *const comm_kinds[] = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "send-recv"};
enum { NCOMM_KINDS = sizeof comm_kinds / sizeof comm_kinds[0] };

static void compare_rows(Table *t, const Json *const *plans) {
  char b[32];
  const char **r;
#define ROW(label, expr)                                                                                               \
  r = row_new(t, label);                                                                                               \
  for (int i = 0; i < t->n; i++) {                                                                                     \
    const Json *j = plans[i];                                                                                          \
    r[i] = (expr);                                                                                                     \
  }
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
  ROW("memory per device", arena_printf("%s", fmt_bytes(json_num(j, "memory_per_device_bytes", 0), b, sizeof b)));
  ROW("headroom", arena_printf("%.0f%%", 100 * (1 - json_num(j, "memory_per_device_bytes", 0) /
                                                        json_num(j, "device_memory_bytes", INFINITY))));
  for (int k = 0; k < NCOMM_KINDS; k++) {
    ROW(arena_printf("%s per device", comm_kinds[k]),
        arena_printf(
            "%s", fmt_bytes(json_num(json_get(j, "communication_bytes_per_device"), comm_kinds[k], 0), b, sizeof b)));
  }
#undef ROW
}

/* What separates each plan from the fastest: one line each (the first names
   the fastest). */
static const char **compare_lines(const Json *const *plans, const char *const *paths, int n) {
  const char **lines = arena_alloc(sizeof(char *) * (size_t)n);
  int best = 0;
  for (int i = 1; i < n; i++)
    if (json_num(plans[i], "predicted_step_s", INFINITY) < json_num(plans[best], "predicted_step_s", INFINITY))
      best = i;
  lines[0] = arena_printf("fastest: [%d] %s", best + 1, paths[best]);
  char b[32], c[32];
  for (int i = 0, k = 1; i < n; i++) {
    if (i == best) continue;
    double ratio = json_num(plans[i], "predicted_step_s", NAN) / json_num(plans[best], "predicted_step_s", NAN);
    double ci = 0, cb = 0;
    for (int q = 0; q < NCOMM_KINDS; q++) {
      ci += json_num(json_get(plans[i], "communication_bytes_per_device"), comm_kinds[q], 0);
      cb += json_num(json_get(plans[best], "communication_bytes_per_device"), comm_kinds[q], 0);
    }
    lines[k] = arena_printf("[%d] is %.2fx slower: communication %s vs %s per device", i + 1, ratio,
                            fmt_bytes(ci, b, sizeof b), fmt_bytes(cb, c, sizeof c));
    double bi = json_num(plans[i], "bubble", 0), bb = json_num(plans[best], "bubble", 0);
    if (fabs(bi - bb) > 0.01) lines[k] = arena_printf("%s, bubble %.1f%% vs %.1f%%", lines[k], 100 * bi, 100 * bb);
    k++;
  }
  return lines;
}

static void print_table(const Table *t) {
  for (int r = -1; r < t->rows; r++) {
    const char *const *row = t->cells + (size_t)(r < 0 ? 0 : r) * (size_t)(t->n + 1);
    printf("%-28s", r < 0 ? "" : row[0]);
    for (int i = 0; i < t->n; i++) printf(" %16s", r < 0 ? arena_printf("[%d]", i + 1) : row[i + 1]);
    printf("\n");
  }
}

int cmd_compare(int argc, char **argv) {
  if (wants_help(argc, argv) || argc < 2) {
    printf("usage: carve compare PLAN PLAN... [--html FILE]\n\n"
           "Puts plans (plan.json files or carve plan -o directories) side by side: predicted step time,\n"
           "TFLOP/s per device, MFU, bubble, memory per device and headroom, communication by kind, and\n"
           "what separates each plan from the fastest. --html FILE also writes them as one self-contained\n"
           "page: the table, and for each plan its simulated timeline, its memory against the device's\n"
           "capacity, and (for a plan of one mesh) its collectives and every tensor's sharding.\n");
    return argc < 2 && !wants_help(argc, argv) ? 2 : 0;
  }
  const char *html = NULL;
  int n = 0;
  const Json **plans = arena_alloc(sizeof(Json *) * (size_t)argc);
  const char **paths = arena_alloc(sizeof(char *) * (size_t)argc);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--html")) {
      if (++i >= argc) return usage_error("compare", "--html needs a file");
      html = argv[i];
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage_error("compare", "unknown option '%s'", argv[i]);
    } else if (!(plans[n] = load_plan(argv[i], &paths[n]))) {
      return 1;
    } else {
      n++;
    }
  }
  if (!n) return usage_error("compare", "which plans? give plan.json files or directories from carve plan -o");
  Table t = {n, 0, arena_alloc(sizeof(char *) * (size_t)MAX_ROWS * (size_t)(n + 1))};
  compare_rows(&t, plans);
  print_table(&t);
  const char **lines = compare_lines(plans, paths, n);
  printf("\n");
  for (int i = 0; i < n; i++) printf("%s\n", lines[i]);
  if (html && !compare_html(html, n, plans, paths, t.rows, t.cells, lines, stderr)) return 1;
  return 0;
}
