#pragma once
// The configuration of a training run: every option of `bulwark train`, resolved.
//
// A run directory's config.json is to_json() of the resolved config (defaults filled in, the
// dataset's actual sizes and the model's input shape included), and the same JSON travels in
// every checkpoint, so `bulwark train --resume` and `bulwark eval` rebuild the run from it alone.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/options.h"
#include "engine/tensor.h"
#include "robust/registry.h"
#include "training/optim.h"
#include "training/schedule.h"

namespace bulwark::training {

struct DataConfig {
  std::string dataset;   // synthetic | mnist | fashion-mnist | cifar10 | cifar100 (empty: the default)
  std::string data_dir;  // the dataset's files; unused for synthetic
  int64_t train_size = 0;   // training samples, 0 = all the split has after the validation hold-out
  int64_t val_size = 1000;  // held out from the end of the training split, for per-epoch validation
  int64_t test_size = 0;    // the final evaluation's samples from the test split, 0 = all
  uint64_t data_seed = 0;   // synthetic: the seed that defines the dataset
  int crop_pad = 0;         // augmentation: random crop with this zero padding
  bool flip = false;        // augmentation: random horizontal flip
};

// What the model needs to know about its input; filled in from the training data.
struct ModelInput {
  int64_t channels = 0, height = 0, width = 0, num_classes = 0;
  std::vector<double> mean, std;
};

// A self-gradient model's settings (--model sgn:<base>; models/sgn.h), unused by other models.
struct SgnOptions {
  std::string taps;           // comma-separated layer names of the base; empty: the default taps
  std::string grad = "full";  // full | detached
  double gate_init = 0.1;
};

struct TrainConfig {
  // The default job: PGD-AT (k = 10 on Fashion-MNIST at eps 0.1) under the cyclic rate, the
  // candidate of docs/results/default_job.md with the highest min(PGD-50x10, Square).
  TrainConfig() {
    schedule.name = "cyclic";
    method.name = "pgd";
    optimizer.lr = 0;  // the optimizer's default (resolve_defaults): see kSgdDefaultLr
  }
  std::string model = "wong_small";
  DataConfig data;
  ModelInput input;
  SgnOptions sgn;
  int64_t epochs = 5;
  int64_t batch_size = 128;  // per rank (docs/distributed.md): a step trains world_size x grad_accum x this
  int64_t grad_accum = 1;    // micro-batches of batch_size each rank sums before one optimizer step
  bool sync_bn = false;        // BatchNorm statistics over every rank's batch (models/layers.h)
  double comm_timeout = 600;  // seconds a collective waits for the other ranks before the run fails
  double bucket_mb = 25;      // gradient buckets summed over ranks while the backward goes on (MB each)
  int64_t global_batch_size = 0;  // > 0: batch_size becomes this / (world_size x grad_accum)
  int world_size = 1;         // ranks the run trains on: the launcher's (mpirun -np), not an option
  int64_t eval_batch_size = 500;
  double grad_clip = 0;  // clip the gradient's global L2 norm before each optimizer step (0 = off)
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  robust::MethodConfig method;  // the training method and its options (robust/registry.h)
  // After every epoch: PGD-k accuracy on the first robust_val_size validation samples (eval mode,
  // step 2.5 eps / k, one fixed random start), the signal AccelAT follows. 0 = off.
  int64_t robust_val_size = 1000;
  int robust_val_steps = 10;
  // After the last epoch, next to the clean test accuracy: PGD-k with one random start on the first
  // final_attack_size test samples. 0 = off. (`bulwark eval` runs the full PGD-50x10 / CW-20 suite.)
  int64_t final_attack_size = 1000;
  int final_attack_steps = 20;
  std::string kernels = "auto";  // CUDA conv/GEMM: auto (the faster), ours or vendor (cuBLAS/cuDNN)
  std::string precision = "fp32";  // GEMM/conv inputs: fp32, tf32 or bf16 (runtime::set_math_precision)
  std::string fused_attack = "auto"; // the training attack as one kernel (fused_pgd_): auto (on a GPU), on, off
  std::string cuda_graphs = "auto";  // capture a step and replay it per batch: auto (on a GPU), on, off
  uint64_t seed = 0;       // model initialisation, shuffling, augmentation, the method's randomness
  int threads = 0;         // OpenMP threads, 0 = all cores
  std::string device = "auto";  // cpu | cuda | auto
  std::string memory_limit;     // "" = what the machine has (training/memory.h); "2G", "512M", bytes
  std::string out;         // run directory, empty = runs/<timestamp>-<model>-<dataset>
};

// The device of a resolved config (its "device" is "cpu" or "cuda" by then).
inline Device run_device(const TrainConfig& c) { return c.device == "cuda" ? Device::cuda : Device::cpu; }

std::vector<std::string> dataset_names();
// The synthetic dataset's sizes when --train-size / --test-size are 0.
inline constexpr int64_t kSyntheticTrainSize = 10000, kSyntheticTestSize = 2000;
// SGD's base rate: 0.2 under the cyclic schedule (Wong et al.'s peak), else 0.05; Adam's 1e-3.
inline constexpr double kSgdDefaultLr = 0.05, kSgdCyclicLr = 0.2, kAdamDefaultLr = 1e-3;

// One option of the trainer, bound to its field of TrainConfig: the table train_options() is
// the one declaration of every `bulwark train` option that is not a method's or a schedule's;
// the CLI, config.json, validation and docs/training.md's tables come from it. Its default is
// the field's value in a default-constructed TrainConfig.
struct TrainOption {
  std::string group;  // its place in config.json: "" (top level), "data", "optimizer"
  Option option;
  std::function<nlohmann::ordered_json(const TrainConfig&)> get;
  std::function<void(TrainConfig&, const nlohmann::ordered_json&)> set;
};
const std::vector<TrainOption>& train_options();

nlohmann::ordered_json to_json(const TrainConfig& cfg);
// Missing keys keep their defaults; wrong types throw with the key's name.
TrainConfig config_from_json(const nlohmann::json& j);

// Checks every option that can be checked without touching the data; throws
// std::invalid_argument with the option's name and the valid range.
void validate(const TrainConfig& cfg);
void validate(const DataConfig& cfg);

// Fills in what the user left to defaults: the dataset (Fashion-MNIST when Debian's package is
// installed, else synthetic), its folder, multistep's milestones, the thread count, the device
// ("auto" -> "cpu") and the run directory.
// Returns one line per decision, saying what was chosen and why. Throws for --device cuda.
std::vector<std::string> resolve_defaults(TrainConfig& cfg);

// The dataset's folder: none for synthetic, Debian's for fashion-mnist when not given, else
// required (throws naming --data-dir).
void resolve_data_dir(DataConfig& d);

// "cpu" for cpu and auto (adding a note for auto); throws for cuda, which this build lacks.
std::string resolve_device(const std::string& requested, std::vector<std::string>& notes);

}  // namespace bulwark::training
