#pragma once
// Internal helpers shared by the engine's op implementations: dimension handling, broadcast
// strides, and the dtype/device dispatch to the kernels. Not part of the public API.
#include <fmt/format.h>

#include <stdexcept>

#include "engine/tensor.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark {

inline int64_t normalize_dim(int64_t d, int64_t ndim) {
  const int64_t r = d < 0 ? d + ndim : d;
  if (r < 0 || r >= std::max<int64_t>(ndim, 1))
    throw std::invalid_argument(fmt::format("dimension {} out of range for a {}-d tensor", d, ndim));
  return r;
}

// The strides of `t` seen through broadcasting to `out` (0 on broadcast dims).
cpu::Strided broadcast_view(const Tensor& t, const Shape& out);
Shape broadcast_shapes(const Shape& a, const Shape& b);

// dst (contiguous, same shape) <- src (any strides), same dtype.
void copy_strided(const Tensor& src, Tensor& dst);
// dst (contiguous) <- src (contiguous) converted to dst's dtype.
void convert_dtype(const Tensor& src, Tensor& dst);

void require_cpu(const Tensor& t, const char* op);
void require_float(const Tensor& t, const char* op);

// Runs `body` with T = float or double according to `dt`.
#define BW_DISPATCH_FLOAT(dt, op, ...)                                                         \
  switch (dt) {                                                                                 \
    case ::bulwark::DType::f32: { using T = float; __VA_ARGS__; break; }                       \
    case ::bulwark::DType::f64: { using T = double; __VA_ARGS__; break; }                      \
    default: throw std::invalid_argument(std::string(op) + ": needs a floating-point tensor"); \
  }

}  // namespace bulwark
