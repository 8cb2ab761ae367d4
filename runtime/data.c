/* data.c: token files, and the data an input buffer gets each step.
 *
 * A token file is "CARVETOK" (8 bytes), u32 version 1, u32 vocab, u64 count,
 * then count little-endian u16 tokens; `carve data` writes it. Batches are
 * windows of seq+1 tokens at positions drawn from the counter RNG by (seed,
 * step, global row), so a row's data does not depend on how the batch is
 * split into microbatches or across ranks. */
#include "carve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

TokenData *tokens_read(const char *path, FILE *err) {
  size_t len;
  char *buf = read_file(path, &len);
  if (!buf) {
    fprintf(err, "carve: error: cannot read token file '%s': %s\n", path, strerror(errno));
    return NULL;
  }
  uint32_t version, vocab;
  uint64_t count;
  const char *why = NULL;
  if (len < 24 || memcmp(buf, "CARVETOK", 8) != 0) {
    why = "not a carve token file (make one with 'carve data TEXTFILE -o FILE')";
  } else {
    memcpy(&version, buf + 8, 4);
    memcpy(&vocab, buf + 12, 4);
    memcpy(&count, buf + 16, 8);
    if (version != 1)
      why = "unsupported token file version";
    else if (vocab < 1 || vocab > 65536)
      why = "vocabulary size out of range";
    else if (count < 2 || count > (len - 24) / 2 || len != 24 + 2 * count)
      why = "token count does not match the file size";
  }
  if (why) {
    fprintf(err, "carve: error: %s: %s\n", path, why);
    free(buf);
    return NULL;
  }
  TokenData *td = xcalloc(1, sizeof(TokenData));
  td->path = path;
  td->vocab = vocab;
  td->n = (int64_t)count;
  td->tok = xmalloc(sizeof(uint16_t) * count);
  memcpy(td->tok, buf + 24, sizeof(uint16_t) * count);
  free(buf);
  for (int64_t i = 0; i < td->n; i++)
    if (td->tok[i] >= vocab) {
      fprintf(err, "carve: error: %s: token %lld is %u, outside the vocabulary of %u\n", path, (long long)i, td->tok[i],
              vocab);
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
