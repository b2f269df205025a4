// robust/training_methods and robust/epoch_rules: the per-epoch rules on scripted inputs (M+,
// DEAT-d, DEAT-p, the overfitting guard), each method's work per batch and the perturbations it
// trains on, its state across a resume, the CUDA backend (emulated) against the CPU, and PGD-AT
// against standard training on the synthetic data.
#include <catch2/catch.hpp>

#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/safetensors.h"
#include "kernels/cuda/cuda_kernels.h"
#include "models/layers.h"
#include "models/zoo.h"
#include "robust/bounds.h"
#include "robust/epoch_rules.h"
#include "robust/method_steps.h"
#include "robust/registry.h"
#include "training/optim.h"
#include "training/datasets.h"
#include "training/evaluate.h"
#include "training/trainer.h"

using namespace bulwark;
using namespace bulwark::robust;
namespace fs = std::filesystem;

namespace {

using bulwark::testing::TempDir;

constexpr int64_t kSide = 6;  // 1 x 6 x 6 inputs: big enough to attack, small enough to be instant

// Wraps a model and keeps a copy of every input it is run on (copies: Free-AT and DEAT update
// their perturbation in place after the forward).
class RecordingModel : public Module {
 public:
  explicit RecordingModel(std::shared_ptr<Module> inner) : inner_(register_module("inner", std::move(inner))) {}
  Tensor forward(const Tensor& x) override {
    inputs.push_back(x.detach().clone());
    return inner_->forward(x);
  }
  // The certified methods bound the inner model (the bound's inputs are boxes, not recorded).
  Interval interval_forward(const Interval& in) override { return inner_->interval_forward(in); }
  Interval interval_margin(const Interval& in, const Tensor& labels) override {
    return inner_->interval_margin(in, labels);
  }
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& o) override {
    return inner_->crown_backward(upper, o);
  }
  std::vector<Tensor> inputs;

 private:
  std::shared_ptr<Module> inner_;
};

std::shared_ptr<Module> small_model(const std::string& name, uint64_t seed) {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = name == "mlp" ? kSide : 8;
  cfg.seed = seed;
  return make_model(name, cfg);
}

// A batch in [0,1] with exact 0s and 1s among the values, so the [0,1] clipping is exercised.
struct Batch {
  Tensor x, y;
};
Batch random_batch(int64_t n, int64_t side, uint64_t seed) {
  Generator gen(seed);
  std::vector<float> x = rand_uniform({n, 1, side, side}, -0.2, 1.2, gen).to_vector();
  for (float& v : x) v = std::clamp(v, 0.0f, 1.0f);
  std::vector<int32_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<int32_t>((i * 7 + 3) % 10);
  return {Tensor::from_vector(x, {n, 1, side, side}), Tensor::from_vector(y, {n})};
}

// The method's config at eps on CIFAR-like data, with `given` options and the rest resolved
// (pgd with 3 steps and free with 3 replays unless given, to keep the tests small).
MethodConfig resolved(const std::string& name, double eps, const nlohmann::ordered_json& given = {}) {
  MethodConfig c;
  c.name = name;
  c.options.set("eps", eps);
  if (name == "pgd") c.options.set("steps", 3);
  if (name == "free") c.options.set("replays", 3);
  for (const auto& [key, value] : given.items()) c.options.set(key, value);
  resolve_method(c, DefaultScope{c.options, "synthetic", false, 10});
  return c;
}

std::vector<std::string> method_names() { return method_registry().names(); }
bool is_adversarial(const std::string& name) { return method_registry().at(name).adversarial; }

std::unique_ptr<training::Optimizer> sgd(Module& model, double lr = 0.05) {
  training::OptimizerConfig oc;
  oc.lr = lr;
  auto opt = training::make_optimizer(oc, model.named_parameters());
  opt->set_lr(lr);
  return opt;
}

// A method with the model, optimizer and stream it trains with (on `device`), one epoch at a time.
struct Harness {
  std::unique_ptr<Method> method;
  std::shared_ptr<RecordingModel> model;
  std::unique_ptr<training::Optimizer> optimizer;
  Generator gen{11};
  Batch probe = random_batch(32, kSide, 99);
  uint64_t host_copies = 0;  // device-to-host copies made inside train_batch so far (CUDA)

  explicit Harness(const MethodConfig& cfg, uint64_t model_seed = 1, Device device = Device::cpu)
      : method(make_method(cfg)), model(std::make_shared<RecordingModel>(small_model("mlp", model_seed))) {
    model->to(device);
    optimizer = sgd(*model);
    probe = {probe.x.to(device), probe.y.to(device)};
  }

  // One batch in epoch `epoch` (moved to the model's device): its passes and its totals, read
  // from the step log afterwards.
  std::pair<PassCounter, BatchResult> step(const Batch& b, int64_t epoch, double eps_scale = 1) {
    const Device device = probe.x.device();
    const Tensor x = b.x.to(device), y = b.y.to(device);
    PassCounter passes;
    StepLog log;
    log.begin_batch(0);
    StepContext ctx{*model, *optimizer, gen, passes, log, epoch, 0};
    ctx.eps_scale = eps_scale;
    const uint64_t copies = cuda::host_copy_count();
    method->train_batch(ctx, x, y);
    host_copies += cuda::host_copy_count() - copies;
    const std::vector<BatchResult> read = log.read_new_batches();
    REQUIRE(read.size() == 1);
    return {passes, read[0]};
  }

  // The epoch's end; the probe attack's inputs (fgsm-rs) are not kept among the recorded ones.
  // `extra` holds what the trainer put there before the method's turn (verified_val_acc).
  std::map<std::string, double> end_epoch(int64_t epoch, double train_acc, EpochVerdict* verdict = nullptr,
                                          double val_acc = 0, std::map<std::string, double> extra = {}) {
    EpochEnd end{*model, gen, epoch, train_acc, val_acc, probe.x, probe.y, extra};
    const size_t recorded = model->inputs.size();
    const EpochVerdict v = method->on_epoch_end(end);
    model->inputs.erase(model->inputs.begin() + static_cast<std::ptrdiff_t>(recorded), model->inputs.end());
    if (verdict) *verdict = v;
    return extra;
  }
};

