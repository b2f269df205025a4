// The Square attack (robust/square.h) on the small MLP of tests/attack_test_models.h: it breaks a
// model whose gradient is masked where PGD cannot, lowers a normal model's accuracy, keeps
// every value at a corner of the eps-ball inside [0,1], is a function of its seed, follows the
// paper's p schedule, and gives the CPU's examples on the emulated CUDA backend.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "robust/attack_registry.h"
#include "robust/attacks.h"
#include "robust/square.h"
#include "tests/attack_test_models.h"

using namespace bulwark;
using namespace bulwark::testing;

namespace {

// A model with a masked gradient: the forward is `inner`'s, the backward to the input is zero,
// like a non-differentiable input transform (quantisation, JPEG) with a broken backward
// (Athalye, Carlini, Wagner 2018). `0 * x` keeps x in the graph with a zero derivative.
class ZeroGradient : public Module {
 public:
  explicit ZeroGradient(std::shared_ptr<Module> inner) : inner_(register_module("inner", std::move(inner))) {}
  Tensor forward(const Tensor& x) override { return inner_->forward(x.detach() + 0.0 * x); }

 private:
  std::shared_ptr<Module> inner_;
};

AttackOptions square_options(double eps, int queries, uint64_t seed = 11) {
  AttackOptions o;
  o.kind = AttackKind::square;
  o.eps = eps;
  o.queries = queries;
  o.seed = seed;
  o.offset = 3;
  return o;
}

AttackOptions pgd_options(double eps, int steps) {
  AttackOptions o;
  o.kind = AttackKind::pgd;
  o.eps = eps;
  o.steps = steps;
  o.seed = 11;
  return o;
}

double accuracy_under(Module& model, const Batch& b, const AttackOptions& o, AttackStats* stats = nullptr) {
  return robust_accuracy(model, b.x, b.y, o, stats);
}

}  // namespace

TEST_CASE("Square breaks a model with a masked gradient that PGD cannot", "[attacks]") {
  ZeroGradient masked(trained_mlp());
  masked.eval();
  const Batch b = test_batch(100);
  const double eps = 0.03;
  AttackOptions clean = pgd_options(eps, 0);
  clean.kind = AttackKind::none;
  const double clean_acc = accuracy_under(masked, b, clean);
  AttackStats pgd_stats, square_stats;
  const double pgd_acc = accuracy_under(masked, b, pgd_options(eps, 20), &pgd_stats);
  const double square_acc = accuracy_under(masked, b, square_options(eps, 300), &square_stats);
  // The same network without the mask: PGD's figure there shows what the mask hid.
  const double unmasked_pgd_acc = accuracy_under(*trained_mlp(), b, pgd_options(eps, 20));
  INFO("clean " << clean_acc << ", PGD-20 on the masked model " << pgd_acc << ", Square-300 " << square_acc
                << ", PGD-20 without the mask " << unmasked_pgd_acc);
  REQUIRE(clean_acc > 0.5);
  CHECK(pgd_acc > 0.9 * clean_acc);             // zero gradient: PGD does no better than its noise
  CHECK(square_acc < pgd_acc - 0.3);            // Square needs no gradient
  CHECK(square_acc < unmasked_pgd_acc + 0.05);  // and does as well as PGD once unmasked
  CHECK(square_stats.backward_passes == 0);
  CHECK(square_stats.forward_passes <= 300 + 1);  // 300 queries at most, + the judging forward
  CHECK(pgd_stats.backward_passes == 20);
}

