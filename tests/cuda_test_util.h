#pragma once
// Helpers shared by the CUDA kernel tests (tests/test_cuda_kernels_*.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace bulwark::testing {

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
