// Pooling on the CPU. Max pooling only finds the argmax of each window; the engine then
// gathers the values, so its gradient (a scatter) and second derivative come for free.
// Average pooling counts padded zeros (PyTorch's count_include_pad=True); adaptive average
// pooling uses PyTorch's windows [floor(i*H/OH), ceil((i+1)*H/OH)).
#include <algorithm>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
// Below this many window taps a pooling runs single-threaded (an OpenMP region costs more).
constexpr int64_t kParallelTaps = 1 << 15;

// The taps [lo, hi) of a window starting at input position `start` (may be negative, in the
// padding) that fall inside [0, size): bounds once per window, not per tap.
struct Taps {
  int64_t lo, hi;
};
inline Taps taps(int64_t start, int64_t kernel, int64_t size) {
  return {std::max<int64_t>(0, -start), std::min(kernel, size - start)};
}
bool parallel(const PoolShape& s) { return s.planes * s.oh * s.ow * s.kernel * s.kernel >= kParallelTaps; }
}  // namespace

template <class T>
void max_pool2d_indices(const PoolShape& s, const T* x, int32_t* idx) {
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.planes; ++p) {
    const T* plane = x + p * s.h * s.w;
    int32_t* out = idx + p * s.oh * s.ow;
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      const int64_t y0 = oy * s.stride - s.pad;
      const Taps ty = taps(y0, s.kernel, s.h);
      for (int64_t ox = 0; ox < s.ow; ++ox) {
        const int64_t x0 = ox * s.stride - s.pad;
        const Taps tx = taps(x0, s.kernel, s.w);
        // Padding never wins: start from the first real tap (every window has one, pad <= k/2).
        int64_t best = (y0 + ty.lo) * s.w + x0 + tx.lo;
        T bv = plane[best];
        for (int64_t ki = ty.lo; ki < ty.hi; ++ki) {
          const T* row = plane + (y0 + ki) * s.w + x0;
          for (int64_t kj = tx.lo; kj < tx.hi; ++kj)
            if (row[kj] > bv) {
              bv = row[kj];
              best = (y0 + ki) * s.w + x0 + kj;
            }
        }
        out[oy * s.ow + ox] = static_cast<int32_t>(best);
      }
    }
  }
}

template <class T>
void avg_pool2d_forward(const PoolShape& s, const T* x, T* y) {
  const T inv = T(1) / T(s.kernel * s.kernel);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.planes; ++p) {
    const T* plane = x + p * s.h * s.w;
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      const int64_t y0 = oy * s.stride - s.pad;
      const Taps ty = taps(y0, s.kernel, s.h);
      for (int64_t ox = 0; ox < s.ow; ++ox) {
        const int64_t x0 = ox * s.stride - s.pad;
        const Taps tx = taps(x0, s.kernel, s.w);
        T acc = 0;
        for (int64_t ki = ty.lo; ki < ty.hi; ++ki)
          for (int64_t kj = tx.lo; kj < tx.hi; ++kj) acc += plane[(y0 + ki) * s.w + x0 + kj];
        y[(p * s.oh + oy) * s.ow + ox] = acc * inv;
      }
    }
  }
}

template <class T>
void avg_pool2d_backward(const PoolShape& s, const T* g, T* dx) {
  const T inv = T(1) / T(s.kernel * s.kernel);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.planes; ++p) {
    T* plane = dx + p * s.h * s.w;
    std::fill(plane, plane + s.h * s.w, T(0));
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      const int64_t y0 = oy * s.stride - s.pad;
      const Taps ty = taps(y0, s.kernel, s.h);
      for (int64_t ox = 0; ox < s.ow; ++ox) {
        const int64_t x0 = ox * s.stride - s.pad;
        const Taps tx = taps(x0, s.kernel, s.w);
        const T v = g[(p * s.oh + oy) * s.ow + ox] * inv;
        for (int64_t ki = ty.lo; ki < ty.hi; ++ki)
          for (int64_t kj = tx.lo; kj < tx.hi; ++kj) plane[(y0 + ki) * s.w + x0 + kj] += v;
      }
    }
  }
}

namespace {
inline int64_t win_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
inline int64_t win_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }
}  // namespace

template <class T>
void adaptive_avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (planes * std::max(h * w, oh * ow) >= kParallelTaps)
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t y0 = win_start(oy, h, oh), y1 = win_end(oy, h, oh);
        const int64_t x0 = win_start(ox, w, ow), x1 = win_end(ox, w, ow);
        T acc = 0;
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) acc += x[(p * h + iy) * w + ix];
        y[(p * oh + oy) * ow + ox] = acc / T((y1 - y0) * (x1 - x0));
      }
}

template <class T>
void adaptive_avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* g, T* dx) {
#pragma omp parallel for schedule(static) if (planes * std::max(h * w, oh * ow) >= kParallelTaps)
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t i = 0; i < h * w; ++i) dx[p * h * w + i] = 0;
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t y0 = win_start(oy, h, oh), y1 = win_end(oy, h, oh);
        const int64_t x0 = win_start(ox, w, ow), x1 = win_end(ox, w, ow);
        const T v = g[(p * oh + oy) * ow + ox] / T((y1 - y0) * (x1 - x0));
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) dx[(p * h + iy) * w + ix] += v;
      }
  }
}

#define BW_INST(T)                                                                                        \
  template void max_pool2d_indices<T>(const PoolShape&, const T*, int32_t*);                              \
  template void avg_pool2d_forward<T>(const PoolShape&, const T*, T*);                                    \
  template void avg_pool2d_backward<T>(const PoolShape&, const T*, T*);                                   \
  template void adaptive_avg_pool2d_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*); \
  template void adaptive_avg_pool2d_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu
