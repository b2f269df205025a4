// The symbolic-interval ReLU on CUDA (models/symbolic.h; the math in kernels/common/symbolic.h,
// the CPU loops in kernels/cpu/symbolic.cpp). Rows c, r [n, d + 3, m]: d coefficient rows, the
// constants, the "zero" row that carries the biases, the IBP box; the input box bc, br [n, d].
//
// One thread per (sample, neuron), looping over the sample's d rows: neighbouring threads read
// neighbouring neurons of a row, so every row read is coalesced, and a thread keeps its neuron's
// sums in registers. Grid-stride loops, 256 threads a block.
//
// FLOPs per sample: bounds 8 d m forward, ~12 d m backward; relu 2 d m forward, 4 d m backward.
// Bytes: 2 (d + 3) m floats read per pass (twice for the bounds' backward, which recomputes the
// sums it branches on rather than storing them), the output rows written.
//
// Versions:
//   0  the engine-op composition (models/symbolic.h's formulas as some twenty elementwise ops
//      and a reduction, each a launch and a full [n, d, m] temporary): what create_graph runs.
//   1  this file: one launch per pass, no temporaries. A block per (sample, neuron tile) that
//      stages bc, br in shared memory would save their d reads per thread (they are broadcast
//      reads from L1 now).
#include <cuda_runtime.h>

#include "kernels/common/symbolic.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

namespace {

struct Sums {
  float lower, upper;
};

// The symbolic bounds of (s, j) before the intersection with the IBP row.
__device__ Sums symbolic_sums(int64_t s, int64_t j, int64_t d, int64_t m, const float* c, const float* r,
                              const float* bc, const float* br) {
  const int64_t rows = d + 3;
  const float zc = c[(s * rows + d + 1) * m + j];
  float lo_sum = 0.0f, up_sum = 0.0f;
  for (int64_t i = 0; i < d; ++i) {
    const int64_t k = (s * rows + i) * m + j;
    const float cc = c[k] - zc, up = cc + r[k], lo = cc - r[k];
    up_sum += up * bc[s * d + i] + fabsf(up) * br[s * d + i];
    lo_sum += lo * bc[s * d + i] - fabsf(lo) * br[s * d + i];
  }
  const int64_t k0 = (s * rows + d) * m + j;
  return {lo_sum + c[k0] - r[k0], up_sum + c[k0] + r[k0]};
}

__global__ void symbolic_bounds_kernel(int64_t n, int64_t d, int64_t m, const float* c, const float* r,
                                       const float* bc, const float* br, float* bounds) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * m; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / m, j = o % m, ki = (s * (d + 3) + d + 2) * m + j;
    const Sums b = symbolic_sums(s, j, d, m, c, r, bc, br);
    const float il = c[ki] - r[ki], iu = c[ki] + r[ki];
    bounds[o] = b.lower >= il ? b.lower : il;
    bounds[n * m + o] = b.upper <= iu ? b.upper : iu;
  }
}

__global__ void symbolic_bounds_backward_kernel(int64_t n, int64_t d, int64_t m, const float* c, const float* r,
                                                const float* bc, const float* br, const float* g, float* dc, float* dr) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * m; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / m, j = o % m, rows = d + 3, ki = (s * rows + d + 2) * m + j;
    const Sums b = symbolic_sums(s, j, d, m, c, r, bc, br);
    const bool sym_l = b.lower >= c[ki] - r[ki], sym_u = b.upper <= c[ki] + r[ki];
    const float gl = g[o], gu = g[n * m + o];
    const float gL = sym_l ? gl : 0.0f, gU = sym_u ? gu : 0.0f, il = sym_l ? 0.0f : gl, iu = sym_u ? 0.0f : gu;
    dc[ki] = il + iu;
    dr[ki] = iu - il;
    const float zc = c[(s * rows + d + 1) * m + j];
    float zsum = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t k = (s * rows + i) * m + j;
      const float cc = c[k] - zc, up = cc + r[k], lo = cc - r[k];
      const float g_up = gU * (bc[s * d + i] + symbolic::sign(up) * br[s * d + i]);
      const float g_lo = gL * (bc[s * d + i] - symbolic::sign(lo) * br[s * d + i]);
      dc[k] = g_up + g_lo;
      dr[k] = g_up - g_lo;
      zsum += g_up + g_lo;
    }
    const int64_t k0 = (s * rows + d) * m + j;
    dc[k0] = gU + gL;
    dr[k0] = gU - gL;
    dc[k0 + m] = -zsum;
    dr[k0 + m] = 0.0f;
  }
}

