// Pooling over planes of [planes, H, W] (planes = N*C), the contract of kernels/cpu/pool.cpp:
//
//   max_pool2d_indices:  idx[p, q] = flat in-plane index of the max of window q (first maximum
//                        in row-major tap order; padding never wins). The engine gathers the
//                        values and scatters the gradient, so max pooling needs no backward here.
//   avg_pool2d:          y[p, q] = sum_{taps in the image} x / (K*K)   (count_include_pad=True)
//                        dx[p, i] = sum_{windows q containing i} g[p, q] / (K*K)
//   adaptive_avg_pool2d: window oy covers rows [floor(oy H / OH), ceil((oy + 1) H / OH)),
//                        likewise for columns; y = mean over the window,
//                        dx[p, i] = sum_{windows q containing i} g[p, q] / |window q|
//
// FLOPs: ~K*K per output (forward), ~(K/stride)^2 per input (backward): negligible. Bytes: the
// input read once through L1/L2 (windows overlap when stride < K) and the output written once:
// 4 (P H W + P OH OW) (+ 4 P OH OW int32 indices for max). All of these are memory-bound; the
// target is the HBM roofline, i.e. time ~ bytes / 2-3 TB/s.
//
// Versions:
//   1  this file: one thread per output element for the forwards (grid-stride loop); one thread
//      per *input* element for the backwards, which gathers from the windows that contain it instead of
//      scattering with atomics: deterministic, no zero-fill pass, and each dx written once.
//      Consecutive threads take consecutive ox (or ix), so loads and stores coalesce.
#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

namespace {
// The range of output positions o in [0, out) whose window [o*stride - pad, o*stride - pad + k)
// contains input position i: o*stride in (i + pad - k, i + pad].
struct Windows {
  int64_t lo, hi;  // [lo, hi)
};
__device__ inline Windows windows_containing(int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t out) {
  const int64_t t = i + pad - k + 1;  // smallest o*stride allowed
  const int64_t lo = t <= 0 ? 0 : (t + stride - 1) / stride;
  const int64_t hi = (i + pad) / stride + 1;
  return {lo, hi < out ? hi : out};
}

// Adaptive windows, PyTorch's rule.
__device__ inline int64_t win_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
__device__ inline int64_t win_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

// t runs over [0, n), strided by the whole grid (blocks_for caps the grid; large n loops).
#define BW_FOR_EACH(t, n) \
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < (n); t += int64_t(gridDim.x) * blockDim.x)

// The taps [lo, hi) of a window starting at `start` (negative in the padding) inside [0, size).
struct Taps {
  int64_t lo, hi;
};
__device__ inline Taps taps(int64_t start, int64_t kernel, int64_t size) {
  return {start < 0 ? 0 : start, start + kernel < size ? start + kernel : size};
}

__global__ void max_pool2d_indices_kernel(PoolShape s, const float* __restrict__ x, int32_t* __restrict__ idx) {
  BW_FOR_EACH(t, s.planes * s.oh * s.ow) {
    const int64_t ox = t % s.ow, oy = (t / s.ow) % s.oh, p = t / (s.ow * s.oh);
    const float* plane = x + p * s.h * s.w;
    const Taps ty = taps(oy * s.stride - s.pad, s.kernel, s.h), tx = taps(ox * s.stride - s.pad, s.kernel, s.w);
    int64_t best = ty.lo * s.w + tx.lo;  // padding never wins: start from the first real tap
    float bv = plane[best];
    for (int64_t iy = ty.lo; iy < ty.hi; ++iy)
      for (int64_t ix = tx.lo; ix < tx.hi; ++ix) {
        const float v = plane[iy * s.w + ix];
        if (v > bv) {  // strict: the first maximum wins, as on the CPU
          bv = v;
          best = iy * s.w + ix;
        }
      }
    idx[t] = int32_t(best);
  }
}

__global__ void avg_pool2d_forward_kernel(PoolShape s, const float* __restrict__ x, float* __restrict__ y) {
  const float inv = 1.0f / float(s.kernel * s.kernel);
  BW_FOR_EACH(t, s.planes * s.oh * s.ow) {
    const int64_t ox = t % s.ow, oy = (t / s.ow) % s.oh, p = t / (s.ow * s.oh);
    const float* plane = x + p * s.h * s.w;
    const Taps ty = taps(oy * s.stride - s.pad, s.kernel, s.h), tx = taps(ox * s.stride - s.pad, s.kernel, s.w);
    float acc = 0.0f;
    for (int64_t iy = ty.lo; iy < ty.hi; ++iy)
      for (int64_t ix = tx.lo; ix < tx.hi; ++ix) acc += plane[iy * s.w + ix];
    y[t] = acc * inv;
  }
}

__global__ void avg_pool2d_backward_kernel(PoolShape s, const float* __restrict__ g, float* __restrict__ dx) {
  const float inv = 1.0f / float(s.kernel * s.kernel);
  BW_FOR_EACH(t, s.planes * s.h * s.w) {
    const int64_t ix = t % s.w, iy = (t / s.w) % s.h, p = t / (s.w * s.h);
    const Windows wy = windows_containing(iy, s.kernel, s.stride, s.pad, s.oh);
    const Windows wx = windows_containing(ix, s.kernel, s.stride, s.pad, s.ow);
    const float* gp = g + p * s.oh * s.ow;
    float acc = 0.0f;
    for (int64_t oy = wy.lo; oy < wy.hi; ++oy)
      for (int64_t ox = wx.lo; ox < wx.hi; ++ox) acc += gp[oy * s.ow + ox];
    dx[t] = acc * inv;
  }
}

