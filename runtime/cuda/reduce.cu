/* reduce.cu: (being written) */
#include "cuda.h"
