// training/: the optimizers against PyTorch's update rules, the LR schedules' shapes, and the
// trainer end to end on the synthetic data (learning, bitwise resume, atomic checkpoints, NaN).
#include <catch2/catch.hpp>

#include "tests/test_util.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unistd.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/emu/execution.h"
#include "models/zoo.h"
#include "engine/json_field.h"
#include "engine/safetensors.h"
#include "training/checkpoint.h"
#include "training/config.h"
#include "training/optim.h"
#include "training/schedule.h"
#include "training/trainer.h"
#include "engine/runtime.h"
#include "kernels/common/precision.h"

using namespace bulwark;
using namespace bulwark::training;
namespace fs = std::filesystem;

namespace {

using bulwark::testing::TempDir;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// Two f64 parameters and the quadratic loss sum(k * p^2) / 2 + sum(c * p), so the gradient
// k * p + c depends on the parameter and every step sees a different gradient.
struct Quadratic {
  std::vector<double> k{0.5, 2.0, 1.5}, c{0.3, -0.2, 0.1};
  Tensor p = Tensor::from_vector(std::vector<double>{1.0, -0.5, 2.0}, {3}).set_requires_grad(true);
  Tensor q = Tensor::from_vector(std::vector<double>{0.25}, {1}).set_requires_grad(true);

  NamedTensors params() const { return {{"p", p}, {"q", q}}; }
  std::vector<double> grad_p(const std::vector<double>& v) const {
    std::vector<double> g(v.size());
    for (size_t i = 0; i < v.size(); ++i) g[i] = k[i] * v[i] + c[i];
    return g;
  }
  void backward_once() {
    const Tensor kp = Tensor::from_vector(k, {3}), cp = Tensor::from_vector(c, {3});
    const Tensor loss = sum(kp * square(p)) * 0.5 + sum(cp * p) + sum(square(q));
    backward(loss);
  }
};

// torch.optim.SGD's documented algorithm, scalar by scalar, with its first-step buffer rule.
std::vector<double> reference_sgd(const Quadratic& f, std::vector<double> p, int steps, double lr, double m,
                                  double wd, bool nesterov) {
  std::vector<double> buf(p.size());
  for (int t = 0; t < steps; ++t) {
    const std::vector<double> g = f.grad_p(p);
    for (size_t i = 0; i < p.size(); ++i) {
      double d = g[i] + wd * p[i];
      buf[i] = t == 0 ? d : m * buf[i] + d;
      d = nesterov ? d + m * buf[i] : buf[i];
      p[i] -= lr * d;
    }
  }
  return p;
}

// Adam as in Kingma & Ba with bias-corrected moments (PyTorch computes the same quantity).
std::vector<double> reference_adam(const Quadratic& f, std::vector<double> p, int steps, double lr, double b1,
                                   double b2, double eps, double wd) {
  std::vector<double> m(p.size()), v(p.size());
  for (int t = 1; t <= steps; ++t) {
    const std::vector<double> g0 = f.grad_p(p);
    for (size_t i = 0; i < p.size(); ++i) {
      const double g = g0[i] + wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
  return p;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i])));
  }
}

std::vector<double> run_optimizer(const OptimizerConfig& cfg, Quadratic& f, int steps) {
  const auto opt = make_optimizer(cfg, f.params());
  for (int t = 0; t < steps; ++t) {
    opt->zero_grad();
    f.backward_once();
    opt->step();
  }
  CHECK(opt->steps() == steps);
  return f.p.to_vector_f64();
}

// A synthetic-data run small enough for a test: an MLP (it learns the synthetic patterns in a
// few epochs and runs in well under a second per epoch).
TrainConfig tiny_config(const std::string& out, int64_t epochs) {
  TrainConfig c;
  c.model = "mlp";
  c.data.dataset = "synthetic";
  c.data.train_size = 600;
  c.data.val_size = 200;
  c.data.test_size = 200;
  c.epochs = epochs;
  c.batch_size = 32;
  c.optimizer.name = "adam";
  c.optimizer.lr = 1e-3;
  c.method.name = "standard";
  c.schedule.name = "cosine";
  c.threads = 1;  // tiny models gain nothing from threads, and a busy machine makes them slower
  c.device = "cpu";
  c.out = out;
  return c;
}

RunOptions quiet(int64_t stop_after = 0) {
  RunOptions o;
  o.quiet = true;
  o.stop_after = stop_after;
  return o;
}

}  // namespace

TEST_CASE("SGD momentum follows PyTorch's rule, literal values", "[training]") {
  // One parameter, constant gradient 0.5 (loss 0.5 p), lr 0.1, momentum 0.9 (hand-computed):
  //   buf 0.5,  p 1 - 0.05 = 0.95;  buf 0.95, p 0.855;  buf 1.355, p 0.7195
  Tensor p = Tensor::from_vector(std::vector<double>{1.0}, {1}).set_requires_grad(true);
  OptimizerConfig cfg;
  cfg.lr = 0.1;
  cfg.momentum = 0.9;
  cfg.weight_decay = 0;
  Sgd opt({{"p", p}}, cfg);
  const double expect[3] = {0.95, 0.855, 0.7195};
  for (double want : expect) {
    opt.zero_grad();
    backward(sum(p) * 0.5);
    opt.step();
    CHECK(p.item() == Approx(want).epsilon(1e-14));
  }
}

