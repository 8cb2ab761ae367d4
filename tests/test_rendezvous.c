/* test_rendezvous.c: the deadlock check under rendezvous semantics
 * (codegen/rendezvous.c).
 *   - hand-made rank programs: two ranks that both send first, each send in
 *     a group of its own, are refused with both ranks and instructions
 *     named; the same with each send and receive adjacent (one group) pass;
 *     a chain that receives before it sends passes; two collectives reached
 *     in different orders, different collectives met on one group, and a
 *     send nobody receives are refused; programs added in any order give
 *     the same answer;
 *   - every pipeline schedule (GPipe, 1F1B, interleaved, ZB-H1) over a few
 *     layouts (pp 2-4, with dp, tp, ZeRO, recomputation, unequal replicas)
 *     compiles, which holds its programs to the check, and passes it again
 *     here, program by program. */
#include <stdlib.h>
#include <string.h>

#include "compile_tiny.h"
#include "harness.h"
#include "planner.h"

/* ---------------------------------------------------------------- by hand */

#define MAXI 8
typedef struct Hand {
  Program p;
  Instr step[MAXI];
} Hand;

static int pair01[2] = {0, 1};
static int *two_groups[2] = {pair01, pair01}; /* groups 0 and 1: both ranks 0 and 1 */
static int two_sizes[2] = {2, 2};

static void hand_init(Hand *h, int rank, int world) {
  memset(h, 0, sizeof *h);
  h->p = (Program){.model = "hand", .rank = rank, .world = world, .step = h->step};
  h->p.ngroups = world == 2 ? 2 : 0;
  h->p.group_size = two_sizes;
  h->p.group_ranks = two_groups;
}

/* Appends an instruction: send/recv (a: peer, b: tag), a collective (a:
   group) or a compute one. */
static void emit(Hand *h, OpKind op, int a, int b) {
  Instr *in = &h->step[h->p.nstep++];
  *in = (Instr){.op = op, .out = -1};
  in->i[0] = a, in->i[1] = b;
}

/* The check over n hand programs; its message in msg. */
static bool check(Hand *h, int n, bool reverse, char *msg, size_t cap) {
  FILE *f = fmemopen(msg, cap, "w");
  Rendezvous *z = rendezvous_new(n);
  for (int k = 0; k < n; k++) rendezvous_add(z, &h[reverse ? n - 1 - k : k].p);
  bool ok = rendezvous_check(z, f);
  rendezvous_free(z);
  fclose(f);
  return ok;
}

static bool has(const char *msg, const char *what) { return strstr(msg, what) != NULL; }

static void test_send_first(void) {
  Hand h[2];
  char msg[1024];
  for (int grouped = 0; grouped < 2; grouped++) {
    for (int r = 0; r < 2; r++) {
      hand_init(&h[r], r, 2);
      emit(&h[r], OP_FILL, 0, 0);
      emit(&h[r], OP_SEND, 1 - r, 10 + r);
      if (!grouped) emit(&h[r], OP_FILL, 0, 0); /* compute between: two groups */
      emit(&h[r], OP_RECV, 1 - r, 11 - r);
    }
    for (int rev = 0; rev < 2; rev++) {
      bool ok = check(h, 2, rev, msg, sizeof msg);
      if (grouped) {
        CHECK(ok, "a send and a receive in one group pass: %s", msg);
        continue;
      }
      CHECK(!ok, "two ranks that both send first, in groups of their own, are refused");
      CHECK(has(msg, "rank 0 at step instruction 1 (send to rank 1, tag 10)") &&
                has(msg, "rank 1, which is at step instruction 1 (send to rank 0, tag 11)") && has(msg, "0 -> 1 -> 0"),
            "both ranks and their sends are named: %s", msg);
    }
  }
}

/* rank 0 sends, rank 1 receives it and sends on, rank 2 receives: no
   groups needed. */
static void test_chain(void) {
  Hand h[3];
  char msg[1024];
  for (int r = 0; r < 3; r++) hand_init(&h[r], r, 3);
  emit(&h[0], OP_SEND, 1, 5);
  emit(&h[1], OP_RECV, 0, 5);
  emit(&h[1], OP_FILL, 0, 0);
  emit(&h[1], OP_SEND, 2, 6);
  emit(&h[2], OP_RECV, 1, 6);
  CHECK(check(h, 3, false, msg, sizeof msg), "a chain passes: %s", msg);
  /* the same tag twice pairs in order */
  emit(&h[0], OP_SEND, 1, 5);
  emit(&h[1], OP_RECV, 0, 5);
  CHECK(check(h, 3, true, msg, sizeof msg), "repeated tags pair in order: %s", msg);
  emit(&h[0], OP_SEND, 2, 7);
  CHECK(!check(h, 3, false, msg, sizeof msg), "a send nobody receives is refused");
  CHECK(has(msg,
            "rank 0 at step instruction 2 (send to rank 2, tag 7) waits for a matching recv that rank 2 never posts"),
        "the unmatched send is named: %s", msg);
}

