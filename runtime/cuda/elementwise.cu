/* elementwise.cu: (being written) */
#include "cuda.h"
