#pragma once
// The tensor-core version of the tile loop (gemm_tile.cuh): the same loaders and store functors,
// so GEMM and all three convolution passes get it at once, with the products done by warp
// matrix-multiply-accumulate instead of FP32 FMAs.
//
//   C[M, N] = store( sum_k round(opA[m, k]) * round(opB[k, n]) ),  f32 accumulation
//
// round() is the input format: TF32 (m16n16k8 fragments; the f32 value rounded to nearest with
// __float_to_tf32, 10 mantissa bits) or BF16 (m16n16k16; __float2bfloat16, 7 mantissa bits).
// Products of rounded values are exact in f32, so the result equals the f32 GEMM of the rounded
// inputs up to the order of the sums (kernels/common/precision.h; the CPU backend computes it
// that way for --precision tf32|bf16).
//
// Blocking: a block of 256 threads (8 warps) owns a 64x64 tile of C, as gemm_tiles does; warp w
// owns the 16x32 strip at rows 16 (w / 2), columns 32 (w % 2): two 16x16 accumulator
// fragments. Each step stages a 16-deep K slice of A (64x16, row-major: the layout matrix_a
// loads) and B (16x64, row-major) with the tile loop's stagers, rounded as they are written to
// shared memory (BF16 halves the bytes staged); TF32 then takes two k8 MMAs per warp and
// fragment, BF16 one k16. The accumulators leave through a 64x64 f32 tile in shared memory, from
// which every thread applies the store functor to 16 elements (the epilogue stays generic).
// FLOPs as the FP32 loop (2 M N K); bytes the same; the peak is the tensor cores' (H100 SXM: 495
// TF32 / 989 BF16 dense TFLOP/s against 67 FP32).
//
// Versions:
//   3 (this file; 1 and 2 are gemm_tile.cuh's): WMMA on fragments loaded from shared memory.
//     Shared: 64x16 + 16x64 inputs (8 KB f32, 4 KB BF16) + the 16 KB C tile. Not tuned: no
//     double buffering, one 16-deep slice per __syncthreads pair, and the 2-fragment warp tile
//     reuses each A fragment only twice. mma.sync with ldmatrix and a 128x128 tile is where
//     CUTLASS goes next.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/gemm_tile.cuh"
#include "kernels/emu/launch.h"

#if defined(BULWARK_EMU)
#include "kernels/emu/wmma.h"
namespace bulwark::cuda::tc {
namespace wmma = ::bulwark::emu::wmma;
}
#else
#include <cuda_bf16.h>
#include <mma.h>
namespace bulwark::cuda::tc {
namespace wmma = ::nvcuda::wmma;
}
#endif

namespace bulwark::cuda::tc {

constexpr int BM = tile::BM, BN = tile::BN, BKT = 2 * tile::BK;  // a 16-deep slice: two stager steps
constexpr int kThreads = tile::kThreads;                          // 256: 8 warps
static_assert(BM == 64 && BN == 64 && BKT == 16 && kThreads == 256, "the warp layout below assumes these");

// The input format: fragment shape, the type staged in shared memory, and the rounding.
struct Tf32 {
  static constexpr int kK = 8;
  using Staged = float;
  using Fragment = wmma::precision::tf32;
  __device__ static float round(float v) { return wmma::__float_to_tf32(v); }
};
struct Bf16 {
  static constexpr int kK = 16;
  using Staged = __nv_bfloat16;
  using Fragment = __nv_bfloat16;
  __device__ static __nv_bfloat16 round(float v) { return __float2bfloat16(v); }
};

template <class P, class LoadA, class LoadB, class Store>
__global__ __launch_bounds__(kThreads, tile::kMinBlocksPerSM) void tc_gemm_tiles(LoadA load_a, LoadB load_b, Store store, int64_t M,
                                                          int64_t N, int64_t K) {
  using S = typename P::Staged;
  BW_SHARED_ALIGNED(S, as, [BM][BKT], 32);
  BW_SHARED_ALIGNED(S, bs, [BKT][BN], 32);
  BW_SHARED_ALIGNED(float, cs, [BM][BN], 32);
  const int tid = threadIdx.x, warp = tid / 32;
  const int frow = 16 * (warp / 2), fcol = 32 * (warp % 2);
  const tile::TileExtent t(M, N);
  typename tile::StagerOf<LoadA, false>::type stage_a(load_a, tid, t.m0, t.m_count);
  typename tile::StagerOf<LoadB, true>::type stage_b(load_b, tid, t.n0, t.n_count);
  wmma::fragment<wmma::accumulator, 16, 16, P::kK, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);

