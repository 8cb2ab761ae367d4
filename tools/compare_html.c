/* compare_html.c: `carve compare --html FILE`: plan files as one
 * self-contained page, built from the pieces of planner/html.c. First the
 * side-by-side table and what separates each plan from the fastest; then a
 * section per plan with what its file offers: the step re-simulated from
 * the file (as carve simulate does), memory per device against the device's
 * capacity (by kind for a plan of one mesh, a total per stage for a whole
 * plan), and, for a plan of one mesh, its collectives and every tensor's
 * sharding. The files were checked by plan_read for the fields simulate
 * uses; the rest is read defensively (a missing or odd field is left out). */
#include <math.h>
#include <string.h>

#include "planner.h"
#include "tools.h"

typedef struct Page {
  int n, rows;
  const Json *const *plans;
  const char *const *paths;
  const char *const *cells; /* rows x (n + 1): label, then one per plan */
  const char *const *lines;
} Page;

/* A byte count from a file: finite and >= 0, or 0. */
static double bytes_of(const Json *obj, const char *key) {
  double v = json_num(obj, key, 0);
  return isfinite(v) && v > 0 ? v : 0;
}

/* "0-3" from a stage's "devices": [0, 1, 2, 3] (first and last). */
static const char *devices_of(const Json *stage) {
  const Json *d = json_get(stage, "devices");
  if (!d || d->kind != JSON_ARRAY || !d->n) return "?";
  double a = d->items[0]->num, b = d->items[d->n - 1]->num;
  return d->n > 1 ? arena_printf("%.0f-%.0f", a, b) : arena_printf("%.0f", a);
}

static void plan_timeline(FILE *f, const Json *j) {
  PipelinePlan *p = plan_pipeline_of(j);
  SimInput in;
  SimResult r;
  if (!p || !pipeline_sim_input(p, &in, stderr) || !simulate(&in, &r, stderr)) return;
  const Json *stages = json_get(j, "stages"), *mesh = json_get(j, "mesh");
  const char **labels = arena_alloc(sizeof(char *) * (size_t)p->nstages);
  for (int d = 0; d < p->nstages; d++)
    labels[d] = stages
                    ? arena_printf("%s %d: devices %s", p->v > 1 ? "group" : "stage", d, devices_of(stages->items[d]))
                    : "all devices (one mesh)";
  if (!stages && mesh && mesh->kind == JSON_ARRAY && mesh->n == 2)
    labels[0] = arena_printf("devices 0-%.0f (one mesh)", mesh->items[0]->num * mesh->items[1]->num - 1);
  html_timeline(f, &r, p->nstages, labels, in.sched->split_w);
}

static void plan_memory(FILE *f, const Json *j) {
  const Json *stages = json_get(j, "stages"), *kinds = json_get(j, "memory_by_kind_bytes");
  int n = stages ? stages->n : 1;
  HtmlMemBar *bars = arena_alloc(sizeof(HtmlMemBar) * (size_t)n);
  for (int s = 0; stages && s < n; s++) {
    bars[s].label = arena_printf("stage %d (devices %s)", s, devices_of(stages->items[s]));
    bars[s].bytes[MEM_OTHER] = bytes_of(stages->items[s], "memory_per_device_bytes");
  }
  if (!stages) {
    bars[0].label = "every device";
    for (int k = 0; k < MEM_OTHER; k++) bars[0].bytes[k] = bytes_of(kinds, mem_kind_names[k]);
    if (!kinds) bars[0].bytes[MEM_OTHER] = bytes_of(j, "memory_per_device_bytes");
  }
  html_memory(f, bars, n, bytes_of(j, "device_memory_bytes"));
}

/* The elements of a JSON array as text joined by sep ("[8, 1024]", "S0 R"). */
static const char *joined(const Json *a, const char *sep, bool brackets) {
  const char *s = "";
  for (int i = 0; a && a->kind == JSON_ARRAY && i < a->n; i++) {
    const Json *x = a->items[i];
    const char *t = x->kind == JSON_STRING ? x->str : x->kind == JSON_NUMBER ? arena_printf("%.0f", x->num) : "?";
    s = arena_printf("%s%s%s", s, i ? sep : "", t);
  }
  return brackets ? arena_printf("[%s]", s) : s;
}

