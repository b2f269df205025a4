#include "tests/fuzz/targets.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "data/cifar.h"
#include "data/idx.h"
#include "engine/options.h"
#include "engine/safetensors.h"
#include "robust/registry.h"
#include "training/checkpoint.h"
#include "training/config.h"
#include "training/metrics.h"
#include "training/schedule.h"

namespace bulwark::fuzz {

namespace {

// The files of this process's inputs, removed when it exits.
struct Scratch {
  std::string dir =
      std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path().string();
  std::vector<std::string> written;
  ~Scratch() {
    for (const std::string& p : written) std::remove(p.c_str());
  }
};

// A file of these bytes, under /dev/shm when it exists (the readers take paths); one name per
// process and role, rewritten for every input.
std::string write_file(const char* role, const uint8_t* data, size_t size) {
  static Scratch scratch;
  const std::string path = scratch.dir + "/bulwark-fuzz-" + std::to_string(::getpid()) + "-" + role;
  if (std::find(scratch.written.begin(), scratch.written.end(), path) == scratch.written.end())
    scratch.written.push_back(path);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("fuzz: cannot write " + path);
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

std::string refusal;

// Runs f; a std::exception is the reader refusing the input, which is what it should do.
template <class F>
int refusing(F&& f) {
  refusal.clear();
  try {
    f();
  } catch (const std::exception& e) {
    refusal = e.what();
    if (refusal.empty()) refusal = "(an exception without a message)";
  }
  return 0;
}

}  // namespace

const std::string& last_refusal() { return refusal; }

int idx_pair(const uint8_t* data, size_t size) {
  if (size < 2) return refusing([] { throw std::invalid_argument("shorter than the 2-byte split"); });
  const size_t split = std::min<size_t>(size - 2, data[0] | size_t{data[1]} << 8);
  const std::string images = write_file("images", data + 2, split);
  const std::string labels = write_file("labels", data + 2 + split, size - 2 - split);
  return refusing([&] { data::load_idx(images, labels, "fuzz", 10); });
}

int cifar10_file(const uint8_t* data, size_t size) {
  const std::string path = write_file("cifar", data, size);
  return refusing([&] { data::load_cifar10_file(path); });
}

int cifar100_file(const uint8_t* data, size_t size) {
  const std::string path = write_file("cifar100", data, size);
  return refusing([&] { data::load_cifar100_file(path); });
}

int option_value(const uint8_t* data, size_t size) {
  if (size < 1) return refusing([] { throw std::invalid_argument("empty"); });
  static const std::vector<Option> options = {
      Option::make("eps", "--eps", OptionType::radius, "radius").at_least(0),
      Option::make("steps", "--steps", OptionType::integer, "integer").at_least(1),
      Option::make("lr", "--lr", OptionType::real, "real").above(0),
      Option::make("milestones", "--milestones", OptionType::reals, "list"),
      Option::make("flip", "--flip", OptionType::flag, "flag"),
      Option::make("bound", "--bound", OptionType::text, "text").one_of({"ibp", "crown-ibp", "symbolic"}),
  };
  const Option& o = options[data[0] % options.size()];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  refusing([&] { parse_radius(text); });  // the radius parser on every text too; the option's answer is kept
  return refusing([&] { check_option_value(o, parse_option_text(o, text), "fuzz"); });
}

int safetensors_file(const uint8_t* data, size_t size) {
  const std::string path = write_file("safetensors", data, size);
  return refusing([&] { load_safetensors(path); });
}

int checkpoint_metadata(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return refusing([] { throw std::invalid_argument("not a JSON object"); });
  std::map<std::string, std::string> metadata;
  for (auto& [key, value] : j.items()) metadata[key] = value.is_string() ? value.get<std::string>() : value.dump();
  return refusing([&] {
    const training::CheckpointState state = training::checkpoint_state(metadata, "fuzz");
    const training::TrainConfig cfg = training::config_from_json(state.config);
    training::validate(cfg);
    training::make_schedule(cfg.schedule, cfg.optimizer.lr, cfg.epochs)->load_state(state.schedule_state);
    robust::make_method(cfg.method)->load_state(state.method_state);
    // The last epoch's metrics line, parsed as resume parses each line of metrics.jsonl.
    if (!state.metrics.empty()) training::metrics_from_json(state.metrics);
  });
}

const std::vector<NamedTarget>& targets() {
  static const std::vector<NamedTarget> all = {{"idx", idx_pair},
                                               {"cifar10", cifar10_file},
                                               {"cifar100", cifar100_file},
                                               {"option_value", option_value},
                                               {"safetensors", safetensors_file},
                                               {"checkpoint", checkpoint_metadata}};
  return all;
}

}  // namespace bulwark::fuzz
