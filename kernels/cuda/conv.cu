// 2-D convolution (NCHW, cross-correlation, square stride and padding) as implicit GEMM: the
// im2col matrix of kernels/cpu/conv.cpp is never built; the tile loop of gemm_tile.cuh asks a
// loader for its elements and the loader computes them from the image on the fly.
//
// With L = OH*OW, CKK = C*KH*KW and r = (c, ki, kj) a filter tap:
//   forward:          y[n, o, p]  = sum_r W[o, r] col_n[r, p] + bias[o]
//                     GEMM M = O, N = n*L (all samples side by side), K = CKK; bias in the epilogue
//   backward-input:   dx[n, c, q] = sum_{o, ki, kj} W[o, c, ki, kj] g[n, o, (iy + pad - ki) / stride, ...]
//                     GEMM M = C, N = n*H*W, K = O*KH*KW: a gather (taps whose output position is
//                     not an integer or out of range read 0), so no atomics and a deterministic sum
//   backward-weight:  dW[o, r]    = sum_{n, p} g[n, o, p] col_n[r, p]
//                     GEMM M = O, N = CKK, K = n*L
// where col_n[r, p] = x[n, c, oy*stride - pad + ki, ox*stride - pad + kj] (0 in the padding).
//
// FLOPs: 2 n O CKK L for each of the three. Bytes (ideal): x, W, and y/g once each:
// 4 (n C H W + O CKK + n O L); the tile loop re-reads x from L2 up to KH*KW times (each tap of
// each staged slice), which is the price of implicit GEMM with no halo-tile reuse.
//
// Versions:
//   0  cuDNN (conv2d_*_vendor, vendor.cu, real build only): the baseline for the benches. The
//      launchers conv2d_* run version 0 or 1 as kernel_source() says (kernel_source.h).
//   1  conv2d_*_ours: implicit GEMM on the 64x64x8 register-blocked tile loop. Each staged element
//      decodes its (c, ki, kj) and (n, oy, ox) with 64-bit integer divisions (a few dozen
//      instructions each on a GPU, which has no divider): the index math, not the FMAs, is the
//      likely bottleneck of this version. 32-bit indices where the sizes allow, and the taps'
//      decode from a small table instead of divisions, come first in version 2. Small O (the
//      first layer, O = 16..64) wastes part of the tile, and the backward-weight GEMM (small
//      M x N, huge K = n*L) has few blocks: split-K over the batch with a second reduction
//      pass is the next step for it.
#include <cuda_runtime.h>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/conv_loaders.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_tile.cuh"
#include "kernels/cuda/tensor_core.cuh"
#include "kernels/cuda/kernel_source.h"
#include "kernels/cuda/vendor.h"
#include "kernels/emu/launch.h"

#include <string>

namespace bulwark::cuda {

namespace {
using namespace conv;

// The forward's epilogue: bias and ReLU applied to each output as the tile loop stores it.
struct ForwardStore {
  int64_t o, L;
  const float* bias;
  float* y;
  bool relu;
  __device__ void operator()(int64_t oc, int64_t col, float acc) const {
    const int64_t n = col / L, p = col % L;
    y[(n * o + oc) * L + p] = ew::relu_if(bias ? acc + bias[oc] : acc, relu);
  }
};

struct InputStore {
  int64_t c, hw;
  float* dx;
  __device__ void operator()(int64_t ch, int64_t col, float acc) const {
    dx[((col / hw) * c + ch) * hw + col % hw] = acc;
  }
};

struct WeightStore {
  int64_t ckk;
  float* dw;
  __device__ void operator()(int64_t oc, int64_t r, float acc) const { dw[oc * ckk + r] = acc; }
};

// Each pass's launch cost: the M x N x K loop it runs (backward-input's gather multiplies the
// zero taps of a strided conv too: 2 M N K is what it executes, stride^2 times the useful work),
// moving the image, the filters and the output once: nCHW + O CKK + nOL floats.
LaunchCost conv_cost(const ConvShape& s, int64_t m, int64_t n, int64_t k) {
  const ConvSizes z(s);
  return gemm_cost(m, n, k, z.image + z.filters + z.output);
}
}  // namespace

void conv2d_forward_ours(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
  const int64_t L = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  run_tiles_in(math_precision(), tile::MatrixLoader{w, ckk, false, false}, ForwardColumns{s, x},
               ForwardStore{s.o, L, bias, y, relu}, s.o,
                  s.n * L, ckk, current_stream(), conv_cost(s, s.o, s.n * L, ckk));
}

void conv2d_backward_input_ours(const ConvShape& s, const float* g, const float* w, float* dx) {
  const int64_t hw = s.h * s.w;
  run_tiles_in(math_precision(), TransposedFilters{s, w}, GradientTaps{s, g}, InputStore{s.c, hw, dx}, s.c, s.n * hw,
                  s.o * s.kh * s.kw, current_stream(), conv_cost(s, s.c, s.n * hw, s.o * s.kh * s.kw));
}

void conv2d_backward_weight_ours(const ConvShape& s, const float* x, const float* g, float* dw) {
  const int64_t L = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  run_tiles_in(math_precision(), GradientRows{s.o, L, g}, TransposedColumns{s, x}, WeightStore{ckk, dw}, s.o, ckk, s.n * L,
                  current_stream(), conv_cost(s, s.o, ckk, s.n * L));
}

// The launchers run ours or cuDNN as kernel_source() says (kernel_source.h), keyed by the whole
// shape (and, for the forward, whether there is a bias to add; the fused ReLU is its own pass name).
namespace {
std::string conv_key(const char* pass, const ConvShape& s, bool bias) {
  return kernel_key(pass, {s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.pad, bias});
}
}  // namespace

void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
  const auto key = [&] { return conv_key(relu ? "conv2d_forward_relu" : "conv2d_forward", s, bias != nullptr); };
  launch_routed(key, RoutedOutput{y, s.n * s.o * s.oh * s.ow, false}, [&](KernelSource source, float* out) {
    if (source == KernelSource::vendor)
      conv2d_forward_vendor(s, x, w, bias, out, relu);
    else
      conv2d_forward_ours(s, x, w, bias, out, relu);
  });
}

void conv2d_backward_input(const ConvShape& s, const float* g, const float* w, float* dx) {
  const auto key = [&] { return conv_key("conv2d_backward_input", s, false); };
  launch_routed(key, RoutedOutput{dx, s.n * s.c * s.h * s.w, false}, [&](KernelSource source, float* out) {
    if (source == KernelSource::vendor)
      conv2d_backward_input_vendor(s, g, w, out);
    else
      conv2d_backward_input_ours(s, g, w, out);
  });
}

void conv2d_backward_weight(const ConvShape& s, const float* x, const float* g, float* dw) {
  const auto key = [&] { return conv_key("conv2d_backward_weight", s, false); };
  launch_routed(key, RoutedOutput{dw, s.o * s.c * s.kh * s.kw, false}, [&](KernelSource source, float* out) {
    if (source == KernelSource::vendor)
      conv2d_backward_weight_vendor(s, x, g, out);
    else
      conv2d_backward_weight_ours(s, x, g, out);
  });
}

}  // namespace bulwark::cuda
