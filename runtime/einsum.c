/* einsum.c: two-operand einsum as (batched) sgemm.
 *
 * Every label is one of
 *   batch  in A, B and C      (a loop around sgemm)
 *   M      in A and C         (rows of C)
 *   N      in B and C         (columns of C)
 *   K      in A and B only    (contracted)
 * Each operand is viewed in place as a matrix when its M/K/N labels merge
 * into one index of constant stride (they are adjacent in memory, in one
 * order) and one of its two matrix strides is 1; sgemm's transpose flags
 * and leading dimensions then absorb the layout, so the common cases
 * (x @ W, its two backward products, attention scores) copy nothing. An
 * operand that cannot be viewed so is first copied into [batch, rows, cols]
 * order. A one-operand einsum is a transpose: a strided copy. */
#include "runtime.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

typedef struct Op {
  int rank;
  char lab[MAXRANK];
  int64_t size[MAXRANK], stride[MAXRANK];
} Op;

static void op_init(Op *o, const char *labels, const Shape *s) {
  o->rank = s->rank;
  int64_t st = 1;
  for (int i = s->rank - 1; i >= 0; i--) {
    o->lab[i] = labels[i];
    o->size[i] = s->d[i];
    o->stride[i] = st;
    st *= s->d[i];
  }
}

static int find(const Op *o, char c) {
  for (int i = 0; i < o->rank; i++)
    if (o->lab[i] == c) return i;
  return -1;
}

/* Splits "ab,bc->ac" into its parts; false if malformed. */
static bool split_spec(const char *spec, int nin, char parts[3][MAXRANK + 1]) {
  const char *arrow = strstr(spec, "->");
  if (!arrow) return false;
  const char *comma = nin == 2 ? memchr(spec, ',', (size_t)(arrow - spec)) : NULL;
  if (nin == 2 && !comma) return false;
  const char *ends[3] = {nin == 2 ? comma : arrow, arrow, spec + strlen(spec)};
  const char *starts[3] = {spec, nin == 2 ? comma + 1 : arrow, arrow + 2};
  for (int k = 0; k < 3; k++) {
    size_t len = (size_t)(ends[k] - starts[k]);
    if (len > MAXRANK) return false;
    memcpy(parts[k], starts[k], len);
    parts[k][len] = 0;
  }
  if (nin == 1) {
    strcpy(parts[1], parts[2]);
    parts[2][0] = 0;
  }
  return true;
}

const char *einsum_check(const char *spec, int nin, const Shape *const *in, const Shape *out) {
  char parts[3][MAXRANK + 1];
  if (nin < 1 || nin > 2 || !split_spec(spec, nin, parts)) return "malformed einsum spec";
  const char *outl = parts[nin == 2 ? 2 : 1];
  const Shape *shapes[3] = {in[0], nin == 2 ? in[1] : out, out};
  for (int k = 0; k <= nin; k++) {
    const char *l = k < nin ? parts[k] : outl;
    const Shape *s = k < nin ? shapes[k] : out;
    if ((int)strlen(l) != s->rank) return "einsum labels do not match the rank of a buffer";
    for (int i = 0; i < s->rank; i++) {
      if (!((l[i] >= 'a' && l[i] <= 'z') || (l[i] >= 'A' && l[i] <= 'Z'))) return "einsum labels must be letters";
      if (strchr(l + i + 1, l[i])) return "einsum label repeated within one operand";
      /* every occurrence of a label must have the same size */
      for (int k2 = 0; k2 <= nin; k2++) {
        const char *l2 = k2 < nin ? parts[k2] : outl;
        const Shape *s2 = k2 < nin ? shapes[k2] : out;
        const char *p = strchr(l2, l[i]);
        if (p && (int)strlen(l2) == s2->rank && s2->d[p - l2] != s->d[i]) return "einsum label sizes disagree";
      }
      bool elsewhere = false;
      for (int k2 = 0; k2 <= nin; k2++)
        if (k2 != k && strchr(k2 < nin ? parts[k2] : outl, l[i])) elsewhere = true;
      if (!elsewhere) return "einsum label appears in only one place";
    }
  }
  if (nin == 1 && strlen(parts[0]) != strlen(outl)) return "one-operand einsum must be a transpose";
  return NULL;
}

