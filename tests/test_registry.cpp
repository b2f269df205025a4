// The option registry (engine/options.h, robust/registry.h): a method added from a test file
// alone trains through `bulwark train` and shows its options in --help; defaults that depend on
// other options are resolved after all are read and say which rule chose them; bad values and
// options of another method are refused naming the option, its range and the method; and run
// configs written before the registry still read, validate and build.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/options.h"
#include "robust/method_steps.h"
#include "robust/registry.h"
#include "tests/test_util.h"
#include "training/cli.h"
#include "training/config.h"
#include "training/schedule.h"

using namespace bulwark;
using namespace bulwark::robust;
namespace fs = std::filesystem;

namespace {

std::atomic<int64_t> toy_batches{0};

// A method that exists only in this file: it trains on x + noise_scale * eps * sign(noise), a
// random corner-ish point of the ball, with one step per batch.
class ToyNoiseTraining final : public Method {
 public:
  ToyNoiseTraining(double eps, double scale) : eps_(eps), scale_(scale) {}
  std::string name() const override { return "toy-noise"; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    ++toy_batches;
    train_on(ctx, uniform_start(x, scale_ * eps_ * ctx.eps_scale, ctx.gen), y, false);
  }
  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["noise_scale"] = scale_;
    return EpochVerdict::keep_going;
  }

 private:
  double eps_, scale_;
};

MethodInfo toy_method() {
  MethodInfo m;
  m.name = "toy-noise";
  m.title = "toy noise training (test only)";
  m.summary = "Trains on uniform noise of noise_scale * eps around each input.";
  // Not one of the attack-based methods the [methods] tests hold to the eps-ball's edge, should they
  // run in this process after it registered.
  m.adversarial = false;
  m.options = {eps_option(), eps_ramp_option(),
               Option::make("noise_scale", "--toy-noise-scale", OptionType::real, "toy-noise: the noise, in eps")
                   .above(0)
                   .at_most(1)
                   .default_by(
                       [](const DefaultScope& s) -> DefaultChoice {
                         return {s.mnist_like ? 0.25 : 0.5, "half the ball on CIFAR-like input"};
                       },
                       "0.5 (0.25 on MNIST-like input)")};
  m.make = [](const OptionValues& o) {
    return std::make_unique<ToyNoiseTraining>(o.real("eps"), o.real("noise_scale"));
  };
  return m;
}

void register_toy() {
  if (!method_registry().find("toy-noise")) method_registry().add(toy_method());
}

int cli(std::vector<std::string> args) {
  args.insert(args.begin(), "bulwark");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return training::run_cli(static_cast<int>(argv.size()), argv.data());
}

// What `bulwark <args>` prints on std::cout (CLI11 writes --help there).
std::string cli_stdout(const std::vector<std::string>& args, int& code) {
  std::stringstream captured;
  std::streambuf* old = std::cout.rdbuf(captured.rdbuf());
  code = cli(args);
  std::cout.rdbuf(old);
  return captured.str();
}

MethodConfig resolve(const std::string& name, const std::string& dataset, const nlohmann::ordered_json& given,
                     std::vector<std::string>* notes = nullptr) {
  MethodConfig c;
  c.name = name;
  for (const auto& [key, value] : given.items()) c.options.set(key, value);
  const bool mnist_like = dataset == "mnist" || dataset == "fashion-mnist";
  auto n = resolve_method(c, DefaultScope{c.options, dataset, mnist_like, 10});
  if (notes) *notes = n;
  return c;
}

}  // namespace

