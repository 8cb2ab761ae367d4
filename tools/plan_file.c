/* plan_file.c: reading a plan.json back (carve simulate, carve compare, and
 * carve run's prediction line), and checking every field those read before
 * any of it is used.
 *
 * A plan file is input like any other: it is read only if it is a regular
 * file of at most LIMIT_TEXT bytes, parsed by the strict JSON reader, and
 * then each field that is used must have the right JSON kind and lie in its
 * range: times finite and >= 0 (the predicted step > 0), fractions within
 * [0, 1], counts whole numbers within the planner's own bounds, names among
 * the known ones. The first problem is reported with the file and the field
 * ("stages[2].sync_s"), so a plan that was edited by hand, truncated or
 * written by something else is refused rather than simulated into NaN. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "planner.h"
#include "tools.h"

#define MAX_PLAN_STAGES 4096
#define MAX_PLAN_CHUNKS 64
#define MAX_PLAN_MICRO 1024
#define MAX_PLAN_TASKS (1 << 20) /* stages x chunks x microbatches: what the simulator allocates */
#define MAX_SECONDS 1e9
#define MAX_BYTES 1e18

/* A number field: its range, whether it must be whole, whether required. */
typedef struct Field {
  const char *key;
  double lo, hi;
  bool whole, required;
} Field;

static const Field top_fields[] = {
    {"version", 1, 1, true, true},
    {"predicted_step_s", 1e-12, MAX_SECONDS, false, true},
    {"microbatches", 1, MAX_PLAN_MICRO, true, false},
    {"chunks_per_device", 1, MAX_PLAN_CHUNKS, true, false},
    {"devices", 1, 1 << 30, true, false},
    {"zero_stage", 0, 3, true, false},
    {"bubble", 0, 1, false, false},
    {"predicted_tflops_per_device", 0, 1e9, false, false},
    {"predicted_mfu", 0, 1, false, false},
    {"memory_per_device_bytes", 0, MAX_BYTES, false, false},
    {"device_memory_bytes", 1, MAX_BYTES, false, false},
};

static const Field stage_fields[] = {
    {"predicted_stage_s", 0, MAX_SECONDS, false, true},
    {"sync_s", 0, MAX_SECONDS, false, false},
    {"update_s", 0, MAX_SECONDS, false, false},
    {"p2p_s", 0, MAX_SECONDS, false, false},
    {"selective_recompute_s", 0, MAX_SECONDS, false, false},
    {"forward_fraction", 0, 1, false, false},
    {"weight_grad_fraction", 0, 1, false, false},
    {"memory_per_device_bytes", 0, MAX_BYTES, false, false},
    {"zero_stage", 0, 3, true, false},
};

static const char *const kind_names[] = {"null", "true or false", "a number", "a string", "an array", "an object"};

static bool field_ok(const Json *obj, const Field *f, const char *where, char *why, size_t n) {
  const Json *v = json_get(obj, f->key);
  const char *range =
      arena_printf(f->whole ? "a whole number from %.0f to %.0f" : "a number from %g to %g", f->lo, f->hi);
  if (!v) {
    if (f->required) snprintf(why, n, "field '%s%s' is missing; it must be %s", where, f->key, range);
    return !f->required;
  }
  if (v->kind != JSON_NUMBER) {
    snprintf(why, n, "field '%s%s' is %s; it must be %s", where, f->key, kind_names[v->kind], range);
    return false;
  }
  if (!(v->num >= f->lo && v->num <= f->hi) || (f->whole && v->num != floor(v->num))) {
    snprintf(why, n, "field '%s%s' is %.15g; it must be %s", where, f->key, v->num, range);
    return false;
  }
  return true;
}

static bool fields_ok(const Json *obj, const Field *fs, size_t nf, const char *where, char *why, size_t n) {
  for (size_t i = 0; i < nf; i++)
    if (!field_ok(obj, &fs[i], where, why, n)) return false;
  return true;
}