training::RunOptions quiet(int64_t stop_after = 0) {
  training::RunOptions o;
  o.quiet = true;
  o.stop_after = stop_after;
  return o;
}

// A tiny synthetic run through the trainer.
training::TrainConfig tiny_run(const std::string& out, const std::string& method, int64_t epochs) {
  training::TrainConfig c = testing::synthetic_run("mlp", method, out);
  c.epochs = epochs;
  c.optimizer.lr = 0.01;
  if (method == "pgd") c.method.options.set("steps", 2);
  if (method == "free") c.method.options.set("replays", 2);
  return c;
}

std::vector<nlohmann::json> metrics_lines(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      nlohmann::json j = nlohmann::json::parse(line), kept;
      for (const auto& [key, value] : j.items())  // timings differ from run to run
        if (key.find("seconds") == std::string::npos && key.find("per_s") == std::string::npos) kept[key] = value;
      lines.push_back(std::move(kept));
    }
  return lines;
}

}  // namespace

// ---- the per-epoch rules, scripted ---------------------------------------------------------

TEST_CASE("the M+ rule adds a replay exactly when G exceeds the threshold", "[methods]") {
  MplusRule rule(1, 4, 1.01);
  const auto after = [&](int64_t epoch, double G) {
    rule.epoch_end({epoch, G, 0.0});
    return std::pair<int, double>{rule.r(), rule.threshold()};
  };
  CHECK(rule.r() == 1);
  CHECK(rule.threshold() == 0);
  // Epoch 0: r = 2 whatever G is, and no threshold yet.
  CHECK(after(0, 1000.0) == std::pair<int, double>{2, 0.0});
  // Epoch 1: the threshold is set from G, r stays.
  CHECK(after(1, 5.0) == std::pair<int, double>{2, 1.01 * 5.0});
  // Below and at the threshold: nothing changes (the comparison is strict).
  CHECK(after(2, 5.0) == std::pair<int, double>{2, 1.01 * 5.0});
  CHECK(after(3, 1.01 * 5.0) == std::pair<int, double>{2, 1.01 * 5.0});
  // Above: one more replay, and the threshold moves to gamma G.
  CHECK(after(4, 5.06) == std::pair<int, double>{3, 1.01 * 5.06});
  // G falls back: nothing; then a jump: r_max = 4 reached.
  CHECK(after(5, 2.0) == std::pair<int, double>{3, 1.01 * 5.06});
  CHECK(after(6, 100.0) == std::pair<int, double>{4, 1.01 * 100.0});
  // Saturated at r_max: neither r nor the threshold move, however large G grows.
  CHECK(after(7, 1e9) == std::pair<int, double>{4, 1.01 * 100.0});

  // M+PGD starts at 0 steps and goes to 1 after epoch 0; r_max caps the epoch-0 step too.
  MplusRule from_zero(0, 7, 1.01);
  from_zero.epoch_end({0, 3.0, 0.0});
  CHECK(from_zero.r() == 1);
  MplusRule capped(1, 1, 1.01);
  capped.epoch_end({0, 3.0, 0.0});
  CHECK(capped.r() == 1);

  // The rule written out once more, against a noisy rising G sequence.
  Generator gen(5);
  std::vector<double> G = rand_uniform({40}, 1.0, 1.5, gen, DType::f64).to_vector_f64();
  for (size_t t = 0; t < G.size(); ++t) G[t] += 0.03 * static_cast<double>(t);
  MplusRule scripted(1, 8, 1.01);
  int r = 1, increments = 0;
  double threshold = 0;
  for (int64_t t = 0; t < 40; ++t) {
    scripted.epoch_end({t, G[t], 0.0});
    if (t == 0) {
      r = 2;
    } else if (t == 1) {
      threshold = 1.01 * G[t];
    } else if (G[t] > threshold && r < 8) {
      threshold = 1.01 * G[t];
      ++r;
      ++increments;
    }
    REQUIRE(scripted.r() == r);
    REQUIRE(scripted.threshold() == threshold);
  }
  CHECK(increments >= 2);  // the sequence did exercise the increment
}

TEST_CASE("DEAT-d adds a replay every d epochs and DEAT-p on training accuracy above the bar", "[methods]") {
  DeatDSchedule d(3, 5);
  std::vector<int> r_d;
  for (int64_t t = 0; t < 16; ++t) {
    r_d.push_back(d.r());
    d.epoch_end({t, 0.0, 0.0});
  }
  CHECK(r_d == std::vector<int>{1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5});

  DeatPSchedule p(0.4, 4);
  std::vector<int> r_p;
  for (double acc : {0.2, 0.4, 0.41, 0.3, 0.5, 0.9, 0.95, 0.99}) {
    p.epoch_end({0, 0.0, acc});
    r_p.push_back(p.r());
  }
  CHECK(r_p == std::vector<int>{1, 1, 2, 2, 3, 4, 4, 4});  // 0.4 itself does not exceed 0.4
}

TEST_CASE("the overfitting guard fires on a drop of more than guard_drop below the best", "[methods]") {
  OverfitGuard guard(0.2);
  CHECK_FALSE(guard.observe(0.30));
  CHECK_FALSE(guard.observe(0.50));
  CHECK(guard.best() == 0.50);
  CHECK_FALSE(guard.observe(0.31));  // 0.19 below the best
  CHECK(guard.best() == 0.50);
  CHECK(guard.observe(0.25));  // 0.25 below: fires, and the best stays
  CHECK(guard.best() == 0.50);
  CHECK_FALSE(guard.observe(0.60));
  CHECK(guard.observe(0.35));

  OverfitGuard restored(0.2);
  restored.load_state(nlohmann::json::parse(guard.state().dump()));
  CHECK(restored.best() == 0.60);
  CHECK(restored.observe(0.39));
}

// ---- the step log ----------------------------------------------------------------------------

