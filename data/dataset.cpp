#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace bulwark::data {

Dataset Dataset::slice(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first + count > n)
    throw std::out_of_range(fmt::format("{}: slice [{}, {}) is outside the {} samples", name, first,
                                        first + count, n));
  Dataset out;
  out.name = fmt::format("{}[{}:{}]", name, first, first + count);
  out.n = count;
  out.c = c;
  out.h = h;
  out.w = w;
  out.num_classes = num_classes;
  out.images.assign(images.begin() + first * sample_size(), images.begin() + (first + count) * sample_size());
  out.labels.assign(labels.begin() + first, labels.begin() + first + count);
  out.mean = mean;
  out.stdev = stdev;
  return out;
}

void Dataset::check() const {
  if (n < 0 || c <= 0 || h <= 0 || w <= 0 || num_classes <= 0)
    throw std::logic_error(fmt::format("{}: bad shape n={} c={} h={} w={} classes={}", name, n, c, h, w,
                                       num_classes));
  if (static_cast<int64_t>(images.size()) != n * sample_size() || static_cast<int64_t>(labels.size()) != n)
    throw std::logic_error(fmt::format("{}: {} image values and {} labels for {} samples of {}x{}x{}", name,
                                       images.size(), labels.size(), n, c, h, w));
  if (static_cast<int>(mean.size()) != c || static_cast<int>(stdev.size()) != c)
    throw std::logic_error(fmt::format("{}: stats have {} means and {} stdevs for {} channels", name,
                                       mean.size(), stdev.size(), c));
  for (int64_t i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      throw std::logic_error(fmt::format("{}: label {} of sample {} is outside 0..{}", name, labels[i], i,
                                         num_classes - 1));
}

void compute_channel_stats(const Dataset& d, std::vector<float>& mean, std::vector<float>& stdev) {
  const int64_t plane = int64_t{d.h} * d.w;
  std::vector<double> sum(d.c, 0.0), sum_sq(d.c, 0.0);
  for (int64_t i = 0; i < d.n; ++i)
    for (int ch = 0; ch < d.c; ++ch) {
      const float* p = d.image(i) + ch * plane;
      // Per-plane float partial sums keep the inner loop vectorisable; double across planes
      // keeps the total exact enough for 50,000 images.
      float s = 0.0f, s2 = 0.0f;
      for (int64_t k = 0; k < plane; ++k) {
        s += p[k];
        s2 += p[k] * p[k];
      }
      sum[ch] += s;
      sum_sq[ch] += s2;
    }
  const double count = static_cast<double>(d.n * plane);
  mean.assign(d.c, 0.0f);
  stdev.assign(d.c, 0.0f);
  if (count == 0) return;
  for (int ch = 0; ch < d.c; ++ch) {
    const double m = sum[ch] / count;
    mean[ch] = static_cast<float>(m);
    stdev[ch] = static_cast<float>(std::sqrt(std::max(0.0, sum_sq[ch] / count - m * m)));
  }
}

}  // namespace bulwark::data
