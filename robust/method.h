#pragma once
// The training method: what the trainer does with one batch, and after each epoch.
//
// The trainer (training/trainer.h) owns the loop: data, LR schedule, validation, checkpoints,
// metrics. A Method owns the step. That is where the methods of docs/methods.md differ: the inner
// maximisation (none, FGSM-RS, PGD-k, Free-style replay, DEAT's growing replay count), the loss
// mix, and how many optimizer steps a batch gets (Free-AT and DEAT update the weights on every
// replay). A method:
//   - runs its forward and backward passes on the batch and steps the optimizer (at the learning
//     rate the trainer set), counting every pass through the whole model in ctx.passes;
//   - records the loss and correctness of what it trained on in ctx.log, one entry per optimizer
//     step, without reading them back (robust/step_log.h: a batch on CUDA never waits for the host);
//   - may adapt after each epoch (DEAT's replay count), add values to the epoch's metrics, and
//     ask the trainer to stop and go back to the previous epoch's weights (Fast-AT's guard
//     against catastrophic overfitting);
//   - saves whatever it adapts in state(), so a resumed run continues it bit for bit.
// Randomness (random starts, sample choice) comes from ctx.gen, whose position the trainer
// saves in every checkpoint.
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/rng.h"
#include "engine/tensor.h"
#include "models/module.h"
#include "robust/bounds.h"
#include "robust/step_log.h"

namespace bulwark::robust {

// Forward and backward passes through the whole model: the unit in which methods are compared
// without a GPU (an attack step is one of each; a replay of Free-AT too).
struct PassCounter {
  int64_t fwd = 0, bwd = 0;
};

// The part of an optimizer a method drives: the trainer's optimizer (training/optim.h)
// implements it, at the learning rate the trainer's schedule set for this step.
class ParameterUpdate {
 public:
  virtual ~ParameterUpdate() = default;
  virtual void zero_grad() = 0;
  virtual void step() = 0;  // one update of every parameter that has a gradient
  // backward(loss) into the parameters' gradients. `step_follows`: the next call is step(), with
  // no other backward before it, so the gradients this backward completes are the ones the step
  // uses (a data-parallel update starts summing them over ranks while the backward still runs).
  virtual void backward(const Tensor& loss, bool step_follows) {
    (void)step_follows;
    bulwark::backward(loss);
  }
};

struct StepContext {
  Module& model;
  ParameterUpdate& optimizer;
  Generator& gen;
  PassCounter& passes;
  StepLog& log;  // the batch is open (StepLog::begin_batch); each optimizer step records into it
  int64_t epoch = 0, batch = 0;  // position (0-based), for per-epoch rules and messages
  // The trainer's eps warm-up: attacks of this step use eps_scale * eps and eps_scale * alpha
  // (1 once the ramp is over, and always without one).
  double eps_scale = 1;
  // The trainer's --fused-attack: the attacks of counted_attack run fused where they can
  // (AttackOptions::fused).
  bool fused_attack = false;
  // --grad-accum for a method that steps on every replay (MethodInfo::steps_once_per_batch
  // false): the batch is this many micro-batches of `micro_batch` rows, and each of its steps
  // sums the gradients of all of them (zero_grad before the first, step after the last). 0: the
  // batch is one. The other methods get one micro-batch at a time from the trainer.
  int64_t micro_batch = 0;
};

// What a method sees after an epoch's training and validation.
struct EpochEnd {
  Module& model;
  Generator& gen;
  int64_t epoch = 0;        // the epoch just finished, 0-based
  double train_acc = 0;     // over the epoch's training samples, as the method trained on them
  double val_acc = 0;       // clean accuracy on the validation split, after the epoch
  const Tensor& probe_x;    // a fixed training batch (the first batch_size training samples,
  const Tensor& probe_y;    // on the model's device): the overfitting guard's probe
  std::map<std::string, double>& extra;  // the epoch's metrics.jsonl extras (r, G, threshold, ...)
  // The run's ranks (engine/comm.h), for a rule whose signal is a sum over the epoch's samples
  // (M+'s G): each rank saw only its part. Null on one process.
  comm::Communicator* ranks = nullptr;
  double sum_over_ranks(double value) const { return ranks ? ranks->sum(value) : value; }
};

enum class EpochVerdict {
  keep_going,
  stop_at_previous,  // stop training; the model of the previous epoch is the result
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // x: f32 [n, c, h, w] in [0, 1]; y: i32 [n]; both on the model's device. The model is in
  // training mode. Nothing a batch computes is read back to the host.
  virtual void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) = 0;
  // Before training starts: throws, with a message the user can act on, when the method cannot
  // train this model on batches of `batch_size` like `probe_x` (a bound the model cannot pass,
  // more memory than a limit allows). Nothing it computes is kept.
  // Whether a CUDA graph may capture train_batch once and replay it for every later batch of the
  // same shape (--cuda-graphs): it queues the same work for every such batch whatever its
  // contents, keeps no host-side state from one batch to the next, draws only from ctx.gen and
  // steps the optimizer once. Standard training, PGD-AT and FGSM-RS do; Free-AT and DEAT (a replay
  // count the host adapts, several optimizer steps) and the certified methods do not.
  virtual bool capturable() const { return false; }
  virtual void check(Module& model, const Tensor& probe_x, const Tensor& probe_y, int64_t batch_size) {}
  virtual EpochVerdict on_epoch_end(EpochEnd& end) { return EpochVerdict::keep_going; }
  // The bound of a certified method's per-epoch verified validation: the one it trains with.
  virtual BoundKind verified_bound() const { return BoundKind::ibp; }
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  virtual void load_state(const nlohmann::json& state) {}
};

// Number of rows of logits [n, k] whose argmax is the i32 label [n] (first maximum wins), as a 0-d
// f32 tensor on the logits' device (exact up to 2^24 rows): computed there, not read back.
Tensor correct_predictions(const Tensor& logits, const Tensor& labels);
// The same number read back to the host (on CUDA the host waits for it): for evaluation.
int64_t count_correct(const Tensor& logits, const Tensor& labels);

}  // namespace bulwark::robust
