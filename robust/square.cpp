// The Square attack, L-inf: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a
// query-efficient black-box adversarial attack via random search", ECCV 2020
// (arXiv:1912.00049). AutoAttack runs it last, as the attack gradient masking cannot fool.
//
// The idea. A gradient attack trusts grad_x L; a model that rounds its input, saturates, or
// otherwise hides its gradient leaves PGD stepping on zeros while the model is as breakable as
// ever. Square asks only for the logits (score-based, black-box) and does a random search:
// propose a change, keep it when the loss went down. What makes it efficient is the shape of
// the proposals: every coordinate of the perturbation sits at a corner of the L-inf ball
// (+eps or -eps), and a proposal rewrites a square window with one sign per channel, large at
// first and shrinking as the search goes on (the paper's analysis: such updates move the logits
// of convolutional models most per query).
//
// The loss is the margin m(x') = z_y(x') - max_{j != y} z_j(x') (cw_margin with its sign
// flipped), minimised; a sample is broken once m < 0, and then leaves the search.
//
//   start    vertical stripes: x0 = clip_[0,1](x + eps * s_{c,col}), one fair sign per
//            column of every channel (query 0: one forward of the whole batch)
//   iter i   (i = 0 .. queries - 2, query i + 1), for every sample still standing:
//            p = square_p(p_init, i, queries); side s = round(sqrt(p h w)) in [1, min(h,w) - 1];
//            a window s x s with its corner uniform in [0, h-s] x [0, w-s] and one sign per
//            channel; the candidate is x_best with the window set to clip_[0,1](x + sign_c eps);
//            one forward of all candidates; accept per sample where the margin decreased.
//
// Every value is x or clip_[0,1](x +- eps), so the ball and [0,1] hold by construction.
//
// p schedule (the paper's, for 10,000 queries): p_init until iteration 10, then halved after
// iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (p_init / 512 at the end).
// For another budget the iteration is rescaled first, i -> floor(i * 10000 / queries), as the
// authors' code does. p_init defaults to 0.8, AutoAttack's value and the paper's on MNIST.
//
// One departure, for a fixed number of random draws: when a proposal would change nothing (the
// window already holds those signs), the paper draws the signs again until it does; here one
// extra draw picks one of the other 2^C - 1 sign patterns uniformly, which is the same law.
//
// Randomness and the two backends. The draws are made on the host from the Philox stream
// (seed, offset) of the options, laid out per restart as
//     [ stripes: uniform_counters(N * C * W) ][ iter 0: uniform_counters(N * (C + 3)) ][ iter 1 ] ...
// with N the whole batch: sample k reads its own row of each block (row, column, C signs, the
// spare pattern), so its search does not depend on which other samples are still standing, and
// restart r begins r * square_counters(...) after the offset. The search state lives on the
// host; each query uploads the candidates of the standing samples and reads back their margins
// (one forward, one small copy back). The CPU and the CUDA backend therefore propose the same
// candidates, and agree wherever their logits agree to rounding.
//
// Restarts: restart r > 0 starts from fresh stripes on the samples not yet broken and keeps,
// per sample, the lower margin of its best so far and the new run's (a broken sample is final).
#include "robust/square.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace bulwark {

namespace {

// Draws per sample per iteration besides the C channel signs: window row, window column, and
// the spare sign pattern used when the first one changes nothing.
constexpr int64_t kWindowDraws = 3;
// The spare pattern flips at most this many channels' signs (2^20 patterns; images have 1 or 3).
constexpr int64_t kMaxPatternChannels = 20;

struct Geometry {
  int64_t n, c, h, w;
  int64_t size() const { return c * h * w; }
  int64_t draws_per_sample() const { return c + kWindowDraws; }
};

Geometry geometry_of(const Shape& shape) {
  if (shape.size() != 4)
    throw std::invalid_argument(fmt::format("Square attack: x must be images [N, C, H, W], got {} dims", shape.size()));
  return {shape[0], shape[1], shape[2], shape[3]};
}

uint64_t stripe_counters(const Geometry& g) { return uniform_counters(g.n * g.c * g.w); }
uint64_t iteration_counters(const Geometry& g) { return uniform_counters(g.n * g.draws_per_sample()); }

std::vector<double> draws_at(uint64_t seed, uint64_t offset, int64_t count) {
  Generator gen(seed);
  gen.set_offset(offset);
  return rand_uniform({count}, 0.0, 1.0, gen, DType::f64).to_vector_f64();
}

// The whole problem on the host: clean images, labels, the eps-ball's two corners per value.
struct Problem {
  Module& model;
  Geometry g;
  std::vector<float> x;
  std::vector<int32_t> labels;
  float eps;
  DType dtype;
  Device device;
  uint64_t seed;