static void test_collectives(void) {
  Hand h[2];
  char msg[1024];
  for (int r = 0; r < 2; r++) {
    hand_init(&h[r], r, 2);
    emit(&h[r], OP_ALL_REDUCE, r, 0); /* rank 0: group 0 then 1; rank 1: group 1 then 0 */
    emit(&h[r], OP_FILL, 0, 0);
    emit(&h[r], OP_ALL_REDUCE, 1 - r, 0);
  }
  CHECK(!check(h, 2, false, msg, sizeof msg), "collectives reached in different orders are refused");
  CHECK(
      has(msg, "(all_reduce over group 0) waits for rank 1, which is at step instruction 0 (all_reduce over group 1)"),
      "both collectives are named: %s", msg);
  for (int r = 0; r < 2; r++) h[r].step[2].i[0] = h[r].step[0].i[0] = 0;
  CHECK(check(h, 2, true, msg, sizeof msg), "the same order passes: %s", msg);
  h[1].step[2].op = OP_ALL_GATHER;
  CHECK(!check(h, 2, false, msg, sizeof msg), "different collectives on one group are refused");
  CHECK(has(msg, "different collectives") && has(msg, "all_gather over group 0"), "and named: %s", msg);
}

static void test_incomplete(void) {
  Hand h;
  char msg[1024];
  hand_init(&h, 0, 2);
  FILE *f = fmemopen(msg, sizeof msg, "w");
  Rendezvous *z = rendezvous_new(2);
  rendezvous_add(z, &h.p);
  CHECK(!rendezvous_check(z, f), "a plan without every rank's program is refused");
  fclose(f);
  rendezvous_free(z);
  CHECK(has(msg, "rank 1's program is missing"), "the missing rank is named: %s", msg);
}

/* ---------------------------------------------------------------- compiled */

typedef struct Collect {
  Rendezvous *z;
  int n;
} Collect;

static bool collect(const Program *p, void *ctx) {
  Collect *c = ctx;
  if (!c->z) c->z = rendezvous_new(p->world);
  rendezvous_add(c->z, p);
  c->n++;
  return true;
}

static void compiled(const char *model, const char *sets, Layout L) {
  if (L.schedule == SCHED_INTERLEAVED) L.v = 2;
  Collect c = {0};
  char what[160];
  snprintf(what, sizeof what, "%s: %s dp=%d tp=%d pp=%d v=%d mb=%d zero=%d recompute=%d", model,
           sched_names[L.schedule], L.dp, L.tp, L.pp, L.v, L.microbatches, L.zero, L.recompute);
  bool ok = compile_tiny(model, sets, PREC_FP32, &L, collect, &c);
  CHECK(ok && c.n == layout_world(&L), "%s compiles (its programs pass the check)", what);
  CHECK(c.z && rendezvous_check(c.z, stderr), "%s passes the check again", what);
  rendezvous_free(c.z);
}

static void test_schedules(void) {
  static const int dp1_2[] = {1, 2};
  for (int k = 0; k < SCHED_KINDS; k++) {
    compiled("mlp", "batch=24,layers=8", (Layout){.dp = 1, .pp = 2, .v = 1, .microbatches = 4, .schedule = k});
    compiled("mlp", "batch=24,layers=8", (Layout){.dp = 1, .pp = 4, .v = 1, .microbatches = 4, .schedule = k});
    compiled("mlp", "batch=24,layers=8", (Layout){.dp = 1, .pp = 4, .v = 1, .microbatches = 8, .schedule = k});
    compiled("mlp", "batch=24,layers=8",
             (Layout){.dp = 2, .pp = 2, .v = 1, .microbatches = 6, .schedule = k, .zero = 2, .recompute = RC_FULL});
    compiled("gpt", "batch=16,layers=4",
             (Layout){.dp = 1, .pp = 2, .v = 1, .microbatches = 4, .schedule = k, .recompute = RC_SELECTIVE});
    compiled("gpt", "batch=16,layers=4", (Layout){.dp = 1, .tp = 2, .pp = 2, .v = 1, .microbatches = 2, .schedule = k});
    if (k != SCHED_INTERLEAVED) { /* m must be a multiple of p there */
      compiled("mlp", "batch=24,layers=8", (Layout){.dp = 1, .pp = 4, .v = 1, .microbatches = 3, .schedule = k});
      compiled("mlp", "batch=24,layers=8",
               (Layout){.dp = 2, .pp = 2, .v = 1, .microbatches = 3, .schedule = k, .stage_dp = dp1_2});
    }
  }
}

int main(void) {
  test_send_first();
  test_chain();
  test_collectives();
  test_incomplete();
  test_schedules();
  return test_summary();
}
