/* bad_ids.h: one check every backend must pass, shared by the backend
 * tests: a program whose embedding reads ids drawn from [0, 1000) for a
 * table of 8 rows. The backend's synchronize must report the bad id at step
 * instruction 1 (and clear it once reported), and a run must fail its step
 * instead of reading outside the table. */
#ifndef CARVE_TEST_BAD_IDS_H
#define CARVE_TEST_BAD_IDS_H
#include <string.h>

#include "../runtime/backend.h"
#include "harness.h"

/* `open` opens the backend under test (NULL: it is not here), `name` names it */
static void check_bad_ids(Backend *(*open)(void), const char *name) {
  Buffer bufs[3] = {
      {.name = "table",
       .dtype = DT_F32,
       .shape = {2, {8, 4}},
       .kind = BUF_PARAM,
       .offset = 0,
       .bytes = 128,
       .whole = {2, {8, 4}}},
      {.name = "ids", .dtype = DT_I32, .shape = {1, {16}}, .kind = BUF_INPUT, .offset = 128, .bytes = 64},
      {.name = "out", .dtype = DT_F32, .shape = {2, {16, 4}}, .kind = BUF_ACT, .offset = 192, .bytes = 256}};
  Instr init = {.op = OP_INIT, .out = 0, .i = {INIT_NORMAL}, .f = {1}};
  Instr step[2] = {{.op = OP_LOAD, .out = 1, .i = {SRC_TOKENS}, .f = {1000}},
                   {.op = OP_EMBED, .out = 2, .nin = 2, .in = {0, 1}}};
  Program p = {.model = "t",
               .world = 1,
               .bufs = bufs,
               .nbufs = 3,
               .arena_bytes = 448,
               .init = &init,
               .ninit = 1,
               .step = step,
               .nstep = 2};
  CHECK(program_verify(&p, stderr), "the program verifies (ids are data, not program)");
  Backend *b = open();
  if (!b) return;
  CHECK(b->load(b, &p, stderr), "%s: the bad-id program loads", name);
  StepInfo si = {.step = 1, .data_step = 1};
  for (int i = 0; i < 2; i++) b->exec(b, &step[i], i, false, &si);
  StepStatus st;
  b->synchronize(b, &st);
  CHECK(st.error && strstr(st.error, "outside the embedding table") && st.error_instr == 1 && !st.error_init,
        "%s: synchronize reports the bad id at step instruction 1: %s at %d", name, st.error ? st.error : "(none)",
        st.error_instr);
  b->synchronize(b, &st);
  CHECK(st.error == NULL, "%s: the error is cleared once reported", name);
  b->close(b);
  b = open();
  RunOptions ro = {.steps = 1, .quiet = true, .backend = b};
  Runtime *rt = runtime_new(&p, &ro);
  CHECK(rt != NULL, "%s: runtime starts", name);
  double loss;
  fprintf(stderr, "(an error about instruction 1 (embed) is expected here)\n");
  CHECK(rt && runtime_step(rt, &loss) != 0, "%s: the step fails instead of reading outside the table", name);
  runtime_free(rt);
  if (b) b->close(b);
}

#endif