TEST_CASE("gradient clipping scales the global norm down to the limit, and leaves smaller ones alone", "[training]") {
  // Two parameters with gradients (3, 0) and (0, 4): global norm 5. Plain SGD, lr 1.
  for (const double limit : {1.0, 10.0}) {
    INFO("limit " << limit);
    Tensor a = Tensor::from_vector(std::vector<double>{0.0, 0.0}, {2}).set_requires_grad(true);
    Tensor b = Tensor::from_vector(std::vector<double>{0.0, 0.0}, {2}).set_requires_grad(true);
    OptimizerConfig cfg;
    cfg.lr = 1;
    cfg.momentum = 0;
    cfg.weight_decay = 0;
    Sgd opt({{"a", a}, {"b", b}}, cfg);
    opt.set_grad_clip(limit);
    const Tensor wa = Tensor::from_vector(std::vector<double>{3.0, 0.0}, {2});
    const Tensor wb = Tensor::from_vector(std::vector<double>{0.0, 4.0}, {2});
    backward(sum(a * wa) + sum(b * wb));
    opt.step();
    const double scale = std::min(1.0, limit / 5.0);
    CHECK(a.to_vector_f64()[0] == Approx(-3 * scale).epsilon(1e-6));
    CHECK(b.to_vector_f64()[1] == Approx(-4 * scale).epsilon(1e-6));
  }
  OptimizerConfig cfg;
  Tensor p = Tensor::from_vector(std::vector<double>{1.0}, {1}).set_requires_grad(true);
  Sgd opt({{"p", p}}, cfg);
  CHECK_THROWS_WITH(opt.set_grad_clip(-1), Catch::Contains("gradient clipping"));
}

TEST_CASE("SGD matches torch.optim.SGD over 3 steps (momentum, Nesterov, weight decay)", "[training]") {
  struct Case {
    double momentum, weight_decay;
    bool nesterov;
  };
  for (const Case c : {Case{0.0, 0.0, false}, Case{0.9, 0.0, false}, Case{0.9, 5e-2, false}, Case{0.9, 5e-2, true},
                       Case{0.5, 0.0, true}}) {
    INFO("momentum " << c.momentum << ", weight decay " << c.weight_decay << ", nesterov " << c.nesterov);
    Quadratic f;
    const std::vector<double> p0 = f.p.to_vector_f64();
    OptimizerConfig cfg;
    cfg.lr = 0.1;
    cfg.momentum = c.momentum;
    cfg.weight_decay = c.weight_decay;
    cfg.nesterov = c.nesterov;
    check_close(run_optimizer(cfg, f, 3), reference_sgd(f, p0, 3, 0.1, c.momentum, c.weight_decay, c.nesterov), 1e-14);
  }
}

TEST_CASE("Adam matches torch.optim.Adam over 3 steps (bias correction, weight decay)", "[training]") {
  for (double wd : {0.0, 0.1}) {
    INFO("weight decay " << wd);
    Quadratic f;
    const std::vector<double> p0 = f.p.to_vector_f64();
    OptimizerConfig cfg;
    cfg.name = "adam";
    cfg.lr = 0.01;
    cfg.weight_decay = wd;
    check_close(run_optimizer(cfg, f, 3), reference_adam(f, p0, 3, 0.01, 0.9, 0.999, 1e-8, wd), 1e-12);
  }
  // Adam's first step moves every coordinate by about lr against its gradient's sign.
  Quadratic f;
  const std::vector<double> p0 = f.p.to_vector_f64(), g0 = f.grad_p(p0);
  OptimizerConfig cfg;
  cfg.name = "adam";
  cfg.lr = 0.01;
  cfg.weight_decay = 0;
  const std::vector<double> p1 = run_optimizer(cfg, f, 1);
  for (size_t i = 0; i < p0.size(); ++i) CHECK(p1[i] - p0[i] == Approx(g0[i] > 0 ? -0.01 : 0.01).epsilon(1e-6));
}

TEST_CASE("optimizers update f32 parameters like the f64 rule", "[training]") {
  Tensor p = Tensor::from_vector(std::vector<float>{1.0f, -0.5f, 2.0f}, {3}).set_requires_grad(true);
  for (const std::string name : {"sgd", "adam"}) {
    INFO(name);
    p.copy_(Tensor::from_vector(std::vector<float>{1.0f, -0.5f, 2.0f}, {3}));
    OptimizerConfig cfg;
    cfg.name = name;
    cfg.lr = 0.01;
    cfg.weight_decay = 0.1;
    const auto opt = make_optimizer(cfg, {{"p", p}});
    Quadratic ref;  // same k, c; its q is unused
    std::vector<double> want = name == "sgd" ? reference_sgd(ref, {1.0, -0.5, 2.0}, 3, 0.01, 0.9, 0.1, false)
                                             : reference_adam(ref, {1.0, -0.5, 2.0}, 3, 0.01, 0.9, 0.999, 1e-8, 0.1);
    for (int t = 0; t < 3; ++t) {
      opt->zero_grad();
      backward(sum(Tensor::from_vector(ref.k, {3}).to(DType::f32) * square(p)) * 0.5 +
               sum(Tensor::from_vector(ref.c, {3}).to(DType::f32) * p));
      opt->step();
    }
    check_close(p.to_vector_f64(), want, 1e-6);
  }
}

