/* einsum_layout.c: the backend-neutral layout analysis of einsums (roles
 * of the labels, in-place views, canonical copies); see einsum_layout.h. */
#include "einsum_layout.h"

#include <string.h>

/* o: contiguous, row-major, with these labels */
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

int op_find(const Op *o, char c) {
  for (int i = 0; i < o->rank; i++)
    if (o->lab[i] == c) return i;
  return -1;
}

int64_t op_numel(const Op *o) {
  int64_t n = 1;
  for (int i = 0; i < o->rank; i++) n *= o->size[i];
  return n;
}

bool op_merge(const Op *o, const char *labs, int n, int64_t *extent, int64_t *stride) {
  *extent = 1;
  *stride = 1;
  for (int i = 0; i < n; i++) {
    int p = op_find(o, labs[i]);
    if (i > 0 && o->stride[op_find(o, labs[i - 1])] != o->stride[p] * o->size[p]) return false;
    *extent *= o->size[p];
    *stride = o->stride[p];
  }
  return true;
}

/* Sorts the labels of a group by decreasing stride in operand o. */
static void sort_by_stride(char *labs, int n, const Op *o) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && o->stride[op_find(o, labs[j])] > o->stride[op_find(o, labs[j - 1])]; j--) {
      char t = labs[j];
      labs[j] = labs[j - 1];
      labs[j - 1] = t;
    }
}

static void roles_of(const Op *A, const Op *B, const Op *C, Roles *r) {
  *r = (Roles){0};
  for (int i = 0; i < A->rank; i++) {
    if (A->size[i] == 1) continue; /* size-1 labels do not affect layout */
    bool inb = op_find(B, A->lab[i]) >= 0, inc = op_find(C, A->lab[i]) >= 0;
    if (inb && inc)
      r->batch[r->nb++] = A->lab[i];
    else if (inc)
      r->m[r->nm++] = A->lab[i];
    else
      r->k[r->nk++] = A->lab[i];
  }
  for (int i = 0; i < B->rank; i++)
    if (B->size[i] > 1 && op_find(A, B->lab[i]) < 0) r->n[r->nn++] = B->lab[i];
  sort_by_stride(r->m, r->nm, A);
  sort_by_stride(r->k, r->nk, A);
  sort_by_stride(r->n, r->nn, B);
  sort_by_stride(r->batch, r->nb, C);
}

/* the product of o's sizes of these labels */
static int64_t extent_of(const Op *o, const char *labs, int n) {
  int64_t e = 1;
  for (int i = 0; i < n; i++) e *= o->size[op_find(o, labs[i])];
  return e;
}

bool einsum_layout_init(EinsumLayout *L, const char *spec, int nin, const Shape *const *ins, const Shape *out) {
  char parts[3][MAXRANK + 1];
  if (!einsum_parse(spec, nin, parts)) return false;
  *L = (EinsumLayout){.nin = nin};
  if (nin == 1) { /* a transpose: the output's dims as dims of the input */
    op_init(&L->orig[0], parts[0], ins[0]);
    for (int i = 0; i < ins[0]->rank; i++) L->order[0][i] = op_find(&L->orig[0], parts[1][i]);
    L->ncanon[0] = ins[0]->rank;
    L->view[0] = L->orig[0];
    return true;
  }
  /* the product writes C's rows in order: if C's innermost label is A's,
     swap the operands, so it is one of the second operand's (N) labels */
  char inner = parts[2][0] ? parts[2][strlen(parts[2]) - 1] : 0;
  L->swap = inner && strchr(parts[0], inner) && !strchr(parts[1], inner);
  op_init(&L->orig[0], parts[L->swap], ins[L->swap]);
  op_init(&L->orig[1], parts[!L->swap], ins[!L->swap]);
  op_init(&L->orig[2], parts[2], out);
  for (int k = 0; k < 3; k++) L->view[k] = L->orig[k];
  roles_of(&L->orig[0], &L->orig[1], &L->orig[2], &L->r);
  L->batch = extent_of(&L->orig[0], L->r.batch, L->r.nb);
  L->M = extent_of(&L->orig[0], L->r.m, L->r.nm);
  L->K = extent_of(&L->orig[0], L->r.k, L->r.nk);
  L->N = extent_of(&L->orig[1], L->r.n, L->r.nn);
  return true;
}

bool layout_empty_role(const EinsumLayout *L) { return !L->r.nm || !L->r.nn || !L->r.nk; }

const char *layout_rows(const EinsumLayout *L, int k, int *n) {
  *n = k == 1 ? L->r.nk : L->r.nm;
  return k == 1 ? L->r.k : L->r.m;
}

const char *layout_cols(const EinsumLayout *L, int k, int *n) {
  *n = k == 0 ? L->r.nk : L->r.nn;
  return k == 0 ? L->r.k : L->r.n;
}

bool layout_merges(const EinsumLayout *L, int k) {
  int nr, nc;
  const char *rows = layout_rows(L, k, &nr), *cols = layout_cols(L, k, &nc);
  int64_t ext, st;
  return op_merge(&L->view[k], rows, nr, &ext, &st) && op_merge(&L->view[k], cols, nc, &ext, &st);
}

void layout_canonical(EinsumLayout *L, int k) {
  const Op *o = &L->orig[k];
  const Roles *r = &L->r;
  int nr, nc;
  const char *rows = layout_rows(L, k, &nr), *cols = layout_cols(L, k, &nc);
  char order[MAXRANK];
  int n = r->nb + nr + nc;
  memcpy(order, r->batch, (size_t)r->nb);
  memcpy(order + r->nb, rows, (size_t)nr);
  memcpy(order + r->nb + nr, cols, (size_t)nc);
  Op c = {.rank = n};
  int64_t st = 1;
  for (int i = n - 1; i >= 0; i--) {
    L->order[k][i] = op_find(o, order[i]);
    c.lab[i] = order[i];
    c.size[i] = o->size[L->order[k][i]];
    c.stride[i] = st;
    st *= c.size[i];
  }
  L->view[k] = c;
  L->ncanon[k] = n;
  L->copy[k] = true;
}

Op layout_scatter(const EinsumLayout *L) {
  const Op *c = &L->view[2], *real = &L->orig[2];
  Op src = {.rank = real->rank};
  for (int i = 0; i < real->rank; i++) {
    int p = op_find(c, real->lab[i]);
    src.lab[i] = real->lab[i];
    src.size[i] = real->size[i];
    src.stride[i] = p >= 0 ? c->stride[p] : 0; /* a size-1 label is not in the canonical layout */
  }
  return src;
}
