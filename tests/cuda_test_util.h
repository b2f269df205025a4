#pragma once
// Helpers shared by the CUDA tests (tests/test_cuda_kernels_*.cpp, test_kernel_source.cpp,
// test_emu.cpp): device memory, random inputs, and the llm.c-style tolerance check.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/emu/execution.h"
#include "kernels/emu/runtime.h"

namespace bulwark::testing {

// Launches so far, under the emulator, of the __global__ function `kernel` whatever its template
// arguments (the emulator's launch registry): a test's proof that a kernel really ran.
inline uint64_t launches_of(const std::string& kernel) {
  uint64_t total = 0;
  for (const auto& [name, record] : emu::launch_counts())
    if (emu::kernel_base_name(name) == kernel) total += record.launches;
  return total;
}

// Device memory for a test, freed when the scope ends. It comes from the CUDA runtime API (the
// emulator's, kernels/emu/runtime.h), not the backend's caching allocator, so it is exactly
// `count` elements long: AddressSanitizer and the emulator's pointer checks catch a kernel that
// runs past it. Made from a count, it holds the emulator's poison (0xFF bytes: NaN as a float,
// -1 as an int) until written, so an element a kernel forgot to write shows.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    REQUIRE(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess);
  }
  explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) {
    if (n) REQUIRE(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    if (n) REQUIRE(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

inline std::vector<float> uniform_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Every element within atol + rtol |want| (NaN only matches NaN); the first few mismatches are
// printed, llm.c style, then the count is asserted.
inline void require_close(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                          const std::string& what) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = (std::isnan(g) && std::isnan(w)) || g == w || std::fabs(g - w) <= atol + rtol * std::fabs(w);
    if (!ok) {
      if (bad < 5) std::printf("%s: [%zu] got %.7g, want %.7g\n", what.c_str(), i, g, w);
      ++bad;
    }
  }
  INFO(what << ": " << bad << " of " << want.size() << " elements out of tolerance");
  REQUIRE(bad == 0);
}

}  // namespace bulwark::testing