TEST_CASE("optimizer state round-trips: a restored optimizer continues bit for bit", "[training]") {
  for (const std::string name : {"sgd", "adam"}) {
    INFO(name);
    OptimizerConfig cfg;
    cfg.name = name;
    cfg.lr = 0.05;
    Quadratic a, b;
    const auto opt_a = make_optimizer(cfg, a.params());
    for (int t = 0; t < 2; ++t) {
      opt_a->zero_grad();
      a.backward_once();
      opt_a->step();
    }
    // b: same parameters and optimizer state, loaded from a's export.
    b.p.copy_(a.p.detach());
    b.q.copy_(a.q.detach());
    const auto opt_b = make_optimizer(cfg, b.params());
    std::map<std::string, Tensor> state;
    for (auto& [k, v] : opt_a->state()) state.emplace(k, v);
    CHECK(state.count("optimizer.step") == 1);
    CHECK(state.count(name == "sgd" ? "optimizer.p.momentum_buffer" : "optimizer.p.exp_avg_sq") == 1);
    opt_b->load_state(state);
    CHECK(opt_b->steps() == 2);
    opt_a->zero_grad();
    a.backward_once();
    opt_a->step();
    opt_b->zero_grad();
    b.backward_once();
    opt_b->step();
    CHECK(a.p.to_vector_f64() == b.p.to_vector_f64());
    CHECK(a.q.to_vector_f64() == b.q.to_vector_f64());

    state.erase(name == "sgd" ? "optimizer.q.momentum_buffer" : "optimizer.q.exp_avg");
    CHECK_THROWS_WITH(opt_b->load_state(state), Catch::Contains("optimizer.q.") && Catch::Contains("missing"));
  }
}

TEST_CASE("bad optimizer settings are rejected with the option's name", "[training]") {
  Quadratic f;
  OptimizerConfig cfg;
  cfg.lr = -1;
  CHECK_THROWS_WITH(make_optimizer(cfg, f.params()), Catch::Contains("learning rate"));
  cfg.lr = 0.1;
  cfg.momentum = 1.5;
  CHECK_THROWS_WITH(make_optimizer(cfg, f.params()), Catch::Contains("momentum"));
  cfg.momentum = 0.9;
  cfg.name = "lbfgs";
  CHECK_THROWS_WITH(make_optimizer(cfg, f.params()), Catch::Contains("unknown optimizer 'lbfgs'"));
}

TEST_CASE("LR schedules have their shapes at the key points", "[training]") {
  const double lr0 = 0.1;
  const int64_t T = 10;
  auto sched = [&](const std::string& name, ScheduleConfig cfg = {}) {
    cfg.name = name;
    return make_schedule(cfg, lr0, T);
  };
  const auto constant = sched("constant");
  CHECK(constant->lr(0) == Approx(lr0));
  CHECK(constant->lr(7.3) == Approx(lr0));

  ScheduleConfig ms;
  ms.options.set("milestones", std::vector<double>{5, 8});
  const auto multistep = sched("multistep", ms);
  CHECK(multistep->lr(4.99) == Approx(lr0));
  CHECK(multistep->lr(5) == Approx(lr0 * 0.1));
  CHECK(multistep->lr(7.99) == Approx(lr0 * 0.1));
  CHECK(multistep->lr(8) == Approx(lr0 * 0.01));
  const auto multistep_default = sched("multistep");  // T/2 and 3T/4
  CHECK(multistep_default->lr(4.9) == Approx(lr0));
  CHECK(multistep_default->lr(5.0) == Approx(lr0 * 0.1));
  CHECK(multistep_default->lr(7.5) == Approx(lr0 * 0.01));

  const auto cosine = sched("cosine");
  CHECK(cosine->lr(0) == Approx(lr0));
  CHECK(cosine->lr(5) == Approx(lr0 / 2));
  CHECK(cosine->lr(10) == Approx(0).margin(1e-15));
  CHECK(cosine->lr(2.5) == Approx(lr0 * (1 + std::sqrt(0.5)) / 2));
  ScheduleConfig floor;
  floor.options.set("min_lr", 0.01);
  CHECK(sched("cosine", floor)->lr(10) == Approx(0.01));

  const auto cyclic = sched("cyclic");  // 0 -> lr0 at 2T/5 -> 0
  CHECK(cyclic->lr(0) == Approx(0).margin(1e-15));
  CHECK(cyclic->lr(2) == Approx(lr0 / 2));
  CHECK(cyclic->lr(4) == Approx(lr0));
  CHECK(cyclic->lr(7) == Approx(lr0 / 2));
  CHECK(cyclic->lr(10) == Approx(0).margin(1e-15));

  const auto one_cycle = sched("one-cycle");  // lr0 -> 10 lr0 at 2T/5 -> lr0 at 4T/5 -> lr0/100 at T
  CHECK(one_cycle->lr(0) == Approx(lr0));
  CHECK(one_cycle->lr(2) == Approx(5.5 * lr0));
  CHECK(one_cycle->lr(4) == Approx(10 * lr0));
  CHECK(one_cycle->lr(8) == Approx(lr0));
  CHECK(one_cycle->lr(9) == Approx((lr0 + lr0 / 100) / 2));
  CHECK(one_cycle->lr(10) == Approx(lr0 / 100));

  const auto piecewise = sched("piecewise");  // lr0, lr0/10 from T/3, lr0/100 from 2T/3
  CHECK(piecewise->lr(3.3) == Approx(lr0));
  CHECK(piecewise->lr(10.0 / 3) == Approx(lr0 / 10));
  CHECK(piecewise->lr(6.6) == Approx(lr0 / 10));
  CHECK(piecewise->lr(6.7) == Approx(lr0 / 100));
  CHECK(piecewise->lr(10) == Approx(lr0 / 100));

  for (const auto& name : schedule_names())
    if (name != "accelat") CHECK(sched(name)->state() == nlohmann::json::object());  // accelat: test_schedule.cpp
}

