#pragma once
// CUDA device functions for kernel source compiled by g++: barriers, warp collectives, atomics,
// the fast-math and bit intrinsics, and the cache-hinted loads and stores.
//
// The overload sets mirror CUDA 13's exactly (atomicMax has no float overload there, so it has
// none here), so kernel source that compiles under the emulator compiles under nvcc.
//
// Barriers and warp collectives take a defaulted Site::current() (execution.h), so the emulator can say
// where each thread waits when a barrier is not reached by all of them.
//
// Atomics are plain read-modify-writes: all threads of a launch run on one OS thread and only
// switch at barriers and collectives, so an atomic is never interrupted. On BW_SHARED memory they
// are recorded as atomics, which do not race with each other.
//
// The fast-math intrinsics (__expf, __fdividef, ...) compute the correctly rounded libm result;
// the GPU's approximations differ in the last bits, so kernel tests compare with a tolerance.
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include "kernels/emu/execution.h"
#include "kernels/emu/shared.h"

// ---- barriers ----------------------------------------------------------------------------------

inline void __syncthreads(bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  bulwark::emu::detail::block_barrier(bulwark::emu::detail::BarrierOp::sync, 1, loc);
}
inline int __syncthreads_count(int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return bulwark::emu::detail::block_barrier(bulwark::emu::detail::BarrierOp::count, predicate, loc);
}
inline int __syncthreads_and(int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return bulwark::emu::detail::block_barrier(bulwark::emu::detail::BarrierOp::all, predicate, loc);
}
inline int __syncthreads_or(int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return bulwark::emu::detail::block_barrier(bulwark::emu::detail::BarrierOp::any, predicate, loc);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  bulwark::emu::detail::warp_collective(bulwark::emu::detail::WarpOp::sync, mask, 0, 0, 32, false, loc);
}
inline unsigned __activemask() { return bulwark::emu::detail::active_mask(); }

// One OS thread runs every emulated thread, so fences only need to stop compiler reordering.
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) {}
inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
[[noreturn]] inline void __trap() {
  bulwark::emu::detail::fail(bulwark::emu::Fault::kernel_exception,
                             bulwark::emu::detail::describe_thread(bulwark::emu::detail::current.linear) +
                                 " called __trap()");
}

// ---- warp collectives --------------------------------------------------------------------------

namespace bulwark::emu::detail {
template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
template <class T>
T shuffle(WarpOp op, unsigned mask, T v, int arg, int width, Site site) {
  return from_bits<T>(warp_collective(op, mask, to_bits(v), arg, width, false, site));
}
}  // namespace bulwark::emu::detail

