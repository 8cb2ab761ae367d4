/* schedule.c: pipeline schedules as data, and their checker.
 *
 * A schedule is, per device, the ordered list of (virtual stage, microbatch,
 * phase) tasks it runs. There are p devices and v model chunks per device,
 * so S = p v virtual stages; stage s runs on device s % p, i.e. device d
 * owns stages d, d+p, ..., d+(v-1)p (Megatron's interleaving; v = 1 but for
 * interleaved 1F1B). Microbatch j flows forward through stages 0..S-1 and
 * backward from S-1 down to 0. The rules, per device d, with m microbatches:
 *
 *   gpipe        F(j) for j = 0..m-1, then B(j) for j = 0..m-1.
 *   1f1b         (PipeDream-flush) w = min(p-d-1, m) warm-up forwards; then
 *                F(w+j), B(j) for j = 0..m-w-1; then the cool-down B(m-w..m-1).
 *                At most min(p-d, m) microbatches are in flight on device d.
 *                With equal stages and free transfers both take
 *                (m + p - 1)(t_f + t_b).
 *   interleaved  (Narayanan et al. SC'21, Megatron's order; v >= 2, p | m)
 *                the k-th forward of a device runs microbatch (k / pv) p + k % p
 *                through its chunk (k % pv) / p: microbatches go in groups of
 *                p, each group through chunk 0, then chunk 1, ...; the k-th
 *                backward is the same with the chunks reversed (v-1 down to 0).
 *                w = min(2(p-d-1) + (v-1)p, mv) warm-up forwards, then
 *                forward k+w, backward k for k = 0..mv-w-1, then the cool-down
 *                backwards. With equal chunks (t_f, t_b per chunk) and free
 *                transfers the step is (mv + p - 1)(t_f + t_b).
 *   zb-h1        (Qi et al. ICLR'24) 1f1b's warm-up and F/B order, with the
 *                backward split into B (input gradient) and W (weight
 *                gradient). Device d holds back its first d weight gradients:
 *                in the steady phase, after F(w+j), B(j) it runs the oldest
 *                pending W only once j >= d; in the cool-down each B is
 *                followed by the oldest pending W; the W's still pending at
 *                the end fill what would be 1f1b's cool-down bubble. Every
 *                device keeps at most min(p, m) microbatches between F and W,
 *                1f1b's peak (device 0's). With t_f = t_b = t_w = 1 and m >= p
 *                the step is 3m + p - 1, i.e. bubble/ideal = (p-1)/(3m); more
 *                generally, for m >= p and t_w <= t_f, it is
 *                m(t_f+t_b+t_w) + (p-1)(t_f+t_b-t_w). For m < p (equal
 *                times) it is 2m + 2p - 1, above the critical path m + 2p,
 *                since the cool-down puts a W between consecutive B's.
 *
 * The dependencies (the simulator, simulate.c, applies the same ones):
 * F(s, j) needs F(s-1, j); B(s, j) needs F(s, j) and B(s+1, j) (B of the last
 * stage only its F); W(s, j) needs B(s, j). schedule_check finds deadlocks
 * by running the lists on readiness alone: each device runs its next task
 * while that task's producers have run; if every device is stuck before all
 * lists are done, the schedule deadlocks. schedule_max_inflight counts
 * (stage, microbatch) pairs between F and B, so for interleaved schedules its
 * unit is one chunk's activations (1/v of a device's layers). Schedules live
 * in the arena. */
#include <stdlib.h>
#include <string.h>

#include "planner.h"

const char *const sched_names[SCHED_KINDS] = {"gpipe", "1f1b", "interleaved", "zb-h1"};

static const char phase_letter[3] = {'F', 'B', 'W'};

static int imin(int a, int b) { return a < b ? a : b; }

/* ---------------------------------------------------------------- building */

/* One device's list under construction. */
typedef struct List {
  Task *t;
  int n;
} List;

static void push(List *l, int stage, int mb, TaskPhase ph) { l->t[l->n++] = (Task){stage, mb, ph}; }

static void make_gpipe(List *l, int d, int m) {
  for (int j = 0; j < m; j++) push(l, d, j, TASK_F);
  for (int j = 0; j < m; j++) push(l, d, j, TASK_B);
}

static void make_1f1b(List *l, int d, int p, int m) {
  int w = imin(p - d - 1, m);
  for (int j = 0; j < w; j++) push(l, d, j, TASK_F);
  for (int j = 0; j < m - w; j++) {
    push(l, d, w + j, TASK_F);
    push(l, d, j, TASK_B);
  }
  for (int j = m - w; j < m; j++) push(l, d, j, TASK_B);
}

/* W's run in microbatch order; nw counts those already placed. A W is only
 * ever placed after its B, since at most one W follows each B. */
static void make_zbh1(List *l, int d, int p, int m) {
  int w = imin(p - d - 1, m), nw = 0;
  for (int j = 0; j < w; j++) push(l, d, j, TASK_F);
  for (int j = 0; j < m - w; j++) {
    push(l, d, w + j, TASK_F);
    push(l, d, j, TASK_B);
    if (j >= d) push(l, d, nw++, TASK_W);
  }
  for (int j = m - w; j < m; j++) {
    push(l, d, j, TASK_B);
    push(l, d, nw++, TASK_W);
  }
  while (nw < m) push(l, d, nw++, TASK_W);
}