TEST_CASE("bad schedule settings are rejected", "[training]") {
  ScheduleConfig cfg;
  cfg.name = "warmup";
  CHECK_THROWS_WITH(make_schedule(cfg, 0.1, 10), Catch::Contains("unknown schedule 'warmup'") && Catch::Contains("cosine"));
  cfg.name = "multistep";
  cfg.options.set("milestones", std::vector<double>{8, 5});
  CHECK_THROWS_WITH(make_schedule(cfg, 0.1, 10), Catch::Contains("ascending"));
  cfg.options.set("milestones", std::vector<double>{12});
  CHECK_THROWS_WITH(make_schedule(cfg, 0.1, 10), Catch::Contains("milestone 12"));
}

TEST_CASE("a short run on synthetic data learns well above chance", "[training]") {
  TempDir dir("learn");
  const RunSummary s = train(tiny_config(dir / "run", 4), quiet());
  CHECK(s.complete);
  CHECK(s.epochs_completed == 4);
  CHECK(s.final_val_acc > 0.5);  // 10 classes: chance is 0.1
  CHECK(s.test_acc > 0.5);
  CHECK(s.test_size == 200);
  // Standard training: one forward and one backward per batch, 19 batches of 32 per epoch.
  CHECK(s.fwd_passes == 4 * 19);
  CHECK(s.bwd_passes == 4 * 19);
  CHECK(fs::exists(dir / "run/summary.json"));
  CHECK(fs::exists(dir / "run/best.safetensors"));
  const auto cfg = nlohmann::json::parse(read_file(dir / "run/config.json"));
  CHECK(cfg["data"]["train_size"] == 600);
  CHECK(cfg["input"]["channels"] == 3);
  CHECK(cfg["optimizer"]["name"] == "adam");
}

TEST_CASE("a run stopped after 2 of 3 epochs and resumed ends bitwise equal to a straight run", "[training]") {
  TempDir dir("resume");
  TrainConfig cfg = tiny_config(dir / "straight", 3);
  cfg.model = "wong_small";  // convolutions, so the conv kernels are in the bitwise claim too
  cfg.optimizer.name = "sgd";
  cfg.optimizer.lr = 0.05;
  cfg.data.train_size = 256;
  cfg.data.val_size = 64;
  cfg.data.test_size = 64;
  cfg.data.crop_pad = 2;
  cfg.data.flip = true;
  train(cfg, quiet());

  cfg.out = dir / "resumed";
  const RunSummary first = train(cfg, quiet(2));
  CHECK_FALSE(first.complete);
  CHECK(first.epochs_completed == 2);
  CHECK_FALSE(fs::exists(dir / "resumed/summary.json"));
  const RunSummary second = resume(dir / "resumed", quiet());
  CHECK(second.complete);
  CHECK(second.epochs_completed == 3);

  for (const std::string file : {"last.safetensors", "best.safetensors"}) {
    INFO(file);
    const SafetensorsFile a = load_safetensors(dir / ("straight/" + file));
    const SafetensorsFile b = load_safetensors(dir / ("resumed/" + file));
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (const auto& [name, t] : a.tensors) {
      INFO(name);
      REQUIRE(b.tensors.count(name) == 1);
      const Tensor& u = b.tensors.at(name);
      REQUIRE(t.shape() == u.shape());
      REQUIRE(t.dtype() == u.dtype());
      CHECK(std::memcmp(t.impl()->storage->data, u.impl()->storage->data, t.numel() * dtype_size(t.dtype())) == 0);
    }
    CHECK(a.metadata.at("epoch") == b.metadata.at("epoch"));
  }

  const auto lines_a = read_lines(dir / "straight/metrics.jsonl"), lines_b = read_lines(dir / "resumed/metrics.jsonl");
  REQUIRE(lines_a.size() == 3);
  REQUIRE(lines_b.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    auto a = nlohmann::json::parse(lines_a[i]), b = nlohmann::json::parse(lines_b[i]);
    for (const char* timing : {"seconds", "cpu_seconds", "images_per_s"}) {
      a.erase(timing);
      b.erase(timing);
    }
    CHECK(a.dump() == b.dump());
  }
  const auto sa = nlohmann::json::parse(read_file(dir / "straight/summary.json"));
  const auto sb = nlohmann::json::parse(read_file(dir / "resumed/summary.json"));
  CHECK(sa["test_acc"] == sb["test_acc"]);
  CHECK(sa["fwd_passes"] == sb["fwd_passes"]);
}

