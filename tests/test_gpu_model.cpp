// The GPU cost model (training/gpu_model.h, bulwark-bench gpu-model): every launch states its
// cost, record-only mode counts what execution counts, a tiny model's step makes the launches
// a hand count says, and the modelled time is the per-launch roofline it claims to be.
#include <catch2/catch.hpp>

#include <algorithm>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/runtime.h"
#include "engine/tensor.h"
#include "models/layers.h"
#include "models/zoo.h"
#include "training/gpu_model.h"

using namespace bulwark;

namespace {

robust::MethodConfig method(const std::string& name, const nlohmann::ordered_json& given = {}) {
  robust::MethodConfig cfg;
  cfg.name = name;
  for (const auto& [key, value] : given.items()) cfg.options.set(key, value);
  return cfg;
}

struct Batch {
  Tensor x, y;
};
Batch batch(int64_t n, int64_t c, int64_t side) {
  Generator gen(5);
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 10);
  return {rand_uniform({n, c, side, side}, 0.0, 1.0, gen), Tensor::from_vector(labels, {n})};
}

std::shared_ptr<Module> wong_small() {
  ModelConfig cfg;
  cfg.in_channels = 1, cfg.height = cfg.width = 28;
  cfg.seed = 3;
  return make_model("wong_small", cfg);
}

std::vector<std::string> names(const training::StepRecord& r) {
  std::vector<std::string> out;
  for (const auto& l : r.launches) out.push_back(kernel_family(l.name));
  return out;
}

}  // namespace

TEST_CASE("record-only mode makes the launches, with the costs, that running the kernels makes", "[gpu-model][cuda]") {
  // wong_small at batch 4 on MNIST-shaped data; each method's step is recorded twice from the
  // same initial weights: kernels executed by the emulator, then counted only.
  const Batch b = batch(4, 1, 28);
  for (const robust::MethodConfig& cfg :
       {method("standard", {{"eps", 0.3}}), method("pgd", {{"eps", 0.3}, {"steps", 2}}),
        method("free", {{"eps", 0.3}, {"replays", 2}}), method("crown-ibp", {{"eps", 0.3}})}) {
    INFO(cfg.name);
    const auto executed = [&] {
      auto model = wong_small();
      return training::record_training_step(*model, cfg, b.x, b.y, false);
    }();
    const auto recorded = [&] {
      auto model = wong_small();
      return training::record_training_step(*model, cfg, b.x, b.y, true);
    }();
    REQUIRE(executed.launches.size() == recorded.launches.size());
    CHECK(executed.passes.fwd == recorded.passes.fwd);
    CHECK(executed.passes.bwd == recorded.passes.bwd);
    for (size_t i = 0; i < executed.launches.size(); ++i) {
      INFO("launch " << i << ": " << executed.launches[i].name);
      CHECK(recorded.launches[i].name == executed.launches[i].name);
      CHECK(recorded.launches[i].blocks == executed.launches[i].blocks);
      CHECK(recorded.launches[i].cost.flops == executed.launches[i].cost.flops);
      CHECK(recorded.launches[i].cost.bytes == executed.launches[i].cost.bytes);
      // Every kernel of kernels/cuda states its cost, and moves some bytes.
      CHECK(executed.launches[i].cost.stated());
      CHECK(executed.launches[i].cost.bytes > 0);
    }
  }
  // Record-only is undone when the step returns: a kernel runs again.
  const Tensor ones = Tensor::full({3}, 1.0).cuda();
  CHECK((ones + ones).cpu().to_vector() == std::vector<float>{2, 2, 2});
}

