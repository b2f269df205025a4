#pragma once
// The geometry of 2-d convolution and pooling: one definition of the shapes both backends take
// and of the output-size formula, for the kernels, the engine (which re-exports it to models/),
// the benches and the tests.
//
// A window of k taps moved by `stride` over an input of size `in`, padded by `pad` on each side,
// fits
//
//   out = (in + 2 pad - k) / stride + 1     times, provided in + 2 pad >= k.
//
// When the window does not fit, the integer division would still give 1 for small deficits
// (-stride < in + 2 pad - k < 0 truncates to 0), so the fit is tested, never inferred from out.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/common/hd.h"

namespace bulwark {

struct ConvShape {
  int64_t n, c, h, w;    // input
  int64_t o, kh, kw;     // filters
  int64_t stride, pad;
  int64_t oh, ow;        // output
};

struct PoolShape {
  int64_t planes, h, w;  // planes = N * C
  int64_t kernel, stride, pad;
  int64_t oh, ow;
};

// The formula above; 0 when the window does not fit (stride >= 1 and pad >= 0 assumed).
BW_HD constexpr int64_t conv_output_size(int64_t in, int64_t k, int64_t stride, int64_t pad) {
  return in + 2 * pad < k ? 0 : (in + 2 * pad - k) / stride + 1;
}

// conv_output_size, with the error for a window that does not fit (or a stride < 1, a padding
// < 0): std::invalid_argument "<what>: input size 3 (padding 0) is smaller than the kernel (4)".
inline int64_t checked_output_size(int64_t in, int64_t k, int64_t stride, int64_t pad, const std::string& what) {
  if (k < 1 || stride < 1 || pad < 0)
    throw std::invalid_argument(what + ": kernel " + std::to_string(k) + ", stride " + std::to_string(stride) +
                                " and padding " + std::to_string(pad) + " (need kernel >= 1, stride >= 1, padding >= 0)");
  if (in + 2 * pad < k)
    throw std::invalid_argument(what + ": input size " + std::to_string(in) + " (padding " + std::to_string(pad) +
                                ") is smaller than the kernel (" + std::to_string(k) + ")");
  return conv_output_size(in, k, stride, pad);
}

// x [n, c, h, w] convolved with o filters of kh x kw; throws as checked_output_size.
inline ConvShape make_conv_shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                            int64_t stride, int64_t pad, const std::string& what = "conv2d") {
  return {n, c, h, w, o, kh, kw, stride, pad, checked_output_size(h, kh, stride, pad, what),
          checked_output_size(w, kw, stride, pad, what)};
}

// The useful FLOPs of one pass of the convolution (each of forward, backward-input and
// backward-weight): 2 n O (C KH KW) (OH OW).
inline double conv_flops(const ConvShape& s) {
  return 2.0 * double(s.n * s.o) * double(s.c * s.kh * s.kw) * double(s.oh * s.ow);
}

// `planes` planes of h x w pooled by a k x k window; throws as checked_output_size.
inline PoolShape make_pool_shape(int64_t planes, int64_t h, int64_t w, int64_t k, int64_t stride, int64_t pad,
                            const std::string& what = "pool2d") {
  return {planes, h, w, k, stride, pad, checked_output_size(h, k, stride, pad, what),
          checked_output_size(w, k, stride, pad, what)};
}

}  // namespace bulwark
