#pragma once
// The reduced-precision formats of the tensor-core kernels, as bit operations on f32 so the CPU,
// the emulator and the tests agree on every bit:
//
//   TF32: f32 with the low 13 of its 23 mantissa bits dropped (8-bit exponent, 10-bit mantissa).
//         __float_to_tf32 rounds to nearest, ties away from zero (PTX cvt.rna.tf32.f32); the
//         tensor core itself ignores the low 13 bits of what it is given (truncation).
//   BF16: the high 16 bits of f32 (8-bit exponent, 7-bit mantissa); conversion from f32 rounds
//         to nearest, ties to even (__float2bfloat16).
// Products of two TF32 (or BF16) values are exact in f32, so a tensor-core GEMM with f32
// accumulation differs from the f32 GEMM of the rounded inputs only in the order of the sums.
#include <cstdint>
#include <cstring>

#include "kernels/common/hd.h"

namespace bulwark {

// The input format of the model's GEMMs and convolutions (--precision): fp32 everywhere, or
// tf32 / bf16 inputs with f32 accumulation (tensor cores on a GPU; the same rounding emulated on
// the CPU). Bounds, attacks' pixel arithmetic and optimizer steps are f32 whatever this says.
enum class MathPrecision { fp32, tf32, bf16 };
inline constexpr MathPrecision kMathPrecisions[] = {MathPrecision::fp32, MathPrecision::tf32, MathPrecision::bf16};
inline const char* math_precision_name(MathPrecision p) {
  return p == MathPrecision::fp32 ? "fp32" : p == MathPrecision::tf32 ? "tf32" : "bf16";
}

}  // namespace bulwark

namespace bulwark::precision {

BW_HD inline uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
BW_HD inline float f32_from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
BW_HD inline bool is_nan_or_inf(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u; }

// Round to nearest TF32, ties away from zero; infinities and NaNs pass unchanged.
BW_HD inline float round_tf32(float x) {
  const uint32_t u = f32_bits(x);
  if (is_nan_or_inf(u)) return x;
  return f32_from_bits((u + 0x1000u) & ~0x1fffu);
}
// What a tensor core reads of an f32 register holding a TF32 operand: the low 13 bits ignored.
BW_HD inline float truncate_tf32(float x) {
  const uint32_t u = f32_bits(x);
  return is_nan_or_inf(u) ? x : f32_from_bits(u & ~0x1fffu);
}

// The BF16 bits of x, rounded to nearest, ties to even; NaN stays a (quiet) NaN.
BW_HD inline uint16_t bf16_bits(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
BW_HD inline float bf16_value(uint16_t bits) { return f32_from_bits(static_cast<uint32_t>(bits) << 16); }
BW_HD inline float round_bf16(float x) { return bf16_value(bf16_bits(x)); }

}  // namespace bulwark::precision
