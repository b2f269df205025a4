#pragma once
// The register-blocked shared-memory GEMM tile loop shared by gemm.cu and conv.cu.
//
//   C[M, N] = store( sum_k opA[m, k] * opB[k, n] )
//
// The operands are not arrays but *loaders*: small structs whose operator() returns one element
// of op(A) or op(B) (0 outside the matrix is handled here). A dense row-major matrix, possibly
// transposed, is one loader (MatrixLoader); an im2col view of an image that is never
// materialised is another (conv.cu), which is what makes the convolutions "implicit GEMM".
// The epilogue is a store functor too, so the bias add of a convolution or C = alpha AB + beta C
// happens while the accumulators are still in registers.
//
// Blocking: a block of 256 threads owns a 64x64 tile of C; each thread keeps a 4x4 micro-tile
// in registers, rows tm + 16 i and columns tn + 16 j (strided rather than contiguous, so the
// 16 threads of a half-warp read 16 consecutive floats of the B tile: no bank conflicts, and
// the final stores to C are coalesced). Each K step stages an 8-deep slice of A (64x8) and B
// (8x64) in shared memory, k-major, padded by 4 floats per row so that the k-fastest staging
// writes land in distinct banks too. Per K step a thread does 2 loads of A, 2 of B, and
// 8 x (4 + 4) shared reads for 8 x 16 FMAs: 2 FMAs per shared read (the naive 16x16 tile does 1/2).
//
// Loader contract: `__device__ float operator()(int64_t i, int64_t k)` for A (row i of op(A)),
// `__device__ float operator()(int64_t k, int64_t j)` for B, called only in range, and
// `__device__ bool k_fastest() const`: whether consecutive k are consecutive addresses (then the
// staging loop walks k fastest across threads, otherwise the row/column index), which keeps the
// global loads coalesced for either transpose.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/emu/launch.h"

namespace bulwark::cuda::tile {

constexpr int BM = 64, BN = 64, BK = 8;  // block tile of C, K slice staged per step
constexpr int TM = 4, TN = 4;            // micro-tile per thread
constexpr int kRowsT = BM / TM, kColsT = BN / TN;
constexpr int kThreads = kRowsT * kColsT;  // 256
constexpr int kPad = 4;                    // floats of padding per staged row (bank spread)

// Row-major matrix, op() = transpose when `t`: element (i, k) of op(P) where P has leading
// dimension ld. Used for op(A) as (row, k) and for op(B) as (k, col) alike.
struct MatrixLoader {
  const float* p;
  int64_t ld;
  bool t;
  bool b_side;  // true: called as (k, col); then "k fastest" means the first index is contiguous
  __device__ float operator()(int64_t i, int64_t j) const { return t ? p[j * ld + i] : p[i * ld + j]; }
  // As A (i=row, j=k): k is contiguous when not transposed. As B (i=k, j=col): k is contiguous
  // when transposed.
  __device__ bool k_fastest() const { return b_side ? t : !t; }
};

template <class LoadA, class LoadB, class Store>
__global__ __launch_bounds__(kThreads) void gemm_tiles(LoadA load_a, LoadB load_b, Store store, int64_t M,
                                                       int64_t N, int64_t K) {
  BW_SHARED(float, as, [BK][BM + kPad]);
  BW_SHARED(float, bs, [BK][BN + kPad]);
  const int tid = threadIdx.x;
  const int tm = tid / kColsT, tn = tid % kColsT;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  const bool a_kfast = load_a.k_fastest(), b_kfast = load_b.k_fastest();
  float acc[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int e = tid; e < BM * BK; e += kThreads) {
      const int i = a_kfast ? e / BK : e % BM, kk = a_kfast ? e % BK : e / BM;
      const int64_t row = m0 + i, k = k0 + kk;
      as[kk][i] = (row < M && k < K) ? load_a(row, k) : 0.0f;
    }
#pragma unroll
    for (int e = tid; e < BN * BK; e += kThreads) {
      const int j = b_kfast ? e / BK : e % BN, kk = b_kfast ? e % BK : e / BN;
      const int64_t col = n0 + j, k = k0 + kk;
      bs[kk][j] = (col < N && k < K) ? load_b(k, col) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = as[kk][tm + kRowsT * i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = bs[kk][tn + kColsT * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the next staging overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + tm + kRowsT * i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = n0 + tn + kColsT * j;
      if (col < N) store(row, col, acc[i][j]);
    }
  }
}

// Launches the tile loop over an M x N output: columns on grid.x (up to 2^31 - 1 tiles), rows on
// grid.y (up to 65535 tiles, M <= 4,194,240).
template <class LoadA, class LoadB, class Store>
void run_tiles(const LoadA& a, const LoadB& b, const Store& s, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const int64_t gx = (N + BN - 1) / BN, gy = (M + BM - 1) / BM;
  if (gy > 65535 || gx > 2147483647)
    throw std::invalid_argument("gemm_tiles: output " + std::to_string(M) + " x " + std::to_string(N) +
                                " is too large for one launch");
  BW_LAUNCH((gemm_tiles<LoadA, LoadB, Store>), dim3(unsigned(gx), unsigned(gy)), dim3(kThreads), 0, stream, a, b,
            s, M, N, K);
}

}  // namespace bulwark::cuda::tile
