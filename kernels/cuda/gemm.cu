// SGEMM: C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C, row-major, op = transpose when
// ta / tb, f32 (the contract of kernels/cpu/gemm.cpp, whose OpenBLAS call is the reference).
//
// FLOPs: 2 M N K (+ 3 M N for the epilogue). Bytes (ideal, each operand read once): 4 (M K + K N
// + M N), + 4 M N more when beta != 0. Arithmetic intensity for square n: n / 6 FLOP/byte, so
// anything above n ~ 100 is compute-bound on an A100/H100 (roofline knee ~10-20 FLOP/byte f32).
//
// Versions:
//   0  cuBLAS cublasSgemm (gemm_vendor, vendor.cu, real build only): the baseline the benches
//      compare with.
//      cuda::gemm runs version 0 or 2 as kernel_source() says (kernel_source.h).
//   1  (tests/emu_kernels/gemm.cu) 16x16 tile, one output per thread: 2 shared reads per FMA,
//      shared-memory bound at ~1/4 of the f32 peak.
//   2  gemm_ours, this file: 64x64 block tile, 8-deep K slice, 4x4 register micro-tile per thread
//      (kernels/cuda/gemm_tile.cuh): 1 shared read per 2 FMAs. Transposes are handled in the
//      staging loads (coalesced for all four combinations), so no transposed copy is ever made.
// Next steps, in the order they would pay: float4 staging loads and double-buffered tiles
// (cp.async on sm_80+), a 128x128 tile with 8x8 micro-tiles for large problems, and TF32
// tensor cores (WMMA) behind an opt-in, since TF32 changes results at the 1e-3 level.
#include <cuda_runtime.h>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_tile.cuh"
#include "kernels/cuda/tensor_core.cuh"
#include "kernels/cuda/kernel_source.h"
#include "kernels/cuda/vendor.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

namespace {
// C = alpha acc + beta C; with beta == 0 C is never read (it may hold NaN garbage, as BLAS allows).
struct GemmStore {
  float* c;
  int64_t ldc;
  float alpha, beta;
  __device__ void operator()(int64_t i, int64_t j, float acc) const {
    float* p = c + i * ldc + j;
    *p = beta == 0.0f ? alpha * acc : alpha * acc + beta * *p;
  }
};
// C = acc + bias[j]: the product rounded to f32, then the bias added, as gemm + add() round it;
// then the ReLU with `relu` (linear_relu), as relu() rounds it.
struct GemmBiasStore {
  float* c;
  int64_t ldc;
  const float* bias;
  bool relu;
  __device__ void operator()(int64_t i, int64_t j, float acc) const { c[i * ldc + j] = ew::relu_if(acc + bias[j], relu); }
};

__global__ void add_row_bias_kernel(float* c, int64_t ldc, int64_t M, int64_t N, const float* bias, bool relu) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < M * N; e += int64_t(gridDim.x) * blockDim.x) {
    float* p = c + e / N * ldc + e % N;
    *p = ew::relu_if(*p + bias[e % N], relu);
  }
}
}  // namespace

void gemm_ours(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const tile::MatrixLoader a{A, lda, ta, false}, b{B, ldb, tb, true};
  const double c_moved = (beta != 0.0f ? 2.0 : 1.0) * double(M) * double(N);  // C read too when beta != 0
  run_tiles_in(math_precision(), a, b, GemmStore{C, ldc, alpha, beta}, M, N, K, current_stream(),
                  gemm_cost(M, N, K, double(M) * double(K) + double(K) * double(N) + c_moved));
}

// Ours or cuBLAS, by kernel_source() (kernel_source.h). The key holds what changes either
// kernel's speed: the transposes, the sizes, the leading dimensions, and whether C is read.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  const bool reads_c = beta != 0.0f;
  const auto key = [&] { return kernel_key("gemm", {ta, tb, M, N, K, lda, ldb, ldc, reads_c}); };
  const int64_t c_count = M > 0 && N > 0 ? (M - 1) * ldc + N : 0;
  launch_routed(key, RoutedOutput{C, c_count, reads_c}, [&](KernelSource source, float* c) {
    if (source == KernelSource::vendor)
      gemm_vendor(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, c, ldc);
    else
      gemm_ours(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, c, ldc);
  });
}

void add_row_bias(float* C, int64_t ldc, int64_t M, int64_t N, const float* bias, bool relu) {
  if (M > 0 && N > 0)
    BW_LAUNCH_COSTED((LaunchCost{double(M) * double(N), 4.0 * (2.0 * double(M) * double(N) + double(N))}),
                     add_row_bias_kernel, blocks_for(M * N), kThreads, 0, current_stream(), C, ldc, M, N, bias, relu);
}

void gemm_bias(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, const float* bias, float* C, int64_t ldc, bool relu) {
  const auto key = [&] { return kernel_key(relu ? "gemm_bias_relu" : "gemm_bias", {ta, tb, M, N, K, lda, ldb, ldc}); };
  const int64_t c_count = M > 0 && N > 0 ? (M - 1) * ldc + N : 0;
  launch_routed(key, RoutedOutput{C, c_count, false}, [&](KernelSource source, float* c) {
    if (source == KernelSource::vendor) {
      gemm_vendor(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, c, ldc);
      add_row_bias(c, ldc, M, N, bias, relu);
      return;
    }
    const tile::MatrixLoader a{A, lda, ta, false}, b{B, ldb, tb, true};
    run_tiles_in(math_precision(), a, b, GemmBiasStore{c, ldc, bias, relu}, M, N, K, current_stream(),
                 gemm_cost(M, N, K, double(M) * double(K) + double(K) * double(N) + double(M) * double(N) + double(N)));
  });
}

}  // namespace bulwark::cuda
