// Philox uniform numbers on the device (kernels/common/philox.h), bit-identical to the CPU's
// rand_uniform (engine/rng.cpp) for the same (seed, offset):
//
//   out[i] = float(lo + (hi - lo) * u_i),  u_i = to_unit_float(word i % 4 of philox(seed, offset + i / 4))
// computed in double like the CPU, then rounded once. Per element 1/4 Philox block (10 rounds of
// two 32x32->64 multiplies) and 2 double FLOPs; writes 4 B/element. Compute-light on any GPU:
// at 4 B/element the write is the bound.
//
// Versions:
//   v1 (this file) one thread per Philox block: it computes the 4 words once and writes up to 4
//      consecutive elements. (A float4 store would need out aligned to 16 B, which views are not.)
#include "kernels/common/philox.h"
#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

__global__ void uniform_kernel(float* out, int64_t n, double lo, double hi, uint64_t seed, PhiloxOffset offset) {
  const int64_t blocks = (n + 3) / 4;
  const uint64_t first = resolve(offset);
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    const philox::Block bits = philox::philox4x32_10(first + static_cast<uint64_t>(b), seed);
    for (int k = 0; k < 4 && 4 * b + k < n; ++k)
      out[4 * b + k] = static_cast<float>(lo + (hi - lo) * static_cast<double>(philox::to_unit_float(bits.v[k])));
  }
}

}  // namespace

void uniform(float* out, int64_t n, float lo, float hi, uint64_t seed, uint64_t offset) {
  if (n > 0)
    BW_LAUNCH_COSTED(elementwise_cost(n, 0, 1, 2), uniform_kernel, blocks_for((n + 3) / 4), kThreads, 0,
                     current_stream(), out, n, static_cast<double>(lo), static_cast<double>(hi), seed, philox_offset(seed, offset));
}

}  // namespace bulwark::cuda
