// Interval bound propagation through conv and linear layers (IBP, CROWN-IBP's intermediate
// bounds): a box with center c and radius r >= 0 leaves an affine layer as
//
//   c' = W c + b,   r' = |W| r              (then, optionally, the interval ReLU of
//                                            kernels/common/interval.h in the epilogue)
//
// and its backward is dc = W^T gc, dr = |W|^T gr, dW = sum gc c^T + sign(W) sum gr r^T, db = sum gc.
// Every pass is one launch of the two-accumulator tile loop (dual_gemm_tiles, gemm_tile.cuh).
// The conv passes use the implicit-GEMM loaders of conv.cu (conv_loaders.cuh); the linear ones
// are dense. Layouts: out is [2, N, ...] (center, radius), or [4, N, ...] with the ReLU (the
// pre-activation box, then the ReLU's box, so CROWN-IBP can still read the pre-activation bounds).
//
// FLOPs: twice the layer's (4 N O CKK L for a conv; 4 N in o for a linear), + 8 per output element
// with the ReLU. Bytes (ideal): W once, c and r once each, out 2 (or 4) x N O L floats. Unfused,
// the same box takes two GEMM launches that read W (and |W|, a third tensor made by a third
// launch) separately, and the ReLU five elementwise launches over 2-4 x N O L floats each.
//
// Versions:
//   0  the unfused composition conv2d(c, W, b) + conv2d(r, |W|) (cuDNN or ours twice; the bench's
//      baseline row "interval conv unfused").
//   1  this file: one dual tile loop per pass. W's slice is staged once and |w| taken in
//      registers. The two im2col operands decode the same (c, ki, kj) and (n, oy, ox) for the same
//      element, twice: a loader that stages both from one decode is the next step, then the
//      float4 staging and double buffering that gemm.cu lists.
#include <cuda_runtime.h>

#include "kernels/common/interval.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/conv_loaders.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_tile.cuh"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

namespace {
using namespace conv;

// The forward epilogue of both layers: element (row, col) of the output GEMM is output `index`
// of channel `channel`; `count` elements per box half.
struct BoxOut {
  const float* bias;
  bool relu;
  int64_t count;
  float* out;
  __device__ void put(int64_t index, int64_t channel, float center, float radius) const {
    if (bias) center += bias[channel];
    out[index] = center;
    out[count + index] = radius;
    if (relu) interval::relu(center, radius, out + 2 * count + index, out + 3 * count + index);
  }
};

struct ConvBoxStore {
  int64_t o, L;
  BoxOut box;
  __device__ void operator()(int64_t oc, int64_t col, float center, float radius) const {
    box.put((col / L * o + oc) * L + col % L, oc, center, radius);
  }
};

struct ConvInputStore {
  int64_t c, hw;
  float *dc, *dr;
  __device__ void operator()(int64_t ch, int64_t col, float gc, float gr) const {
    const int64_t i = ((col / hw) * c + ch) * hw + col % hw;
    dc[i] = gc;
    dr[i] = gr;
  }
};

// dW = the center part + sign(W) * the radius part, element (row, col) of W as [rows, cols].
struct SignedWeightStore {
  int64_t cols;
  const float* w;
  float* dw;
  __device__ void operator()(int64_t row, int64_t col, float center, float radius) const {
    const int64_t i = row * cols + col;
    dw[i] = center + interval::sign(w[i]) * radius;
  }
};

// The linear passes compute the transposed products (W as A, so |W| comes from the staged A
// slice): out^T [o, n], dx^T [in, n]. Element (row, col) is sample col's feature row.
struct LinearBoxStore {
  int64_t o;
  BoxOut box;
  __device__ void operator()(int64_t j, int64_t sample, float center, float radius) const {
    box.put(sample * o + j, j, center, radius);
  }
};

struct LinearInputStore {
  int64_t in;
  float *dc, *dr;
  __device__ void operator()(int64_t i, int64_t sample, float gc, float gr) const {
    dc[sample * in + i] = gc;
    dr[sample * in + i] = gr;
  }
};

__global__ void interval_relu_backward_kernel(int64_t count, const float* pre, const float* g, float* gpre) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float gc, gr;
    interval::relu_backward(pre[i], pre[count + i], g[2 * count + i], g[3 * count + i], &gc, &gr);
    gpre[i] = g[i] + gc;
    gpre[count + i] = g[count + i] + gr;
  }
}
// The elided last layer (kernels/cpu/cpu_kernels.h, elided_radius_*): one thread per output.
// Per output in FLOPs 3 in; W's rows are read by every sample (from L2: W is k x in, ~20 KB for
// the IBP models' last layer), r once per class.
__global__ void elided_radius_kernel(int64_t n, int64_t in, int64_t k, const float* r, const float* w,
                                     const int32_t* labels, float* out) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * k; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / k, j = o % k;
    const float *wj = w + j * in, *wy = w + int64_t(labels[s]) * in, *rs = r + s * in;
    float acc = 0.0f;
    for (int64_t i = 0; i < in; ++i) acc += fabsf(wj[i] - wy[i]) * rs[i];
    out[o] = acc;
  }
}

