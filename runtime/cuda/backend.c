/* backend.c: the CUDA backend's table (being written). */
#include "../backend.h"
#include "cuda.h"

Backend *backend_cuda(char *why, size_t n) {
  int count = 0; /* not written when there is no driver */
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    snprintf(why, n, "no usable GPU (%s)", e != cudaSuccess ? cudaGetErrorName(e) : "no device");
    return NULL;
  }
  snprintf(why, n, "the CUDA backend is not finished");
  return NULL;
}