__global__ void symbolic_relu_kernel(int64_t n, int64_t d, int64_t m, const float* c, const float* r,
                                     const float* bounds, float* out) {
  const int64_t rows = d + 3, half = n * rows * m;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * m; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / m, j = o % m;
    const symbolic::Relaxation<float> x = symbolic::relax(bounds[o], bounds[n * m + o]);
    const float zc = c[(s * rows + d + 1) * m + j];
    for (int64_t i = 0; i < d; ++i) {
      const int64_t k = (s * rows + i) * m + j;
      out[k] = x.lambda * (c[k] - zc);
      out[half + k] = x.lambda * r[k];
    }
    const int64_t k0 = (s * rows + d) * m + j;
    out[k0] = x.lambda * c[k0] + x.half_offset;
    out[half + k0] = x.lambda * r[k0] + x.half_offset;
    out[k0 + m] = out[half + k0 + m] = 0.0f;
    out[k0 + 2 * m] = x.ibp_c;
    out[half + k0 + 2 * m] = x.ibp_r;
  }
}

__global__ void symbolic_relu_backward_kernel(int64_t n, int64_t d, int64_t m, const float* c, const float* r,
                                              const float* bounds, const float* g, float* dc, float* dr,
                                              float* dbounds) {
  const int64_t rows = d + 3, half = n * rows * m;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n * m; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = o / m, j = o % m;
    const float l = bounds[o], u = bounds[n * m + o];
    const float lambda = symbolic::relax(l, u).lambda;
    const float zc = c[(s * rows + d + 1) * m + j];
    float g_lambda = 0.0f, gz = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t k = (s * rows + i) * m + j;
      const float gc = g[k], gr = g[half + k];
      g_lambda += gc * (c[k] - zc) + gr * r[k];
      dc[k] = lambda * gc;
      dr[k] = lambda * gr;
      gz += gc;
    }
    const int64_t k0 = (s * rows + d) * m + j;
    const float gc0 = g[k0], gr0 = g[half + k0];
    g_lambda += gc0 * c[k0] + gr0 * r[k0];
    dc[k0] = lambda * gc0;
    dr[k0] = lambda * gr0;
    dc[k0 + m] = -lambda * gz;
    dr[k0 + m] = 0.0f;
    dc[k0 + 2 * m] = dr[k0 + 2 * m] = 0.0f;
    symbolic::relax_backward(l, u, g_lambda, gc0 + gr0, g[k0 + 2 * m], g[half + k0 + 2 * m], dbounds + o,
                             dbounds + n * m + o);
  }
}

// The header's counts for n samples: `flops_each` x n d m, and `row_sets` passes over the n rows
// sets [n, d + 3, m] (each a c or r, g, dc or dr) plus `extra` floats per (sample, neuron).
LaunchCost symbolic_cost(int64_t n, int64_t d, int64_t m, double flops_each, int row_sets, int extra) {
  const double nm = double(n) * double(m);
  return {flops_each * nm * double(d), 4.0 * nm * (row_sets * double(d + 3) + extra)};
}
}  // namespace

void symbolic_bounds_forward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bc,
                             const float* br, float* bounds) {
  if (n * m > 0)
    BW_LAUNCH_COSTED(symbolic_cost(n, d, m, 8, 2, 2), symbolic_bounds_kernel, blocks_for(n * m), kThreads, 0,
                     current_stream(), n, d, m, c, r, bc, br, bounds);
}

void symbolic_bounds_backward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bc,
                              const float* br, const float* g, float* dc, float* dr) {
  if (n * m > 0)
    BW_LAUNCH_COSTED(symbolic_cost(n, d, m, 12, 4, 2), symbolic_bounds_backward_kernel, blocks_for(n * m), kThreads, 0,
                     current_stream(), n, d, m, c, r, bc, br, g, dc, dr);
}

void symbolic_relu_forward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bounds,
                           float* out) {
  if (n * m > 0)
    BW_LAUNCH_COSTED(symbolic_cost(n, d, m, 2, 4, 2), symbolic_relu_kernel, blocks_for(n * m), kThreads, 0,
                     current_stream(), n, d, m, c, r, bounds, out);
}

void symbolic_relu_backward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bounds,
                            const float* g, float* dc, float* dr, float* dbounds) {
  if (n * m > 0)
    BW_LAUNCH_COSTED(symbolic_cost(n, d, m, 4, 6, 4), symbolic_relu_backward_kernel, blocks_for(n * m), kThreads, 0,
                     current_stream(), n, d, m, c, r, bounds, g, dc, dr, dbounds);
}

}  // namespace bulwark::cuda
