// The `bulwark` executable (BULWARK_BINARY): exit codes and messages for bad options, the help
// text, and a tiny end-to-end train + eval on the synthetic data.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/safetensors.h"

namespace fs = std::filesystem;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

fs::path scratch_dir() {
  static int counter = 0;
  fs::path p = fs::temp_directory_path() / ("bulwark-cli-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs `bulwark <args>` with stdout and stderr captured in files of `dir` (and `env`, "VAR=value
// ...", in its environment).
Result run(const std::string& args, const fs::path& dir, const std::string& env = "") {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = (env.empty() ? "" : "env " + env + " ") + "'" + BULWARK_BINARY + "' " + args + " > '" +
                          out.string() + "' 2> '" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

struct Scratch {
  fs::path path = scratch_dir();
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

const char* kTinyTrain =
    "train --dataset synthetic --model mlp --train-size 300 --val-size 100 --test-size 100 --epochs 2 "
    "--batch-size 50 --optimizer adam --method standard --schedule cosine --threads 1 --quiet";

}  // namespace

TEST_CASE("bad options exit with code 2 and say what is wrong", "[cli]") {
  Scratch s;
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases{
      {"train --model nope", "unknown model 'nope'"},
      {"train --epochs -1", "--epochs must be >= 1, got -1"},
      {"train --epochs many", "--epochs"},
      {"train --device cuda", "--device cuda: no usable GPU"},
      {"train --dataset mnist --data-dir /nonexistent/mnist", "/nonexistent/mnist"},
      {"train --dataset imagenet", "unknown dataset 'imagenet'"},
      {"train --optimizer rmsprop", "unknown optimizer 'rmsprop'"},
      {"train --schedule warmup", "unknown schedule 'warmup'"},
      {"train --lr -0.1", "--lr must be > 0"},
      {"train --no-such-option", "--no-such-option"},
      {"train --method pgd --replays 3", "--replays is an option of free, not of --method pgd (which takes --eps, --steps"},
      {"train --method pgd --steps 0", "--steps must be in [1, 10000] (--method pgd), got 0"},
      {"train --method free --guard-drop 0.5", "--guard-drop is an option of fgsm-rs, not of --method free"},
      {"train --method mplus-deat --gamma-mplus 0.9", "--gamma-mplus must be >= 1 (--method mplus-deat), got 0.9"},
      {"train --schedule cosine --milestones 3", "--milestones is an option of multistep, not of --schedule cosine"},
      {"train --method pgd --eps 2", "--eps: '2' is not a perturbation size"},
      {"train --resume /nonexistent/run", "not a run directory"},
      {"train --resume /nonexistent/run --lr 0.1", "--lr cannot be combined with --resume"},
      {"eval", "--checkpoint"},
      {"eval --checkpoint /nonexistent/last.safetensors", "does not exist"},
      {"", "subcommand"},
  };
  for (const Case& c : cases) {
    INFO("bulwark " << c.args);
    const Result r = run(c.args, s.path);
    INFO("stderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK(r.err.find("bulwark: error:") != std::string::npos);
  }
}

TEST_CASE("bulwark train --help lists every option", "[cli]") {
  Scratch s;
  const Result r = run("train --help", s.path);
  CHECK(r.code == 0);
  for (const char* opt : {"--model", "--dataset", "--data-dir", "--train-size", "--val-size", "--test-size",
                          "--data-seed", "--crop-pad", "--flip", "--epochs", "--batch-size", "--eval-batch-size",
                          "--optimizer", "--lr", "--momentum", "--nesterov", "--weight-decay", "--beta1", "--beta2",
                          "--adam-eps", "--schedule", "--milestones", "--gamma", "--min-lr", "--cyclic-peak",
                          "--method", "--eps", "--alpha", "--eps-ramp", "--steps", "--replays", "--gamma-mplus", "--r-max",
                          "--alpha-per-r", "--alpha-min", "--deat-d", "--deat-p-acc", "--guard", "--guard-drop",
                          "--guard-steps", "--robust-val-size", "--robust-val-steps", "--final-attack-size",
                          "--final-attack-steps", "--kernels", "--seed", "--threads", "--device", "--out", "--resume",
                          "--stop-after", "--quiet"}) {
    INFO(opt);
    CHECK(r.out.find(std::string(opt) + " ") != std::string::npos);
  }
  CHECK(r.out.find("wong_small") != std::string::npos);
  CHECK(r.out.find("one-cycle") != std::string::npos);
  const Result e = run("eval --help", s.path);
  CHECK(e.code == 0);
  for (const char* opt : {"--checkpoint", "--dataset", "--data-dir", "--test-size", "--batch-size", "--json"}) {
    INFO(opt);
    CHECK(e.out.find(std::string(opt) + " ") != std::string::npos);
  }
}

TEST_CASE("bulwark train writes a run directory and bulwark eval reads it", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  const Result t = run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path);
  INFO("stderr: " << t.err);
  REQUIRE(t.code == 0);
  CHECK(t.out.empty());  // --quiet

  const auto config = nlohmann::json::parse(read_file(run_dir / "config.json"));
  CHECK(config["model"] == "mlp");
  CHECK(config["data"]["dataset"] == "synthetic");
  CHECK(config["epochs"] == 2);
  CHECK(config["optimizer"]["lr"] == 1e-3);  // adam's default learning rate
  CHECK(config["device"] == "cpu");

  std::ifstream metrics(run_dir / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line); ++lines) {
    const auto m = nlohmann::json::parse(line);
    for (const char* key : {"epoch", "train_loss", "train_acc", "val_acc", "lr", "seconds", "fwd_passes",
                            "bwd_passes", "images_per_s"}) {
      INFO(key);
      CHECK(m.contains(key));
    }
    CHECK(m["epoch"] == lines + 1);
    CHECK(m["fwd_passes"] == 6);  // 300 samples in batches of 50
  }
  CHECK(lines == 2);
  CHECK(fs::exists(run_dir / "last.safetensors"));
  CHECK(fs::exists(run_dir / "best.safetensors"));
  const auto summary = nlohmann::json::parse(read_file(run_dir / "summary.json"));
  CHECK(summary["complete"] == true);

  // eval on the same 100 test samples reproduces the run's final test accuracy.
  const Result e = run("eval --checkpoint '" + run_dir.string() + "' --test-size 100 --attacks clean --json", s.path);
  INFO("stderr: " << e.err);
  REQUIRE(e.code == 0);
  const auto ev = nlohmann::json::parse(e.out);
  CHECK(ev["samples"] == 100);
  CHECK(ev["model"] == "mlp");
  CHECK(ev["clean_acc"].get<double>() == summary["test_acc"].get<double>());

  const Result table = run("eval --checkpoint '" + (run_dir / "best.safetensors").string() + "' --attacks clean", s.path);
  CHECK(table.code == 0);
  CHECK(table.out.find("clean acc") != std::string::npos);
  CHECK(table.out.find("synthetic/test") != std::string::npos);

  // A model trained on 3x32x32 images cannot be evaluated on 1x28x28 ones.
  const std::string mnist = std::string(BULWARK_SHARED_DATA) + "/mnist";
  if (fs::exists(mnist)) {
    const Result bad = run("eval --checkpoint '" + run_dir.string() + "' --dataset mnist --data-dir '" + mnist + "'",
                           s.path);
    CHECK(bad.code == 2);
    CHECK(bad.err.find("3x32x32") != std::string::npos);
  }
}

TEST_CASE("bulwark train --stop-after then --resume finishes the run", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  const Result first = run(std::string(kTinyTrain) + " --stop-after 1 --out '" + run_dir.string() + "'", s.path);
  INFO("stderr: " << first.err);
  REQUIRE(first.code == 0);
  CHECK_FALSE(fs::exists(run_dir / "summary.json"));
  const Result again = run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path);
  CHECK(again.code == 2);
  CHECK(again.err.find("already holds a run") != std::string::npos);
  const Result second = run("train --resume '" + run_dir.string() + "' --quiet", s.path);
  INFO("stderr: " << second.err);
  REQUIRE(second.code == 0);
  const auto summary = nlohmann::json::parse(read_file(run_dir / "summary.json"));
  CHECK(summary["epochs_completed"] == 2);
}

namespace {

// metrics.jsonl without its timings, which differ from run to run.
std::vector<nlohmann::json> metrics_without_timings(const fs::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      nlohmann::json j = nlohmann::json::parse(line), kept;
      for (const auto& [key, value] : j.items())
        if (key.find("seconds") == std::string::npos && key.find("per_s") == std::string::npos) kept[key] = value;
      lines.push_back(std::move(kept));
    }
  return lines;
}

// Every tensor of two checkpoints (model and optimizer state), byte for byte.
bool same_tensors(const fs::path& a, const fs::path& b) {
  const bulwark::SafetensorsFile x = bulwark::load_safetensors(a.string()), y = bulwark::load_safetensors(b.string());
  if (x.tensors.size() != y.tensors.size()) return false;
  for (const auto& [name, t] : x.tensors) {
    const auto it = y.tensors.find(name);
    if (it == y.tensors.end() || it->second.shape() != t.shape() || it->second.dtype() != t.dtype()) return false;
    const size_t bytes = static_cast<size_t>(t.numel()) * bulwark::dtype_size(t.dtype());
    const bulwark::Tensor u = t.contiguous(), v = it->second.contiguous();
    if (std::memcmp(u.impl()->storage->data, v.impl()->storage->data, bytes) != 0) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("an interrupted run saves itself, says how to resume, and the resumed run is bitwise the same", "[cli]") {
  // M+DEAT on the MLP: 6 batches an epoch, 3 epochs; its G, replay count and optimizer state all
  // cross the interrupt. Each case reaches a named point through BULWARK_TEST_INTERRUPT.
  Scratch s;
  const std::string args =
      "--dataset synthetic --model mlp --train-size 300 --val-size 100 --test-size 100 --epochs 3 --batch-size 50 "
      "--method mplus-deat --threads 1 --quiet";
  const fs::path reference = s.path / "reference";
  REQUIRE(run("train " + args + " --out '" + reference.string() + "'", s.path).code == 0);
  struct Case {
    std::string spec;
    std::vector<int> codes;  // the exit codes it may end with
    bool saves_mid_epoch;    // writes interrupted.safetensors
    const char* says;        // on stderr
  };
  const std::vector<Case> cases = {
      {"batch:8", {130}, true, "after batch 2/6"},                      // mid-batch of epoch 2 (SIGINT)
      {"batch:3:15", {143}, true, "interrupted by SIGTERM at epoch 1/3"},  // SIGTERM
      {"validation:2", {130}, false, "which was completed"},              // mid-validation: the epoch ends
      {"checkpoint:1", {130}, false, "which was completed"},              // between the temporary and its rename
      {"checkpoint:2:2:2", {130}, false, "exiting now"},                 // a second Ctrl-C there: out at once
      {"checkpoint:2:9", {137, -1}, false, ""},                          // SIGKILL there
  };
  for (const Case& c : cases) {
    INFO(c.spec);
    const fs::path dir = s.path / ("run-" + std::to_string(&c - cases.data()));
    const Result r = run("train " + args + " --out '" + dir.string() + "'", s.path, "BULWARK_TEST_INTERRUPT=" + c.spec);
    INFO("stderr: " << r.err);
    CHECK(std::find(c.codes.begin(), c.codes.end(), r.code) != c.codes.end());
    CHECK(r.err.find(c.says) != std::string::npos);
    if (c.codes.front() != 137 && c.spec != "checkpoint:2:2:2")
      CHECK(r.err.find("continue with: bulwark train --resume " + dir.string()) != std::string::npos);
    CHECK(fs::exists(dir / "interrupted.safetensors") == c.saves_mid_epoch);
    // What resume will read is whole, whatever the interrupt cut (in epoch 1 there is no
    // last.safetensors yet).
    const fs::path saved = dir / (c.saves_mid_epoch ? "interrupted.safetensors" : "last.safetensors");
    REQUIRE(fs::exists(saved));
    CHECK_NOTHROW(bulwark::load_safetensors(saved.string()));
    const Result resumed = run("train --resume '" + dir.string() + "' --quiet", s.path);
    INFO("resume stderr: " << resumed.err);
    REQUIRE(resumed.code == 0);
    CHECK_FALSE(fs::exists(dir / "interrupted.safetensors"));
    CHECK(metrics_without_timings(dir) == metrics_without_timings(reference));
    CHECK(same_tensors(dir / "last.safetensors", reference / "last.safetensors"));
  }

  // A Ctrl-C at a moment nobody chose, from outside the process, 0.8 s into a run of ~3 s.
  const std::string longer =
      "--dataset synthetic --model wong_small --train-size 600 --val-size 100 --test-size 100 --epochs 10 "
      "--batch-size 50 --method mplus-deat --threads 1 --quiet";
  const fs::path long_reference = s.path / "long-reference", timed = s.path / "timed";
  REQUIRE(run("train " + longer + " --out '" + long_reference.string() + "'", s.path).code == 0);
  const fs::path code_file = s.path / "timed-code.txt";
  const std::string cmd = "( '" + std::string(BULWARK_BINARY) + "' train " + longer + " --out '" + timed.string() +
                          "' 2> /dev/null & pid=$!; sleep 0.8; kill -INT $pid 2> /dev/null; wait $pid; echo $? > '" +
                          code_file.string() + "' )";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const int code = std::stoi(read_file(code_file));
  INFO("exit code " << code);
  CHECK((code == 130 || code == 0));  // 0: it finished before the signal (a very fast machine)
  if (code == 130) REQUIRE(run("train --resume '" + timed.string() + "' --quiet", s.path).code == 0);
  CHECK(metrics_without_timings(timed) == metrics_without_timings(long_reference));
  CHECK(same_tensors(timed / "last.safetensors", long_reference / "last.safetensors"));
}

TEST_CASE("a checkpoint write that fails (disk full, file size limit) says so and keeps the previous one", "[cli]") {
  // Epoch 1 is written normally; epoch 2 runs under a 200 KiB file-size limit (SIGXFSZ ignored, so
  // the write fails with EFBIG as a full disk fails with ENOSPC): its 3.8 MB checkpoint cannot be
  // written. The error names the file; last.safetensors still holds epoch 1, no temporary is left,
  // and a resume without the limit ends where an uninterrupted run does.
  Scratch s;
  const std::string args =
      "--dataset synthetic --model mlp --train-size 300 --val-size 100 --test-size 100 --epochs 2 --batch-size 50 "
      "--optimizer adam --method standard --threads 1 --quiet";
  const fs::path reference = s.path / "reference", dir = s.path / "run";
  REQUIRE(run("train " + args + " --out '" + reference.string() + "'", s.path).code == 0);
  REQUIRE(run("train " + args + " --stop-after 1 --out '" + dir.string() + "'", s.path).code == 0);
  const fs::path err = s.path / "limited-stderr.txt";
  const std::string cmd = "bash -c \"ulimit -f 200; trap '' XFSZ; exec '" + std::string(BULWARK_BINARY) +
                          "' train --resume '" + dir.string() + "' --quiet\" 2> '" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  const std::string message = read_file(err);
  INFO("stderr: " << message);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 2));
  // best.safetensors when epoch 2 improved on validation (it is written first), else last.safetensors
  CHECK(message.find("could not write the checkpoint " + dir.string() + "/") != std::string::npos);
  CHECK(message.find("File too large") != std::string::npos);
  CHECK(message.find("the previous file, if any, is intact") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "last.safetensors.tmp"));
  CHECK_FALSE(fs::exists(dir / "best.safetensors.tmp"));
  const bulwark::SafetensorsFile kept = bulwark::load_safetensors((dir / "last.safetensors").string());
  CHECK(kept.metadata.at("epoch") == "1");
  const Result resumed = run("train --resume '" + dir.string() + "' --quiet", s.path);
  INFO("resume stderr: " << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(metrics_without_timings(dir) == metrics_without_timings(reference));
  CHECK(same_tensors(dir / "last.safetensors", reference / "last.safetensors"));
}

TEST_CASE("a diverging run exits with code 1 and names the epoch and batch", "[cli]") {
  Scratch s;
  const Result r = run(std::string(kTinyTrain) + " --optimizer sgd --lr 1e30 --schedule constant --out '" +
                           (s.path / "run").string() + "'",
                       s.path);
  INFO("stderr: " << r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("diverged") != std::string::npos);
  CHECK(r.err.find("epoch 1/2, batch") != std::string::npos);
}

TEST_CASE("bulwark eval reports clean, PGD, CW and FGSM accuracy as a table and as JSON", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run", json_file = s.path / "eval.json";
  const Result t = run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path);
  INFO("stderr: " << t.err);
  REQUIRE(t.code == 0);

  // 40 samples in batches of 25 and 15; small step counts keep the run short.
  const Result e = run("eval --checkpoint '" + run_dir.string() +
                           "' --test-size 40 --batch-size 25 --pgd-steps 3 --restarts 2 --cw-steps 4 --eps 8/255 "
                           "--threads 1 --no-compact --json '" + json_file.string() + "'",
                       s.path);
  INFO("stderr: " << e.err);
  REQUIRE(e.code == 0);
  for (const char* text : {"attack", "accuracy", "fwd passes", "clean", "PGD-3x2", "CW-4", "FGSM", "clean acc",
                           "robust acc", "8/255", "--eps"}) {
    INFO(text);
    CHECK(e.out.find(text) != std::string::npos);
  }
  const auto j = nlohmann::json::parse(read_file(json_file));
  CHECK(j["samples"] == 40);
  CHECK(j["eps"].get<double>() == Approx(8.0 / 255));
  REQUIRE(j["attacks"].size() == 4);
  struct Row {
    std::string name;
    int fwd, bwd;  // per batch
  };
  // Passes per batch (--no-compact: the attack's own restarts, in the batch): clean 1 + 0; PGD-3x2
  // at most 2 x (3 + 1) + 2 x 3 (the second restart
  // attacks only what the first left standing, if anything); CW-4 (4 + 1) + 4; FGSM 2 + 1.
  const std::vector<Row> rows{{"clean", 1, 0}, {"PGD-3x2", 8, 6}, {"CW-4", 5, 4}, {"FGSM", 2, 1}};
  double lowest = 1;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& a = j["attacks"][i];
    INFO(rows[i].name);
    CHECK(a["attack"] == rows[i].name);
    CHECK(a["samples"] == 40);
    const int batches = 2, restarts = i == 1 ? 2 : 1;
    CHECK(a["fwd_passes"].get<int>() >= batches * rows[i].fwd / restarts);
    CHECK(a["fwd_passes"].get<int>() <= batches * rows[i].fwd);
    CHECK(a["bwd_passes"].get<int>() * rows[i].fwd == a["fwd_passes"].get<int>() * rows[i].bwd);
    const double acc = a["accuracy"].get<double>();
    CHECK((acc >= 0 && acc <= 1));
    lowest = std::min(lowest, acc);
  }
  CHECK(j["attacks"][1]["alpha"].get<double>() == Approx(2.5 * 8 / 255 / 3));  // Madry's rule
  CHECK(j["clean_acc"].get<double>() == j["attacks"][0]["accuracy"].get<double>());
  CHECK(j["pgd_acc"].get<double>() <= j["clean_acc"].get<double>());
  CHECK(j["robust_acc"].get<double>() <= lowest);  // correct under every row

  // JSON on stdout instead of the table; without --eps, the run's eps (8/255 on 3x32x32 images).
  const Result only = run("eval --checkpoint '" + run_dir.string() +
                              "' --test-size 10 --attacks fgsm,clean --threads 1 --json",
                          s.path);
  INFO("stderr: " << only.err);
  REQUIRE(only.code == 0);
  const auto k = nlohmann::json::parse(only.out);
  CHECK(k["eps"].get<double>() == Approx(8.0 / 255));
  REQUIRE(k["attacks"].size() == 2);
  CHECK(k["attacks"][0]["attack"] == "FGSM");
  CHECK_FALSE(k.contains("pgd_acc"));
}

