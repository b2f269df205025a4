// The fused attack (kernels/common/fused_attack.h, engine fused_pgd_, AttackOptions::fused):
// the CUDA kernel equals its CPU reference bit for bit at awkward sizes (odd channels, a
// non-square image, layers wider than a block, batch 1), the reference takes the same steps as
// the layered attack (f64, where no gradient sign is a rounding accident), which models it
// accepts, and its argument checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "engine/attack_ops.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/attack_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "models/layers.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "tests/cuda_test_util.h"

using namespace bulwark;
using bulwark::testing::DeviceBuffer;
using bulwark::testing::launches_of;
using Catch::Matchers::Contains;

namespace {

// Normalize, conv 3->7 (k3 s2 p1) + ReLU, conv 7->5 (k2, no bias) + ReLU, Flatten, linear -> 9
// + ReLU, linear -> 4, on 3x13x11 images: the first conv's output (7x7x6 = 294) is wider than a
// 256-thread block, and neither image side is the other.
std::shared_ptr<Sequential> awkward_net(DType dtype, uint64_t seed) {
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  net->add("normalize", std::make_shared<Normalize>(std::vector<double>{0.4, 0.5, 0.45}, std::vector<double>{0.2, 0.25, 0.3}, dtype));
  net->add(std::make_shared<Conv2d>(3, 7, 3, gen, Conv2dOptions{.stride = 2, .padding = 1, .dtype = dtype}));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<Conv2d>(7, 5, 2, gen, Conv2dOptions{.bias = false, .dtype = dtype}));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<Flatten>());
  net->add(std::make_shared<Linear>(150, 9, gen, LinearOptions{.dtype = dtype}));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<Linear>(9, 4, gen, LinearOptions{.dtype = dtype}));
  return net;
}

Tensor images(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n * 3 * 13 * 11));
  for (float& x : v) x = u(rng);
  return Tensor::from_vector(v, {n, 3, 13, 11});
}

Tensor labels(int64_t n, int classes) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>((3 * i + 1) % classes);
  return Tensor::from_vector(v, {n});
}

AttackOptions pgd(int steps, bool fused) {
  AttackOptions o;
  o.kind = AttackKind::pgd;
  o.eps = 0.08;
  o.alpha = 0.02;
  o.steps = steps;
  o.seed = 11;
  o.offset = 3;
  o.fused = fused;
  return o;
}

}  // namespace

TEST_CASE("fused PGD takes the layered attack's steps (f64) and is chosen only where it applies", "[attack]") {
  auto net = awkward_net(DType::f64, 5);
  const Tensor x = images(5, 1).to(DType::f64), y = labels(5, 4);
  for (int steps : {1, 6}) {
    INFO("steps " << steps);
    AttackStats layered_stats, fused_stats;
    const Tensor layered = attack(*net, x, y, pgd(steps, false), &layered_stats);
    const Tensor fused = attack(*net, x, y, pgd(steps, true), &fused_stats);
    // Each step moves every pixel by +-alpha or 0 and projects: equal signs give equal examples.
    CHECK(max_abs_diff(fused, layered) <= 1e-12);
    CHECK(max_abs_diff(fused, x) > 0.5 * 0.08);
    CHECK(fused_stats.forward_passes == steps);
    CHECK(fused_stats.backward_passes == steps);
    const double a = fused_stats.last_grad_l1.item(), b = layered_stats.last_grad_l1.item();
    CHECK(a > 0);
    CHECK(std::abs(a - b) <= 1e-10 * b);
  }
  // The engine op from the same start is what attack() ran.
  const Tensor start = random_start(x, 0.08, 11, 3);
  Tensor direct = start.clone();
  fused_pgd_(direct, x, y, *fused_layers(*net), 0.08, 0.02, 6);
  CHECK(max_abs_diff(direct, attack(*net, x, y, pgd(6, true))) == 0.0);

  // Which models it accepts: chains of Normalize / Conv2d / Linear / ReLU / Flatten.
  ModelConfig cfg;
  cfg.in_channels = 1, cfg.height = cfg.width = 28;
  for (const char* name : {"mlp", "wong_small", "wong_large", "ibp_small", "ibp_large"}) {
    INFO(name);
    const auto layers = fused_layers(*make_model(name, cfg));
    REQUIRE(layers.has_value());
    CHECK(layers->back().kind == FusedLayer::Kind::linear);
    CHECK_FALSE(layers->back().relu);
  }
  // A wong_small sample's forward by hand: conv 1->16 (4x4, s2) to 14x14, conv 16->32 (4x4, s2)
  // to 7x7, linear 1568 -> 100, 100 -> 10: what --fused-attack auto weighs.
  CHECK(fused_forward_macs(*fused_layers(*make_model("wong_small", cfg)), {1, 28, 28}) ==
        16 * 14 * 14 * 16 + 32 * 7 * 7 * 16 * 16 + 1568 * 100 + 100 * 10);
  cfg.in_channels = 3, cfg.height = cfg.width = 32;
  for (const char* name : {"cnn7", "preact_resnet18", "sgn:wong_small"}) {
    INFO(name);
    CHECK_FALSE(fused_layers(*make_model(name, cfg)).has_value());
  }
  Sequential relu_first;
  relu_first.add(std::make_shared<ReLU>());
  CHECK_FALSE(fused_layers(relu_first).has_value());
  Generator gen(1);
  Sequential unflattened;  // a Linear on a conv's 4-d output maps its last dim alone
  unflattened.add(std::make_shared<Conv2d>(1, 2, 3, gen)).add(std::make_shared<Linear>(26, 3, gen));
  CHECK_FALSE(fused_layers(unflattened).has_value());
  // A model it does not accept runs the layered attack: the option changes nothing there.
  cfg.in_channels = 3, cfg.height = 13, cfg.width = 11, cfg.num_classes = 4;
  auto cnn7 = make_model("cnn7", cfg);
  const Tensor xf = images(2, 4), yf = labels(2, 4);
  CHECK(max_abs_diff(attack(*cnn7, xf, yf, pgd(2, true)), attack(*cnn7, xf, yf, pgd(2, false))) == 0.0);
}

