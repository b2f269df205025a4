#pragma once
// Checkpoints: one safetensors file holding everything a run needs to continue bit for bit.
//
// Tensors: the model's state_dict under its PyTorch names ("0.weight", "layer1.0.conv1.weight",
// BatchNorm buffers included), so safetensors.torch.load_file + load_state_dict works after
// dropping the "optimizer." entries, and the optimizer's state (see training/optim.h).
// Metadata (strings, as safetensors requires):
//   format          "bulwark-checkpoint-1"
//   config          the run's resolved config (JSON, see training/config.h)
//   epoch, batch    where training continues: `epoch` epochs are complete, plus `batch` batches
//                   of the next one (0 at an epoch boundary, where the trainer writes)
//   rng_seed, rng_offset   the method's Philox stream (engine/rng.h); the data loader needs
//                   nothing more because its order and augmentation are functions of
//                   (seed, epoch, index)
//   schedule_state, method_state   JSON of whatever the schedule and method adapt
//   best_val_acc, best_epoch       the best validation accuracy so far (-1 before any epoch)
//   metrics         the last finished epoch's metrics.jsonl line
// Files are written to a temporary name and renamed over the old one, so a crash or a failed
// write leaves the previous checkpoint intact.
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "models/module.h"
#include "training/optim.h"

namespace bulwark::training {

// The metadata "format" of a bulwark checkpoint.
inline constexpr const char* kFormat = "bulwark-checkpoint-1";

struct CheckpointState {
  nlohmann::json config;
  int64_t epoch = 0, batch = 0;
  uint64_t rng_seed = 0, rng_offset = 0;
  nlohmann::json schedule_state = nlohmann::json::object(), method_state = nlohmann::json::object();
  double best_val_acc = -1;
  int64_t best_epoch = -1;
  nlohmann::json metrics = nlohmann::json::object();
  // A checkpoint written mid-epoch (an interrupted run: batch > 0): the epoch's sums so far, which
  // the resumed epoch starts from. Empty at an epoch's end.
  nlohmann::json epoch_progress = nlohmann::json::object();
};

struct Checkpoint {
  std::map<std::string, Tensor> model;      // state_dict entries
  std::map<std::string, Tensor> optimizer;  // "optimizer.*" entries
  CheckpointState state;
};

// Atomic: written to path + ".tmp" and renamed; on failure the temporary file is removed, the
// old file at `path` is untouched, and the error names the path.
void save_checkpoint(const std::string& path, const Module& model, const Optimizer& optimizer,
                     const CheckpointState& state, const std::function<void()>& before_rename = {});

// Throws naming the file when it is not a bulwark checkpoint or its metadata is damaged.
Checkpoint load_checkpoint(const std::string& path);
// The state held in a checkpoint's metadata (what load_checkpoint reads), each value checked;
// throws naming `path` and the value.
CheckpointState checkpoint_state(const std::map<std::string, std::string>& metadata, const std::string& path);

// Writes `text` to path + ".tmp", then renames it over `path` (config.json, summary.json).
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace bulwark::training
