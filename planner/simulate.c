/* simulate.c: one training step of a pipeline schedule, event by event, and
 * its Chrome/Perfetto trace.
 *
 * Each device runs its task list strictly in order. A task starts when its
 * device is free and every producer's output has arrived:
 *
 *   start(t) = max(end of the device's previous task, arrival of each input)
 *   F(s, j)  needs F(s-1, j);
 *   B(s, j)  needs F(s, j) and B(s+1, j) (B of the last stage only its F);
 *   W(s, j)  needs B(s, j);
 *
 * the same rules schedule_check uses. An input made on another device
 * (F(s-1) -> F(s), B(s+1) -> B(s)) arrives t_p2p[boundary] after its
 * producer ends, where the boundary is the lower of the two stages; this is
 * recorded as a transfer event. An input made on the same device (F -> B,
 * B -> W, or neighbouring stages on one device when p = 1) arrives when its
 * producer ends. F takes t_f[s], B t_b[s] (the whole backward unless the
 * schedule splits W), W t_w[s]. Transfers overlap compute: they occupy a
 * link, not the device, and links are not shared (no contention); except
 * when they block their sender (blocking_p2p: a run without overlap sends
 * on the step's thread), and the producer's device is held for its
 * transfer too.
 *
 * Each start depends only on the device's previous task and the producers,
 * so the times do not depend on the order in which devices are advanced: the
 * simulator sweeps the devices, running each as far as its inputs allow,
 * until all are done (schedule_check has ruled out deadlock first).
 *
 * Gradient reductions overlap the backward pass as the programs run them
 * (codegen/lower.c, runtime/overlap.c): a virtual stage's t_sync is cut
 * into its buckets (a layer's gradients each), bucket k of n ready k+1 n-ths
 * of the way through the stage's last backward task (its last W when the
 * schedule splits W, as the weight gradients are final only then), and the
 * buckets of a device run one after another on its communication channel,
 * each once ready and the channel free. A device is done at
 * max(finish(d), its last reduction's end) plus overlap_cost times the
 * reduction time that ran beside its compute (what sharing the device
 * costs the compute: 0 on a GPU, measured on CPU ranks). Every device then
 * spends t_tail (syncs that do not overlap: ZeRO's reduce-scatters and
 * gathers), so step = max_d done(d) + t_tail. bubble = 1 - sum_d busy(d) / (p max_d finish(d)): idle over total
 * device time before the tail (REFERENCE's (p-1)/m is idle over busy time,
 * bubble / (1 - bubble) here). Activations of (s, j) are taken when F(s, j)
 * starts and released when its backward ends: at B's end, or at W's end when
 * the schedule splits W, because the weight gradient (x^T dy) still reads the
 * stage's inputs; the peak is thus an upper bound for split schedules, where
 * B may free part of them earlier. Results live in the arena. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

static const char phase_letter[3] = {'F', 'B', 'W'};

typedef struct Sim {
  const SimInput *in;
  const Schedule *s;
  int S;        /* virtual stages */
  double *end;  /* [phase][stage][mb]: when the task ended; < 0 before it ran */
  double *free; /* per device: when its previous task ended */
  int *next;    /* per device: index of its next task */
  SimResult *r;
} Sim;

static int slot(const Sim *x, Task t) { return task_slot(t, x->S, x->s->m); }

static double duration(const Sim *x, Task t) {
  const double *a = t.phase == TASK_F ? x->in->t_f : t.phase == TASK_B ? x->in->t_b : x->in->t_w;
  return a[t.stage];
}

/* Transfer time of dep's output to the device running t: 0 on one device. */
static double p2p(const Sim *x, Task dep, Task t) {
  if (dep.stage % x->s->p == t.stage % x->s->p || !x->in->t_p2p) return 0;
  return x->in->t_p2p[dep.stage < t.stage ? dep.stage : t.stage];
}

/* How long task t's device is held sending t's output to the next device:
   0 unless transfers block their sender (SimInput.blocking_p2p). F hands on
   to the next virtual stage, B to the previous one; W sends nothing. */
static double send_time(const Sim *x, Task t) {
  if (!x->in->blocking_p2p || !x->in->t_p2p || x->s->p < 2) return 0;
  if (t.phase == TASK_F && t.stage + 1 < x->S) return x->in->t_p2p[t.stage];
  if (t.phase == TASK_B && t.stage > 0) return x->in->t_p2p[t.stage - 1];
  return 0;
}

