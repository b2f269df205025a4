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
//
// The fused attack (fused_pgd_kernel): every step of PGD on a small feed-forward network in one
// launch (kernels/common/fused_attack.h has the math and the per-element bodies).
//   The layered attack launches, per step, every layer's forward and input-gradient kernels,
//   the ReLU masks, the loss and the step: 22 launches a step on wong_small, 220 for PGD-10, each
//   a few microseconds of work at batch 128. Here one block carries one sample through all the
//   steps: per layer, its threads compute the output elements (a strided loop, each element one
//   thread's sequential sum), __syncthreads, the next layer; thread 0 takes the loss's gradient
//   over the K logits; the backward runs the layers in reverse with the ReLU mask of the layer
//   below applied as each input gradient is written, and the first layer's input gradient goes
//   straight into the projected signed step (it is never stored). A sample's activations and its
//   two gradient buffers live in a global workspace (n x net.workspace() floats: 47 KB a sample
//   on wong_small, L1/L2-resident) so any width fits.
//   Cost per sample and step: the forward's MACs twice (forward and input gradient) + the loss;
//   DRAM: the weights once (re-reads hit L2), x, x_adv read and written, the labels.
//   What it gives up: one block per sample is 128 blocks at batch 128 (fewer than an H100 has
//   SMs, 8 warps each), linear layers read W row by row per thread (uncoalesced), and nothing is
//   staged in shared memory; whether this beats the layered attack's graph replay on a GPU is not
//   measured yet (docs/kernels.md). Same bits as cpu::fused_pgd except the L1, whose per-sample
//   sums are reduced as a tree in double here and sequentially there (~1e-15 relative).
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

// One block per sample (blockIdx.x); the sample's workspace holds its activations then two
// gradient buffers. kWithL1: also write sum |g| of the last step's input gradient to
// sample_l1[sample].
template <bool kWithL1>
__global__ void fused_pgd_kernel(fused::Net<float> net, const float* x, float* x_adv, const int32_t* y,
                                 float* workspace, int steps, float eps, float alpha, float scale,
                                 double* sample_l1) {
  BW_SHARED(double, scratch, [32]);
  const int64_t sample = blockIdx.x;
  const int size = net.in_size();
  const float* xs = x + sample * size;
  float* xa = x_adv + sample * size;
  float* act = workspace + sample * net.workspace();
  float* grad_a = act + net.act_size;
  float* grad_b = grad_a + net.grad_size;
  double l1 = 0.0;
  for (int step = 0; step < steps; ++step) {
    const float* in = xa;
    for (int l = 0; l < net.layers; ++l) {
      const fused::Layer<float>& L = net.layer[l];
      float* out = act + L.out_offset;
      for (int o = threadIdx.x; o < L.out_size(); o += blockDim.x) out[o] = fused::forward_at(L, in, o);
      __syncthreads();
      in = out;
    }
    if (threadIdx.x == 0) fused::cross_entropy_grad(in, net.classes(), y[sample], scale, grad_a);
    __syncthreads();
    float *g = grad_a, *spare = grad_b;
    for (int l = net.layers - 1; l >= 1; --l) {
      const fused::Layer<float>& below = net.layer[l - 1];
      const float* a = act + below.out_offset;
      for (int i = threadIdx.x; i < net.layer[l].in_size(); i += blockDim.x) {
        const float v = fused::backward_at(net.layer[l], g, i);
        spare[i] = below.relu && !(a[i] > 0.f) ? 0.f : v;
      }
      __syncthreads();
      float* t = g;
      g = spare;
      spare = t;
    }
    // No thread reads x_adv in the first layer's backward, so the step can write it in place.
    const bool last = step + 1 == steps;
    for (int i = threadIdx.x; i < size; i += blockDim.x) {
      const float gi = fused::backward_at(net.layer[0], g, i);
      if (kWithL1 && last) l1 += static_cast<double>(attack::l1_term(gi));
      xa[i] = attack::pgd_step(xs[i], xa[i], gi, eps, alpha);
    }
    __syncthreads();
  }
  if (!kWithL1) return;
  l1 = block_sum<double>(l1, scratch);
  if (threadIdx.x == 0) sample_l1[sample] = l1;
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

// The launch's cost: per sample and step, each layer's forward and input gradient (the same
// MACs) and the loss; DRAM: the weights, x, x_adv in and out, the labels.
static LaunchCost fused_pgd_cost(const fused::Net<float>& net, int64_t n, int steps) {
  double flops = 0, weights = 0;
  for (int l = 0; l < net.layers; ++l) {
    const fused::Layer<float>& L = net.layer[l];
    flops += 2 * fused::forward_flops(L);
    weights += L.kind == fused::kNormalize ? 2.0 * L.in_c
                                           : (L.kind == fused::kConv ? double(L.kernel) * L.kernel : 1.0) * L.in_c * L.out_c +
                                                 (L.bias ? L.out_c : 0);
  }
  flops += 4.0 * net.classes() + 9.0 * net.in_size();  // softmax-xent gradient, the step
  return {flops * double(n) * steps, 4.0 * (weights + 3.0 * double(n) * net.in_size() + double(n))};
}

void fused_pgd(const fused::Net<float>& net, const float* x, float* x_adv, const int32_t* y, int64_t n, int steps,
               float eps, float alpha, double* l1) {
  const bool run = n > 0 && steps > 0;
  auto* workspace = run ? static_cast<float*>(device_malloc(sizeof(float) * n * net.workspace())) : nullptr;
  auto* sample_l1 = run && l1 ? static_cast<double*>(device_malloc(sizeof(double) * n)) : nullptr;
  const float scale = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
  if (run) {
    if (l1)
      BW_LAUNCH_COSTED(fused_pgd_cost(net, n, steps), fused_pgd_kernel<true>, static_cast<unsigned>(n), kThreads, 0,
                       current_stream(), net, x, x_adv, y, workspace, steps, eps, alpha, scale, sample_l1);
    else
      BW_LAUNCH_COSTED(fused_pgd_cost(net, n, steps), fused_pgd_kernel<false>, static_cast<unsigned>(n), kThreads, 0,
                       current_stream(), net, x, x_adv, y, workspace, steps, eps, alpha, scale, nullptr);
  }
  // As pgd_step's: the per-sample sums added in sample order by one block (0 when nothing ran).
  if (l1)
    BW_LAUNCH_COSTED((LaunchCost{double(run ? n : 0), 8.0 * ((run ? n : 0) + 1)}), sum_partials_kernel, 1, kThreads, 0,
                     current_stream(), sample_l1, static_cast<int>(run ? n : 0), l1);
  if (sample_l1) device_free(sample_l1);
  if (workspace) device_free(workspace);
}

}  // namespace bulwark::cuda
