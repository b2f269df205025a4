#pragma once
// The operand loaders of the implicit-GEMM convolutions (the loader contract: gemm_tile.cuh),
// shared by conv.cu and interval.cu. With L = OH*OW, CKK = C*KH*KW, r = (c, ki, kj) a filter tap
// and col = n*L + p an output position of sample n:
//   forward           A = W [O, CKK] (a MatrixLoader), B = ForwardColumns (col_n[r, p])
//   backward-input    A = TransposedFilters (W^T per tap), B = GradientTaps
//   backward-weight   A = GradientRows (g as [O, n*L]), B = TransposedColumns (col^T)
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda::conv {

using cpu::ConvShape;

// The floats of a convolution's tensors, for the passes' launch costs (each moved once): the image
// x (or one half of a box, or dx), the filters, and the output y (or g).
struct ConvSizes {
  double image, filters, output;
  explicit ConvSizes(const ConvShape& s)
      : image(double(s.n * s.c * s.h * s.w)), filters(double(s.o * s.c * s.kh * s.kw)),
        output(double(s.n * s.o * s.oh * s.ow)) {}
};

// col_n[r, p] with col = n*L + p: the im2col element, read from x (0 in the padding).
__device__ inline float im2col_at(const ConvShape& s, const float* x, int64_t r, int64_t col) {
  const int64_t kk = s.kh * s.kw, L = s.oh * s.ow;
  const int64_t c = r / kk, ki = (r % kk) / s.kw, kj = r % s.kw;
  const int64_t n = col / L, p = col % L;
  const int64_t iy = (p / s.ow) * s.stride - s.pad + ki, ix = (p % s.ow) * s.stride - s.pad + kj;
  if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0f;
  return x[((n * s.c + c) * s.h + iy) * s.w + ix];
}

// forward B: (k = r, j = n*L + p); consecutive columns are consecutive ox (contiguous for stride 1).
struct ForwardColumns {
  ConvShape s;
  const float* x;
  __device__ float operator()(int64_t r, int64_t col) const { return im2col_at(s, x, r, col); }
  __device__ bool k_fastest() const { return false; }
};


// backward-input A: (i = c, k = o*KK + tap) -> W[o, c, tap]; taps of one filter are contiguous.
struct TransposedFilters {
  ConvShape s;
  const float* w;
  __device__ float operator()(int64_t c, int64_t k) const {
    const int64_t kk = s.kh * s.kw, o = k / kk, tap = k % kk;
    return w[(o * s.c + c) * kk + tap];
  }
  __device__ bool k_fastest() const { return true; }
};

// backward-input B: (k = o*KK + tap, j = n*H*W + iy*W + ix) -> g at the output position that tap
// (ki, kj) of input position (iy, ix) contributes to, or 0 when there is none.
struct GradientTaps {
  ConvShape s;
  const float* g;
  __device__ float operator()(int64_t k, int64_t col) const {
    const int64_t kk = s.kh * s.kw, o = k / kk, ki = (k % kk) / s.kw, kj = k % s.kw;
    const int64_t hw = s.h * s.w, n = col / hw, q = col % hw;
    const int64_t ty = q / s.w + s.pad - ki, tx = q % s.w + s.pad - kj;  // = oy*stride, ox*stride
    if (ty < 0 || tx < 0 || ty % s.stride != 0 || tx % s.stride != 0) return 0.0f;
    const int64_t oy = ty / s.stride, ox = tx / s.stride;
    if (oy >= s.oh || ox >= s.ow) return 0.0f;
    return g[((n * s.o + o) * s.oh + oy) * s.ow + ox];
  }
  __device__ bool k_fastest() const { return false; }
};


// backward-weight A: (i = o, k = n*L + p) -> g[n, o, p].
struct GradientRows {
  int64_t o, L;
  const float* g;
  __device__ float operator()(int64_t oc, int64_t k) const { return g[((k / L) * o + oc) * L + k % L]; }
  __device__ bool k_fastest() const { return true; }
};

// backward-weight B: (k = n*L + p, j = r) -> col_n[r, p], the im2col matrix transposed.
struct TransposedColumns {
  ConvShape s;
  const float* x;
  __device__ float operator()(int64_t k, int64_t r) const { return im2col_at(s, x, r, k); }
  __device__ bool k_fastest() const { return true; }
};

}  // namespace bulwark::cuda::conv
