/* test_fuzz.c: mutated models never crash or hang the frontend, and every
 * rejection says why. Each iteration takes a shipped model, applies a few
 * random edits (flip, delete or insert bytes, duplicate or drop a line, splice
 * in a token that often matters: brackets, braces, operators, keywords, huge
 * numbers), then parses, elaborates and, if that succeeds, differentiates.
 * The sanitizer build turns any out-of-bounds access into a failure.
 * usage: test_fuzz MODELS_DIR [iterations] */
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "harness.h"

static const char *const splices[] = {"(",
                                      ")",
                                      "[",
                                      "]",
                                      "{",
                                      "}",
                                      ",",
                                      "=",
                                      "->",
                                      "//",
                                      "~",
                                      "#",
                                      "\"",
                                      "\n",
                                      "repeat 99999999 {",
                                      "if 0 {",
                                      "} else {",
                                      "dim ",
                                      "param ",
                                      "input ",
                                      "einsum(\"a b, b c -> a c\", ",
                                      "9999999999999999",
                                      "0",
                                      "-1",
                                      "1e309",
                                      "loss",
                                      "x",
                                      "moe_gate(",
                                      "reshape(",
                                      "softmax(",
                                      " causal",
                                      "preset p: "};

static char *mutate(const char *text, size_t len, uint64_t seed, size_t *outlen) {
  size_t cap = len * 2 + 4096;
  char *buf = xmalloc(cap);
  memcpy(buf, text, len);
  size_t n = len;
  int edits = 1 + (int)(rng_u64(seed, 0) % 4);
  for (int e = 0; e < edits; e++) {
    uint64_t r = rng_u64(seed, (uint64_t)e + 1);
    size_t at = n ? (size_t)(r >> 8) % n : 0;
    switch (r % 6) {
    case 0:
      if (n) buf[at] = (char)(rng_u64(seed, 100 + (uint64_t)e) & 0xff);
      break;  /* flip */
    case 1: { /* delete a span */
      size_t k = 1 + (r >> 40) % 16;
      if (at + k > n) k = n - at;
      memmove(buf + at, buf + at + k, n - at - k);
      n -= k;
      break;
    }
    case 2:
    case 3: { /* splice in a token */
      const char *s = splices[(r >> 32) % (sizeof splices / sizeof splices[0])];
      size_t k = strlen(s);
      if (n + k >= cap) break;
      memmove(buf + at + k, buf + at, n - at);
      memcpy(buf + at, s, k);
      n += k;
      break;
    }
    case 4: { /* duplicate the line at `at` */
      size_t a = at, b = at;
      while (a > 0 && buf[a - 1] != '\n') a--;
      while (b < n && buf[b] != '\n') b++;
      size_t k = b - a + (b < n);
      if (n + k >= cap) break;
      memmove(buf + b + (b < n), buf + a, n - a);
      n += k;
      break;
    }
    default: { /* drop the line at `at` */
      size_t a = at, b = at;
      while (a > 0 && buf[a - 1] != '\n') a--;
      while (b < n && buf[b] != '\n') b++;
      if (b < n) b++;
      memmove(buf + a, buf + b, n - b);
      n -= b - a;
    }
    }
  }
  *outlen = n;
  return buf;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "models";
  int iters = argc > 2 ? atoi(argv[2]) : 2000;
  static const char *const models[] = {"gpt", "bert", "llama", "moe", "mlp"};
  FILE *devnull = fopen("/dev/null", "w");
  int accepted = 0, rejected = 0, silent = 0;
  for (int it = 0; it < iters; it++) {
    const char *m = models[it % 5];
    size_t len, n;
    char *text = read_file(arena_printf("%s/%s.graph", dir, m), &len);
    if (!text) {
      CHECK(text != NULL, "model %s readable", m);
      break;
    }
    char *mut = mutate(text, len, (uint64_t)it * 7919 + 1, &n);
    Diag d;
    diag_init(&d, devnull);
    /* small sizes keep elaboration cheap; unknown dims are fine (ignored below) */
    Graph *g = frontend_load_text(m, mut, n, NULL, &d);
    if (g) {
      accepted++;
      autodiff(g, 1, devnull);
    } else {
      rejected++;
      if (d.errors == 0) {
        silent++;
        fprintf(stderr, "iteration %d (%s): rejected without an error message\n", it, m);
      }
    }
    free(text);
    free(mut);
    arena_reset();
  }
  fclose(devnull);
  CHECK(silent == 0, "%d inputs were rejected without a message", silent);
  CHECK(accepted > 0 && rejected > 0, "the mutations produce both valid and invalid models (%d / %d)", accepted,
        rejected);
  printf("%d mutated models: %d accepted, %d rejected with a message\n", iters, accepted, rejected);
  return test_summary();
}
