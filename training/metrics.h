#pragma once
// What one epoch of training measured: one line of metrics.jsonl, one row of the epoch table,
// and what a metric-driven schedule (AccelAT) or method (DEAT) sees after the epoch.
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "robust/method.h"

namespace bulwark::training {

struct EpochMetrics {
  int64_t epoch = 0;        // 1-based: once this line is written, `epoch` epochs are complete
  double train_loss = 0;    // mean over the epoch's training samples (as the method trained on them)
  double train_acc = 0;     // fraction in [0, 1], from the training forward passes
  double val_acc = 0;       // clean accuracy on the fixed validation subset, after the epoch
  double robust_val_acc = -1;  // PGD accuracy on the fixed robust-validation subset; -1: not measured
  double lr = 0;            // the learning rate of the epoch's last step
  double seconds = 0;       // wall time of the epoch, validation included
  double cpu_seconds = 0;   // CPU time of the process over the epoch (all threads), validation included
  int64_t fwd_passes = 0;   // forward passes through the whole model in this epoch's training
  int64_t bwd_passes = 0;   // backward passes through the whole model in this epoch's training
  double images_per_s = 0;  // training samples / training seconds (validation excluded)
  std::map<std::string, double> extra;  // method-specific values (robust accuracy, attack steps, ...)

  // The metrics.jsonl line: the fields above by name, then the extras.
  nlohmann::ordered_json to_json() const;
};

// The inverse of to_json: unknown numeric fields become extras.
EpochMetrics metrics_from_json(const nlohmann::json& j);

using robust::PassCounter;

}  // namespace bulwark::training
