// The CUDA backend's core kernels (kernels/cuda: elementwise, reduce, softmax, random, attack,
// optim, runtime) under the emulator, for what the op harness (tests/op_harness.h, which checks
// every op on the CUDA backend against the CPU at awkward sizes) cannot reach: launchers called
// directly, launch counts (one launch per optimizer step, no host copy per attack step), more
// elements than one grid-stride pass, Philox giving the CPU's bits exactly, the deferred index
// errors and the kernels' own bounds guards, and the allocator.
//
// Last, [cuda-coverage] lists every __global__ function in kernels/cuda/*.cu that no [cuda] test
// launches (the op harness's tables in test_ops.cpp are [cuda] tests too: they run every op on
// the emulated CUDA backend): it re-runs this binary on "[cuda]" in a child process that writes
// the emulator's launch registry at exit, so every [cuda] test of every file counts, and ctest
// may run the tests in any order or in separate processes.
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the event listener below
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "engine/ops.h"
#include "engine/optim_ops.h"
#include "engine/rng.h"
#include "engine/tensor.h"
#include "kernels/cpu/attack_kernels.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/optim.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/emu/execution.h"
#include "tests/cuda_test_util.h"

namespace {

namespace cuda = bulwark::cuda;
namespace cpu = bulwark::cpu;

std::vector<float> randn(size_t n, unsigned seed, float lo = -2.0f, float hi = 2.0f) {
  return bulwark::testing::uniform_floats(n, seed, lo, hi);
}

using bulwark::testing::DeviceBuffer;
using bulwark::testing::require_close;

}  // namespace

