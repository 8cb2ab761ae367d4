/* html.c: the plan report as one self-contained HTML page (`carve plan
 * --html`, `carve compare --html`). Inline CSS and inline SVG, no script and
 * no external reference, so the file opens anywhere, offline.
 *
 * The page is made of sections that the callers put together:
 *
 *   html_begin / html_end     the document, its style sheet and title
 *   html_table                any table of strings (summaries, collectives,
 *                             tensors); every cell is escaped
 *   html_timeline             one simulated step: a row per pipeline device,
 *                             forward, backward, weight-gradient blocks, the
 *                             transfers on a lane below, the gradient sync
 *                             and optimizer at the end; idle time is hatched
 *   html_memory               a bar per stage by kind, against the capacity
 *
 * plan_html and pipeline_html lay out a whole page for the planner's own
 * plans; carve compare lays out pages from plan files with the same pieces.
 * Every string that comes from a model or a file goes through html_text.
 * Class names double as the test's hooks: a compute block is
 * <rect class="blk-f" data-device="D" ...>, one per line. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

const char *const mem_kind_names[MEM_KINDS] = {"parameters",  "gradients", "optimizer",
                                               "activations", "workspace", "other"};

/* ---------------------------------------------------------------- text */

void html_text(FILE *f, const char *s) {
  for (; s && *s; s++) {
    switch (*s) {
    case '&': fputs("&amp;", f); break;
    case '<': fputs("&lt;", f); break;
    case '>': fputs("&gt;", f); break;
    case '"': fputs("&quot;", f); break;
    case '\'': fputs("&#39;", f); break;
    default: fputc(*s, f);
    }
  }
}

static const char *const style =
    "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}\n"
    "h1{font-size:20px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}\n"
    "h3{font-size:15px}\n"
    "table{border-collapse:collapse;margin:8px 0}td,th{padding:2px 10px;border-bottom:1px solid #e4e4e4;"
    "text-align:left;vertical-align:top}\n"
    "th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
    "table.tensors td:nth-last-child(-n+2),table.collectives td{font-family:ui-monospace,monospace}\n"
    ".note{color:#666}.legend span{display:inline-block;margin-right:16px}\n"
    ".sw{display:inline-block;width:14px;height:12px;margin-right:5px;vertical-align:-1px;border:1px solid #888}\n"
    "svg text{font:11px system-ui,sans-serif}svg text.in{fill:#fff;font-size:10px}\n"
    ".blk-f,.sw.f{fill:#4e79a7;background:#4e79a7}.blk-b,.sw.b{fill:#f28e2b;background:#f28e2b}\n"
    ".blk-w,.sw.w{fill:#59a14f;background:#59a14f}.blk-x,.sw.x{fill:#e15759;background:#e15759}\n"
    ".blk-sync,.sw.sync{fill:#b07aa1;background:#b07aa1}.sw.idle{background:#f3f3f3}\n"
    ".mem-parameters,.sw.parameters{fill:#4e79a7;background:#4e79a7}\n"
    ".mem-gradients,.sw.gradients{fill:#f28e2b;background:#f28e2b}\n"
    ".mem-optimizer,.sw.optimizer{fill:#59a14f;background:#59a14f}\n"
    ".mem-activations,.sw.activations{fill:#edc948;background:#edc948}\n"
    ".mem-workspace,.sw.workspace{fill:#9c755f;background:#9c755f}\n"
    ".mem-other,.sw.other{fill:#bab0ac;background:#bab0ac}\n"
    ".sw.cap{border:0;border-left:3px dashed "
    "#c00;width:4px}.grid{stroke:#ddd}.cap{stroke:#c00;stroke-width:2;stroke-dasharray:5 3}\n";

void html_begin(FILE *f, const char *title) {
  fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>", f);
  html_text(f, title);
  fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<h1>", style);
  html_text(f, title);
  fputs("</h1>\n", f);
}

