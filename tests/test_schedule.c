/* test_schedule.c: pipeline schedules and the step simulator.
 *   - every schedule passes schedule_check over p = 1..8, m = 1..16
 *     (interleaved: v = 2, 3 and m a multiple of p); broken lists (a
 *     duplicate, a missing task, B before F, a deadlock) are caught;
 *   - microbatches in flight: 1F1B and ZB-H1 min(p-d, m), GPipe m,
 *     interleaved min(2(p-d-1) + (v-1)p + 1, mv) chunks;
 *   - with equal stage times and free transfers the simulated step equals
 *     the closed forms:
 *       GPipe, 1F1B      (m + p - 1)(t_f + t_b)
 *       interleaved      (mv + p - 1)(t_f + t_b)   (t_f, t_b per chunk)
 *       ZB-H1, m >= p    m(t_f+t_b+t_w) + (p-1)(t_f+t_b-t_w)  (t_w <= t_f)
 *       ZB-H1, m < p     2m + 2p - 1               (t_f = t_b = t_w = 1)
 *     and the bubble idle/total = (p-1)/(m+p-1), (p-1)/(mv+p-1),
 *     (p-1)/(3m+p-1), so idle/busy (REFERENCE's measure) = (p-1)/m,
 *     (p-1)/(vm), (p-1)/(3m);
 *   - hand-computed cases with unequal stages and transfers;
 *   - peak activations: 1F1B min(p-d, m), GPipe m, ZB-H1 min(p, m);
 *   - bad inputs are refused with a message; the trace has one event per
 *     task and per transfer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "planner.h"

static bool near(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(1, fabs(b)); }

/* Runs a schedule with the same times on every stage. */
static bool sim_uniform(const Schedule *s, double tf, double tb, double tw, double p2p, double tail, SimResult *r) {
  int S = s->p * s->v;
  double *f = arena_alloc(sizeof(double) * (size_t)S), *b = arena_alloc(sizeof(double) * (size_t)S);
  double *w = arena_alloc(sizeof(double) * (size_t)S), *c = arena_alloc(sizeof(double) * (size_t)S);
  double *act = arena_alloc(sizeof(double) * (size_t)S);
  for (int i = 0; i < S; i++) f[i] = tf, b[i] = tb, w[i] = tw, c[i] = p2p, act[i] = 1;
  SimInput in = {.sched = s, .t_f = f, .t_b = b, .t_w = w, .t_p2p = c, .act_bytes = act, .t_tail = tail};
  return simulate(&in, r, stderr);
}

static Schedule *make(SchedKind k, int p, int m, int v) { return schedule_make(k, p, m, v, stderr); }

static bool checks(const Schedule *s) {
  char why[256];
  bool ok = s && schedule_check(s, why, sizeof why);
  if (s && !ok) fprintf(stderr, "%s p=%d m=%d v=%d: %s\n", sched_names[s->kind], s->p, s->m, s->v, why);
  return ok;
}

static void test_check_all(void) {
  int bad = 0, n = 0;
  for (int p = 1; p <= 8; p++)
    for (int m = 1; m <= 16; m++) {
      SchedKind plain[] = {SCHED_GPIPE, SCHED_1F1B, SCHED_ZB_H1};
      for (int k = 0; k < 3; k++, n++) bad += !checks(make(plain[k], p, m, 1));
      for (int v = 2; v <= 3 && m % p == 0; v++, n++) bad += !checks(make(SCHED_INTERLEAVED, p, m, v));
    }
  CHECK(bad == 0, "%d of %d schedules fail schedule_check", bad, n);
  CHECK(n > 400, "only %d schedules tried", n);
}

