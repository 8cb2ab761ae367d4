/* test_program.c: programs as files and as runs.
 *   - write, read back, run: the same losses bit for bit as the program in
 *     memory, and the same again on a second run (determinism);
 *   - gradient accumulation: 4 microbatches train the same model as 1;
 *   - damaged files (a flipped byte, a truncation, another format or carve
 *     version, an out-of-range id or an inconsistent shape behind a valid
 *     checksum) are refused with a message, never run. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "harness.h"

static const char *dir;

static Program *compile_model(const char *name, const char *preset, const char *sets, int microbatches) {
  Diag d;
  diag_init(&d, stderr);
  ElabOptions o = {.preset = preset};
  if (sets) parse_sets(sets, &o.sets, &o.nsets, stderr);
  Graph *g = frontend_load(model_resolve(name), &o, &d);
  free(o.sets);
  if (!g || !autodiff(g, microbatches, stderr)) return NULL;
  Train t;
  train_defaults(&t);
  t.microbatches = microbatches;
  return codegen(g, &t, 42);
}

static bool run_steps(const Program *p, int steps, double *losses, float **params_out, const char *param) {
  RunOptions ro = {.steps = steps, .quiet = true};
  Runtime *rt = runtime_new(p, &ro);
  if (!rt) return false;
  for (int s = 0; s < steps; s++)
    if (runtime_step(rt, &losses[s])) return runtime_free(rt), false;
  if (params_out) {
    int64_t n;
    float *w = runtime_buffer(rt, param, &n);
    *params_out = xmalloc(sizeof(float) * (size_t)n);
    memcpy(*params_out, w, sizeof(float) * (size_t)n);
  }
  runtime_free(rt);
  return true;
}

/* Rewrites the file with `edit` applied to its text and a correct checksum. */
static void write_with_checksum(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  fputs(text, f);
  fprintf(f, "checksum %016" PRIx64 "\n", hash_words(text, strlen(text), 0));
  fclose(f);
}

static char *body_of(const char *path) { /* the text before the checksum line */
  size_t len;
  char *t = read_file(path, &len);
  char *c = strstr(t, "checksum ");
  *c = 0;
  return t;
}

static void replace_once(char *text, const char *from, const char *to, char *out, size_t n) {
  char *at = strstr(text, from);
  if (!at) fprintf(stderr, "pattern '%s' not in the program text\n", from);
  CARVE_ASSERT(at != NULL, "pattern present in the program text");
  snprintf(out, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
}

static bool refused(const char *path, const char *expect) {
  char *err = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&err, &len);
  Program *p = program_read(path, m);
  bool ran = false;
  if (p) { /* reading passed: the runtime's checks must refuse it */
    fflush(m);
    RunOptions ro = {.steps = 1, .quiet = true};
    FILE *saved = stderr;
    stderr = m;
    Runtime *rt = runtime_new(p, &ro);
    stderr = saved;
    ran = rt != NULL;
    runtime_free(rt);
  }
  fclose(m);
  bool ok = !ran && strstr(err, expect) != NULL;
  if (!ok) fprintf(stderr, "expected a refusal mentioning '%s', got: %s\n", expect, err);
  free(err);
  return ok;
}

static void test_roundtrip_and_determinism(void) {
  Program *p = compile_model("gpt", "gpt-tiny", "batch=4,seq=16", 1);
  CHECK(p != NULL, "gpt-tiny compiles");
  if (!p) return;
  const char *path = arena_printf("%s/rank0.prog", dir);
  CHECK(program_write(p, path, stderr), "program written");
  Program *q = program_read(path, stderr);
  CHECK(q != NULL, "program read back");
  if (!q) return;
  {
    Diag d;
    diag_init(&d, stderr);
    ElabOptions o = {.preset = "gpt-tiny"};
    parse_sets("batch=4,seq=16", &o.sets, &o.nsets, stderr);
    Graph *g = frontend_load(model_resolve("gpt"), &o, &d);
    free(o.sets);
    Summary sm;
    CHECK(g && autodiff(g, 1, stderr), "gpt-tiny differentiates");
    if (g) summarize(g, &sm);
    CHECK(g && p->flops_per_step == sm.flops_einsum, "the program counts the step's einsum FLOPs (%.6g vs %.6g)",
          p->flops_per_step, g ? sm.flops_einsum : 0);
  }
  CHECK(q->nbufs == p->nbufs && q->nstep == p->nstep && q->ninit == p->ninit && q->arena_bytes == p->arena_bytes,
        "same structure");
  int same = 0;
  for (int i = 0; i < p->nstep; i++) same += memcmp(&p->step[i], &q->step[i], sizeof(Instr)) == 0;
  CHECK(same == p->nstep, "every step instruction survives the round trip (%d of %d)", same, p->nstep);
  double a[5], b[5], c[5];
  CHECK(run_steps(p, 5, a, NULL, NULL) && run_steps(q, 5, b, NULL, NULL) && run_steps(q, 5, c, NULL, NULL), "runs");
  CHECK(memcmp(a, b, sizeof a) == 0 && memcmp(b, c, sizeof b) == 0,
        "bitwise identical losses: in memory, from the file, and again (%.9g %.9g %.9g)", a[4], b[4], c[4]);
}