void html_end(FILE *f) { fputs("<p class=\"note\">written by carve</p>\n</body>\n</html>\n", f); }

void html_heading(FILE *f, int level, const char *text, const char *note) {
  fprintf(f, "<h%d>", level);
  html_text(f, text);
  fprintf(f, "</h%d>\n", level);
  if (note) {
    fputs("<p class=\"note\">", f);
    html_text(f, note);
    fputs("</p>\n", f);
  }
}

/* A cell that reads as a number is right-aligned. */
static bool numeric(const char *s) {
  if (!s || !*s) return false;
  char *end;
  strtod(s, &end);
  return end != s && (*end == 0 || *end == ' ' || *end == '%' || *end == ','); /* "0,1": mesh axes */
}

void html_table(FILE *f, const char *cls, int ncols, const char *const *head, int nrows, const char *const *cells) {
  bool align = strcmp(cls, "summary") != 0; /* a summary's values are sentences */
  fprintf(f, "<table class=\"%s\">\n", cls);
  for (int c = 0; head && c < ncols; c++) {
    fputs(c ? "<th>" : "<tr><th>", f);
    html_text(f, head[c]);
    fputs(c + 1 < ncols ? "</th>" : "</th></tr>\n", f);
  }
  for (int r = 0; r < nrows; r++) {
    fputs("<tr>", f);
    for (int c = 0; c < ncols; c++) {
      const char *s = cells[(size_t)r * (size_t)ncols + (size_t)c];
      fputs(align && numeric(s) ? "<td class=\"n\">" : "<td>", f);
      html_text(f, s);
      fputs("</td>", f);
    }
    fputs("</tr>\n", f);
  }
  fputs("</table>\n", f);
}

/* ---------------------------------------------------------------- timeline */

enum { LABEL_W = 190, PLOT_W = 1080, AXIS_H = 26, ROW_H = 38, LANE_H = 20 };

/* A round tick step (1, 2 or 5 times a power of ten) giving about 8 ticks. */
static double tick_step(double span) {
  double raw = span / 8, mag = pow(10, floor(log10(raw))), r = raw / mag;
  return mag * (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10);
}

static void axis_ms(FILE *f, double end_s, double scale, int height) {
  double step = tick_step(end_s * 1e3);
  for (int k = 0; k * step <= end_s * 1e3 * 1.0001 && k < 100; k++) {
    double x = LABEL_W + k * step * 1e-3 * scale;
    fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>", x, AXIS_H - 6, x, height);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.4g</text>\n", x, AXIS_H - 10, k * step);
  }
  fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">ms</text>\n", LABEL_W - 8, AXIS_H - 10);
}

static const char *const block_class[3] = {"blk-f", "blk-b", "blk-w"};
static const char phase_letter[3] = {'F', 'B', 'W'};

static void block(FILE *f, const SimEvent *e, double scale, bool split_w) {
  double x = LABEL_W + e->start * scale, w = fmax(e->transfer ? 2 : 0.6, (e->end - e->start) * scale);
  int y = AXIS_H + e->device * ROW_H + (e->transfer ? LANE_H + 6 : 2);
  fprintf(f, "<rect class=\"%s\" data-device=\"%d\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\">",
          e->transfer ? "blk-x" : block_class[e->task.phase], e->device, x, y, w, e->transfer ? 7 : LANE_H);
  const char *what = e->transfer               ? "transfer feeding"
                     : e->task.phase == TASK_F ? "forward"
                     : e->task.phase == TASK_W ? "weight gradient"
                     : split_w                 ? "backward (input gradient)"
                                               : "backward";
  fprintf(f, "<title>%s %c, stage %d, microbatch %d: %.4g-%.4g ms</title></rect>\n", what, phase_letter[e->task.phase],
          e->task.stage, e->task.mb, e->start * 1e3, e->end * 1e3);
  if (!e->transfer && w >= 20)
    fprintf(f, "<text class=\"in\" x=\"%.2f\" y=\"%d\" text-anchor=\"middle\">%c%d</text>\n", x + w / 2, y + 14,
            phase_letter[e->task.phase], e->task.mb);
}