/* dst (contiguous, dims in the order of `order`) <- src viewed by o. */
static void permute_copy(float *dst, const float *src, const Op *o, const int *order, int n) {
  int64_t size[MAXRANK] = {0}, stride[MAXRANK] = {0}, idx[MAXRANK] = {0};
  int64_t total = 1;
  for (int i = 0; i < n; i++) {
    size[i] = o->size[order[i]];
    stride[i] = o->stride[order[i]];
    total *= size[i];
  }
  if (n == 0) {
    dst[0] = src[0];
    return;
  }
  int64_t inner = size[n - 1], is = stride[n - 1];
  for (int64_t done = 0; done < total; done += inner) {
    int64_t off = 0;
    for (int i = 0; i < n - 1; i++) off += idx[i] * stride[i];
    const float *s = src + off;
    for (int64_t j = 0; j < inner; j++) dst[done + j] = s[j * is];
    for (int i = n - 2; i >= 0; i--) {
      if (++idx[i] < size[i]) break;
      idx[i] = 0;
    }
  }
}

/* Labels of each role in the order used for grouping. */
typedef struct Roles {
  char batch[MAXRANK], m[MAXRANK], n[MAXRANK], k[MAXRANK];
  int nb, nm, nn, nk;
} Roles;

/* Sorts the labels of a group by decreasing stride in operand o. */
static void sort_by_stride(char *labs, int n, const Op *o) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && o->stride[find(o, labs[j])] > o->stride[find(o, labs[j - 1])]; j--) {
      char t = labs[j];
      labs[j] = labs[j - 1];
      labs[j - 1] = t;
    }
}

/* Can labs (in this order) be one index of o? Gives extent and stride. */
static bool merge(const Op *o, const char *labs, int n, int64_t *extent, int64_t *stride) {
  *extent = 1;
  *stride = 1;
  for (int i = 0; i < n; i++) {
    int p = find(o, labs[i]);
    if (i > 0 && o->stride[find(o, labs[i - 1])] != o->stride[p] * o->size[p]) return false;
    *extent *= o->size[p];
    *stride = o->stride[p];
  }
  return true;
}

/* A rows x cols matrix with the given strides as a BLAS operand. */
static bool as_matrix(int64_t rows, int64_t rs, int64_t cols, int64_t cs, bool *trans, int64_t *ld) {
  if ((cs == 1 || cols == 1) && (rows == 1 || rs >= cols)) {
    *trans = false;
    *ld = rows == 1 ? (cols > 1 ? cols : 1) : rs;
    return true;
  }
  if ((rs == 1 || rows == 1) && (cols == 1 || cs >= rows)) {
    *trans = true;
    *ld = cols == 1 ? (rows > 1 ? rows : 1) : cs;
    return true;
  }
  return false;
}

static float *scratch_get(EinsumScratch *s, size_t floats, size_t *used) {
  CARVE_ASSERT(*used + floats <= s->cap, "einsum scratch too small");
  float *p = s->p + *used;
  *used += floats;
  return p;
}

static void scratch_reserve(EinsumScratch *s, size_t floats) {
  if (floats <= s->cap) return;
  free(s->p);
  s->p = xmalloc(floats * sizeof(float));
  s->cap = floats;
}

/* Relabels o as a contiguous operand in the order given. */
static void make_contiguous(Op *o, const char *order, int n) {
  Op c = {.rank = n};
  int64_t st = 1;
  for (int i = n - 1; i >= 0; i--) {
    c.lab[i] = order[i];
    c.size[i] = o->size[find(o, order[i])];
    c.stride[i] = st;
    st *= c.size[i];
  }
  *o = c;
}

