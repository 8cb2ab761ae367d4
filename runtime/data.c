/* data.c: token files, and the data an input buffer gets each step.
 *
 * A token file is "CARVETOK" (8 bytes), u32 version 1, u32 vocab, u64 count,
 * then count little-endian u16 tokens; `carve data` writes it. A token file
 * is read only if it is a regular file of at most LIMIT_TOKENS bytes whose
 * size is exactly what its header says. Batches are
 * windows of seq+1 tokens at positions drawn from the counter RNG by (seed,
 * step, global row), so a row's data does not depend on how the batch is
 * split into microbatches or across ranks. */
#include "carve.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What is wrong with a header, given the file's size; NULL if nothing. The
 * count must match the size exactly, so what is allocated for the tokens is
 * never more than the file holds. */
static const char *header_problem(const unsigned char *h, size_t size, uint32_t *vocab, uint64_t *count) {
  uint32_t version;
  if (size < 24 || memcmp(h, "CARVETOK", 8) != 0)
    return "not a carve token file (make one with 'carve data TEXTFILE -o FILE')";
  memcpy(&version, h + 8, 4);
  memcpy(vocab, h + 12, 4);
  memcpy(count, h + 16, 8);
  if (version != 1) return "unsupported token file version";
  if (*vocab < 1 || *vocab > 65536) return "vocabulary size out of range";
  if (*count < 2 || *count > (size - 24) / 2 || size != 24 + 2 * *count)
    return "token count does not match the file size";
  return NULL;
}

static const char *tokens_body(int fd, TokenData *td, char *why, size_t n) {
  if (!read_exact(fd, td->tok, sizeof(uint16_t) * (size_t)td->n))
    return "the file ended early (did it change while it was read?)";
  for (int64_t i = 0; i < td->n; i++)
    if (td->tok[i] >= td->vocab) {
      snprintf(why, n, "token %lld is %u, outside the vocabulary of %lld", (long long)i, td->tok[i],
               (long long)td->vocab);
      return why;
    }
  return NULL;
}

TokenData *tokens_read(const char *path, FILE *err) {
  char why[128];
  size_t size;
  int fd = open_input(path, LIMIT_TOKENS, &size, why, sizeof why);
  if (fd < 0) {
    fprintf(err, "carve: error: cannot read token file '%s': %s\n", path, why);
    return NULL;
  }
  unsigned char head[24] = {0};
  uint32_t vocab = 0;
  uint64_t count = 0;
  const char *bad =
      size >= 24 && !read_exact(fd, head, 24) ? "the file ended early" : header_problem(head, size, &vocab, &count);
  TokenData *td = NULL;
  if (!bad) {
    td = xcalloc(1, sizeof(TokenData));
    *td = (TokenData){.path = path, .vocab = vocab, .n = (int64_t)count, .tok = xmalloc(sizeof(uint16_t) * count)};
    bad = tokens_body(fd, td, why, sizeof why);
  }
  close(fd);
  if (bad) {
    fprintf(err, "carve: error: %s: %s\n", path, bad);
    tokens_free(td);
    return NULL;
  }
  return td;
}

void tokens_free(TokenData *td) {
  if (!td) return;
  free(td->tok);
  free(td);
}