TEST_CASE("a device series reads back what was written, across chunks, one copy per chunk on CUDA", "[methods][cuda]") {
  for (Device device : {Device::cpu, Device::cuda}) {
    INFO(device_name(device));
    DeviceSeries series(DType::f32);
    const int64_t n = 2500;  // three chunks of 1024, the last partial
    for (int64_t i = 0; i < n; ++i) series.append(device).copy_(Tensor::full({1}, 0.5 * static_cast<double>(i)).to(device));
    REQUIRE(series.size() == n);
    // The first read from the device also reads the index checks an earlier test may have left
    // queued (one more copy): done here, so that the counts below are the series' own.
    Tensor::zeros({1}, DType::f32, device).cpu();
    for (int64_t first : {int64_t(0), int64_t(1023), int64_t(1500), n - 1, n}) {
      INFO("first " << first);
      const uint64_t copies = cuda::host_copy_count();
      const std::vector<double> values = series.read(first);
      REQUIRE(static_cast<int64_t>(values.size()) == n - first);
      for (int64_t i = first; i < n; ++i) REQUIRE(values[i - first] == 0.5 * static_cast<double>(i));
      const int64_t chunks_touched = first == n ? 0 : (n - 1) / 1024 - first / 1024 + 1;
      CHECK(cuda::host_copy_count() - copies == static_cast<uint64_t>(device == Device::cuda ? chunks_touched : 0));
    }
    series.clear();
    CHECK(series.size() == 0);
    CHECK(series.read().empty());
    series.append(device).copy_(Tensor::full({1}, 7.0).to(device));
    CHECK(series.read() == std::vector<double>{7.0});
    CHECK_THROWS_AS(series.append(device == Device::cpu ? Device::cuda : Device::cpu), std::logic_error);
  }
}

TEST_CASE("the step log adds each batch's steps in order and returns each batch once", "[methods]") {
  StepLog log;
  CHECK_THROWS_AS(log.record(Tensor::full({}, 1.0), Tensor::full({}, 1.0), 4), std::logic_error);
  const auto step = [&](double loss, double correct, int64_t count) {
    log.record(Tensor::full({}, loss), Tensor::full({}, correct), count);
  };
  log.begin_batch(3);
  step(0.25, 2, 4);
  step(0.5, 3, 4);  // a replay of the same batch
  log.begin_batch(4);
  step(1.5, 1, 2);
  CHECK(log.samples() == 10);
  std::vector<BatchResult> read = log.read_new_batches();
  REQUIRE(read.size() == 2);
  CHECK(read[0].batch == 3);
  CHECK(read[0].loss_sum == 0.25 * 4 + 0.5 * 4);
  CHECK(read[0].correct == 5);
  CHECK(read[0].count == 8);
  CHECK(read[1].batch == 4);
  CHECK(read[1].loss_sum == 3.0);
  CHECK(read[1].correct == 1);
  CHECK(log.read_new_batches().empty());  // nothing new
  log.begin_batch(5);                      // a batch without steps still counts as read
  log.begin_batch(6);
  step(std::nan(""), 0, 2);
  read = log.read_new_batches();
  REQUIRE(read.size() == 2);
  CHECK(read[0].count == 0);
  CHECK(std::isnan(read[1].loss_sum));
  log.clear();
  CHECK(log.samples() == 0);
  CHECK(log.read_new_batches().empty());
}

// ---- the methods on a batch ----------------------------------------------------------------

TEST_CASE("each method's passes per batch", "[methods]") {
  const Batch b = random_batch(8, kSide, 1);
  struct Expected {
    std::string name;
    int64_t epoch0, epoch1;  // passes (forward = backward) per batch in epochs 0 and 1
    int64_t count0;          // samples reported in epoch 0 (replays count once each)
    double r0;               // the "r" metric of epoch 0
  };
  // pgd-3: 3 + 1; fgsm-rs: 1 + 1; free, m = 3: 3 replays; mplus-deat: r = 1, then 2; mplus-pgd:
  // 0 + 1, then 1 + 1; deat-d and deat-p: r = 1 (training accuracy 0.3 stays below deat-p's 0.4).
  for (const Expected& e : {Expected{"pgd", 4, 4, 8, 3}, Expected{"fgsm-rs", 2, 2, 8, 1}, Expected{"free", 3, 3, 24, 3},
                            Expected{"mplus-deat", 1, 2, 8, 1}, Expected{"mplus-pgd", 1, 2, 8, 0},
                            Expected{"deat-d", 1, 1, 8, 1}, Expected{"deat-p", 1, 1, 8, 1}}) {
    INFO(e.name);
    Harness h(resolved(e.name, 0.1));
    const auto [passes, result] = h.step(b, 0);
    CHECK(passes.fwd == e.epoch0);
    CHECK(passes.bwd == e.epoch0);
    CHECK(static_cast<int64_t>(h.model->inputs.size()) == passes.fwd);  // every forward is counted
    CHECK(result.count == e.count0);
    CHECK(result.correct >= 0);
    CHECK(result.correct <= result.count);
    CHECK(std::isfinite(result.loss_sum));
    CHECK(result.loss_sum > 0);

    const auto extra = h.end_epoch(0, 0.3);
    CHECK(extra.at("r") == e.r0);
    CHECK(extra.at("alpha") > 0);
    const auto [passes1, result1] = h.step(b, 1);
    CHECK(passes1.fwd == e.epoch1);
    CHECK(passes1.bwd == e.epoch1);
  }
}

TEST_CASE("training inputs stay in the eps-ball and [0,1], and are perturbed", "[methods]") {
  const double eps = 0.1;
  const Batch b = random_batch(8, kSide, 2);
  const std::vector<float> x = b.x.to_vector();
  for (const std::string& name : method_names()) {
    if (!is_adversarial(name)) continue;
    INFO(name);
    Harness h(resolved(name, eps));
    // Two epochs, so the growing methods run with r = 2 in the second.
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      h.step(b, epoch);
      h.end_epoch(epoch, 0.9);
    }
    h.step(b, 2);
    double largest_move = 0;
    for (const Tensor& input : h.model->inputs) {
      const std::vector<float> v = input.to_vector();
      REQUIRE(v.size() == x.size());
      for (size_t i = 0; i < v.size(); ++i) {
        REQUIRE(v[i] >= 0.0f);
        REQUIRE(v[i] <= 1.0f);
        REQUIRE(std::abs(v[i] - x[i]) <= eps + 1e-6);
        largest_move = std::max(largest_move, static_cast<double>(std::abs(v[i] - x[i])));
      }
    }
    CHECK(largest_move > 0.9 * eps);  // signed steps and projections reach the ball's edge
  }
}

