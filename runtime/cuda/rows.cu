/* rows.cu: (being written) */
#include "cuda.h"