// dr[s, i] = sum_j g[s, j] |W_j,i - W_y,i|: one thread per (s, i).
__global__ void elided_radius_input_kernel(int64_t n, int64_t in, int64_t k, const float* w, const int32_t* labels,
                                           const float* g, float* dr) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * in; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / in, i = o % in;
    const float wy = w[int64_t(labels[s]) * in + i];
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += g[s * k + j] * fabsf(w[j * in + i] - wy);
    dr[o] = acc;
  }
}

// dW[c, i] = sum_s r[s, i] (g[s, c] sign(W_c,i - W_y,i) - [c == y_s] sum_j g[s, j] sign(W_j,i - W_y,i)):
// one thread per weight, the samples in order (no atomics: deterministic).
__global__ void elided_radius_weight_kernel(int64_t n, int64_t in, int64_t k, const float* r, const float* w,
                                            const int32_t* labels, const float* g, float* dw) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < k * in; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = o / in, i = o % in;
    float acc = 0.0f;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t y = labels[s];
      const float wy = w[y * in + i], rs = r[s * in + i];
      if (c != y) {
        acc += g[s * k + c] * interval::sign(w[o] - wy) * rs;
        continue;
      }
      float total = 0.0f;
      for (int64_t j = 0; j < k; ++j)
        if (j != y) total += g[s * k + j] * interval::sign(w[j * in + i] - wy);
      acc -= total * rs;
    }
    dw[o] = acc;
  }
}
}  // namespace

void elided_radius_forward(int64_t n, int64_t in, int64_t k, const float* r, const float* w, const int32_t* labels,
                           float* out) {
  // Each of the n k outputs sums |W_j - W_y| r over `in` (3 flops a term); r, W, labels and out move once.
  const LaunchCost cost{3.0 * double(n * k) * double(in), 4.0 * (double(n * in) + double(k * in) + double(n) + double(n * k))};
  if (n * k > 0)
    BW_LAUNCH_COSTED(cost, elided_radius_kernel, blocks_for(n * k), kThreads, 0, current_stream(), n, in, k, r, w,
                     labels, out);
}

void elided_radius_backward(int64_t n, int64_t in, int64_t k, const float* r, const float* w, const int32_t* labels,
                            const float* g, float* dr, float* dw) {
  // dr: n in outputs, k terms each; dW: k in outputs, n terms each (the label's row k terms more).
  const double moved = double(n * in) + double(k * in) + double(n) + double(n * k);
  if (dr && n * in > 0)
    BW_LAUNCH_COSTED((LaunchCost{4.0 * double(n * in) * double(k), 4.0 * moved}), elided_radius_input_kernel,
                     blocks_for(n * in), kThreads, 0, current_stream(), n, in, k, w, labels, g, dr);
  if (dw && k * in > 0)
    BW_LAUNCH_COSTED((LaunchCost{4.0 * double(k * in) * double(n) * 2, 4.0 * moved}), elided_radius_weight_kernel,
                     blocks_for(k * in), kThreads, 0, current_stream(), n, in, k, r, w, labels, g, dw);
}

void interval_conv2d_forward(const ConvShape& s, const float* c, const float* r, const float* w, const float* bias,
                             bool relu, float* out) {
  const int64_t L = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  const ConvSizes z(s);
  LaunchCost cost = gemm_cost(s.o, s.n * L, ckk, z.filters + 2 * z.image + (relu ? 4 : 2) * z.output, 2);
  if (relu) cost.flops += 8 * z.output;
  tile::run_dual_tiles(tile::MatrixLoader{w, ckk, false, false}, tile::AbsOfA1{}, ForwardColumns{s, c},
                       ForwardColumns{s, r}, ConvBoxStore{s.o, L, {bias, relu, s.n * s.o * L, out}}, s.o, s.n * L, ckk,
                       current_stream(), cost);
}