TEST_CASE("bulwark eval attacks a self-gradient network through its full graph and reports the stronger attack",
          "[cli][sgn]") {
  // An SGN whose one tap is the input itself (x - gamma g / rms(g): a step against its own
  // gradient before the network), trained with the probe's gradient detached. The detached
  // attack ignores how that step follows x; measured: PGD-10 at 8/255 on 300 samples leaves 6%
  // through the full graph, 12% detached.
  Scratch s;
  const fs::path run_dir = s.path / "sgn";
  const Result t = run("train --dataset synthetic --model sgn:mlp --sgn-taps normalize --sgn-gate-init 0.3 "
                       "--sgn-grad detached --train-size 600 --val-size 100 --test-size 100 --epochs 3 --batch-size 50 "
                       "--optimizer adam --method standard --schedule cosine --threads 1 --quiet --out '" +
                           run_dir.string() + "'",
                       s.path);
  INFO("stderr: " << t.err);
  REQUIRE(t.code == 0);
  const Result e = run("eval --checkpoint '" + run_dir.string() +
                           "' --test-size 300 --attacks clean,pgd --pgd-steps 10 --restarts 1 --eps 8/255 --threads 1 --json -",
                       s.path);
  INFO("stderr: " << e.err);
  REQUIRE(e.code == 0);
  const auto j = nlohmann::json::parse(e.out);
  REQUIRE(j["attacks"].size() == 3);
  const auto& full = j["attacks"][1];
  const auto& detached = j["attacks"][2];
  CHECK(full["attack"] == "PGD-10");
  CHECK(detached["attack"] == "detached PGD-10");
  // Per batch of 300: 11 calls (10 steps and the final judgement), each a probe forward and
  // backward and a main forward; 10 backwards, through the probe's backward (2) or not (1).
  CHECK(full["fwd_passes"] == 22);
  CHECK(full["bwd_passes"] == 31);
  CHECK(detached["bwd_passes"] == 21);
  const double full_acc = j["pgd_acc"], detached_acc = j["detached_pgd_acc"];
  CHECK(full_acc == full["accuracy"].get<double>());
  CHECK(detached_acc >= full_acc + 0.03);  // the detached attack is the weaker here
  CHECK(j["headline_acc"].get<double>() <= full_acc);
  CHECK(j["robust_acc"].get<double>() <= full_acc);
}

