// GEMM on the CPU: OpenBLAS sgemm/dgemm, single-threaded inside, with our own OpenMP split
// over row blocks of C. Keeping BLAS single-threaded lets the conv kernels call it from
// inside their per-sample parallel loops without oversubscribing the cores.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "kernels/common/elementwise.h"
#include "kernels/cpu/cpu_kernels.h"

extern "C" void openblas_set_num_threads(int);

namespace bulwark::cpu {

namespace {
struct BlasSingleThreaded {
  BlasSingleThreaded() { openblas_set_num_threads(1); }
} blas_single_threaded;

void blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, ldc);
}
void blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, ldc);
}
std::atomic<MathPrecision> g_math_precision{MathPrecision::fp32};

// The rows x cols matrix at p (leading dimension ld) rounded to `format`, packed (ld = cols) into
// `out`, a buffer of the calling thread that keeps its capacity from call to call (the conv loops
// call the GEMM from their OpenMP threads), so a step in its steady state allocates nothing.
const float* rounded_copy(MathPrecision format, const float* p, int64_t rows, int64_t cols, int64_t ld,
                          std::vector<float>& out) {
  out.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float v = p[i * ld + j];
      out[static_cast<size_t>(i * cols + j)] =
          format == MathPrecision::tf32 ? precision::round_tf32(v) : precision::round_bf16(v);
    }
  return out.data();
}
}  // namespace

void set_math_precision(MathPrecision precision) { g_math_precision.store(precision); }
MathPrecision math_precision() { return g_math_precision.load(); }

namespace {
// The GEMM itself, on the operands as given.
template <class T>
void gemm_as_given(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                   int64_t ldb, T beta, T* C, int64_t ldc) {
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = 2.0 * M * N * K;
  // Split the longer side of C. Each thread reads all of the operand along the side it does not
  // split, so splitting rows of a wide C (cnn7's FC backward-input, M = 128, N = 32768) would
  // stream the 64 MiB weight once per thread; splitting its columns streams half each.
  const bool split_columns = N > M;
  const int64_t extent = split_columns ? N : M;
  // The blocks of C depend on the problem alone, never on the thread count: OpenBLAS may sum a
  // block in another order than the whole (its small-matrix and edge kernels differ by size), so
  // a split that followed the threads gave other bits on 1 and 2 threads. Blocks of at least 64
  // rows (or columns), up to 8, run by as many threads as there are; every block streams all of
  // the operand it does not split, so when that is large (cnn7's FC forward reads a 16 MiB input
  // per block) there are 2, which measured 10% faster there than 8 and as fast as before.
  const double unsplit_bytes = static_cast<double>(split_columns ? M : N) * static_cast<double>(K) * sizeof(T);
  const int64_t most = unsplit_bytes > 4.0 * (1 << 20) ? 2 : 8;
  const int64_t blocks = std::clamp<int64_t>(extent / 64, 1, most);
  if (flops < 4e6 || blocks == 1) {
    blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // A block of C depends only on the matching rows of op(A) (or columns of op(B)).
  const int64_t per = (extent + blocks - 1) / blocks;
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(std::min<int64_t>(threads, blocks)))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * per, i1 = std::min(extent, i0 + per);
    if (i0 >= i1) continue;
    if (split_columns) {
      const T* Bb = tb ? B + i0 * ldb : B + i0;
      blas(ta, tb, M, i1 - i0, K, alpha, A, lda, Bb, ldb, beta, C + i0, ldc);
    } else {
      const T* Ab = ta ? A + i0 : A + i0 * lda;
      blas(ta, tb, i1 - i0, N, K, alpha, Ab, lda, B, ldb, beta, C + i0 * ldc, ldc);
    }
  }
}
}  // namespace

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    const MathPrecision precision = math_precision();
    if (precision != MathPrecision::fp32 && K > 0) {
      // op(A) is M x K and op(B) K x N; stored, A is (ta ? K x M : M x K) and B (tb ? N x K : K x N).
      const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
      thread_local std::vector<float> a_buffer, b_buffer;
      const float* ra = rounded_copy(precision, A, a_rows, a_cols, lda, a_buffer);
      const float* rb = rounded_copy(precision, B, b_rows, b_cols, ldb, b_buffer);
      gemm_as_given<T>(ta, tb, M, N, K, alpha, ra, a_cols, rb, b_cols, beta, C, ldc);
      return;
    }
  }
  gemm_as_given<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class T>
void gemm_bias(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
               const T* bias, T* C, int64_t ldc, bool relu) {
  gemm<T>(ta, tb, M, N, K, T(1), A, lda, B, ldb, T(0), C, ldc);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = ew::relu_if(C[i * ldc + j] + bias[j], relu);
}

template void gemm_bias<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                               const float*, float*, int64_t, bool);
template void gemm_bias<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,
                                const double*, double*, int64_t, bool);
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace bulwark::cpu
