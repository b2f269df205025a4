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
#include <unordered_map>
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
//
// The sum over ranks starts during the backward that precedes a reducing step(). The
// parameters are grouped into buckets of about `bucket_bytes`, in reverse order (the order the
// backward completes their gradients: the last layer's first). As the backward finishes a
// parameter's gradient (autograd's on_ready) it is copied into its bucket; a bucket whose
// gradients are all in is sent (Communicator::start_all_reduce_sum) while the backward goes on
// with the layers below. Buckets are sent in bucket order on every rank, one after the other
// (a collective's order must match across ranks), whatever order their gradients came in.
// step() sends what is left (parameters this backward gave no gradient), waits for every
// bucket, divides, and steps. The sums are those of the one-bucket exchange, element by
// element, so the bits do not depend on the bucket size.
class GradientAverager final : public robust::ParameterUpdate {
 public:
  static constexpr int64_t kDefaultBucketBytes = int64_t{25} << 20;  // PyTorch DDP's 25 MB
  GradientAverager(robust::ParameterUpdate& optimizer, NamedTensors params, comm::Communicator& comm, int accum,
                   int64_t bucket_bytes = kDefaultBucketBytes);
  // Micro-batch a of this rank's step: its step() adds to the sum, the last one's reduces.
  void begin_micro_batch(int a);
  // A batch whose method sums this rank's micro-batches itself (the replay methods): every
  // step() reduces what backward summed, however many the batch takes.
  void begin_summed_batch();
  void zero_grad() override;
  void backward(const Tensor& loss, bool step_follows) override;
  void step() override;

  // Parameter indices (in `params` order) of each bucket, in the order buckets are sent.
  const std::vector<std::vector<size_t>>& buckets() const { return bucket_params_; }
  // How many buckets the last reducing backward sent before it returned (the rest went in step()).
  int sent_during_backward() const { return sent_during_backward_; }

 private:
  struct Bucket {
    Tensor data;  // its parameters' summed gradients, back to back, on their device
    int filled = 0;
    std::unique_ptr<comm::PendingSum> pending;  // set once sent
  };
  bool reduces_now() const { return micro_ + 1 >= accum_; }
  // Parameter i's gradient is complete: add it to this rank's sum, and, where the sum is
  // final, into its bucket (sending the buckets that are full, in order).
  void add_gradient(size_t i, bool final);
  void send_full_buckets();
  Bucket& bucket_of(size_t i);  // parameter i's bucket, its buffer allocated
  // Every bucket sent and summed; the flags say which parameters any rank gave a gradient.
  void reduce_into_grads();

  robust::ParameterUpdate& optimizer_;
  NamedTensors params_;
  comm::Communicator& comm_;
  int accum_;
  int micro_ = 0;
  int steps_in_micro_ = 0;
  bool summed_by_method_ = false;
  std::vector<Tensor> sums_;   // per parameter, this rank's micro-batches so far (undefined: none)
  std::vector<bool> in_bucket_;  // per parameter: its final sum is in its bucket
  std::vector<std::vector<size_t>> bucket_params_;
  std::vector<size_t> bucket_of_;   // per parameter
  std::vector<int64_t> offset_;     // per parameter, within its bucket
  std::vector<Bucket> buckets_;
  std::unordered_map<const TensorImpl*, size_t> index_;  // parameter -> its index
  size_t next_to_send_ = 0;
  int sent_during_backward_ = 0;
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