void interval_conv2d_backward_input(const ConvShape& s, const float* gc, const float* gr, const float* w, float* dc,
                                    float* dr) {
  const int64_t hw = s.h * s.w;
  const ConvSizes z(s);
  tile::run_dual_tiles(TransposedFilters{s, w}, tile::AbsOfA1{}, GradientTaps{s, gc}, GradientTaps{s, gr},
                       ConvInputStore{s.c, hw, dc, dr}, s.c, s.n * hw, s.o * s.kh * s.kw, current_stream(),
                       gemm_cost(s.c, s.n * hw, s.o * s.kh * s.kw, z.filters + 2 * z.output + 2 * z.image, 2));
}

void interval_conv2d_backward_weight(const ConvShape& s, const float* c, const float* r, const float* gc,
                                     const float* gr, const float* w, float* dw) {
  const int64_t L = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  const ConvSizes z(s);
  tile::run_dual_tiles(GradientRows{s.o, L, gc}, GradientRows{s.o, L, gr}, TransposedColumns{s, c},
                       TransposedColumns{s, r}, SignedWeightStore{ckk, w, dw}, s.o, ckk, s.n * L, current_stream(),
                       gemm_cost(s.o, ckk, s.n * L, 2 * z.output + 2 * z.image + 2 * z.filters, 2));
}

void interval_linear_forward(int64_t n, int64_t in, int64_t o, const float* c, const float* r, const float* w,
                             const float* bias, bool relu, float* out) {
  // out^T [o, n] = W [o, in] c^T [in, n]: c^T's element (k, sample) is c[sample * in + k].
  LaunchCost cost = gemm_cost(o, n, in, double(o * in) + 2.0 * double(n * in) + (relu ? 4 : 2) * double(n * o), 2);
  if (relu) cost.flops += 8.0 * double(n * o);
  tile::run_dual_tiles(tile::MatrixLoader{w, in, false, false}, tile::AbsOfA1{}, tile::MatrixLoader{c, in, true, true},
                       tile::MatrixLoader{r, in, true, true}, LinearBoxStore{o, {bias, relu, n * o, out}}, o, n, in,
                       current_stream(), cost);
}

void interval_linear_backward_input(int64_t n, int64_t in, int64_t o, const float* gc, const float* gr,
                                    const float* w, float* dc, float* dr) {
  // dc^T [in, n] = W^T [in, o] gc^T [o, n].
  tile::run_dual_tiles(tile::MatrixLoader{w, in, true, false}, tile::AbsOfA1{}, tile::MatrixLoader{gc, o, true, true},
                       tile::MatrixLoader{gr, o, true, true}, LinearInputStore{in, dc, dr}, in, n, o, current_stream(),
                       gemm_cost(in, n, o, double(o * in) + 2.0 * double(n * o) + 2.0 * double(n * in), 2));
}

void interval_linear_backward_weight(int64_t n, int64_t in, int64_t o, const float* c, const float* r,
                                     const float* gc, const float* gr, const float* w, float* dw) {
  // dW [o, in] = gc^T [o, n] c [n, in] + sign(W) gr^T r.
  tile::run_dual_tiles(tile::MatrixLoader{gc, o, true, false}, tile::MatrixLoader{gr, o, true, false},
                       tile::MatrixLoader{c, in, false, true}, tile::MatrixLoader{r, in, false, true},
                       SignedWeightStore{in, w, dw}, o, in, n, current_stream(),
                       gemm_cost(o, in, n, 2.0 * double(n * o) + 2.0 * double(n * in) + 2.0 * double(o * in), 2));
}

void interval_relu_backward(int64_t count, const float* pre, const float* g, float* gpre) {
  // Per element of a box half: pre's center and radius and g's four values in, gpre's two out.
  if (count > 0)
    BW_LAUNCH_COSTED(elementwise_cost(count, 6, 2, 16), interval_relu_backward_kernel, blocks_for(count), kThreads, 0,
                     current_stream(), count, pre, g, gpre);
}

}  // namespace bulwark::cuda