static void plan_collectives(FILE *f, const Json *j) {
  const Json *c = json_get(j, "collectives");
  static const char *const head[] = {"kind", "mesh axes", "phase", "bytes per device", "count per step", "tensor"};
  int n = c && c->kind == JSON_ARRAY ? c->n : 0;
  const char **cells = arena_alloc(sizeof(char *) * (size_t)(n ? n : 1) * 6);
  for (int i = 0; i < n; i++) {
    const Json *x = c->items[i];
    const char *row[] = {json_str(x, "kind", "?"),
                         joined(json_get(x, "mesh_axes"), ",", false),
                         json_str(x, "phase", "?"),
                         arena_printf("%.0f", bytes_of(x, "bytes")),
                         arena_printf("%.0f", json_num(x, "count_per_step", 0)),
                         json_str(x, "tensor", "")};
    memcpy(cells + (size_t)i * 6, row, sizeof row);
  }
  html_heading(f, 3, "Collectives per step", n ? NULL : "none");
  if (n) html_table(f, "collectives", 6, head, n, cells);
}

static void plan_tensors(FILE *f, const Json *j) {
  const Json *t = json_get(j, "tensors");
  static const char *const head[] = {"tensor", "kind", "shape", "sharding"};
  int n = t && t->kind == JSON_OBJECT ? t->n : 0;
  const char **cells = arena_alloc(sizeof(char *) * (size_t)(n ? n : 1) * 4);
  for (int i = 0; i < n; i++) {
    const Json *x = t->items[i];
    const char *row[] = {t->keys[i], json_str(x, "kind", "?"), joined(json_get(x, "shape"), ",", true),
                         joined(json_get(x, "sharding"), " ", false)};
    memcpy(cells + (size_t)i * 4, row, sizeof row);
  }
  html_heading(f, 3, "Tensors and their sharding", NULL);
  html_table(f, "tensors", 4, head, n, cells);
}

static void plan_section(FILE *f, const Page *pg, int i) {
  const Json *j = pg->plans[i];
  html_heading(f, 2, arena_printf("[%d] %s", i + 1, pg->paths[i]), NULL);
  html_heading(f, 3, "Timeline of one step", "re-simulated from the plan file, one row per pipeline stage");
  plan_timeline(f, j);
  html_heading(f, 3, "Memory per device", NULL);
  plan_memory(f, j);
  if (json_get(j, "stages")) {
    fputs("<p class=\"note\">A whole plan's file gives no collectives or shardings by tensor; "
          "carve plan --html shows them for each stage.</p>\n",
          f);
    return;
  }
  plan_collectives(f, j);
  plan_tensors(f, j);
}

static void compare_page(void *ctx, FILE *f) {
  const Page *pg = ctx;
  html_begin(f, arena_printf("carve compare: %d plan%s", pg->n, pg->n == 1 ? "" : "s"));
  const char **head = arena_alloc(sizeof(char *) * (size_t)(pg->n + 1));
  head[0] = "";
  for (int i = 0; i < pg->n; i++) head[i + 1] = arena_printf("[%d] %s", i + 1, pg->paths[i]);
  html_table(f, "compare", pg->n + 1, head, pg->rows, pg->cells);
  fputs("<ul>\n", f);
  for (int i = 0; i < pg->n; i++) {
    fputs("<li>", f);
    html_text(f, pg->lines[i]);
    fputs("</li>\n", f);
  }
  fputs("</ul>\n", f);
  for (int i = 0; i < pg->n; i++) plan_section(f, pg, i);
  html_end(f);
}

bool compare_html(const char *path, int n, const Json *const *plans, const char *const *paths, int rows,
                  const char *const *cells, const char *const *lines, FILE *err) {
  Page pg = {n, rows, plans, paths, cells, lines};
  return html_write(path, compare_page, &pg, err);
}
