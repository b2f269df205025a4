// Training-mode batch normalisation, fused: forward and backward in two or three passes over
// the activations instead of the ~10 (forward) and ~20 (backward) elementwise passes, broadcasts
// and reductions of the same math written with tensor ops.
//
// x is viewed as [n, c, inner] (inner = H*W for [N,C,H,W], 1 for [N,C]); every statistic is
// per channel over the m = n * inner values of that channel.
//
//   forward:   mean = sum x / m;  var = sum (x - mean)^2 / m  (biased)
//              invstd = 1 / sqrt(var + eps);  y = (x - mean) * invstd * gamma + beta
//   backward:  xhat = (x - mean) * invstd;  dbeta = sum g;  dgamma = sum g * xhat
//              dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m)
//
// Each direction is two passes over the channel: one that reduces (forward: sum and sum of
// squares of x - K with K the channel's first value, so var = E[(x-K)^2] - E[x-K]^2 does not
// cancel when |mean| >> std; backward: sum g and sum g * (x - mean) together) and one that
// writes. A first version took three passes forward and three backward (one per sum), and ran
// at about half PyTorch's speed; the passes, not the arithmetic, are the cost.
//
// FLOPs per element: forward ~6, backward ~8; bytes (f32): forward 12 (2 reads, 1 write),
// backward 20 (x and g read twice, dx written). One channel's values (n * inner * 4 bytes,
// 512 KiB for cnn7's widest layer) stay in L2 between its two passes.
//
// With a ReLU after it (batch_norm_relu, PreAct blocks and conv-BN-ReLU stacks) the forward's
// writing pass applies it, and the backward reads g through the ReLU's mask (its output y > 0),
// so neither direction spends a pass over the activations on the ReLU.
//
// Sums run per row (one sample's `inner` values, in T with the vectoriser's fixed lane order)
// and rows are added in double in sample order. Channels are split over threads (in blocks, see
// channel_block) and each channel is summed by one thread, so no result depends on the thread
// count.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/common/elementwise.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements; below this one thread does it all

// The row of sample s of channel ch starts at (s * c + ch) * inner.
struct ChannelRows {
  int64_t n, c, inner;
  int64_t row(int64_t s, int64_t ch) const { return (s * c + ch) * inner; }
};

// Channels go to threads in blocks of channel_block(inner), and each pass visits a block's rows
// sample by sample: one sample's rows of the block are kb * inner contiguous values (>= 256 when
// inner is small). Channel by channel, a 4x4 map's rows were single 64-byte lines 32 KiB apart,
// and every pass stalled on each (PreAct-ResNet-18's layer4 BN+ReLU ran 1.6x slower fused than
// as three kernels). Each channel's sums are still its rows' sums added in sample order.
constexpr int64_t kMaxBlock = 64;
inline int64_t channel_block(int64_t inner) { return std::clamp<int64_t>(256 / std::max<int64_t>(inner, 1), 1, kMaxBlock); }

// One row of the backward, g read through the fused ReLU's mask when kMask (g where the ReLU's
// output y was positive, ew's relu_grad). The mask is a template argument, not a branch in the
// loop, so both versions vectorise alike and sum in the same order: BN+ReLU's gradients are the
// bits of relu_grad followed by batch_norm's backward.
template <bool kMask, class T>
inline T masked(const T* g, const T* y, int64_t i) {
  if constexpr (kMask) return ew::binary_apply(ew::Binary::relu_grad, g[i], y[i]);
  return g[i];
}

// sum g and sum g (x - mu) over a row.
template <bool kMask, class T>
inline void row_sums(const T* x, const T* g, const T* y, T mu, int64_t inner, T& sum_g, T& sum_gxc) {
  T row_g = 0, row_gxc = 0;
#pragma omp simd reduction(+ : row_g, row_gxc)
  for (int64_t i = 0; i < inner; ++i) {
    const T gi = masked<kMask>(g, y, i);
    row_g += gi;
    row_gxc += gi * (x[i] - mu);
  }
  sum_g = row_g;
  sum_gxc = row_gxc;
}

// dx = k g + a (x - mu) + b over a row.
template <bool kMask, class T>
inline void row_dx(const T* x, const T* g, const T* y, T mu, T k, T a, T b, int64_t inner, T* dx) {
#pragma omp simd
  for (int64_t i = 0; i < inner; ++i) dx[i] = k * masked<kMask>(g, y, i) + a * (x[i] - mu) + b;
}
}  // namespace