/* A copy of s whose lists can be edited. */
static Schedule *copy(const Schedule *s) {
  Schedule *c = arena_alloc(sizeof *c);
  *c = *s;
  c->ntasks = arena_alloc(sizeof(int) * (size_t)s->p);
  c->order = arena_alloc(sizeof(Task *) * (size_t)s->p);
  for (int d = 0; d < s->p; d++) {
    c->ntasks[d] = s->ntasks[d];
    c->order[d] = arena_alloc(sizeof(Task) * (size_t)s->ntasks[d]);
    memcpy(c->order[d], s->order[d], sizeof(Task) * (size_t)s->ntasks[d]);
  }
  return c;
}

static void expect_broken(const Schedule *s, const char *want) {
  char why[256];
  bool ok = schedule_check(s, why, sizeof why);
  CHECK(!ok && strstr(why, want), "want a failure mentioning '%s', got %s: %s", want, ok ? "ok" : "failure", why);
}

static void test_check_broken(void) {
  /* 1F1B, p = 2, m = 2: device 0 runs F0 F1 B0 B1, device 1 F0 B0 F1 B1 */
  const Schedule *s = make(SCHED_1F1B, 2, 2, 1);
  Schedule *c = copy(s);
  c->order[0][1] = c->order[0][0];
  expect_broken(c, "device 0 runs F s0 mb0 twice");
  c = copy(s);
  c->ntasks[1] = 3;
  expect_broken(c, "device 1 never runs B s1 mb1");
  c = copy(s);
  c->order[1][0] = s->order[1][1], c->order[1][1] = s->order[1][0];
  expect_broken(c, "device 1 runs B s1 mb0 before F");
  c = copy(s);
  c->order[0][0].stage = 1;
  expect_broken(c, "stage 1 belongs to device 1");
  /* device 0: F0 B0 F1 B1 and device 1: F0 F1 B0 B1: device 0 waits at B0
   * for device 1, which waits at F1 for device 0 */
  c = copy(s);
  Task d0[] = {{0, 0, TASK_F}, {0, 0, TASK_B}, {0, 1, TASK_F}, {0, 1, TASK_B}};
  Task d1[] = {{1, 0, TASK_F}, {1, 1, TASK_F}, {1, 0, TASK_B}, {1, 1, TASK_B}};
  memcpy(c->order[0], d0, sizeof d0);
  memcpy(c->order[1], d1, sizeof d1);
  expect_broken(c, "deadlock: device 0 waits at B s0 mb0 for B s1 mb0");
}

static void test_inflight(void) {
  int bad = 0;
  for (int p = 1; p <= 8; p++)
    for (int m = 1; m <= 16; m++) {
      const Schedule *g = make(SCHED_GPIPE, p, m, 1), *o = make(SCHED_1F1B, p, m, 1);
      const Schedule *z = make(SCHED_ZB_H1, p, m, 1);
      for (int d = 0; d < p; d++) {
        int want = p - d < m ? p - d : m;
        bad += schedule_max_inflight(o, d) != want || schedule_max_inflight(z, d) != want;
        bad += schedule_max_inflight(g, d) != m;
      }
      for (int v = 2; v <= 3 && m % p == 0; v++) {
        const Schedule *in = make(SCHED_INTERLEAVED, p, m, v);
        for (int d = 0; d < p; d++) {
          int want = 2 * (p - d - 1) + (v - 1) * p + 1;
          bad += schedule_max_inflight(in, d) != (want < m * v ? want : m * v);
        }
      }
    }
  CHECK(bad == 0, "%d devices with the wrong number of microbatches in flight", bad);
}

/* Megatron's order for p = 2, v = 2, m = 4 on device 0 (stages 0 and 2):
 * warm-up 2(p-1) + (v-1)p = 4 forwards, chunk-major within groups of p. */