TEST_CASE("resume drops metrics lines the checkpoint does not cover", "[training]") {
  TempDir dir("truncate");
  TrainConfig cfg = tiny_config(dir / "run", 2);
  train(cfg, quiet(1));
  // A crash after the line of epoch 2 was written but before its checkpoint was.
  {
    std::ofstream out(dir / "run/metrics.jsonl", std::ios::app);
    out << R"({"epoch":2,"train_loss":9,"train_acc":0,"val_acc":0,"lr":0,"seconds":0,"fwd_passes":0,"bwd_passes":0,"images_per_s":0})"
        << "\n";
  }
  resume(dir / "run", quiet());
  const auto lines = read_lines(dir / "run/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(nlohmann::json::parse(lines[1])["train_loss"] != 9);
}

TEST_CASE("a checkpoint's metadata is checked value by value", "[training]") {
  TempDir dir("metadata");
  train(tiny_config(dir / "run", 1), quiet(1));
  const std::map<std::string, std::string> good = load_safetensors(dir / "run/last.safetensors").metadata;
  const CheckpointState state = checkpoint_state(good, "ck");
  CHECK(state.epoch == 1);
  CHECK(state.config.is_object());
  const auto with = [&](const std::string& key, const std::string& value) {
    std::map<std::string, std::string> m = good;
    m[key] = value;
    return m;
  };
  CHECK_THROWS_WITH(checkpoint_state(with("epoch", "-1"), "ck"), "ck: checkpoint metadata 'epoch' is '-1', not an integer >= 0");
  CHECK_THROWS_WITH(checkpoint_state(with("batch", "3x"), "ck"), Catch::Contains("'batch' is '3x'"));
  // std::stoull alone would read "-5" as 2^64 - 5.
  CHECK_THROWS_WITH(checkpoint_state(with("rng_offset", "-5"), "ck"), Catch::Contains("'rng_offset' is '-5', not an unsigned"));
  CHECK_THROWS_WITH(checkpoint_state(with("config", "[1]"), "ck"), Catch::Contains("'config' is not a JSON object"));
  CHECK_THROWS_WITH(checkpoint_state(with("schedule_state", "{"), "ck"), Catch::Contains("ck: damaged checkpoint metadata"));
  CHECK_THROWS_WITH(checkpoint_state(with("epoch_progress", R"({"loss_sum":1})"), "ck"),
                    Catch::Contains("epoch_progress has no number 'seconds'"));
  CHECK_THROWS_WITH(checkpoint_state(with("format", "other"), "ck"), Catch::Contains("not a bulwark checkpoint"));
  std::map<std::string, std::string> missing = good;
  missing.erase("rng_seed");
  CHECK_THROWS_WITH(checkpoint_state(missing, "ck"), "ck: checkpoint metadata has no 'rng_seed'");
}

TEST_CASE("integers read from JSON files are whole numbers in their type's range", "[training]") {
  using nlohmann::json;
  CHECK(json_get<int64_t>(json(7)) == 7);
  CHECK(json_get<int64_t>(json(3.0)) == 3);
  CHECK(json_get<int>(json(-5)) == -5);
  CHECK(json_get<std::vector<int64_t>>(json::parse("[1, 2.0, 3]")) == std::vector<int64_t>{1, 2, 3});
  // nlohmann's get<int64_t>() of 1e99 is undefined behaviour (the fuzzer's first finding), and of
  // 2.5, or of 2^40 into an int, another number.
  CHECK_THROWS_WITH(json_get<int64_t>(json(1e99)), Catch::Contains("1e+99 is not a whole number in"));
  CHECK_THROWS_WITH(json_get<int64_t>(json(9223372036854775808.0)), Catch::Contains("is not a whole number"));
  CHECK_THROWS_WITH(json_get<int64_t>(json(2.5)), Catch::Contains("2.5 is not a whole number"));
  CHECK_THROWS_WITH(json_get<int>(json(int64_t{1} << 40)), Catch::Contains("1099511627776 is not a whole number"));
  CHECK_THROWS_WITH(json_get<uint64_t>(json(-1)), Catch::Contains("-1 is not a whole number"));
  CHECK_THROWS_AS(json_get<int64_t>(json("7")), nlohmann::json::type_error);
  // Through a run's config: the key is named.
  json cfg = to_json(TrainConfig{});
  cfg["epochs"] = 1e99;
  CHECK_THROWS_WITH(config_from_json(cfg), Catch::Contains("config key 'epochs': 1e+99 is not a whole number"));
}

TEST_CASE("checkpoints are written atomically", "[training]") {
  TempDir dir("atomic");
  struct Tiny : Module {
    Tensor w;
    Tiny() { w = register_parameter("w", Tensor::from_vector(std::vector<float>{1, 2, 3}, {3})); }
    Tensor forward(const Tensor& x) override { return x * w; }
  } model;
  OptimizerConfig oc;
  const auto opt = make_optimizer(oc, model.named_parameters());
  CheckpointState state;
  state.epoch = 4;
  state.config = {{"model", "tiny"}};
  const std::string path = dir / "last.safetensors";
  save_checkpoint(path, model, *opt, state);

  // Only the file itself: no temporary left behind.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  CHECK(names == std::vector<std::string>{"last.safetensors"});
  const std::string good = read_file(path);
  const Checkpoint loaded = load_checkpoint(path);
  CHECK(loaded.state.epoch == 4);
  CHECK(loaded.model.count("w") == 1);
  CHECK(loaded.optimizer.count("optimizer.w.momentum_buffer") == 1);

  state.epoch = 5;
  SECTION("the temporary file cannot be created: the old checkpoint is untouched") {
    fs::create_directory(path + ".tmp");  // blocks the temporary file
    CHECK_THROWS_WITH(save_checkpoint(path, model, *opt, state),
                      Catch::Contains(path) && Catch::Contains("previous file, if any, is intact"));
    CHECK(read_file(path) == good);
  }
  SECTION("the rename fails: the temporary file is removed") {
    const std::string blocked = dir / "blocked.safetensors";
    fs::create_directories(fs::path(blocked) / "occupied");  // a non-empty directory where the file should go
    CHECK_THROWS_WITH(save_checkpoint(blocked, model, *opt, state), Catch::Contains(blocked));
    CHECK_FALSE(fs::exists(blocked + ".tmp"));
    CHECK(read_file(path) == good);
  }
  SECTION("a folder that does not exist") {
    CHECK_THROWS_WITH(save_checkpoint(dir / "missing/last.safetensors", model, *opt, state),
                      Catch::Contains("missing/last.safetensors"));
  }
  CHECK_THROWS_WITH(load_checkpoint(dir / "nothing.safetensors"), Catch::Contains("nothing.safetensors"));
}

TEST_CASE("a diverging run stops with a clear error and keeps the last good checkpoint", "[training]") {
  TempDir dir("nan");
  TrainConfig cfg = tiny_config(dir / "run", 3);
  cfg.optimizer.name = "sgd";
  cfg.optimizer.lr = 0.01;
  cfg.schedule.name = "constant";
  SECTION("in the first epoch: no checkpoint is written") {
    cfg.optimizer.lr = 1e30;
    try {
      train(cfg, quiet());
      FAIL("lr 1e30 did not diverge");
    } catch (const TrainingDiverged& e) {
      CHECK_THAT(e.what(), Catch::Contains("diverged") && Catch::Contains("epoch 1/3") && Catch::Contains("--lr") &&
                               Catch::Contains("no checkpoint"));
    }
    CHECK_FALSE(fs::exists(dir / "run/last.safetensors"));
  }
  SECTION("in a later epoch: last.safetensors still holds the previous epoch") {
    train(cfg, quiet(1));
    const std::string good = read_file(dir / "run/last.safetensors");
    cfg.optimizer.lr = 1e30;  // the same run, continued at a learning rate that explodes
    resolve_defaults(cfg);
    RunData data = load_run_data(cfg);
    Trainer trainer(cfg, std::move(data), quiet());
    trainer.restore(load_checkpoint(dir / "run/last.safetensors"));
    CHECK_THROWS_AS(trainer.run(), TrainingDiverged);
    CHECK(read_file(dir / "run/last.safetensors") == good);
    CHECK(read_lines(dir / "run/metrics.jsonl").size() == 1);
  }
}

TEST_CASE("on the CUDA device (emulated) a diverging run names the CPU's first bad batch", "[training][cuda]") {
  // On CUDA the losses stay on the device until the step log is read (at the epoch's end here:
  // the run is quiet), so the error comes later than on the CPU, which reads after every batch;
  // it must still name the first batch whose loss was not finite, and write no checkpoint.
  TempDir dir("nan-device");
  const auto diverge_on = [&](const std::string& device) {
    TrainConfig c = tiny_config(dir / device, 2);
    c.data.train_size = 192;  // 6 batches of 32
    c.optimizer.name = "sgd";
    // Beyond f32's range: the first step makes the weights infinite on both backends alike, and
    // every later batch's loss NaN (a merely huge rate overflows the logits at a batch that
    // depends on the backend's rounding).
    c.optimizer.lr = 1e39;
    c.schedule.name = "constant";
    resolve_defaults(c);
    c.device = device;  // after resolve_defaults, which refuses cuda without a real GPU
    fs::create_directories(c.out);
    RunData data = load_run_data(c);
    Trainer trainer(c, std::move(data), quiet());
    std::string message;
    try {
      trainer.run();
    } catch (const TrainingDiverged& e) {
      message = e.what();
    }
    CHECK_FALSE(fs::exists(fs::path(dir / device) / "last.safetensors"));
    return message;
  };
  const std::string on_cpu = diverge_on("cpu"), on_gpu = diverge_on("cuda");
  INFO("cpu: " << on_cpu << "\ncuda: " << on_gpu);
  const std::regex where(R"(at epoch 1/2, batch (\d+)/6 \(lr 1e\+39\))");
  std::smatch cpu_match, gpu_match;
  REQUIRE(std::regex_search(on_cpu, cpu_match, where));
  REQUIRE(std::regex_search(on_gpu, gpu_match, where));
  CHECK(gpu_match[1] == cpu_match[1]);
  CHECK(std::stoi(gpu_match[1]) < 6);  // later batches diverged too: the first one is named
  CHECK_THAT(on_gpu, Catch::Contains("training diverged") && Catch::Contains("no checkpoint"));
}

TEST_CASE("bad run settings are rejected before any work", "[training]") {
  TempDir dir("bad");
  TrainConfig cfg = tiny_config(dir / "run", 2);
  cfg.epochs = 0;
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("--epochs must be >= 1"));
  cfg = tiny_config(dir / "run", 2);
  cfg.model = "resnet1000";
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("unknown model 'resnet1000'") && Catch::Contains("wong_small"));
  cfg = tiny_config(dir / "run", 2);
  cfg.data.val_size = 0;
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("--val-size must be >= 1"));
  cfg = tiny_config(dir / "run", 2);
  cfg.schedule.name = "multistep";
  cfg.schedule.options.set("milestones", std::vector<double>{3});
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("milestone 3"));
  cfg = tiny_config(dir / "run", 2);
  cfg.data.dataset = "mnist";
  cfg.data.data_dir = dir / "nowhere";
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("nowhere"));
  CHECK_FALSE(fs::exists(dir / "run"));

  cfg = tiny_config(dir / "run", 1);
  train(cfg, quiet());
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("already holds a run") && Catch::Contains("--resume"));
  CHECK_THROWS_WITH(resume(dir / "elsewhere", quiet()), Catch::Contains("not a run directory"));
}

