// The attacks of robust/attacks.h on a small MLP (models/zoo.h) over synthetic 1x12x12 images:
// every attack stays in its ball and in [0,1], ascends its loss, uses input gradients only,
// restarts never weaken PGD, the CUDA backend (emulated) gives the CPU's examples, eps parsing,
// and the dataset-level evaluate_attack of training/evaluate.h.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/attack_test_models.h"
#include "models/zoo.h"
#include "engine/options.h"
#include "robust/attacks.h"
#include "training/evaluate.h"
#include "training/optim.h"

using namespace bulwark;
using namespace bulwark::testing;

namespace {

double mean_loss(Module& model, const Tensor& x, const Tensor& y, AttackKind kind = AttackKind::pgd) {
  NoGradGuard no_grad;
  const Tensor z = model(x);
  return (kind == AttackKind::cw ? mean(cw_margin(z, y)) : cross_entropy(z, y)).item();
}

}  // namespace

TEST_CASE("every attack stays in its eps-ball and in [0,1], and moves", "[attacks]") {
  auto model = small_mlp(1);
  const Batch b = test_batch(24);
  for (const AttackOptions& o :
       {options(AttackKind::fgsm, Norm::linf, 0.1), options(AttackKind::fgsm_rs, Norm::linf, 0.1),
        options(AttackKind::pgd, Norm::linf, 0.1, 7, 3), options(AttackKind::cw, Norm::linf, 0.1, 7),
        options(AttackKind::pgd, Norm::l2, 1.0, 7, 2), options(AttackKind::cw, Norm::l2, 1.0, 7),
        options(AttackKind::fgsm, Norm::l2, 1.0), options(AttackKind::fgsm_rs, Norm::l2, 1.0, 1, 2)}) {
    INFO(attack_name(o));
    const Tensor x_adv = attack(*model, b.x, b.y, o);
    CHECK(x_adv.shape() == b.x.shape());
    CHECK_FALSE(x_adv.requires_grad());
    const Perturbation p = perturbation(x_adv, b.x, o.norm);
    CHECK(p.largest <= o.eps + 1e-6);
    CHECK(p.lo >= 0.f);
    CHECK(p.hi <= 1.f);
    CHECK(p.mean > 0.2 * o.eps);  // it used the budget
  }
  const Tensor clean = attack(*model, b.x, b.y, options(AttackKind::none, Norm::linf, 0.1));
  CHECK(max_abs_diff(clean, b.x) == 0.0);
}

TEST_CASE("PGD never does worse than its start", "[attacks]") {
  const Batch b = test_batch(64);
  auto random_model = small_mlp(2);
  for (Module* model : {random_model.get(), trained_mlp().get()}) {
    // L-inf from the random start of (seed, offset), and L2 from x itself.
    AttackOptions linf = options(AttackKind::pgd, Norm::linf, 0.05, 10);
    const double at_start = mean_loss(*model, random_start(b.x, linf.eps, linf.seed, linf.offset), b.y);
    const double at_end = mean_loss(*model, attack(*model, b.x, b.y, linf), b.y);
    CHECK(at_end > at_start);

    AttackOptions l2 = options(AttackKind::pgd, Norm::l2, 0.5, 10);
    l2.random_start = false;
    CHECK(mean_loss(*model, attack(*model, b.x, b.y, l2), b.y) > mean_loss(*model, b.x, b.y));
  }
}

TEST_CASE("CW raises the margin max_{j != y} z_j - z_y", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(64);
  for (Norm norm : {Norm::linf, Norm::l2}) {
    const AttackOptions o = options(AttackKind::cw, norm, norm == Norm::linf ? 0.05 : 0.5, 10);
    const AttackOutcome out = attack_outcome(*model, b.x, b.y, o);
    CHECK(mean_loss(*model, out.x_adv, b.y, AttackKind::cw) > mean_loss(*model, b.x, b.y, AttackKind::cw) + 0.1);
    AttackOptions clean = o;
    clean.kind = AttackKind::none;
    CHECK(accuracy(out.correct) < accuracy(attack_outcome(*model, b.x, b.y, clean).correct));
  }
}

TEST_CASE("L2 PGD moves within the L2 ball, not the L-inf one", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(32);
  const double eps = 0.5;
  const Tensor x_adv = attack(*model, b.x, b.y, options(AttackKind::pgd, Norm::l2, eps, 20));
  const Perturbation l2 = perturbation(x_adv, b.x, Norm::l2), linf = perturbation(x_adv, b.x, Norm::linf);
  CHECK(l2.largest <= eps + 1e-6);
  CHECK(l2.mean > 0.8 * eps);  // most samples end on (or near) the sphere
  // The gradient is not spread evenly over the pixels, so the L2 steps leave the L-inf cube of
  // radius eps / sqrt(d) that an evenly spread perturbation of L2 norm eps would stay in.
  CHECK(linf.mean > 2 * eps / kSide);
}

