#include "training/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>

namespace bulwark::training {

namespace {
constexpr double kRedrawSeconds = 0.1;  // the bar redraws at most this often
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

Progress::Progress(bool quiet) : quiet_(quiet), bar_(!quiet && isatty(STDERR_FILENO)) {}

void Progress::info(const std::string& line) {
  if (quiet_) return;
  clear_bar();
  fmt::print("{}\n", line);
  std::fflush(stdout);
}

void Progress::start_epoch(int64_t epoch, int64_t epochs, int64_t batches) {
  epoch_ = epoch;
  epochs_ = epochs;
  batches_ = batches;
  epoch_start_ = last_draw_ = std::chrono::steady_clock::now();
}

void Progress::batch(int64_t done, double loss, double acc, double images_per_s) {
  if (!bar_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < batches_ && std::chrono::duration<double>(now - last_draw_).count() < kRedrawSeconds) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - epoch_start_).count();
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(batches_ - done) : 0;
  constexpr int kWidth = 24;
  const int filled = batches_ > 0 ? static_cast<int>(kWidth * done / batches_) : 0;
  fmt::print(stderr, "\r\033[Kepoch {}/{} [{}{}] {}/{}  loss {:.4f}  acc {:.2f}%  {:.0f} img/s  ETA {}", epoch_ + 1,
             epochs_, std::string(filled, '#'), std::string(kWidth - filled, '.'), done, batches_, loss, 100 * acc,
             images_per_s, format_duration(eta));
  std::fflush(stderr);
  bar_drawn_ = true;
}

bool Progress::due(int64_t done, double min_seconds) const {
  if (!bar_) return false;
  const double since_draw = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_draw_).count();
  return done >= batches_ || since_draw >= min_seconds;
}

void Progress::clear_bar() {
  if (!bar_drawn_) return;
  fmt::print(stderr, "\r\033[K");
  std::fflush(stderr);
  bar_drawn_ = false;
}

void Progress::end_epoch(const EpochMetrics& m, int64_t epochs) {
  if (quiet_) return;
  clear_bar();
  // The robust columns: PGD accuracy on the validation subset, and the attack steps / replays r
  // of methods that adapt them (DEAT, M+); "-" where a run does not measure them.
  const auto r = m.extra.find("r");
  if (!header_printed_) {
    fmt::print("{:>7} | {:>7} | {:>9} | {:>7} | {:>7} | {:>9} | {:>3} | {:>7} | {:>7}\n", "epoch", "loss", "train acc",
               "val acc", "val PGD", "lr", "r", "time", "img/s");
    fmt::print("{:-<7}-+-{:-<7}-+-{:-<9}-+-{:-<7}-+-{:-<7}-+-{:-<9}-+-{:-<3}-+-{:-<7}-+-{:-<7}\n", "", "", "", "", "", "",
               "", "", "");
    header_printed_ = true;
  }
  fmt::print("{:>7} | {:>7.4f} | {:>8.2f}% | {:>6.2f}% | {:>7} | {:>9.3e} | {:>3} | {:>7} | {:>7.0f}\n",
             fmt::format("{}/{}", m.epoch, epochs), m.train_loss, 100 * m.train_acc, 100 * m.val_acc,
             m.robust_val_acc < 0 ? std::string("-") : fmt::format("{:.2f}%", 100 * m.robust_val_acc), m.lr,
             r == m.extra.end() ? std::string("-") : fmt::format("{:.0f}", r->second),
             m.seconds < 60 ? fmt::format("{:.1f}s", m.seconds) : format_duration(m.seconds), m.images_per_s);
  std::fflush(stdout);
}

}  // namespace bulwark::training