TEST_CASE("cuda Philox uniform is bit-identical to the CPU generator", "[cuda]") {
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(31), int64_t(1000), int64_t(4099)}) {
    bulwark::Generator gen(0x5eedULL + static_cast<uint64_t>(n));
    gen.set_offset(17);
    const auto want = bulwark::rand_uniform({n}, -0.25, 1.5, gen).to_vector();
    DeviceBuffer<float> d(static_cast<size_t>(n));
    cuda::uniform(d.ptr, n, -0.25f, 1.5f, 0x5eedULL + static_cast<uint64_t>(n), 17);
    const auto got = d.host();
    REQUIRE(got.size() == want.size());
    CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("cuda pgd_step and random_start match the CPU, L1 of g included", "[cuda]") {
  for (int64_t n : {int64_t(1), int64_t(31), int64_t(1000), int64_t(4099), int64_t(300000)}) {
    INFO("n " << n);
    const size_t un = static_cast<size_t>(n);
    auto x = randn(un, 21, 0.0f, 1.0f);
    auto g = randn(un, 22, -1.0f, 1.0f);
    g[0] = 0.0f;  // sign(0): no move
    const float eps = 8.0f / 255, alpha = 2.0f / 255;
    std::vector<float> want(un);
    cpu::random_start<float>(x.data(), want.data(), n, eps, 99, 5);
    DeviceBuffer<float> dx(x), dg(g), dadv(un);
    cuda::random_start(dx.ptr, dadv.ptr, n, eps, 99, 5);
    require_close(dadv.host(), want, 1e-7, 0, "random_start");

    // Two steps: the first without the L1 (the step-only kernel), the second with it, written to
    // a device address with no copy to the host.
    std::vector<float> g2(g.rbegin(), g.rend());
    DeviceBuffer<float> dg2(g2);
    double want_l1 = -1;
    cpu::pgd_step<float>(x.data(), want.data(), g.data(), n, eps, alpha, nullptr);
    cpu::pgd_step<float>(x.data(), want.data(), g2.data(), n, eps, alpha, &want_l1);
    DeviceBuffer<double> dl1(std::vector<double>{-1.0});
    const uint64_t copies = cuda::host_copy_count();
    cuda::pgd_step(dx.ptr, dadv.ptr, dg.ptr, n, eps, alpha, nullptr);
    cuda::pgd_step(dx.ptr, dadv.ptr, dg2.ptr, n, eps, alpha, dl1.ptr);
    CHECK(cuda::host_copy_count() == copies);
    require_close(dadv.host(), want, 1e-7, 0, "pgd_step x_adv");
    const double l1 = dl1.host()[0];
    CHECK(std::fabs(l1 - want_l1) <= 1e-9 * std::max(1.0, std::fabs(want_l1)));
  }
  // No elements: the L1 of nothing is written as 0.
  DeviceBuffer<double> dl1(std::vector<double>{-1.0});
  cuda::pgd_step(nullptr, nullptr, nullptr, 0, 0.1f, 0.01f, dl1.ptr);
  CHECK(dl1.host()[0] == 0.0);
}

TEST_CASE("cuda fused SGD step updates every parameter in one launch like the CPU", "[cuda]") {
  const int64_t sizes[] = {1, 31, 4099, 1000, 0, 8193};
  for (bool nesterov : {false, true}) {
    bulwark::optim::SgdHyper h;
    h.lr = 0.05;
    h.momentum = 0.9;
    h.weight_decay = 5e-4;
    h.nesterov = nesterov;
    std::vector<std::vector<float>> p, g, buf;
    std::vector<std::unique_ptr<DeviceBuffer<float>>> dp, dg, db;
    std::vector<cuda::SgdSegment> segs;
    unsigned seed = 30;
    for (int64_t n : sizes) {
      p.push_back(randn(static_cast<size_t>(n), seed++));
      g.push_back(randn(static_cast<size_t>(n), seed++));
      buf.push_back(randn(static_cast<size_t>(n), seed++));
      dp.push_back(std::make_unique<DeviceBuffer<float>>(p.back()));
      dg.push_back(std::make_unique<DeviceBuffer<float>>(g.back()));
      db.push_back(std::make_unique<DeviceBuffer<float>>(buf.back()));
      segs.push_back({dp.back()->ptr, dg.back()->ptr, db.back()->ptr, n});
    }
    const auto before = bulwark::emu::launch_counts()["sgd_step_multi_kernel"].launches;
    for (int step = 0; step < 2; ++step) {
      cuda::sgd_step_multi(segs.data(), static_cast<int>(segs.size()), h);
      for (size_t s = 0; s < segs.size(); ++s) cpu::sgd_step<float>(p[s].data(), g[s].data(), buf[s].data(), sizes[s], h);
    }
    CHECK(bulwark::emu::launch_counts()["sgd_step_multi_kernel"].launches == before + 2);
    for (size_t s = 0; s < segs.size(); ++s) {
      require_close(dp[s]->host(), p[s], 1e-7, 1e-6, "sgd param");
      require_close(db[s]->host(), buf[s], 1e-7, 1e-6, "sgd momentum buffer");
    }
  }
}

TEST_CASE("cuda fused Adam step updates every parameter in one launch like the CPU", "[cuda]") {
  const int64_t sizes[] = {1, 1000, 4097, 0, 31, 8193};
  for (double weight_decay : {0.0, 1e-2}) {
    INFO("weight decay " << weight_decay);
    bulwark::optim::AdamHyper h;
    h.lr = 3e-3;
    h.weight_decay = weight_decay;
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<std::unique_ptr<DeviceBuffer<float>>> dp, dg, dm, dv;
    std::vector<cuda::AdamSegment> segs;
    unsigned seed = 60;
    for (int64_t n : sizes) {
      const auto count = static_cast<size_t>(n);
      p.push_back(randn(count, seed++));
      g.push_back(randn(count, seed++));
      m.push_back(std::vector<float>(count, 0.0f));  // moments start at zero, as in PyTorch
      v.push_back(std::vector<float>(count, 0.0f));
      dp.push_back(std::make_unique<DeviceBuffer<float>>(p.back()));
      dg.push_back(std::make_unique<DeviceBuffer<float>>(g.back()));
      dm.push_back(std::make_unique<DeviceBuffer<float>>(m.back()));
      dv.push_back(std::make_unique<DeviceBuffer<float>>(v.back()));
      segs.push_back({dp.back()->ptr, dg.back()->ptr, dm.back()->ptr, dv.back()->ptr, n});
    }
    const auto before = bulwark::emu::launch_counts()["adam_step_multi_kernel"].launches;
    for (int64_t t = 1; t <= 3; ++t) {  // t = 1 has the largest bias corrections
      cuda::adam_step_multi(segs.data(), static_cast<int>(segs.size()), h, t);
      for (size_t s = 0; s < segs.size(); ++s)
        cpu::adam_step<float>(p[s].data(), g[s].data(), m[s].data(), v[s].data(), sizes[s], h, t);
    }
    CHECK(bulwark::emu::launch_counts()["adam_step_multi_kernel"].launches == before + 3);
    for (size_t s = 0; s < segs.size(); ++s) {
      INFO("segment of " << sizes[s] << " elements");
      require_close(dp[s]->host(), p[s], 1e-7, 1e-6, "adam param");
      require_close(dm[s]->host(), m[s], 1e-7, 1e-6, "adam exp_avg");
      require_close(dv[s]->host(), v[s], 1e-9, 1e-6, "adam exp_avg_sq");
    }
  }
}

TEST_CASE("engine adam_step_ on cuda tensors runs the CUDA kernel and matches the CPU", "[cuda][optim]") {
  using bulwark::Device;
  using bulwark::Tensor;
  bulwark::optim::AdamHyper h;
  h.lr = 1e-2;
  h.weight_decay = 5e-4;
  for (int64_t n : {int64_t(1), int64_t(4097)}) {
    Tensor p = Tensor::from_vector(randn(static_cast<size_t>(n), 90), {n});
    const Tensor g = Tensor::from_vector(randn(static_cast<size_t>(n), 91), {n});
    Tensor m = bulwark::zeros_like(p), v = bulwark::zeros_like(p);
    Tensor dp = p.cuda(), dm = m.cuda(), dv = v.cuda();
    const Tensor dg = g.cuda();
    const auto before = bulwark::emu::launch_counts()["adam_step_multi_kernel"].launches;
    for (int64_t t = 1; t <= 2; ++t) {
      bulwark::adam_step_(p, g, m, v, h, t);
      bulwark::adam_step_(dp, dg, dm, dv, h, t);
    }
    CHECK(bulwark::emu::launch_counts()["adam_step_multi_kernel"].launches == before + 2);
    require_close(dp.to_vector(), p.to_vector(), 1e-7, 1e-6, "adam_step_ param");
    require_close(dv.to_vector(), v.to_vector(), 1e-9, 1e-6, "adam_step_ exp_avg_sq");
  }
}

// ---- deferred index errors ---------------------------------------------------------------------

namespace {

// The message the op throws on the CPU (immediately).
template <class Op>
std::string cpu_error(const Op& op) {
  try {
    op();
  } catch (const std::out_of_range& e) {
    return e.what();
  }
  return "(no error)";
}

bulwark::Tensor i32_tensor(const std::vector<int32_t>& v, const bulwark::Shape& shape) {
  return bulwark::Tensor::from_vector(v, shape);
}

}  // namespace

TEST_CASE("cuda index errors are checked on the device and raised at the next host wait", "[cuda][ops]") {
  using bulwark::Tensor;
  const Tensor z = Tensor::from_vector(randn(50, 70), {5, 10});
  const Tensor dz = z.cuda();

  SECTION("cross_entropy: a bad label does not sync, and reading the loss raises the CPU's message") {
    const Tensor labels = i32_tensor({1, 0, 9, 12, 13}, {5});  // samples 3 and 4 are bad: 3 is reported
    const std::string want = "cross_entropy: label 12 of sample 3 out of range [0, 10)";
    CHECK(cpu_error([&] { (void)bulwark::cross_entropy(z, labels); }) == want);
    const Tensor dlabels = labels.cuda();
    const uint64_t copies = cuda::host_copy_count();
    const auto checks = bulwark::emu::launch_counts()["check_index_range_kernel"].launches;
    Tensor loss = bulwark::cross_entropy(dz, dlabels);  // queues the check, waits for nothing
    CHECK(cuda::host_copy_count() == copies);
    CHECK(bulwark::emu::launch_counts()["check_index_range_kernel"].launches == checks + 1);
    CHECK_THROWS_AS(loss.item(), std::out_of_range);
    loss = bulwark::cross_entropy(dz, dlabels);
    CHECK_THROWS_WITH(loss.item(), want);
    // Raised once, then cleared: a good label raises nothing, and the loss is the CPU's.
    const Tensor good = i32_tensor({1, 0, 9, 2, 3}, {5}), dgood = good.cuda();
    const uint64_t copies_before_good = cuda::host_copy_count();
    const Tensor dloss = bulwark::cross_entropy(dz, dgood);
    CHECK(cuda::host_copy_count() == copies_before_good);
    double got = 0;
    CHECK_NOTHROW(got = dloss.item());
    CHECK(std::fabs(got - bulwark::cross_entropy(z, good).item()) <= 1e-5);
    CHECK_NOTHROW(cuda::synchronize());
  }

  SECTION("gather and scatter_add report the first bad position, across blocks, on .cpu() or synchronize") {
    std::vector<int32_t> idx(300000);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i % 10);
    idx[299999] = 10;
    idx[250001] = -1;  // the first bad one: reported although a later one is bad too
    const Tensor rows = Tensor::from_vector(randn(300000 * 10, 71), {300000, 10});
    const Tensor index = i32_tensor(idx, {300000, 1});
    const std::string want = "gather: index -1 out of range [0, 10) at position 250001";
    CHECK(cpu_error([&] { (void)bulwark::gather(rows, index, 1); }) == want);
    const Tensor drows = rows.cuda(), dindex = index.cuda();
    const uint64_t copies = cuda::host_copy_count();
    const Tensor picked = bulwark::gather(drows, dindex, 1);
    CHECK(cuda::host_copy_count() == copies);
    CHECK_THROWS_WITH(picked.cpu(), want);

    const Tensor src = Tensor::from_vector(randn(4, 72), {2, 2});
    const Tensor bad = i32_tensor({0, 1, 2, 3}, {2, 2});  // [0, 3): the 3 at position 3
    const std::string want_scatter = "scatter_add: index 3 out of range [0, 3) at position 3";
    CHECK(cpu_error([&] { (void)bulwark::scatter_add(src, bad, 1, {2, 3}); }) == want_scatter);
    const Tensor dsrc = src.cuda(), dbad = bad.cuda();
    const uint64_t copies_before_scatter = cuda::host_copy_count();
    const Tensor scattered = bulwark::scatter_add(dsrc, dbad, 1, {2, 3});
    CHECK(cuda::host_copy_count() == copies_before_scatter);
    CHECK_THROWS_WITH(cuda::synchronize(), want_scatter);
    CHECK_NOTHROW(cuda::synchronize());
  }

  SECTION("of several failing ops before a wait, the first one queued is reported") {
    const Tensor dbad_label = i32_tensor({0, 0, 0, 0, 10}, {5}).cuda();
    const Tensor dbad_index = i32_tensor({11, 0, 0, 0, 0}, {5, 1}).cuda();
    const Tensor picked = bulwark::gather(dz, dbad_index, 1);
    const Tensor loss = bulwark::cross_entropy(dz, dbad_label);
    CHECK_THROWS_WITH(loss.item(), "gather: index 11 out of range [0, 10) at position 0");
    CHECK_NOTHROW(loss.item());  // the second failure is dropped with the first: one error per wait
  }
}