TEST_CASE("fused_pgd_ checks its network, labels and buffers", "[attack]") {
  auto net = awkward_net(DType::f32, 2);
  const Tensor x = images(3, 2), y = labels(3, 4);
  std::vector<FusedLayer> layers = *fused_layers(*net);
  Tensor x_adv = x.clone();
  SECTION("a layer that does not follow from the one before") {
    layers[3].weight = Tensor::zeros({4, 151});
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, 2), Contains("layer 3 is linear with weight"));
  }
  SECTION("a convolution's channels") {
    layers[2].weight = Tensor::zeros({5, 6, 2, 2});
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, 2), Contains("layer 2 is a convolution"));
  }
  SECTION("a ReLU on the logits") {
    layers.back().relu = true;
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, 2), Contains("the last layer must give logits"));
  }
  SECTION("too many layers") {
    std::vector<FusedLayer> long_chain(kFusedMaxLayers + 1, layers[0]);
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, long_chain, 0.1, 0.01, 2), Contains("the fused attack takes 1 to 16"));
  }
  SECTION("labels") {
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y.to(DType::f32), layers, 0.1, 0.01, 2), Contains("labels must be i32 [3]"));
    const Tensor x_before = x_adv.clone();
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, Tensor::from_vector(std::vector<int32_t>{0, 4, 1}, {3}), layers, 0.1, 0.01, 2),
                      Contains("label 4 of sample 1 out of range [0, 4)"));
    CHECK(max_abs_diff(x_adv, x_before) == 0.0);  // refused before any step
  }
  SECTION("budget, steps and buffers") {
    CHECK_THROWS_AS(fused_pgd_(x_adv, x, y, layers, -0.1, 0.01, 2), std::invalid_argument);
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, -1), Contains("steps must be >= 0"));
    Tensor strided = Tensor::zeros({11, 13, 3, 3}).permute({3, 2, 1, 0});
    CHECK_THROWS_WITH(fused_pgd_(strided, x, y, layers, 0.1, 0.01, 2), Contains("must be a contiguous batch"));
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, 2, Tensor::zeros({1})), Contains("l1 must be one"));
    layers[1].weight = layers[1].weight.to(DType::f64);
    CHECK_THROWS_WITH(fused_pgd_(x_adv, x, y, layers, 0.1, 0.01, 2), Contains("layer 1's weight is"));
  }
}