TEST_CASE("PGD with restarts is never weaker than without, per sample", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(200);
  for (bool noisy_first : {true, false}) {
    AttackOptions one = options(AttackKind::pgd, Norm::linf, 0.01, 5, 1);
    one.random_start = noisy_first;
    AttackOptions many = one;
    many.restarts = 5;
    AttackStats stats_one, stats_many;
    const AttackOutcome a = attack_outcome(*model, b.x, b.y, one, &stats_one);
    const AttackOutcome r = attack_outcome(*model, b.x, b.y, many, &stats_many);
    INFO("first restart noisy: " << noisy_first << ", accuracy 1 restart " << accuracy(a.correct) << ", 5 restarts "
                                 << accuracy(r.correct));
    REQUIRE(accuracy(a.correct) > 0.1);  // the comparison means something
    REQUIRE(accuracy(a.correct) < 0.9);
    for (size_t i = 0; i < a.correct.size(); ++i) {
      if (!a.correct[i]) REQUIRE_FALSE(r.correct[i]);                    // broken stays broken
      if (r.correct[i]) REQUIRE(r.loss[i] >= a.loss[i]);                 // else the highest loss
    }
    CHECK(accuracy(r.correct) <= accuracy(a.correct));
    CHECK(stats_one.forward_passes == 6);  // 5 steps + the judging forward
    CHECK(stats_one.backward_passes == 5);
    // Restarts after the first attack the samples still standing; some were (accuracy > 0.1).
    CHECK(stats_many.forward_passes % 6 == 0);
    CHECK(stats_many.forward_passes >= 12);
    CHECK(stats_many.forward_passes <= 30);
    CHECK(stats_many.backward_passes == stats_many.forward_passes / 6 * 5);
    // The kept examples are real attack results: the outcome agrees with a fresh forward.
    NoGradGuard no_grad;
    CHECK(training::count_correct(model->forward(r.x_adv), b.y) ==
          static_cast<int64_t>(std::count(r.correct.begin(), r.correct.end(), 1)));
  }
}

TEST_CASE("each restart starts from its own Philox offset; the first only without noise when asked", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(32);
  AttackOptions o = options(AttackKind::pgd, Norm::linf, 0.05, 0, 2);  // 0 steps: the result is a start
  const uint64_t per_start = random_start_counters(b.x.numel());
  CHECK(start_counters(Norm::linf, b.x.shape()) == per_start);
  CHECK(attack_counters(o, b.x.shape()) == 2 * per_start);
  const Tensor first = random_start(b.x, o.eps, o.seed, o.offset);
  const Tensor second = random_start(b.x, o.eps, o.seed, o.offset + per_start);
  for (bool noisy_first : {true, false}) {
    o.random_start = noisy_first;
    const Tensor x_adv = attack(*model, b.x, b.y, o);
    const Tensor& start0 = noisy_first ? first : b.x;
    int64_t from_first = 0, from_second = 0;
    for (int64_t i = 0; i < b.x.size(0); ++i) {
      const Tensor row = x_adv.slice(0, i, i + 1);
      const bool is_first = max_abs_diff(row, start0.slice(0, i, i + 1)) == 0.0;
      const bool is_second = max_abs_diff(row, second.slice(0, i, i + 1)) == 0.0;
      REQUIRE((is_first || is_second));
      from_first += is_first;
      from_second += is_second;
    }
    CHECK(from_first > 0);
    CHECK(from_second > 0);
  }
  // One restart without noise and no steps: x itself.
  o.restarts = 1;
  o.random_start = false;
  CHECK(max_abs_diff(attack(*model, b.x, b.y, o), b.x) == 0.0);
  CHECK(attack_counters(options(AttackKind::fgsm, Norm::linf, 0.1), b.x.shape()) == 0);
}

TEST_CASE("attacks compute input gradients only, never a weight gradient", "[attacks]") {
  auto model = small_mlp(5);
  const Batch b = test_batch(16);
  // Control: an ordinary backward computes the weight gradients, under these names.
  const RecordGradsByOpGuard by_op;
  backward_stats() = {};
  backward(cross_entropy(model->forward(b.x), b.y));
  const auto weight_grads = backward_stats().grads_computed;
  REQUIRE(weight_grads.count("linear[1]") > 0);
  model->zero_grad();

  for (const AttackOptions& o : {options(AttackKind::pgd, Norm::linf, 0.1, 4, 2), options(AttackKind::cw, Norm::l2, 1.0, 4),
                                 options(AttackKind::fgsm_rs, Norm::linf, 0.1)}) {
    INFO(attack_name(o));
    backward_stats() = {};
    AttackStats stats;
    attack(*model, b.x, b.y, o, &stats);
    CHECK(stats.backward_passes > 0);
    CHECK(stats.last_grad_l1.item() > 0);
    CHECK(backward_stats().grads_computed.count("linear[1]") == 0);
    CHECK(backward_stats().grads_computed.count("linear[0]") > 0);  // the input's path
    CHECK(backward_stats().inputs_skipped > 0);
    for (const Tensor& p : model->parameters()) CHECK_FALSE(p.grad().defined());
  }
}

