/* cmd_data.c: `carve data TEXT... -o FILE` makes a token file.
 *
 * Byte level (default): every byte is a token, vocabulary 256. Char level
 * (--level char): only the bytes that occur get ids, in byte order, so the
 * vocabulary is as small as the text allows; FILE.vocab lists the byte of
 * each id. Either way the command prints the unigram entropy of the tokens:
 * the loss of the best model that ignores context, which a trained model
 * should beat. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static bool write_tokens(const char *path, const uint16_t *tok, uint64_t n, uint32_t vocab) {
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  uint32_t version = 1;
  bool ok = f && fwrite("CARVETOK", 1, 8, f) == 8 && fwrite(&version, 4, 1, f) == 1 && fwrite(&vocab, 4, 1, f) == 1 &&
            fwrite(&n, 8, 1, f) == 1 && fwrite(tok, 2, n, f) == n;
  return temp_close(f, tmp, path, ok);
}

int cmd_data(int argc, char **argv) {
  if (wants_help(argc, argv)) {
    printf("usage: carve data TEXTFILE... -o FILE [--level byte|char]\n\n"
           "Concatenates the text files into one token file for 'carve train/run --data FILE'.\n"
           "  --level byte  every byte is a token; vocabulary 256 (default)\n"
           "  --level char  only the bytes that occur get ids; FILE.vocab lists them\n"
           "Prints the token count, the vocabulary and the unigram entropy (nats per token).\n");
    return 0;
  }
  const char *out = NULL;
  bool charlevel = false;
  PtrVec files = {0};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--level")) {
      if (i + 1 >= argc) return usage_error("data", "%s needs a value", argv[i]);
      if (!strcmp(argv[i], "-o"))
        out = argv[++i];
      else if (!strcmp(argv[++i], "char"))
        charlevel = true;
      else if (strcmp(argv[i], "byte"))
        return usage_error("data", "--level is byte or char, not '%s'", argv[i]);
    } else if (argv[i][0] == '-') {
      return usage_error("data", "unknown option '%s'", argv[i]);
    } else {
      ptrvec_push(&files, argv[i]);
    }
  }
  if (!files.n) return usage_error("data", "give at least one text file");
  if (!out) return usage_error("data", "where to? give -o FILE");
  size_t total = 0, cap = 1 << 20;
  unsigned char *text = xmalloc(cap);
  for (int i = 0; i < files.n; i++) {
    size_t len;
    char why[128];
    char *buf = read_file_limit(files.v[i], LIMIT_TOKENS / 2 - total, &len, why, sizeof why);
    if (!buf) {
      fprintf(stderr, "carve: error: cannot read '%s': %s%s\n", (char *)files.v[i], why,
              total ? " (with the files before it)" : "");
      free(text);
      return 1;
    }
    while (total + len > cap) text = xrealloc(text, cap *= 2);
    memcpy(text + total, buf, len);
    total += len;
    free(buf);
  }
  if (total < 2) {
    fprintf(stderr, "carve: error: the text has %zu bytes; a token file needs at least 2\n", total);
    free(text);
    return 1;
  }
  int64_t count[256] = {0};
  for (size_t i = 0; i < total; i++) count[text[i]]++;
  uint16_t id[256];
  uint32_t vocab = 0;
  for (int c = 0; c < 256; c++) id[c] = charlevel ? (count[c] ? (uint16_t)vocab++ : 0) : (uint16_t)c;
  if (!charlevel) vocab = 256;
  uint16_t *tok = xmalloc(sizeof(uint16_t) * total);
  for (size_t i = 0; i < total; i++) tok[i] = id[text[i]];
  double h = 0;
  for (int c = 0; c < 256; c++)
    if (count[c]) h -= (double)count[c] / (double)total * log((double)count[c] / (double)total);
  bool ok = write_tokens(out, tok, total, vocab);
  if (ok && charlevel) {
    const char *vpath = arena_printf("%s.vocab", out), *tmp;
    FILE *f = temp_beside(vpath, &tmp);
    for (int c = 0; f && c < 256; c++)
      if (count[c]) fprintf(f, "%u %d\n", id[c], c);
    ok = temp_close(f, tmp, vpath, true);
  }
  if (!ok)
    fprintf(stderr, "carve: error: cannot write '%s': %s\n", out, strerror(errno));
  else
    printf("wrote %s: %zu tokens from %d file%s, vocabulary %u, unigram entropy %.4f nats/token (%.4f bits)\n", out,
           total, files.n, files.n == 1 ? "" : "s", vocab, h, h / log(2.0));
  free(text);
  free(tok);
  return ok ? 0 : 1;
}