TEST_CASE("under the eps warm-up every method attacks within the scaled ball", "[methods]") {
  const double eps = 0.1, scale = 0.25;
  const Batch b = random_batch(8, kSide, 3);
  const std::vector<float> x = b.x.to_vector();
  for (const std::string& name : method_names()) {
    if (!is_adversarial(name)) continue;
    INFO(name);
    Harness h(resolved(name, eps));
    h.step(b, 0, scale);
    h.end_epoch(0, 0.9);
    h.step(b, 1, scale);  // the M+ methods now take a step (r >= 1)
    double largest_move = 0;
    for (const Tensor& input : h.model->inputs) {
      const std::vector<float> v = input.to_vector();
      for (size_t i = 0; i < v.size(); ++i)
        largest_move = std::max(largest_move, static_cast<double>(std::abs(v[i] - x[i])));
    }
    CHECK(largest_move <= scale * eps + 1e-6);
    CHECK(largest_move > 0.5 * scale * eps);
  }
}

TEST_CASE("Free-AT starts each batch from zero; DEAT from a fresh uniform start", "[methods]") {
  const Batch b = random_batch(8, kSide, 3);
  Harness free(resolved("free", 0.1));
  free.step(b, 0);
  free.step(b, 0);
  REQUIRE(free.model->inputs.size() == 6);
  CHECK(max_abs_diff(free.model->inputs[0], b.x) == 0);  // replay 1 of batch 1 is the clean batch
  CHECK(max_abs_diff(free.model->inputs[3], b.x) == 0);  // and so is replay 1 of batch 2
  CHECK(max_abs_diff(free.model->inputs[1], b.x) > 0);

  Harness deat(resolved("mplus-deat", 0.1));
  deat.step(b, 0);
  deat.step(b, 0);
  REQUIRE(deat.model->inputs.size() == 2);
  CHECK(max_abs_diff(deat.model->inputs[0], b.x) > 0);
  CHECK(max_abs_diff(deat.model->inputs[0], deat.model->inputs[1]) > 0);  // new counters each batch
}

TEST_CASE("the M+ methods report G and the threshold, and alpha_per_r shrinks the step", "[methods]") {
  const Batch b = random_batch(8, kSide, 4);
  const MethodConfig cfg = resolved("mplus-deat", 0.1, {{"alpha_per_r", true}});  // alpha_min = eps / r_max
  Harness h(cfg);
  h.step(b, 0);
  const auto e0 = h.end_epoch(0, 0.5);
  CHECK(e0.at("r") == 1);
  CHECK(e0.at("G") > 0);
  CHECK(e0.at("threshold") == 0);
  CHECK(e0.at("alpha") == Approx(1.25 * 0.1));
  h.step(b, 1);
  const auto e1 = h.end_epoch(1, 0.5);
  CHECK(e1.at("r") == 2);
  CHECK(e1.at("alpha") == Approx(0.1 / 2));  // r grew 1 -> 2 after epoch 0: alpha = eps / 2
  CHECK(e1.at("threshold") == Approx(1.01 * e1.at("G")));
  CHECK(cfg.options.real("alpha_min") == Approx(0.1 / 8));

  Harness pgd(resolved("mplus-pgd", 0.1));
  pgd.step(b, 0);
  const auto p0 = pgd.end_epoch(0, 0.5);
  CHECK(p0.at("r") == 0);
  CHECK(p0.at("G") > 0);  // from the training pass's input gradient, even with no attack step
}

TEST_CASE("the fgsm-rs guard stops at the previous epoch when probe robust accuracy collapses", "[methods]") {
  MethodConfig cfg = resolved("fgsm-rs", 0.01);
  Harness h(cfg);
  // A probe the model gets right: its own predictions, at an eps too small to flip many.
  {
    NoGradGuard no_grad;
    h.model->eval();
    h.probe.y = argmax((*h.model)(h.probe.x), 1);
    h.model->train();
  }
  EpochVerdict verdict;
  const auto e0 = h.end_epoch(0, 0.5, &verdict);
  CHECK(verdict == EpochVerdict::keep_going);
  CHECK(h.model->is_training());  // the probe ran in eval mode and training mode is back
  CHECK(e0.at("guard_acc") >= 0.75);
  CHECK(e0.at("guard_best") == e0.at("guard_acc"));
  // Scramble the weights (each matrix reversed): the probe's accuracy drops far below the best.
  for (auto& [name, p] : h.model->named_parameters()) {
    const std::vector<float> v = p.to_vector();
    p.copy_(Tensor::from_vector(std::vector<float>(v.rbegin(), v.rend()), p.shape()));
  }
  const auto e1 = h.end_epoch(1, 0.5, &verdict);
  INFO("probe accuracy " << e1.at("guard_acc") << ", best " << e1.at("guard_best"));
  CHECK(e1.at("guard_acc") < e0.at("guard_acc") - 0.2);
  CHECK(verdict == EpochVerdict::stop_at_previous);
  CHECK(e1.at("guard_best") == e0.at("guard_acc"));

  cfg.options.set("guard", false);
  Harness off(cfg);
  const auto e = off.end_epoch(0, 0.5, &verdict);
  CHECK(verdict == EpochVerdict::keep_going);
  CHECK(e.count("guard_acc") == 0);
}

// ---- state and resume ----------------------------------------------------------------------

TEST_CASE("a method restored from its state continues with the same next epoch", "[methods]") {
  const Batch b = random_batch(8, kSide, 5);
  for (const std::string name : {"fgsm-rs", "free", "mplus-deat", "mplus-pgd", "deat-d", "deat-p", "pgd"}) {
    INFO(name);
    const MethodConfig cfg =
        name == std::string("mplus-deat") ? resolved(name, 0.1, {{"alpha_per_r", true}}) : resolved(name, 0.1);
    Harness a(cfg, 7);
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      a.step(b, epoch);
      a.end_epoch(epoch, 0.6);
    }
    // A fresh method, model and optimizer, loaded with what a checkpoint carries.
    Harness b2(cfg, 8);
    b2.method->load_state(nlohmann::json::parse(a.method->state().dump()));
    CHECK(b2.method->state().dump() == a.method->state().dump());
    std::map<std::string, Tensor> weights;
    for (const auto& [n, t] : a.model->state_dict()) weights[n] = t;
    b2.model->load_state_dict(weights);
    b2.optimizer->load_state([&] {
      std::map<std::string, Tensor> s;
      for (const auto& [n, t] : a.optimizer->state()) s[n] = t;
      return s;
    }());
    b2.gen.set_offset(a.gen.offset());

    const auto [pa, ra] = a.step(b, 3);
    const auto [pb, rb] = b2.step(b, 3);
    CHECK(pa.fwd == pb.fwd);
    CHECK(ra.loss_sum == rb.loss_sum);
    const NamedTensors wa = a.model->state_dict(), wb = b2.model->state_dict();
    REQUIRE(wa.size() == wb.size());
    for (size_t i = 0; i < wa.size(); ++i) {
      INFO(wa[i].first);
      CHECK(max_abs_diff(wa[i].second, wb[i].second) == 0);
    }
    CHECK(a.end_epoch(3, 0.6) == b2.end_epoch(3, 0.6));
  }
}

TEST_CASE("a resumed M+ run continues bit for bit", "[methods]") {
  for (const std::string method : {"mplus-deat", "mplus-pgd", "fgsm-rs"}) {
    INFO(method);
    TempDir dir("mplus-resume");
    training::TrainConfig cfg = tiny_run(dir / "straight", method, 4);
    training::train(cfg, quiet());
    cfg.out = dir / "resumed";
    training::train(cfg, quiet(2));
    training::resume(dir / "resumed", quiet());
    const auto a = metrics_lines(dir / "straight"), b = metrics_lines(dir / "resumed");
    REQUIRE(a.size() == 4);
    REQUIRE(b.size() == 4);
    for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].dump() == b[i].dump());
    const SafetensorsFile wa = load_safetensors(dir / "straight/last.safetensors");
    const SafetensorsFile wb = load_safetensors(dir / "resumed/last.safetensors");
    for (const auto& [name, t] : wa.tensors) {
      INFO(name);
      CHECK(max_abs_diff(t, wb.tensors.at(name)) == 0);
    }
    if (method == "mplus-deat") CHECK(a[3]["r"].get<double>() >= 2);  // the rule did move
  }
}

// ---- devices -------------------------------------------------------------------------------

TEST_CASE("a pgd and a free step on the CUDA backend (emulated) match the CPU", "[methods][cuda]") {
  const Batch b = random_batch(4, 8, 6);
  for (const std::string name : {"pgd", "free"}) {
    INFO(name);
    const MethodConfig cfg = resolved(name, 0.1);
    auto cpu_model = small_model("wong_small", 3), gpu_model = small_model("wong_small", 3);
    gpu_model->to(Device::cuda);
    auto cpu_opt = sgd(*cpu_model), gpu_opt = sgd(*gpu_model);
    auto cpu_method = make_method(cfg), gpu_method = make_method(cfg);
    Generator cpu_gen(21), gpu_gen(21);
    PassCounter cpu_passes, gpu_passes;
    StepLog cpu_log, gpu_log;
    cpu_log.begin_batch(0);
    gpu_log.begin_batch(0);
    StepContext cpu_ctx{*cpu_model, *cpu_opt, cpu_gen, cpu_passes, cpu_log, 0, 0};
    StepContext gpu_ctx{*gpu_model, *gpu_opt, gpu_gen, gpu_passes, gpu_log, 0, 0};
    cpu_method->train_batch(cpu_ctx, b.x, b.y);
    gpu_method->train_batch(gpu_ctx, b.x.cuda(), b.y.cuda());
    const BatchResult on_cpu = cpu_log.read_new_batches().at(0), on_gpu = gpu_log.read_new_batches().at(0);
    CHECK(on_gpu.loss_sum == Approx(on_cpu.loss_sum).epsilon(1e-4));
    CHECK(on_gpu.correct == on_cpu.correct);
    CHECK(gpu_passes.fwd == cpu_passes.fwd);
    CHECK(gpu_gen.offset() == cpu_gen.offset());
    const auto gpu_params = gpu_model->named_parameters();
    for (const auto& [n, p] : cpu_model->named_parameters()) {
      INFO(n);
      const auto it = std::find_if(gpu_params.begin(), gpu_params.end(), [&](const auto& q) { return q.first == n; });
      REQUIRE(it != gpu_params.end());
      CHECK(it->second.device() == Device::cuda);
      CHECK(max_abs_diff(it->second.cpu(), p) <= 1e-4);
    }
  }
}

TEST_CASE("a training batch of every method on the CUDA device (emulated) makes no copy to the host", "[methods][cuda]") {
  // The loss, the correct count and the M+ signal G stay on the device (robust/step_log.h): a
  // batch queues its work and returns, and the host waits only where the log is read.
  const Batch b = random_batch(8, kSide, 7);
  for (const std::string& name : method_names()) {
    INFO(name);
    MethodConfig cfg = resolved(name, 0.1);
    if (name == "fgsm-rs") cfg.options.set("guard", false);  // fgsm-rs's guard is an end-of-epoch evaluation, not part of a batch
    Harness gpu(cfg, 1, Device::cuda), cpu(cfg, 1);
    // Two epochs: in the second the M+ methods take their first attack step or second replay.
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      INFO("epoch " << epoch);
      const auto [gpu_passes, on_gpu] = gpu.step(b, epoch);
      const auto [cpu_passes, on_cpu] = cpu.step(b, epoch);
      CHECK(gpu_passes.fwd == cpu_passes.fwd);
      CHECK(on_gpu.count == on_cpu.count);
      CHECK(on_gpu.correct == on_cpu.correct);
      CHECK(on_gpu.loss_sum == Approx(on_cpu.loss_sum).epsilon(1e-4));
      const auto gpu_extra = gpu.end_epoch(epoch, 0.9), cpu_extra = cpu.end_epoch(epoch, 0.9);
      REQUIRE(gpu_extra.size() == cpu_extra.size());
      for (const auto& [key, value] : cpu_extra) {
        INFO(key);
        CHECK(gpu_extra.at(key) == Approx(value).epsilon(1e-4));
      }
    }
    CHECK(gpu.host_copies == 0);
  }
}