TEST_CASE("attacks on the CUDA backend (emulated) match the CPU", "[attacks][cuda]") {
  auto cpu_model = small_mlp(6), gpu_model = small_mlp(6);
  gpu_model->to(Device::cuda);
  const Batch b = test_batch(8);
  const Tensor x_gpu = b.x.cuda(), y_gpu = b.y.cuda();
  for (const AttackOptions& o : {options(AttackKind::fgsm, Norm::linf, 0.1), options(AttackKind::pgd, Norm::linf, 0.1, 3, 2),
                                 options(AttackKind::cw, Norm::linf, 0.1, 3), options(AttackKind::pgd, Norm::l2, 1.0, 3)}) {
    INFO(attack_name(o));
    AttackStats cpu_stats, gpu_stats;
    const AttackOutcome on_cpu = attack_outcome(*cpu_model, b.x, b.y, o, &cpu_stats);
    const AttackOutcome on_gpu = attack_outcome(*gpu_model, x_gpu, y_gpu, o, &gpu_stats);
    CHECK(on_gpu.x_adv.device() == Device::cuda);
    CHECK(max_abs_diff(on_gpu.x_adv.cpu(), on_cpu.x_adv) <= 1e-4);
    CHECK(on_gpu.correct == on_cpu.correct);
    CHECK(gpu_stats.forward_passes == cpu_stats.forward_passes);
    CHECK(gpu_stats.last_grad_l1.device() == Device::cuda);
    CHECK(gpu_stats.last_grad_l1.item() == Approx(cpu_stats.last_grad_l1.item()).epsilon(1e-4));
  }
}

TEST_CASE("attack options resolve to the papers' defaults and reject bad values", "[attacks]") {
  AttackOptions o = options(AttackKind::pgd, Norm::linf, 8.0 / 255, 50, 10);
  CHECK(resolve_attack(o).alpha == Approx(2.5 * o.eps / 50));
  CHECK(attack_name(o) == "PGD-50x10");
  o.alpha = 0.01;
  CHECK(resolve_attack(o).alpha == 0.01);
  o = options(AttackKind::fgsm_rs, Norm::linf, 0.3, 10, 1);
  CHECK(resolve_attack(o).alpha == Approx(1.25 * 0.3));
  CHECK(resolve_attack(o).steps == 1);
  CHECK(attack_name(o) == "FGSM-RS");
  o = options(AttackKind::fgsm, Norm::linf, 0.3, 10, 4);
  o.alpha = 0.01;
  const AttackOptions fgsm = resolve_attack(o);
  CHECK((fgsm.alpha == 0.3 && fgsm.steps == 1 && fgsm.restarts == 1 && !fgsm.random_start));
  CHECK(attack_name(options(AttackKind::cw, Norm::linf, 0.1, 20)) == "CW-20");
  CHECK(attack_name(options(AttackKind::pgd, Norm::l2, 0.5, 20)) == "L2 PGD-20");
  CHECK(attack_name(options(AttackKind::none, Norm::linf, 0.1)) == "clean");

  CHECK_THROWS_WITH(resolve_attack(options(AttackKind::pgd, Norm::linf, 0.1, 10, 0)), Catch::Contains("restarts"));
  CHECK_THROWS_WITH(resolve_attack(options(AttackKind::pgd, Norm::linf, -0.1)), Catch::Contains("eps"));
  CHECK_THROWS_WITH(resolve_attack(options(AttackKind::pgd, Norm::linf, 0.1, -1)), Catch::Contains("steps"));
  auto model = small_mlp(1);
  const Batch b = test_batch(4);
  CHECK_THROWS_WITH(attack(*model, b.x, b.y.slice(0, 0, 3), options(AttackKind::pgd, Norm::linf, 0.1)),
                    Catch::Contains("labels"));
}

