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
  long long n, offset, parts, part, len, inner;
  float *v;
} Piece;

/* The index in the whole tensor of element e of a piece (see carve run
   --save-params). */
static long long whole_index(const Piece *p, long long e) {
  long long q = p->offset + e;
  if (p->parts <= 1) return q;
  long long o = q / (p->len * p->inner), j = q / p->inner % p->len, r = q % p->inner;
  return (o * p->parts * p->len + p->part * p->len + j) * p->inner + r;
}

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
    while (fscanf(f, "%511s %lld %lld %lld %lld %lld %lld", p.name, &p.n, &p.offset, &p.parts, &p.part, &p.len,
                  &p.inner) == 7) {
      if (fgetc(f) != '\n' || p.n < 0 || p.offset < 0 || (p.parts > 1 && (p.len < 1 || p.inner < 1))) break;
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
      for (long long k = 0; k < P->n; k++) {
        long long w = whole_index(P, k);
        if (w >= R->n) continue; /* a ZeRO-3 shard's padding */
        double d = (double)P->v[k] - R->v[w];
        if (!covered[w]) diff2 += d * d;
        covered[w] = 1;
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