TEST_CASE("bulwark eval runs transfer attacks, an eps sweep and the masking checks", "[cli]") {
  Scratch s;
  const fs::path target = s.path / "target", source = s.path / "source";
  REQUIRE(run(std::string(kTinyTrain) + " --out '" + target.string() + "'", s.path).code == 0);
  REQUIRE(run(std::string(kTinyTrain) + " --seed 5 --out '" + source.string() + "'", s.path).code == 0);
  const Result e = run("eval --checkpoint '" + target.string() + "' --source-checkpoint '" + source.string() +
                           "' --test-size 100 --attacks clean,pgd,fgsm --pgd-steps 5 --restarts 1 --eps-sweep 2/255,1 "
                           "--json",
                       s.path);
  INFO("stderr: " << e.err);
  REQUIRE(e.code == 0);
  const auto j = nlohmann::json::parse(e.out);
  std::vector<std::string> names;
  for (const auto& a : j["attacks"]) names.push_back(a["attack"]);
  CHECK(names == std::vector<std::string>{"clean", "PGD-5", "FGSM", "transfer PGD-5", "transfer FGSM"});
  CHECK(j["attacks"][3]["transfer"] == true);
  CHECK(j.contains("transfer_pgd_acc"));
  CHECK(j["eps_sweep"].size() == 4);  // pgd and fgsm at 2/255 and at 1
  for (const auto& p : j["eps_sweep"])
    if (p["eps"] == 1.0) CHECK(p["accuracy"] == 0.0);  // at eps 1 an MLP loses every sample
  std::vector<std::string> checks;
  for (const auto& c : j["masking_checks"]) {
    checks.push_back(c["check"]);
    CHECK(c["applicable"] == true);
  }
  CHECK(checks == std::vector<std::string>{"fgsm-below-pgd", "above-clean", "rises-with-eps", "black-box-below-white",
                                           "nonzero-at-eps-1"});
  CHECK(j["masking_flagged"].is_boolean());

  const Result table = run("eval --checkpoint '" + target.string() + "' --test-size 50 --attacks clean,pgd --pgd-steps 3 "
                               "--restarts 1",
                           s.path);
  CHECK(table.code == 0);
  CHECK(table.out.find("gradient-masking checks") != std::string::npos);
  CHECK(table.out.find("not run") != std::string::npos);  // no sweep, no FGSM, no black-box row

  const Result missing = run("eval --checkpoint '" + target.string() + "' --source-checkpoint /nonexistent/run", s.path);
  CHECK(missing.code == 2);
  CHECK(missing.err.find("--source-checkpoint /nonexistent/run/last.safetensors does not exist") == std::string::npos);
  CHECK(missing.err.find("/nonexistent/run") != std::string::npos);
}