static int64_t numel_of(const Op *o) {
  int64_t n = 1;
  for (int i = 0; i < o->rank; i++) n *= o->size[i];
  return n;
}

/* Matrix view of operand o for groups (r, c); false if it needs a copy. */
static bool view(const Op *o, const char *r, int nr, const char *c, int nc, int64_t *R, int64_t *C, bool *t,
                 int64_t *ld) {
  int64_t rs, cs;
  return merge(o, r, nr, R, &rs) && merge(o, c, nc, C, &cs) && as_matrix(*R, rs, *C, cs, t, ld);
}

static void concat(char *dst, const char *a, int na, const char *b, int nb, const char *c, int nc) {
  memcpy(dst, a, (size_t)na);
  memcpy(dst + na, b, (size_t)nb);
  memcpy(dst + na + nb, c, (size_t)nc);
}

/* Copies operand o into scratch in the order (batch, rows, cols) and makes
 * o describe that copy. */
static const float *canonical(Op *o, const float *p, const Roles *r, const char *rows, int nr, const char *cols, int nc,
                              EinsumScratch *s, size_t *used) {
  float *t = scratch_get(s, (size_t)numel_of(o), used);
  char order[MAXRANK];
  int idx[MAXRANK], n = r->nb + nr + nc;
  concat(order, r->batch, r->nb, rows, nr, cols, nc);
  for (int i = 0; i < n; i++) idx[i] = find(o, order[i]);
  permute_copy(t, p, o, idx, n);
  make_contiguous(o, order, n);
  return t;
}

static void transpose_run(const char *in, const char *out, const float *x, const Shape *xs, float *y) {
  Op o;
  op_init(&o, in, xs);
  int order[MAXRANK];
  for (int i = 0; i < xs->rank; i++) order[i] = find(&o, out[i]);
  permute_copy(y, x, &o, order, xs->rank);
}

