// A guard rail for refactors of the method and option plumbing: each of the eight training
// methods trains 2 epochs on 1,024 synthetic images through the `bulwark train` binary (one
// thread, so the run is bitwise repeatable on a machine) and its metrics.jsonl and final test
// accuracies must equal the values stored in tests/fixtures/golden_methods/<method>.json.
// The schedule is named (--schedule accelat, the default when the values were recorded) so the
// default job can change without moving them. Timing fields (seconds, cpu_seconds, images_per_s) are not compared; on another kind of CPU
// the comparison is within cross-machine tolerances (same_number below).
//
// The stored values were written by this same test before the option registry replaced the
// hand-written method plumbing, and passed unchanged after it; they were recorded again once,
// when the CPU GEMM's blocks stopped following the thread count (standard, pgd and free moved by
// float noise: 1-4% in G and the accuracies). A change that alters what a method computes fails here. To
// regenerate them on purpose (and say why in the commit): BULWARK_UPDATE_GOLDEN=1 ctest -R golden.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "tests/test_util.h"

namespace fs = std::filesystem;

extern "C" char* openblas_get_corename();
using nlohmann::json;

namespace {

const std::set<std::string> kTimingFields{"seconds", "cpu_seconds", "images_per_s"};
const char* kSummaryFields[] = {"test_acc",   "test_loss",        "test_robust_acc", "best_val_acc",
                                "best_epoch", "stopped_at_epoch", "fwd_passes",      "bwd_passes"};

json read_json_lines(const fs::path& path) {
  json lines = json::array();
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// What decides the bits of a single-threaded run besides the code: OpenBLAS's kernel for this
// CPU and whether the compiler could use AVX-512 (-march=native).
std::string machine_fingerprint() {
  std::string f = openblas_get_corename();
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::stringstream ss;
  ss << cpuinfo.rdbuf();
  f += ss.str().find("avx512f") != std::string::npos ? " avx512" : " no-avx512";
  return f;
}

// On the kind of machine the values were recorded on the run is bitwise repeatable, and the
// values must match to the JSON round trip. Elsewhere OpenBLAS sums in another order, and two
// epochs (Free-AT's sign steps above all) turn that into a few percent: losses and magnitudes
// must then agree to 5% and accuracies to 3 points, which a change of what a method computes (a
// step size, a replay count, an RNG draw) still breaks. Counts (passes, epochs) are exact always.
bool same_number(const std::string& key, const json& a, const json& b, bool same_machine) {
  if (!a.is_number() || !b.is_number()) return a == b;
  if (a.is_number_integer() && b.is_number_integer()) return a == b;
  const double x = a.get<double>(), y = b.get<double>();
  if (same_machine) return std::abs(x - y) <= 1e-12 + 1e-9 * std::abs(y);
  const bool accuracy = key.ends_with("_acc") || key == "accelat_mean";
  return std::abs(x - y) <= (accuracy ? 0.03 : 1e-9 + 5e-2 * std::abs(y));
}

void check_object(const json& got, const json& want, const std::string& where, bool same_machine) {
  for (const auto& [key, value] : want.items()) {
    INFO(where << " field '" << key << "': got " << (got.contains(key) ? got[key].dump() : "(missing)") << ", stored "
               << value.dump());
    REQUIRE(got.contains(key));
    CHECK(same_number(key, got[key], value, same_machine));
  }
  for (const auto& [key, value] : got.items()) {
    INFO(where << " field '" << key << "' is new (not in the stored values)");
    CHECK((want.contains(key) || kTimingFields.count(key) > 0));
  }
}

void check_method(const std::string& method) {
  bulwark::testing::TempDir dir("golden-" + method);
  const std::string run_dir = dir / "run";
  const std::string cmd = std::string("'") + BULWARK_BINARY +
                          "' train --dataset synthetic --train-size 1024 --val-size 256 --test-size 256 "
                          "--robust-val-size 256 --final-attack-size 256 --epochs 2 --batch-size 128 "
                          "--optimizer adam --schedule accelat --threads 1 --seed 3 --quiet --method " +
                          method + " --out '" + run_dir + "' > '" + (dir / "log.txt") + "' 2>&1";
  const int status = std::system(cmd.c_str());
  std::ifstream log_in(dir / "log.txt");
  std::stringstream log;
  log << log_in.rdbuf();
  INFO("bulwark train --method " << method << " printed:\n" << log.str());
  REQUIRE(status == 0);

  json metrics = read_json_lines(fs::path(run_dir) / "metrics.jsonl");
  const json summary_all = read_json(fs::path(run_dir) / "summary.json");
  json summary = json::object();
  for (const char* key : kSummaryFields)
    if (summary_all.contains(key)) summary[key] = summary_all[key];
  for (json& line : metrics)
    for (const std::string& key : kTimingFields) line.erase(key);

  const fs::path fixture = fs::path(BULWARK_SOURCE_DIR) / "tests/fixtures/golden_methods" / (method + ".json");
  if (std::getenv("BULWARK_UPDATE_GOLDEN")) {
    fs::create_directories(fixture.parent_path());
    std::ofstream out(fixture);
    out << json{{"machine", machine_fingerprint()}, {"metrics", metrics}, {"summary", summary}}.dump(1) << "\n";
    WARN("wrote " << fixture.string());
    return;
  }
  INFO("stored values: " << fixture.string());
  REQUIRE(fs::exists(fixture));
  const json want = read_json(fixture);
  const bool same_machine = want.value("machine", "") == machine_fingerprint();
  if (!same_machine)
    WARN("recorded on '" << want.value("machine", "?") << "', running on '" << machine_fingerprint()
                         << "': comparing within cross-machine tolerances");
  REQUIRE(metrics.size() == want["metrics"].size());
  for (size_t e = 0; e < metrics.size(); ++e)
    check_object(metrics[e], want["metrics"][e], "metrics.jsonl line " + std::to_string(e + 1), same_machine);
  check_object(summary, want["summary"], "summary.json", same_machine);
}

}  // namespace

TEST_CASE("golden: standard training's metrics are unchanged", "[golden]") { check_method("standard"); }
TEST_CASE("golden: PGD-AT's metrics are unchanged", "[golden]") { check_method("pgd"); }
TEST_CASE("golden: FGSM-RS's metrics are unchanged", "[golden]") { check_method("fgsm-rs"); }
TEST_CASE("golden: Free-AT's metrics are unchanged", "[golden]") { check_method("free"); }
TEST_CASE("golden: M+DEAT's metrics are unchanged", "[golden]") { check_method("mplus-deat"); }
TEST_CASE("golden: M+PGD's metrics are unchanged", "[golden]") { check_method("mplus-pgd"); }
TEST_CASE("golden: DEAT-d's metrics are unchanged", "[golden]") { check_method("deat-d"); }
TEST_CASE("golden: DEAT-p's metrics are unchanged", "[golden]") { check_method("deat-p"); }
