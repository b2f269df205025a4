// Training-mode batch normalisation over x viewed as [n, c, inner], the math of
// kernels/cpu/batch_norm.cpp (see there for the derivation); every statistic is per channel over
// its m = n * inner values:
//
//   forward:   K = x[0, ch, 0] (a shift against cancellation), S1 = sum (x - K), S2 = sum (x - K)^2
//              mean = K + S1/m,  var = max(S2/m - (S1/m)^2, 0),  invstd = 1/sqrt(var + eps)
//              y = (x - mean) * (invstd * gamma) + beta
//   backward:  dbeta = sum g,  dgamma = invstd * sum g (x - mean)
//              dx = k g + a (x - mean) + b,  k = gamma invstd,  a = -k invstd dgamma / m,  b = -k dbeta / m
//   BN+ReLU (batch_norm_relu): the forward's writing pass applies the ReLU, and the backward reads g
//   through its mask, g [y > 0], in both passes: the ReLU costs no launch and no pass either way.
//
// FLOPs per element: forward ~6, backward ~8. Bytes (f32): forward 12 per element (x read twice,
// y written), backward 20 (x and g read twice, dx written); the second read of a channel mostly
// hits L2 when the channel (4 m bytes) fits, so DRAM sees 8 and 12 (the launch costs stated
// below). Memory-bound: the roofline is HBM bandwidth.
//
// Versions:
//   1  this file: one block of 256 threads per channel, two passes (reduce, then write), both in
//      one launch. Each thread sums its strided share in f32; the block combines the 256 partial
//      sums in f64 (common.cuh's block_sum: warp shuffles, then one warp over the 8 warp sums,
//      every thread getting the total), so every thread computes the channel's coefficients
//      itself and goes straight on to the writing pass. Results do not depend on the schedule of threads or blocks.
//      Limits: a grid of c blocks under-fills a 132-SM GPU when c < ~256 and the channel is long
//      (e.g. c = 64, m = 128*32*32); splitting each channel over several blocks with a second
//      reduction launch is the next version. With inner = 1 (BatchNorm1d) a channel's values are
//      c floats apart, so the loads are uncoalesced; a thread-per-channel layout fixes that.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

namespace {
// kThreads (256) and block_sum come from common.cuh.

// The fused ReLU's backward read with g: g where its output y was positive, or g without a ReLU.
__device__ inline float masked(const float* g, const float* y, int64_t i) {
  return y ? ew::binary_apply(ew::Binary::relu_grad, g[i], y[i]) : g[i];
}

__global__ __launch_bounds__(kThreads) void batch_norm_forward_train_kernel(
    const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta, float* __restrict__ y,
    float* __restrict__ mean, float* __restrict__ invstd, float* __restrict__ var, int64_t n, int64_t c, int64_t inner,
    double eps, bool relu) {
  BW_SHARED(double, scratch, [32]);
  const int64_t ch = blockIdx.x, m = n * inner;
  const float shift = x[ch * inner];
  float s1 = 0.0f, s2 = 0.0f;
  for (int64_t e = threadIdx.x; e < m; e += kThreads) {
    const float d = x[((e / inner) * c + ch) * inner + e % inner] - shift;
    s1 += d;
    s2 += d * d;
  }
  const double sum = block_sum<double>(s1, scratch), sum_sq = block_sum<double>(s2, scratch);
  const double centred = sum / double(m);
  const double v = fmax(sum_sq / double(m) - centred * centred, 0.0);
  const double mu = double(shift) + centred, is = 1.0 / sqrt(v + eps);
  if (threadIdx.x == 0) {
    mean[ch] = float(mu);
    var[ch] = float(v);
    invstd[ch] = float(is);
  }
  const float tmu = float(mu), scale = float(is * double(gamma[ch])), b = beta[ch];
  for (int64_t e = threadIdx.x; e < m; e += kThreads) {
    const int64_t i = ((e / inner) * c + ch) * inner + e % inner;
    y[i] = ew::relu_if((x[i] - tmu) * scale + b, relu);
  }
}

__global__ __launch_bounds__(kThreads) void batch_norm_backward_train_kernel(
    const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ gamma,
    const float* __restrict__ mean, const float* __restrict__ invstd, float* __restrict__ dx,
    float* __restrict__ dgamma, float* __restrict__ dbeta, int64_t n, int64_t c, int64_t inner,
    const float* __restrict__ relu_out) {
  BW_SHARED(double, scratch, [32]);
  const int64_t ch = blockIdx.x, m = n * inner;
  const float tmu = mean[ch];
  float sg = 0.0f, sgx = 0.0f;
  for (int64_t e = threadIdx.x; e < m; e += kThreads) {
    const int64_t i = ((e / inner) * c + ch) * inner + e % inner;
    const float gi = masked(g, relu_out, i);
    sg += gi;
    sgx += gi * (x[i] - tmu);
  }
  const double sum_g = block_sum<double>(sg, scratch), sum_gxc = block_sum<double>(sgx, scratch);
  const double is = double(invstd[ch]), sum_gxhat = is * sum_gxc;
  if (threadIdx.x == 0) {
    if (dbeta) dbeta[ch] = float(sum_g);
    if (dgamma) dgamma[ch] = float(sum_gxhat);
  }
  if (!dx) return;
  const double k = double(gamma[ch]) * is;
  const float tk = float(k), ta = float(-k * is * sum_gxhat / double(m)), tb = float(-k * sum_g / double(m));
  for (int64_t e = threadIdx.x; e < m; e += kThreads) {
    const int64_t i = ((e / inner) * c + ch) * inner + e % inner;
    dx[i] = tk * masked(g, relu_out, i) + ta * (x[i] - tmu) + tb;
  }
}
}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* invstd, float* var, int64_t n, int64_t c, int64_t inner, double eps, bool relu) {
  if (c == 0 || n * inner == 0) return;
  // DRAM: x once (its second read hits L2: one block holds the channel), y, and 5 per-channel values.
  LaunchCost cost = elementwise_cost(n * c * inner, 1, 1, 6);
  cost.bytes += 4.0 * 5 * c;
  BW_LAUNCH_COSTED(cost, batch_norm_forward_train_kernel, dim3(unsigned(c)), dim3(kThreads), 0, current_stream(), x,
                   gamma, beta, y, mean, invstd, var, n, c, inner, eps, relu);
}

void batch_norm_backward_train(const float* x, const float* g, const float* gamma, const float* mean,
                               const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                               int64_t inner, const float* relu_out) {
  if (c == 0 || n * inner == 0) return;
  // x and g once (L2 serves the second pass), the ReLU's output for its mask, dx
  LaunchCost cost = elementwise_cost(n * c * inner, relu_out ? 3 : 2, 1, 8);
  cost.bytes += 4.0 * 5 * c;
  BW_LAUNCH_COSTED(cost, batch_norm_backward_train_kernel, dim3(unsigned(c)), dim3(kThreads), 0, current_stream(), x, g,
                   gamma, mean, invstd, dx, dgamma, dbeta, n, c, inner, relu_out);
}

}  // namespace bulwark::cuda
