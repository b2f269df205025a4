#include "training/checkpoint.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

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

Checkpoint load_checkpoint(const std::string& path) {
  SafetensorsFile file = load_safetensors(path);
  const auto& m = file.metadata;
  auto it = m.find("format");
  if (it == m.end() || it->second != kFormat)
    throw std::runtime_error(fmt::format("{} is a safetensors file but not a bulwark checkpoint (metadata format "
                                         "'{}', expected '{}')",
                                         path, it == m.end() ? "" : it->second, kFormat));
  Checkpoint c;
  try {
    CheckpointState& s = c.state;
    s.config = nlohmann::json::parse(meta(m, "config", path));
    s.epoch = std::stoll(meta(m, "epoch", path));
    s.batch = std::stoll(meta(m, "batch", path));
    s.rng_seed = std::stoull(meta(m, "rng_seed", path));
    s.rng_offset = std::stoull(meta(m, "rng_offset", path));
    s.schedule_state = nlohmann::json::parse(meta(m, "schedule_state", path));
    s.method_state = nlohmann::json::parse(meta(m, "method_state", path));
    s.best_val_acc = nlohmann::json::parse(meta(m, "best_val_acc", path)).get<double>();
    s.best_epoch = std::stoll(meta(m, "best_epoch", path));
    s.metrics = nlohmann::json::parse(meta(m, "metrics", path));
    if (const auto p = m.find("epoch_progress"); p != m.end()) s.epoch_progress = nlohmann::json::parse(p->second);
  } catch (const std::runtime_error&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: damaged checkpoint metadata ({})", path, e.what()));
  }
  for (auto& [name, t] : file.tensors)
    (name.rfind(kOptimizerPrefix, 0) == 0 ? c.optimizer : c.model).emplace(name, t);
  return c;
}

}  // namespace bulwark::training