static void test_interleaved_order(void) {
  const Schedule *s = make(SCHED_INTERLEAVED, 2, 4, 2);
  Task want[] = {{0, 0, TASK_F}, {0, 1, TASK_F}, {2, 0, TASK_F}, {2, 1, TASK_F}, {0, 2, TASK_F}, {2, 0, TASK_B},
                 {0, 3, TASK_F}, {2, 1, TASK_B}, {2, 2, TASK_F}, {0, 0, TASK_B}, {2, 3, TASK_F}, {0, 1, TASK_B},
                 {2, 2, TASK_B}, {2, 3, TASK_B}, {0, 2, TASK_B}, {0, 3, TASK_B}};
  bool same = s->ntasks[0] == 16;
  for (int i = 0; same && i < 16; i++)
    same = s->order[0][i].stage == want[i].stage && s->order[0][i].mb == want[i].mb &&
           s->order[0][i].phase == want[i].phase;
  CHECK(same, "interleaved p=2 v=2 m=4: device 0's order differs from Megatron's");
}

static void test_closed_forms(void) {
  int bad = 0;
  SimResult r;
  for (int p = 1; p <= 8; p++)
    for (int m = 1; m <= 16; m++) {
      double b = (double)(p - 1) / (m + p - 1);
      for (int k = 0; k < 2; k++) {
        Schedule *s = make(k ? SCHED_1F1B : SCHED_GPIPE, p, m, 1);
        bool ok = sim_uniform(s, 1, 2, 0, 0, 0, &r) && near(r.step_s, 3.0 * (m + p - 1)) && near(r.bubble, b);
        ok = ok && near(r.bubble / (1 - r.bubble), (double)(p - 1) / m);
        if (!ok) fprintf(stderr, "%s p=%d m=%d: step %g bubble %g\n", sched_names[s->kind], p, m, r.step_s, r.bubble);
        bad += !ok;
      }
      for (int v = 2; v <= 3 && m % p == 0; v++) {
        Schedule *s = make(SCHED_INTERLEAVED, p, m, v);
        double want = 3.0 * (m * v + p - 1), ideal = 3.0 * m * v;
        bool ok = sim_uniform(s, 1, 2, 0, 0, 0, &r) && near(r.step_s, want);
        ok = ok && near(r.bubble / (1 - r.bubble), (double)(p - 1) / (v * m)) &&
             near(want / ideal - 1, r.bubble / (1 - r.bubble));
        if (!ok) fprintf(stderr, "interleaved p=%d m=%d v=%d: step %g want %g\n", p, m, v, r.step_s, want);
        bad += !ok;
      }
    }
  CHECK(bad == 0, "%d GPipe/1F1B/interleaved steps differ from the closed forms", bad);
}

static void test_zb_closed_forms(void) {
  int bad = 0;
  SimResult r;
  double times[][3] = {{1, 1, 1}, {1, 1.5, 0.5}, {2, 1, 1}};
  for (int p = 1; p <= 8; p++)
    for (int m = 1; m <= 16; m++) {
      Schedule *s = make(SCHED_ZB_H1, p, m, 1);
      for (int t = 0; t < 3; t++) {
        double tf = times[t][0], tb = times[t][1], tw = times[t][2];
        if (m < p && t > 0) continue;
        double want = m >= p ? m * (tf + tb + tw) + (p - 1) * (tf + tb - tw) : 2 * m + 2 * p - 1;
        bool ok = sim_uniform(s, tf, tb, tw, 0, 0, &r) && near(r.step_s, want);
        if (ok && t == 0 && m >= p) ok = near(r.bubble / (1 - r.bubble), (double)(p - 1) / (3 * m));
        if (!ok) fprintf(stderr, "zb-h1 p=%d m=%d t=%g/%g/%g: step %g, want %g\n", p, m, tf, tb, tw, r.step_s, want);
        bad += !ok;
      }
      for (int d = 0; d < p && r.peak_act; d++) bad += !near(r.peak_act[d], p < m ? p : m);
    }
  CHECK(bad == 0, "%d ZB-H1 steps or activation peaks differ from the closed forms", bad);
}