/* A string field, if present, must be a string and (with names) one of them. */
static bool name_ok(const Json *obj, const char *key, const char *const *names, int nn, const char *where, char *why,
                    size_t n) {
  const Json *v = json_get(obj, key);
  if (!v) return true;
  bool known = v->kind == JSON_STRING && !names;
  for (int i = 0; v->kind == JSON_STRING && i < nn; i++) known |= !strcmp(v->str, names[i]);
  if (known) return true;
  if (v->kind != JSON_STRING)
    snprintf(why, n, "field '%s%s' is %s; it must be a string", where, key, kind_names[v->kind]);
  else {
    const char *list = "";
    for (int i = 0; i < nn; i++) list = arena_printf("%s%s%s", list, i ? ", " : "", names[i]);
    snprintf(why, n, "field '%s%s' is '%.60s'; it must be one of: %s", where, key, v->str, list);
  }
  return false;
}

static bool stage_ok(const Json *st, int s, char *why, size_t n) {
  const char *where = arena_printf("stages[%d].", s);
  if (st->kind != JSON_OBJECT) {
    snprintf(why, n, "field 'stages[%d]' is %s; it must be an object", s, kind_names[st->kind]);
    return false;
  }
  if (!fields_ok(st, stage_fields, sizeof stage_fields / sizeof stage_fields[0], where, why, n)) return false;
  if (!name_ok(st, "recompute", rc_names, RC_KINDS, where, why, n)) return false;
  double ff = json_num(st, "forward_fraction", 0), wf = json_num(st, "weight_grad_fraction", 0);
  if (ff > 0 && ff + wf > 1) {
    snprintf(why, n, "fields '%sforward_fraction' + '%sweight_grad_fraction' make %g; at most 1", where, where,
             ff + wf);
    return false;
  }
  return true;
}

static bool comm_ok(const Json *j, char *why, size_t n) {
  const Json *c = json_get(j, "communication_bytes_per_device");
  if (!c) return true;
  if (c->kind != JSON_OBJECT) {
    snprintf(why, n, "field 'communication_bytes_per_device' is %s; it must be an object", kind_names[c->kind]);
    return false;
  }
  for (int i = 0; i < c->n; i++) {
    Field f = {c->keys[i], 0, MAX_BYTES, false, false};
    if (!field_ok(c, &f, "communication_bytes_per_device.", why, n)) return false;
  }
  return true;
}

/* The pipeline's shape: stage count, chunks and microbatches that a
 * schedule can be made of, and not more tasks than the simulator takes. */
static bool shape_ok(const Json *j, char *why, size_t n) {
  const Json *stages = json_get(j, "stages");
  if (stages && (stages->kind != JSON_ARRAY || stages->n < 1 || stages->n > MAX_PLAN_STAGES)) {
    snprintf(why, n, "field 'stages' is %s; it must be an array of 1 to %d stages",
             stages->kind == JSON_ARRAY ? arena_printf("an array of %d", stages->n) : kind_names[stages->kind],
             MAX_PLAN_STAGES);
    return false;
  }
  int p = stages ? stages->n : 1, v = (int)json_num(j, "chunks_per_device", 1), m = (int)json_num(j, "microbatches", 1);
  const char *sched = json_str(j, "schedule", "1f1b");
  bool interleaved = !strcmp(sched, "interleaved");
  if ((int64_t)p * v * m > MAX_PLAN_TASKS)
    snprintf(why, n, "fields 'stages', 'chunks_per_device' and 'microbatches' make %d x %d x %d tasks; at most %d", p,
             v, m, MAX_PLAN_TASKS);
  else if (interleaved != (v > 1))
    snprintf(why, n, "field 'chunks_per_device' is %d; the %s schedule needs %s", v, sched,
             interleaved ? "at least 2" : "1");
  else if (interleaved && m % p)
    snprintf(why, n, "field 'microbatches' is %d; the interleaved schedule needs a multiple of the %d stages", m, p);
  else
    return true;
  return false;
}