TEST_CASE("a one-layer model's standard step makes the launches counted by hand", "[gpu-model][cuda]") {
  // z = x W^T + b on x [5, 1, 2, 2] (flattened to 4 features), W [3, 4]; loss = mean CE(z, y);
  // then SGD; then the step log's correct count. By hand, in the order the engine issues them:
  //   forward   flatten is a view (no launch); z = x W^T + b, the bias added in the GEMM's
  //             epilogue (gemm_tiles); the labels' deferred range check; the row losses and each
  //             row's argmax == y flag (softmax_xent_rows), their mean (sum_rows, which applies
  //             the 1/n) and the flags' sum, the correct count (sum_rows)
  //   backward  the seed gradient 1 (fill); CE's (softmax(z) - one_hot(y)) * g / n in one fused
  //             kernel that reads the mean's one upstream value (softmax_xent_backward_rows);
  //             the Linear's db = sum over rows (sum_columns) and
  //             dW = g^T x (gemm_tiles); x needs no gradient, so no dx GEMM
  //   update    one multi-tensor SGD launch for W and b
  //   step log  the loss and the count copied into the device log (strided_copy x2)
  Generator g(1);
  auto net = std::make_shared<Sequential>();
  net->add(std::make_shared<Flatten>()).add(std::make_shared<Linear>(4, 3, g));
  const Batch b = batch(5, 1, 2);
  const training::StepRecord r = training::record_training_step(*net, method("standard", {{"eps", 0.1}}), b.x, b.y, true);
  const std::vector<std::string> expected{
      // forward
      "gemm_tiles", "check_index_range_kernel", "softmax_xent_rows_kernel", "sum_rows_kernel", "sum_rows_kernel",
      // backward
      "fill_kernel", "softmax_xent_backward_rows_kernel", "sum_columns_kernel", "gemm_tiles",
      // update
      "sgd_step_multi_kernel",
      // step log
      "strided_copy_kernel", "strided_copy_kernel"};
  CHECK(names(r) == expected);
  CHECK(r.passes.fwd == 1);
  CHECK(r.passes.bwd == 1);
  // The forward GEMM's stated cost: 2 * 5 * 3 * 4 flops; x, W, z and the bias moved once.
  REQUIRE(!r.launches.empty());
  CHECK(r.launches[0].cost.flops == 2.0 * 5 * 3 * 4);
  CHECK(r.launches[0].cost.bytes == 4.0 * (5 * 4 + 4 * 3 + 5 * 3 + 3));
}

TEST_CASE("the fused attack cuts a wong_small PGD-10 step's graph nodes at least 5x below the issue's 435 launches",
          "[gpu-model][cuda]") {
  // 435 launches a step when the GPU issue was filed; 224 graph nodes layered now. Fused, the
  // attack is one kernel and its L1 sum; the random start and the training step are as before.
  const Batch b = batch(8, 1, 28);
  const auto nodes = [&](bool fused) {
    auto model = wong_small();
    return training::record_training_step(*model, method("pgd", {{"eps", 0.3}, {"steps", 10}}), b.x, b.y, true, 0.5, 1,
                                          0, fused);
  };
  const training::StepRecord layered = nodes(false), fused = nodes(true);
  INFO("layered " << layered.graph_nodes << " nodes, fused " << fused.graph_nodes);
  CHECK(fused.graph_nodes > 0);
  CHECK(5 * fused.graph_nodes <= 435);
  CHECK(fused.graph_nodes < layered.graph_nodes);
  CHECK(fused.passes.fwd == layered.passes.fwd);
  CHECK(fused.passes.bwd == layered.passes.bwd);
  const std::vector<std::string> families = names(fused);
  CHECK(std::count(families.begin(), families.end(), "fused_pgd_kernel") == 1);
  CHECK(std::count(families.begin(), families.end(), "pgd_step_kernel") == 0);
}

TEST_CASE("the modelled time is a per-launch roofline plus the launch overhead", "[gpu-model]") {
  const training::GpuSpec gpu{"test", 1e12, 0, 0, 1e11};
  std::vector<training::RecordedLaunch> launches{
      {"compute_bound", {2e9, 1e6}, 1, 32},  // 2 ms of math, 0.01 ms of traffic
      {"memory_bound", {1e6, 3e8}, 1, 32},   // 0.001 ms of math, 3 ms of traffic
  };
  CHECK(training::modelled_seconds(launches, gpu, 0) == Approx(5e-3).epsilon(1e-12));
  CHECK(training::modelled_seconds(launches, gpu, 1e-6) == Approx(5e-3 + 2e-6).epsilon(1e-12));
  launches.push_back({"unstated", {}, 1, 32});
  CHECK_THROWS_AS(training::modelled_seconds(launches, gpu, 0), std::logic_error);
}

