#pragma once
// Under the emulator, `#include <cuda_bf16.h>` resolves here: __nv_bfloat16 as 16 bits of
// storage with CUDA's conversions (round to nearest even from f32, exact to f32). Arithmetic on
// it is not emulated; bulwark's kernels only store, load and convert BF16.
#include "kernels/emu/emu.h"  // first: it defines the __host__/__device__ that precision.h uses

#include <cstdint>

#include "kernels/common/precision.h"

struct __nv_bfloat16 {
  uint16_t bits = 0;
};

inline __nv_bfloat16 __float2bfloat16(float x) { return __nv_bfloat16{bulwark::precision::bf16_bits(x)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return bulwark::precision::bf16_value(h.bits); }