TEST_CASE("bulwark eval --suite runs each attack on the samples still robust, compacted or not", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  REQUIRE(run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path).code == 0);
  const std::string base = "eval --checkpoint '" + run_dir.string() +
                           "' --test-size 100 --attacks clean,fgsm,pgd --pgd-steps 5 --restarts 2 --suite fgsm,pgd --json";
  const Result on = run(base, s.path), off = run(base + " --no-compact", s.path);
  INFO("stderr: " << on.err << off.err);
  REQUIRE(on.code == 0);
  REQUIRE(off.code == 0);
  const auto a = nlohmann::json::parse(on.out), b = nlohmann::json::parse(off.out);
  const auto& suite = a["suite"];
  CHECK(suite["compact"] == true);
  REQUIRE(suite["steps"].size() == 2);
  const double fgsm = suite["steps"][0]["robust_acc"], pgd = suite["steps"][1]["robust_acc"];
  // Robust so far can only fall, and the suite is at least as strong as each of its attacks alone.
  CHECK(pgd <= fgsm);
  CHECK(fgsm <= a["fgsm_acc"].get<double>());
  CHECK(suite["robust_acc"].get<double>() <= a["pgd_acc"].get<double>());
  CHECK(suite["robust_acc"].get<double>() == pgd);
  // Compacted, each attack sees only the samples still correct; masked, all of them.
  CHECK(suite["steps"][0]["attacked"] == std::lround(100 * suite["clean_acc"].get<double>()));
  CHECK(suite["steps"][1]["attacked"] == std::lround(100 * fgsm));
  CHECK(b["suite"]["compact"] == false);
  CHECK(b["suite"]["steps"][0]["attacked"] == 100);
  CHECK(b["suite"]["steps"][1]["attacked"] == 100);
  // FGSM has no randomness, so both ways agree on it exactly.
  CHECK(b["suite"]["steps"][0]["robust_acc"] == suite["steps"][0]["robust_acc"]);

  // PGD's restarts: compacted, each restart runs on full batches of the survivors, so the work
  // falls (one pass per batch of survivors) while the accuracy stays that of the same attack.
  const std::string restarts = "eval --checkpoint '" + run_dir.string() +
                               "' --test-size 100 --attacks clean,pgd --pgd-steps 5 --restarts 4 --batch-size 30 --json";
  const Result compact = run(restarts, s.path), masked = run(restarts + " --no-compact", s.path);
  REQUIRE(compact.code == 0);
  REQUIRE(masked.code == 0);
  const auto pc = nlohmann::json::parse(compact.out)["attacks"][1], pm = nlohmann::json::parse(masked.out)["attacks"][1];
  CHECK(pc["attack"] == "PGD-5x4");
  CHECK(pc["fwd_passes"].get<int64_t>() < pm["fwd_passes"].get<int64_t>());
  CHECK(pc["bwd_passes"].get<int64_t>() < pm["bwd_passes"].get<int64_t>());
  CHECK(std::abs(pc["accuracy"].get<double>() - pm["accuracy"].get<double>()) <= 0.05);
  CHECK(pc["loss"].is_null());

  // AutoAttack's standard suite, shortened: APGD-CE, APGD-T, FAB-T, Square in that order.
  const Result aa = run("eval --checkpoint '" + run_dir.string() +
                            "' --test-size 60 --attacks clean --suite autoattack --apgd-steps 5 --apgd-targets 2 "
                            "--fab-steps 5 --fab-targets 2 --square-queries 50 --json",
                        s.path);
  INFO("stderr: " << aa.err);
  REQUIRE(aa.code == 0);
  const auto aj = nlohmann::json::parse(aa.out)["suite"];
  std::vector<std::string> steps;
  for (const auto& step : aj["steps"]) steps.push_back(step["attack"]);
  CHECK(steps == std::vector<std::string>{"APGD-CE-5", "APGD-T-5x2", "FAB-T-5x2", "Square-50"});
  for (size_t i = 1; i < aj["steps"].size(); ++i)
    CHECK(aj["steps"][i]["robust_acc"].get<double>() <= aj["steps"][i - 1]["robust_acc"].get<double>());
  // The randomised-defence suite: APGD-CE and APGD-DLR with EOT-20 unless --apgd-eot says otherwise.
  for (const auto& [extra, eot] : std::vector<std::pair<std::string, std::string>>{{"", "20"}, {" --apgd-eot 2", "2"}}) {
    const Result rand = run("eval --checkpoint '" + run_dir.string() +
                                "' --test-size 30 --attacks clean --suite autoattack-rand --apgd-steps 3 --json" + extra,
                            s.path);
    INFO("stderr: " << rand.err);
    REQUIRE(rand.code == 0);
    const auto rj = nlohmann::json::parse(rand.out)["suite"];
    REQUIRE(rj["steps"].size() == 2);
    CHECK(rj["steps"][0]["attack"] == "APGD-CE-3 EOT-" + eot);
    CHECK(rj["steps"][1]["attack"] == "APGD-DLR-3 EOT-" + eot);
    CHECK(rj["randomised_model"] == false);
    // Per point eot forwards: (3 + 1) x eot forwards on the one batch of survivors, and the judging one.
    CHECK(rj["steps"][0]["fwd_passes"] == 4 * std::stoi(eot) + 1);
  }
  // L2: the attacks that have an L2 version, on an L2 radius.
  const Result l2 = run("eval --checkpoint '" + run_dir.string() +
                            "' --test-size 30 --norm l2 --eps 0.5 --attacks clean,pgd,apgd-ce,fab-t --pgd-steps 5 "
                            "--restarts 1 --apgd-steps 5 --fab-steps 5 --fab-targets 2 --json",
                        s.path);
  INFO("stderr: " << l2.err);
  REQUIRE(l2.code == 0);
  const auto lj = nlohmann::json::parse(l2.out);
  CHECK(lj["norm"] == "l2");
  CHECK(lj["eps"] == 0.5);
  std::vector<std::string> l2_names;
  for (const auto& row : lj["attacks"]) l2_names.push_back(row["attack"]);
  CHECK(l2_names == std::vector<std::string>{"clean", "L2 PGD-5", "L2 APGD-CE-5", "L2 FAB-T-5x2"});
  for (size_t i = 1; i < lj["attacks"].size(); ++i)
    CHECK(lj["attacks"][i]["accuracy"].get<double>() <= lj["attacks"][0]["accuracy"].get<double>());
  const Result bad = run("eval --checkpoint '" + run_dir.string() + "' --suite pgd,madry", s.path);
  CHECK(bad.code == 2);
  CHECK(bad.err.find("unknown attack 'madry'") != std::string::npos);
}

