#pragma once
// Mini-batches of a Dataset, shuffled, augmented and prefetched on a background thread.
//
// Determinism: epoch e visits the samples in permutation(e), a Fisher-Yates shuffle driven by
// Philox words keyed by (seed, e); sample i of epoch e is augmented with Philox keyed by
// (seed, e, i). Nothing depends on timing or on the thread that builds a batch, so batch k of
// epoch e is the same in every run, and start_epoch(e, k) resumes an interrupted epoch exactly.
//
// Threading: one worker builds up to kPrefetch batches ahead (gather + augment) while
// the caller trains on the current one. start_epoch() abandons whatever the worker was doing;
// the destructor stops and joins it. An exception on the worker is rethrown by next().
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"

namespace bulwark::data {

struct Batch {
  std::vector<float> x;          // n*c*h*w, NCHW, [0, 1]
  std::vector<int32_t> y;        // n
  std::vector<int64_t> indices;  // n, each sample's index in the dataset (per-sample state)
  int64_t n = 0;
  int c = 0, h = 0, w = 0;
  int64_t epoch = 0, index = 0;  // index: the batch's position in its epoch
};

// The order epoch `epoch` visits n samples in; identical on every run and machine.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

class Loader {
 public:
  static constexpr int kPrefetch = 2;

  // `data` must outlive the loader. Throws std::invalid_argument for a batch size < 1, a
  // negative crop_pad, or an empty dataset.
  Loader(const Dataset& data, int64_t batch_size, bool shuffle, uint64_t seed, AugmentOptions augment = {},
         bool drop_last = false);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t batches_per_epoch() const;
  int64_t batch_size() const { return batch_size_; }
  const Dataset& dataset() const { return data_; }

  // Starts (or restarts) epoch `epoch` at batch `first_batch` (0 <= first_batch <=
  // batches_per_epoch()), abandoning any unfinished epoch.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);

  // The next batch of the current epoch into `out` (its buffers are recycled); false when the
  // epoch is done. Throws std::logic_error before the first start_epoch, and rethrows an
  // exception raised while building the batch (the epoch then ends).
  bool next(Batch& out);

  // Data parallelism (docs/distributed.md): every batch becomes rows [begin, begin + length) of
  // the batch it would be, so each rank of a run takes its own part of the same global batch
  // (same permutation, same per-sample augmentation). Needs drop_last (every part full) and
  // 0 <= begin < begin + length <= batch_size; set before the first start_epoch(), else
  // std::logic_error.
  void set_slice(int64_t begin, int64_t length);

  // For tests (production code sets none): runs on the worker thread on each finished batch, to
  // inspect it or to fail inside the worker. Set before the first start_epoch(), else
  // std::logic_error; unset, it costs one test of an empty std::function per batch.
  void set_batch_hook(std::function<void(Batch&)> hook);

 private:
  struct Job;
  void worker_loop();
  void build(const Job& job, Batch& b) const;

  const Dataset& data_;
  const int64_t batch_size_;
  const bool shuffle_;
  const uint64_t seed_;
  const AugmentOptions augment_;
  const bool drop_last_;
  int64_t slice_begin_ = 0, slice_length_ = 0;  // 0: the whole batch

  std::mutex mutex_;
  std::condition_variable work_cv_, ready_cv_;
  bool stop_ = false;
  bool started_ = false;
  uint64_t generation_ = 0;  // bumped by start_epoch; the worker drops batches of older ones
  int64_t epoch_ = 0;
  int64_t produce_next_ = 0, consume_next_ = 0, end_ = 0;
  std::shared_ptr<const std::vector<int64_t>> order_;
  std::function<void(Batch&)> hook_;  // fixed before the worker sees started_
  std::deque<Batch> ready_;  // built batches of this generation, in index order
  std::vector<Batch> spare_;  // recycled buffers
  std::exception_ptr error_;
  std::thread worker_;  // last: started once every member above exists
};

}  // namespace bulwark::data
