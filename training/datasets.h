#pragma once
// The data of a run, cut from the configured dataset:
//   train  the first train_size samples of the training split (all but the hold-out when 0)
//   val    the last val_size samples of the training split: a fixed hold-out, never trained on
//   test   the first test_size samples of the test split (all when 0), for the final evaluation
// The synthetic dataset is generated with train_size + val_size training samples, so its
// hold-out is disjoint from the training subset in the same way.
#include "data/dataset.h"
#include "training/config.h"

namespace bulwark::training {

struct RunData {
  data::Dataset train, val, test;
};

// Loads the splits and writes the actual sizes back into cfg (train_size, test_size) and the
// model's input description into cfg.input. Errors name the dataset, the folder and the fix.
RunData load_run_data(TrainConfig& cfg);

// The first `size` samples (0 = all) of the test split of cfg's dataset.
data::Dataset load_test_split(const DataConfig& cfg, int64_t size);

}  // namespace bulwark::training