TEST_CASE("bulwark eval rejects a bad --eps, --alpha or attack before loading anything", "[cli]") {
  Scratch s;
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases{
      {"--eps 8/0", "'8/0'"},
      {"--eps 300/255", "--eps: 1.17647 is larger than any L-inf distance between images in [0, 1] (at most 1): an "
                        "L2 radius? add --norm l2"},
      {"--norm l2", "--norm l2 needs --eps"},
      {"--norm l1 --eps 1", "--norm: l1 not in {linf,l2}"},
      {"--norm l2 --eps 2 --attacks clean,square", "--norm l2: square is implemented in L-inf only (attacks in l2: "
                                                   "clean, pgd, cw, fgsm, apgd-ce, apgd-dlr, apgd-t, fab-t)"},
      {"--norm l2 --eps 2 --attacks clean --suite autoattack", "square is implemented in L-inf only"},
      {"--attacks clean --suite autoattack-rand --apgd-eot 0", "--apgd-eot must be >= 1"},
      {"--eps abc", "--eps: 'abc' is not a perturbation size"},
      {"--eps -1", "'-1'"},
      {"--alpha 2/0", "--alpha"},
      {"--attacks clean,pgdx", "unknown attack 'pgdx'"},
      {"--restarts 0", "--restarts must be >= 1"},
      {"--pgd-steps 0", "--pgd-steps must be >= 1"},
      {"--attacks clean,pgd --cw-steps 5", "--cw-steps is an option of cw, which --attacks clean,pgd does not run"},
      {"--eps-sweep 0.1,2", "--eps-sweep: 2 is larger than any L-inf distance"},
      {"--eps-sweep 0.1,x", "--eps-sweep: 'x' is not a perturbation size"},
  };
  for (const Case& c : cases) {
    INFO("bulwark eval " << c.args);
    const Result r = run("eval --checkpoint /nonexistent/run " + c.args, s.path);
    INFO("stderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK(r.err.find("does not exist") == std::string::npos);
  }
}

TEST_CASE("bulwark eval runs APGD-CE and APGD-T beside PGD", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  const Result t = run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path);
  INFO("stderr: " << t.err);
  REQUIRE(t.code == 0);
  const Result e = run("eval --checkpoint '" + run_dir.string() +
                           "' --test-size 30 --attacks clean,pgd,apgd-ce,apgd-t --pgd-steps 4 --restarts 1 "
                           "--apgd-steps 4 --apgd-targets 2 --threads 1 --json",
                       s.path);
  INFO("stderr: " << e.err);
  REQUIRE(e.code == 0);
  const auto j = nlohmann::json::parse(e.out);
  REQUIRE(j["attacks"].size() == 4);
  CHECK(j["attacks"][2]["attack"] == "APGD-CE-4");
  CHECK(j["attacks"][3]["attack"] == "APGD-T-4x2");
  // APGD-CE-4: the start and 4 steps, 4 backwards, and the judging forward.
  CHECK(j["attacks"][2]["fwd_passes"] == 6);
  CHECK(j["attacks"][2]["bwd_passes"] == 4);
  CHECK(j["attacks"][2]["alpha"].get<double>() == Approx(2 * 8.0 / 255));  // eta_0 = 2 eps
  CHECK(j["apgd-t_acc"].get<double>() <= j["clean_acc"].get<double>());
  CHECK(j["robust_acc"].get<double>() <= j["apgd-ce_acc"].get<double>());
}

