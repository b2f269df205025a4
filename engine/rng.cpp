#include "engine/rng.h"

#include <fmt/format.h>

#include <numeric>
#include <stdexcept>

#include "kernels/common/philox.h"

namespace bulwark {

uint64_t Generator::reserve(uint64_t counters) {
  const uint64_t start = offset_;
  offset_ += counters;
  return start;
}

uint64_t uniform_counters(int64_t numel) { return philox::counters_for(static_cast<uint64_t>(numel)); }
uint64_t normal_counters(int64_t numel) { return (static_cast<uint64_t>(numel) + 1) / 2; }

namespace {
constexpr int64_t kParallelMin = 1 << 16;

// Fills a fresh tensor of `dtype` with value(i) for each flat index i.
template <class Value>
Tensor fill_by_index(const Shape& shape, DType dtype, const char* op, Value value) {
  Tensor out = Tensor::empty(shape, dtype);
  const int64_t n = out.numel();
  auto write = [&](auto* p) {
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<std::remove_pointer_t<decltype(p)>>(value(i));
  };
  switch (dtype) {
    case DType::f32: write(out.data<float>()); break;
    case DType::f64: write(out.data<double>()); break;
    case DType::i32: throw std::invalid_argument(fmt::format("{}: needs a floating-point dtype, got i32", op));
  }
  return out;
}
}  // namespace

Tensor rand_uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dtype) {
  if (!(lo <= hi)) throw std::invalid_argument(fmt::format("rand_uniform: empty range [{}, {})", lo, hi));
  const uint64_t seed = gen.seed();
  const uint64_t offset = gen.reserve(uniform_counters(shape_numel(shape)));
  return fill_by_index(shape, dtype, "rand_uniform", [=](int64_t i) {
    return lo + (hi - lo) * static_cast<double>(philox::uniform(seed, offset, static_cast<uint64_t>(i)));
  });
}

Tensor rand_normal(const Shape& shape, double mean, double stddev, Generator& gen, DType dtype) {
  if (!(stddev >= 0)) throw std::invalid_argument(fmt::format("rand_normal: standard deviation {} < 0", stddev));
  const uint64_t seed = gen.seed();
  const uint64_t offset = gen.reserve(normal_counters(shape_numel(shape)));
  return fill_by_index(shape, dtype, "rand_normal", [=](int64_t i) {
    return mean + stddev * static_cast<double>(philox::normal(seed, offset, static_cast<uint64_t>(i)));
  });
}

std::vector<int64_t> randperm(int64_t n, Generator& gen) {
  if (n < 0) throw std::invalid_argument(fmt::format("randperm: negative length {}", n));
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (n < 2) return perm;
  const uint64_t seed = gen.seed();
  const uint64_t offset = gen.reserve(philox::counters_for(static_cast<uint64_t>(n - 1)));
  // Step s swaps position i = n-1-s with j uniform in [0, i], using word s of the stream.
  for (int64_t s = 0; s < n - 1; ++s) {
    const int64_t i = n - 1 - s;
    const uint64_t w = philox::word(seed, offset, static_cast<uint64_t>(s));
    const auto j = static_cast<int64_t>((w * static_cast<uint64_t>(i + 1)) >> 32);
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

}  // namespace bulwark
