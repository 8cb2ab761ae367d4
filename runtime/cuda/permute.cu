/* permute.cu: (being written) */
#include "cuda.h"