void einsum_run(const char *spec, int nin, const float *const *in, const Shape *const *ins, float *out,
                const Shape *outs, EinsumScratch *scratch) {
  char parts[3][MAXRANK + 1];
  CARVE_ASSERT(split_spec(spec, nin, parts), "einsum spec checked before running");
  if (nin == 1) {
    transpose_run(parts[0], parts[1], in[0], ins[0], out);
    return;
  }
  Op A, B, C;
  op_init(&A, parts[0], ins[0]);
  op_init(&B, parts[1], ins[1]);
  op_init(&C, parts[2], outs);
  Roles r = {0};
  for (int i = 0; i < A.rank; i++) {
    if (A.size[i] == 1) continue; /* size-1 labels do not affect layout */
    bool inb = find(&B, A.lab[i]) >= 0, inc = find(&C, A.lab[i]) >= 0;
    if (inb && inc)
      r.batch[r.nb++] = A.lab[i];
    else if (inc)
      r.m[r.nm++] = A.lab[i];
    else
      r.k[r.nk++] = A.lab[i];
  }
  for (int i = 0; i < B.rank; i++)
    if (B.size[i] > 1 && find(&A, B.lab[i]) < 0) r.n[r.nn++] = B.lab[i];
  sort_by_stride(r.m, r.nm, &A);
  sort_by_stride(r.k, r.nk, &A);
  sort_by_stride(r.n, r.nn, &B);
  sort_by_stride(r.batch, r.nb, &C);

  /* Try in-place views; otherwise copy into canonical order. */
  size_t need = 0;
  int64_t M, K, N, K2, M2, N2, lda, ldb, ldc;
  bool ta, tb, tc;
  bool va = view(&A, r.m, r.nm, r.k, r.nk, &M, &K, &ta, &lda);
  bool vb = view(&B, r.k, r.nk, r.n, r.nn, &K2, &N, &tb, &ldb);
  bool vc = view(&C, r.m, r.nm, r.n, r.nn, &M2, &N2, &tc, &ldc);
  if (!va) need += (size_t)numel_of(&A);
  if (!vb) need += (size_t)numel_of(&B);
  if (!vc) need += (size_t)numel_of(&C);
  scratch_reserve(scratch, need);
  size_t used = 0;
  const float *pa = in[0], *pb = in[1];
  float *pc = out;
  if (!va) {
    pa = canonical(&A, pa, &r, r.m, r.nm, r.k, r.nk, scratch, &used);
    CARVE_ASSERT(view(&A, r.m, r.nm, r.k, r.nk, &M, &K, &ta, &lda), "canonical A is a matrix");
  }
  if (!vb) {
    pb = canonical(&B, pb, &r, r.k, r.nk, r.n, r.nn, scratch, &used);
    CARVE_ASSERT(view(&B, r.k, r.nk, r.n, r.nn, &K2, &N, &tb, &ldb), "canonical B is a matrix");
  }
  Op Creal = C;
  if (!vc) {
    pc = scratch_get(scratch, (size_t)numel_of(&C), &used);
    char order[MAXRANK];
    concat(order, r.batch, r.nb, r.m, r.nm, r.n, r.nn);
    make_contiguous(&C, order, r.nb + r.nm + r.nn);
    CARVE_ASSERT(view(&C, r.m, r.nm, r.n, r.nn, &M2, &N2, &tc, &ldc), "canonical C is a matrix");
  }
  CARVE_ASSERT(K == K2 && M == M2 && N == N2, "einsum groups agree");

  /* The batch loop. Batches run in parallel, each sgemm on one thread
   * (OpenBLAS runs single-threaded inside a parallel region): many small
   * products gain more from that than from splitting each one. */
  int64_t nbatch = 1;
  for (int i = 0; i < r.nb; i++) nbatch *= A.size[find(&A, r.batch[i])];
  int pb_[MAXRANK], pa_[MAXRANK], pc_[MAXRANK];
  int64_t bsize[MAXRANK];
  for (int i = 0; i < r.nb; i++) {
    pa_[i] = find(&A, r.batch[i]), pb_[i] = find(&B, r.batch[i]), pc_[i] = find(&C, r.batch[i]);
    bsize[i] = A.size[pa_[i]];
  }
#pragma omp parallel for schedule(static) if (nbatch > 1)
  for (int64_t bi = 0; bi < nbatch; bi++) {
    int64_t oa = 0, ob = 0, oc = 0, rest = bi;
    for (int i = r.nb - 1; i >= 0; i--) {
      int64_t idx = rest % bsize[i];
      rest /= bsize[i];
      oa += idx * A.stride[pa_[i]];
      ob += idx * B.stride[pb_[i]];
      oc += idx * C.stride[pc_[i]];
    }
    if (!tc)
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                  1.0f, pa + oa, (int)lda, pb + ob, (int)ldb, 0.0f, pc + oc, (int)ldc);
    else /* C^T = B^T A^T */
      cblas_sgemm(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, ta ? CblasNoTrans : CblasTrans, (int)N, (int)M, (int)K,
                  1.0f, pb + ob, (int)ldb, pa + oa, (int)lda, 0.0f, pc + oc, (int)ldc);
  }
  if (!vc) { /* scatter the canonical result into the real layout */
    int ord[MAXRANK];
    for (int i = 0; i < Creal.rank; i++) ord[i] = find(&C, Creal.lab[i]);
    /* C is canonical and contiguous; Creal's labels may include size-1 ones not in C */
    Op src = {.rank = Creal.rank};
    for (int i = 0; i < Creal.rank; i++) {
      src.lab[i] = Creal.lab[i];
      src.size[i] = Creal.size[i];
      src.stride[i] = ord[i] >= 0 ? C.stride[ord[i]] : 0;
    }
    int id[MAXRANK];
    for (int i = 0; i < Creal.rank; i++) id[i] = i;
    permute_copy(out, pc, &src, id, Creal.rank);
  }
}
