#pragma once
// What a run shows while it trains:
//   - a per-batch progress bar on stderr (epoch, batch i/n, running loss and accuracy, images/s,
//     the epoch's ETA), redrawn in place with \r, only when stderr is a terminal;
//   - a per-epoch table on stdout: epoch | loss | train acc | val acc | lr | time | img/s;
//   - info lines (what was chosen and why) on stdout.
// quiet turns all three off; errors are the CLI's business and still reach stderr.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "training/metrics.h"

namespace bulwark::training {

class Progress {
 public:
  explicit Progress(bool quiet);

  void info(const std::string& line);
  void start_epoch(int64_t epoch, int64_t epochs, int64_t batches);
  // After each batch: batches done in this epoch, and the running sums of the epoch so far.
  void batch(int64_t done, double loss, double acc, double images_per_s);
  // Whether the bar is shown and due for a redraw after `done` batches: `min_seconds` have passed
  // since the last one, or the epoch is complete. The trainer on CUDA reads the epoch's sums
  // from the device only then (each read makes the host wait).
  bool due(int64_t done, double min_seconds) const;
  // Clears the bar and prints the epoch's table row (the header before the first row).
  void end_epoch(const EpochMetrics& m, int64_t epochs);

 private:
  void clear_bar();

  bool quiet_, bar_;
  bool header_printed_ = false;
  bool bar_drawn_ = false;
  int64_t epoch_ = 0, epochs_ = 0, batches_ = 0;
  std::chrono::steady_clock::time_point epoch_start_, last_draw_;
};

// "1:05", "12:03:07": durations for humans.
std::string format_duration(double seconds);

}  // namespace bulwark::training
