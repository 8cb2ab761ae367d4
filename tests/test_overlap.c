/* test_overlap.c: which transfer each instruction waits for when
 * communication runs on its own thread (runtime/overlap.c, overlap_needs).
 *   - a hand-made list: a reader of a transfer's output, a writer of its
 *     input, a writer of a buffer that shares arena bytes with a pending
 *     transfer's operand, and instructions that touch none of them;
 *   - compiled rank programs over layouts with every kind of transfer (dp,
 *     tp, ZeRO 1 and 3, pipelines): checked against a conflict test written
 *     here afresh, every instruction that touches a transfer's bytes runs
 *     after it (safe), and every wait is for a transfer the instruction
 *     touches (no needless waits). */
#include <stdlib.h>
#include <string.h>

#include "../runtime/runtime.h"
#include "compile_tiny.h"
#include "harness.h"
#include "planner.h"

/* ---------------------------------------------------------------- by hand */

static void test_hand(void) {
  Buffer bufs[] = {
      {.name = "a", .offset = 0, .bytes = 64},   {.name = "b", .offset = 64, .bytes = 64},
      {.name = "c", .offset = 128, .bytes = 64}, {.name = "d", .offset = 32, .bytes = 16}, /* inside a */
      {.name = "e", .offset = 192, .bytes = 64},
  };
  Instr L[] = {
      {.op = OP_FILL, .out = 0},                            /* 0 */
      {.op = OP_ALL_REDUCE, .out = 0, .nin = 1, .in = {0}}, /* 1: transfer 0 on a */
      {.op = OP_ADD, .out = 2, .nin = 2, .in = {1, 1}},     /* 2: b, c: free */
      {.op = OP_SEND, .out = -1, .nin = 1, .in = {2}},      /* 3: transfer 1 reads c */
      {.op = OP_SCALE, .out = 4, .nin = 1, .in = {1}},      /* 4: free */
      {.op = OP_FILL, .out = 3},                            /* 5: d shares a's bytes: waits for 0 */
      {.op = OP_SCALE, .out = 1, .nin = 1, .in = {4}},      /* 6: free (transfer 1 only reads c) */
      {.op = OP_ALL_GATHER, .out = 4, .nin = 1, .in = {1}}, /* 7: transfer 2: reads b, writes e */
      {.op = OP_SCALE, .out = 2, .nin = 1, .in = {0}},      /* 8: writes c (read by 1), reads a (done) */
      {.op = OP_ADD, .out = 0, .nin = 2, .in = {0, 0}},     /* 9: free: 0 is done */
      {.op = OP_SCALE, .out = 1, .nin = 1, .in = {3}},      /* 10: writes b (read by 2) */
  };
  int n = (int)(sizeof L / sizeof L[0]);
  Program p = {.model = "hand", .world = 2, .bufs = bufs, .nbufs = 5, .step = L, .nstep = n};
  int need[16], ord[16];
  overlap_needs(&p, L, n, need, ord);
  int want_need[] = {-1, -1, -1, -1, -1, 0, -1, -1, 1, -1, 2};
  int want_ord[] = {-1, 0, -1, 1, -1, -1, -1, 2, -1, -1, -1};
  for (int i = 0; i < n; i++) {
    CHECK(need[i] == want_need[i], "instruction %d waits for transfer %d, expected %d", i, need[i], want_need[i]);
    CHECK(ord[i] == want_ord[i], "instruction %d is transfer %d, expected %d", i, ord[i], want_ord[i]);
  }
}

/* ---------------------------------------------------------------- compiled */

static bool overlaps(const Program *p, int x, int y) {
  const Buffer *a = &p->bufs[x], *b = &p->bufs[y];
  return a->bytes > 0 && b->bytes > 0 && a->offset < b->offset + b->bytes && b->offset < a->offset + a->bytes;
}

/* i writes what c touches, or reads what c writes */
static bool touches(const Program *p, const Instr *c, const Instr *i) {
  if (i->out >= 0) {
    if (c->out >= 0 && overlaps(p, i->out, c->out)) return true;
    for (int k = 0; k < c->nin; k++)
      if (overlaps(p, i->out, c->in[k])) return true;
  }
  for (int k = 0; k < i->nin; k++)
    if (c->out >= 0 && overlaps(p, i->in[k], c->out)) return true;
  return false;
}

static int programs, waits, transfers;

static bool check_program(const Program *p, void *ctx) {
  (void)ctx;
  int n = p->nstep, *need = xmalloc(sizeof(int) * (size_t)(n + 1)), *ord = xmalloc(sizeof(int) * (size_t)(n + 1));
  int *at = xmalloc(sizeof(int) * (size_t)(n + 1));
  overlap_needs(p, p->step, n, need, ord);
  int bad_safe = 0, bad_needless = 0, done = -1; /* transfers 0..done are complete before instruction i */
  for (int i = 0; i < n; i++) {
    const Instr *in = &p->step[i];
    bool comm = op_info[in->op].flags & OPF_COMM;
    CHECK((ord[i] >= 0) == comm, "rank %d instruction %d: a transfer exactly when it communicates", p->rank, i);
    if (comm) {
      at[ord[i]] = i, transfers++;
      continue;
    }
    if (need[i] >= 0) {
      waits++;
      if (need[i] <= done || !touches(p, &p->step[at[need[i]]], in)) bad_needless++;
      done = need[i] > done ? need[i] : done;
    }
    for (int j = 0; j < i; j++) /* every earlier transfer it touches is complete */
      if (ord[j] > done && touches(p, &p->step[j], in)) bad_safe++;
  }
  CHECK(bad_safe == 0, "rank %d: %d instructions would run before a transfer they touch", p->rank, bad_safe);
  CHECK(bad_needless == 0, "rank %d: %d waits are for transfers the instruction does not touch", p->rank, bad_needless);
  programs++;
  free(need), free(ord), free(at);
  return true;
}

static void compiled(const char *model, const char *sets, Layout L) {
  bool ok = compile_tiny(model, sets, PREC_BF16, &L, check_program, NULL);
  CHECK(ok, "%s dp=%d tp=%d pp=%d zero=%d compiles", model, L.dp, L.tp, L.pp, L.zero);
}

int main(void) {
  test_hand();
  compiled("gpt", "batch=8", (Layout){.dp = 2, .tp = 1, .pp = 1, .v = 1, .microbatches = 2});
  compiled("gpt", "batch=8", (Layout){.dp = 2, .tp = 2, .pp = 1, .v = 1, .microbatches = 1, .zero = 1});
  compiled("gpt", "batch=8", (Layout){.dp = 2, .tp = 1, .pp = 1, .v = 1, .microbatches = 2, .zero = 3});
  compiled("gpt", "batch=8,layers=4", (Layout){.dp = 1, .tp = 2, .pp = 2, .v = 1, .microbatches = 4});
  compiled("moe", "batch=8", (Layout){.dp = 2, .tp = 2, .pp = 1, .v = 1, .microbatches = 1});
  compiled("mlp", "batch=24,layers=8",
           (Layout){.dp = 2, .pp = 2, .v = 1, .microbatches = 6, .zero = 2, .recompute = RC_FULL});
  CHECK(programs >= 20 && transfers > 100 && waits > 20, "%d programs, %d transfers, %d waits checked", programs,
        transfers, waits);
  printf("%d programs, %d transfers, %d waits\n", programs, transfers, waits);
  return test_summary();
}