static bool plan_ok(const Json *j, char *why, size_t n) {
  if (j->kind != JSON_OBJECT || strcmp(json_str(j, "format", ""), "carve-plan") != 0) {
    snprintf(why, n, "not a carve plan (no \"format\": \"carve-plan\")");
    return false;
  }
  if (json_get(j, "version") && json_num(j, "version", 0) != 1) {
    snprintf(why, n, "plan version %.15g; this carve reads version 1", json_num(j, "version", 0));
    return false;
  }
  static const char *const precisions[] = {"fp32", "bf16"};
  static const char *const plan_rc[] = {"none", "selective", "full", "per stage"};
  bool ok = fields_ok(j, top_fields, sizeof top_fields / sizeof top_fields[0], "", why, n) &&
            name_ok(j, "schedule", sched_names, SCHED_KINDS, "", why, n) &&
            name_ok(j, "precision", precisions, 2, "", why, n) && name_ok(j, "recompute", plan_rc, 4, "", why, n) &&
            name_ok(j, "model", NULL, 0, "", why, n) && name_ok(j, "cluster", NULL, 0, "", why, n) &&
            comm_ok(j, why, n) && shape_ok(j, why, n);
  const Json *stages = json_get(j, "stages");
  for (int s = 0; ok && stages && s < stages->n; s++) ok = stage_ok(stages->items[s], s, why, n);
  return ok;
}

const char *plan_path(const char *arg) {
  struct stat st;
  return stat(arg, &st) == 0 && S_ISDIR(st.st_mode) ? arena_printf("%s/plan.json", arg) : arg;
}

const Json *plan_read(const char *path, char *why, size_t n) {
  size_t len;
  char *text = read_file_limit(path, LIMIT_TEXT, &len, why, n);
  if (!text) {
    const char *reason = arena_strdup(why);
    snprintf(why, n, "cannot read the plan: %s", reason);
    return NULL;
  }
  JsonError e;
  Json *j = json_read(text, len, &e);
  free(text);
  if (!j) {
    snprintf(why, n, "not a carve plan: malformed JSON at line %d, column %d (byte %zu): %s", e.line, e.col, e.offset,
             e.what);
    return NULL;
  }
  return plan_ok(j, why, n) ? j : NULL;
}

/* A pipeline plan rebuilt from a checked plan, enough to simulate it. */
PipelinePlan *plan_pipeline_of(const Json *j) {
  PipelinePlan *p = arena_alloc(sizeof(PipelinePlan));
  const Json *stages = json_get(j, "stages");
  p->microbatches = (int)json_num(j, "microbatches", 1);
  p->v = (int)json_num(j, "chunks_per_device", 1);
  const char *sched = json_str(j, "schedule", "1f1b");
  for (int k = 0; k < SCHED_KINDS; k++)
    if (!strcmp(sched, sched_names[k])) p->schedule = (SchedKind)k;
  if (!stages) { /* a plan of one mesh: one stage, one microbatch */
    p->nstages = 1, p->microbatches = 1, p->v = 1, p->schedule = SCHED_1F1B;
    p->stages = arena_alloc(sizeof(PipeStage));
    p->stages[0].t = json_num(j, "predicted_step_s", 0);
    return p;
  }
  p->nstages = stages->n;
  p->stages = arena_alloc(sizeof(PipeStage) * (size_t)p->nstages);
  for (int s = 0; s < p->nstages; s++) {
    const Json *st = stages->items[s];
    PipeStage *ps = &p->stages[s];
    ps->t = json_num(st, "predicted_stage_s", 0);
    ps->sync = json_num(st, "sync_s", 0);
    ps->update = json_num(st, "update_s", 0);
    ps->p2p = json_num(st, "p2p_s", 0);
    const char *rc = json_str(st, "recompute", "none");
    for (int k = 0; k < RC_KINDS; k++)
      if (!strcmp(rc, rc_names[k])) ps->recompute = k;
    ps->sel_t = json_num(st, "selective_recompute_s", 0);
    ps->fwd_frac = json_num(st, "forward_fraction", 0);
    ps->wgrad_frac = json_num(st, "weight_grad_fraction", 0);
  }
  return p;
}
