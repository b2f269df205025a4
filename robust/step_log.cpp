#include "robust/step_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace bulwark::robust {

Tensor DeviceSeries::append(Device device) {
  if (!chunks_.empty() && chunks_.front().device() != device)
    throw std::logic_error(fmt::format("DeviceSeries: a slot on {} appended to a series on {}", device_name(device),
                                       device_name(chunks_.front().device())));
  const int64_t chunk = size_ / kChunk, slot = size_ % kChunk;
  if (chunk == static_cast<int64_t>(chunks_.size())) chunks_.push_back(Tensor::empty({kChunk}, dtype_, device));
  ++size_;
  return chunks_[chunk].slice(0, slot, slot + 1);
}

std::vector<double> DeviceSeries::read(int64_t first) const {
  std::vector<double> values;
  for (int64_t begin = std::max<int64_t>(first, 0); begin < size_;) {
    const int64_t chunk = begin / kChunk, end = std::min(size_, (chunk + 1) * kChunk);
    const std::vector<double> part =
        chunks_[chunk].slice(0, begin - chunk * kChunk, end - chunk * kChunk).cpu().to_vector_f64();
    values.insert(values.end(), part.begin(), part.end());
    begin = end;
  }
  return values;
}

void DeviceSeries::clear() { size_ = 0; }

void StepLog::begin_batch(int64_t batch) {
  batches_.push_back({batch, static_cast<int64_t>(step_counts_.size())});
}

void StepLog::record(const Tensor& mean_loss, const Tensor& correct, int64_t count) {
  if (capturing_) {
    captured_.push_back({mean_loss.detach(), correct.detach(), count});
    return;
  }
  if (batches_.empty()) throw std::logic_error("StepLog::record before begin_batch");
  const Device device = mean_loss.device();
  loss_.append(device).copy_(mean_loss.detach().reshape({1}));
  correct_.append(device).copy_(correct.detach().reshape({1}));
  step_counts_.push_back(count);
  samples_ += count;
}

void StepLog::begin_capture() {
  capturing_ = true;
  captured_.clear();
}

std::vector<StepLog::Captured> StepLog::end_capture() {
  capturing_ = false;
  return std::move(captured_);
}

void StepLog::record_captured(const std::vector<Captured>& steps) {
  for (const Captured& c : steps) record(c.mean_loss, c.correct, c.count);
}

std::vector<BatchResult> StepLog::read_new_batches() {
  if (batches_read_ == batches_.size()) return {};
  const int64_t first = batches_[batches_read_].first_step;
  const std::vector<double> loss = loss_.read(first), correct = correct_.read(first);
  std::vector<BatchResult> totals;
  for (; batches_read_ < batches_.size(); ++batches_read_) {
    const Batch& b = batches_[batches_read_];
    const int64_t end = batches_read_ + 1 < batches_.size() ? batches_[batches_read_ + 1].first_step
                                                            : static_cast<int64_t>(step_counts_.size());
    BatchResult r;
    r.batch = b.index;
    for (int64_t step = b.first_step; step < end; ++step) {
      const int64_t n = step_counts_[step];
      r.loss_sum += loss[step - first] * static_cast<double>(n);
      r.correct += static_cast<int64_t>(correct[step - first]);
      r.count += n;
    }
    totals.push_back(r);
  }
  return totals;
}

void StepLog::clear() {
  loss_.clear();
  correct_.clear();
  step_counts_.clear();
  batches_.clear();
  batches_read_ = 0;
  samples_ = 0;
}

}  // namespace bulwark::robust