template <class T>
void batch_norm_forward_train(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* invstd, T* var,
                              int64_t n, int64_t c, int64_t inner, double eps, bool relu) {
  const ChannelRows rows{n, c, inner};
  const double m = static_cast<double>(n * inner);
  const int64_t kb = channel_block(inner), blocks = (c + kb - 1) / kb;
#pragma omp parallel for schedule(static) if (n * c * inner >= kParallelMin)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t c0 = bi * kb, cb = std::min(kb, c - c0);
    T shift[kMaxBlock], tmu[kMaxBlock], scale[kMaxBlock];
    double sum[kMaxBlock] = {}, sum_sq[kMaxBlock] = {};
    for (int64_t j = 0; j < cb; ++j) shift[j] = x[rows.row(0, c0 + j)];
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cb; ++j) {
        const T* xr = x + rows.row(s, c0 + j);
        const T sh = shift[j];
        T row_sum = 0, row_sq = 0;
#pragma omp simd reduction(+ : row_sum, row_sq)
        for (int64_t i = 0; i < inner; ++i) {
          const T d = xr[i] - sh;
          row_sum += d;
          row_sq += d * d;
        }
        sum[j] += static_cast<double>(row_sum);
        sum_sq[j] += static_cast<double>(row_sq);
      }
    for (int64_t j = 0; j < cb; ++j) {
      const int64_t ch = c0 + j;
      const double centred_mean = sum[j] / m;
      const double v = std::max(sum_sq[j] / m - centred_mean * centred_mean, 0.0);
      const double mu = static_cast<double>(shift[j]) + centred_mean, is = 1.0 / std::sqrt(v + eps);
      mean[ch] = static_cast<T>(mu);
      var[ch] = static_cast<T>(v);
      invstd[ch] = static_cast<T>(is);
      tmu[j] = static_cast<T>(mu);
      scale[j] = static_cast<T>(is * static_cast<double>(gamma[ch]));
    }
    // y = (x - mean) * scale + beta, scale = invstd * gamma. Folding mean into the shift
    // (x * scale + shift) would save a subtraction but cancel badly when |mean| >> std.
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cb; ++j) {
        const T* xr = x + rows.row(s, c0 + j);
        T* yr = y + rows.row(s, c0 + j);
        const T mu = tmu[j], sc = scale[j], b = beta[c0 + j];
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) yr[i] = ew::relu_if((xr[i] - mu) * sc + b, relu);
      }
  }
}

template <class T>
void batch_norm_backward_train(const T* x, const T* g, const T* gamma, const T* mean, const T* invstd, T* dx,
                               T* dgamma, T* dbeta, int64_t n, int64_t c, int64_t inner, const T* relu_out) {
  const ChannelRows rows{n, c, inner};
  const double m = static_cast<double>(n * inner);
  const int64_t kb = channel_block(inner), blocks = (c + kb - 1) / kb;
#pragma omp parallel for schedule(static) if (n * c * inner >= kParallelMin)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t c0 = bi * kb, cb = std::min(kb, c - c0);
    double sum_g[kMaxBlock] = {}, sum_gxc[kMaxBlock] = {};  // sum g, sum g * (x - mean)
    T tk[kMaxBlock], ta[kMaxBlock], tb[kMaxBlock];
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cb; ++j) {
        const int64_t r = rows.row(s, c0 + j);
        T row_g, row_gxc;
        if (relu_out)
          row_sums<true>(x + r, g + r, relu_out + r, mean[c0 + j], inner, row_g, row_gxc);
        else
          row_sums<false>(x + r, g + r, relu_out, mean[c0 + j], inner, row_g, row_gxc);
        sum_g[j] += static_cast<double>(row_g);
        sum_gxc[j] += static_cast<double>(row_gxc);
      }
    for (int64_t j = 0; j < cb; ++j) {
      const int64_t ch = c0 + j;
      const double is = static_cast<double>(invstd[ch]), sum_gxhat = is * sum_gxc[j];
      if (dbeta) dbeta[ch] = static_cast<T>(sum_g[j]);
      if (dgamma) dgamma[ch] = static_cast<T>(sum_gxhat);
      // dx = k * (g - sum_g / m - (x - mean) * invstd * sum_gxhat / m), k = gamma * invstd
      //    = k * g + a * (x - mean) + b,  a = -k * invstd * sum_gxhat / m,  b = -k * sum_g / m
      const double k = static_cast<double>(gamma[ch]) * is;
      tk[j] = static_cast<T>(k);
      ta[j] = static_cast<T>(-k * is * sum_gxhat / m);
      tb[j] = static_cast<T>(-k * sum_g[j] / m);
    }
    if (!dx) continue;
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < cb; ++j) {
        const int64_t r = rows.row(s, c0 + j);
        if (relu_out)
          row_dx<true>(x + r, g + r, relu_out + r, mean[c0 + j], tk[j], ta[j], tb[j], inner, dx + r);
        else
          row_dx<false>(x + r, g + r, relu_out, mean[c0 + j], tk[j], ta[j], tb[j], inner, dx + r);
      }
  }
}

#define BW_INST(T)                                                                                            \
  template void batch_norm_forward_train<T>(const T*, const T*, const T*, T*, T*, T*, T*, int64_t, int64_t,   \
                                            int64_t, double, bool);                                          \
  template void batch_norm_backward_train<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*,    \
                                             int64_t, int64_t, int64_t, const T*);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu
