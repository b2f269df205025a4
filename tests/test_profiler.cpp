// The op profiler (engine/profiler.h): attribution of kernel calls to ops and to forward or
// backward, the FLOPs the conv and matmul ops state, steps, the trace, and `train --profile`.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/profiler.h"
#include "engine/rng.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/test_util.h"
#include "training/trainer.h"

using namespace bulwark;
namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const profiler::OpRow* row_of(const profiler::Report& r, const std::string& op) {
  for (const profiler::OpRow& row : r.ops)
    if (row.op == op) return &row;
  return nullptr;
}

}  // namespace

TEST_CASE("the profiler attributes each kernel call to its op, forward or backward, on the CPU and on CUDA",
          "[profiler][cuda]") {
  // On CUDA (emulated here) the calls are timed by events, read once at each step's end: three
  // steps make three synchronizations and no copy to the host, however many kernels they run.
  const Device device = GENERATE(Device::cpu, Device::cuda);
  INFO((device == Device::cuda ? "cuda" : "cpu"));
  Generator gen(1);
  const Tensor x = rand_uniform({2, 3, 6, 6}, 0, 1, gen).to(device);
  Tensor w = rand_uniform({4, 3, 3, 3}, -1, 1, gen).to(device), v = rand_uniform({4 * 4 * 4, 5}, -1, 1, gen).to(device);
  w.set_requires_grad(true);
  v.set_requires_grad(true);
  const auto step = [&] {
    const Tensor h = relu(conv2d(x, w, Tensor(), Conv2dParams{1, 0}));  // [2, 4, 4, 4]
    const Tensor loss = sum(matmul(h.reshape({2, -1}), v));
    backward(loss);
  };
  step();  // outside a session: nothing recorded, nothing breaks
  profiler::start(/*trace_step=*/1);
  const uint64_t syncs = cuda::synchronize_count(), copies = cuda::host_copy_count();
  for (int i = 0; i < 3; ++i) {
    const profiler::Step s;
    step();
  }
  CHECK(cuda::synchronize_count() - syncs == (device == Device::cuda ? 3u : 0u));
  CHECK(cuda::host_copy_count() == copies);
  step();  // after the steps, still in the session: not a step, not counted
  const profiler::Report r = profiler::stop();
  CHECK_FALSE(profiler::active());
  CHECK(r.steps == 3);
  const profiler::OpRow* conv = row_of(r, "conv2d");
  REQUIRE(conv != nullptr);
  // Per step: one forward kernel; the backward needs dW only (x has no gradient): one call.
  CHECK(conv->fwd_calls == 3);
  CHECK(conv->bwd_calls == 3);
  const double conv_pass = 2.0 * 2 * 4 * (3 * 3 * 3) * (4 * 4);  // 2 n O CKK L
  CHECK(conv->fwd_flops == Approx(3 * conv_pass));
  CHECK(conv->bwd_flops == Approx(3 * conv_pass));
  const profiler::OpRow* mm = row_of(r, "matmul");
  REQUIRE(mm != nullptr);
  CHECK(mm->fwd_calls == 3);
  CHECK(mm->fwd_flops == Approx(3 * 2.0 * 2 * 5 * 64));
  CHECK(mm->bwd_calls == 6);  // dH and dV
  const profiler::OpRow* relu_row = row_of(r, "relu");
  REQUIRE(relu_row != nullptr);
  CHECK(relu_row->fwd_calls == 3);
  CHECK(relu_row->bwd_calls >= 3);
  // The kernels' time is part of the steps' time.
  CHECK(r.kernel_seconds() > 0);
  CHECK(r.kernel_seconds() <= r.seconds);
  // The trace holds the second step's calls, in order, within it.
  int64_t calls_per_step = 0;
  for (const profiler::OpRow& row : r.ops) calls_per_step += row.fwd_calls + row.bwd_calls;
  REQUIRE(calls_per_step % 3 == 0);
  CHECK(static_cast<int64_t>(r.trace.size()) == calls_per_step / 3);
  REQUIRE(!r.trace.empty());
  CHECK(r.trace.front().op == "conv2d");
  CHECK_FALSE(r.trace.front().backward);
  for (size_t i = 1; i < r.trace.size(); ++i) CHECK(r.trace[i].start_us >= r.trace[i - 1].start_us);
  for (const profiler::TraceEvent& e : r.trace) CHECK(e.duration_us >= 0);
  const auto trace = r.chrome_trace();
  CHECK(trace["traceEvents"].size() == r.trace.size());
  CHECK(trace["traceEvents"][0]["ph"] == "X");
  const auto j = r.to_json();
  CHECK(j["steps"] == 3);
  CHECK(j["ops"].size() == r.ops.size());
  CHECK(r.table().find("conv2d") != std::string::npos);
  CHECK_THROWS_AS(profiler::stop(), std::logic_error);
}

TEST_CASE("train --profile reports the steps and writes profile.json and the trace", "[profiler][training]") {
  bulwark::testing::TempDir dir("profile");
  training::TrainConfig c;
  c.model = "mlp";
  c.data.dataset = "synthetic";
  c.data.train_size = 96, c.data.val_size = 32, c.data.test_size = 32;
  c.epochs = 1;
  c.batch_size = 32;
  c.method.name = "standard";
  c.schedule.name = "constant";
  c.threads = 1;
  c.device = "cpu";
  c.robust_val_size = 0, c.final_attack_size = 0;
  c.out = dir / "run";
  training::RunOptions o;
  o.quiet = true;
  o.profile = true;
  o.trace = dir / "trace.json";
  training::train(c, o);
  const auto profile = nlohmann::json::parse(read_text(dir / "run/profile.json"));
  CHECK(profile["steps"] == 3);  // 96 samples, batches of 32
  bool linear = false;
  for (const auto& op : profile["ops"]) linear = linear || op["op"] == "linear";  // the fused x W^T + b
  CHECK(linear);
  const auto trace = nlohmann::json::parse(read_text(dir / "trace.json"));
  CHECK(!trace["traceEvents"].empty());
  CHECK_FALSE(profiler::active());
}