  float corner(int64_t index, bool negative) const {
    return std::clamp(x[index] + (negative ? -eps : eps), 0.0f, 1.0f);
  }
};

// m = z_y - max_{j != y} z_j of `images` (rows `rows` of the batch), one forward.
std::vector<double> margins(const Problem& p, const std::vector<int64_t>& rows, const std::vector<float>& images,
                            AttackStats& stats) {
  NoGradGuard no_grad;
  const int64_t m = static_cast<int64_t>(rows.size());
  std::vector<int32_t> labels;
  for (int64_t i : rows) labels.push_back(p.labels[i]);
  const Tensor xt = Tensor::from_vector(images, {m, p.g.c, p.g.h, p.g.w}).to(p.dtype).to(p.device);
  const Tensor yt = Tensor::from_vector(labels, {m}).to(p.device);
  std::vector<double> margin = cw_margin(p.model.forward(xt), yt).to_vector_f64();
  stats.count_forward(m);
  for (double& v : margin) v = -v;
  return margin;
}

// Rewrites the window of `image` (sample `row`) with one sign per channel, from the sample's
// draws u = [row, column, sign_0 .. sign_{C-1}, spare pattern].
void propose(const Problem& p, int64_t row, int64_t side, const double* u, float* image) {
  const Geometry& g = p.g;
  const int64_t top = std::min<int64_t>(static_cast<int64_t>(u[0] * static_cast<double>(g.h - side + 1)), g.h - side);
  const int64_t left = std::min<int64_t>(static_cast<int64_t>(u[1] * static_cast<double>(g.w - side + 1)), g.w - side);
  std::vector<bool> negative(static_cast<size_t>(g.c));
  for (int64_t ch = 0; ch < g.c; ++ch) negative[ch] = u[2 + ch] < 0.5;

  const int64_t base = row * g.size();
  auto window_is = [&](const std::vector<bool>& signs) {
    for (int64_t ch = 0; ch < g.c; ++ch)
      for (int64_t r = top; r < top + side; ++r)
        for (int64_t col = left; col < left + side; ++col) {
          const int64_t k = (ch * g.h + r) * g.w + col;
          if (image[k] != p.corner(base + k, signs[ch])) return false;
        }
    return true;
  };
  if (window_is(negative)) {
    // One of the 2^C' - 1 other patterns of the first C' channels, uniformly.
    const int64_t channels = std::min(g.c, kMaxPatternChannels);
    const uint64_t others = (uint64_t{1} << channels) - 1;
    const uint64_t flip = 1 + std::min<uint64_t>(static_cast<uint64_t>(u[2 + g.c] * static_cast<double>(others)), others - 1);
    for (int64_t ch = 0; ch < channels; ++ch)
      if ((flip >> ch) & 1) negative[ch] = !negative[ch];
  }
  for (int64_t ch = 0; ch < g.c; ++ch)
    for (int64_t r = top; r < top + side; ++r)
      for (int64_t col = left; col < left + side; ++col) {
        const int64_t k = (ch * g.h + r) * g.w + col;
        image[k] = p.corner(base + k, negative[ch]);
      }
}

// The best example and margin of each of `rows` after one run of the search.
struct Run {
  std::vector<float> images;  // rows.size() samples
  std::vector<double> margin;
};

Run search(const Problem& p, const AttackOptions& o, const std::vector<int64_t>& rows, uint64_t offset,
           AttackStats& stats) {
  const Geometry& g = p.g;
  const int64_t d = g.size(), m = static_cast<int64_t>(rows.size());
  Run run;
  run.images.resize(static_cast<size_t>(m * d));

  const std::vector<double> stripes = draws_at(p.seed, offset, g.n * g.c * g.w);
  for (int64_t k = 0; k < m; ++k)
    for (int64_t ch = 0; ch < g.c; ++ch)
      for (int64_t r = 0; r < g.h; ++r)
        for (int64_t col = 0; col < g.w; ++col) {
          const int64_t e = (ch * g.h + r) * g.w + col;
          run.images[k * d + e] = p.corner(rows[k] * d + e, stripes[(rows[k] * g.c + ch) * g.w + col] < 0.5);
        }
  run.margin = margins(p, rows, run.images, stats);

  offset += stripe_counters(g);
  for (int64_t it = 0; it + 1 < o.queries; ++it, offset += iteration_counters(g)) {
    std::vector<int64_t> standing;  // indices into rows
    for (int64_t k = 0; k < m; ++k)
      if (run.margin[k] >= 0) standing.push_back(k);
    if (standing.empty()) break;

    const int64_t side = square_side(square_p(o.p_init, it, o.queries), g.h, g.w);
    const std::vector<double> u = draws_at(p.seed, offset, g.n * g.draws_per_sample());
    std::vector<int64_t> candidate_rows;
    std::vector<float> candidates(standing.size() * static_cast<size_t>(d));
    for (size_t j = 0; j < standing.size(); ++j) {
      const int64_t k = standing[j], row = rows[k];
      candidate_rows.push_back(row);
      float* image = candidates.data() + j * d;
      std::copy_n(run.images.data() + k * d, d, image);
      propose(p, row, side, u.data() + row * g.draws_per_sample(), image);
    }
    const std::vector<double> margin = margins(p, candidate_rows, candidates, stats);
    for (size_t j = 0; j < standing.size(); ++j) {
      const int64_t k = standing[j];
      if (margin[j] >= run.margin[k]) continue;
      run.margin[k] = margin[j];
      std::copy_n(candidates.data() + j * d, d, run.images.data() + k * d);
    }
  }
  return run;
}

}  // namespace