static void test_peak_act(void) {
  SimResult r;
  int bad = 0;
  for (int p = 1; p <= 8; p++)
    for (int m = 1; m <= 16; m++) {
      if (!sim_uniform(make(SCHED_1F1B, p, m, 1), 1, 2, 0, 0.25, 0, &r)) bad++;
      for (int d = 0; d < p && r.peak_act; d++) bad += !near(r.peak_act[d], p - d < m ? p - d : m);
      if (!sim_uniform(make(SCHED_GPIPE, p, m, 1), 1, 2, 0, 0.25, 0, &r)) bad++;
      for (int d = 0; d < p && r.peak_act; d++) bad += !near(r.peak_act[d], m);
    }
  CHECK(bad == 0, "%d devices with the wrong activation peak", bad);
}

/* 1F1B, p = 2, m = 2, t_f = {1, 2}, t_b = {2, 3}, p2p 0.5, tail 0.25.
 * Device 0 runs F0 F1 B0 B1, device 1 F0 B0 F1 B1:
 *   dev 0  F0 [0, 1]        F1 [1, 2]
 *   dev 1  F0 [1.5, 3.5]    (F0 of dev 0 ends at 1, + 0.5 transfer)
 *          B0 [3.5, 6.5]
 *          F1 [6.5, 8.5]    (its input arrived at 2.5; the device was busy)
 *          B1 [8.5, 11.5]
 *   dev 0  B0 [7, 9]        (B0 of dev 1 ends at 6.5, + 0.5)
 *          B1 [12, 14]      (11.5 + 0.5)
 * step = 14 + 0.25; busy 6 and 10, bubble = 1 - 16 / (2 * 14) = 3/7; four
 * transfers (two forward, two backward); with act_bytes {10, 20} device 0
 * keeps F0 and F1 at once (20) and device 1 one microbatch (20). */
static void test_hand_1f1b(void) {
  Schedule *s = make(SCHED_1F1B, 2, 2, 1);
  double tf[] = {1, 2}, tb[] = {2, 3}, p2p[] = {0.5}, act[] = {10, 20};
  SimInput in = {.sched = s, .t_f = tf, .t_b = tb, .t_p2p = p2p, .act_bytes = act, .t_tail = 0.25};
  SimResult r;
  bool ok = simulate(&in, &r, stderr);
  CHECK(ok, "1F1B by hand: simulates");
  if (!ok) return;
  CHECK(near(r.step_s, 14.25), "1F1B by hand: step %g, want 14.25", r.step_s);
  CHECK(near(r.bubble, 3.0 / 7), "1F1B by hand: bubble %g, want 3/7", r.bubble);
  CHECK(near(r.busy_s[0], 6) && near(r.busy_s[1], 10), "busy %g %g, want 6 10", r.busy_s[0], r.busy_s[1]);
  CHECK(near(r.peak_act[0], 20) && near(r.peak_act[1], 20), "peaks %g %g", r.peak_act[0], r.peak_act[1]);
  int transfers = 0;
  for (int i = 0; i < r.nevents; i++) {
    const SimEvent *e = &r.events[i];
    transfers += e->transfer;
    if (!e->transfer && e->device == 1 && e->task.phase == TASK_F && e->task.mb == 1)
      CHECK(near(e->start, 6.5), "F s1 mb1 starts at %g, want 6.5", e->start);
    if (e->transfer && e->task.stage == 0 && e->task.mb == 1)
      CHECK(near(e->start, 11.5) && near(e->end, 12), "B1's transfer %g..%g, want 11.5..12", e->start, e->end);
  }
  CHECK(transfers == 4 && r.nevents == 12, "%d transfers, %d events; want 4, 12", transfers, r.nevents);
}

