// Reductions and index ops over a tensor viewed as [outer, n, inner] (the CPU reference is
// kernels/cpu/reduce.cpp): every reduction or gather along one axis is this shape after a reshape.
//
//   sum_middle:          y[o, i] = scale * sum_k x[o, k, i]   (scale: a mean's 1/n, else 1)
//   argmax_middle:       idx[o, i] = first k maximising x[o, k, i] (NaN never beats a number)
//   gather_middle:       out[o, k, i] = x[o, idx[o, k, i], i]
//   scatter_add_middle:  out[o, idx[o, k, i], i] += src[o, k, i]
// FLOPs: n per output (sum), none for the index ops. Bytes: 4 per element read, plus outputs;
// all memory-bound.
//
// Versions:
//   v1 (this file) two layouts. inner == 1 (a row reduction: the loss sum, a softmax row, the
//      whole tensor): one 256-thread block per row, each thread strides over the row, then a
//      warp-shuffle + shared-memory block reduction (deterministic order). inner > 1 (a column
//      reduction, e.g. batch-norm style [N, C, HW] over N): one thread per output column, the
//      k loop reads consecutive i in consecutive threads, so loads are coalesced. A skinny
//      [1, big n, small inner] case would want a split-k second pass; not needed yet.
//      scatter_add uses atomicAdd, so its summation order (and last bits) may vary between
//      runs on a GPU; the CPU adds in k order.
// The index ops trust nothing: the engine's range check of idx is deferred (check_indices in
// runtime.cu raises it at the next host wait), so an index outside [0, n) gathers NaN and
// scatters nothing here instead of touching memory outside x or out.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

__global__ void sum_rows_kernel(const float* x, float* y, int64_t n, float scale) {
  BW_SHARED(float, scratch, [32]);
  const float* row = x + blockIdx.x * n;
  float acc = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) acc += row[k];
  acc = block_sum<float>(acc, scratch);
  if (threadIdx.x == 0) y[blockIdx.x] = scale * acc;  // exact when scale is 1
}

__global__ void sum_columns_kernel(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, float scale) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < outer * inner;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / inner, i = t % inner;
    const float* p = x + o * n * inner + i;
    float acc = 0.0f;
    for (int64_t k = 0; k < n; ++k) acc += p[k * inner];
    y[t] = scale * acc;
  }
}

// (value, index) of the better candidate: larger value, then smaller index; a NaN loses to any
// number, and between NaNs the smaller index wins. Associative and commutative, so any reduction
// tree gives the sequential CPU answer (first maximum over the numbers, 0 when all are NaN).
__device__ inline void argmax_combine(float& v, int64_t& k, float v2, int64_t k2) {
  const bool nan1 = v != v, nan2 = v2 != v2;
  bool take;
  if (nan1 != nan2) take = nan1;
  else if (nan1) take = k2 < k;
  else take = v2 > v || (v2 == v && k2 < k);
  if (take) {
    v = v2;
    k = k2;
  }
}

__global__ void argmax_rows_kernel(const float* x, int32_t* idx, int64_t n) {
  BW_SHARED(float, sv, [32]);
  BW_SHARED(int64_t, sk, [32]);
  const float* row = x + blockIdx.x * n;
  float v = NAN;
  int64_t k = INT64_MAX;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) argmax_combine(v, k, row[j], j);
  for (int d = 16; d > 0; d >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, d);
    const int64_t k2 = __shfl_xor_sync(0xffffffffu, k, d);
    argmax_combine(v, k, v2, k2);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    sv[warp] = v;
    sk[warp] = k;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
      const float v2 = sv[w];
      const int64_t k2 = sk[w];
      argmax_combine(v, k, v2, k2);
    }
    idx[blockIdx.x] = static_cast<int32_t>(k);
  }
}