TEST_CASE("Square lowers a normal model's accuracy below clean, with forwards only", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(100);
  AttackOptions clean = square_options(0.02, 1);
  clean.kind = AttackKind::none;
  AttackStats stats;
  const double clean_acc = accuracy_under(*model, b, clean);
  const double square_acc = accuracy_under(*model, b, square_options(0.02, 200), &stats);
  const double stripes_acc = accuracy_under(*model, b, square_options(0.02, 1));  // the start alone
  INFO("clean " << clean_acc << ", stripes alone " << stripes_acc << ", Square-200 at eps 0.02 " << square_acc);
  CHECK(square_acc < clean_acc - 0.2);
  CHECK(square_acc < stripes_acc - 0.1);  // the search, not the start, does the work
  CHECK(stats.backward_passes == 0);
  CHECK(stats.forward_passes >= 2);
  CHECK(stats.forward_passes <= 201);
  CHECK_FALSE(stats.last_grad_l1.defined());
}

TEST_CASE("Square keeps every value at a corner of the eps-ball, clipped to [0,1]", "[attacks]") {
  auto model = small_mlp(4);
  const Batch b = test_batch(24);
  const double eps = 0.1;
  AttackOptions o = square_options(eps, 60);
  o.restarts = 2;
  const Tensor x_adv = attack(*model, b.x, b.y, o);
  CHECK(x_adv.shape() == b.x.shape());
  CHECK_FALSE(x_adv.requires_grad());
  const std::vector<float> a = x_adv.to_vector(), x = b.x.to_vector();
  const float e = static_cast<float>(eps);
  int64_t off_corner = 0, clipped = 0;
  double largest = 0;
  for (size_t k = 0; k < x.size(); ++k) {
    const float up = std::clamp(x[k] + e, 0.0f, 1.0f), down = std::clamp(x[k] - e, 0.0f, 1.0f);
    off_corner += a[k] != up && a[k] != down;
    clipped += (a[k] == up && up != x[k] + e) || (a[k] == down && down != x[k] - e);
    largest = std::max(largest, std::abs(static_cast<double>(a[k]) - x[k]));
    REQUIRE(a[k] >= 0.0f);
    REQUIRE(a[k] <= 1.0f);
  }
  CHECK(off_corner == 0);
  CHECK(largest <= eps + 1e-6);
  CHECK(clipped > 0);  // the synthetic images touch 0 and 1, so some corners were clipped
}

TEST_CASE("Square is a function of its seed and offset", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(32);
  AttackOptions o = square_options(0.05, 40);
  o.restarts = 2;
  const AttackOutcome first = attack_outcome(*model, b.x, b.y, o), again = attack_outcome(*model, b.x, b.y, o);
  CHECK(max_abs_diff(first.x_adv, again.x_adv) == 0.0);
  CHECK(first.correct == again.correct);
  AttackOptions other = o;
  other.seed = 12;
  CHECK(max_abs_diff(attack(*model, b.x, b.y, other), first.x_adv) > 0.0);
  other = o;
  other.offset += 1;
  CHECK(max_abs_diff(attack(*model, b.x, b.y, other), first.x_adv) > 0.0);

  // The Philox layout: stripes, then one block per iteration, per restart.
  const uint64_t stripes = uniform_counters(32 * 1 * kSide), iteration = uniform_counters(32 * (1 + 3));
  CHECK(square_counters(o, b.x.shape()) == stripes + 39 * iteration);
  CHECK(attack_counters(o, b.x.shape()) == 2 * (stripes + 39 * iteration));
}

