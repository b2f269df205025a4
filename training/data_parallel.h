#pragma once
// Data parallelism: several ranks (engine/comm.h), each training on its part of the same global
// batch, and gradient accumulation, which is the same thing done by one rank in turn
// (docs/distributed.md).
//
// A step of a run with W ranks and --grad-accum A at --batch-size B:
//   the global batch:   W A B samples of the epoch's permutation (data/loader.h); the tail of an
//                       epoch that would not fill one is dropped
//   rank r's part:      rows [r A B, (r + 1) A B), trained as A micro-batches of B
//   micro-batch m:      m = r A + a, its randomness drawn from the method's stream at
//                       base + m * micro_batch_counters(B, d), base being where the step began:
//                       one uniform number per input element, the random start every attack
//                       method draws. A sample's start then depends on its place in the global
//                       batch alone, so a micro-batch draws the same numbers whichever rank
//                       trains it, and (d a multiple of 4) the same as one process training the
//                       whole global batch at once; the step moves the stream past all W A of them
//   the update:         g = (sum over micro-batches of their gradients) / (W A), summed on each
//                       rank in micro-batch order, then over ranks in rank order; one optimizer
//                       step on g, the same on every rank, so the weights stay equal everywhere
// Two ranks at batch B therefore compute bit for bit what one rank does with --grad-accum 2 (a
// sum of two floats does not depend on the order), which the tests check.
//
// Methods that step the optimizer more than once per batch (Free-AT and DEAT replay a batch and
// step on every replay) get this rank's A micro-batches at once (StepContext::micro_batch): each
// replay runs on every micro-batch with its own perturbation, the gradients summed by backward in
// micro-batch order, then the step, averaged over ranks. The draws and sums are those above, so
// the same equality holds for them.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/comm.h"
#include "engine/rng.h"
#include "models/module.h"
#include "robust/method.h"

namespace bulwark::training {

// Philox counters a micro-batch of `batch` samples of `sample_numel` elements owns: those of one
// uniform draw per element (a random start). A method that draws more per batch cannot train in
// parallel (the trainer checks every micro-batch).
inline uint64_t micro_batch_counters(int64_t batch, int64_t sample_numel) { return uniform_counters(batch * sample_numel); }

// Where this process sits in the run.
struct ParallelLayout {
  int world = 1, rank = 0;  // ranks and this one
  int accum = 1;            // micro-batches per rank and step (--grad-accum)
  int64_t micro_batch = 0;  // --batch-size
  int micro_batches() const { return world * accum; }
  int64_t global_batch() const { return micro_batch * micro_batches(); }
  // Micro-batch a of this rank within the global batch.
  int global_micro(int a) const { return rank * accum + a; }
  // Whether a step is anything but one process training its batch (the code path of old).
  bool parallel() const { return micro_batches() > 1; }
};

// The ParameterUpdate a method drives on a parallel run, in front of the real optimizer: the
// method's step() of micro-batch a adds the gradients to this rank's sum; that of the last
// micro-batch sums over ranks, divides by the micro-batch count and steps the optimizer. With
// accum 1 every step() is a step of every rank (Free-AT's replays).
class GradientAverager final : public robust::ParameterUpdate {
 public:
  GradientAverager(robust::ParameterUpdate& optimizer, NamedTensors params, comm::Communicator& comm, int accum);
  // Micro-batch a of this rank's step: its step() adds to the sum, the last one's reduces.
  void begin_micro_batch(int a);
  // A batch whose method sums this rank's micro-batches itself (the replay methods): every
  // step() reduces what backward summed, however many the batch takes.
  void begin_summed_batch();
  void zero_grad() override;
  void step() override;

 private:
  // Every rank's sums, averaged, become the parameters' gradients. One buffer (one collective):
  // the gradients, then a 0/1 flag per parameter (whether any micro-batch gave it a gradient, so
  // one that none did stays without one, as the optimizer expects).
  void reduce_into_grads();

  robust::ParameterUpdate& optimizer_;
  NamedTensors params_;
  comm::Communicator& comm_;
  int accum_;
  int micro_ = 0;
  int steps_in_micro_ = 0;
  bool summed_by_method_ = false;
  std::vector<Tensor> sums_;  // per parameter, this rank's micro-batches so far (undefined: none)
  Tensor bucket_;             // the gradients and flags that travel, kept from step to step
};

// Every rank must train the same run: rank 0's resolved config (its JSON) goes to every rank,
// which compares it with its own. Throws RanksDisagree on every rank when any differs, naming
// the first key that does where it differs.
struct RanksDisagree : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
void check_same_config(const nlohmann::ordered_json& config, comm::Communicator& comm);

// Rank 0's buffers (BatchNorm's running statistics, which each rank updates from its own
// batches) replace every rank's, so evaluation gives the same result on every rank.
void broadcast_buffers(Module& model, comm::Communicator& comm);

}  // namespace bulwark::training