double square_p(double p_init, int64_t iteration, int64_t queries) {
  // floor(i * 10000 / queries) in integers, as the authors' int(i / n_iters * 10000).
  const int64_t i = queries > 0 ? iteration * 10000 / queries : iteration;
  static constexpr int64_t kBreakpoints[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  double p = p_init;
  for (int64_t b : kBreakpoints)
    if (i > b) p /= 2;
  return p;
}

int64_t square_side(double p, int64_t height, int64_t width) {
  const int64_t side = std::llround(std::sqrt(p * static_cast<double>(height * width)));
  return std::clamp<int64_t>(side, 1, std::max<int64_t>(1, std::min(height, width) - 1));
}

uint64_t square_counters(const AttackOptions& o, const Shape& shape) {
  const Geometry g = geometry_of(shape);
  return stripe_counters(g) + static_cast<uint64_t>(std::max(o.queries - 1, 0)) * iteration_counters(g);
}

Tensor square_attack(Module& model, const Tensor& x_in, const Tensor& y, const AttackOptions& o, AttackStats& stats) {
  const Tensor x = x_in.detach().contiguous();
  Problem p{model, geometry_of(x.shape()), x.to_vector(), y.to_vector_i32(), static_cast<float>(o.eps), x.dtype(),
            x.device(), o.seed};
  const int64_t d = p.g.size();
  std::vector<float> best(p.x.size());
  std::vector<double> best_margin(static_cast<size_t>(p.g.n));
  std::vector<int64_t> standing(static_cast<size_t>(p.g.n));
  for (int64_t i = 0; i < p.g.n; ++i) standing[i] = i;
  const uint64_t per_restart = square_counters(o, x.shape());
  for (int restart = 0; restart < o.restarts && !standing.empty(); ++restart) {
    const Run run = search(p, o, standing, o.offset + static_cast<uint64_t>(restart) * per_restart, stats);
    std::vector<int64_t> still;
    for (size_t k = 0; k < standing.size(); ++k) {
      const int64_t i = standing[k];
      if (restart == 0 || run.margin[k] < best_margin[i]) {
        best_margin[i] = run.margin[k];
        std::copy_n(run.images.data() + k * d, d, best.data() + i * d);
      }
      if (best_margin[i] >= 0) still.push_back(i);
    }
    standing = std::move(still);
  }
  return Tensor::from_vector(best, x.shape()).to(x.dtype()).to(x.device());
}

}  // namespace bulwark