static void test_microbatches(void) {
  Program *one = compile_model("gpt", "gpt-tiny", "batch=8,seq=16", 1);
  Program *four = compile_model("gpt", "gpt-tiny", "batch=2,seq=16", 4); /* 4 x 2 = the same batch of 8 */
  CHECK(one && four, "both compile");
  if (!one || !four) return;
  double l1[6], l4[6];
  float *w1, *w4;
  CHECK(run_steps(one, 6, l1, &w1, "layers.1.w_fc") && run_steps(four, 6, l4, &w4, "layers.1.w_fc"), "both run");
  double worst = 0;
  for (int s = 0; s < 6; s++) worst = fmax(worst, fabs(l1[s] - l4[s]) / fabs(l1[s]));
  CHECK(worst < 1e-5, "per-step losses agree within 1e-5 relative (worst %.2g)", worst);
  double wp = 0, scale = 0;
  for (int i = 0; i < 128 * 512; i++) {
    wp = fmax(wp, fabs(w1[i] - w4[i]));
    scale = fmax(scale, fabs(w1[i]));
  }
  CHECK(wp / scale < 1e-4, "final parameters agree within 1e-4 relative (worst %.2g)", wp / scale);
  printf("microbatches 1 vs 4: loss relative difference %.2g, parameter relative difference %.2g\n", worst, wp / scale);
  free(w1);
  free(w4);
}

static void test_damaged_files(void) {
  const char *path = arena_printf("%s/rank0.prog", dir), *bad = arena_printf("%s/bad.prog", dir);
  size_t len;
  char *orig = read_file(path, &len);
  CHECK(orig != NULL, "program present");
  if (!orig) return;
  FILE *f = fopen(bad, "wb");
  orig[len / 2] ^= 0x01;
  fwrite(orig, 1, len, f);
  fclose(f);
  orig[len / 2] ^= 0x01;
  CHECK(refused(bad, "checksum mismatch"), "a flipped byte is caught");
  f = fopen(bad, "wb");
  fwrite(orig, 1, len / 3, f);
  fclose(f);
  CHECK(refused(bad, "truncated"), "a truncated file is caught");
  char *body = body_of(path);
  size_t n = strlen(body) + 64;
  char *edited = xmalloc(n);
  char format[32];
  snprintf(format, sizeof format, "carve-program %d", CARVE_PROGRAM_FORMAT);
  /* each edit, checksum made right again, refused for what it says */
  const struct {
    const char *from, *to, *expect, *what;
  } edits[] = {
      {format, "carve-program 99", "program format 99", "another program format is refused"},
      {"carve " CARVE_VERSION, "carve 0.0.1", "written by carve 0.0.1", "another carve version is refused"},
      {"\ninit 2 :", "\ninit 999999 :", "bad output buffer id", "an out-of-range buffer id is refused"},
      {"spec=abc,cde->abde", "spec=ab,cde->abde", "einsum labels do not match",
       "an einsum inconsistent with its buffers is refused"},
      {"buf 0 input i32 [4,16]", "buf 0 input i32 [4,17]", "embed",
       "a buffer shape that disagrees with its users is refused"},
      {"arena ", "arena 99999999", "far larger than its buffers need",
       "an arena of terabytes in a small file is refused"},
      {"buffers ", "buffers 9999999", "header value out of range",
       "more buffers than the file has lines is refused, not allocated"},
      {"rank 0 world 1", "rank 0 world 1000000000", "rank <r> world <n>", "a world of a billion ranks is refused"},
      {"\nplan ", "\nplan_id ", "expected 'plan <id>'", "a program without its plan id is refused"},
      {" wte of [256,128]", " wte", "names its whole tensor", "a parameter without its whole shape is refused"},
      {" wte of [256,128]", " wte of [256,64]", "does not match its part of the whole",
       "a parameter bigger than its whole tensor is refused"},
  };
  for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
    replace_once(body, edits[k].from, edits[k].to, edited, n);
    write_with_checksum(bad, edited);
    CHECK(refused(bad, edits[k].expect), "%s", edits[k].what);
  }
  replace_once(body, "arena ", "arena 1", edited, n); /* arena grows: still valid, must run */
  write_with_checksum(bad, edited);
  CHECK(program_read(bad, stderr) != NULL, "a consistent edit is accepted");
  free(edited);
  free(body);
  free(orig);
}

int main(int argc, char **argv) {
  dir = argc > 1 ? argv[1] : ".";
  test_roundtrip_and_determinism();
  test_microbatches();
  test_damaged_files();
  arena_reset();
  return test_summary();
}