namespace {

// A .npy file of float32 as save_npy writes it: the shape from its header, the values after it.
std::pair<std::vector<int64_t>, std::vector<float>> read_npy_f32(const fs::path& path) {
  const std::string bytes = read_file(path);
  REQUIRE(bytes.size() > 10);
  REQUIRE(bytes.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) == 0);
  const size_t length = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  REQUIRE((10 + length) % 64 == 0);  // the data starts aligned
  const std::string header = bytes.substr(10, length);
  REQUIRE(header.find("'descr': '<f4'") != std::string::npos);
  REQUIRE(header.find("'fortran_order': False") != std::string::npos);
  std::vector<int64_t> shape;
  std::stringstream dims(header.substr(header.find("'shape': (") + 10));
  for (int64_t d = 0; dims >> d;) {
    shape.push_back(d);
    dims.ignore(2, ' ');
  }
  std::vector<float> values((bytes.size() - 10 - length) / 4);
  std::memcpy(values.data(), bytes.data() + 10 + length, values.size() * 4);
  return {shape, values};
}

}  // namespace

TEST_CASE("bulwark eval --logits writes the clean logits; bulwark import makes a run of a state_dict", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  REQUIRE(run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path).code == 0);
  const std::string eval = "eval --checkpoint '" + run_dir.string() + "' --attacks clean --test-size 37 --json --logits ";
  const Result npy = run(eval + "'" + (s.path / "z.npy").string() + "'", s.path);
  const Result st = run(eval + "'" + (s.path / "z.safetensors").string() + "'", s.path);
  INFO("stderr: " << npy.err << st.err);
  REQUIRE(npy.code == 0);
  REQUIRE(st.code == 0);
  const auto [shape, values] = read_npy_f32(s.path / "z.npy");
  CHECK(shape == std::vector<int64_t>{37, 10});
  const bulwark::SafetensorsFile file = bulwark::load_safetensors((s.path / "z.safetensors").string());
  const bulwark::Tensor logits = file.tensors.at("logits"), labels = file.tensors.at("labels");
  CHECK(logits.to_vector() == values);
  CHECK(file.tensors.at("images").shape() == bulwark::Shape{37, 3, 32, 32});  // the synthetic images
  // The clean accuracy the eval reports is the argmax of these logits.
  const std::vector<int32_t> y = labels.to_vector_i32(), predicted = bulwark::argmax(logits, 1).to_vector_i32();
  double correct = 0;
  for (size_t i = 0; i < y.size(); ++i) correct += y[i] == predicted[i];
  CHECK(correct / 37 == Approx(nlohmann::json::parse(npy.out)["clean_acc"].get<double>()));

  // The model's state_dict alone (what PyTorch saves) becomes a run that gives the same logits.
  bulwark::SafetensorsFile checkpoint = bulwark::load_safetensors((run_dir / "last.safetensors").string());
  std::vector<std::pair<std::string, bulwark::Tensor>> state;
  for (const auto& [name, t] : checkpoint.tensors)
    if (name.rfind("optimizer.", 0) != 0) state.emplace_back(name, t);
  // Written as safetensors.torch.save_file does, with its {"format": "pt"} metadata.
  bulwark::save_safetensors((s.path / "state.safetensors").string(), state, {{"format", "pt"}});
  const std::string import = "import --state-dict '" + (s.path / "state.safetensors").string() +
                             "' --dataset synthetic --model mlp --train-size 300 --val-size 100 --out ";
  const Result imported = run(import + "'" + (s.path / "imported").string() + "'", s.path);
  INFO("stderr: " << imported.err);
  REQUIRE(imported.code == 0);
  CHECK(imported.out.find("bulwark eval --checkpoint") != std::string::npos);
  const Result again = run("eval --checkpoint '" + (s.path / "imported").string() +
                               "' --attacks clean --test-size 37 --logits '" + (s.path / "z2.npy").string() + "'",
                           s.path);
  REQUIRE(again.code == 0);
  CHECK(read_npy_f32(s.path / "z2.npy").second == values);

  // Bad input: the wrong model, a checkpoint instead of a state_dict, a file that is not there,
  // a logits file of another kind.
  const Result wrong = run("import --state-dict '" + (s.path / "state.safetensors").string() +
                               "' --dataset synthetic --model wong_small --out '" + (s.path / "w").string() + "'",
                           s.path);
  CHECK(wrong.code == 2);
  CHECK(wrong.err.find("does not fit wong_small on synthetic") != std::string::npos);
  CHECK_FALSE(fs::exists(s.path / "w"));
  const Result ckpt = run("import --state-dict '" + (run_dir / "last.safetensors").string() +
                              "' --dataset synthetic --model mlp --out '" + (s.path / "c").string() + "'",
                          s.path);
  CHECK(ckpt.code == 2);
  CHECK(ckpt.err.find("is already a bulwark checkpoint") != std::string::npos);
  const Result missing = run("import --state-dict /nonexistent.safetensors --dataset synthetic", s.path);
  CHECK(missing.code == 2);
  CHECK(missing.err.find("--state-dict /nonexistent.safetensors does not exist") != std::string::npos);
  const Result txt = run(eval + "'" + (s.path / "z.txt").string() + "'", s.path);
  CHECK(txt.code == 2);
  CHECK(txt.err.find("must end in .npy or .safetensors") != std::string::npos);
}

