/* einsum_desc.c: the CUDA einsum's plan as plain data (einsum_desc.h):
 * which operands are copied, how each is laid out for cuBLASLt, the batch
 * strides and alignments. No CUDA call here: the CPU tests run it. */
#include "einsum_desc.h"

#include <string.h>

/* The copy reading operand o along `order` (n dims) into contiguous order. */
static CuCopy copy_of(const Op *o, const int *order, int n) {
  CuCopy c = {.rank = n};
  for (int i = 0; i < n; i++) {
    c.size[i] = o->size[order[i]];
    c.stride[i] = o->stride[order[i]];
  }
  if (n == 0) c = (CuCopy){.rank = 1, .size = {1}, .stride = {1}}; /* a scalar: one element */
  return c;
}

static int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

/* X (R x S, (i, j) at i * rs + j * cs) as a column-major matrix x with
   op(x) = X (no transpose for an output); false when neither stride is a
   unit one (or they overlap). A single column's ld is never stepped over:
   it is padded to 16 bytes so that it does not cost the matrix its
   alignment, and an input that is one contiguous row is stored as that
   column, transposed. */
static bool colmajor(int64_t R, int64_t rs, int64_t S, int64_t cs, int es, bool output, CuMat *x) {
  int64_t pad = 16 / es;
  bool row = R == 1 && S > 1 && cs == 1 && !output;
  if (!row && (R == 1 || rs == 1) && (S == 1 || cs >= R)) {
    x->trans = false, x->rows = R, x->cols = S, x->ld = S == 1 ? round_up(R, pad) : cs;
    return true;
  }
  if (!output && (S == 1 || cs == 1) && (R == 1 || rs >= S)) {
    x->trans = true, x->rows = S, x->cols = R, x->ld = R == 1 ? round_up(S, pad) : rs;
    return true;
  }
  return false;
}

/* Operand k (as viewed now) as matrix x of the product: its rows and cols
   exchanged when tr (D = C^T), its batch stride; false when cuBLASLt
   cannot read it in place. */
static bool as_matrix(const EinsumLayout *L, int k, bool tr, int es, CuMat *x) {
  const Op *o = &L->view[k];
  int nr, nc;
  const char *rows = layout_rows(L, k, &nr), *cols = layout_cols(L, k, &nc);
  int64_t R, rs, S, cs, bext;
  if (!op_merge(o, L->r.batch, L->r.nb, &bext, &x->bstride) || !op_merge(o, rows, nr, &R, &rs) ||
      !op_merge(o, cols, nc, &S, &cs))
    return false;
  if (L->batch == 1) x->bstride = 0;
  bool output = k == 2;
  return tr ? colmajor(S, cs, R, rs, es, output, x) : colmajor(R, rs, S, cs, es, output, x);
}

/* The alignment (bytes, 2 to 64) of x's pointer, ld and batch stride:
   arena and scratch offsets are multiples of 64. */
static int align_of(const CuMat *x, int es) {
  int a = 64;
  while (a > es && ((x->ld * es) % a || (x->bstride * es) % a)) a /= 2;
  return a;
}

/* The one-operand einsum: a strided copy. */
static const char *describe_transpose(CuGemm *g, const EinsumLayout *L) {
  if (g->esize_in != g->esize_out) return "a transpose cannot change the dtype";
  g->transpose = true;
  g->perm = copy_of(&L->orig[0], L->order[0], L->orig[0].rank);
  return NULL;
}

/* Decides the orientation: D = C^T when C's columns have unit stride (C
   row-major, the usual case), else D = C when its rows do; a C that is
   neither is copied (its canonical copy is row-major, so D = C^T). True
   for D = C^T. */
static bool orient(EinsumLayout *L, int esize_out, CuMat *d) {
  if (as_matrix(L, 2, true, esize_out, d)) return true;
  if (as_matrix(L, 2, false, esize_out, d)) return false;
  layout_canonical(L, 2);
  as_matrix(L, 2, true, esize_out, d);
  return true;
}

/* Matrix x is layout operand k, through its canonical copy if it must be. */
static void place(EinsumLayout *L, int k, bool tr, int es, CuMat *x) {
  if (!as_matrix(L, k, tr, es, x)) {
    layout_canonical(L, k);
    as_matrix(L, k, tr, es, x);
  }
  x->align = align_of(x, es);
  x->from = k == 0 ? L->swap : !L->swap;
  x->copied = L->copy[k];
}

/* Scratch offsets of the copies, and the copies themselves. */
static void plan_copies(CuGemm *g, const EinsumLayout *L, bool tr) {
  CuMat *of[3] = {tr ? &g->b : &g->a, tr ? &g->a : &g->b, &g->d}; /* by layout operand */
  for (int k = 0; k < 3; k++) {
    CuMat *x = of[k];
    if (!x->copied) continue;
    x->at = g->scratch;
    g->scratch += round_up(op_numel(&L->orig[k]) * (k == 2 ? g->esize_out : g->esize_in), 64);
    if (k < 2) {
      x->copy = copy_of(&L->orig[k], L->order[k], L->ncanon[k]);
    } else {
      Op src = layout_scatter(L);
      int id[MAXRANK];
      for (int i = 0; i < src.rank; i++) id[i] = i;
      x->copy = copy_of(&src, id, src.rank);
    }
  }
}

const char *cu_einsum_describe(CuGemm *g, const char *spec, int nin, const Shape *const *ins, DType in_dt,
                               const Shape *out, DType out_dt) {
  *g = (CuGemm){0};
  if ((in_dt != DT_F32 && in_dt != DT_BF16) || (out_dt != DT_F32 && out_dt != DT_BF16))
    return "einsum operands must be f32 or bf16";
  g->esize_in = dtype_size(in_dt);
  g->esize_out = dtype_size(out_dt);
  EinsumLayout L;
  if ((nin != 1 && nin != 2) || !einsum_layout_init(&L, spec, nin, ins, out)) return "malformed einsum spec";
  if (nin == 1) return describe_transpose(g, &L);
  if (in_dt == DT_F32 && out_dt == DT_BF16) return "no f32 x f32 -> bf16 product (f32 inputs give an f32 result)";
  if (L.batch > INT32_MAX) return "more than 2^31 matrices in one batched product";
  bool tr = orient(&L, g->esize_out, &g->d);
  g->d.align = align_of(&g->d, g->esize_out);
  g->d.copied = L.copy[2];
  place(&L, tr ? 1 : 0, tr, g->esize_in, &g->a);
  place(&L, tr ? 0 : 1, tr, g->esize_in, &g->b);
  g->batch = L.batch;
  g->m = tr ? L.N : L.M;
  g->n = tr ? L.M : L.N;
  g->k = L.K;
  plan_copies(g, &L, tr);
  return NULL;
}