/* The k-th forward (or backward) of device d in Megatron's interleaved order. */
static Task interleaved_task(int k, int d, int p, int v, bool fwd) {
  int chunk = k % (p * v) / p;
  if (!fwd) chunk = v - 1 - chunk;
  int mb = k / (p * v) * p + k % p;
  return (Task){chunk * p + d, mb, fwd ? TASK_F : TASK_B};
}

static void push_task(List *l, Task t) { l->t[l->n++] = t; }

static void make_interleaved(List *l, int d, int p, int m, int v) {
  int total = m * v, w = imin(2 * (p - d - 1) + (v - 1) * p, total);
  for (int k = 0; k < w; k++) push_task(l, interleaved_task(k, d, p, v, true));
  for (int k = 0; k < total - w; k++) {
    push_task(l, interleaved_task(k + w, d, p, v, true));
    push_task(l, interleaved_task(k, d, p, v, false));
  }
  for (int k = total - w; k < total; k++) push_task(l, interleaved_task(k, d, p, v, false));
}

static bool valid_args(SchedKind kind, int p, int m, int v, FILE *err) {
  const char *what = NULL;
  if (kind < 0 || kind >= SCHED_KINDS)
    what = "unknown pipeline schedule";
  else if (p < 1)
    what = "a pipeline needs at least 1 device (p)";
  else if (m < 1)
    what = "a pipeline needs at least 1 microbatch (m)";
  else if (v < 1)
    what = "a pipeline needs at least 1 model chunk per device (v)";
  if (what) {
    fprintf(err, "carve: error: %s: p=%d, m=%d, v=%d\n", what, p, m, v);
    return false;
  }
  if (kind == SCHED_INTERLEAVED && v < 2) {
    fprintf(err, "carve: error: interleaved 1F1B needs at least 2 model chunks per device (v): v=%d\n", v);
    return false;
  }
  if (kind == SCHED_INTERLEAVED && m % p != 0) {
    fprintf(err,
            "carve: error: interleaved 1F1B needs the microbatches (m) to be a multiple of the pipeline devices "
            "(p): m=%d, p=%d\n",
            m, p);
    return false;
  }
  if (kind != SCHED_INTERLEAVED && v != 1) {
    fprintf(err, "carve: error: %s runs one model chunk per device (v=1); only interleaved takes more: v=%d\n",
            sched_names[kind], v);
    return false;
  }
  return true;
}

Schedule *schedule_make(SchedKind kind, int p, int m, int v, FILE *err) {
  if (!valid_args(kind, p, m, v, err)) return NULL;
  Schedule *s = arena_alloc(sizeof *s);
  *s = (Schedule){.kind = kind, .p = p, .v = v, .m = m, .split_w = kind == SCHED_ZB_H1};
  s->ntasks = arena_alloc(sizeof(int) * (size_t)p);
  s->order = arena_alloc(sizeof(Task *) * (size_t)p);
  int per_device = v * m * (s->split_w ? 3 : 2);
  for (int d = 0; d < p; d++) {
    List l = {arena_alloc(sizeof(Task) * (size_t)per_device), 0};
    switch (kind) {
    case SCHED_GPIPE: make_gpipe(&l, d, m); break;
    case SCHED_1F1B: make_1f1b(&l, d, p, m); break;
    case SCHED_INTERLEAVED: make_interleaved(&l, d, p, m, v); break;
    case SCHED_ZB_H1: make_zbh1(&l, d, p, m); break;
    default: CARVE_ASSERT(0, "schedule kind");
    }
    CARVE_ASSERT(l.n == per_device, "a device's task count");
    s->order[d] = l.t;
    s->ntasks[d] = l.n;
  }
  return s;
}

/* ---------------------------------------------------------------- checking */

typedef struct Check {
  const Schedule *s;
  int S;      /* virtual stages */
  int *pos;   /* [phase][stage][mb]: index in its device's list, -1 if absent */
  bool *done; /* same shape: the readiness run has executed it */
  int *next;  /* per device: the next task of the readiness run */
  char *why;
  size_t n;
} Check;

static int slot(const Check *c, Task t) { return task_slot(t, c->S, c->s->m); }

static const char *task_str(Task t, char *buf, size_t n) {
  snprintf(buf, n, "%c s%d mb%d", phase_letter[t.phase], t.stage, t.mb);
  return buf;
}

/* The tasks t waits for (the rules in the header comment); returns how many. */
int task_producers(Task t, int S, Task dep[2]) {
  int n = 0;
  if (t.phase == TASK_F && t.stage > 0) dep[n++] = (Task){t.stage - 1, t.mb, TASK_F};
  if (t.phase == TASK_B) dep[n++] = (Task){t.stage, t.mb, TASK_F};
  if (t.phase == TASK_B && t.stage < S - 1) dep[n++] = (Task){t.stage + 1, t.mb, TASK_B};
  if (t.phase == TASK_W) dep[n++] = (Task){t.stage, t.mb, TASK_B};
  return n;
}

