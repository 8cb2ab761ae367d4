/* einsum_layout.h: how an einsum's operands map onto one (batched) matrix
 * product, shared by the backends (runtime/cpu/einsum.c, runtime/cuda/).
 * Plain C11: no oneDNN or CUDA here.
 *
 * Every label of C = einsum(A, B) is one of
 *   batch  in A, B and C      (leading dims of the product)
 *   M      in A and C         (rows of C)
 *   N      in B and C         (columns of C)
 *   K      in A and B only    (contracted)
 * (labels of size 1 take no part). Each operand is a matrix, [batch...,
 * rows, cols] (A: M x K, B: K x N, C: M x N), viewed in place when its row
 * and column labels each merge into one index of constant stride, else
 * through a canonical copy: contiguous, dims in the order (batch, rows,
 * cols). A one-operand einsum is a transpose. Which views a backend can
 * take is its own business; this file says what they are. */
#ifndef CARVE_EINSUM_LAYOUT_H
#define CARVE_EINSUM_LAYOUT_H
#include "carve.h"

/* An operand: its labels, sizes and strides (in elements), outermost first. */
typedef struct Op {
  int rank;
  char lab[MAXRANK];
  int64_t size[MAXRANK], stride[MAXRANK];
} Op;

/* The labels of each role, in the order the product takes them: M and K
   by decreasing stride in A, N in B, batch in C. */
typedef struct Roles {
  char batch[MAXRANK], m[MAXRANK], n[MAXRANK], k[MAXRANK];
  int nb, nm, nn, nk;
} Roles;

typedef struct EinsumLayout {
  int nin;
  bool swap;              /* C's innermost dim is A's: the operands are taken as (B, A), so C = A B with A = orig[0] */
  Op orig[3];             /* A, B, C as stored (one operand: orig[0] only) */
  Op view[3];             /* as the product reads them: orig, or the canonical copy's layout where copy[k] */
  bool copy[3];           /* operand k goes through a canonical copy (C: computed there, then scattered) */
  int order[3][MAXRANK];  /* the copy's dims as dims of orig[k] (one operand: the output's dims of orig[0]) */
  int ncanon[3];          /* dims of the copy */
  Roles r;                /* two operands only */
  int64_t batch, M, N, K; /* extents of the roles (1 where a role has no label) */
} EinsumLayout;

/* Parses spec, orders the operands (swap), classifies the labels and views
   every operand in place. false if spec is malformed. */
bool einsum_layout_init(EinsumLayout *L, const char *spec, int nin, const Shape *const *ins, const Shape *out);
/* true when M, N or K has no label (an outer product, matrix-vector, dot) */
bool layout_empty_role(const EinsumLayout *L);
/* The row and column labels of operand k (A: M, K; B: K, N; C: M, N). */
const char *layout_rows(const EinsumLayout *L, int k, int *n);
const char *layout_cols(const EinsumLayout *L, int k, int *n);
/* Do operand k's rows and cols (as viewed now) each merge into one index? */
bool layout_merges(const EinsumLayout *L, int k);
/* Views operand k through its canonical copy. */
void layout_canonical(EinsumLayout *L, int k);
/* C's canonical copy read in C's own dim order (stride 0 for a size-1 label,
   which the copy leaves out): copying with it scatters the result in place. */
Op layout_scatter(const EinsumLayout *L);

int op_find(const Op *o, char c);
int64_t op_numel(const Op *o);
/* Can labs (in this order) be one index of o? Gives its extent and stride
   (1 and 1 for no labels). */
bool op_merge(const Op *o, const char *labs, int n, int64_t *extent, int64_t *stride);

#endif
