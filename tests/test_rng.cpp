// The seeded Philox generator: (seed, offset) determines every draw, offsets advance by the
// counters consumed, and the distributions are what they claim.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>

#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/common/philox.h"

using namespace bulwark;

TEST_CASE("rand_uniform is philox::uniform scaled and advances the offset by the counters used", "[rng]") {
  Generator gen(42);
  gen.set_offset(5);
  const std::vector<double> v = rand_uniform({10}, -2.0, 3.0, gen, DType::f64).to_vector_f64();
  CHECK(gen.offset() == 5 + 3);  // 10 words = 3 counters of 4 words
  for (size_t i = 0; i < v.size(); ++i)
    CHECK(v[i] == -2.0 + 5.0 * static_cast<double>(philox::uniform(42, 5, i)));
  rand_normal({5}, 0, 1, gen);
  CHECK(gen.offset() == 8 + 3);  // Box-Muller: 2 words per value
  randperm(9, gen);
  CHECK(gen.offset() == 11 + 2);  // 8 swaps
}

TEST_CASE("seed and offset determine the draws and consecutive draws continue one stream", "[rng]") {
  Generator a(7), b(7), c(8);
  const Tensor first = rand_uniform({8}, 0, 1, a);
  const Tensor second = rand_uniform({8}, 0, 1, a);
  const Tensor both = rand_uniform({16}, 0, 1, b);  // 8 values = 2 whole counters, so they line up
  CHECK(max_abs_diff(both.slice(0, 0, 8), first) == 0);
  CHECK(max_abs_diff(both.slice(0, 8, 16), second) == 0);
  CHECK(max_abs_diff(rand_uniform({8}, 0, 1, c), first) > 0);

  a.set_offset(0);  // what a resumed trainer does with the offset from its checkpoint
  CHECK(max_abs_diff(rand_uniform({8}, 0, 1, a), first) == 0);
  a.set_offset(17);
  const Tensor n1 = rand_normal({3, 5}, 1, 2, a, DType::f64);
  a.set_offset(17);
  CHECK(max_abs_diff(rand_normal({3, 5}, 1, 2, a, DType::f64), n1) == 0);
  a.set_offset(3);
  const std::vector<int64_t> p1 = randperm(50, a);
  a.set_offset(3);
  CHECK(randperm(50, a) == p1);
}

TEST_CASE("uniform and normal draws have the requested range and moments", "[rng]") {
  Generator gen(1);
  const int64_t n = 200000;
  const std::vector<float> u = rand_uniform({n}, -1.0, 3.0, gen).to_vector();
  CHECK(*std::min_element(u.begin(), u.end()) >= -1.0f);
  CHECK(*std::max_element(u.begin(), u.end()) < 3.0f);
  double mean = 0, var = 0;
  for (float v : u) mean += v / static_cast<double>(n);
  for (float v : u) var += (v - mean) * (v - mean) / static_cast<double>(n);
  CHECK(mean == Approx(1.0).margin(0.02));        // (lo + hi) / 2; standard error 0.0026
  CHECK(var == Approx(16.0 / 12.0).epsilon(0.02));  // (hi - lo)^2 / 12

  const std::vector<double> z = rand_normal({n}, 0.5, 2.0, gen, DType::f64).to_vector_f64();
  double zm = 0, zv = 0, beyond3 = 0;
  for (double v : z) zm += v / static_cast<double>(n);
  for (double v : z) {
    zv += (v - zm) * (v - zm) / static_cast<double>(n);
    beyond3 += std::abs(v - 0.5) > 6.0 ? 1 : 0;
  }
  CHECK(zm == Approx(0.5).margin(0.02));  // standard error 0.0045
  CHECK(zv == Approx(4.0).epsilon(0.02));
  CHECK(beyond3 / static_cast<double>(n) == Approx(0.0027).margin(0.001));  // P(|Z| > 3)
}

TEST_CASE("randperm gives uniformly distributed permutations", "[rng]") {
  Generator gen(3);
  for (int64_t n : {0, 1, 2, 17, 1000}) {
    std::vector<int64_t> p = randperm(n, gen);
    std::sort(p.begin(), p.end());
    for (int64_t i = 0; i < n; ++i) CHECK(p[i] == i);
  }
  std::map<std::vector<int64_t>, int> counts;  // 6 permutations of 3, 6000 draws: 1000 expected each
  for (int i = 0; i < 6000; ++i) counts[randperm(3, gen)]++;
  CHECK(counts.size() == 6);
  for (const auto& [perm, count] : counts) CHECK(std::abs(count - 1000) < 150);  // ~5 standard deviations
  CHECK_THROWS_WITH(randperm(-1, gen), Catch::Matchers::Contains("negative"));
}

TEST_CASE("random tensors reject what cannot be drawn", "[rng]") {
  Generator gen(0);
  CHECK_THROWS_WITH(rand_uniform({2}, 0, 1, gen, DType::i32), Catch::Matchers::Contains("floating-point"));
  CHECK_THROWS_WITH(rand_uniform({2}, 1, 0, gen), Catch::Matchers::Contains("empty range"));
  CHECK_THROWS_WITH(rand_normal({2}, 0, -1, gen), Catch::Matchers::Contains("< 0"));
}