static void timeline_legend(FILE *f, const SimResult *r, double finish, bool split_w) {
  bool transfers = false;
  for (int i = 0; i < r->nevents; i++) transfers |= r->events[i].transfer;
  fprintf(f, "<p class=\"legend\"><span><i class=\"sw f\"></i>forward (F)</span><span><i class=\"sw b\"></i>%s</span>",
          split_w ? "input gradient (B)" : "backward, input and weight gradients (B)");
  if (split_w) fputs("<span><i class=\"sw w\"></i>weight gradient (W)</span>", f);
  if (transfers) fputs("<span><i class=\"sw x\"></i>send/recv between stages (lane below)</span>", f);
  if (r->step_s > finish) fputs("<span><i class=\"sw sync\"></i>gradient sync and optimizer</span>", f);
  fputs("<span><i class=\"sw idle\"></i>idle (bubble)</span></p>\n", f);
}

/* The end of the last compute block: the tail (sync, optimizer) follows. */
static double compute_end(const SimResult *r) {
  double end = 0;
  for (int i = 0; i < r->nevents; i++)
    if (!r->events[i].transfer) end = fmax(end, r->events[i].end);
  return end;
}

void html_timeline(FILE *f, const SimResult *r, int devices, const char *const *labels, bool split_w) {
  double span = r->step_s > 0 ? r->step_s : 1e-9, scale = PLOT_W / span, finish = compute_end(r);
  int height = AXIS_H + devices * ROW_H + 4;
  timeline_legend(f, r, finish, split_w);
  fprintf(f,
          "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
          "data-devices=\"%d\" data-step-s=\"%.9g\">\n",
          LABEL_W + PLOT_W + 20, height, devices, r->step_s);
  fputs("<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
        "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#f3f3f3\"/>"
        "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#d6d6d6\" stroke-width=\"2\"/></pattern></defs>\n",
        f);
  axis_ms(f, span, scale, height);
  for (int d = 0; d < devices; d++) {
    int y = AXIS_H + d * ROW_H;
    fprintf(f, "<g class=\"row\" data-device=\"%d\"><text x=\"%d\" y=\"%d\" text-anchor=\"end\">", d, LABEL_W - 8,
            y + 16);
    html_text(f, labels[d]);
    fprintf(f, "</text><rect x=\"%d\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"url(#hatch)\"/></g>\n", LABEL_W,
            y + 2, finish * scale, LANE_H);
  }
  for (int i = 0; i < r->nevents; i++) block(f, &r->events[i], scale, split_w);
  for (int d = 0; d < devices && r->step_s > finish; d++)
    fprintf(f,
            "<rect class=\"blk-sync\" data-device=\"%d\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\">"
            "<title>gradient sync and optimizer: %.4g-%.4g ms</title></rect>\n",
            d, LABEL_W + finish * scale, AXIS_H + d * ROW_H + 2, (r->step_s - finish) * scale, LANE_H, finish * 1e3,
            r->step_s * 1e3);
  fputs("</svg>\n", f);
  fprintf(f, "<p class=\"note\">one step: %.4g ms, bubble %.1f%% (idle device time before the sync)</p>\n",
          r->step_s * 1e3, 100 * r->bubble);
}

/* ---------------------------------------------------------------- memory */

static double bar_total(const HtmlMemBar *b) {
  double t = 0;
  for (int k = 0; k < MEM_KINDS; k++) t += b->bytes[k];
  return t;
}

static void memory_legend(FILE *f, const HtmlMemBar *bars, int n) {
  fputs("<p class=\"legend\">", f);
  for (int k = 0; k < MEM_KINDS; k++) {
    bool used = false;
    for (int i = 0; i < n; i++) used |= bars[i].bytes[k] > 0;
    if (used)
      fprintf(f, "<span><i class=\"sw %s\"></i>%s</span>", mem_kind_names[k],
              k == MEM_OTHER ? "total (the plan file does not split it by kind)" : mem_kind_names[k]);
  }
  fputs("<span><i class=\"sw cap\"></i>device capacity</span></p>\n", f);
}

static void memory_bar(FILE *f, const HtmlMemBar *b, int i, double scale, double capacity) {
  int y = AXIS_H + i * 30;
  char t[32], c[32];
  fprintf(f, "<g class=\"bar\" data-total-bytes=\"%.0f\"><text x=\"%d\" y=\"%d\" text-anchor=\"end\">", bar_total(b),
          LABEL_W - 8, y + 15);
  html_text(f, b->label);
  fputs("</text>", f);
  double x = LABEL_W;
  for (int k = 0; k < MEM_KINDS; k++) {
    if (b->bytes[k] <= 0) continue;
    fprintf(f, "<rect class=\"mem-%s\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"20\"><title>%s: %s</title></rect>",
            mem_kind_names[k], x, y + 2, b->bytes[k] * scale, mem_kind_names[k], fmt_bytes(b->bytes[k], t, sizeof t));
    x += b->bytes[k] * scale;
  }
  fmt_bytes(bar_total(b), t, sizeof t);
  if (capacity > 0)
    fprintf(f, "<text x=\"%.2f\" y=\"%d\">%s (%.2g%% of %s)</text></g>\n", x + 6, y + 15, t,
            100 * bar_total(b) / capacity, fmt_bytes(capacity, c, sizeof c));
  else
    fprintf(f, "<text x=\"%.2f\" y=\"%d\">%s</text></g>\n", x + 6, y + 15, t);
}

/* Bars against the capacity; when every bar is under a tenth of it, the
   scale is the largest bar's and the capacity line is marked off the scale. */
void html_memory(FILE *f, const HtmlMemBar *bars, int n, double capacity) {
  double most = 0;
  for (int i = 0; i < n; i++) most = fmax(most, bar_total(&bars[i]));
  bool zoom = (most < capacity / 10 || capacity <= 0) && most > 0;
  double top = zoom ? most * 1.35 : fmax(capacity, most) * 1.05, scale = (PLOT_W - 200) / top;
  int height = AXIS_H + n * 30 + 8;
  char c[32];
  memory_legend(f, bars, n);
  fprintf(f,
          "<svg class=\"memory\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
          "data-capacity-bytes=\"%.0f\">\n",
          LABEL_W + PLOT_W + 20, height, capacity);
  fmt_bytes(capacity, c, sizeof c);
  if (capacity <= 0)
    fputs("<text class=\"capacity\" x=\"8\" y=\"14\">the device's capacity is not known</text>\n", f);
  else if (zoom)
    fprintf(f,
            "<text class=\"capacity\" x=\"%d\" y=\"14\" text-anchor=\"end\">capacity %s per device: off this "
            "scale &#8594;</text>\n",
            LABEL_W + PLOT_W - 200, c);
  else
    fprintf(f,
            "<line class=\"cap\" x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\"/><text class=\"capacity\" x=\"%.2f\" "
            "y=\"14\" text-anchor=\"middle\">capacity %s per device</text>\n",
            LABEL_W + capacity * scale, 18, LABEL_W + capacity * scale, height, LABEL_W + capacity * scale, c);
  for (int i = 0; i < n; i++) memory_bar(f, &bars[i], i, scale, capacity);
  fputs("</svg>\n", f);
}

/* ---------------------------------------------------------------- writing */

bool html_write(const char *path, void (*page)(void *ctx, FILE *f), void *ctx, FILE *err) {
  char why[128];
  if (!output_free(path, why, sizeof why)) {
    fprintf(err, "carve: error: cannot write the report '%s': %s\n", path, why);
    return false;
  }
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  if (f) page(ctx, f);
  bool ok = temp_close(f, tmp, path, true);
  if (!ok) fprintf(err, "carve: error: cannot write the report '%s': %s\n", path, strerror(errno));
  return ok;
}

/* ---------------------------------------------------------------- plan pages */

/* Rows of a table being gathered: cells in the arena, row after row. */
typedef struct Rows {
  int ncols, n, cap;
  const char **cells;
} Rows;

static void row_add(Rows *r, const char *const *cells) {
  if (r->n == r->cap) {
    r->cap = r->cap ? 2 * r->cap : 16;
    const char **bigger = arena_alloc(sizeof(char *) * (size_t)r->cap * (size_t)r->ncols);
    if (r->n) memcpy(bigger, r->cells, sizeof(char *) * (size_t)r->n * (size_t)r->ncols);
    r->cells = bigger;
  }
  memcpy(r->cells + (size_t)r->n * (size_t)r->ncols, cells, sizeof(char *) * (size_t)r->ncols);
  r->n++;
}

static const char *axes_text(const Comm *c) {
  const char *a = c->axes == 1 ? "0" : c->axes == 2 ? "1" : c->axes == 3 ? "0,1" : "";
  return c->copies > 1 ? arena_printf("%s%scopies on %d stages", a, *a ? " + " : "", c->copies) : a;
}

/* A plan's collectives; `stage` >= 0 adds a stage column, and a collective
   of every microbatch counts `microbatches` times per step. */
static void comm_rows(const Plan *p, int stage, int microbatches, Rows *r) {
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *c = &p->comms[i];
    const char *row[] = {arena_printf("%d", stage),
                         coll_names[c->kind],
                         axes_text(c),
                         phase_names[c->phase],
                         arena_printf("%.0f", c->bytes),
                         arena_printf("%d", c->count * (c->once ? 1 : microbatches)),
                         c->what ? c->what : ""};
    row_add(r, stage >= 0 ? row : row + 1);
  }
}

