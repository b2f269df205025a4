#pragma once
// The emulated twin of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) for the shapes bulwark's
// tensor-core kernels use: m16n16k8 with TF32 inputs and m16n16k16 with BF16 inputs, both with
// f32 accumulators. kernels/cuda/tensor_core.cuh picks this or nvcuda::wmma.
//
// The hardware's documented semantics, and only those:
//   - a fragment's elements are spread over the 32 lanes of a warp in an unspecified layout.
//     Here each fragment type has its own scrambled mapping (a fixed permutation of the matrix's
//     elements over lanes and slots), so code that reads x[i] as "element i of row r" gets wrong
//     answers in the tests; code that treats x[] as a bag (x[i] = __float_to_tf32(x[i])) works.
//   - load, store, fill and mma are warp-collective: every lane of the warp must call them, with
//     the same pointer and ldm (checked). Pointers must be 256-bit aligned and ldm a multiple of
//     16 bytes, as the CUDA documentation requires (checked).
//   - mma_sync reads TF32 operands as their top 19 bits (the low 13 mantissa bits are ignored:
//     round with __float_to_tf32 first, as the CUDA guide says), BF16 exactly, multiplies
//     exactly and accumulates in f32 (here in k order; the hardware's order is unspecified, so
//     tests compare with a tolerance).
#include "kernels/emu/emu.h"  // first: it defines the __host__/__device__ that precision.h uses

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/common/precision.h"
#include "kernels/emu/shim/cuda_bf16.h"

namespace bulwark::emu::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

inline float __float_to_tf32(float x) { return bulwark::precision::round_tf32(x); }

namespace detail {

template <class Use, int M, int N, int K>
struct Dims;  // the matrix a fragment holds: rows x cols
template <int M, int N, int K>
struct Dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <class T>
struct Storage {
  using type = T;  // float for accumulators, __nv_bfloat16 for BF16 operands
};
template <>
struct Storage<precision::tf32> {
  using type = float;  // TF32 operands live in f32 registers
};

// Element `slot` of lane `lane`'s share -> its index in the row-major matrix: an affine
// permutation idx = (a p + b) mod count of p = lane * per_lane + slot, with a odd (count is a
// power of two) and a, b different for the three kinds of fragment.
template <class Use>
constexpr int scramble_a() {
  return std::is_same_v<Use, matrix_a> ? 37 : std::is_same_v<Use, matrix_b> ? 101 : 73;
}
template <class Use, int Count>
constexpr int element_of(int lane, int slot, int per_lane) {
  const int p = lane * per_lane + slot;
  return (scramble_a<Use>() * p + 11) % Count;
}

[[noreturn]] void wmma_fail(const std::string& what, Fault fault = Fault::kernel_exception);
// The calling thread's lane and its warp's index in the block.
int lane_id();
int warp_id();
// Scratch of this warp, big enough for an m16n16k16 problem (A, B and C as f32).
float* warp_scratch();
// Checks that every lane of the warp calls the same operation with the same arguments: `key`
// combines the pointer and ldm (0 for mma). A collective on the warp (like __syncwarp).
void warp_agree(const char* op, uint64_t key);

inline uint64_t key_of(const void* p, unsigned ldm) { return reinterpret_cast<uintptr_t>(p) * 1315423911u ^ ldm; }
template <class P>
const void* raw(const P& p) {
  if constexpr (std::is_pointer_v<P>)
    return p;
  else
    return static_cast<const void*>(static_cast<const typename P::value_type*>(p));
}
inline void check_alignment(const char* op, const void* p, unsigned ldm, size_t element_bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    wmma_fail(std::string(op) + ": the matrix pointer must be 256-bit (32-byte) aligned");
  if ((ldm * element_bytes) % 16 != 0)
    wmma_fail(std::string(op) + ": ldm must be a multiple of 16 bytes (" + std::to_string(16 / element_bytes) +
              " elements of this type)");
}

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16(x);
  else
    return x;
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
 public:
  using element_type = typename detail::Storage<T>::type;
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows, cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  element_type x[num_elements];
  // Row-major index of element `slot` of the calling lane.
  static int index(int slot) { return detail::element_of<Use, rows * cols>(detail::lane_id(), slot, num_elements); }
};

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, float value) {
  detail::warp_agree("fill_fragment", 0);
  for (auto& e : f.x) e = detail::from_float<typename fragment<Use, M, N, K, T, L>::element_type>(value);
}

