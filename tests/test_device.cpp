// The CUDA backend end to end (emulated in the tests, docs/emulator.md): SGD training steps of a
// model on Device::cuda against the same steps on the CPU backend.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cuda/cuda_kernels.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "training/optim.h"

using namespace bulwark;

namespace {
struct Run {
  std::vector<double> losses;
  NamedTensors params;  // final values, on the host
};

// Three SGD (momentum, weight decay) steps of wong_small from seed 7 on one fixed batch.
Run train_wong_small(Device dev, const Tensor& x_host, const Tensor& y_host) {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = 28;
  cfg.seed = 7;
  auto model = make_model("wong_small", cfg);
  model->to(dev);
  model->train();
  training::OptimizerConfig oc;
  oc.lr = 0.05;
  training::Sgd opt(model->named_parameters(), oc);
  const Tensor x = x_host.to(dev), y = y_host.to(dev);
  Run r;
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    const Tensor loss = cross_entropy(model->forward(x), y);
    backward(loss);
    opt.step();
    r.losses.push_back(loss.item());
  }
  for (const auto& [name, p] : model->named_parameters()) {
    CHECK(p.device() == dev);
    r.params.emplace_back(name, p.detach().cpu());
  }
  return r;
}
}  // namespace

TEST_CASE("three SGD steps of wong_small on the CUDA backend match the CPU backend", "[cuda][models]") {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> xv(8 * 28 * 28);
  for (float& v : xv) v = u(rng);
  const Tensor x = Tensor::from_vector(xv, {8, 1, 28, 28});
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}, {8});

  const Run cpu = train_wong_small(Device::cpu, x, y), gpu = train_wong_small(Device::cuda, x, y);
  // Tolerance: the backends sum in different orders (tiled GEMM, implicit-GEMM conv), so f32
  // results agree to rounding, amplified a little over three steps: 1e-4 relative (+1e-6 abs).
  constexpr double rtol = 1e-4, atol = 1e-6;
  REQUIRE(cpu.losses.size() == gpu.losses.size());
  for (size_t i = 0; i < cpu.losses.size(); ++i) {
    INFO("loss of step " << i << ": cpu " << cpu.losses[i] << ", cuda " << gpu.losses[i]);
    CHECK(std::abs(gpu.losses[i] - cpu.losses[i]) <= atol + rtol * std::abs(cpu.losses[i]));
  }
  CHECK(cpu.losses.back() < cpu.losses.front());  // it trains
  REQUIRE(cpu.params.size() == gpu.params.size());
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    INFO("parameter " << cpu.params[i].first);
    CHECK(gpu.params[i].first == cpu.params[i].first);
    CHECK(allclose(gpu.params[i].second, cpu.params[i].second, rtol, atol));
  }
}

TEST_CASE("the attack step and random start dispatch to the CUDA backend", "[cuda][attack]") {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> xv(300), gv(300);
  for (float& v : xv) v = u(rng);
  for (float& v : gv) v = u(rng);
  const Tensor x = Tensor::from_vector(xv, {3, 100}), g = Tensor::from_vector(gv, {3, 100});
  const Tensor start_cpu = random_start(x, 0.1, 42, 7), start_gpu = random_start(x.cuda(), 0.1, 42, 7);
  CHECK(start_gpu.device() == Device::cuda);
  CHECK(allclose(start_gpu, start_cpu, 1e-6, 1e-7));  // same Philox counters
  Tensor adv_cpu = start_cpu.clone(), adv_gpu = start_cpu.cuda();
  const Tensor l1_cpu_slot = Tensor::empty({1}, DType::f64), l1_gpu_slot = Tensor::empty({1}, DType::f64, Device::cuda);
  pgd_step_(adv_cpu, x, g, 0.1, 0.02, l1_cpu_slot);
  const uint64_t copies = cuda::host_copy_count();
  pgd_step_(adv_gpu, x.cuda(), g.cuda(), 0.1, 0.02, l1_gpu_slot);
  CHECK(cuda::host_copy_count() == copies);  // the L1 stays on the device
  const double l1_cpu = l1_cpu_slot.item(), l1_gpu = l1_gpu_slot.item();
  CHECK(std::abs(l1_gpu - l1_cpu) <= 1e-5 * std::abs(l1_cpu));
  CHECK(allclose(adv_gpu, adv_cpu, 1e-6, 1e-7));
  Tensor adv_mixed = start_cpu.cuda();
  CHECK_THROWS_AS(pgd_step_(adv_mixed, x, g, 0.1, 0.02), std::invalid_argument);
  CHECK_THROWS_AS(pgd_step_(adv_gpu, x.cuda(), g.cuda(), 0.1, 0.02, l1_cpu_slot), std::invalid_argument);
}