  for (int64_t k0 = 0; k0 < K; k0 += BKT) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t kb = k0 + half * tile::BK;
      const int k_count = K - kb <= 0 ? 0 : (K - kb < tile::BK ? int(K - kb) : tile::BK);
#pragma unroll
      for (int s = 0; s < tile::kSlots; ++s)
        as[stage_a.slots.outer[s]][half * tile::BK + stage_a.slots.kk[s]] = P::round(stage_a.fetch(s, kb, k_count));
#pragma unroll
      for (int s = 0; s < tile::kSlots; ++s)
        bs[half * tile::BK + stage_b.slots.kk[s]][stage_b.slots.outer[s]] = P::round(stage_b.fetch(s, kb, k_count));
      stage_a.next_slice();
      stage_b.next_slice();
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BKT; kk += P::kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, P::kK, typename P::Fragment, wmma::row_major> a;
      wmma::load_matrix_sync(a, &as[frow][kk], BKT);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, P::kK, typename P::Fragment, wmma::row_major> b;
        wmma::load_matrix_sync(b, &bs[kk][fcol + 16 * j], BN);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
    __syncthreads();  // the next staging overwrites the slices
  }
  wmma::store_matrix_sync(&cs[frow][fcol], acc[0], BN, wmma::mem_row_major);
  wmma::store_matrix_sync(&cs[frow][fcol + 16], acc[1], BN, wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < BM * BN; e += kThreads) {
    const int r = e / BN, c = e % BN;
    if (r < t.m_count && c < t.n_count) store(t.m0 + r, t.n0 + c, static_cast<float>(cs[r][c]));
  }
}

// Launches the tensor-core tile loop over an M x N output (tile::tile_grid).
template <class P, class LoadA, class LoadB, class Store>
void run_tc_tiles(const LoadA& a, const LoadB& b, const Store& s, int64_t M, int64_t N, int64_t K, cudaStream_t stream,
                  const LaunchCost& cost) {
  if (M <= 0 || N <= 0) return;
  BW_LAUNCH_COSTED(cost, (tc_gemm_tiles<P, LoadA, LoadB, Store>), tile::tile_grid("tc_gemm_tiles", M, N), dim3(kThreads),
                   0, stream, a, b, s, M, N, K);
}

}  // namespace bulwark::cuda::tc

namespace bulwark::cuda {
// The tile loop of the current math_precision(): FP32 FMAs (gemm_tile.cuh) or tensor cores.
template <class LoadA, class LoadB, class Store>
void run_tiles_in(MathPrecision precision, const LoadA& a, const LoadB& b, const Store& s, int64_t M, int64_t N,
                  int64_t K, cudaStream_t stream, const LaunchCost& cost) {
  switch (precision) {
    case MathPrecision::fp32: return tile::run_tiles(a, b, s, M, N, K, stream, cost);
    case MathPrecision::tf32: return tc::run_tc_tiles<tc::Tf32>(a, b, s, M, N, K, stream, cost);
    case MathPrecision::bf16: return tc::run_tc_tiles<tc::Bf16>(a, b, s, M, N, K, stream, cost);
  }
}
}  // namespace bulwark::cuda