TEST_CASE("a method registered from a test file trains through bulwark train and shows its options", "[registry]") {
  register_toy();
  int code = -1;
  const std::string help = cli_stdout({"train", "--help"}, code);
  CHECK(code == 0);
  CHECK(help.find("toy-noise") != std::string::npos);
  CHECK(help.find("--toy-noise-scale") != std::string::npos);
  CHECK(help.find("0.5 (0.25 on MNIST-like input)") != std::string::npos);

  testing::TempDir dir("toy");
  toy_batches = 0;
  code = cli({"train",     "--method",    "toy-noise", "--toy-noise-scale", "0.75", "--dataset",
              "synthetic", "--model",     "mlp",       "--train-size",      "96",   "--val-size",
              "32",        "--test-size", "32",        "--robust-val-size", "16",   "--final-attack-size",
              "16",        "--epochs",    "2",         "--batch-size",      "32",   "--threads",
              "1",         "--quiet",     "--out",     dir / "run"});
  REQUIRE(code == 0);
  // 96 samples in batches of 32, 2 epochs, and the 3 steps of the memory estimate (training/memory.h)
  CHECK(toy_batches == 6 + 3);
  std::ifstream in(dir / "run/config.json");
  const auto config = nlohmann::json::parse(in);
  CHECK(config["method"]["name"] == "toy-noise");
  CHECK(config["method"]["noise_scale"] == 0.75);
  CHECK(config["method"]["eps"] == Approx(8.0 / 255));
  std::ifstream metrics(dir / "run/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line); ++lines)
    CHECK(nlohmann::json::parse(line)["noise_scale"] == 0.75);
  CHECK(lines == 2);

  // Resume reads the toy method's block back from the checkpoint.
  CHECK(cli({"train", "--resume", dir / "run", "--quiet"}) == 0);  // already complete: nothing to do
  // Its option is refused for another method, and out of range for itself.
  CHECK(cli({"train", "--method", "pgd", "--toy-noise-scale", "0.5", "--out", dir / "bad"}) == 2);
  CHECK(cli({"train", "--method", "toy-noise", "--toy-noise-scale", "2", "--out", dir / "bad"}) == 2);
  CHECK_FALSE(fs::exists(dir / "bad"));
}

TEST_CASE("PGD-AT's step: the paper's in the paper's setting, else 2.5 eps / k, and the line names the rule",
          "[registry]") {
  std::vector<std::string> notes;
  const auto alpha_note = [&] {
    for (const auto& n : notes)
      if (n.find("--alpha") != std::string::npos) return n;
    return std::string();
  };
  MethodConfig c = resolve("pgd", "mnist", {{"eps", 0.3}}, &notes);
  CHECK(c.options.integer("steps") == 40);
  CHECK(c.options.real("alpha") == 0.01);
  CHECK(alpha_note().find("Madry et al.'s MNIST step") != std::string::npos);

  c = resolve("pgd", "cifar10", {{"eps", 8.0 / 255}}, &notes);
  CHECK(c.options.integer("steps") == 7);
  CHECK(c.options.real("alpha") == 2.0 / 255);
  CHECK(alpha_note().find("CIFAR-10 step 2/255") != std::string::npos);

  // Fashion-MNIST at 0.1 with k = 7 is no paper's setting: 7 steps of 2.5 * 0.1 / 7 cross the ball
  // 2.5 times (the old default, eps / 30, travelled 0.023 of it).
  c = resolve("pgd", "fashion-mnist", {{"steps", 7}}, &notes);
  CHECK(c.options.real("eps") == 0.1);
  CHECK(c.options.real("alpha") == Approx(2.5 * 0.1 / 7));
  CHECK(alpha_note().find("2.5 eps / k") != std::string::npos);
  // MNIST at 0.3 with k = 10 either.
  c = resolve("pgd", "mnist", {{"steps", 10}}, &notes);
  CHECK(c.options.real("alpha") == Approx(0.075));
  // A given step is kept, and no rule line is printed for it.
  c = resolve("pgd", "mnist", {{"steps", 10}, {"alpha", 0.02}}, &notes);
  CHECK(c.options.real("alpha") == 0.02);
  CHECK(alpha_note().empty());

  // The other methods' rules are multiples of eps.
  CHECK(resolve("fgsm-rs", "fashion-mnist", {}).options.real("alpha") == Approx(0.125));
  CHECK(resolve("free", "cifar10", {}).options.real("alpha") == Approx(8.0 / 255));
  CHECK(resolve("mplus-pgd", "cifar10", {}).options.real("alpha") == Approx(2.0 / 255));
  CHECK(resolve("mplus-deat", "cifar10", {}).options.integer("r_max") == 8);
  CHECK(resolve("deat-d", "cifar10", {}).options.integer("r_max") == 5);
}

TEST_CASE("bad method options are refused naming the option, its range and the method", "[registry]") {
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  std::string m = message([] { resolve("pgd", "cifar10", {{"steps", 0}}); });
  CHECK(m.find("--steps must be in [1, 10000]") != std::string::npos);
  CHECK(m.find("method 'pgd'") != std::string::npos);
  m = message([] { resolve("mplus-deat", "cifar10", {{"gamma", 0.5}}); });
  CHECK(m.find("--gamma-mplus must be >= 1") != std::string::npos);
  m = message([] { resolve("fgsm-rs", "cifar10", {{"guard_drop", 1.5}}); });
  CHECK(m.find("--guard-drop must be in (0, 1]") != std::string::npos);
  m = message([] {
    MethodConfig c = resolve("pgd", "cifar10", {});
    c.options.set("replays", 3);
    validate(c);
  });
  CHECK(m.find("'replays' is not an option of method 'pgd'") != std::string::npos);
  m = message([] { method_registry().at("madry"); });
  CHECK(m.find("unknown method 'madry'") != std::string::npos);
  CHECK(m.find("mplus-deat") != std::string::npos);
  // A registry refuses a second method of one name, and a flag reused with another meaning.
  MethodInfo twin = method_registry().at("pgd");
  CHECK_THROWS_AS(method_registry().add(twin), std::logic_error);
  twin.name = "pgd-clash";
  twin.options.push_back(Option::make("other", "--steps", OptionType::real, "clashes with pgd's --steps"));
  CHECK_THROWS_AS(method_registry().add(twin), std::logic_error);
}

TEST_CASE("every results run config written before the registry reads, validates and builds", "[registry]") {
  // docs/results/runs holds the config.json of 122 runs written by the single-struct config:
  // each method block carried every method's fields, each schedule block every schedule's.
  const fs::path runs = fs::path(BULWARK_SOURCE_DIR) / "docs/results/runs";
  REQUIRE(fs::exists(runs));
  int configs = 0;
  for (const auto& entry : fs::recursive_directory_iterator(runs)) {
    if (entry.path().filename() != "config.json") continue;
    INFO(entry.path().string());
    std::ifstream in(entry.path());
    const auto j = nlohmann::json::parse(in);
    const training::TrainConfig c = training::config_from_json(j);
    CHECK_NOTHROW(training::validate(c));
    CHECK_NOTHROW(make_method(c.method));
    CHECK_NOTHROW(training::make_schedule(c.schedule, c.optimizer.lr, c.epochs));
    // The values that were used are the values read; an option added since takes its default.
    const MethodInfo& info = method_registry().at(c.method.name);
    for (const auto& [key, value] : c.method.options.json().items()) {
      INFO(key);
      if (j["method"].contains(key))
        CHECK(j["method"][key] == value);
      else
        CHECK(std::find_if(info.options.begin(), info.options.end(), [&](const Option& o) {
                return o.key == key && o.fixed == value;
              }) != info.options.end());
    }
    CHECK(c.method.eps() == j["method"]["eps"].get<double>());
    ++configs;
  }
  CHECK(configs >= 100);
}

TEST_CASE("option values parse from the command line by type and print back", "[registry]") {
  const Option radius = Option::make("eps", "--eps", OptionType::radius, "");
  CHECK(parse_option_text(radius, "8/255") == 8.0 / 255);
  CHECK_THROWS_WITH(parse_option_text(radius, "2"), Catch::Contains("--eps") && Catch::Contains("outside [0, 1]"));
  const Option k = Option::make("steps", "--steps", OptionType::integer, "").at_least(1);
  CHECK(parse_option_text(k, "12") == 12);
  CHECK_THROWS_WITH(parse_option_text(k, "1.5"), Catch::Contains("--steps") && Catch::Contains("whole number"));
  const Option flag = Option::make("guard", "--guard", OptionType::flag, "");
  CHECK(parse_option_text(flag, "") == true);
  CHECK(parse_option_text(flag, "false") == false);
  CHECK_THROWS(parse_option_text(flag, "maybe"));
  const Option list = Option::make("milestones", "--milestones", OptionType::reals, "").above(0);
  CHECK(parse_option_text(list, "25,40.5") == nlohmann::ordered_json::array({25.0, 40.5}));
  CHECK_THROWS_WITH(check_option_value(list, nlohmann::ordered_json::array({3.0, -1.0}), "schedule 'multistep'"),
                    Catch::Contains("--milestones") && Catch::Contains("> 0") && Catch::Contains("multistep"));
  CHECK(k.range_text() == ">= 1");
  CHECK(Option::make("p", "--p", OptionType::real, "").above(0).below(1).range_text() == "(0, 1)");
}