TEST_CASE("timed steps follow the recorded one, one duration each; record-only mode refuses them", "[gpu-model][cuda]") {
  // On a GPU these are the measured step times `gpu-model --time` prints beside the model; here
  // the emulator runs the kernels, so only their number and sign mean anything.
  const Batch b = batch(4, 1, 28);
  auto model = wong_small();
  const training::StepRecord r =
      training::record_training_step(*model, method("pgd", {{"eps", 0.3}, {"steps", 1}}), b.x, b.y, false, 0.5, 0, 3);
  REQUIRE(r.step_seconds.size() == 3);
  for (double s : r.step_seconds) CHECK(s > 0);
  CHECK_FALSE(r.launches.empty());
  CHECK_THROWS_WITH(training::record_training_step(*model, method("standard"), b.x, b.y, true, 0.5, 0, 1),
                    Catch::Contains("record-only"));
}

TEST_CASE("a mean cross-entropy is one node: bitwise the composition on the CPU, 3 + 2 launches on CUDA",
          "[gpu-model][cuda][ops]") {
  // loss = mean(CE rows) used to be two nodes (the rows, then mean = sum and a 1/n scale) whose
  // backward scaled and broadcast the gradient before the fused rows kernel: 4 launches forward,
  // 4 backward. Now the sum's kernel applies 1/n and the rows kernel reads the one upstream value.
  Generator gen(9);
  const Tensor z0 = rand_uniform({7, 5}, -3.0, 3.0, gen);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 4, 2, 2, 1, 3, 0}, {7});
  for (const double upstream : {1.0, 0.5}) {  // the loss alone, and inside 0.5 CE + ...
    Tensor za = z0.clone(), zb = z0.clone();
    za.set_requires_grad(true);
    zb.set_requires_grad(true);
    const Tensor fused = cross_entropy(za, y), composed = mean(cross_entropy(zb, y, false));
    CHECK(fused.item() == composed.item());
    backward(fused * upstream);
    backward(composed * upstream);
    CHECK(za.grad().to_vector() == zb.grad().to_vector());
  }
  // On the (emulated) CUDA device: the launches of the forward, then of the backward.
  Tensor zc = z0.to(Device::cuda);
  zc.set_requires_grad(true);
  const Tensor yc = y.to(Device::cuda);
  training::LaunchLog forward_log, backward_log;
  Tensor loss;
  {
    const ObserveLaunches observe(forward_log);
    loss = cross_entropy(zc, yc);
  }
  {
    const ObserveLaunches observe(backward_log);
    backward(loss);
  }
  const auto families = [](const training::LaunchLog& log) {
    std::vector<std::string> out;
    for (const auto& l : log.launches) out.push_back(kernel_family(l.name));
    return out;
  };
  CHECK(families(forward_log) ==
        std::vector<std::string>{"check_index_range_kernel", "softmax_xent_rows_kernel", "sum_rows_kernel"});
  CHECK(families(backward_log) == std::vector<std::string>{"fill_kernel", "softmax_xent_backward_rows_kernel"});
  // ... and the same values as the CPU.
  Tensor zcpu = z0.clone();
  zcpu.set_requires_grad(true);
  const Tensor lcpu = cross_entropy(zcpu, y);
  backward(lcpu);
  CHECK(loss.item() == Approx(lcpu.item()).epsilon(1e-6));
  const std::vector<float> gd = zc.grad().cpu().to_vector(), gh = zcpu.grad().to_vector();
  REQUIRE(gd.size() == gh.size());
  for (size_t i = 0; i < gd.size(); ++i) CHECK(gd[i] == Approx(gh[i]).margin(1e-7).epsilon(1e-5));
}
