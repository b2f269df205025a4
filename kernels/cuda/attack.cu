// The fused L-inf attack step and the random start on the device (scalar bodies:
// kernels/common/attack_step.h, shared with the CPU loops in kernels/cpu/attack.cpp):
//
//   x_adv[i] <- clip_[0,1](clip_[x-eps, x+eps](x_adv[i] + alpha * sign(g[i]))),  *l1 = sum_i |g[i]| (when asked)
//   random start: x_adv[i] = clip_[0,1](x[i] + eps * (2 u_i - 1)),  u_i = philox::uniform(seed, offset, i)
// pgd_step: ~9 FLOPs and 16 B per element (read x, x_adv, g; write x_adv): memory-bound.
// random_start: 1/4 Philox block + 3 FLOPs, 8 B per element.
//
// Versions:
//   v1 pgd_step was one grid-stride pass that also accumulated |g| in double; each block reduced
//      its partial (warp shuffles, then shared memory) into partials[block], and a one-block
//      second kernel added the partials in block order. The launcher returned the sum: an 8-byte
//      device-to-host copy, so every step of every attack made the host wait.
//   v2 (this file) the same two kernels, but the second writes the sum to a device address the
//      caller gives (a slot of the trainer's per-batch log), so the step never waits; the sum is
//      still deterministic (block order) and matches the CPU's double sum to ~1e-12 relative.
//      Without an address the L1 is not reduced at all (pgd_step_kernel<false>: one kernel, no
//      partials): the steps of an attack before its last need no L1.
//      random_start is one thread per Philox block of 4 elements, the same words as the CPU.
#include "kernels/common/attack_step.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

// kWithL1: also reduce sum |g| into partials[blockIdx.x]; without, the step alone.
template <bool kWithL1>
__global__ void pgd_step_kernel(const float* x, float* x_adv, const float* g, int64_t n, float eps, float alpha,
                                double* partials) {
  BW_SHARED(double, scratch, [32]);
  double l1 = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    x_adv[i] = attack::pgd_step(x[i], x_adv[i], gi, eps, alpha);
    if (kWithL1) l1 += static_cast<double>(attack::l1_term(gi));
  }
  if (!kWithL1) return;
  l1 = block_sum<double>(l1, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = l1;
}

// One block adds `count` partial sums; the order depends only on count.
__global__ void sum_partials_kernel(const double* partials, int count, double* total) {
  BW_SHARED(double, scratch, [32]);
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum<double>(acc, scratch);
  if (threadIdx.x == 0) *total = acc;
}

__global__ void random_start_kernel(const float* x, float* x_adv, int64_t n, float eps, uint64_t seed,
                                    PhiloxOffset offset) {
  const int64_t blocks = (n + 3) / 4;
  const uint64_t first = resolve(offset);
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    const philox::Block bits = philox::philox4x32_10(first + static_cast<uint64_t>(b), seed);
    for (int k = 0; k < 4 && 4 * b + k < n; ++k) {
      const float u = philox::to_unit_float(bits.v[k]);
      x_adv[4 * b + k] = attack::random_start(x[4 * b + k], u, eps);
    }
  }
}

}  // namespace

void pgd_step(const float* x, float* x_adv, const float* g, int64_t n, float eps, float alpha, double* l1) {
  if (l1 == nullptr) {
    if (n > 0)
      BW_LAUNCH_COSTED(elementwise_cost(n, 3, 1, 9), pgd_step_kernel<false>, blocks_for(n), kThreads, 0,
                       current_stream(), x, x_adv, g, n, eps, alpha, nullptr);
    return;
  }
  // n = 0: no step, and the sum of no partials (0) is still written.
  const unsigned grid = n > 0 ? blocks_for(n) : 0;
  auto* partials = grid > 0 ? static_cast<double*>(device_malloc(sizeof(double) * grid)) : nullptr;
  if (grid > 0) {
    LaunchCost step = elementwise_cost(n, 3, 1, 11);  // + |g| and its sum
    step.bytes += 8.0 * grid;                          // the partials
    BW_LAUNCH_COSTED(step, pgd_step_kernel<true>, grid, kThreads, 0, current_stream(), x, x_adv, g, n, eps, alpha,
                     partials);
  }
  BW_LAUNCH_COSTED((LaunchCost{double(grid), 8.0 * (grid + 1)}), sum_partials_kernel, 1, kThreads, 0, current_stream(),
                   partials, static_cast<int>(grid), l1);
  // Stream-ordered allocator: a later user of this block is queued after the kernels above.
  if (partials) device_free(partials);
}

void random_start(const float* x, float* x_adv, int64_t n, float eps, uint64_t seed, uint64_t offset) {
  if (n > 0)
    BW_LAUNCH_COSTED(elementwise_cost(n, 1, 1, 3), random_start_kernel, blocks_for((n + 3) / 4), kThreads, 0,
                     current_stream(), x, x_adv, n, eps, seed, philox_offset(seed, offset));
}

}  // namespace bulwark::cuda
