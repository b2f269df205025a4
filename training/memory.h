#pragma once
// Before a run trains: the memory it will need, against the memory there is, so that a batch
// size or model too large for the machine fails at once with both figures instead of being
// killed by the system an epoch later.
//
// The estimate is measured, not modelled: a fresh copy of the run's model, optimizer and method
// takes two training steps at batch 2 and at batch 4 (and, when the run validates against PGD,
// two PGD steps at those sizes in eval mode), and the engine's count of live tensor bytes
// (memory_stats) gives each one's peak. The step's memory is then
//     state + fixed + per_sample * batch
// with state the model and optimizer (after the first step, which creates the optimizer's
// buffers), per_sample = (peak(4) - peak(2)) / 2 and fixed the rest. It counts tensors only:
// kernels' scratch, the data set in memory and the allocator's slack come on top.
#include <algorithm>
#include <cstdint>
#include <string>

#include "data/dataset.h"
#include "training/config.h"

namespace bulwark::training {

struct MemoryEstimate {
  int64_t state = 0;             // the model's parameters and buffers and the optimizer's state
  int64_t train_per_sample = 0;  // a training step, per sample of the batch
  int64_t train_fixed = 0;       // a training step, independent of the batch
  int64_t eval_per_sample = 0;   // a PGD step of the robust validation, per sample (0 when it is off)
  int64_t eval_fixed = 0;
  int64_t input_per_sample = 0;  // an image and its label: the trainer's fixed probe batch holds one batch more
  int64_t train_bytes(int64_t batch) const {
    return state + train_fixed + (train_per_sample + input_per_sample) * batch;
  }
  int64_t eval_bytes(int64_t batch) const {
    return state + eval_fixed + (eval_per_sample + input_per_sample) * batch;
  }
  // The batches a run attacks in eval mode: the robust validation's and the final PGD's (at the
  // eval batch size) and, for an adversarial method, its probe (at the training batch size:
  // Fast-AT's guard attacks it).
  static int64_t attacked_batch(const TrainConfig& cfg, int64_t train_n);
  // The batch a run trains on: the batch size, or all of a smaller training set.
  static int64_t trained_batch(const TrainConfig& cfg, int64_t train_n) { return std::min(cfg.batch_size, train_n); }
  // What the run needs at its peak: its training step or its largest attack, whichever is more.
  int64_t run_bytes(const TrainConfig& cfg, int64_t train_n) const {
    return std::max(train_bytes(trained_batch(cfg, train_n)), eval_bytes(attacked_batch(cfg, train_n)));
  }
};

// Measures cfg's run (resolved defaults, cfg.input filled) on the first samples of `train`, on
// `device`. Leaves nothing behind: the copies are freed, the run's own state is untouched.
MemoryEstimate estimate_memory(const TrainConfig& cfg, const data::Dataset& train, Device device);

struct MemoryLimit {
  int64_t bytes = 0;
  std::string source;  // "--memory-limit", "MemAvailable", "the cgroup's memory.max", ...
};
// --memory-limit when given; else on the CPU the lower of MemAvailable and the cgroup's free
// room, on CUDA the device's free memory.
MemoryLimit memory_limit(const TrainConfig& cfg, Device device);

// "512M", "2G", "1.5GiB", "100000" (bytes; K, M, G, T are powers of 1024) -> bytes; throws
// std::invalid_argument naming --memory-limit.
int64_t parse_memory_size(const std::string& text);
std::string format_bytes(int64_t bytes);  // "3.2 GiB"

// Throws std::invalid_argument, with the estimate, the limit and the batch size that fits, when
// the run's training step or robust validation would not fit on its device.
void check_memory(const TrainConfig& cfg, const data::Dataset& train);

}  // namespace bulwark::training
