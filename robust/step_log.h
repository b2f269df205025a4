#pragma once
// The numbers training produces per step, kept on the model's device until the host needs them.
//
// A training step's mean loss, its number of correct predictions and the M+ signal (sum |grad_x L|)
// are computed on the device. Reading each back as it is made (item()) makes the host wait for
// the device after every optimizer step, and a GPU then idles while the host prepares the next
// batch (ARCHITECTURE.md: no hidden host syncs). Instead each value goes into the next slot of a
// DeviceSeries: a device-to-device copy queued behind the step, or the producing kernel's own
// output (the fused attack step writes its L1 there). The host reads a series when it needs the
// numbers: the trainer at its progress bar's refresh points (after every batch on the CPU, where
// a read costs nothing; at most about once a second on CUDA) and at the end of the epoch, the M+
// methods at the end of the epoch. The reader adds the values up in double, in the order they
// were recorded: the arithmetic of reading each one right away, so CPU runs keep their bits.
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace bulwark::robust {

// Scalars of one dtype on one device, one slot per value, in fixed-size chunks so that appending
// never moves (or copies) what was written before.
class DeviceSeries {
 public:
  explicit DeviceSeries(DType dtype) : dtype_(dtype) {}
  // The next slot: a contiguous one-element tensor of the series' dtype on `device`, for the
  // caller to write (copy_, or a kernel's output) before the series is read. All the slots of a
  // series are on one device (std::logic_error otherwise).
  Tensor append(Device device);
  int64_t size() const { return size_; }
  // Slots [first, size()) as doubles (exactly: f32 and f64 values fit). On CUDA one
  // device-to-host copy per chunk touched (the host waits for the queued work there); on the
  // CPU no copy at all.
  std::vector<double> read(int64_t first = 0) const;
  void clear();  // back to size 0; the chunks stay allocated for the next epoch

 private:
  static constexpr int64_t kChunk = 1024;
  DType dtype_;
  std::vector<Tensor> chunks_;
  int64_t size_ = 0;
};

// The totals of one batch over its optimizer steps (replays count once each).
struct BatchResult {
  int64_t batch = 0;    // the batch's index in its epoch
  double loss_sum = 0;  // sum of per-sample losses
  int64_t correct = 0;
  int64_t count = 0;
};

// The mean loss and the number of correct predictions of every optimizer step of an epoch, on
// the model's device, grouped by batch. The trainer opens each batch; the method records its
// steps (robust/method.h).
class StepLog {
 public:
  void begin_batch(int64_t batch);
  // One optimizer step on `count` samples of the open batch: mean_loss (the mean cross-entropy)
  // and correct (the number of correct predictions) are one-element f32 tensors on the model's
  // device; they are copied into the log's slots, not read.
  void record(const Tensor& mean_loss, const Tensor& correct, int64_t count);
  // The totals of the batches opened since the last call, in order: loss_sum adds
  // mean_loss * count over the batch's steps in double. Call it between batches (the open batch
  // must have all its steps). One read of each series (robust::DeviceSeries::read).
  std::vector<BatchResult> read_new_batches();
  int64_t samples() const { return samples_; }  // samples of every recorded step: known without a read
  void clear();                                  // a new epoch

  // A step captured into a CUDA graph (runtime::CudaGraph) runs nothing at capture, and each
  // replay rewrites the same tensors; so while capturing, record() keeps the step's tensors
  // (what the graph writes) instead of copying them, and after every replay
  // record_captured() records them as the step's own.
  struct Captured {
    Tensor mean_loss, correct;
    int64_t count = 0;
  };
  void begin_capture();
  std::vector<Captured> end_capture();
  void record_captured(const std::vector<Captured>& steps);

 private:
  struct Batch {
    int64_t index = 0, first_step = 0;
  };
  DeviceSeries loss_{DType::f32}, correct_{DType::f32};
  std::vector<int64_t> step_counts_;  // per recorded step
  std::vector<Batch> batches_;
  size_t batches_read_ = 0;
  int64_t samples_ = 0;
  bool capturing_ = false;
  std::vector<Captured> captured_;
};

}  // namespace bulwark::robust
