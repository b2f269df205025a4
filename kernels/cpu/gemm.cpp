// GEMM on the CPU: OpenBLAS sgemm/dgemm, single-threaded inside, with our own OpenMP split
// over row blocks of C. Keeping BLAS single-threaded lets the conv kernels call it from
// inside their per-sample parallel loops without oversubscribing the cores.
#include <cblas.h>
#include <omp.h>

#include <algorithm>

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
}  // namespace

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = 2.0 * M * N * K;
  if (threads == 1 || flops < 4e6 || M < 2 * threads) {
    blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Row blocks of C depend only on the matching rows of op(A): fixed split, same bits for any
  // thread count as long as each block's K-loop is unchanged (it is: only M is split).
  const int64_t blocks = threads;
  const int64_t rows = (M + blocks - 1) / blocks;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * rows, r1 = std::min(M, r0 + rows);
    if (r0 >= r1) continue;
    const T* Ab = ta ? A + r0 : A + r0 * lda;
    blas(ta, tb, r1 - r0, N, K, alpha, Ab, lda, B, ldb, beta, C + r0 * ldc, ldc);
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace bulwark::cpu
