/* permute.cu: layout changes: a strided gather of up to MAXRANK dims into a
 * contiguous destination (transposes, head splits and merges).
 *
 * One kernel, over the element type: 2- and 4-byte elements, or 16-byte
 * units when the innermost dim is contiguous (stride 1) and a whole number
 * of units long, every other stride a whole number of units and both
 * pointers 16-byte aligned: then each thread moves 16 bytes a time. Each
 * destination element's source offset is decomposed from its index, the
 * innermost dim first. */
#include "kern.cuh"

/* sizes and strides (in elements of the kernel's type), by value */
typedef struct Perm {
  int rank;
  int64_t size[MAXRANK], stride[MAXRANK];
  int64_t total;
} Perm;

/* I: the index type, 32-bit where every index and offset fits (its
   divisions are several times cheaper than 64-bit ones) */
template <typename T, typename I>
__global__ void __launch_bounds__(KTHREADS) permute_kernel(T *dst, const T *src, Perm pm) {
  for (int64_t e = k_tid(); e < pm.total; e += k_stride()) {
    I rest = (I)e, off = 0;
    for (int d = pm.rank - 1; d >= 0; d--) {
      I n = (I)pm.size[d], i = rest % n;
      rest /= n;
      off += i * (I)pm.stride[d];
    }
    dst[e] = src[off];
  }
}

/* whether every element index and source offset fits in 31 bits (strides
   not negative) */
static bool perm_small(const Perm &pm) {
  int64_t span = 0;
  for (int d = 0; d < pm.rank; d++) {
    if (pm.stride[d] < 0) return false;
    span += (pm.size[d] - 1) * pm.stride[d];
  }
  return pm.total < INT32_MAX && span < INT32_MAX;
}

template <typename T> static void permute_launch(cudaStream_t s, void *dst, const void *src, const Perm &pm) {
  if (perm_small(pm))
    permute_kernel<T, uint32_t><<<k_blocks(pm.total, KTHREADS), KTHREADS, 0, s>>>((T *)dst, (const T *)src, pm);
  else
    permute_kernel<T, int64_t><<<k_blocks(pm.total, KTHREADS), KTHREADS, 0, s>>>((T *)dst, (const T *)src, pm);
  CU_LAUNCHED();
}

extern "C" void cu_permute(cudaStream_t s, void *dst, const void *src, int rank, const int64_t *size,
                           const int64_t *stride, int esize) {
  if (rank < 0 || rank > MAXRANK || (esize != 2 && esize != 4))
    cuda_fail("cu_permute", "rank above MAXRANK or an element size other than 2 or 4", __FILE__, __LINE__);
  Perm pm;
  memset(&pm, 0, sizeof pm);
  pm.rank = rank, pm.total = 1;
  for (int d = 0; d < rank; d++) pm.size[d] = size[d], pm.stride[d] = stride[d], pm.total *= size[d];
  if (pm.total <= 0) return;
  /* 16-byte units: w elements each */
  int64_t w = 16 / esize;
  bool units = rank > 0 && stride[rank - 1] == 1 && size[rank - 1] % w == 0 && k_aligned(dst) && k_aligned(src);
  for (int d = 0; units && d < rank - 1; d++) units = stride[d] % w == 0 || size[d] == 1;
  if (units) {
    pm.size[rank - 1] /= w, pm.total /= w;
    for (int d = 0; d < rank - 1; d++) pm.stride[d] /= w;
    permute_launch<uint4>(s, dst, src, pm);
  } else if (esize == 2) {
    permute_launch<uint16_t>(s, dst, src, pm);
  } else {
    permute_launch<uint32_t>(s, dst, src, pm);
  }
}
