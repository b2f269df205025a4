#pragma once
// The trainer: one loop for every method, with the method, the LR schedule and the model
// pluggable (robust/method.h, training/schedule.h, models/zoo.h), on the CPU or a CUDA device.
//
//   for each epoch e, for each batch i of n (shuffled, augmented; data/loader.h):
//     optimizer.lr = schedule.lr(e + i / n)
//     method.train_batch(x, y)           forward(s), loss, backward(s), optimizer step(s); the
//                                        loss and correct counts stay on the device (StepLog)
//     read the step log                  every batch on the CPU; on CUDA at the progress bar's
//                                        redraws (at most once a second) and the epoch's end
//     stop if a batch's loss is NaN or inf (last.safetensors still holds the last good epoch)
//   after each epoch:
//     validate: clean accuracy on the fixed hold-out, PGD-k accuracy on its first
//       robust_val_size samples (the signal AccelAT follows)
//     method.on_epoch_end                (DEAT's replay count; Fast-AT's guard may stop the run
//                                         here, keeping the previous epoch's model)
//     schedule.on_epoch_end
//     append the epoch's line to metrics.jsonl, write best.safetensors (when val_acc improved)
//     and last.safetensors
//   after the last epoch: clean accuracy on the test split and PGD-k on its first
//   final_attack_size samples, summary.json
//
// Run directory:  config.json  metrics.jsonl  last.safetensors  best.safetensors  summary.json
//
// Resume: resume(run_dir) rebuilds the run from the config inside last.safetensors, restores the
// model, optimizer, schedule, method and RNG state, drops metrics.jsonl lines past the checkpoint
// and continues with the next epoch; or, after an interrupt (training/interrupt.h), from
// interrupted.safetensors, mid-epoch, at the batch after the last one trained. Every source of randomness is a function of (seed, epoch,
// position), so on the CPU a resumed run ends bitwise equal to an uninterrupted one with the same
// thread count.
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "engine/comm.h"
#include "engine/rng.h"
#include "engine/runtime.h"
#include "models/module.h"
#include "training/checkpoint.h"
#include "training/config.h"
#include "training/data_parallel.h"
#include "training/datasets.h"
#include "robust/method.h"
#include "training/progress.h"

namespace bulwark::training {

// The checkpoint an interrupt writes mid-epoch (training/interrupt.h), beside last.safetensors.
inline constexpr const char* kInterruptedCheckpoint = "interrupted.safetensors";

// The loss became NaN or infinite: the run stops (the CLI exits with code 1, not 2).
struct TrainingDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct RunOptions {
  bool quiet = false;
  int64_t stop_after = 0;  // > 0: stop once this many epochs are complete (resume continues it)
  // Profile the training steps (engine/profiler.h): the per-op table on stdout at the end and
  // profile.json in the run directory; `trace`: also a Chrome trace of the second step there.
  bool profile = false;
  std::string trace;
};

struct RunSummary {
  std::string out;
  bool complete = false;         // training is over: all cfg.epochs done, or the method stopped it
  int64_t epochs_completed = 0;
  int64_t stopped_at_epoch = -1;  // the method stopped training after this epoch and kept the one before
  double best_val_acc = -1;
  int64_t best_epoch = -1;
  double final_val_acc = 0;
  double test_acc = -1, test_loss = -1;  // -1 until the run is complete
  int64_t test_size = 0;
  double test_robust_acc = -1;            // PGD-k on the first final_attack_size test samples; -1: not run
  int64_t test_robust_size = 0;
  double seconds = 0;  // training wall time summed over the run's epochs, resumes included
  double cpu_seconds = 0;  // process CPU time summed over the run's epochs (validation included)
  int64_t fwd_passes = 0, bwd_passes = 0;
  int64_t num_parameters = 0;
  nlohmann::ordered_json to_json() const;
};

// The model cfg describes, freshly initialised from cfg.seed (on the CPU, so every device starts
// from the same weights) and moved to `device`.
std::shared_ptr<Module> build_model(const TrainConfig& cfg, Device device = Device::cpu);

// Writes the run directory cfg.out (config.json, last.safetensors at epoch 0) of the model cfg
// describes with its weights from `state_dict_path`, a safetensors state_dict under the model's
// PyTorch names (written by PyTorch, e.g. python/bulwark_torch.py's save_state_dict; I64 buffers
// are read as i32). The data is loaded as for training, to fill cfg.input. Every entry must
// match the model in name and shape: the error names the first that does not. Returns cfg.out.
std::string import_state_dict(TrainConfig cfg, const std::string& state_dict_path);

class Trainer {
 public:
  // cfg: resolved and validated, cfg.input filled by load_run_data (which gave `data`).
  Trainer(TrainConfig cfg, RunData data, RunOptions options);