static void add_event(Sim *x, int d, Task t, bool transfer, double start, double end) {
  x->r->events[x->r->nevents++] = (SimEvent){d, t, transfer, start, end};
}

/* Runs device d's next task if its inputs have arrived. */
static bool run_next(Sim *x, int d) {
  Task t = x->s->order[d][x->next[d]], dep[2];
  int n = task_producers(t, x->S, dep);
  double start = x->free[d];
  for (int i = 0; i < n; i++) {
    double e = x->end[slot(x, dep[i])];
    if (e < 0) return false;
    if (e + p2p(x, dep[i], t) > start) start = e + p2p(x, dep[i], t);
  }
  for (int i = 0; i < n; i++) {
    double e = x->end[slot(x, dep[i])], c = p2p(x, dep[i], t);
    if (c > 0) add_event(x, d, t, true, e, e + c);
  }
  double dur = duration(x, t);
  add_event(x, d, t, false, start, start + dur);
  x->end[slot(x, t)] = start + dur;
  x->free[d] = start + dur + send_time(x, t);
  x->r->busy_s[d] += dur;
  x->next[d]++;
  return true;
}

static void run_all(Sim *x) {
  const Schedule *s = x->s;
  for (bool progress = true; progress;) {
    progress = false;
    for (int d = 0; d < s->p; d++)
      while (x->next[d] < s->ntasks[d] && run_next(x, d)) progress = true;
  }
  for (int d = 0; d < s->p; d++) CARVE_ASSERT(x->next[d] == s->ntasks[d], "a checked schedule cannot deadlock");
}

/* Kept activations follow each device's list order: taken at F's start,
 * released at the end of B (or of W when split). */
static void peak_activations(const Sim *x) {
  const Schedule *s = x->s;
  TaskPhase release = s->split_w ? TASK_W : TASK_B;
  for (int d = 0; d < s->p && x->in->act_bytes; d++) {
    double now = 0, peak = 0;
    for (int i = 0; i < s->ntasks[d]; i++) {
      Task t = s->order[d][i];
      if (t.phase == TASK_F) now += x->in->act_bytes[t.stage];
      if (now > peak) peak = now;
      if (t.phase == release) now -= x->in->act_bytes[t.stage];
    }
    x->r->peak_act[d] = peak;
  }
}

static bool bad_times(const double *a, int n, const char *what, FILE *err) {
  if (!a) {
    fprintf(err, "carve: error: simulate: no %s times\n", what);
    return true;
  }
  for (int i = 0; i < n; i++)
    if (!(a[i] >= 0) || !isfinite(a[i])) {
      fprintf(err, "carve: error: simulate: %s time of stage %d is %g (need a finite time >= 0)\n", what, i, a[i]);
      return true;
    }
  return false;
}

static bool valid_input(const SimInput *in, FILE *err) {
  char why[256];
  if (!in->sched || !schedule_check(in->sched, why, sizeof why)) {
    fprintf(err, "carve: error: simulate: invalid schedule: %s\n", in->sched ? why : "none given");
    return false;
  }
  int S = in->sched->p * in->sched->v;
  if (bad_times(in->t_f, S, "forward", err) || bad_times(in->t_b, S, "backward", err)) return false;
  if (in->sched->split_w && bad_times(in->t_w, S, "weight-gradient", err)) return false;
  if (in->t_p2p && bad_times(in->t_p2p, S - 1, "point-to-point", err)) return false;
  if (in->t_sync && bad_times(in->t_sync, S, "gradient-reduction", err)) return false;
  if (!(in->overlap_cost >= 0 && in->overlap_cost <= 1)) {
    fprintf(err, "carve: error: simulate: overlap cost is %g (need 0 to 1)\n", in->overlap_cost);
    return false;
  }
  if (!(in->t_tail >= 0) || !isfinite(in->t_tail)) {
    fprintf(err, "carve: error: simulate: tail time is %g (need a finite time >= 0)\n", in->t_tail);
    return false;
  }
  return true;
}

/* When device d is done with its compute and its overlapped gradient
   reductions (see the top); *exposed gets how long past its compute the
   last reduction ran. */
