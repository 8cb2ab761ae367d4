/* prog_resign FILE: replaces a program file's checksum line with the right
 * one for its edited contents, so a test can hand the reader a file that is
 * intact but says something else (another carve version, say). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: prog_resign FILE\n");
    return 2;
  }
  size_t len;
  char *text = read_file(argv[1], &len);
  if (!text) {
    perror(argv[1]);
    return 1;
  }
  char *last = strstr(text, "\nchecksum ");
  size_t body = last ? (size_t)(last - text) + 1 : len;
  FILE *f = fopen(argv[1], "wb");
  if (!f || fwrite(text, 1, body, f) != body ||
      fprintf(f, "checksum %016llx\n", (unsigned long long)hash_words(text, body, 0)) < 0 || fclose(f) != 0) {
    perror(argv[1]);
    return 1;
  }
  free(text);
  return 0;
}