TEST_CASE("bulwark eval --report writes report.md, report.json and the accuracy-against-eps plot", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  REQUIRE(run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path).code == 0);
  const Result r = run("eval --checkpoint '" + run_dir.string() +
                           "' --test-size 40 --attacks clean,pgd,fgsm --pgd-steps 3 --restarts 1 --suite fgsm,pgd --report",
                       s.path);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.code == 0);
  const auto report = nlohmann::json::parse(read_file(run_dir / "report.json"));
  CHECK(report["training"]["method"]["name"] == "standard");
  CHECK(report["training"]["epochs_done"] == 2);
  CHECK(report["training"]["fwd_passes"].get<int64_t>() > 0);
  // No --eps-sweep: the attacks and the suite also ran at eps/4, eps/2 and 2 eps.
  const double eps = report["eps"];
  REQUIRE(report["eps_sweep"].size() == 6);  // 3 radii x (PGD, FGSM)
  CHECK(report["eps_sweep"][0]["eps"].get<double>() == Approx(eps / 4));
  REQUIRE(report["suite_sweep"].size() == 3);
  CHECK(report["suite_sweep"][2]["eps"].get<double>() == Approx(2 * eps));
  // The suite at 2 eps leaves no more than at eps (a larger ball holds the smaller one's examples
  // up to the attacks' randomness: one sample of slack).
  CHECK(report["suite_sweep"][2]["robust_acc"].get<double>() <= report["suite"]["robust_acc"].get<double>() + 1.0 / 40);
  const std::string md = read_file(run_dir / "report.md");
  for (const char* section : {"# Robustness report: mlp on synthetic", "## Training", "| method | standard",
                              "## Accuracy under each attack", "| PGD-3 |", "### Suite `fgsm,pgd`",
                              "## Gradient-masking checks", "## Accuracy against eps"})
    CHECK(md.find(section) != std::string::npos);
  const bool matplotlib = std::system("/usr/bin/python3 -c 'import matplotlib' 2> /dev/null") == 0;
  if (matplotlib) {
    CHECK(md.find("![accuracy against eps](report.svg)") != std::string::npos);
    const std::string svg = read_file(run_dir / "report.svg");
    CHECK(svg.find("<svg") != std::string::npos);
    CHECK(svg.find("suite fgsm,pgd") != std::string::npos);  // the legend names each line
  } else {
    WARN("python3-matplotlib is not installed: only the report without its plot is checked");
    CHECK(md.find("No plot: python3-matplotlib is not installed") != std::string::npos);
  }
}

