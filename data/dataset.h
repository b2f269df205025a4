#pragma once
// A dataset in memory: images as float NCHW in [0, 1] plus int32 labels, in plain vectors so
// data/ does not depend on the engine. The per-channel mean/stdev travel with the data because
// the model normalises its input with them ((x - mean) / stdev, inside the model, so attacks and
// eps-balls stay in [0, 1] pixel space).
#include <cstdint>
#include <string>
#include <vector>

namespace bulwark::data {

struct Dataset {
  std::string name;  // "mnist/train", "cifar10/test", "synthetic/train", ...
  int64_t n = 0;
  int c = 0, h = 0, w = 0;
  int num_classes = 0;
  std::vector<float> images;    // n*c*h*w, NCHW, values in [0, 1]
  std::vector<int32_t> labels;  // n, each in [0, num_classes)
  std::vector<float> mean, stdev;  // c each

  int64_t sample_size() const { return int64_t{c} * h * w; }
  const float* image(int64_t i) const { return images.data() + i * sample_size(); }

  // Samples [first, first + count), with the same stats and name + "[first:first+count]".
  // Throws std::out_of_range when the range does not fit.
  Dataset slice(int64_t first, int64_t count) const;

  // Throws std::logic_error when shapes, buffer sizes or label ranges disagree.
  void check() const;
};

// Per-channel mean and (population) standard deviation of `d.images`, accumulated in double.
void compute_channel_stats(const Dataset& d, std::vector<float>& mean, std::vector<float>& stdev);

// Published training-set statistics, the values the usual PyTorch recipes normalise with.
namespace stats {
inline const std::vector<float> kMnistMean{0.1307f}, kMnistStd{0.3081f};
inline const std::vector<float> kFashionMnistMean{0.2860f}, kFashionMnistStd{0.3530f};
inline const std::vector<float> kCifar10Mean{0.4914f, 0.4822f, 0.4465f};
inline const std::vector<float> kCifar10Std{0.2471f, 0.2435f, 0.2616f};
inline const std::vector<float> kCifar100Mean{0.5071f, 0.4865f, 0.4409f};
inline const std::vector<float> kCifar100Std{0.2673f, 0.2564f, 0.2762f};
}  // namespace stats

}  // namespace bulwark::data