TEST_CASE("a --train-size larger than MNIST's training split is rejected", "[training]") {
  const std::string mnist = std::string(BULWARK_SHARED_DATA) + "/mnist";
  if (!fs::exists(mnist)) {
    WARN("skipped: no MNIST at " << mnist);
    return;
  }
  TempDir dir("mnist");
  TrainConfig cfg = tiny_config(dir / "run", 1);
  cfg.data.dataset = "mnist";
  cfg.data.data_dir = mnist;
  cfg.data.train_size = 59900;  // 60,000 minus the 200-sample hold-out leaves 59,800
  CHECK_THROWS_WITH(train(cfg, quiet()), Catch::Contains("--train-size 59900") && Catch::Contains("59800"));
}

TEST_CASE("the config round-trips through JSON, and a bad value names its key", "[training]") {
  TrainConfig c = tiny_config("runs/x", 7);
  c.data.crop_pad = 4;
  c.data.flip = true;
  c.input = {1, 28, 28, 10, {0.5}, {0.25}};
  c.schedule.name = "multistep";
  c.schedule.options.set("milestones", std::vector<double>{3, 5.5});
  c.optimizer.nesterov = true;
  c.seed = 1234567890123ull;
  resolve_schedule(c.schedule, c.epochs);  // a run's config.json is resolved: gamma included
  const auto j = to_json(c);
  CHECK(to_json(config_from_json(j)) == j);
  CHECK(j["schedule"]["milestones"] == nlohmann::json::array({3.0, 5.5}));

  auto bad = nlohmann::json::parse(j.dump());
  bad["optimizer"]["lr"] = "fast";
  CHECK_THROWS_WITH(config_from_json(bad), Catch::Contains("config key 'optimizer.lr'"));
  bad = nlohmann::json::parse(j.dump());
  bad["method"]["eps"] = "many";
  CHECK_THROWS_WITH(config_from_json(bad), Catch::Contains("config key 'method.eps'"));
  bad = nlohmann::json::parse(j.dump());
  bad["epochs"] = nlohmann::json::array();
  CHECK_THROWS_WITH(config_from_json(bad), Catch::Contains("config key 'epochs'"));
  // Keys left out keep their defaults.
  CHECK(config_from_json(nlohmann::json::object()).epochs == TrainConfig{}.epochs);
}

TEST_CASE("the trainer runs on the emulated CUDA device and matches the CPU", "[training][cuda]") {
  // Trainer is built directly because resolve_defaults refuses --device cuda without a real GPU.
  TempDir dir("device");
  auto run_on = [&](const std::string& device) {
    TrainConfig c = tiny_config(dir / device, 1);
    c.data.train_size = 192;
    c.data.val_size = 64;
    c.data.test_size = 64;
    c.batch_size = 64;
    c.eval_batch_size = 64;
    c.optimizer.name = "sgd";
    c.optimizer.lr = 0.05;
    c.robust_val_size = 32;
    c.robust_val_steps = 2;
    c.final_attack_size = 32;
    c.final_attack_steps = 2;
    resolve_defaults(c);
    c.device = device;
    fs::create_directories(c.out);
    Trainer trainer(c, load_run_data(c), quiet());
    const RunSummary s = trainer.run();
    const EpochMetrics m = metrics_from_json(nlohmann::json::parse(read_lines(fs::path(dir / device) / "metrics.jsonl").at(0)));
    return std::make_pair(s, m);
  };
  const auto [cpu_run, cpu_m] = run_on("cpu");
  const auto [cuda_run, cuda_m] = run_on("cuda");
  CHECK(cuda_run.complete);
  CHECK(cuda_m.train_loss == Approx(cpu_m.train_loss).epsilon(1e-4));
  CHECK(cuda_m.val_acc == Approx(cpu_m.val_acc).margin(1.5 / 64));
  CHECK(cuda_m.robust_val_acc >= 0);
  CHECK(cuda_m.robust_val_acc == Approx(cpu_m.robust_val_acc).margin(1.5 / 32));
  CHECK(cuda_run.test_acc == Approx(cpu_run.test_acc).margin(1.5 / 64));
  CHECK(cuda_run.test_robust_acc == Approx(cpu_run.test_robust_acc).margin(1.5 / 32));
  CHECK(cuda_run.test_robust_size == 32);
  // The checkpoint of the cuda run holds host copies that load into a CPU model.
  const Checkpoint ck = load_checkpoint((fs::path(dir / "cuda") / "last.safetensors").string());
  CHECK(ck.model.at("1.weight").device() == Device::cpu);
}