static const char *const comm_head[] = {"stage",          "kind",  "mesh axes", "phase", "bytes per device",
                                        "count per step", "tensor"};
static const char *const tensor_head[] = {"stage", "tensor", "kind", "shape", "sharding"};

static void tensor_rows(const Plan *p, int stage, Rows *r) {
  const Graph *g = p->g;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (!plan_lists_tensor(p, i) || !strncmp(n->name, "grad:", 5)) continue; /* grad: stands in for the next stage */
    char spec[64];
    const char *row[] = {arena_printf("%d", stage), n->name,
                         n->op == OP_PARAM   ? "parameter"
                         : n->op == OP_INPUT ? "input"
                                             : "activation",
                         shape_str(&n->shape), arena_printf("%s", spec_str(&p->layout[i], spec, sizeof spec))};
    row_add(r, stage >= 0 ? row : row + 1);
  }
}

static void comm_and_tensor_tables(FILE *f, const Rows *comms, const Rows *tensors, bool staged) {
  html_heading(f, 2, "Collectives per step",
               "bytes per device per occurrence; identical collectives of repeated "
               "layers are counted together");
  if (comms->n)
    html_table(f, "collectives", comms->ncols, comm_head + !staged, comms->n, comms->cells);
  else
    fputs("<p>none</p>\n", f);
  html_heading(f, 2, "Tensors and their sharding",
               "every parameter and input and the main activations; per dimension R (replicated) or S0, S1, S01 "
               "(split over mesh axis 0, 1 or both)");
  html_table(f, "tensors", tensors->ncols, tensor_head + !staged, tensors->n, tensors->cells);
}