__global__ void argmax_columns_kernel(const float* x, int32_t* idx, int64_t outer, int64_t n, int64_t inner) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < outer * inner;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / inner, i = t % inner;
    const float* p = x + o * n * inner + i;
    float v = p[0];
    int64_t k = 0;
    for (int64_t j = 1; j < n; ++j) argmax_combine(v, k, p[j * inner], j);
    idx[t] = static_cast<int32_t>(k);
  }
}

__global__ void gather_middle_kernel(const float* x, const int32_t* idx, float* out, int64_t outer, int64_t n,
                                     int64_t m, int64_t inner) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < outer * m * inner;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / (m * inner), i = t % inner, k = idx[t];
    out[t] = k >= 0 && k < n ? x[(o * n + k) * inner + i] : NAN;
  }
}

__global__ void scatter_add_middle_kernel(const float* src, const int32_t* idx, float* out, int64_t outer, int64_t n,
                                          int64_t m, int64_t inner) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < outer * m * inner;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / (m * inner), i = t % inner, k = idx[t];
    if (k >= 0 && k < n) atomicAdd(out + (o * n + k) * inner + i, src[t]);
  }
}

// x [outer, n, inner] read once, `outputs` values written, `flops` in all.
LaunchCost reduce_cost(int64_t outer, int64_t n, int64_t inner, double flops) {
  return {flops, 4.0 * (double(outer) * double(n) * double(inner) + double(outer) * double(inner))};
}
// The index ops: idx and the `total` moved values once, the [outer, n, inner] side at most once
// (`read_modify_write`: scatter-add reads and writes it).
LaunchCost index_cost(int64_t outer, int64_t n, int64_t inner, int64_t total, bool read_modify_write) {
  const double side = std::min(double(total), double(outer) * double(n) * double(inner));
  return {read_modify_write ? double(total) : 0.0, 4.0 * (2.0 * double(total) + (read_modify_write ? 2 : 1) * side)};
}
}  // namespace

void sum_middle(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, float scale) {
  if (outer * inner == 0) return;
  if (n == 0) return fill(y, outer * inner, 0.0f);
  const LaunchCost cost = reduce_cost(outer, n, inner, double(outer) * double(n) * double(inner));
  if (inner == 1)
    BW_LAUNCH_COSTED(cost, sum_rows_kernel, static_cast<unsigned>(outer), kThreads, 0, current_stream(), x, y, n, scale);
  else
    BW_LAUNCH_COSTED(cost, sum_columns_kernel, blocks_for(outer * inner), kThreads, 0, current_stream(), x, y, outer, n,
                     inner, scale);
}

void argmax_middle(const float* x, int32_t* idx, int64_t outer, int64_t n, int64_t inner) {
  if (outer * inner == 0 || n == 0) return;
  const LaunchCost cost = reduce_cost(outer, n, inner, double(outer) * double(n) * double(inner));  // a compare each
  if (inner == 1)
    BW_LAUNCH_COSTED(cost, argmax_rows_kernel, static_cast<unsigned>(outer), kThreads, 0, current_stream(), x, idx, n);
  else
    BW_LAUNCH_COSTED(cost, argmax_columns_kernel, blocks_for(outer * inner), kThreads, 0, current_stream(), x, idx,
                     outer, n, inner);
}

void gather_middle(const float* x, const int32_t* idx, float* out, int64_t outer, int64_t n, int64_t m,
                   int64_t inner) {
  const int64_t total = outer * m * inner;
  if (total > 0)
    BW_LAUNCH_COSTED(index_cost(outer, n, inner, total, false), gather_middle_kernel, blocks_for(total), kThreads, 0,
                     current_stream(), x, idx, out, outer, n, m, inner);
}

void scatter_add_middle(const float* src, const int32_t* idx, float* out, int64_t outer, int64_t n, int64_t m,
                        int64_t inner) {
  const int64_t total = outer * m * inner;
  if (total > 0)
    BW_LAUNCH_COSTED(index_cost(outer, n, inner, total, true), scatter_add_middle_kernel, blocks_for(total), kThreads,
                     0, current_stream(), src, idx, out, outer, n, m, inner);
}

}  // namespace bulwark::cuda
