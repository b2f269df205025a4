#pragma once
// The register-tile micro-kernel of the CPU's direct convolutions (conv_direct.cpp): a tile of
// up to 28 accumulator vectors, R rows x TW columns of pixels x NV vectors of 16 outputs, fed
// per tap by NV weight vectors and one broadcast input word per pixel, in FP32 (an FMA) or BF16
// (a pair of products per lane, VDPBF16PS).
//
// The vector type is GCC's vector extension: 64-byte vectors compile to one zmm register with
// AVX-512 and to pairs of ymm registers (with spills, but correct) without it.
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "kernels/common/precision.h"

namespace bulwark::cpu::tile {

typedef float vec __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kBlock = 2 * kLanes;  // output channels per work item: NV <= 2 vectors
constexpr int kMaxAccumulators = 28;
constexpr int kMaxTileWidth = 7;
constexpr int kMaxTileRows = 4;

// The arithmetic of a tap. Fp32: one input value (a float) times a vector of 16 output
// channels' weights. Bf16 (--precision bf16, AVX512-BF16): a tap is a *pair* of input channels
// at one position, stored as two adjacent BF16 values (one 32-bit word); the weights hold the
// matching pairs, and VDPBF16PS adds both products of each lane's pair to its FP32 sum, twice
// the multiplies of an FMA in the same time. Both round their operands as the rest of the CPU
// backend does at that precision (kernels/common/precision.h), so only the order of the sums
// differs from the im2col path's.
struct Fp32 {
  using Word = float;
  static constexpr int64_t kChannels = 1;  // input channels per word
  static Word pack(const float* v) { return v[0]; }
  static vec fma(vec acc, const Word* w, Word x) {
    vec wv;
    std::memcpy(&wv, w, sizeof(vec));
    return acc + wv * x;
  }
};
#if defined(__AVX512BF16__)
struct Bf16 {
  using Word = uint32_t;
  static constexpr int64_t kChannels = 2;
  static Word pack(const float* v) {  // v[0] in the low half, as the instruction pairs them
    return static_cast<Word>(precision::bf16_bits(v[0])) | static_cast<Word>(precision::bf16_bits(v[1])) << 16;
  }
  static vec fma(vec acc, const Word* w, Word x) {
    __m512bh wv;
    std::memcpy(&wv, w, sizeof(wv));
    return static_cast<vec>(_mm512_dpbf16_ps(static_cast<__m512>(acc), wv, (__m512bh)_mm512_set1_epi32(static_cast<int>(x))));
  }
};
#endif

// R rows x TW columns x NV channel vectors of one output tile. `q` is the padded input at the
// tile's first tap of its first pixel; tap k of pixel (r, t) is q[koff[k] + r * row_step + t * ST].
// `wt` holds the block's weights, tap k at wt + k * wld; `out` the tile buffer at the first
// pixel, pixel (r, t) at out + (r * out_row + t) * kBlock.
template <class A, int NV, int TW, int R, int ST>
void tile_kernel(const typename A::Word* q, int64_t row_step, const int32_t* koff, int64_t K,
                 const typename A::Word* wt, int64_t wld, float* out, int64_t out_row) {
  vec acc[R][TW][NV];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TW; ++t)
      for (int v = 0; v < NV; ++v) acc[r][t][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    const typename A::Word* p = q + koff[k];
    const typename A::Word* w = wt + k * wld;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < TW; ++t) {
        const typename A::Word x = p[r * row_step + t * ST];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][t][v] = A::fma(acc[r][t][v], w + v * kLanes, x);
      }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TW; ++t)
      for (int v = 0; v < NV; ++v) std::memcpy(out + (r * out_row + t) * kBlock + v * kLanes, &acc[r][t][v], sizeof(vec));
}

template <class A>
using TileFn = void (*)(const typename A::Word*, int64_t, const int32_t*, int64_t, const typename A::Word*, int64_t,
                        float*, int64_t);
template <class A>
using TileTable = std::array<std::array<TileFn<A>, kMaxTileRows>, kMaxTileWidth>;

// tiles<A>[NV - 1][ST - 1][TW - 1][R - 1]
template <class A, int NV, int ST>
constexpr TileTable<A> tiles_for() {
  TileTable<A> out{};
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((out[I / kMaxTileRows][I % kMaxTileRows] = &tile_kernel<A, NV, I / kMaxTileRows + 1, I % kMaxTileRows + 1, ST>), ...);
  }(std::make_integer_sequence<int, kMaxTileWidth * kMaxTileRows>{});
  return out;
}
template <class A>
const TileTable<A> tiles[2][2] = {{tiles_for<A, 1, 1>(), tiles_for<A, 1, 2>()}, {tiles_for<A, 2, 1>(), tiles_for<A, 2, 2>()}};

}  // namespace bulwark::cpu::tile