static double sync_end(const Sim *x, int d, double *exposed) {
  const SimInput *in = x->in;
  const Schedule *s = x->s;
  double finish = x->free[d], channel = 0, beside = 0;
  if (!in->t_sync) return finish;
  for (int c = 0; c < s->v; c++) { /* the device's chunks: their last backward tasks end in this order */
    int vs = (s->v - 1 - c) * s->p + d, n = in->sync_buckets ? in->sync_buckets[vs] : 1;
    Task last = {.phase = s->split_w ? TASK_W : TASK_B, .stage = vs, .mb = s->m - 1};
    double end = x->end[slot(x, last)], start = end - duration(x, last), each = in->t_sync[vs] / (n > 0 ? n : 1);
    for (int k = 0; k < n && each > 0; k++) {
      double ready = start + (end - start) * (k + 1) / n, begin = fmax(ready, channel);
      channel = begin + each;
      beside += fmax(0, fmin(channel, finish) - begin);
    }
  }
  *exposed = fmax(0, channel - finish);
  return fmax(finish, channel) + in->overlap_cost * beside;
}

bool simulate(const SimInput *in, SimResult *out, FILE *err) {
  memset(out, 0, sizeof *out); /* a refused input leaves an empty result */
  if (!valid_input(in, err)) return false;
  const Schedule *s = in->sched;
  Sim x = {.in = in, .s = s, .S = s->p * s->v, .r = out};
  size_t slots = (size_t)3 * (size_t)x.S * (size_t)s->m;
  int ntasks = 0;
  for (int d = 0; d < s->p; d++) ntasks += s->ntasks[d];
  out->busy_s = arena_alloc(sizeof(double) * (size_t)s->p);
  out->peak_act = arena_alloc(sizeof(double) * (size_t)s->p);
  /* at most one compute event per task and one transfer per F and B input */
  out->events = arena_alloc(sizeof(SimEvent) * ((size_t)ntasks + 2 * (size_t)x.S * (size_t)s->m));
  x.end = xmalloc(slots * sizeof(double));
  for (size_t i = 0; i < slots; i++) x.end[i] = -1;
  x.free = xcalloc((size_t)s->p, sizeof(double));
  x.next = xcalloc((size_t)s->p, sizeof(int));
  run_all(&x);
  double finish = 0, busy = 0;
  for (int d = 0; d < s->p; d++) {
    finish = fmax(finish, x.free[d]);
    busy += out->busy_s[d];
  }
  double done = finish;
  for (int d = 0; d < s->p; d++) {
    double exposed = 0, end = sync_end(&x, d, &exposed);
    done = fmax(done, end);
    out->sync_exposed_s = fmax(out->sync_exposed_s, exposed);
  }
  out->step_s = done + in->t_tail;
  out->bubble = finish > 0 ? 1 - busy / (s->p * finish) : 0;
  peak_activations(&x);
  free(x.end);
  free(x.free);
  free(x.next);
  return true;
}

/* ---------------------------------------------------------------- trace */

/* pid 0 holds compute, pid 1 transfers (named by the task they feed); tid is
 * the device. Times in microseconds. */
static void write_trace(const SimResult *r, FILE *f) {
  int p = 0;
  for (int i = 0; i < r->nevents; i++)
    if (r->events[i].device + 1 > p) p = r->events[i].device + 1;
  fprintf(f, "{\"traceEvents\":[\n");
  fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"args\":{\"name\":\"compute\"}},\n");
  fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{\"name\":\"transfers\"}}");
  for (int pid = 0; pid < 2; pid++)
    for (int d = 0; d < p; d++)
      fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"device %d\"}}",
              pid, d, d);
  for (int i = 0; i < r->nevents; i++) {
    const SimEvent *e = &r->events[i];
    fprintf(f,
            ",\n{\"name\":\"%s%c s%d mb%d\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,"
            "\"dur\":%.3f}",
            e->transfer ? "to " : "", phase_letter[e->task.phase], e->task.stage, e->task.mb,
            e->transfer ? "p2p" : "compute", e->transfer ? 1 : 0, e->device, e->start * 1e6, (e->end - e->start) * 1e6);
  }
  fprintf(f, "\n],\"displayTimeUnit\":\"ms\"}\n");
}

bool sim_trace_write(const SimResult *r, const char *path, FILE *err) {
  /* write to a temporary name, then rename: a reader never sees half a file */
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  if (f) write_trace(r, f);
  bool ok = temp_close(f, tmp, path, true);
  if (!ok) fprintf(err, "carve: error: cannot write the trace '%s': %s\n", path, strerror(errno));
  return ok;
}
