/* Parameters of kernels/cast.cu. */
#pragma once
#include "params.h"

/* dst[i] = (bf16) src[i] and back. */
typedef struct CastParams {
  dptr src;
  dptr dst;
  uint32_t n;
} CastParams;