/* GPipe, p = 2, m = 3, t_f = {2, 1}, t_b = {1, 3}, no transfer time, tail 1.
 *   dev 0  F0 [0, 2]  F1 [2, 4]  F2 [4, 6]
 *   dev 1  F0 [2, 3]  F1 [4, 5]  F2 [6, 7]  B0 [7, 10]  B1 [10, 13]  B2 [13, 16]
 *   dev 0  B0 [10, 11]  B1 [13, 14]  B2 [16, 17]
 * step = 17 + 1 = 18; busy 9 and 12, bubble = 1 - 21 / 34 = 13/34. */
static void test_hand_gpipe(void) {
  Schedule *s = make(SCHED_GPIPE, 2, 3, 1);
  double tf[] = {2, 1}, tb[] = {1, 3};
  SimInput in = {.sched = s, .t_f = tf, .t_b = tb, .t_tail = 1};
  SimResult r;
  CHECK(simulate(&in, &r, stderr), "GPipe by hand: simulates");
  CHECK(near(r.step_s, 18), "GPipe by hand: step %g, want 18", r.step_s);
  CHECK(near(r.bubble, 13.0 / 34), "GPipe by hand: bubble %g, want 13/34", r.bubble);
  CHECK(r.nevents == 12, "no transfer events without transfer times: %d events", r.nevents);
}

/* ZB-H1, p = 2, m = 2, all times 1. Device 0 (no held-back W): F0 F1 B0 W0
 * B1 W1; device 1 (holds back one W): F0 B0 F1 B1 W0 W1.
 *   dev 0  F0 [0, 1]  F1 [1, 2]
 *   dev 1  F0 [1, 2]  B0 [2, 3]  F1 [3, 4]  B1 [4, 5]  W0 [5, 6]  W1 [6, 7]
 *   dev 0  B0 [3, 4]  W0 [4, 5]  B1 [5, 6]  W1 [6, 7]
 * step = 7 = 3m + p - 1. */
static void test_hand_zb(void) {
  Schedule *s = make(SCHED_ZB_H1, 2, 2, 1);
  Task want0[] = {{0, 0, TASK_F}, {0, 1, TASK_F}, {0, 0, TASK_B}, {0, 0, TASK_W}, {0, 1, TASK_B}, {0, 1, TASK_W}};
  Task want1[] = {{1, 0, TASK_F}, {1, 0, TASK_B}, {1, 1, TASK_F}, {1, 1, TASK_B}, {1, 0, TASK_W}, {1, 1, TASK_W}};
  bool same = s->split_w && s->ntasks[0] == 6 && s->ntasks[1] == 6;
  for (int i = 0; same && i < 6; i++)
    same = !memcmp(&s->order[0][i], &want0[i], sizeof(Task)) && !memcmp(&s->order[1][i], &want1[i], sizeof(Task));
  CHECK(same, "ZB-H1 p=2 m=2: the lists differ from the hand-written ones");
  SimResult r;
  CHECK(sim_uniform(s, 1, 1, 1, 0, 0, &r) && near(r.step_s, 7), "ZB-H1 by hand: step %g, want 7", r.step_s);
}

static void expect_error(SchedKind k, int p, int m, int v, const char *want) {
  char *buf = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&buf, &len);
  Schedule *s = schedule_make(k, p, m, v, err);
  fclose(err);
  CHECK(!s && strstr(buf, want), "%s p=%d m=%d v=%d: want NULL and '%s', got: %s",
        k < SCHED_KINDS ? sched_names[k] : "?", p, m, v, want, buf);
  free(buf);
}