#define BW_EMU_WARP_VALUE_OPS(T)                                                                            \
  inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,                            \
                       bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {                        \
    return bulwark::emu::detail::shuffle(bulwark::emu::detail::WarpOp::shfl_idx, mask, var, src_lane, width, loc); \
  }                                                                                                         \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,                       \
                          bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {                     \
    return bulwark::emu::detail::shuffle(bulwark::emu::detail::WarpOp::shfl_up, mask, var,                  \
                                         static_cast<int>(delta), width, loc);                              \
  }                                                                                                         \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,                     \
                            bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {                   \
    return bulwark::emu::detail::shuffle(bulwark::emu::detail::WarpOp::shfl_down, mask, var,                \
                                         static_cast<int>(delta), width, loc);                              \
  }                                                                                                         \
  inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,                       \
                           bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {                    \
    return bulwark::emu::detail::shuffle(bulwark::emu::detail::WarpOp::shfl_xor, mask, var, lane_mask, width, loc); \
  }                                                                                                         \
  inline unsigned __match_any_sync(unsigned mask, T value, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) { \
    return static_cast<unsigned>(bulwark::emu::detail::warp_collective(                                    \
        bulwark::emu::detail::WarpOp::match_any, mask, bulwark::emu::detail::to_bits(value), 0, 32, false, loc)); \
  }                                                                                                         \
  inline unsigned __match_all_sync(unsigned mask, T value, int* pred,                                       \
                                   bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {            \
    const uint64_t r = bulwark::emu::detail::warp_collective(                                               \
        bulwark::emu::detail::WarpOp::match_all, mask, bulwark::emu::detail::to_bits(value), 0, 32, false, loc); \
    *pred = static_cast<int>(r >> 32);                                                                      \
    return static_cast<unsigned>(r);                                                                        \
  }

BW_EMU_WARP_VALUE_OPS(int)
BW_EMU_WARP_VALUE_OPS(unsigned int)
BW_EMU_WARP_VALUE_OPS(long)
BW_EMU_WARP_VALUE_OPS(unsigned long)
BW_EMU_WARP_VALUE_OPS(long long)
BW_EMU_WARP_VALUE_OPS(unsigned long long)
BW_EMU_WARP_VALUE_OPS(float)
BW_EMU_WARP_VALUE_OPS(double)
#undef BW_EMU_WARP_VALUE_OPS

inline unsigned __ballot_sync(unsigned mask, int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return static_cast<unsigned>(bulwark::emu::detail::warp_collective(bulwark::emu::detail::WarpOp::ballot, mask,
                                                                     predicate != 0, 0, 32, false, loc));
}
inline int __any_sync(unsigned mask, int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return static_cast<int>(bulwark::emu::detail::warp_collective(bulwark::emu::detail::WarpOp::any, mask,
                                                                predicate != 0, 0, 32, false, loc));
}
inline int __all_sync(unsigned mask, int predicate, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {
  return static_cast<int>(bulwark::emu::detail::warp_collective(bulwark::emu::detail::WarpOp::all, mask,
                                                                predicate != 0, 0, 32, false, loc));
}

#define BW_EMU_WARP_REDUCE(name, op, T, is_signed)                                                          \
  inline T name(unsigned mask, T value, bulwark::emu::detail::Site loc = bulwark::emu::detail::Site::current()) {      \
    return static_cast<T>(bulwark::emu::detail::warp_collective(bulwark::emu::detail::WarpOp::op, mask,     \
                                                                static_cast<uint32_t>(value), 0, 32, is_signed, loc)); \
  }
BW_EMU_WARP_REDUCE(__reduce_add_sync, reduce_add, unsigned, false)
BW_EMU_WARP_REDUCE(__reduce_add_sync, reduce_add, int, true)
BW_EMU_WARP_REDUCE(__reduce_min_sync, reduce_min, unsigned, false)
BW_EMU_WARP_REDUCE(__reduce_min_sync, reduce_min, int, true)
BW_EMU_WARP_REDUCE(__reduce_max_sync, reduce_max, unsigned, false)
BW_EMU_WARP_REDUCE(__reduce_max_sync, reduce_max, int, true)
BW_EMU_WARP_REDUCE(__reduce_and_sync, reduce_and, unsigned, false)
BW_EMU_WARP_REDUCE(__reduce_or_sync, reduce_or, unsigned, false)
BW_EMU_WARP_REDUCE(__reduce_xor_sync, reduce_xor, unsigned, false)
#undef BW_EMU_WARP_REDUCE

// ---- atomics -----------------------------------------------------------------------------------

#define BW_EMU_ATOMIC(name, T, update)                                                                      \
  inline T name(T* address, T val) {                                                                        \
    const T old = *address;                                                                                 \
    *address = (update);                                                                                    \
    return old;                                                                                             \
  }                                                                                                         \
  inline T name(bulwark::emu::SharedPtr<T> address, T val) {                                                \
    return name(bulwark::emu::detail::atomic_address(address), val);                                        \
  }

BW_EMU_ATOMIC(atomicAdd, int, old + val)
BW_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
BW_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
BW_EMU_ATOMIC(atomicAdd, float, old + val)
BW_EMU_ATOMIC(atomicAdd, double, old + val)
BW_EMU_ATOMIC(atomicSub, int, old - val)
BW_EMU_ATOMIC(atomicSub, unsigned int, old - val)
BW_EMU_ATOMIC(atomicExch, int, val)
BW_EMU_ATOMIC(atomicExch, unsigned int, val)
BW_EMU_ATOMIC(atomicExch, unsigned long long, val)
BW_EMU_ATOMIC(atomicExch, float, val)
BW_EMU_ATOMIC(atomicMin, int, val < old ? val : old)
BW_EMU_ATOMIC(atomicMin, unsigned int, val < old ? val : old)
BW_EMU_ATOMIC(atomicMin, long long, val < old ? val : old)
BW_EMU_ATOMIC(atomicMin, unsigned long long, val < old ? val : old)
BW_EMU_ATOMIC(atomicMax, int, val > old ? val : old)
BW_EMU_ATOMIC(atomicMax, unsigned int, val > old ? val : old)
BW_EMU_ATOMIC(atomicMax, long long, val > old ? val : old)
BW_EMU_ATOMIC(atomicMax, unsigned long long, val > old ? val : old)
BW_EMU_ATOMIC(atomicAnd, int, old & val)
BW_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
BW_EMU_ATOMIC(atomicAnd, unsigned long long, old & val)
BW_EMU_ATOMIC(atomicOr, int, old | val)
BW_EMU_ATOMIC(atomicOr, unsigned int, old | val)
BW_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
BW_EMU_ATOMIC(atomicXor, int, old ^ val)
BW_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
BW_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
// ((old >= val) ? 0 : old + 1) and (((old == 0) || (old > val)) ? val : old - 1), as in CUDA.
BW_EMU_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1)
BW_EMU_ATOMIC(atomicDec, unsigned int, (old == 0 || old > val) ? val : old - 1)
#undef BW_EMU_ATOMIC

#define BW_EMU_ATOMIC_CAS(T)                                                                                \
  inline T atomicCAS(T* address, T compare, T val) {                                                        \
    const T old = *address;                                                                                 \
    if (old == compare) *address = val;                                                                     \
    return old;                                                                                             \
  }                                                                                                         \
  inline T atomicCAS(bulwark::emu::SharedPtr<T> address, T compare, T val) {                                \
    return atomicCAS(bulwark::emu::detail::atomic_address(address), compare, val);                          \
  }
BW_EMU_ATOMIC_CAS(int)
BW_EMU_ATOMIC_CAS(unsigned int)
BW_EMU_ATOMIC_CAS(unsigned long long)
BW_EMU_ATOMIC_CAS(unsigned short)
#undef BW_EMU_ATOMIC_CAS

// ---- loads and stores with cache hints: plain accesses on the CPU ------------------------------

template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- float math intrinsics ---------------------------------------------------------------------

inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }

// ---- conversions and reinterpretations ---------------------------------------------------------

inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }  // ties to even
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(nearbyintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

// ---- integer intrinsics ------------------------------------------------------------------------

inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
// Byte i of the result is byte (s >> 4i) & 7 of the 8-byte value {y:x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift & 31));
}
inline int __mul24(int x, int y) { return ((x << 8) >> 8) * ((y << 8) >> 8); }
inline unsigned __umul24(unsigned x, unsigned y) { return (x & 0xffffffu) * (y & 0xffffffu); }
inline int __mulhi(int x, int y) { return static_cast<int>((static_cast<long long>(x) * y) >> 32); }
inline unsigned __umulhi(unsigned x, unsigned y) { return static_cast<unsigned>((static_cast<unsigned long long>(x) * y) >> 32); }
inline long long __mul64hi(long long x, long long y) { return static_cast<long long>((static_cast<__int128>(x) * y) >> 64); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(x) * y) >> 64);
}
inline unsigned __sad(int x, int y, unsigned z) { return z + static_cast<unsigned>(x > y ? x - y : y - x); }
inline unsigned __usad(unsigned x, unsigned y, unsigned z) { return z + (x > y ? x - y : y - x); }

// ---- min / max: CUDA's global overloads (math_functions.hpp) -----------------------------------

#define BW_EMU_MINMAX(R, A, B)                                                                              \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
BW_EMU_MINMAX(int, int, int)
BW_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
BW_EMU_MINMAX(unsigned int, int, unsigned int)
BW_EMU_MINMAX(unsigned int, unsigned int, int)
BW_EMU_MINMAX(long, long, long)
BW_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
BW_EMU_MINMAX(unsigned long, long, unsigned long)
BW_EMU_MINMAX(unsigned long, unsigned long, long)
BW_EMU_MINMAX(long long, long long, long long)
BW_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
BW_EMU_MINMAX(unsigned long long, long long, unsigned long long)
BW_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef BW_EMU_MINMAX
// Floating point min/max are fmin/fmax, as in CUDA (a NaN loses to a number).
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
