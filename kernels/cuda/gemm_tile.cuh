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
// global loads coalesced for either transpose. MatrixLoader is the exception: it is affine, so
// its stager (MatrixStager) walks a pointer per staged element instead of calling it.
//
// Registers. Each thread stages the same kSlots = 2 elements of each slice at every K step, so
// their in-tile coordinates (32-bit) are computed once, before the K loop; the tile origin is
// the only 64-bit coordinate. For a dense matrix the staged element's address then moves by a
// fixed stride per K step: one 64-bit add per load, not a 64-bit multiply-add chain (version 1
// of this loop recomputed `(m0 + i) * ld + k0 + kk` per element and spilled on sm_80/sm_90).
// Budget: 16 accumulators + 8 operands + 4 staging pointers (8 registers) + a few indices.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/emu/launch.h"

namespace bulwark::cuda::tile {

constexpr int BM = 64, BN = 64, BK = 8;  // block tile of C, K slice staged per step
constexpr int TM = 4, TN = 4;            // micro-tile per thread
constexpr int kRowsT = BM / TM, kColsT = BN / TN;
constexpr int kThreads = kRowsT * kColsT;  // 256
constexpr int kPad = 4;                    // floats of padding per staged row (bank spread)
static_assert(BM == BN, "one staging layout serves both operands");
constexpr int kSlots = BM * BK / kThreads;  // elements of each operand a thread stages per K step
static_assert(kSlots * kThreads == BM * BK, "the threads cover a slice exactly");
// At least 2 blocks (512 threads) per SM, so ptxas may use up to 128 registers a thread and
// spends the headroom on scheduling (shared loads hoisted ahead of the FMAs that need them).
// With the thread count alone ptxas picks a register target by its own occupancy heuristic: it
// chose 80 for version 1 and spilled. Every instantiation stays at or under 80 (3 blocks, 768
// threads per SM): bench/ptxas_report.py prints the figures and fails on any spill.
constexpr int kMinBlocksPerSM = 2;

// Row-major matrix, op() = transpose when `t`: element (i, j) of op(P), with P's leading
// dimension ld, is p[i * stride_i() + j * stride_j()]. Used for op(A) as (row, k) and for op(B)
// as (k, col) alike.
struct MatrixLoader {
  const float* p;
  int64_t ld;
  bool t;
  bool b_side;  // true: called as (k, col); then "k fastest" means the first index is contiguous
  __device__ int64_t stride_i() const { return t ? 1 : ld; }
  __device__ int64_t stride_j() const { return t ? ld : 1; }
  // As A (i=row, j=k): k is contiguous when not transposed. As B (i=k, j=col): k is contiguous
  // when transposed.
  __device__ bool k_fastest() const { return b_side ? t : !t; }
};

// Where this thread's staged elements sit in the slice: `outer` is the row of op(A) (column of
// op(B)) within the tile, `kk` the k within the slice. Element e = tid + s * kThreads of the
// slice, numbered k-fastest or outer-fastest to match the operand's contiguous index.
struct Slots {
  int outer[kSlots], kk[kSlots];
  __device__ Slots(int tid, bool k_fastest) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int e = tid + s * kThreads;
      outer[s] = k_fastest ? e / BK : e % BM;
      kk[s] = k_fastest ? e % BK : e / BM;
    }
  }
};

// Any loader: each staged element is asked for by its global coordinates (row, k) of op(A) or
// (k, col) of op(B). `outer0` is the tile's first row (column), `outer_count` how many of the
// tile's rows (columns) exist.
template <class Load, bool kIsB>
struct LoaderStager {
  Load load;
  Slots slots;
  int64_t outer0;
  int outer_count;
  __device__ LoaderStager(const Load& l, int tid, int64_t origin, int count)
      : load(l), slots(tid, l.k_fastest()), outer0(origin), outer_count(count) {}
  // Element s at the slice starting at k0, of which k_count k exist (0 outside the matrix).
  __device__ float fetch(int s, int64_t k0, int k_count) const {
    if (slots.outer[s] >= outer_count || slots.kk[s] >= k_count) return 0.0f;
    const int64_t outer = outer0 + slots.outer[s], k = k0 + slots.kk[s];
    return kIsB ? load(k, outer) : load(outer, k);
  }
  __device__ void next_slice() {}
};

// A dense matrix: a staged element's address moves by BK * (stride of k) per K step, so each
// slot keeps its pointer. Rows (columns) past the matrix keep a pointer into the last one and
// are never read.
template <bool kIsB>
struct MatrixStager {
  Slots slots;
  const float* ptr[kSlots];
  int64_t step;
  int outer_count;
  __device__ MatrixStager(const MatrixLoader& l, int tid, int64_t origin, int count)
      : slots(tid, l.k_fastest()), step(BK * (kIsB ? l.stride_i() : l.stride_j())), outer_count(count) {
    const int64_t outer_stride = kIsB ? l.stride_j() : l.stride_i(), k_stride = kIsB ? l.stride_i() : l.stride_j();
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int outer = slots.outer[s] < count ? slots.outer[s] : count - 1;
      ptr[s] = l.p + (origin + outer) * outer_stride + slots.kk[s] * k_stride;
    }
  }
  __device__ float fetch(int s, int64_t, int k_count) const {
    return slots.outer[s] < outer_count && slots.kk[s] < k_count ? *ptr[s] : 0.0f;
  }
  __device__ void next_slice() {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) ptr[s] += step;
  }
};

template <class Load, bool kIsB>
struct StagerOf {
  using type = LoaderStager<Load, kIsB>;
};
template <bool kIsB>
struct StagerOf<MatrixLoader, kIsB> {
  using type = MatrixStager<kIsB>;
};

// This block's tile of the M x N output: its origin, and how many of its rows and columns exist.
struct TileExtent {
  int64_t m0, n0;
  int m_count, n_count;
  __device__ TileExtent(int64_t M, int64_t N)
      : m0(int64_t(blockIdx.y) * BM), n0(int64_t(blockIdx.x) * BN), m_count(M - m0 < BM ? int(M - m0) : BM),
        n_count(N - n0 < BN ? int(N - n0) : BN) {}
};

template <class LoadA, class LoadB, class Store>
__global__ __launch_bounds__(kThreads, kMinBlocksPerSM) void gemm_tiles(LoadA load_a, LoadB load_b, Store store,
                                                                        int64_t M, int64_t N, int64_t K) {
  BW_SHARED(float, as, [BK][BM + kPad]);
  BW_SHARED(float, bs, [BK][BN + kPad]);
  const int tid = threadIdx.x;
  const int tm = tid / kColsT, tn = tid % kColsT;
  const TileExtent tile(M, N);
  const int64_t m0 = tile.m0, n0 = tile.n0;
  const int m_count = tile.m_count, n_count = tile.n_count;
  typename StagerOf<LoadA, false>::type stage_a(load_a, tid, m0, m_count);
  typename StagerOf<LoadB, true>::type stage_b(load_b, tid, n0, n_count);
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    const int k_count = K - k0 < BK ? int(K - k0) : BK;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) as[stage_a.slots.kk[s]][stage_a.slots.outer[s]] = stage_a.fetch(s, k0, k_count);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) bs[stage_b.slots.kk[s]][stage_b.slots.outer[s]] = stage_b.fetch(s, k0, k_count);
    stage_a.next_slice();
    stage_b.next_slice();
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
    const int r = tm + kRowsT * i;
    if (r >= m_count) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int c = tn + kColsT * j;
      if (c < n_count) store(m0 + r, n0 + c, acc[i][j]);
    }
  }
}

// ---- the two-accumulator tile loop (interval.cu) -------------------------------------------------
//
//   C1 = op(A1) op(B1),  C2 = op(A2) op(B2),  store(i, j, C1[i, j], C2[i, j])
//
// Interval bound propagation needs W c and |W| r: the same A, two B's. With A2 = AbsOfA1 the A
// slice is staged once and each thread takes |a| in registers, so W is read from memory once for
// both products; otherwise (the weight gradient, sum g_c col(c) + sign(W) sum g_r col(r)) all four
// operands are staged. Same blocking as gemm_tiles, with two 4x4 accumulator sets per thread
// (32 registers instead of 16) and twice the shared memory (three or four staged slices).
struct AbsOfA1 {};  // the A2 operand of a dual loop: |A1|, taken from A1's staged slice

template <bool kAbs, class A1, class A2>
__device__ const auto& second_a_loader(const A1& a1, const A2& a2) {
  if constexpr (kAbs)
    return a1;
  else
    return a2;
}

template <class LoadA1, class LoadA2, class LoadB1, class LoadB2, class Store>
__global__ __launch_bounds__(kThreads, kMinBlocksPerSM) void dual_gemm_tiles(LoadA1 load_a1, LoadA2 load_a2,
                                                                             LoadB1 load_b1, LoadB2 load_b2,
                                                                             Store store, int64_t M, int64_t N,
                                                                             int64_t K) {
  constexpr bool kAbs = std::is_same<LoadA2, AbsOfA1>::value;
  BW_SHARED(float, as1, [BK][BM + kPad]);
  BW_SHARED(float, as2, [kAbs ? 1 : BK][BM + kPad]);
  BW_SHARED(float, bs1, [BK][BN + kPad]);
  BW_SHARED(float, bs2, [BK][BN + kPad]);
  const int tid = threadIdx.x;
  const int tm = tid / kColsT, tn = tid % kColsT;
  const TileExtent tile(M, N);
  const int64_t m0 = tile.m0, n0 = tile.n0;
  const int m_count = tile.m_count, n_count = tile.n_count;
  typename StagerOf<LoadA1, false>::type stage_a1(load_a1, tid, m0, m_count);
  // With |A1| there is no A2 to stage: its stager is A1's again, built but never used.
  typename StagerOf<typename std::conditional<kAbs, LoadA1, LoadA2>::type, false>::type stage_a2(
      second_a_loader<kAbs>(load_a1, load_a2), tid, m0, m_count);
  typename StagerOf<LoadB1, true>::type stage_b1(load_b1, tid, n0, n_count);
  typename StagerOf<LoadB2, true>::type stage_b2(load_b2, tid, n0, n_count);
  float acc1[TM][TN], acc2[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc1[i][j] = acc2[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    const int k_count = K - k0 < BK ? int(K - k0) : BK;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) as1[stage_a1.slots.kk[s]][stage_a1.slots.outer[s]] = stage_a1.fetch(s, k0, k_count);
    if (!kAbs) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s)
        as2[stage_a2.slots.kk[s]][stage_a2.slots.outer[s]] = stage_a2.fetch(s, k0, k_count);
      stage_a2.next_slice();
    }
#pragma unroll
    for (int s = 0; s < kSlots; ++s) bs1[stage_b1.slots.kk[s]][stage_b1.slots.outer[s]] = stage_b1.fetch(s, k0, k_count);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) bs2[stage_b2.slots.kk[s]][stage_b2.slots.outer[s]] = stage_b2.fetch(s, k0, k_count);
    stage_a1.next_slice();
    stage_b1.next_slice();
    stage_b2.next_slice();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a1[TM], a2[TM], b1[TN], b2[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        a1[i] = as1[kk][tm + kRowsT * i];
        a2[i] = kAbs ? fabsf(a1[i]) : as2[kk][tm + kRowsT * i];
      }
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        b1[j] = bs1[kk][tn + kColsT * j];
        b2[j] = bs2[kk][tn + kColsT * j];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          acc1[i][j] += a1[i] * b1[j];
          acc2[i][j] += a2[i] * b2[j];
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = tm + kRowsT * i;
    if (r >= m_count) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int c = tn + kColsT * j;
      if (c < n_count) store(m0 + r, n0 + c, acc1[i][j], acc2[i][j]);
    }
  }
}

// The grid of a 64x64-tile launch over an M x N output: columns on grid.x (up to 2^31 - 1
// tiles), rows on grid.y (up to 65535 tiles, M <= 4,194,240); std::invalid_argument naming
// `kernel` beyond that.
inline dim3 tile_grid(const char* kernel, int64_t M, int64_t N) {
  const int64_t gx = (N + BN - 1) / BN, gy = (M + BM - 1) / BM;
  if (gy > 65535 || gx > 2147483647)
    throw std::invalid_argument(std::string(kernel) + ": output " + std::to_string(M) + " x " + std::to_string(N) +
                                " is too large for one launch");
  return dim3(unsigned(gx), unsigned(gy));
}

template <class LoadA1, class LoadA2, class LoadB1, class LoadB2, class Store>
void run_dual_tiles(const LoadA1& a1, const LoadA2& a2, const LoadB1& b1, const LoadB2& b2, const Store& s, int64_t M,
                    int64_t N, int64_t K, cudaStream_t stream, const LaunchCost& cost) {
  if (M <= 0 || N <= 0) return;
  BW_LAUNCH_COSTED(cost, (dual_gemm_tiles<LoadA1, LoadA2, LoadB1, LoadB2, Store>), tile_grid("dual_gemm_tiles", M, N),
                   dim3(kThreads), 0, stream, a1, a2, b1, b2, s, M, N, K);
}

// Launches the tile loop over an M x N output (tile_grid). `cost` is the caller's: only it knows what its
// loaders read from DRAM (an implicit-GEMM operand is the image, not the K x N matrix).
template <class LoadA, class LoadB, class Store>
void run_tiles(const LoadA& a, const LoadB& b, const Store& s, int64_t M, int64_t N, int64_t K, cudaStream_t stream,
               const LaunchCost& cost) {
  if (M <= 0 || N <= 0) return;
  BW_LAUNCH_COSTED(cost, (gemm_tiles<LoadA, LoadB, Store>), tile_grid("gemm_tiles", M, N), dim3(kThreads), 0, stream, a,
                   b, s, M, N, K);
}

}  // namespace bulwark::cuda::tile
