/* einsum_desc.h: the CUDA einsum's plan as plain data (runtime/cuda/
 * einsum_desc.c computes it without a CUDA call; einsum.c turns it into
 * cuBLASLt objects), so tests/test_cuda_einsum.c can run it on the CPU.
 *
 * cuBLASLt multiplies column-major matrices: D (m x n) = op(A) (m x k)
 * op(B) (k x n), `batch` times, each operand's matrices `bstride` elements
 * apart. carve's einsum C = A B (einsum_layout.h's roles, row-major) is
 * given to it either as is (D = C, when C's rows have unit stride) or
 * transposed (D = C^T = B^T A^T, when C's columns do: the usual case). An
 * operand is read in place when its batch, row and column labels each merge
 * into one index and one of its two matrix strides is 1; otherwise through
 * a canonical copy (a cu_permute into scratch; for D, a copy back out). */
#ifndef CARVE_CUDA_EINSUM_DESC_H
#define CARVE_CUDA_EINSUM_DESC_H
#include "../einsum_layout.h"

/* A cu_permute: dst (contiguous) <- src read with `stride` over `size`. */
typedef struct CuCopy {
  int rank;
  int64_t size[MAXRANK], stride[MAXRANK];
} CuCopy;

/* One matrix of the product as cuBLASLt is told it. */
typedef struct CuMat {
  int from;               /* A and B: the einsum input (in[from]) they are */
  bool copied;            /* read (D: written) at scratch + at, not in place */
  int64_t at;             /* bytes into scratch, a multiple of 64 */
  CuCopy copy;            /* A, B: scratch + at <- in[from]; D: out <- scratch + at */
  bool trans;             /* op(X) = X^T (never for D) */
  int64_t rows, cols, ld; /* as stored, column-major: (i, j) at i + j * ld */
  int64_t bstride;        /* elements between one batch's matrix and the next (0 for one batch) */
  int align;              /* bytes the pointer, ld and bstride all keep (2 to 64) */
} CuMat;

typedef struct CuGemm {
  bool transpose; /* a one-operand einsum: out <- in[0] through `perm`, no product */
  CuCopy perm;
  int esize_in, esize_out; /* bytes: 4 (f32) or 2 (bf16) */
  int64_t batch, m, n, k;  /* D (m x n) = op(A) (m x k) op(B) (k x n), batch times */
  CuMat a, b, d;
  int64_t scratch; /* bytes of the copies */
} CuGemm;

/* The plan of C = einsum(spec, A[, B]) on these shapes (f32 x f32 -> f32,
   bf16 x bf16 -> f32 or bf16; a transpose keeps its dtype); NULL, or why
   there is none. */
const char *cu_einsum_describe(CuGemm *g, const char *spec, int nin, const Shape *const *ins, DType in_dt,
                               const Shape *out, DType out_dt);

#endif