TEST_CASE("bulwark verify reports clean, PGD and IBP-verified accuracy, verified never above PGD", "[cli]") {
  Scratch s;
  const fs::path run_dir = s.path / "run";
  REQUIRE(run(std::string(kTinyTrain) + " --out '" + run_dir.string() + "'", s.path).code == 0);
  const std::string verify = "verify --checkpoint '" + run_dir.string() + "' --test-size 50 --pgd-steps 5 ";
  const Result table = run(verify + "--eps 1/255", s.path);
  INFO("stdout: " << table.out << "\nstderr: " << table.err);
  REQUIRE(table.code == 0);
  CHECK(table.out.find("bound ibp") != std::string::npos);
  CHECK(table.out.find("verified (ibp)") != std::string::npos);
  for (const char* eps : {"0", "1/255", "4/255"}) {
    const Result r = run(verify + "--json --eps " + eps, s.path);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    INFO("eps " << eps << ": " << j.dump());
    CHECK(j["bound"] == "ibp");
    CHECK(j["pgd"] == "PGD-5");
    CHECK(j["verified_acc"].get<double>() <= j["pgd_acc"].get<double>());
    CHECK(j["pgd_acc"].get<double>() <= j["clean_acc"].get<double>());
    if (std::string(eps) == "0") CHECK(j["verified_acc"] == j["clean_acc"]);  // the box is the point
  }
  for (const char* bound : {"crown-ibp", "crown"}) {
    const Result r = run(verify + "--json --eps 1/255 --bound " + bound, s.path);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j["bound"] == bound);
    CHECK(j["verified_acc"].get<double>() <= j["pgd_acc"].get<double>());
  }
  const Result unknown = run(verify + "--bound alpha-crown", s.path);
  CHECK(unknown.code == 2);
  CHECK(unknown.err.find("unknown bound 'alpha-crown' (bulwark implements: ibp, crown-ibp, crown, symbolic)") != std::string::npos);
  const Result big = run(verify + "--eps 1.5", s.path);
  CHECK(big.code == 2);
  CHECK(big.err.find("larger than any L-inf distance") != std::string::npos);
}