TEST_CASE("Square's p follows the paper's schedule at its breakpoints", "[attacks]") {
  // (iteration, queries, p_init / p): for 10,000 queries the paper's iterations; for 1,000,
  // iteration i counts as floor(10 i); for 5,000 as floor(2 i).
  struct Point {
    int64_t iteration, queries;
    double divisor;
  };
  const Point points[] = {{0, 10000, 1},    {10, 10000, 1},    {11, 10000, 2},    {50, 10000, 2},   {51, 10000, 4},
                          {201, 10000, 8},  {501, 10000, 16},  {1001, 10000, 32}, {2001, 10000, 64}, {4001, 10000, 128},
                          {6001, 10000, 256}, {8000, 10000, 256}, {8001, 10000, 512}, {9999, 10000, 512},
                          {1, 1000, 1},     {2, 1000, 2},      {5, 1000, 2},      {6, 1000, 4},     {801, 1000, 512},
                          {5, 5000, 1},     {6, 5000, 2},      {4001, 5000, 512}};
  for (const Point& pt : points) {
    INFO("iteration " << pt.iteration << " of " << pt.queries);
    CHECK(square_p(0.8, pt.iteration, pt.queries) == 0.8 / pt.divisor);
  }
  // The square's side: round(sqrt(p h w)) in [1, min(h, w) - 1].
  CHECK(square_side(0.8, 12, 12) == 11);
  CHECK(square_side(0.8, 32, 32) == 29);
  CHECK(square_side(0.05, 32, 32) == 7);
  CHECK(square_side(0.8 / 512, 12, 12) == 1);
  CHECK(square_side(0.8, 28, 28) == 25);
}

TEST_CASE("Square's options resolve, name and validate like the other attacks'", "[attacks][registry]") {
  AttackOptions o = square_options(8.0 / 255, 5000);
  CHECK(attack_name(o) == "Square-5000");
  o.restarts = 3;
  CHECK(attack_name(o) == "Square-5000x3");
  const AttackOptions r = resolve_attack(o);
  CHECK(r.steps == 5000);
  CHECK(r.alpha == 0);
  CHECK_THROWS_WITH(resolve_attack(square_options(0.1, 0)), Catch::Contains("queries"));
  o = square_options(0.1, 10);
  o.p_init = 0;
  CHECK_THROWS_WITH(resolve_attack(o), Catch::Contains("p_init"));
  o.p_init = 1.5;
  CHECK_THROWS_WITH(resolve_attack(o), Catch::Contains("p_init"));
  o = square_options(0.1, 10);
  o.norm = Norm::l2;
  CHECK_THROWS_WITH(resolve_attack(o), Catch::Contains("L-inf"));

  const robust::EvalAttackInfo& info = robust::eval_attack_info("square");
  OptionValues v;
  resolve_options(info.options, v, DefaultScope{v, "", false, 0}, "attack 'square'");
  const AttackOptions made = info.make(v, 0.03, 7);
  CHECK(made.kind == AttackKind::square);
  CHECK(made.queries == 5000);
  CHECK(made.p_init == 0.8);
  CHECK(made.restarts == 1);
  CHECK(made.seed == 7);
}

TEST_CASE("Square on the CUDA backend (emulated) matches the CPU", "[attacks][cuda]") {
  // The trained MLP, copied so that moving it leaves the shared one on the CPU: samples stand
  // long enough for the search to run.
  auto cpu_model = trained_mlp(), gpu_model = small_mlp(3);
  const NamedTensors state = cpu_model->state_dict();
  gpu_model->load_state_dict(std::map<std::string, Tensor>(state.begin(), state.end()));
  gpu_model->eval();
  gpu_model->to(Device::cuda);
  const Batch b = test_batch(16);
  AttackOptions o = square_options(0.02, 30);
  o.restarts = 2;
  AttackStats cpu_stats, gpu_stats;
  const AttackOutcome on_cpu = attack_outcome(*cpu_model, b.x, b.y, o, &cpu_stats);
  const AttackOutcome on_gpu = attack_outcome(*gpu_model, b.x.cuda(), b.y.cuda(), o, &gpu_stats);
  CHECK(on_gpu.x_adv.device() == Device::cuda);
  CHECK(max_abs_diff(on_gpu.x_adv.cpu(), on_cpu.x_adv) == 0.0);
  CHECK(on_gpu.correct == on_cpu.correct);
  CHECK(gpu_stats.forward_passes == cpu_stats.forward_passes);
  CHECK(gpu_stats.forward_passes > 10);  // the search ran
  CHECK(gpu_stats.backward_passes == 0);
}
