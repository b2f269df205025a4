// training/schedule: AccelAT's rule on scripted accuracy sequences (where it decays, where it must
// not, the floor, the clean-accuracy fallback, resuming from its state), and the shapes of the
// comparison schedules cyclic-restart and range-test at known points; AccelAT's options through
// the run config JSON and `bulwark train`.
#include <catch2/catch.hpp>

#include "tests/test_util.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "training/cli.h"
#include "training/config.h"
#include "training/schedule.h"

using namespace bulwark::training;

namespace {

ScheduleConfig accelat_config() {
  ScheduleConfig cfg;
  cfg.name = "accelat";
  return cfg;
}

// An epoch whose robust validation accuracy is `robust`; the clean accuracy is set far from it so
// that a schedule reading the wrong field would behave differently.
EpochMetrics robust_epoch(double robust) {
  EpochMetrics m;
  m.robust_val_acc = robust;
  m.val_acc = 0.99;
  return m;
}

// Ends one epoch per accuracy; element n is the lr after epoch n + 1, i.e. what epoch n + 2 trains with.
std::vector<double> lrs_after_epochs(LrSchedule& schedule, const std::vector<double>& robust_accs) {
  std::vector<double> lrs;
  for (double a : robust_accs) {
    schedule.on_epoch_end(robust_epoch(a));
    lrs.push_back(schedule.lr(0));
  }
  return lrs;
}

// Accuracy that rises by `step` per epoch up to epoch `rise_epochs` (1-based) and stays there.
std::vector<double> rise_then_plateau(double start, double step, int rise_epochs, int epochs) {
  std::vector<double> accs;
  for (int n = 1; n <= epochs; ++n) accs.push_back(start + step * std::min(n, rise_epochs));
  return accs;
}

// The 1-based epochs after which the lr was multiplied by the factor.
std::vector<int> decay_epochs(double lr0, const std::vector<double>& lrs) {
  std::vector<int> epochs;
  double previous = lr0;
  for (size_t i = 0; i < lrs.size(); ++i) {
    if (lrs[i] < previous) epochs.push_back(static_cast<int>(i) + 1);
    previous = lrs[i];
  }
  return epochs;
}

// `bulwark <args>` in this process; returns the exit code.
int bulwark_cli(std::vector<std::string> args) {
  args.insert(args.begin(), "bulwark");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return run_cli(static_cast<int>(argv.size()), argv.data());
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("AccelAT decays the LR by its factor at the epoch its rule predicts on a plateau", "[schedule]") {
  const double lr0 = 1e-3;
  const auto schedule = make_schedule(accelat_config(), lr0, 100);
  CHECK(schedule->lr(0) == lr0);
  CHECK(schedule->epoch_report().empty());

  // Rising by d = 0.02 through epoch k = 10, flat after. Once the window (w = 5) is full, the mean
  // moves by (acc[n] - acc[n-w]) / w, which at epoch k + j (0 < j < w) is d (w - j) / w:
  // 0.016, 0.012, 0.008, 0.004. The first gain under the threshold 0.005 is at j = 4: epoch 14.
  const int k = 10;
  const auto lrs = lrs_after_epochs(*schedule, rise_then_plateau(0.3, 0.02, k, 14));
  for (int n = 1; n < 14; ++n) CHECK(lrs[n - 1] == lr0);
  CHECK(lrs[13] == lr0 * 0.8);
  const auto report = schedule->epoch_report();
  CHECK(report.at("accelat_decays") == 1);
  CHECK(report.at("accelat_quiet") == 1);
  CHECK(report.at("accelat_mean") == Approx(0.3 + 0.02 * k));
}

TEST_CASE("AccelAT waits out its cool-down after a decay", "[schedule]") {
  const double lr0 = 1e-3;
  // The plateau of the test above goes on: after the decay at epoch 14 quiet restarts at 1 and
  // grows by one per epoch, so quiet > cooldown (5) holds again at epoch 14 + 5.
  const auto schedule = make_schedule(accelat_config(), lr0, 100);
  const auto lrs = lrs_after_epochs(*schedule, rise_then_plateau(0.3, 0.02, 10, 30));
  CHECK(decay_epochs(lr0, lrs) == std::vector<int>{14, 19, 24, 29});
  for (int n = 15; n <= 18; ++n) CHECK(lrs[n - 1] == lr0 * 0.8);
  CHECK(lrs[18] == lr0 * 0.8 * 0.8);

  // The cool-down is an option: with 2 the plateau decays every second epoch. The first decay does
  // not move, since quiet starts at the cool-down and the window rule alone holds it to epoch 14.
  ScheduleConfig short_cooldown = accelat_config();
  short_cooldown.options.set("accelat_cooldown", 2);
  const auto fast = make_schedule(short_cooldown, lr0, 100);
  CHECK(decay_epochs(lr0, lrs_after_epochs(*fast, rise_then_plateau(0.3, 0.02, 10, 20))) ==
        std::vector<int>{14, 16, 18, 20});

  // quiet starts at the cool-down, not at 0: a long cool-down (10) does not delay the first decay
  // on a flat accuracy past epoch window + 2 = 7, only the second one, to 7 + 10.
  ScheduleConfig long_cooldown = accelat_config();
  long_cooldown.options.set("accelat_cooldown", 10);
  const auto slow = make_schedule(long_cooldown, lr0, 100);
  CHECK(decay_epochs(lr0, lrs_after_epochs(*slow, std::vector<double>(20, 0.4))) == std::vector<int>{7, 17});
}

TEST_CASE("AccelAT keeps the LR while accuracy rises faster than the threshold", "[schedule]") {
  const double lr0 = 0.05;
  const auto rising = make_schedule(accelat_config(), lr0, 100);
  for (double lr : lrs_after_epochs(*rising, rise_then_plateau(0.1, 0.01, 60, 60))) CHECK(lr == lr0);
  CHECK(rising->epoch_report().at("accelat_decays") == 0);

  // A rise just under the threshold (0.004 < 0.005 per epoch) decays as early as the rule allows:
  // len(means) > window first holds after epoch window + 2 = 7.
  const auto slow = make_schedule(accelat_config(), lr0, 100);
  CHECK(decay_epochs(lr0, lrs_after_epochs(*slow, rise_then_plateau(0.1, 0.004, 60, 12))) == std::vector<int>{7, 12});

  // The threshold is an option: 0.003 lets the same slow rise through.
  ScheduleConfig lenient = accelat_config();
  lenient.options.set("accelat_threshold", 0.003);
  const auto patient = make_schedule(lenient, lr0, 100);
  CHECK(decay_epochs(lr0, lrs_after_epochs(*patient, rise_then_plateau(0.1, 0.004, 60, 12))).empty());
}

TEST_CASE("AccelAT never goes below its floor", "[schedule]") {
  const double lr0 = 1e-5;
  // Flat accuracy: decays at epochs 7, 12, 17, ...; 1e-5 * 0.8^11 < 1e-6, so the floor takes over.
  const std::vector<double> flat(100, 0.4);
  const auto schedule = make_schedule(accelat_config(), lr0, 100);
  const auto lrs = lrs_after_epochs(*schedule, flat);
  double previous = lr0;
  for (double lr : lrs) {
    CHECK(lr >= 1e-6);
    CHECK(lr <= previous);
    previous = lr;
  }
  CHECK(lrs.back() == 1e-6);
  CHECK(lrs[6] == lr0 * 0.8);
  // The rule keeps deciding to decay on the plateau; the floor absorbs it.
  CHECK(schedule->epoch_report().at("accelat_decays") == Approx(std::floor((100 - 7) / 5.0) + 1));

  ScheduleConfig higher = accelat_config();
  higher.options.set("accelat_floor", 5e-6);
  const auto floored = make_schedule(higher, lr0, 100);
  CHECK(lrs_after_epochs(*floored, flat).back() == 5e-6);
}

TEST_CASE("AccelAT reads the clean accuracy when the robust one was not measured", "[schedule]") {
  const double lr0 = 1e-3;
  const auto accs = rise_then_plateau(0.3, 0.02, 10, 25);
  const auto from_robust = make_schedule(accelat_config(), lr0, 100);
  const auto from_clean = make_schedule(accelat_config(), lr0, 100);
  const auto clean_plateau = make_schedule(accelat_config(), lr0, 100);
  std::vector<double> robust_lrs, clean_lrs, plateau_lrs;
  for (double a : accs) {
    EpochMetrics robust = robust_epoch(a);
    EpochMetrics clean;  // robust_val_acc stays -1: not measured
    clean.val_acc = a;
    EpochMetrics flat_clean;
    flat_clean.val_acc = 0.5;
    from_robust->on_epoch_end(robust);
    from_clean->on_epoch_end(clean);
    clean_plateau->on_epoch_end(flat_clean);
    robust_lrs.push_back(from_robust->lr(0));
    clean_lrs.push_back(from_clean->lr(0));
    plateau_lrs.push_back(clean_plateau->lr(0));
  }
  CHECK(clean_lrs == robust_lrs);
  CHECK(decay_epochs(lr0, clean_lrs) == std::vector<int>{14, 19, 24});
  CHECK(decay_epochs(lr0, plateau_lrs) == std::vector<int>{7, 12, 17, 22});
}

TEST_CASE("AccelAT follows the accuracy --accelat-signal names: robust, verified or clean", "[schedule]") {
  const double lr0 = 1e-3;
  const auto accs = rise_then_plateau(0.3, 0.02, 10, 25);
  const auto with_signal = [&](const std::string& signal) {
    ScheduleConfig cfg = accelat_config();
    cfg.options.set("accelat_signal", signal);
    resolve_schedule(cfg, 100);
    return make_schedule(cfg, lr0, 100);
  };
  const auto robust = make_schedule(accelat_config(), lr0, 100);
  const auto verified = with_signal("verified"), clean = with_signal("clean");
  std::vector<double> robust_lrs, verified_lrs, clean_lrs;
  for (double a : accs) {
    EpochMetrics m;
    m.robust_val_acc = a;  // the rule fires on this series
    m.val_acc = 0.5;       // flat: a plateau from the start
    m.extra["verified_val_acc"] = a;
    robust->on_epoch_end(m);
    verified->on_epoch_end(m);
    clean->on_epoch_end(m);
    robust_lrs.push_back(robust->lr(0));
    verified_lrs.push_back(verified->lr(0));
    clean_lrs.push_back(clean->lr(0));
  }
  CHECK(verified_lrs == robust_lrs);
  CHECK(decay_epochs(lr0, verified_lrs) == std::vector<int>{14, 19, 24});
  CHECK(decay_epochs(lr0, clean_lrs) == std::vector<int>{7, 12, 17, 22});
  EpochMetrics no_verified;
  no_verified.robust_val_acc = 0.4;
  CHECK_THROWS_WITH(with_signal("verified")->on_epoch_end(no_verified), Catch::Contains("needs a certified method"));
}

TEST_CASE("AccelAT resumed from its saved state continues bit for bit", "[schedule]") {
  // Accuracies as a validation subset of 113 samples gives them (k / 113, not short in binary):
  // a noisy saturating rise, so that decays land both before and after the save.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> noise(-2, 2);
  std::vector<double> accs;
  for (int n = 1; n <= 40; ++n) {
    const double expected = 113 * (0.2 + 0.5 * (1 - std::exp(-n / 3.0)));
    accs.push_back(std::round(expected + noise(rng)) / 113);
  }
  const int saved_after = 15;
  const double lr0 = 0.0123;

  const auto straight = make_schedule(accelat_config(), lr0, 40);
  const auto first_part = make_schedule(accelat_config(), lr0, 40);
  std::vector<double> straight_lrs = lrs_after_epochs(*straight, accs);
  lrs_after_epochs(*first_part, std::vector<double>(accs.begin(), accs.begin() + saved_after));

  // Through text, as the checkpoint stores it: every double must come back with the same bits.
  const nlohmann::json saved = first_part->state();
  const auto reparsed = nlohmann::json::parse(saved.dump());
  CHECK(reparsed == saved);
  const auto resumed = make_schedule(accelat_config(), lr0, 40);
  resumed->load_state(reparsed);
  CHECK(resumed->lr(0) == first_part->lr(0));
  CHECK(resumed->epoch_report() == first_part->epoch_report());

  const auto resumed_lrs = lrs_after_epochs(*resumed, std::vector<double>(accs.begin() + saved_after, accs.end()));
  CHECK(resumed_lrs == std::vector<double>(straight_lrs.begin() + saved_after, straight_lrs.end()));
  CHECK(resumed->state() == straight->state());
  CHECK(resumed->epoch_report() == straight->epoch_report());

  // The sequence exercises the state: decays before the save and after it.
  const auto decays = decay_epochs(lr0, straight_lrs);
  REQUIRE_FALSE(decays.empty());
  CHECK(decays.front() <= saved_after);
  CHECK(decays.back() > saved_after);
}

TEST_CASE("AccelAT state from another schedule is refused", "[schedule]") {
  const auto schedule = make_schedule(accelat_config(), 0.1, 10);
  CHECK_THROWS_WITH(schedule->load_state(nlohmann::json::object()), Catch::Contains("another --schedule"));
  auto state = schedule->state();
  state["means"] = "none";
  CHECK_THROWS_WITH(schedule->load_state(state), Catch::Contains("not AccelAT's"));
}

TEST_CASE("bad AccelAT options are rejected with their flag", "[schedule]") {
  const auto rejects = [](void (*edit)(ScheduleConfig&), const std::string& flag) {
    ScheduleConfig cfg = accelat_config();
    edit(cfg);
    CHECK_THROWS_WITH(make_schedule(cfg, 0.1, 10), Catch::Contains(flag));
  };
  rejects([](ScheduleConfig& c) { c.options.set("accelat_window", 0); }, "--accelat-window");
  rejects([](ScheduleConfig& c) { c.options.set("accelat_threshold", std::numeric_limits<double>::quiet_NaN()); },
          "--accelat-threshold");
  rejects([](ScheduleConfig& c) { c.options.set("accelat_factor", 1.25); }, "--accelat-factor");
  rejects([](ScheduleConfig& c) { c.options.set("accelat_factor", 0); }, "--accelat-factor");
  rejects([](ScheduleConfig& c) { c.options.set("accelat_cooldown", -1); }, "--accelat-cooldown");
  rejects([](ScheduleConfig& c) { c.options.set("accelat_floor", -1e-6); }, "--accelat-floor");
}

TEST_CASE("cyclic-restart decays linearly from lr0 to 0 in each fifth of training", "[schedule]") {
  const double lr0 = 0.1;
  ScheduleConfig cfg;
  cfg.name = "cyclic-restart";
  const auto ten = make_schedule(cfg, lr0, 10);  // cycles of 2 epochs
  CHECK(ten->lr(0) == Approx(lr0));
  CHECK(ten->lr(1) == Approx(lr0 / 2));
  CHECK(ten->lr(1.5) == Approx(lr0 / 4));
  CHECK(ten->lr(2 - 1e-9) == Approx(0).margin(1e-9));
  CHECK(ten->lr(2) == Approx(lr0));
  CHECK(ten->lr(5) == Approx(lr0 / 2));
  CHECK(ten->lr(8) == Approx(lr0));
  CHECK(ten->lr(9.5) == Approx(lr0 / 4));
  CHECK(ten->lr(10) == Approx(0).margin(1e-15));
  CHECK(ten->state() == nlohmann::json::object());

  // T = 7: cycles of 1.4 epochs, whose boundaries are not exact in binary, still restart at lr0.
  const auto seven = make_schedule(cfg, lr0, 7);
  for (int cycle = 0; cycle < 5; ++cycle) {
    const double start = 7.0 * cycle / 5;
    CHECK(seven->lr(start) == Approx(lr0));
    CHECK(seven->lr(start + 0.7) == Approx(lr0 / 2));
    CHECK(seven->lr(start + 1.4 - 1e-9) == Approx(0).margin(1e-8));
  }
}

TEST_CASE("range-test grows the LR tenfold every tenth of training from 1e-8, whatever lr0", "[schedule]") {
  ScheduleConfig cfg;
  cfg.name = "range-test";
  const auto ten = make_schedule(cfg, 0.1, 10);
  const auto other_lr0 = make_schedule(cfg, 3.0, 10);
  CHECK(ten->lr(0) == Approx(1e-8));
  CHECK(ten->lr(1) == Approx(1e-7));
  CHECK(ten->lr(5) == Approx(1e-3));
  CHECK(ten->lr(8.5) == Approx(1e-8 * std::pow(10.0, 8.5)));
  CHECK(ten->lr(10) == Approx(100));
  for (double t : {0.0, 2.5, 7.0, 10.0}) CHECK(other_lr0->lr(t) == ten->lr(t));

  const auto twenty = make_schedule(cfg, 0.1, 20);  // decades of 2 epochs
  CHECK(twenty->lr(2) == Approx(1e-7));
  CHECK(twenty->lr(13) / twenty->lr(11) == Approx(10));
}

TEST_CASE("AccelAT's options round-trip through the run config JSON", "[schedule]") {
  TrainConfig c;
  c.schedule.name = "accelat";
  c.schedule.options.set("accelat_window", 3);
  c.schedule.options.set("accelat_threshold", 0.0125);
  c.schedule.options.set("accelat_factor", 0.5);
  c.schedule.options.set("accelat_cooldown", 7);
  c.schedule.options.set("accelat_floor", 2.5e-7);
  const auto j = to_json(c);
  CHECK(j["schedule"]["accelat_window"] == 3);
  CHECK(j["schedule"]["accelat_floor"] == 2.5e-7);
  const ScheduleConfig back = config_from_json(nlohmann::json::parse(j.dump())).schedule;
  CHECK(back.options.integer("accelat_window") == 3);
  CHECK(back.options.real("accelat_threshold") == 0.0125);
  CHECK(back.options.real("accelat_factor") == 0.5);
  CHECK(back.options.integer("accelat_cooldown") == 7);
  CHECK(back.options.real("accelat_floor") == 2.5e-7);
}

TEST_CASE("bulwark train --schedule accelat takes its options and drives the run's LR", "[schedule]") {
  bulwark::testing::TempDir dir("accelat-cli");
  // window 1, cool-down 0 and a threshold no accuracy change reaches: the rule decays after every
  // epoch from epoch window + 2 = 3 on, so epochs 1-3 train at lr0 and epoch 4 at lr0 / 2.
  const int code = bulwark_cli({"train", "--dataset", "synthetic", "--model", "mlp", "--train-size", "200",
                                "--val-size", "50", "--test-size", "50", "--epochs", "4", "--batch-size", "50",
                                "--optimizer", "sgd", "--lr", "0.02", "--threads", "1", "--quiet", "--schedule",
                                "accelat", "--accelat-window", "1", "--accelat-threshold", "2", "--accelat-factor",
                                "0.5", "--accelat-cooldown", "0", "--accelat-floor", "1e-4", "--out", dir / "run"});
  REQUIRE(code == 0);
  const auto schedule = read_json(dir / "run/config.json")["schedule"];
  CHECK(schedule["name"] == "accelat");
  CHECK(schedule["accelat_window"] == 1);
  CHECK(schedule["accelat_threshold"] == 2.0);
  CHECK(schedule["accelat_factor"] == 0.5);
  CHECK(schedule["accelat_cooldown"] == 0);
  CHECK(schedule["accelat_floor"] == 1e-4);
  std::ifstream metrics(dir / "run/metrics.jsonl");
  std::vector<double> lrs;
  for (std::string line; std::getline(metrics, line);) lrs.push_back(nlohmann::json::parse(line)["lr"].get<double>());
  CHECK(lrs == std::vector<double>{0.02, 0.02, 0.02, 0.01});

  CHECK(bulwark_cli({"train", "--schedule", "accelat", "--accelat-factor", "2", "--out", dir / "bad"}) == 2);
  CHECK(bulwark_cli({"train", "--schedule", "accelat", "--accelat-window", "0", "--out", dir / "bad"}) == 2);
}
