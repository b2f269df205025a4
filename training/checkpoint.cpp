#include "training/checkpoint.h"

#include <fmt/format.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <type_traits>

#include "engine/safetensors.h"

namespace bulwark::training {

namespace {
constexpr const char* kOptimizerPrefix = "optimizer.";

// Runs `write` (which creates path + ".tmp" and renames it to path); if it throws, removes the
// temporary and rethrows with the path in the message.
template <class F>
void atomically(const std::string& path, const char* what, F&& write) {
  try {
    write();
  } catch (const std::exception& e) {
    std::error_code ignored;
    if (std::filesystem::is_regular_file(path + ".tmp", ignored)) std::filesystem::remove(path + ".tmp", ignored);
    throw std::runtime_error(fmt::format("could not write the {} {}: {} (the previous file, if any, is intact)", what,
                                         path, e.what()));
  }
}

const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key, const std::string& path) {
  auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error(fmt::format("{}: checkpoint metadata has no '{}'", path, key));
  return it->second;
}
}  // namespace

void write_file_atomically(const std::string& path, const std::string& text) {
  atomically(path, "file", [&] {
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) throw std::runtime_error(fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
      out << text;
      out.flush();
      if (!out) throw std::runtime_error(fmt::format("writing {} failed: {}", tmp, std::strerror(errno)));
    }
    std::filesystem::rename(tmp, path);
  });
}

void save_checkpoint(const std::string& path, const Module& model, const Optimizer& optimizer,
                     const CheckpointState& s, const std::function<void()>& before_rename) {
  NamedTensors tensors = model.state_dict();
  for (auto& t : optimizer.state()) tensors.push_back(std::move(t));
  const std::map<std::string, std::string> metadata{
      {"format", kFormat},
      {"config", s.config.dump()},
      {"epoch", std::to_string(s.epoch)},
      {"batch", std::to_string(s.batch)},
      {"rng_seed", std::to_string(s.rng_seed)},
      {"rng_offset", std::to_string(s.rng_offset)},
      {"schedule_state", s.schedule_state.dump()},
      {"method_state", s.method_state.dump()},
      {"best_val_acc", nlohmann::json(s.best_val_acc).dump()},
      {"best_epoch", std::to_string(s.best_epoch)},
      {"metrics", s.metrics.dump()},
      {"epoch_progress", s.epoch_progress.dump()},
  };
  atomically(path, "checkpoint", [&] { save_safetensors(path, tensors, metadata, before_rename); });
}

CheckpointState checkpoint_state(const std::map<std::string, std::string>& m, const std::string& path) {
  auto it = m.find("format");
  if (it == m.end() || it->second != kFormat)
    throw std::runtime_error(fmt::format("{} is a safetensors file but not a bulwark checkpoint (metadata format "
                                         "'{}', expected '{}')",
                                         path, it == m.end() ? "" : it->second, kFormat));
  CheckpointState s;
  // Integers in full and in range: std::from_chars takes no sign for an unsigned type (std::stoull
  // would read "-1" as 2^64 - 1), no blanks and no trailing text.
  const auto integer = [&]<class T>(const char* key, T min) {
    const std::string& text = meta(m, key, path);
    T v{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || v < min)
      throw std::runtime_error(fmt::format("{}: checkpoint metadata '{}' is '{}', not {}", path, key, text,
                                           std::is_signed_v<T> ? fmt::format("an integer >= {}", min)
                                                               : std::string("an unsigned integer")));
    return v;
  };
  const auto object = [&](const char* key) {
    nlohmann::json j = nlohmann::json::parse(meta(m, key, path));
    if (!j.is_object()) throw std::runtime_error(fmt::format("{}: checkpoint metadata '{}' is not a JSON object", path, key));
    return j;
  };
  try {
    s.config = object("config");
    s.epoch = integer("epoch", int64_t{0});
    s.batch = integer("batch", int64_t{0});
    s.rng_seed = integer("rng_seed", uint64_t{0});
    s.rng_offset = integer("rng_offset", uint64_t{0});
    s.schedule_state = object("schedule_state");
    s.method_state = object("method_state");
    s.best_val_acc = nlohmann::json::parse(meta(m, "best_val_acc", path)).get<double>();
    s.best_epoch = integer("best_epoch", int64_t{-1});
    s.metrics = object("metrics");
    if (m.count("epoch_progress")) s.epoch_progress = object("epoch_progress");
  } catch (const std::runtime_error&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: damaged checkpoint metadata ({})", path, e.what()));
  }
  // A mid-epoch checkpoint's sums, which the trainer reads back as they were written.
  if (!s.epoch_progress.empty()) {
    for (const char* key : {"loss_sum", "seconds", "cpu_seconds"})
      if (!s.epoch_progress.contains(key) || !s.epoch_progress[key].is_number())
        throw std::runtime_error(fmt::format("{}: checkpoint metadata epoch_progress has no number '{}'", path, key));
    for (const char* key : {"correct", "count", "fwd_passes", "bwd_passes"})
      if (!s.epoch_progress.contains(key) || !s.epoch_progress[key].is_number_integer())
        throw std::runtime_error(fmt::format("{}: checkpoint metadata epoch_progress has no integer '{}'", path, key));
  }
  return s;
}

Checkpoint load_checkpoint(const std::string& path) {
  SafetensorsFile file = load_safetensors(path);
  Checkpoint c;
  c.state = checkpoint_state(file.metadata, path);
  for (auto& [name, t] : file.tensors)
    (name.rfind(kOptimizerPrefix, 0) == 0 ? c.optimizer : c.model).emplace(name, t);
  return c;
}

}  // namespace bulwark::training