/* Each task names a real stage, microbatch and phase of a stage the device
 * owns, and appears once. */
static bool check_task(Check *c, int d, int i) {
  const Schedule *s = c->s;
  Task t = s->order[d][i];
  char b[48];
  if (t.stage < 0 || t.stage >= c->S || t.mb < 0 || t.mb >= s->m || t.phase < TASK_F || t.phase > TASK_W) {
    snprintf(c->why, c->n, "device %d, task %d: stage %d, microbatch %d or phase %d out of range", d, i, t.stage, t.mb,
             (int)t.phase);
    return false;
  }
  if (t.phase == TASK_W && !s->split_w) {
    snprintf(c->why, c->n, "device %d runs %s, but the schedule does not split W", d, task_str(t, b, sizeof b));
    return false;
  }
  if (t.stage % s->p != d) {
    snprintf(c->why, c->n, "device %d runs %s, but stage %d belongs to device %d", d, task_str(t, b, sizeof b), t.stage,
             t.stage % s->p);
    return false;
  }
  if (c->pos[slot(c, t)] >= 0) {
    snprintf(c->why, c->n, "device %d runs %s twice", d, task_str(t, b, sizeof b));
    return false;
  }
  c->pos[slot(c, t)] = i;
  return true;
}

/* Every (stage, mb) has each of its phases, in the order F, B, W. */
static bool check_complete(Check *c) {
  int phases = c->s->split_w ? 3 : 2;
  char b[48];
  for (int st = 0; st < c->S; st++)
    for (int j = 0; j < c->s->m; j++)
      for (int ph = 0; ph < phases; ph++) {
        Task t = {st, j, (TaskPhase)ph}, prev = {st, j, (TaskPhase)(ph - 1)};
        if (c->pos[slot(c, t)] < 0) {
          snprintf(c->why, c->n, "device %d never runs %s", st % c->s->p, task_str(t, b, sizeof b));
          return false;
        }
        if (ph > 0 && c->pos[slot(c, prev)] > c->pos[slot(c, t)]) {
          snprintf(c->why, c->n, "device %d runs %s before %c", st % c->s->p, task_str(t, b, sizeof b),
                   phase_letter[ph - 1]);
          return false;
        }
      }
  return true;
}

static bool ready(const Check *c, Task t) {
  Task dep[2];
  int n = task_producers(t, c->S, dep);
  for (int i = 0; i < n; i++)
    if (!c->done[slot(c, dep[i])]) return false;
  return true;
}

/* Runs the lists on readiness alone; false with the first stuck device. */
static bool check_deadlock(Check *c) {
  const Schedule *s = c->s;
  for (bool progress = true; progress;) {
    progress = false;
    for (int d = 0; d < s->p; d++)
      for (; c->next[d] < s->ntasks[d] && ready(c, s->order[d][c->next[d]]); c->next[d]++, progress = true)
        c->done[slot(c, s->order[d][c->next[d]])] = true;
  }
  for (int d = 0; d < s->p; d++) {
    if (c->next[d] == s->ntasks[d]) continue;
    Task t = s->order[d][c->next[d]], dep[2];
    int n = task_producers(t, c->S, dep), k = 0;
    while (k < n - 1 && c->done[slot(c, dep[k])]) k++;
    char b1[48], b2[48];
    snprintf(c->why, c->n, "deadlock: device %d waits at %s for %s, which device %d never reaches", d,
             task_str(t, b1, sizeof b1), task_str(dep[k], b2, sizeof b2), dep[k].stage % s->p);
    return false;
  }
  return true;
}

static bool check_all(Check *c) {
  const Schedule *s = c->s;
  for (int d = 0; d < s->p; d++)
    for (int i = 0; i < s->ntasks[d]; i++)
      if (!check_task(c, d, i)) return false;
  return check_complete(c) && check_deadlock(c);
}

bool schedule_check(const Schedule *s, char *why, size_t n) {
  if (s->p < 1 || s->m < 1 || s->v < 1) {
    snprintf(why, n, "bad shape: p=%d, m=%d, v=%d", s->p, s->m, s->v);
    return false;
  }
  Check c = {.s = s, .S = s->p * s->v, .why = why, .n = n};
  size_t slots = (size_t)3 * (size_t)c.S * (size_t)s->m;
  c.pos = xmalloc(slots * sizeof(int));
  for (size_t i = 0; i < slots; i++) c.pos[i] = -1;
  c.done = xcalloc(slots, sizeof(bool));
  c.next = xcalloc((size_t)s->p, sizeof(int));
  bool ok = check_all(&c);
  free(c.pos);
  free(c.done);
  free(c.next);
  if (ok && n) why[0] = '\0';
  return ok;
}

int schedule_max_inflight(const Schedule *s, int d) {
  int now = 0, peak = 0;
  for (int i = 0; i < s->ntasks[d]; i++) {
    if (s->order[d][i].phase == TASK_F) now++;
    if (s->order[d][i].phase == TASK_B) now--;
    if (now > peak) peak = now;
  }
  return peak;
}