TEST_CASE("cuda fused_pgd equals its CPU reference bit for bit at awkward sizes", "[cuda][attack]") {
  // Two chains through the kernel: the awkward conv net, and an MLP on flat samples whose first
  // layer normalises 37 "channels" of one pixel each.
  struct Case {
    std::shared_ptr<Sequential> net;
    Shape sample;
  };
  Generator gen(9);
  auto mlp = std::make_shared<Sequential>();
  std::vector<double> mean(37), stddev(37);
  for (int i = 0; i < 37; ++i) mean[i] = 0.3 + 0.01 * i, stddev[i] = 0.5 - 0.005 * i;
  mlp->add("normalize", std::make_shared<Normalize>(mean, stddev));
  mlp->add(std::make_shared<Linear>(37, 300, gen));
  mlp->add(std::make_shared<ReLU>());
  mlp->add(std::make_shared<Linear>(300, 3, gen, LinearOptions{.bias = false}));
  for (const Case& c : {Case{awkward_net(DType::f32, 3), {3, 13, 11}}, Case{mlp, {37}}}) {
    const std::vector<FusedLayer> layers = *fused_layers(*c.net);
    for (int64_t n : {int64_t(1), int64_t(3)}) {
      for (int steps : {1, 3}) {
        INFO("sample " << Tensor::zeros(c.sample).str() << " n " << n << " steps " << steps);
        Shape shape{n};
        shape.insert(shape.end(), c.sample.begin(), c.sample.end());
        const Tensor x = Tensor::from_vector(testing::uniform_floats(size_t(shape_numel(shape)), uint32_t(n + steps), 0.f, 1.f), shape);
        const Tensor y = labels(n, c.net.get() == mlp.get() ? 3 : 4);
        const Tensor start = random_start(x, 0.1, 4, 0);
        Tensor on_cpu = start.clone();
        const Tensor l1_cpu = Tensor::empty({1}, DType::f64);
        fused_pgd_(on_cpu, x, y, layers, 0.1, 0.03, steps, l1_cpu);

        c.net->to(Device::cuda);
        const std::vector<FusedLayer> device_layers = *fused_layers(*c.net);
        Tensor on_gpu = start.to(Device::cuda);
        const Tensor l1_gpu = Tensor::empty({1}, DType::f64, Device::cuda);
        const uint64_t before = launches_of("fused_pgd_kernel");
        const uint64_t waits = cuda::host_copy_count();
        fused_pgd_(on_gpu, x.to(Device::cuda), y.to(Device::cuda), device_layers, 0.1, 0.03, steps, l1_gpu);
        CHECK(cuda::host_copy_count() == waits);  // the labels' check and the L1 stay on the device
        CHECK(launches_of("fused_pgd_kernel") == before + 1);
        Tensor no_l1 = start.to(Device::cuda);
        fused_pgd_(no_l1, x.to(Device::cuda), y.to(Device::cuda), device_layers, 0.1, 0.03, steps);
        c.net->to(Device::cpu);

        const Tensor back = on_gpu.cpu();
        CHECK(std::memcmp(back.data<float>(), on_cpu.data<float>(), sizeof(float) * size_t(x.numel())) == 0);
        CHECK(max_abs_diff(no_l1.cpu(), on_cpu) == 0.0);
        CHECK(max_abs_diff(on_cpu, start) > 0.0);
        const double a = l1_gpu.item(), b = l1_cpu.item();
        CHECK(b > 0);
        CHECK(std::abs(a - b) <= 1e-12 * b);
      }
    }
  }
  // No samples: nothing runs, the L1 of nothing is 0.
  DeviceBuffer<double> l1(std::vector<double>{-1.0});
  fused::Net<float> empty;
  empty.layers = 1;
  empty.layer[0].in_c = 2, empty.layer[0].out_c = 2;
  cuda::fused_pgd(empty, nullptr, nullptr, nullptr, 0, 3, 0.1f, 0.01f, l1.ptr);
  CHECK(l1.host()[0] == 0.0);
}

TEST_CASE("fused PGD on emulated CUDA gives the CPU's examples in one launch", "[cuda][attacks]") {
  auto net = awkward_net(DType::f32, 8);
  const Tensor x = images(4, 6), y = labels(4, 4);
  AttackStats cpu_stats;
  const Tensor on_cpu = attack(*net, x, y, pgd(5, true), &cpu_stats);
  net->to(Device::cuda);
  AttackStats gpu_stats;
  const uint64_t before = launches_of("fused_pgd_kernel");
  const Tensor on_gpu = attack(*net, x.to(Device::cuda), y.to(Device::cuda), pgd(5, true), &gpu_stats);
  CHECK(launches_of("fused_pgd_kernel") == before + 1);
  CHECK(max_abs_diff(on_gpu.cpu(), on_cpu) == 0.0);
  CHECK(gpu_stats.forward_passes == 5);
  CHECK(std::abs(gpu_stats.last_grad_l1.item() - cpu_stats.last_grad_l1.item()) <= 1e-12 * cpu_stats.last_grad_l1.item());
}
