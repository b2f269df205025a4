// 2-D convolution on the CPU as im2col + GEMM, OpenMP over the batch.
//
//   forward:          y_n[O, L]   = W[O, CKK] * col(x_n)[CKK, L]            (+ bias)
//   backward-input:   dx_n        = col2im( W^T[CKK, O] * g_n[O, L] )
//   backward-weight:  dW[O, CKK]  = sum_n g_n[O, L] * col(x_n)^T[L, CKK]
// with L = OH*OW, CKK = C*KH*KW. FLOPs: 2*N*O*CKK*L for each of the three.
//
// A 1x1, stride-1, unpadded convolution skips im2col (col(x_n) is x_n itself).
// backward-weight sums over samples in a fixed number of chunks, each into its own buffer,
// then adds the chunks in order: the result does not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
bool is_pointwise(const ConvShape& s) { return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0; }

template <class T>
void im2col(const ConvShape& s, const T* x, T* col) {
  const int64_t L = s.oh * s.ow;
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        T* row = col + ((c * s.kh + ki) * s.kw + kj) * L;
        const T* plane = x + c * s.h * s.w;
        for (int64_t oy = 0; oy < s.oh; ++oy) {
          const int64_t iy = oy * s.stride - s.pad + ki;
          T* out = row + oy * s.ow;
          if (iy < 0 || iy >= s.h) {
            std::fill(out, out + s.ow, T(0));
            continue;
          }
          const T* in = plane + iy * s.w;
          for (int64_t ox = 0; ox < s.ow; ++ox) {
            const int64_t ix = ox * s.stride - s.pad + kj;
            out[ox] = (ix >= 0 && ix < s.w) ? in[ix] : T(0);
          }
        }
      }
}

template <class T>
void col2im(const ConvShape& s, const T* col, T* x) {
  const int64_t L = s.oh * s.ow;
  std::fill(x, x + s.c * s.h * s.w, T(0));
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const T* row = col + ((c * s.kh + ki) * s.kw + kj) * L;
        T* plane = x + c * s.h * s.w;
        for (int64_t oy = 0; oy < s.oh; ++oy) {
          const int64_t iy = oy * s.stride - s.pad + ki;
          if (iy < 0 || iy >= s.h) continue;
          T* out = plane + iy * s.w;
          const T* in = row + oy * s.ow;
          for (int64_t ox = 0; ox < s.ow; ++ox) {
            const int64_t ix = ox * s.stride - s.pad + kj;
            if (ix >= 0 && ix < s.w) out[ix] += in[ox];
          }
        }
      }
}

template <class T>
std::vector<T>& scratch(size_t n) {  // per-thread im2col buffer, reused across calls
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf;
}
}  // namespace

template <class T>
void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    const T* xn = x + n * s.c * s.h * s.w;
    const T* col = xn;
    if (!is_pointwise(s)) {
      T* buf = scratch<T>(CKK * L).data();
      im2col(s, xn, buf);
      col = buf;
    }
    T* yn = y + n * s.o * L;
    gemm<T>(false, false, s.o, L, CKK, T(1), w, CKK, col, L, T(0), yn, L);
    if (bias)
      for (int64_t o = 0; o < s.o; ++o)
        for (int64_t l = 0; l < L; ++l) yn[o * L + l] += bias[o];
  }
}

template <class T>
void conv2d_backward_input(const ConvShape& s, const T* g, const T* w, T* dx) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    const T* gn = g + n * s.o * L;
    T* dxn = dx + n * s.c * s.h * s.w;
    if (is_pointwise(s)) {
      gemm<T>(true, false, CKK, L, s.o, T(1), w, CKK, gn, L, T(0), dxn, L);
      continue;
    }
    T* col = scratch<T>(CKK * L).data();
    gemm<T>(true, false, CKK, L, s.o, T(1), w, CKK, gn, L, T(0), col, L);
    col2im(s, col, dxn);
  }
}

template <class T>
void conv2d_backward_weight(const ConvShape& s, const T* x, const T* g, T* dw) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw, wsize = s.o * CKK;
  if (s.n == 0) {
    std::fill(dw, dw + wsize, T(0));
    return;
  }
  const int64_t chunks = std::min<int64_t>(s.n, 8);
  const int64_t per = (s.n + chunks - 1) / chunks;
  std::vector<T> partial(static_cast<size_t>(chunks * wsize), T(0));
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    T* acc = partial.data() + ch * wsize;
    for (int64_t n = ch * per; n < std::min(s.n, (ch + 1) * per); ++n) {
      const T* xn = x + n * s.c * s.h * s.w;
      const T* col = xn;
      if (!is_pointwise(s)) {
        T* buf = scratch<T>(CKK * L).data();
        im2col(s, xn, buf);
        col = buf;
      }
      gemm<T>(false, true, s.o, CKK, L, T(1), g + n * s.o * L, L, col, L, T(1), acc, CKK);
    }
  }
  std::memcpy(dw, partial.data(), sizeof(T) * wsize);
  for (int64_t ch = 1; ch < chunks; ++ch) {
    const T* p = partial.data() + ch * wsize;
    for (int64_t i = 0; i < wsize; ++i) dw[i] += p[i];
  }
}

#define BW_INST(T)                                                                       \
  template void conv2d_forward<T>(const ConvShape&, const T*, const T*, const T*, T*);   \
  template void conv2d_backward_input<T>(const ConvShape&, const T*, const T*, T*);      \
  template void conv2d_backward_weight<T>(const ConvShape&, const T*, const T*, T*);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu
