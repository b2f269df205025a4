// Row-wise log-softmax and the fused softmax cross-entropy loss. Both subtract the row max
// first so exp never overflows.
#include <cmath>

#include "kernels/common/argmax.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
template <class T>
T row_logsumexp(const T* z, int64_t cols) {
  T m = z[0];
  for (int64_t j = 1; j < cols; ++j) m = z[j] > m ? z[j] : m;
  T s = 0;
  for (int64_t j = 0; j < cols; ++j) s += std::exp(z[j] - m);
  return m + std::log(s);
}
}  // namespace

template <class T>
void log_softmax_rows(const T* z, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= (1 << 14)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T lse = row_logsumexp(z + r * cols, cols);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = z[r * cols + j] - lse;
  }
}

template <class T>
void softmax_xent_rows(const T* z, const int32_t* labels, T* loss, int64_t rows, int64_t cols, T* correct) {
#pragma omp parallel for if (rows * cols >= (1 << 14)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * cols;
    const int32_t y = labels[r];
    loss[r] = row_logsumexp(zr, cols) - zr[y];
    if (!correct) continue;
    bool beaten = false;
    for (int64_t j = 0; j < cols && !beaten; ++j) beaten = j != y && ew::outranks_label(j, zr[j], int64_t{y}, zr[y]);
    correct[r] = beaten ? T(0) : T(1);
  }
}

template <class T>
void softmax_xent_backward_rows(const T* z, const int32_t* labels, const T* g, int64_t g_stride, T scale, T* dz,
                                int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= (1 << 14)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * cols;
    const T lse = row_logsumexp(zr, cols);
    const T gr = g[r * g_stride] * scale;
    for (int64_t j = 0; j < cols; ++j) dz[r * cols + j] = (std::exp(zr[j] - lse) - (j == labels[r] ? T(1) : T(0))) * gr;
  }
}

template void log_softmax_rows<float>(const float*, float*, int64_t, int64_t);
template void log_softmax_rows<double>(const double*, double*, int64_t, int64_t);
template void softmax_xent_rows<float>(const float*, const int32_t*, float*, int64_t, int64_t, float*);
template void softmax_xent_rows<double>(const double*, const int32_t*, double*, int64_t, int64_t, double*);
template void softmax_xent_backward_rows<float>(const float*, const int32_t*, const float*, int64_t, float, float*,
                                                int64_t, int64_t);
template void softmax_xent_backward_rows<double>(const double*, const int32_t*, const double*, int64_t, double, double*,
                                                 int64_t, int64_t);

}  // namespace bulwark::cpu
