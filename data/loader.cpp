#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "data/rng_streams.h"
#include "kernels/common/philox.h"

namespace bulwark::data {

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  // Fisher-Yates from the back: step s swaps position i = n-1-s with a uniform j in [0, i].
  // Each step takes a 64-bit draw (two Philox words, so one block serves two steps) mapped
  // onto [0, i] by a 128-bit multiply-shift: bias < n / 2^64, nothing measurable.
  const uint64_t base = streams::counter(streams::kShuffle, static_cast<uint64_t>(epoch), 0);
  philox::Block block{};
  for (int64_t i = n - 1, step = 0; i > 0; --i, ++step) {
    if (step % 2 == 0) block = philox::philox4x32_10(base + static_cast<uint64_t>(step / 2), seed);
    const int w = static_cast<int>(step % 2) * 2;
    const uint64_t r = uint64_t{block.v[w]} << 32 | block.v[w + 1];
    const auto j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

struct Loader::Job {
  uint64_t generation;
  int64_t epoch, index;
  std::shared_ptr<const std::vector<int64_t>> order;
};

Loader::Loader(const Dataset& data, int64_t batch_size, bool shuffle, uint64_t seed, AugmentOptions augment,
               bool drop_last)
    : data_(data), batch_size_(batch_size), shuffle_(shuffle), seed_(seed), augment_(augment), drop_last_(drop_last) {
  if (batch_size < 1) throw std::invalid_argument(fmt::format("{}: batch size must be >= 1, got {}", data.name, batch_size));
  if (augment.crop_pad < 0 || augment.crop_pad > std::min(data.h, data.w))
    throw std::invalid_argument(fmt::format("{}: crop padding must be in 0..{} for {}x{} images, got {}", data.name,
                                            std::min(data.h, data.w), data.h, data.w, augment.crop_pad));
  if (data.n < 1 || static_cast<uint64_t>(data.n) >= streams::kMaxIndex)
    throw std::invalid_argument(fmt::format("{}: a loader needs 1 to 2^32-1 samples, the dataset has {}", data.name, data.n));
  data.check();
  worker_ = std::thread(&Loader::worker_loop, this);
}

Loader::~Loader() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  worker_.join();
}

int64_t Loader::batches_per_epoch() const {
  return drop_last_ ? data_.n / batch_size_ : (data_.n + batch_size_ - 1) / batch_size_;
}

void Loader::set_batch_hook(std::function<void(Batch&)> hook) {
  std::lock_guard lock(mutex_);
  if (started_) throw std::logic_error(fmt::format("{}: Loader::set_batch_hook after start_epoch", data_.name));
  hook_ = std::move(hook);
}

void Loader::set_slice(int64_t begin, int64_t length) {
  std::lock_guard lock(mutex_);
  if (started_) throw std::logic_error(fmt::format("{}: Loader::set_slice after start_epoch", data_.name));
  if (!drop_last_ || begin < 0 || length < 1 || begin + length > batch_size_)
    throw std::invalid_argument(fmt::format("{}: a batch slice [{}, {}) needs drop_last and must lie in the batch of {}",
                                            data_.name, begin, begin + length, batch_size_));
  slice_begin_ = begin;
  slice_length_ = length;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  if (epoch < 0 || static_cast<uint64_t>(epoch) >= streams::kMaxEpoch)
    throw std::invalid_argument(fmt::format("{}: epoch {} is outside 0..2^24-1", data_.name, epoch));
  if (first_batch < 0 || first_batch > batches_per_epoch())
    throw std::out_of_range(fmt::format("{}: cannot start epoch {} at batch {}: an epoch has {} batches", data_.name,
                                        epoch, first_batch, batches_per_epoch()));
  // The permutation is built before taking the lock, so the worker keeps running meanwhile.
  std::shared_ptr<const std::vector<int64_t>> order;
  if (shuffle_) {
    order = std::make_shared<const std::vector<int64_t>>(epoch_permutation(data_.n, seed_, epoch));
  } else {
    std::vector<int64_t> identity(static_cast<size_t>(data_.n));
    std::iota(identity.begin(), identity.end(), int64_t{0});
    order = std::make_shared<const std::vector<int64_t>>(std::move(identity));
  }
  {
    std::lock_guard lock(mutex_);
    ++generation_;
    started_ = true;
    epoch_ = epoch;
    order_ = std::move(order);
    produce_next_ = consume_next_ = first_batch;
    end_ = batches_per_epoch();
    error_ = nullptr;
    for (auto& b : ready_) spare_.push_back(std::move(b));
    ready_.clear();
  }
  work_cv_.notify_all();
}

bool Loader::next(Batch& out) {
  std::unique_lock lock(mutex_);
  if (!started_) throw std::logic_error(fmt::format("{}: Loader::next called before start_epoch", data_.name));
  if (consume_next_ >= end_) return false;
  // The worker builds batches in order, so the front of ready_ is always batch consume_next_,
  // and an error arrives only after every batch before the failing one.
  ready_cv_.wait(lock, [&] { return !ready_.empty() || error_; });
  if (ready_.empty()) {
    produce_next_ = end_ = consume_next_;  // the epoch ends at the failed batch
    std::rethrow_exception(std::exchange(error_, nullptr));
  }
  std::swap(out, ready_.front());
  spare_.push_back(std::move(ready_.front()));  // the caller's previous buffers, for reuse
  ready_.pop_front();
  ++consume_next_;
  lock.unlock();
  work_cv_.notify_all();
  return true;
}

void Loader::worker_loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    work_cv_.wait(lock, [&] {
      return stop_ || (started_ && !error_ && produce_next_ < end_ && static_cast<int>(ready_.size()) < kPrefetch);
    });
    if (stop_) return;
    const Job job{generation_, epoch_, produce_next_++, order_};
    Batch b;
    if (!spare_.empty()) {
      b = std::move(spare_.back());
      spare_.pop_back();
    }
    lock.unlock();
    std::exception_ptr failure;
    try {
      build(job, b);
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    if (job.generation != generation_) {  // start_epoch() abandoned this epoch meanwhile
      spare_.push_back(std::move(b));
      continue;
    }
    if (failure)
      error_ = failure;
    else
      ready_.push_back(std::move(b));
    ready_cv_.notify_all();
  }
}

void Loader::build(const Job& job, Batch& b) const {
  const int64_t first = job.index * batch_size_ + slice_begin_;
  const int64_t count = slice_length_ > 0 ? slice_length_ : std::min(batch_size_, data_.n - first);
  const int64_t size = data_.sample_size();
  b.n = count;
  b.c = data_.c;
  b.h = data_.h;
  b.w = data_.w;
  b.epoch = job.epoch;
  b.index = job.index;
  b.x.resize(static_cast<size_t>(count * size));
  b.y.resize(static_cast<size_t>(count));
  b.indices.resize(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    const int64_t i = (*job.order)[first + k];
    b.indices[k] = i;
    b.y[k] = data_.labels[i];
    float* dst = b.x.data() + k * size;
    if (augment_.active())
      augment_image(data_.image(i), dst, data_.c, data_.h, data_.w, augment_draw(augment_, seed_, job.epoch, i));
    else
      std::memcpy(dst, data_.image(i), static_cast<size_t>(size) * sizeof(float));
  }
  if (hook_) hook_(b);
}

}  // namespace bulwark::data
