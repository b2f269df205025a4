#pragma once
// Internal helpers shared by the engine's op implementations: dimension handling, broadcast
// strides, and the dtype/device dispatch to the kernels. Not part of the public API.
#include <fmt/format.h>

#include <stdexcept>

#include "engine/profiler.h"
#include "engine/tensor.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"

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

// require_float and require_same_device: engine/tensor.h.
// Throws std::invalid_argument unless `dt` is f32: the CUDA backend's kernels are f32 only.
void require_cuda_dtype(DType dt, const char* op);

// Throws std::out_of_range unless every index of `idx` (contiguous i32) lies in [0, bound),
// naming the first one that does not (cuda::index_error_message). A CPU tensor is checked now.
// A CUDA tensor is checked on the device without a host sync: the error is raised by the next
// copy to the host or synchronize (cuda::check_indices; docs/engine.md, "Deferred index errors").
void check_index_range(const Tensor& idx, int64_t bound, const char* op, cuda::IndexRole role);

// Runs `body` with T = float or double according to `dt`.
#define BW_DISPATCH_FLOAT(dt, op, ...)                                                         \
  switch (dt) {                                                                                 \
    case ::bulwark::DType::f32: { using T = float; __VA_ARGS__; break; }                       \
    case ::bulwark::DType::f64: { using T = double; __VA_ARGS__; break; }                      \
    default: throw std::invalid_argument(std::string(op) + ": needs a floating-point tensor"); \
  }

// The one device dispatch: runs kernel `fn` of the tensor's backend with the same arguments,
// timed by the profiler when a session is active (engine/profiler.h).
//   Device::cpu:  BW_DISPATCH_FLOAT, i.e. cpu::fn<T>(args...) with T = float or double;
//   Device::cuda: cuda::fn(args...) with T = float (f64 on CUDA is a clear error).
// The arguments may use T (x.data<T>(), static_cast<T>(p)); the CPU path is exactly the call
// it was before this macro existed.
#define BW_KERNEL(dev, dt, op, fn, ...)                                          \
  do {                                                                            \
    const ::bulwark::profiler::KernelScope bw_profile_((op), (dev) == ::bulwark::Device::cuda); \
    if ((dev) == ::bulwark::Device::cuda) {                                       \
      ::bulwark::require_cuda_dtype((dt), (op));                                  \
      using T = float;                                                            \
      ::bulwark::cuda::fn(__VA_ARGS__);                                           \
    } else {                                                                      \
      BW_DISPATCH_FLOAT((dt), (op), ::bulwark::cpu::fn<T>(__VA_ARGS__));          \
    }                                                                             \
  } while (0)

}  // namespace bulwark
