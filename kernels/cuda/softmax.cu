// Row-wise log-softmax and the fused softmax cross-entropy (CPU reference:
// kernels/cpu/softmax.cpp), over z viewed as [rows, cols]:
//
//   lse_r = log sum_j exp(z[r, j])         (computed as m + log sum_j exp(z[r, j] - m), m = max)
//   log_softmax: y[r, j] = z[r, j] - lse_r
//   softmax_xent: loss[r] = lse_r - z[r, labels[r]], and optionally correct[r] = [argmax z[r] == labels[r]]
//   (a training step's accuracy from the same read of z: one launch more, its sum, instead of five:
//   argmax, two conversions, a compare and a sum)
//   its backward: dz[r, j] = (exp(z[r, j] - lse_r) - [j == labels[r]]) g[r * g_stride] scale, one
//   launch instead of the eight of its composition (one_hot's fill, check, fill, scatter;
//   log_softmax, exp, -, *); g_stride 0 and scale 1/rows take a mean loss's one upstream value
//   (the mean's scale and broadcast copy, two more launches, fold into it)
// FLOPs: ~3 per element + 1 exp. Bytes: log_softmax reads z and writes y (8 B/element);
// xent reads z once (4 B/element) and writes 4 B per row.
//
// Versions:
//   v1 (this file) one warp per row, 8 rows per 256-thread block. The max and the sum are fused
//      in one pass with the online-softmax recurrence (Milakov & Gimelshein 2018): each lane keeps
//      (m, s) = (running max, sum of exp(z - m)) and rescales s when m grows; lanes are merged
//      with the same rule through shuffles. So z is read once for the lse (twice for log_softmax,
//      which must write every element). A warp per row suits classifier logits (cols 10-1000);
//      rows of many thousands of columns would want a block per row.
#include <cmath>

#include "kernels/common/argmax.h"
#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

constexpr int kRowsPerBlock = kThreads / 32;

// Merge (m2, s2) into (m, s): both describe sums of exp(z - m) over disjoint sets of columns.
__device__ inline void online_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;  // both empty (or all -inf): nothing to add
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// log sum_j exp(row[j]) computed by one full warp; every lane gets the result.
__device__ inline float warp_logsumexp(const float* row, int64_t cols) {
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x % 32; j < cols; j += 32) online_merge(m, s, row[j], 1.0f);
  for (int d = 16; d > 0; d >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, d);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, d);
    online_merge(m, s, m2, s2);
  }
  return m + logf(s);
}

__global__ void log_softmax_rows_kernel(const float* z, float* y, int64_t rows, int64_t cols) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (r >= rows) return;  // whole warps leave together: no collective below misses a lane
  const float* row = z + r * cols;
  const float lse = warp_logsumexp(row, cols);
  for (int64_t j = threadIdx.x % 32; j < cols; j += 32) y[r * cols + j] = row[j] - lse;
}

// With `correct`, each lane also asks whether one of its columns outranks the label's under
// argmax's rule (kernels/common/argmax.h), and a ballot of the warp gives the row's 1 or 0.
__global__ void softmax_xent_rows_kernel(const float* z, const int32_t* labels, float* loss, int64_t rows,
                                         int64_t cols, float* correct) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (r >= rows) return;
  const float* row = z + r * cols;
  const float lse = warp_logsumexp(row, cols);
  const int32_t y = labels[r];  // range-checked by the engine, deferred: guard, NaN when out of range
  const bool in_range = y >= 0 && y < cols;
  if (threadIdx.x % 32 == 0) loss[r] = in_range ? lse - row[y] : NAN;
  if (correct == nullptr) return;
  bool beaten = !in_range;
  if (in_range)
    for (int64_t j = threadIdx.x % 32; j < cols && !beaten; j += 32)
      beaten = j != y && ew::outranks_label(j, row[j], int64_t{y}, row[y]);
  const unsigned beaten_lanes = __ballot_sync(0xffffffffu, beaten);
  if (threadIdx.x % 32 == 0) correct[r] = beaten_lanes == 0u ? 1.0f : 0.0f;
}

// dz = (softmax(z) - one_hot(y)) g, row by row: the lse as the forward computes it, then each lane
// writes its columns. A label out of range (the engine's deferred check reports it) gives NaN.
__global__ void softmax_xent_backward_rows_kernel(const float* z, const int32_t* labels, const float* g,
                                                  int64_t g_stride, float scale, float* dz, int64_t rows,
                                                  int64_t cols) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (r >= rows) return;
  const float* row = z + r * cols;
  const float lse = warp_logsumexp(row, cols);
  const int32_t y = labels[r];
  const float gr = y >= 0 && y < cols ? g[r * g_stride] * scale : NAN;
  for (int64_t j = threadIdx.x % 32; j < cols; j += 32) dz[r * cols + j] = (expf(row[j] - lse) - (j == y ? 1.0f : 0.0f)) * gr;
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void log_softmax_rows(const float* z, float* y, int64_t rows, int64_t cols) {
  if (rows > 0 && cols > 0)
    BW_LAUNCH_COSTED(elementwise_cost(rows * cols, 1, 1, 5), log_softmax_rows_kernel, row_blocks(rows), kThreads, 0,
                     current_stream(), z, y, rows, cols);
}

void softmax_xent_rows(const float* z, const int32_t* labels, float* loss, int64_t rows, int64_t cols,
                       float* correct) {
  // With `correct`: a comparison more per element and a float more written per row.
  const double per_element = correct ? 5.0 : 4.0, per_row = correct ? 3.0 : 2.0;
  if (rows > 0 && cols > 0)
    BW_LAUNCH_COSTED((LaunchCost{per_element * double(rows * cols), 4.0 * double(rows * cols + per_row * rows)}),
                     softmax_xent_rows_kernel, row_blocks(rows), kThreads, 0, current_stream(), z, labels, loss, rows,
                     cols, correct);
}

void softmax_xent_backward_rows(const float* z, const int32_t* labels, const float* g, int64_t g_stride, float scale,
                                float* dz, int64_t rows, int64_t cols) {
  // Per element: exp, a subtraction, a product, and the lse's ~3 (counted with the row's reads).
  if (rows > 0 && cols > 0)
    BW_LAUNCH_COSTED((LaunchCost{6.0 * double(rows * cols), 4.0 * double(2 * rows * cols + 2 * rows)}),
                     softmax_xent_backward_rows_kernel, row_blocks(rows), kThreads, 0, current_stream(), z, labels, g,
                     g_stride, scale, dz, rows, cols);
}

}  // namespace bulwark::cuda