TEST_CASE("an optimizer step updates every parameter in one CUDA launch and matches the CPU", "[training][cuda]") {
  ModelConfig mc;
  mc.in_channels = 1;
  mc.height = mc.width = 8;
  for (const char* name : {"sgd", "adam"}) {
    INFO(name);
    OptimizerConfig oc;
    oc.name = name;
    oc.lr = 0.01;
    std::shared_ptr<Module> cpu_model = make_model("wong_small", mc), gpu_model = make_model("wong_small", mc);
    gpu_model->to(Device::cuda);
    auto cpu_opt = make_optimizer(oc, cpu_model->named_parameters());
    auto gpu_opt = make_optimizer(oc, gpu_model->named_parameters());
    Generator gen(3);
    const Tensor x = rand_uniform({4, 1, 8, 8}, 0, 1, gen);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 3, 5, 9}, {4});
    const std::string kernel = std::string(name) + "_step_multi_kernel";
    for (int step = 0; step < 2; ++step) {
      backward(cross_entropy((*cpu_model)(x), y));
      backward(cross_entropy((*gpu_model)(x.cuda()), y.cuda()));
      // The step under test gets the CPU's gradients on both sides: the two backends' gradients
      // differ in the last bits (how much depends on the BLAS kernels of the machine), and Adam
      // turns a last-bit difference of a gradient near 0 into a visible one of the update.
      {
        NoGradGuard no_grad;
        const NamedTensors cp = cpu_model->named_parameters(), gp = gpu_model->named_parameters();
        for (size_t i = 0; i < cp.size(); ++i) {
          Tensor g = gp[i].second.grad();
          g.copy_(cp[i].second.grad().to(Device::cuda));
        }
      }
      cpu_opt->step();
      const auto before = emu::launch_counts()[kernel].launches;
      gpu_opt->step();
      CHECK(emu::launch_counts()[kernel].launches == before + 1);  // 8 parameter tensors, one launch
      cpu_opt->zero_grad();
      gpu_opt->zero_grad();
    }
    const NamedTensors a = cpu_model->state_dict(), b = gpu_model->state_dict();
    for (size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].first);
      const std::vector<float> u = a[i].second.to_vector(), v = b[i].second.cpu().to_vector();
      for (size_t k = 0; k < u.size(); ++k) REQUIRE(v[k] == Approx(u[k]).margin(1e-6));
    }
  }
}

// ---- --precision tf32 | bf16 ----------------------------------------------------------------------

TEST_CASE("the CPU GEMM at TF32 or BF16 is the f32 GEMM of the rounded operands", "[training][precision]") {
  // The tensor cores' arithmetic, emulated: operands rounded, products exact, f32 sums. On the CPU
  // the rounded copies go through the same sgemm, so the result is bitwise that of the f32 GEMM
  // on operands rounded beforehand.
  Generator gen(3);
  const Tensor a = rand_uniform({37, 21}, -1.0, 1.0, gen), b = rand_uniform({21, 70}, -1.0, 1.0, gen);
  for (const std::string format : {"tf32", "bf16"}) {
    INFO(format);
    const auto round_all = [&](const Tensor& t) {
      std::vector<float> v = t.to_vector();
      for (float& x : v) x = format == "tf32" ? precision::round_tf32(x) : precision::round_bf16(x);
      return Tensor::from_vector(v, t.shape());
    };
    Tensor at_format;
    {
      const runtime::MathPrecisionScope scope(format);
      at_format = matmul(a, b);
    }
    CHECK(runtime::math_precision() == "fp32");  // the scope restored it
    CHECK(at_format.to_vector() == matmul(round_all(a), round_all(b)).to_vector());
    CHECK(at_format.to_vector() != matmul(a, b).to_vector());  // the rounding changed something
  }
}

TEST_CASE("a run at --precision bf16 learns, on the CPU and on the emulated CUDA device alike", "[training][precision][cuda]") {
  TempDir dir("bf16");
  TrainConfig c = tiny_config(dir / "run", 4);
  c.precision = "bf16";
  const RunSummary s = train(c, quiet());
  CHECK(s.test_acc > 0.5);  // 10 classes: chance is 0.1
  CHECK(nlohmann::json::parse(read_file(dir / "run/config.json"))["precision"] == "bf16");
  CHECK(runtime::math_precision() == "fp32");  // the run's setting ends with it

  // One epoch on each backend: the same rounding, only the order of the f32 sums differs.
  auto run_on = [&](const std::string& device) {
    TrainConfig d = tiny_config(dir / ("one-" + device), 1);
    d.precision = "bf16";
    d.data.train_size = 192, d.data.val_size = 64, d.data.test_size = 64;
    d.batch_size = 64, d.eval_batch_size = 64;
    d.robust_val_size = 0, d.final_attack_size = 0;
    resolve_defaults(d);
    d.device = device;
    fs::create_directories(d.out);
    Trainer trainer(d, load_run_data(d), quiet());
    trainer.run();
    return metrics_from_json(nlohmann::json::parse(read_lines(fs::path(d.out) / "metrics.jsonl").at(0)));
  };
  const EpochMetrics on_cpu = run_on("cpu"), on_cuda = run_on("cuda");
  CHECK(on_cuda.train_loss == Approx(on_cpu.train_loss).epsilon(1e-3));
  CHECK(on_cuda.val_acc == Approx(on_cpu.val_acc).margin(1.5 / 64));
}

TEST_CASE("certified methods refuse a rounded --precision", "[training][precision]") {
  TempDir dir("bf16-ibp");
  TrainConfig c = tiny_config(dir / "run", 1);
  c.precision = "bf16";
  c.method.name = "ibp";
  CHECK_THROWS_WITH(train(c, quiet()), Catch::Contains("--precision bf16 with --method ibp") &&
                                           Catch::Contains("need f32"));
  c.precision = "fp16";
  c.method.name = "standard";
  CHECK_THROWS_WITH(train(c, quiet()), Catch::Contains("fp16") && Catch::Contains("bf16"));
}
