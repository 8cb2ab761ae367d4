/* param_compare REF NREF RUN NRUN RTOL [SKIP]: compares the parameters a run on
 * NRUN ranks saved (RUN.rank0 .. RUN.rank{NRUN-1}, from carve run
 * --save-params) against a reference run's (REF.rank*). Every piece of the
 * run (a whole tensor, or a ZeRO-3 shard at its offset) is set against the
 * reference's elements; per tensor, |run - ref| / |ref| (2-norms) must be at
 * most RTOL, and the pieces must cover every element of every tensor. (Not
 * element by element: AdamW turns an element's near-zero gradient into a
 * full-size step whose sign rounding decides, so single elements of two
 * correct runs can differ by far more than the tensors do.)
 * Tensors whose name ends with SKIP are left out (see test_ranks.sh for
 * why). Prints the worst tensor; exits 1 on any mismatch or gap. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Piece {
  char name[512];
  long long n, offset;
  float *v;
} Piece;

static Piece *load(const char *prefix, int ranks, int *count) {
  Piece *ps = NULL;
  int np = 0, cap = 0;
  for (int r = 0; r < ranks; r++) {
    char path[1024];
    snprintf(path, sizeof path, "%s.rank%d", prefix, r);
    FILE *f = fopen(path, "rb");
    if (!f) {
      fprintf(stderr, "param_compare: cannot open %s\n", path);
      exit(1);
    }
    Piece p;
    while (fscanf(f, "%511s %lld %lld", p.name, &p.n, &p.offset) == 3) {
      if (fgetc(f) != '\n' || p.n < 0 || p.offset < 0) break;
      p.v = malloc(sizeof(float) * (size_t)(p.n + 1));
      if (fread(p.v, sizeof(float), (size_t)p.n, f) != (size_t)p.n) {
        fprintf(stderr, "param_compare: %s: truncated at %s\n", path, p.name);
        exit(1);
      }
      if (np == cap) ps = realloc(ps, sizeof(Piece) * (size_t)(cap = cap ? 2 * cap : 64));
      ps[np++] = p;
    }
    fclose(f);
  }
  *count = np;
  return ps;
}

int main(int argc, char **argv) {
  if (argc != 6 && argc != 7) {
    fprintf(stderr, "usage: param_compare REF NREF RUN NRUN RTOL [SKIP]\n");
    return 2;
  }
  int nref, nrun;
  Piece *ref = load(argv[1], atoi(argv[2]), &nref);
  Piece *run = load(argv[3], atoi(argv[4]), &nrun);
  double rtol = atof(argv[5]), worst = 0;
  const char *worst_name = "";
  int bad = 0;
  for (int i = 0; i < nref; i++) {
    Piece *R = &ref[i];
    size_t len = strlen(R->name), sl = argc == 7 ? strlen(argv[6]) : 0;
    if (sl && len >= sl && strcmp(R->name + len - sl, argv[6]) == 0) continue;
    double ref2 = 0, diff2 = 0;
    for (long long k = 0; k < R->n; k++) ref2 += (double)R->v[k] * R->v[k];
    char *covered = calloc((size_t)R->n + 1, 1);
    for (int j = 0; j < nrun; j++) {
      Piece *P = &run[j];
      if (strcmp(P->name, R->name) != 0) continue;
      for (long long k = 0; k < P->n && P->offset + k < R->n; k++) {
        double d = (double)P->v[k] - R->v[P->offset + k];
        if (!covered[P->offset + k]) diff2 += d * d;
        covered[P->offset + k] = 1;
      }
    }
    double err = sqrt(diff2) / fmax(sqrt(ref2), 1e-30);
    if (err > worst || err != err) worst = err, worst_name = R->name;
    if (!(err <= rtol)) bad++;
    for (long long k = 0; k < R->n; k++)
      if (!covered[k]) {
        fprintf(stderr, "param_compare: %s: element %lld is on no rank\n", R->name, k);
        bad++;
        break;
      }
    free(covered);
  }
  if (nref == 0) {
    fprintf(stderr, "param_compare: the reference has no parameters\n");
    bad++;
  }
  printf("%d tensors; worst relative difference %.2e (%s)\n", nref, worst, worst_name);
  return bad ? 1 : 0;
}