// ---- through the trainer -------------------------------------------------------------------

TEST_CASE("every method trains an epoch end to end through the trainer", "[methods]") {
  for (const std::string& name : method_names()) {
    INFO(name);
    TempDir dir("method-e2e");
    const training::RunSummary s = training::train(tiny_run(dir / "run", name, 1), quiet());
    CHECK(s.complete);
    CHECK(s.epochs_completed == 1);
    CHECK(s.fwd_passes >= 3);  // 3 batches of 32
    CHECK(s.fwd_passes == s.bwd_passes);
    CHECK(s.test_acc >= 0);
    const auto lines = metrics_lines(dir / "run");
    REQUIRE(lines.size() == 1);
    if (is_adversarial(name)) {
      CHECK(lines[0].contains("r"));
      CHECK(lines[0].contains("alpha"));
    }
  }
}

TEST_CASE("M+ runs on the CUDA device (emulated) report the CPU's training metrics", "[methods][cuda]") {
  // train_loss, train_acc and G are added up on the host from the device's step log and G
  // series at the epoch's end; the CPU run reads the same numbers after every batch.
  for (const std::string method : {"mplus-deat", "mplus-pgd"}) {
    INFO(method);
    TempDir dir("mplus-device");
    const auto run_on = [&](const std::string& device) {
      training::TrainConfig c = tiny_run(dir / device, method, 2);
      training::resolve_defaults(c);
      c.device = device;  // after resolve_defaults, which refuses cuda without a real GPU
      fs::create_directories(c.out);
      training::RunData data = training::load_run_data(c);  // fills c.input
      training::Trainer trainer(c, std::move(data), quiet());
      trainer.run();
      return metrics_lines(dir / device);
    };
    const auto on_cpu = run_on("cpu"), on_gpu = run_on("cuda");
    REQUIRE(on_cpu.size() == 2);
    REQUIRE(on_gpu.size() == 2);
    for (size_t e = 0; e < on_cpu.size(); ++e) {
      INFO("epoch " << e + 1);
      CHECK(on_gpu[e]["train_loss"].get<double>() == Approx(on_cpu[e]["train_loss"].get<double>()).epsilon(1e-4));
      CHECK(on_gpu[e]["train_acc"].get<double>() == Approx(on_cpu[e]["train_acc"].get<double>()).margin(1.5 / 96));
      CHECK(on_gpu[e]["G"].get<double>() == Approx(on_cpu[e]["G"].get<double>()).epsilon(1e-4));
      CHECK(on_gpu[e]["G"].get<double>() > 0);
      CHECK(on_gpu[e]["r"] == on_cpu[e]["r"]);
    }
  }
}

TEST_CASE("PGD-AT has clearly higher PGD accuracy than standard training of the same model and budget", "[methods]") {
  // An MLP on the synthetic data at eps 8/255, 5 epochs each, Adam at 1e-3 (no flips: the
  // synthetic patterns are oriented). Measured over data/model seeds 0-3: standard training ends
  // at 0.04-0.10 PGD-10 accuracy on 300 test samples, PGD-3 AT at 0.28-0.34 (margins 0.23-0.28),
  // with clean accuracy 0.94-0.97 for both.
  TempDir dir("at-vs-standard");
  const auto run = [&](const std::string& method) {
    training::TrainConfig c = tiny_run(dir / method, method, 5);
    c.data.train_size = 1000;
    c.data.val_size = 200;
    c.data.test_size = 300;
    c.optimizer.name = "adam";
    c.optimizer.lr = 1e-3;
    c.method.options.set("eps", 8.0 / 255);
    if (method == "pgd") c.method.options.set("steps", 3);
    c.robust_val_size = 0;
    c.final_attack_size = 300;
    c.final_attack_steps = 10;
    return training::train(c, quiet());
  };
  const training::RunSummary standard = run("standard"), pgd = run("pgd");
  INFO("standard: clean " << standard.test_acc << ", PGD-10 " << standard.test_robust_acc);
  INFO("pgd:      clean " << pgd.test_acc << ", PGD-10 " << pgd.test_robust_acc);
  CHECK(pgd.test_acc > 0.8);
  CHECK(pgd.test_robust_acc >= standard.test_robust_acc + 0.15);
  CHECK(pgd.fwd_passes == 4 * standard.fwd_passes);  // PGD-3 + the training pass per batch
}

TEST_CASE("IBP, CROWN-IBP and MixTrain training verify far more than standard training, and their ramps fire",
          "[methods]") {
  // The MLP on the synthetic data (3x32x32), 6 epochs each, Adam 1e-3, eps 1/255 ramped over 2
  // epochs. Measured: IBP-verified test accuracy 0.37 after IBP training, 0 after standard
  // training (an MLP's first layer sums |W| r over 3,072 inputs: IBP needs training for it).
  TempDir dir("ibp-vs-standard");
  const double eps = 1.0 / 255;
  const auto run = [&](const std::string& method) {
    training::TrainConfig c = tiny_run(dir / method, method, 6);
    c.data.train_size = 1000;
    c.data.val_size = 200;
    c.data.test_size = 200;
    c.optimizer.name = "adam";
    c.optimizer.lr = 1e-3;
    c.method.options.set("eps", eps);
    if (method != "standard") c.method.options.set("eps_ramp", 2.0);
    if (method == "mixtrain") {
      c.method.options.set("bound", "ibp");
      c.method.options.set("sra_k", "25%");
      c.method.options.set("dmt_w0", 1.0);
    }
    c.robust_val_size = 200;
    c.final_attack_size = 0;
    return training::train(c, quiet());
  };
  const auto verified = [&](const std::string& method) {
    const training::Checkpoint ckpt = training::load_checkpoint(dir / (method + "/last.safetensors"));
    const training::TrainConfig cfg = training::config_from_json(ckpt.state.config);
    auto model = training::build_model(cfg);
    model->load_state_dict(ckpt.model);
    const data::Dataset test = training::load_test_split(cfg.data, 200);
    return training::evaluate_verified(*model, test, 0, 200, eps, robust::BoundKind::ibp, 100, Device::cpu).accuracy;
  };
  const training::RunSummary standard = run("standard");
  const double standard_verified = verified("standard");
  CHECK_FALSE(metrics_lines(dir / "standard")[0].contains("verified_val_acc"));
  for (const std::string method : {"ibp", "crown-ibp"}) {
    INFO(method);
    const training::RunSummary certified = run(method);
    const double certified_verified = verified(method);
    INFO("IBP-verified accuracy at 1/255: standard " << standard_verified << ", " << method << " " << certified_verified);
    CHECK(certified_verified >= standard_verified + 0.2);
    // Per epoch: the clean loss's weight kappa follows the ramp, 1 -> 0.5 over 2 epochs, and the
    // validation reports verified accuracy.
    const auto lines = metrics_lines(dir / method);
    REQUIRE(lines.size() == 6);
    CHECK(lines[0]["kappa"].get<double>() > 0.5);
    CHECK(lines[0]["kappa"].get<double>() < 1.0);
    CHECK(lines[5]["kappa"].get<double>() == Approx(0.5));
    CHECK(lines[5]["verified_val_acc"].get<double>() > 0.2);
    const int64_t batches = standard.fwd_passes / 6;  // one pass per batch
    if (method == "ibp") {
      CHECK(certified.fwd_passes == 2 * standard.fwd_passes);  // the clean pass and the bound pass per batch
      CHECK_FALSE(lines[0].contains("beta"));
    } else {
      // beta: 1 -> 0 on the ramp; while it is above 0 a batch also runs CROWN's backward pass.
      CHECK(lines[0]["beta"].get<double>() > 0.0);
      CHECK(lines[0]["beta"].get<double>() < 1.0);
      CHECK(lines[5]["beta"].get<double>() == 0.0);
      CHECK(lines[0]["fwd_passes"].get<int64_t>() == 3 * batches);
      CHECK(lines[5]["fwd_passes"].get<int64_t>() == 2 * batches);
    }
    CHECK(certified.bwd_passes == certified.fwd_passes);
  }
  // MixTrain with the IBP bound on a quarter of each batch (SRA), the verified term at weight 1
  // on 80% of the batches: it verifies far more than standard training too (measured: 0.17 against
  // 0; it bounds a fifth of what IBP training bounds).
  const training::RunSummary mixtrain = run("mixtrain");
  const double mixtrain_verified = verified("mixtrain");
  INFO("IBP-verified accuracy at 1/255: standard " << standard_verified << ", mixtrain " << mixtrain_verified);
  CHECK(mixtrain_verified >= standard_verified + 0.1);
  const auto lines = metrics_lines(dir / "mixtrain");
  CHECK(lines[5]["k"].get<double>() == 8);  // 25% of 32
  CHECK(lines[5]["bounded_batches"].get<double>() > 0.5);
  CHECK(lines[5]["bounded_batches"].get<double>() < 1.0);
  CHECK(mixtrain.fwd_passes < 2 * standard.fwd_passes);  // the bound on 20% of the batches is skipped
}

TEST_CASE("the eps ramp: linear or smoothed, after a start, continuous in value and slope", "[methods]") {
  using robust::EpsRampShape;
  CHECK(robust::eps_ramp_scale(3.0, 0, 0, EpsRampShape::linear) == 1.0);  // no ramp
  CHECK(robust::eps_ramp_scale(0.5, 1, 0, EpsRampShape::linear) == 0.0);  // before the start
  CHECK(robust::eps_ramp_scale(1.0, 1, 4, EpsRampShape::linear) == 0.0);
  CHECK(robust::eps_ramp_scale(3.0, 1, 4, EpsRampShape::linear) == Approx(0.5));
  CHECK(robust::eps_ramp_scale(9.0, 1, 4, EpsRampShape::linear) == 1.0);
  // Smoothed: slower than linear at first, ends at 1, and its value and slope meet at a quarter.
  const auto smoothed = [](double p) { return robust::eps_ramp_scale(p, 0, 1, EpsRampShape::smoothed); };
  CHECK(smoothed(0.0) == 0.0);
  CHECK(smoothed(0.1) < 0.1 * 0.1);
  CHECK(smoothed(1.0) == Approx(1.0));
  const double h = 1e-7;
  CHECK(smoothed(0.25 - h) == Approx(smoothed(0.25)).margin(1e-6));
  CHECK((smoothed(0.25) - smoothed(0.25 - h)) / h == Approx((smoothed(0.25 + h) - smoothed(0.25)) / h).epsilon(1e-4));
  double previous = 0;
  for (double p = 0.01; p <= 1.0; p += 0.01) {
    CHECK(smoothed(p) >= previous);  // never falls
    previous = smoothed(p);
  }
}

// ---- MixTrain (robust/methods/mixtrain.cpp) ---------------------------------------------------------

namespace {
MethodConfig mixtrain_config(const std::string& bound, const std::string& sra_k, double prob) {
  MethodConfig cfg;
  cfg.name = "mixtrain";
  cfg.options.set("eps", 0.02);
  cfg.options.set("bound", bound);
  cfg.options.set("sra_k", sra_k);
  cfg.options.set("dmt_prob", prob);
  cfg.options.set("eps_ramp", 2.0);
  cfg.options.set("dmt_every", 1.0);
  resolve_method(cfg, DefaultScope{cfg.options, "mnist", true, 10});
  return cfg;
}
}  // namespace