/* A summary: label and value per row, no header. */
static void summary(FILE *f, const char *const *kv, int n) { html_table(f, "summary", 2, NULL, n, kv); }

/* ---- a plan of one mesh */

static void plan_page(void *ctx, FILE *f) {
  const Plan *p = ctx;
  const Mesh *m = &p->mesh;
  char a[32], b[32], c[32];
  html_begin(f, arena_printf("plan for %s on %s: a %dx%d mesh", p->g->model, p->cluster->name, m->n[0], m->n[1]));
  double mem = p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts;
  const char *kv[] = {"devices",
                      arena_printf("%d x %s", m->n[0] * m->n[1], p->cluster->device ? p->cluster->device : "device"),
                      "predicted step",
                      arena_printf("%.4g s = compute %.4g s + communication %.4g s (no overlap assumed)",
                                   p->compute_s + p->comm_s, p->compute_s, p->comm_s),
                      "mesh axis 0",
                      arena_printf("%d devices, %s, %s/s", m->n[0], m->inter[0] ? "across nodes" : "inside a node",
                                   fmt_bytes(m->bw[0], a, sizeof a)),
                      "mesh axis 1",
                      arena_printf("%d devices, %s, %s/s", m->n[1], m->inter[1] ? "across nodes" : "inside a node",
                                   fmt_bytes(m->bw[1], b, sizeof b)),
                      "precision",
                      precision_describe(p->opt.mixed ? PREC_BF16 : PREC_FP32, true),
                      "ZeRO stage",
                      arena_printf("%d", p->zero),
                      "memory per device",
                      arena_printf("%s of %s", fmt_bytes(mem, a, sizeof a), fmt_bytes(m->memory, c, sizeof c))};
  summary(f, kv, 7);
  PipelinePlan one = {.nstages = 1,
                      .microbatches = 1,
                      .v = 1,
                      .schedule = SCHED_1F1B,
                      .stages = &(PipeStage){.t = p->compute_s + p->comm_s, .plan = p}};
  SimInput in;
  SimResult r;
  html_heading(f, 2, "Timeline of one step", "the mesh's devices run the step together: one row for all of them");
  if (pipeline_sim_input(&one, &in, stderr) && simulate(&in, &r, stderr))
    html_timeline(f, &r, 1, (const char *const[]){arena_printf("devices 0-%d", m->n[0] * m->n[1] - 1)}, false);
  html_heading(f, 2, "Memory per device", "what the plan keeps on each device, by kind");
  HtmlMemBar bar = {"every device", {p->mem_params, p->mem_grads, p->mem_optim, p->mem_acts, 0, 0}};
  html_memory(f, &bar, 1, m->memory);
  Rows comms = {.ncols = 6}, tensors = {.ncols = 4};
  comm_rows(p, -1, 1, &comms);
  tensor_rows(p, -1, &tensors);
  comm_and_tensor_tables(f, &comms, &tensors, false);
  html_end(f);
}