__global__ void adaptive_avg_pool2d_forward_kernel(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                                   const float* __restrict__ x, float* __restrict__ y) {
  BW_FOR_EACH(t, planes * oh * ow) {
    const int64_t ox = t % ow, oy = (t / ow) % oh, p = t / (ow * oh);
    const int64_t y0 = win_start(oy, h, oh), y1 = win_end(oy, h, oh);
    const int64_t x0 = win_start(ox, w, ow), x1 = win_end(ox, w, ow);
    const float* plane = x + p * h * w;
    float acc = 0.0f;
    for (int64_t iy = y0; iy < y1; ++iy)
      for (int64_t ix = x0; ix < x1; ++ix) acc += plane[iy * w + ix];
    y[t] = acc / float((y1 - y0) * (x1 - x0));
  }
}

// The adaptive windows containing input row i are o in [floor(i OH / H), ceil((i + 1) OH / H)),
// give or take one at the ends for rounding; scanning one extra on each side with the exact
// test keeps it simple and correct whatever H and OH.
__global__ void adaptive_avg_pool2d_backward_kernel(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                                    const float* __restrict__ g, float* __restrict__ dx) {
  BW_FOR_EACH(t, planes * h * w) {
    const int64_t ix = t % w, iy = (t / w) % h, p = t / (w * h);
    const int64_t oy_lo = (iy * oh) / h, oy_hi = ((iy + 1) * oh + h - 1) / h;
    const int64_t ox_lo = (ix * ow) / w, ox_hi = ((ix + 1) * ow + w - 1) / w;
    const float* gp = g + p * oh * ow;
    float acc = 0.0f;
    for (int64_t oy = oy_lo > 0 ? oy_lo - 1 : 0; oy <= oy_hi && oy < oh; ++oy) {
      const int64_t y0 = win_start(oy, h, oh), y1 = win_end(oy, h, oh);
      if (iy < y0 || iy >= y1) continue;
      for (int64_t ox = ox_lo > 0 ? ox_lo - 1 : 0; ox <= ox_hi && ox < ow; ++ox) {
        const int64_t x0 = win_start(ox, w, ow), x1 = win_end(ox, w, ow);
        if (ix < x0 || ix >= x1) continue;
        acc += gp[oy * ow + ox] / float((y1 - y0) * (x1 - x0));
      }
    }
    dx[t] = acc;
  }
}
#undef BW_FOR_EACH
// The header's bytes: the input once, the output once (int32 indices for max), and FLOPs of K*K
// per output (forward) or per input (backward, an upper bound on the windows containing it).
LaunchCost pool_cost(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, double flops) {
  return {flops, 4.0 * static_cast<double>(planes) * static_cast<double>(h * w + oh * ow)};
}
}  // namespace

void max_pool2d_indices(const PoolShape& s, const float* x, int32_t* idx) {
  const int64_t n = s.planes * s.oh * s.ow;
  if (n == 0) return;
  BW_LAUNCH_COSTED(pool_cost(s.planes, s.h, s.w, s.oh, s.ow, double(n) * double(s.kernel * s.kernel)),
                   max_pool2d_indices_kernel, dim3(blocks_for(n)), dim3(kThreads), 0, current_stream(), s, x, idx);
}

void avg_pool2d_forward(const PoolShape& s, const float* x, float* y) {
  const int64_t n = s.planes * s.oh * s.ow;
  if (n == 0) return;
  BW_LAUNCH_COSTED(pool_cost(s.planes, s.h, s.w, s.oh, s.ow, double(n) * double(s.kernel * s.kernel)),
                   avg_pool2d_forward_kernel, dim3(blocks_for(n)), dim3(kThreads), 0, current_stream(), s, x, y);
}

void avg_pool2d_backward(const PoolShape& s, const float* g, float* dx) {
  const int64_t n = s.planes * s.h * s.w;
  if (n == 0) return;
  BW_LAUNCH_COSTED(pool_cost(s.planes, s.h, s.w, s.oh, s.ow, double(n) * double(s.kernel * s.kernel)),
                   avg_pool2d_backward_kernel, dim3(blocks_for(n)), dim3(kThreads), 0, current_stream(), s, g, dx);
}

void adaptive_avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* x,
                                 float* y) {
  const int64_t n = planes * oh * ow;
  if (n == 0) return;
  BW_LAUNCH_COSTED(pool_cost(planes, h, w, oh, ow, double(planes) * double(h * w)), adaptive_avg_pool2d_forward_kernel,
                   dim3(blocks_for(n)), dim3(kThreads), 0, current_stream(), planes, h, w, oh, ow, x, y);
}

void adaptive_avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* g,
                                  float* dx) {
  const int64_t n = planes * h * w;
  if (n == 0) return;
  BW_LAUNCH_COSTED(pool_cost(planes, h, w, oh, ow, double(planes) * double(h * w)), adaptive_avg_pool2d_backward_kernel,
                   dim3(blocks_for(n)), dim3(kThreads), 0, current_stream(), planes, h, w, oh, ow, g, dx);
}

}  // namespace bulwark::cuda