namespace detail {
template <class Frag, class P>
void load(Frag& f, const P& p, unsigned ldm, bool row_major_memory, const char* op) {
  using E = typename Frag::element_type;
  check_alignment(op, raw(p), ldm, sizeof(E));
  warp_agree(op, key_of(raw(p), ldm));
  for (int s = 0; s < Frag::num_elements; ++s) {
    const int idx = Frag::index(s), r = idx / Frag::cols, c = idx % Frag::cols;
    f.x[s] = static_cast<E>(p[row_major_memory ? r * ldm + c : c * ldm + r]);
  }
}
}  // namespace detail

// matrix_a / matrix_b: the layout is the fragment's.
template <class Use, int M, int N, int K, class T, class L, class P>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P& p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  detail::load(f, p, ldm, std::is_same_v<L, row_major>, "load_matrix_sync");
}
template <int M, int N, int K, class T, class P>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P& p, unsigned ldm, layout_t layout) {
  detail::load(f, p, ldm, layout == mem_row_major, "load_matrix_sync");
}

template <int M, int N, int K, class T, class P>
void store_matrix_sync(const P& p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  using Frag = fragment<accumulator, M, N, K, T>;
  detail::check_alignment("store_matrix_sync", detail::raw(p), ldm, sizeof(float));
  detail::warp_agree("store_matrix_sync", detail::key_of(detail::raw(p), ldm));
  for (int s = 0; s < Frag::num_elements; ++s) {
    const int idx = Frag::index(s), r = idx / Frag::cols, c = idx % Frag::cols;
    p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[s];
  }
}

// d = a b + c. Every lane deposits its shares of a, b and c in the warp's scratch (as f32, the
// TF32 operands truncated as the hardware reads them), the warp meets, each lane computes its
// share of d, and the warp meets again before the scratch can be reused.
template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  using FA = fragment<matrix_a, M, N, K, T, LA>;
  using FB = fragment<matrix_b, M, N, K, T, LB>;
  using FC = fragment<accumulator, M, N, K, float>;
  static_assert(M * K + K * N + M * N <= 3 * 256, "the warp scratch holds an m16n16k16 problem");
  const auto operand = [](auto e) {
    const float v = detail::to_float(e);
    return std::is_same_v<T, precision::tf32> ? bulwark::precision::truncate_tf32(v) : v;
  };
  float* scratch = detail::warp_scratch();
  float *as = scratch, *bs = scratch + M * K, *cs = bs + K * N;
  for (int s = 0; s < FA::num_elements; ++s) as[FA::index(s)] = operand(a.x[s]);
  for (int s = 0; s < FB::num_elements; ++s) bs[FB::index(s)] = operand(b.x[s]);
  for (int s = 0; s < FC::num_elements; ++s) cs[FC::index(s)] = c.x[s];
  detail::warp_agree("mma_sync", 0);
  float out[FC::num_elements];
  for (int s = 0; s < FC::num_elements; ++s) {
    const int idx = FC::index(s), r = idx / N, col = idx % N;
    float acc = cs[idx];
    for (int k = 0; k < K; ++k) acc += as[r * K + k] * bs[k * N + col];
    out[s] = acc;
  }
  detail::warp_agree("mma_sync", 1);
  for (int s = 0; s < FC::num_elements; ++s) d.x[s] = out[s];
}

}  // namespace bulwark::emu::wmma