bool plan_html(const Plan *p, const char *path, FILE *err) { return html_write(path, plan_page, (void *)p, err); }

/* ---- a whole plan: stages, schedule */

static const char *stage_devices(const PipelinePlan *p, int s) {
  const PipeStage *st = &p->stages[s];
  int n = st->nodes * st->per_node;
  return n > 1 ? arena_printf("%d-%d", st->device0, st->device0 + n - 1) : arena_printf("%d", st->device0);
}

static void pipeline_summary(FILE *f, const PipelinePlan *p) {
  const char *kv[] = {"devices",
                      arena_printf("%d x %s", p->devices, p->cluster->device ? p->cluster->device : "device"),
                      "predicted step",
                      arena_printf("%.4g s (bubble %.1f%%), %.1f TFLOP/s per device, MFU %.1f%% (model FLOPs)",
                                   p->step_s, 100 * p->bubble, p->tflops_per_device, 100 * p->mfu),
                      "schedule",
                      arena_printf("%s%s, %d microbatch%s", sched_names[p->schedule],
                                   p->v > 1 ? arena_printf(" (%d chunks per device)", p->v) : "", p->microbatches,
                                   p->microbatches == 1 ? "" : "es"),
                      "precision",
                      precision_describe(p->stages[0].plan->opt.mixed ? PREC_BF16 : PREC_FP32, true),
                      "recomputation",
                      pipeline_recompute(p)};
  summary(f, kv, 5);
  Rows r = {.ncols = 8};
  for (int s = 0; s < p->nstages; s++) {
    const PipeStage *st = &p->stages[s];
    char m[32];
    const char *row[] = {arena_printf("%d", s),
                         pipeline_stage_layers(p, s),
                         stage_devices(p, s),
                         arena_printf("%dx%d", st->plan->mesh.n[0], st->plan->mesh.n[1]),
                         arena_printf("%.4g", st->t),
                         arena_printf("%.4g", st->sync),
                         arena_printf("%s", fmt_bytes(st->memory, m, sizeof m)),
                         rc_names[st->recompute]};
    row_add(&r, row);
  }
  static const char *const head[] = {"stage",        "layers",      "devices",           "mesh",
                                     "s/microbatch", "sync s/step", "memory per device", "recompute"};
  html_table(f, "stages", 8, head, r.n, r.cells);
}

/* A stage's memory per device by kind: the plan's parameters, gradients and
   optimizer state, the cluster's workspace, and the rest of what the stage
   takes (its in-flight activations, and for lowered programs their staging)
   as activations. */
static HtmlMemBar stage_bar(const PipelinePlan *p, int s) {
  const PipeStage *st = &p->stages[s];
  const Plan *pl = st->plan;
  HtmlMemBar b = {arena_printf("stage %d (devices %s)", s, stage_devices(p, s)),
                  {pl->mem_params, pl->mem_grads, pl->mem_optim, 0, p->cluster->workspace, 0}};
  double known = pl->mem_params + pl->mem_grads + pl->mem_optim + p->cluster->workspace;
  if (st->memory >= known)
    b.bytes[MEM_ACTS] = st->memory - known;
  else /* the programs took less than the estimate's kinds: show the total only */
    memset(b.bytes, 0, sizeof b.bytes), b.bytes[MEM_OTHER] = st->memory;
  return b;
}

static void pipeline_timeline(FILE *f, const PipelinePlan *p) {
  SimInput in;
  SimResult r;
  if (!pipeline_sim_input(p, &in, stderr) || !simulate(&in, &r, stderr)) return;
  const char **labels = arena_alloc(sizeof(char *) * (size_t)p->nstages);
  for (int d = 0; d < p->nstages; d++)
    labels[d] = arena_printf("%s %d: devices %s", p->v > 1 ? "group" : "stage", d, stage_devices(p, d));
  html_timeline(f, &r, p->nstages, labels, in.sched->split_w);
}

static void pipeline_page(void *ctx, FILE *f) {
  const PipelinePlan *p = ctx;
  html_begin(f, arena_printf("plan for %s on %s (%d devices): %d stage%s", p->model, p->cluster->name, p->devices,
                             p->nstages, p->nstages == 1 ? "" : "s"));
  pipeline_summary(f, p);
  html_heading(f, 2, "Timeline of one step",
               "simulated; one row per pipeline stage, whose devices run it together (F3: forward of microbatch 3)");
  pipeline_timeline(f, p);
  html_heading(f, 2, "Memory per device", "per stage, by kind, with the schedule's activations in flight");
  HtmlMemBar *bars = arena_alloc(sizeof(HtmlMemBar) * (size_t)p->nstages);
  for (int s = 0; s < p->nstages; s++) bars[s] = stage_bar(p, s);
  html_memory(f, bars, p->nstages, p->cluster->memory);
  Rows comms = {.ncols = 7}, tensors = {.ncols = 5};
  for (int s = 0; s < p->nstages; s++) {
    comm_rows(p->stages[s].plan, s, p->microbatches, &comms);
    tensor_rows(p->stages[s].plan, s, &tensors);
  }
  comm_and_tensor_tables(f, &comms, &tensors, true);
  html_end(f);
}

bool pipeline_html(const PipelinePlan *p, const char *path, FILE *err) {
  return html_write(path, pipeline_page, (void *)p, err);
}
