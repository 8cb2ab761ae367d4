/* optim.cu: (being written) */
#include "cuda.h"
