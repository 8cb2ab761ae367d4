/* einsum.c: (being written) */
#include "cuda.h"
