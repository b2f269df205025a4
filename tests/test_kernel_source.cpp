// How cuda::gemm and cuda::conv2d_* choose between our kernels and cuBLAS/cuDNN
// (kernels/cuda/kernel_source.h), in the emulated backend the tests link: "ours" and "auto" run
// our kernels and match the CPU; "vendor" is refused with a message that says why; and the
// automatic choice's cache, driven by made-up timings, keeps the faster source per shape and
// times each shape once.
#include <catch2/catch.hpp>

#include "kernels/emu/emu.h"

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/kernel_source.h"
#include "kernels/cuda/vendor.h"
#include "tests/cuda_test_util.h"

namespace {

namespace cpu = bulwark::cpu;
namespace cuda = bulwark::cuda;
namespace emu = bulwark::emu;
using cuda::KernelSource;
using Catch::Matchers::Contains;
using bulwark::testing::DeviceBuffer;

// Puts the process-wide setting back when a test ends.
struct KernelSourceGuard {
  KernelSource saved = cuda::kernel_source();
  ~KernelSourceGuard() { cuda::set_kernel_source(saved); }
};

uint64_t tile_launches() { return bulwark::testing::launches_of("gemm_tiles"); }

// The four routed launchers at awkward sizes (not multiples of the 64x64 tile, odd channels,
// stride 2 with a partial window), each compared with the CPU; returns their outputs.
std::vector<std::vector<float>> run_routed_launchers_against_cpu() {
  using bulwark::testing::require_close;
  using bulwark::testing::uniform_floats;
  std::vector<std::vector<float>> outputs;

  const int64_t M = 37, N = 70, K = 19;  // op(A) = A^T: A is K x M
  const auto a = uniform_floats(size_t(K * M), 1, -1, 1), b = uniform_floats(size_t(K * N), 2, -1, 1);
  auto c = uniform_floats(size_t(M * N), 3, -1, 1);
  DeviceBuffer<float> da(a), db(b), dc(c);
  cuda::gemm(true, false, M, N, K, 1.5f, da.ptr, M, db.ptr, N, 0.5f, dc.ptr, N);
  cpu::gemm<float>(true, false, M, N, K, 1.5f, a.data(), M, b.data(), N, 0.5f, c.data(), N);
  outputs.push_back(dc.host());
  require_close(outputs.back(), c, 1e-5 * (K + 1), 1e-4, "gemm");

  cpu::ConvShape s{2, 3, 9, 9, 5, 3, 3, 2, 1, 5, 5};  // n c h w o kh kw stride pad oh ow
  const auto x = uniform_floats(size_t(s.n * s.c * s.h * s.w), 4, -1, 1);
  const auto w = uniform_floats(size_t(s.o * s.c * s.kh * s.kw), 5, -1, 1);
  const auto bias = uniform_floats(size_t(s.o), 6, -1, 1);
  const auto g = uniform_floats(size_t(s.n * s.o * s.oh * s.ow), 7, -1, 1);
  std::vector<float> y(g.size()), dx(x.size()), dw(w.size());
  DeviceBuffer<float> d_x(x), d_w(w), d_bias(bias), d_g(g), d_y(y.size()), d_dx(dx.size()), d_dw(dw.size());
  cuda::conv2d_forward(s, d_x.ptr, d_w.ptr, d_bias.ptr, d_y.ptr);
  cuda::conv2d_backward_input(s, d_g.ptr, d_w.ptr, d_dx.ptr);
  cuda::conv2d_backward_weight(s, d_x.ptr, d_g.ptr, d_dw.ptr);
  cpu::conv2d_forward<float>(s, x.data(), w.data(), bias.data(), y.data());
  cpu::conv2d_backward_input<float>(s, g.data(), w.data(), dx.data());
  cpu::conv2d_backward_weight<float>(s, x.data(), g.data(), dw.data());
  for (const auto& [device, want, what] : {std::tuple{&d_y, &y, "conv2d_forward"},
                                           std::tuple{&d_dx, &dx, "conv2d_backward_input"},
                                           std::tuple{&d_dw, &dw, "conv2d_backward_weight"}}) {
    outputs.push_back(device->host());
    require_close(outputs.back(), *want, 1e-5, 1e-4, what);
  }
  return outputs;
}

TEST_CASE("kernel source: 'ours' and 'auto' run our kernels, which match the CPU", "[cuda][kernel-source]") {
  REQUIRE(cuda::emulated());
  KernelSourceGuard guard;

  cuda::set_kernel_source(KernelSource::ours);
  REQUIRE(cuda::kernel_source() == KernelSource::ours);
  uint64_t before = tile_launches();
  const auto ours = run_routed_launchers_against_cpu();
  CHECK(tile_launches() == before + 4);  // one tile-loop launch per routed call: ours ran

  // In the emulated backend there is no vendor to time, so automatic is ours: same kernels,
  // same bits.
  cuda::set_kernel_source(KernelSource::automatic);
  before = tile_launches();
  const auto automatic = run_routed_launchers_against_cpu();
  CHECK(tile_launches() == before + 4);
  REQUIRE(automatic == ours);
}

TEST_CASE("kernel source: 'vendor' under the emulator is refused, saying cuBLAS/cuDNN are GPU-build only",
          "[cuda][kernel-source]") {
  REQUIRE(cuda::emulated());
  KernelSourceGuard guard;
  cuda::set_kernel_source(KernelSource::ours);
  REQUIRE_THROWS_AS(cuda::set_kernel_source(KernelSource::vendor), std::invalid_argument);
  REQUIRE_THROWS_WITH(cuda::set_kernel_source(KernelSource::vendor),
                      Contains("cuBLAS/cuDNN exist only in the GPU build") && Contains("'ours' or 'auto'"));
  REQUIRE(cuda::kernel_source() == KernelSource::ours);  // the refused choice changed nothing

  // Calling a vendor launcher directly says the same.
  cpu::ConvShape s{1, 1, 3, 3, 1, 1, 1, 1, 0, 3, 3};
  REQUIRE_THROWS_WITH(cuda::gemm_vendor(false, false, 1, 1, 1, 1.f, nullptr, 1, nullptr, 1, 0.f, nullptr, 1),
                      Contains("cuBLAS/cuDNN exist only in the GPU build"));
  REQUIRE_THROWS_AS(cuda::conv2d_forward_vendor(s, nullptr, nullptr, nullptr, nullptr, false), std::invalid_argument);
  REQUIRE_THROWS_AS(cuda::conv2d_backward_input_vendor(s, nullptr, nullptr, nullptr), std::invalid_argument);
  REQUIRE_THROWS_AS(cuda::conv2d_backward_weight_vendor(s, nullptr, nullptr, nullptr), std::invalid_argument);
}

TEST_CASE("kernel source: the automatic choice keeps the faster source per shape, timing each shape once",
          "[cuda][kernel-source]") {
  struct Timing {
    double ours_ms, vendor_ms;
  };
  const double inf = std::numeric_limits<double>::infinity();
  const std::string vendor_faster = cuda::kernel_key("gemm", {0, 1, 128, 512, 32768}),
                    ours_faster = cuda::kernel_key("gemm", {0, 0, 128, 32768, 512}),
                    tie = cuda::kernel_key("conv2d_forward", {128, 64, 32, 32, 64, 3, 3, 1, 1, 1}),
                    vendor_fails = cuda::kernel_key("conv2d_backward_weight", {128, 3, 32, 32, 64, 3, 3, 1, 1, 0});
  std::map<std::string, Timing> timings = {{vendor_faster, {2.0, 1.0}},
                                           {ours_faster, {1.0, 3.0}},
                                           {tie, {1.5, 1.5}},
                                           {vendor_fails, {4.0, inf}}};
  std::map<std::string, std::map<KernelSource, int>> asked;  // key -> source -> timer calls
  cuda::KernelChoiceCache cache;
  const auto choose = [&](const std::string& key) {
    return cache.choose(key, [&](KernelSource source) {
      ++asked[key][source];
      return source == KernelSource::ours ? timings.at(key).ours_ms : timings.at(key).vendor_ms;
    });
  };

  CHECK(choose(vendor_faster) == KernelSource::vendor);
  CHECK(choose(ours_faster) == KernelSource::ours);
  CHECK(choose(tie) == KernelSource::ours);
  CHECK(choose(vendor_fails) == KernelSource::ours);
  REQUIRE(cache.size() == 4);

  // Later launches use the cached winner without timing again, even if a new measurement would
  // now say otherwise.
  timings[vendor_faster] = {1.0, 5.0};
  timings[ours_faster] = {5.0, 1.0};
  for (int repeat = 0; repeat < 3; ++repeat) {
    CHECK(choose(vendor_faster) == KernelSource::vendor);
    CHECK(choose(ours_faster) == KernelSource::ours);
  }
  for (const std::string& key : {vendor_faster, ours_faster, tie, vendor_fails}) {
    INFO(key);
    CHECK(asked[key][KernelSource::ours] == 1);
    CHECK(asked[key][KernelSource::vendor] == 1);
    CHECK(asked[key][KernelSource::automatic] == 0);
  }
  REQUIRE(cache.size() == 4);
}

TEST_CASE("kernel source: a timer that fails leaves nothing cached", "[cuda][kernel-source]") {
  cuda::KernelChoiceCache cache;
  const auto failing = [](KernelSource) -> double { throw std::runtime_error("ours failed to launch"); };
  REQUIRE_THROWS_WITH(cache.choose("gemm:1", failing), "ours failed to launch");
  REQUIRE(cache.size() == 0);
  REQUIRE(cache.choose("gemm:1", [](KernelSource s) { return s == KernelSource::ours ? 2.0 : 1.0; }) ==
          KernelSource::vendor);
}

TEST_CASE("kernel source: keys tell ops and shapes apart", "[cuda][kernel-source]") {
  const std::string key = cuda::kernel_key("gemm", {1, 23});
  REQUIRE(key == cuda::kernel_key("gemm", {1, 23}));
  REQUIRE(key != cuda::kernel_key("gemm", {12, 3}));
  REQUIRE(key != cuda::kernel_key("gemm", {1, 23, 0}));
  REQUIRE(key != cuda::kernel_key("conv2d_forward", {1, 23}));
}

TEST_CASE("kernel source: names round-trip and unknown names are refused", "[cuda][kernel-source]") {
  for (KernelSource s : {KernelSource::automatic, KernelSource::ours, KernelSource::vendor})
    REQUIRE(cuda::parse_kernel_source(cuda::kernel_source_name(s)) == s);
  REQUIRE(std::string(cuda::kernel_source_name(KernelSource::automatic)) == "auto");
  REQUIRE_THROWS_AS(cuda::parse_kernel_source("cudnn"), std::invalid_argument);
  REQUIRE_THROWS_WITH(cuda::parse_kernel_source("cudnn"), Contains("auto, ours or vendor"));
}

TEST_CASE("kernel source: the stopwatch runs the warm-up and the timed launches", "[cuda][kernel-source]") {
  int launches = 0;
  const double ms = cuda::time_per_launch_ms([&] { ++launches; }, 2, 3);
  REQUIRE(launches == 5);
  REQUIRE(std::isfinite(ms));
  REQUIRE(ms >= 0);
  REQUIRE_THROWS_AS(cuda::time_per_launch_ms([&] { ++launches; }, 1, 0), std::invalid_argument);
  REQUIRE(launches == 5);  // refused before launching anything
}

}  // namespace