static void test_bad_inputs(void) {
  expect_error(SCHED_INTERLEAVED, 4, 6, 2,
               "interleaved 1F1B needs the microbatches (m) to be a multiple of the pipeline devices (p): m=6, p=4");
  expect_error(SCHED_INTERLEAVED, 4, 8, 1, "interleaved 1F1B needs at least 2 model chunks per device (v): v=1");
  expect_error(SCHED_1F1B, 0, 8, 1, "at least 1 device (p)");
  expect_error(SCHED_GPIPE, 2, 0, 1, "at least 1 microbatch (m)");
  expect_error(SCHED_ZB_H1, 2, 4, 0, "at least 1 model chunk per device (v)");
  expect_error(SCHED_1F1B, 2, 4, 2, "1f1b runs one model chunk per device (v=1); only interleaved takes more: v=2");
  expect_error(SCHED_KINDS, 2, 4, 1, "unknown pipeline schedule");
  /* the simulator refuses missing or negative times */
  Schedule *s = make(SCHED_ZB_H1, 2, 2, 1);
  double t[] = {1, 1}, neg[] = {1, -1};
  char *buf = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&buf, &len);
  SimResult r;
  SimInput no_w = {.sched = s, .t_f = t, .t_b = t};
  SimInput bad_b = {.sched = s, .t_f = t, .t_b = neg, .t_w = t};
  bool ok1 = simulate(&no_w, &r, err), ok2 = simulate(&bad_b, &r, err);
  fclose(err);
  CHECK(!ok1 && strstr(buf, "no weight-gradient times"), "ZB-H1 without t_w: %s", buf);
  CHECK(!ok2 && strstr(buf, "backward time of stage 1 is -1"), "a negative time: %s", buf);
  free(buf);
}

static char *slurp(const char *path) {
  size_t len;
  char *s = read_file(path, &len);
  return s ? s : calloc(1, 1);
}

static int count(const char *s, const char *what) {
  int n = 0;
  for (const char *q = strstr(s, what); q; q = strstr(q + 1, what)) n++;
  return n;
}

static void test_trace(void) {
  Schedule *s = make(SCHED_INTERLEAVED, 2, 4, 2);
  SimResult r;
  bool ok = sim_uniform(s, 1, 2, 0, 0.1, 0.5, &r);
  CHECK(ok, "interleaved p=2 m=4 v=2: simulates");
  if (!ok) return;
  char path[64];
  snprintf(path, sizeof path, "/tmp/carve-test-trace-%d.json", (int)getpid());
  CHECK(sim_trace_write(&r, path, stderr), "writes %s", path);
  char *t = slurp(path);
  int tasks = 0, transfers = 0;
  for (int d = 0; d < s->p; d++) tasks += s->ntasks[d];
  for (int i = 0; i < r.nevents; i++) transfers += r.events[i].transfer;
  CHECK(strncmp(t, "{\"traceEvents\":[", 16) == 0, "trace begins %.20s", t);
  CHECK(count(t, "\"ph\":\"X\",\"pid\":0,") == tasks, "%d compute events, want %d", count(t, "\"ph\":\"X\",\"pid\":0,"),
        tasks);
  CHECK(count(t, "\"ph\":\"X\",\"pid\":1,") == transfers && transfers == 2 * (2 * 2 - 1) * 4,
        "%d transfer events, want %d", count(t, "\"ph\":\"X\",\"pid\":1,"), transfers);
  CHECK(count(t, "{") == count(t, "}") && count(t, "[") == count(t, "]"), "brackets balance");
  CHECK(strstr(t, "\"name\":\"F s3 mb2\"") != NULL, "events are named like 'F s3 mb2'");
  size_t n = strlen(t);
  CHECK(n > 2 && strcmp(t + n - 2, "}\n") == 0, "trace ends with }");
  free(t);
  remove(path);
  char *buf = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&buf, &len);
  ok = sim_trace_write(&r, "/nonexistent-dir/trace.json", err);
  fclose(err);
  CHECK(!ok && strstr(buf, "cannot write the trace '/nonexistent-dir/trace.json'"), "unwritable path: %s", buf);
  free(buf);
}

int main(void) {
  test_check_all();
  test_check_broken();
  test_inflight();
  test_interleaved_order();
  test_closed_forms();
  test_zb_closed_forms();
  test_peak_act();
  test_hand_1f1b();
  test_hand_gpipe();
  test_hand_zb();
  test_bad_inputs();
  test_trace();
  return test_summary();
}