  // Continues from a checkpoint of this run instead of from epoch 0, and cuts cfg.out/metrics.jsonl
  // back to the epochs the checkpoint includes.
  void restore(const Checkpoint& checkpoint);

  // Trains to cfg.epochs (or options.stop_after), writing the run directory cfg.out, which
  // must exist. Throws TrainingDiverged when the loss stops being finite.
  RunSummary run();

  Module& model() { return *model_; }
  Progress& progress() { return progress_; }

 private:
  // The epoch's training sums so far.
  struct EpochTotals {
    double loss_sum = 0;
    int64_t correct = 0, count = 0;
  };
  // Trains one epoch and validates; sets stop_ when the method asks to stop at the previous epoch.
  EpochMetrics train_epoch(int64_t epoch, int64_t first_batch);
  // Adds the batches step_log_ holds beyond those already in `totals`, in batch order (the
  // arithmetic of reading each batch right away); throws TrainingDiverged, naming the first
  // batch whose loss is NaN or infinite. On CUDA this waits for the device.
  void add_logged_batches(EpochTotals& totals, int64_t epoch, int64_t batches, const std::vector<double>& lr_of_batch);
  // One batch of the method: eagerly, or (--cuda-graphs) by replaying the step captured once.
  void train_step(robust::StepContext& ctx, const Tensor& x, const Tensor& y);
  void capture_step(robust::StepContext& ctx, const Tensor& x, const Tensor& y);
  CheckpointState checkpoint_state(int64_t epochs_done, const EpochMetrics& m) const;
  // Trains the loader's batch: as it is, or (a parallel run) as this rank's micro-batches.
  void train_batch(robust::StepContext& ctx, const Tensor& x, const Tensor& y);
  // Rank 0 writes the run directory; the other ranks keep the same state and write nothing.
  bool writes() const { return comm_.rank() == 0; }
  // On an interrupt after batch `next_batch - 1` of `epoch`: writes interrupted.safetensors with
  // the epoch's sums so far, and throws TrainingInterrupted.
  [[noreturn]] void save_interrupted(int64_t epoch, int64_t next_batch, int64_t batches, const EpochTotals& totals,
                                     const robust::PassCounter& passes, double seconds, double cpu_seconds);
  std::string path(const std::string& name) const;

  TrainConfig cfg_;
  comm::Communicator& comm_;  // the run's ranks (comm::world())
  ParallelLayout layout_;
  RunData data_;
  RunOptions options_;
  Progress progress_;
  Device device_;
  std::shared_ptr<Module> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> schedule_;
  std::unique_ptr<robust::Method> method_;
  std::unique_ptr<GradientAverager> averager_;  // a parallel run's update, in front of optimizer_
  bool steps_once_per_batch_ = true;             // else the method sums a rank's micro-batches itself
  robust::StepLog step_log_;  // the epoch's per-step loss and correct counts, on the device
  Tensor probe_x_, probe_y_;  // the method's fixed probe batch (robust::EpochEnd)
  bool stop_ = false;         // the method stopped training at the previous epoch's weights
  int64_t stopped_at_epoch_ = -1;
  std::optional<EpochMetrics> rejected_;  // the epoch the method rejected, for the work totals
  Generator gen_;
  std::unique_ptr<data::Loader> loader_;  // created by run(), over data_.train
  int64_t start_epoch_ = 0, start_batch_ = 0;
  nlohmann::json resume_progress_ = nlohmann::json::object();  // the interrupted epoch's sums (start_batch_ > 0)
  double best_val_acc_ = -1;
  int64_t best_epoch_ = -1;
  std::vector<EpochMetrics> history_;  // every finished epoch of the run, resumes included
  // --cuda-graphs: the captured step, the input buffers it reads, and what one replay adds to the
  // host's counters (the capture itself ran nothing).
  bool use_graphs_ = false;
  bool fused_attack_ = false;  // --fused-attack resolved: the methods' attacks run as one kernel
  bool graph_warmed_up_ = false;  // a full batch ran eagerly first (lazy state, --kernels auto's timing)
  runtime::CudaGraph graph_;
  Tensor graph_x_, graph_y_;
  std::vector<robust::StepLog::Captured> graph_log_;
  robust::PassCounter graph_passes_;
  int64_t graph_optimizer_steps_ = 0;
};

// A new run: resolves the defaults (printing what was chosen), validates, loads the data,
// creates cfg.out (refusing one that already holds a run), writes config.json and trains.
RunSummary train(TrainConfig cfg, const RunOptions& options);

// Continues the run in run_dir from its last.safetensors. threads > 0 overrides the saved
// thread count (bitwise equality with an uninterrupted run needs the same count).
RunSummary resume(const std::string& run_dir, const RunOptions& options, int threads = 0);

}  // namespace bulwark::training