TEST_CASE("parse_radius reads fractions and k/255 and names what it rejects", "[attacks]") {
  CHECK(parse_radius("0.3") == 0.3);
  CHECK(parse_radius("8/255") == 8.0 / 255.0);
  CHECK(parse_radius("2/255") == 2.0 / 255.0);
  CHECK(parse_radius("0") == 0.0);
  CHECK(parse_radius("1") == 1.0);
  CHECK(parse_radius("255/255") == 1.0);
  for (const std::string bad : {"8/0", "-1", "abc", "300/255", "", "0.3x", "8/", "/255", "1/2/3", "nan", "inf", "1.5",
                                " 0.3", "-8/255"}) {
    INFO("'" << bad << "'");
    CHECK_THROWS_AS(parse_radius(bad), std::invalid_argument);
    CHECK_THROWS_WITH(parse_radius(bad), Catch::Contains("'" + bad + "'"));
  }
  CHECK_THROWS_WITH(parse_radius("8/0"), Catch::Contains("division by zero"));
  CHECK_THROWS_WITH(parse_radius("300/255"), Catch::Contains("outside [0, 1]"));
}

TEST_CASE("evaluate_attack scores a dataset in batches, in eval mode, counting passes", "[attacks]") {
  auto model = trained_mlp();
  const data::Dataset d = synthetic(130, false);
  model->train();  // evaluation switches to eval mode and back
  const training::EvalResult clean = training::evaluate_clean(*model, d, 50);
  CHECK(model->is_training());
  model->eval();

  AttackOptions none = options(AttackKind::none, Norm::linf, 0.03);
  const training::EvalResult also_clean = training::evaluate_attack(*model, d, 0, d.n, none, 50, Device::cpu);
  CHECK(also_clean.accuracy == clean.accuracy);
  CHECK(also_clean.forward_passes == 3);
  CHECK(also_clean.backward_passes == 0);
  CHECK(clean.accuracy > 0.5);

  std::vector<int64_t> progress;
  const AttackOptions pgd = options(AttackKind::pgd, Norm::linf, 0.03, 4, 2);
  const training::EvalResult robust = training::evaluate_attack(
      *model, d, 10, 120, pgd, 50, Device::cpu, [&](int64_t done, int64_t batches, double acc) {
        CHECK(batches == 3);
        CHECK((acc >= 0 && acc <= 1));
        progress.push_back(done);
      });
  CHECK(progress == std::vector<int64_t>{1, 2, 3});
  CHECK(robust.count == 120);
  CHECK(robust.correct.size() == 120);
  CHECK(robust.accuracy == Approx(accuracy(robust.correct)));
  CHECK(robust.accuracy < clean.accuracy);
  // 3 batches of 2 restarts of 4 steps + 1 judging forward; a restart is skipped in a batch
  // whose samples are all broken already.
  CHECK(robust.forward_passes >= 3 * (4 + 1));
  CHECK(robust.forward_passes <= 3 * 2 * (4 + 1));
  CHECK(robust.backward_passes == robust.forward_passes / 5 * 4);
  CHECK(robust.loss > clean.loss);

  // Samples are scored where they are: the first batch of [10, 130) is a batch of its own.
  const Tensor x = training::images_tensor(d, 10, 50), y = training::labels_tensor(d, 10, 50);
  const AttackOutcome first_batch = attack_outcome(*model, x, y, pgd);
  CHECK(std::equal(first_batch.correct.begin(), first_batch.correct.end(), robust.correct.begin()));

  CHECK_THROWS_AS(training::evaluate_attack(*model, d, 100, 50, pgd, 50, Device::cpu), std::out_of_range);
  CHECK_THROWS_WITH(training::evaluate_attack(*model, d, 0, 10, pgd, 50, Device::cuda), Catch::Contains("Module::to"));
}

TEST_CASE("an attack's input gradient on the CUDA device makes the host wait nowhere", "[attacks][cuda]") {
  // The forward, the cross-entropy and its backward (one_hot included) stay on the device: the
  // host waits only where the caller reads a value back.
  ModelConfig mc;
  mc.in_channels = 1;
  mc.height = mc.width = 28;
  mc.num_classes = 10;
  mc.mean = {0.5};
  mc.std = {0.5};
  const std::shared_ptr<Module> model = make_model("wong_small", mc);
  model->to(Device::cuda);
  Generator gen(7);
  const Tensor x = rand_uniform({3, 1, 28, 28}, 0, 1, gen).cuda();
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{1, 9, 4}, {3}).cuda();
  const Tensor x_adv = x.detach().set_requires_grad(true);
  const uint64_t copies = cuda::host_copy_count();
  const Tensor g = grad({cross_entropy((*model)(x_adv), y)}, {x_adv}).at(0);
  CHECK(cuda::host_copy_count() == copies);
  CHECK(g.device() == Device::cuda);
  CHECK(sum(abs(g)).item() > 0);  // the wait: reading the value back
  CHECK(cuda::host_copy_count() > copies);
}