TEST_CASE("MixTrain bounds k sampled samples with the probability given, and counts the bound's rows as passes",
          "[methods][mixtrain]") {
  const Batch b = random_batch(8, kSide, 5);
  const int64_t d = kSide * kSide;
  for (const std::string bound : {"symbolic", "ibp", "crown-ibp"}) {
    INFO(bound);
    Harness on(mixtrain_config(bound, "25%", 1.0));
    on.method->check(*on.model, b.x, b.y, 8);
    const auto [passes, result] = on.step(b, 0);
    // k = 2 of 8: the symbolic bound carries 2 (d + 3) rows, ceil(2 (d + 3) / 8) batches of them;
    // IBP the 2 boxes (one pass), CROWN-IBP one more for its backward pass.
    const int64_t bound_passes = bound == "symbolic" ? (2 * (d + 3) + 7) / 8 : bound == "ibp" ? 1 : 2;
    CHECK(passes.fwd == 1 + bound_passes);
    CHECK(passes.bwd == passes.fwd);
    CHECK(on.end_epoch(0, 0)["k"] == 2);
    Harness off(mixtrain_config(bound, "25%", 0.0));  // the verified term never drawn
    CHECK(off.step(b, 0).first.fwd == 1);
    CHECK(off.end_epoch(0, 0)["bounded_batches"] == 0);
  }
  // The loss is CE(f(x), y) + w CE(wc, y): with k = all and the draw certain, the recorded loss is
  // that sum, w = 0.1 in the ramp's first epochs.
  Harness all(mixtrain_config("symbolic", "all", 1.0));
  const Tensor clean = cross_entropy(all.model->forward(b.x), b.y);
  const Tensor verified = cross_entropy(robust::worst_case_logits(*all.model, b.x, b.y, 0.02, robust::BoundKind::symbolic), b.y);
  const double want = clean.item() + 0.1 * verified.item();
  CHECK(all.step(b, 0).second.loss_sum / 8 == Approx(want).epsilon(1e-5));
}

TEST_CASE("MixTrain's weight: the ramp grows it after the eps ramp, balance follows dA - dV", "[methods][mixtrain]") {
  const Batch b = random_batch(8, kSide, 6);
  // ramp: w0 0.1, x2.5 every epoch (--dmt-every 1) once the 2-epoch eps ramp is over.
  Harness ramp(mixtrain_config("ibp", "25%", 1.0));
  const double want[] = {0.1, 0.1, 0.1, 0.25, 0.625};
  for (int64_t t = 0; t < 5; ++t) {
    ramp.step(b, t);
    CHECK(ramp.end_epoch(t, 0)["w"] == Approx(want[t]));
  }
  // balance: w <- w exp(10 (dA - dV)) from the second epoch on.
  MethodConfig cfg = mixtrain_config("ibp", "25%", 1.0);
  cfg.options.set("dmt", "balance");
  Harness balance(cfg);
  const double A[] = {0.5, 0.6, 0.6}, V[] = {0.1, 0.1, 0.3};
  double w = 0.1;
  for (int64_t t = 0; t < 3; ++t) {
    balance.step(b, t);
    CHECK(balance.end_epoch(t, 0, nullptr, A[t], {{"verified_val_acc", V[t]}})["w"] == Approx(w));
    if (t > 0) w *= std::exp(10 * ((A[t] - A[t - 1]) - (V[t] - V[t - 1])));
    else w = 0.1;
  }
  CHECK(w == Approx(0.1 * std::exp(1.0) * std::exp(-2.0)));
  const nlohmann::json state = balance.method->state();  // resumable: w and the last A, V
  CHECK(state["w"].get<double>() == Approx(0.1 * std::exp(1.0) * std::exp(-2.0)));
}

TEST_CASE("MixTrain refuses a bad --sra-k, a model its bound cannot pass and a bound over the memory limit",
          "[methods][mixtrain]") {
  for (const std::string bad : {"0", "-3", "150%", "ten", "12x"}) {
    INFO(bad);
    CHECK_THROWS_WITH(make_method(mixtrain_config("ibp", bad, 1.0)), Catch::Contains("--sra-k '" + bad + "'"));
  }
  const Batch b = random_batch(8, kSide, 7);
  Harness big_k(mixtrain_config("ibp", "12", 1.0));
  CHECK_THROWS_WITH(big_k.method->check(*big_k.model, b.x, b.y, 8), Catch::Contains("--sra-k 12 is larger than the batch (8"));
  MethodConfig tight = mixtrain_config("symbolic", "4", 1.0);
  tight.options.set("bound_memory", 0.01);
  Harness memory(tight);
  CHECK_THROWS_WITH(memory.method->check(*memory.model, b.x, b.y, 8),
                    Catch::Contains("over --bound-memory") && Catch::Contains("lower --sra-k"));
  // A layer that says nothing about boxes (the default interval_forward throws, naming it).
  struct Opaque : Module {
    Tensor forward(const Tensor& x) override { return x.flatten(1); }
  };
  Generator gen(3);
  Sequential opaque;
  opaque.add(std::make_shared<Opaque>());
  opaque.add(std::make_shared<Linear>(kSide * kSide, 10, gen));
  Harness symbolic(mixtrain_config("symbolic", "25%", 1.0));
  CHECK_THROWS_WITH(symbolic.method->check(opaque, b.x, b.y, 8),
                    Catch::Contains("mixtrain --bound symbolic: Opaque: interval bound propagation cannot pass"));
}

TEST_CASE("PGD-AT with the interval attack as its inner maximisation trains within the ball and counts its rows",
          "[methods][interval]") {
  MethodConfig cfg;
  cfg.name = "pgd";
  cfg.options.set("eps", 0.1);
  cfg.options.set("steps", 3);
  cfg.options.set("inner", "interval");
  resolve_method(cfg, DefaultScope{cfg.options, "mnist", true, 10});
  Harness h(cfg);
  const Batch b = random_batch(8, kSide, 9);
  const auto [passes, result] = h.step(b, 0);
  CHECK(result.count == 8);
  // PGD-3 from x (3 forward and backward) and the judging forward, at least; the guided steps'
  // symbolic bounds add (d + 3) rows for each sample PGD left.
  CHECK(passes.fwd >= 4);
  CHECK(passes.bwd >= 3);
  const Tensor trained_on = h.model->inputs.back();
  CHECK(max_abs_diff(trained_on, b.x) <= 0.1 + 1e-6);
  CHECK(max_abs_diff(trained_on, b.x) > 0);
  MethodConfig plain = cfg;
  plain.options.set("inner", "pgd");
  Harness p(plain);
  CHECK(p.step(b, 0).first.fwd == 4);  // PGD-3 + the training pass
}