TEST_CASE("cuda index kernels guard out-of-range indices: NaN gathered, nothing scattered", "[cuda]") {
  // The engine's range check is deferred, so the kernels themselves must stay in bounds.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};  // [outer 2, n 3, inner 1]
  DeviceBuffer<float> dx(x), dout(4), dsum(6), dloss(2);
  DeviceBuffer<int32_t> didx(std::vector<int32_t>{2, 3, -1, 0});  // m = 2 picks per row
  cuda::gather_middle(dx.ptr, didx.ptr, dout.ptr, 2, 3, 2, 1);
  const std::vector<float> got = dout.host();
  CHECK(got[0] == 3.0f);
  CHECK(std::isnan(got[1]));
  CHECK(std::isnan(got[2]));
  CHECK(got[3] == 4.0f);
  cuda::fill(dsum.ptr, 6, 0.0f);
  cuda::scatter_add_middle(dx.ptr, didx.ptr, dsum.ptr, 2, 3, 2, 1);
  CHECK(dsum.host() == std::vector<float>({0, 0, 1, 4, 0, 0}));
  DeviceBuffer<int32_t> dlabels(std::vector<int32_t>{3, 1});  // [2 rows, 3 cols]: row 0 is bad
  cuda::softmax_xent_rows(dx.ptr, dlabels.ptr, dloss.ptr, 2, 3);
  const std::vector<float> loss = dloss.host();
  CHECK(std::isnan(loss[0]));
  CHECK(std::isfinite(loss[1]));
}

TEST_CASE("cuda runtime: allocator reuses freed blocks, copies round-trip, device is reported", "[cuda]") {
  std::string why;
  CHECK(cuda::device_available(&why));
  CHECK(cuda::emulated());
  void* a = cuda::device_malloc(1000);
  cuda::device_free(a);
  void* b = cuda::device_malloc(900);  // same 1024-byte size class: the cached block comes back
  CHECK(a == b);
  std::vector<float> h = {1, 2, 3}, back(3);
  float* c = static_cast<float*>(cuda::device_malloc(sizeof(float) * 3));
  cuda::copy_to_device(c, h.data(), sizeof(float) * 3);
  cuda::copy_device(b, c, sizeof(float) * 3);
  cuda::synchronize();
  cuda::copy_to_host(back.data(), b, sizeof(float) * 3);
  CHECK(back == h);
  cuda::device_free(b);
  cuda::device_free(c);
  CHECK(cuda::device_malloc(0) == nullptr);
  CHECK_THROWS_WITH(cuda::device_free(h.data()), Catch::Contains("not from cuda::device_malloc"));
}

// ---- kernels no test launches ------------------------------------------------------------------

namespace {

// In the child run of [cuda-coverage]: writes the launch registry (one base name per line) when
// the test run ends, if BULWARK_EMU_LAUNCH_LOG names a file.
struct LaunchLogListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunEnded(const Catch::TestRunStats&) override {
    const char* path = std::getenv("BULWARK_EMU_LAUNCH_LOG");
    if (!path) return;
    std::ofstream out(path);
    for (const auto& [name, rec] : bulwark::emu::launch_counts())
      if (rec.launches) out << bulwark::emu::kernel_base_name(name) << "\n";
  }
};

std::set<std::string> global_kernels_in_sources() {
  std::set<std::string> names;
  const std::regex def(R"(__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\()");
  for (const auto& e : std::filesystem::directory_iterator(std::string(BULWARK_SOURCE_DIR) + "/kernels/cuda")) {
    if (e.path().extension() != ".cu" && e.path().extension() != ".cuh") continue;
    std::ifstream in(e.path());
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    for (std::sregex_iterator it(text.begin(), text.end(), def), end; it != end; ++it) names.insert((*it)[1]);
  }
  return names;
}

}  // namespace

CATCH_REGISTER_LISTENER(LaunchLogListener)

TEST_CASE("every __global__ kernel in kernels/cuda is launched by some [cuda] test", "[cuda-coverage]") {
  // The child runs the [cuda] tests but for the trainer's CUDA Graph comparisons (several emulated
  // training runs each; every kernel they launch is launched by the kernel tests too).
  const auto kernels = global_kernels_in_sources();
  REQUIRE(kernels.count("unary_kernel") == 1);  // the parser finds definitions
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("bulwark_cuda_launches_" + std::to_string(::getpid()) + ".txt")).string();
  const std::string cmd = "BULWARK_EMU_LAUNCH_LOG='" + log + "' /proc/" + std::to_string(::getpid()) +
                          "/exe '[cuda]~[training],[cuda][training]~[cuda-graph]' > /dev/null 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO("child run: " << cmd);
  CHECK(rc == 0);  // the [cuda] tests themselves pass
  std::set<std::string> launched;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) launched.insert(line);
  std::filesystem::remove(log);
  REQUIRE(!launched.empty());
  std::vector<std::string> never;
  for (const auto& k : kernels)
    if (!launched.count(k)) never.push_back(k);
  std::string list;
  for (const auto& k : never) list += " " + k;
  INFO("kernels in kernels/cuda never launched by a [cuda] test:" << list);
  CHECK(never.empty());
}
