#pragma once
// What every kernels/cuda/*.cu file includes to launch kernels and declare shared memory in a
// way both compilers accept: nvcc for the GPU, and g++ with the emulator (emu.h).
//
//   BW_LAUNCH(kernel, grid, block, shared_bytes, stream, args...)
//       Under nvcc: kernel<<<grid, block, shared_bytes, stream>>>(args...) followed by a check
//       of cudaGetLastError() that throws std::runtime_error naming the kernel (configuration
//       errors: too many threads, too much shared memory). Under the emulator: validates the
//       launch like the GPU, runs it to completion, throws bulwark::emu::Error on anything a GPU
//       would reject, hang on, or race on, and counts the launch in the registry under the
//       kernel's name (bulwark::emu::launch_counts()). A template kernel goes in parentheses:
//       BW_LAUNCH((gemm<64, 64>), grid, block, 0, stream, a, b, c).
//   BW_LAUNCH_COSTED(cost, kernel, grid, block, shared_bytes, stream, args...)
//       The same, stating the launch's FLOPs and DRAM bytes (a LaunchCost, launch_cost.h) for the
//       GPU cost model. Every launch in kernels/cuda states its cost; plain BW_LAUNCH is for the
//       emulator's own tests. Both builds tell the thread's LaunchObserver, if any, before the
//       kernel runs; under the emulator's record-only mode the kernel then does not run at all.
//   BW_SHARED(T, name, dims)          __shared__ T name dims;   e.g. BW_SHARED(float, tile, [32][33]);
//   BW_SHARED_ALIGNED(T, name, dims, bytes)  the same, aligned to `bytes` (a literal: WMMA wants 32).
//   BW_DYNAMIC_SHARED(T, name)        a T* to the launch's dynamic shared memory (16-byte aligned).
//                                     Several declarations in one kernel alias the same bytes.
//   BW_SHARED_PTR(T)                  the type of a pointer to shared memory, for device-function
//                                     parameters: T* under nvcc, a checked pointer under the emulator.
//   BW_SHARED_CAST(U, p)              reinterpret_cast<U*>(p) for a shared-memory pointer p.
// Under the emulator, accesses through all of these are bounds-checked and race-checked
// (shared.h explains how, and why `auto x = tile[i];` must be written `float x = tile[i];`).
#include "kernels/emu/launch_cost.h"

#if defined(BULWARK_EMU)

#include <tuple>
#include <type_traits>
#include <utility>
#include "kernels/emu/emu.h"

namespace bulwark {

namespace emu::detail {
template <class Tuple, size_t... I>
void check_pointer_arguments(const char* name, const Tuple& params, std::index_sequence<I...>) {
  (void)name;  // unused when the kernel takes no arguments
  (
      [&] {
        if constexpr (std::is_pointer_v<std::tuple_element_t<I, Tuple>>)
          check_pointer_argument(name, static_cast<int>(I), static_cast<const void*>(std::get<I>(params)));
      }(),
      ...);
}
}  // namespace emu::detail

template <class... P, class... A>
void launch(const char* name, const LaunchCost& cost, void (*kernel)(P...), dim3 grid, dim3 block,
            size_t shared_bytes, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "BW_LAUNCH: wrong number of kernel arguments");
  using Params = std::tuple<std::decay_t<P>...>;
  struct Bound {
    void (*kernel)(P...);
    Params params;
  };
  // Arguments are converted to the kernel's parameter types once, as the CUDA runtime does when
  // it copies them to the launch's parameter buffer; each thread then gets its own copy.
  Bound bound{kernel, Params(std::forward<A>(args)...)};
  if (emu::config().check_pointer_arguments)
    emu::detail::check_pointer_arguments(name, bound.params, std::index_sequence_for<P...>{});
  emu::detail::KernelLaunch launch{name,  reinterpret_cast<const void*>(kernel),
                                   grid,  block,
                                   shared_bytes, stream,
                                   sizeof(Params),
                                   cost,
                                   [](void* b) {
                                     auto* bp = static_cast<Bound*>(b);
                                     std::apply(bp->kernel, bp->params);
                                   },
                                   &bound,
                                   [](const void* b) -> void* { return new Bound(*static_cast<const Bound*>(b)); },
                                   [](void* b) { delete static_cast<Bound*>(b); }};
  emu::detail::run_grid(launch);
}

}  // namespace bulwark

#define BW_SHARED(T, name, dims)                                                                     \
  static thread_local ::bulwark::emu::detail::SharedSite bw_shared_site_##name;                    \
  ::bulwark::emu::SharedArray<T dims> name =                                                         \
      ::bulwark::emu::detail::shared_static<T dims>(bw_shared_site_##name, #name, ::bulwark::emu::detail::Site::current())
#define BW_SHARED_ALIGNED(T, name, dims, bytes)                                                      \
  static thread_local ::bulwark::emu::detail::SharedSite bw_shared_site_##name;                    \
  ::bulwark::emu::SharedArray<T dims> name = ::bulwark::emu::detail::shared_static<T dims, bytes>(   \
      bw_shared_site_##name, #name, ::bulwark::emu::detail::Site::current())
#define BW_DYNAMIC_SHARED(T, name) ::bulwark::emu::SharedPtr<T> name = ::bulwark::emu::detail::dynamic_shared<T>()
#define BW_SHARED_PTR(T) ::bulwark::emu::SharedPtr<T>
#define BW_SHARED_CAST(U, p) ((p).template cast<U>())

#else  // nvcc

#include <cuda_runtime.h>
#include <stdexcept>
#include <string>
#include <utility>

namespace bulwark {

template <class... P, class... A>
void launch(const char* name, const LaunchCost& cost, void (*kernel)(P...), dim3 grid, dim3 block,
            size_t shared_bytes, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "BW_LAUNCH: wrong number of kernel arguments");
  notify_launch(name, 1ull * grid.x * grid.y * grid.z, block.x * block.y * block.z, cost);
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<A>(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA launch of kernel '") + name + "' failed: " + cudaGetErrorName(err) +
                             ": " + cudaGetErrorString(err));
}

}  // namespace bulwark

#define BW_SHARED(T, name, dims) __shared__ T name dims
#define BW_SHARED_ALIGNED(T, name, dims, bytes) __shared__ __align__(bytes) T name dims
#define BW_DYNAMIC_SHARED(T, name)                                                                   \
  extern __shared__ __align__(16) unsigned char bw_dynamic_shared_[];                              \
  T* name = reinterpret_cast<T*>(bw_dynamic_shared_)
#define BW_SHARED_PTR(T) T*
#define BW_SHARED_CAST(U, p) reinterpret_cast<U*>(p)

#endif

#define BW_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                                    \
  ::bulwark::launch(#kernel, ::bulwark::LaunchCost{}, kernel, grid, block, shared_bytes, stream __VA_OPT__(, ) __VA_ARGS__)
#define BW_LAUNCH_COSTED(cost, kernel, grid, block, shared_bytes, stream, ...)                       \
  ::bulwark::launch(#kernel, cost, kernel, grid, block, shared_bytes, stream __VA_OPT__(, ) __VA_ARGS__)
