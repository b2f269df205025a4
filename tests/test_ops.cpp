// Every op of engine/ops.h and the view ops of engine/tensor.h, through one harness
// (tests/op_harness.h): forward f32/f64 against a plain f64 reference written here with index
// loops, gradcheck in f64, double backward where the trainers need it, and the emulated CUDA
// backend against the CPU backend (so the tables are [cuda] tests too, with rows at the CUDA
// kernels' awkward sizes). Adding an op means adding lines to a table below.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/conv_direct.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/emu/execution.h"
#include "tests/op_harness.h"

using namespace bulwark;
using namespace bulwark::test;

namespace {

using Refs = std::vector<RT>;
using Idx = std::vector<int64_t>;

// ---- reference helpers: plain index loops, nothing from the engine's kernels ------------------

Shape broadcast(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i + a.size() < n ? 1 : a[i + a.size() - n];
    const int64_t db = i + b.size() < n ? 1 : b[i + b.size() - n];
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// The element of `t` that broadcasting maps to output index `out`.
double bget(const RT& t, const Idx& out) {
  const size_t lead = out.size() - t.shape.size();
  int64_t f = 0;
  for (size_t d = 0; d < t.shape.size(); ++d) f = f * t.shape[d] + (t.shape[d] == 1 ? 0 : out[lead + d]);
  return t.v[f];
}

template <class F>
RT map1(const RT& a, F f) {
  RT r(a.shape);
  for (int64_t i = 0; i < a.numel(); ++i) r.v[i] = f(a.v[i]);
  return r;
}

template <class F>
RT map2(const RT& a, const RT& b, F f) {
  RT r(broadcast(a.shape, b.shape));
  for (int64_t i = 0; i < r.numel(); ++i) {
    const Idx idx = unravel(i, r.shape);
    r.v[i] = f(bget(a, idx), bget(b, idx));
  }
  return r;
}

template <class F>
RT map3(const RT& a, const RT& b, const RT& c, F f) {
  RT r(broadcast(broadcast(a.shape, b.shape), c.shape));
  for (int64_t i = 0; i < r.numel(); ++i) {
    const Idx idx = unravel(i, r.shape);
    r.v[i] = f(bget(a, idx), bget(b, idx), bget(c, idx));
  }
  return r;
}

Idx norm_dims(Idx dims, int64_t nd) {
  for (int64_t& d : dims) d = d < 0 ? d + nd : d;
  return dims;
}
bool has(const Idx& dims, int64_t d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); }

// Output shape of a reduction, and where input index `idx` lands in it.
Shape reduced_shape(const Shape& s, const Idx& dims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) {
    if (!has(dims, d)) out.push_back(s[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}
Idx reduced_index(const Idx& idx, const Idx& dims, bool keepdim) {
  Idx out;
  for (int64_t d = 0; d < static_cast<int64_t>(idx.size()); ++d) {
    if (!has(dims, d)) out.push_back(idx[d]);
    else if (keepdim) out.push_back(0);
  }
  return out;
}

RT ref_sum(const RT& a, Idx dims, bool keepdim, bool mean = false) {
  dims = norm_dims(dims, a.dim());
  RT r(reduced_shape(a.shape, dims, keepdim));
  int64_t count = 1;
  for (int64_t d : dims) count *= a.shape[d];
  for (int64_t i = 0; i < a.numel(); ++i) r[reduced_index(unravel(i, a.shape), dims, keepdim)] += a.v[i];
  if (mean)
    for (double& x : r.v) x /= static_cast<double>(count);
  return r;
}
Idx all_dims(const RT& a) {
  Idx d(a.dim());
  for (int64_t i = 0; i < a.dim(); ++i) d[i] = i;
  return d;
}

// Max (or its index) along one dim.
RT ref_max(const RT& a, int64_t dim, bool keepdim, bool want_index) {
  dim = dim < 0 ? dim + a.dim() : dim;
  RT best(reduced_shape(a.shape, {dim}, keepdim), -std::numeric_limits<double>::infinity());
  RT at(best.shape, -1);
  for (int64_t i = 0; i < a.numel(); ++i) {
    const Idx idx = unravel(i, a.shape);
    const Idx o = reduced_index(idx, {dim}, keepdim);
    if (a.v[i] > best[o]) {
      best[o] = a.v[i];
      at[o] = static_cast<double>(idx[dim]);
    }
  }
  return want_index ? at : best;
}

RT ref_permute(const RT& a, const Idx& perm) {
  Shape s(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) s[i] = a.shape[perm[i]];
  RT r(s);
  for (int64_t i = 0; i < r.numel(); ++i) {
    const Idx o = unravel(i, s);
    Idx src(perm.size());
    for (size_t k = 0; k < perm.size(); ++k) src[perm[k]] = o[k];
    r.v[i] = a[src];
  }
  return r;
}

RT ref_reshape(const RT& a, const Shape& s) {
  RT r = a;
  r.shape = s;
  return r;
}

RT ref_matmul(const RT& a, const RT& b) {
  const int64_t M = a.shape[0], K = a.shape[1], N = b.shape[1];
  RT r({M, N});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) r[{i, j}] += a[{i, k}] * b[{k, j}];
  return r;
}

RT ref_linear(const RT& x, const RT& w, const RT* b) {
  RT r({x.shape[0], w.shape[0]});
  for (int64_t i = 0; i < x.shape[0]; ++i)
    for (int64_t o = 0; o < w.shape[0]; ++o) {
      double acc = b ? b->v[o] : 0.0;
      for (int64_t k = 0; k < x.shape[1]; ++k) acc += x[{i, k}] * w[{o, k}];
      r[{i, o}] = acc;
    }
  return r;
}

// ---- convolution references ---------------------------------------------------------------------

struct ConvGeom {
  int64_t n, c, h, w, o, kh, kw, stride, pad, oh, ow;
};
ConvGeom geom(const Shape& x, const Shape& w, int64_t stride, int64_t pad) {
  ConvGeom g{x[0], x[1], x[2], x[3], w[0], w[2], w[3], stride, pad, 0, 0};
  g.oh = conv_output_size(g.h, g.kh, stride, pad);
  g.ow = conv_output_size(g.w, g.kw, stride, pad);
  return g;
}

// Calls f(n, o, oy, ox, c, iy, ix, ki, kj) for every (output, tap) pair that reads a real input.
template <class F>
void for_conv_taps(const ConvGeom& g, F f) {
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t oy = 0; oy < g.oh; ++oy)
        for (int64_t ox = 0; ox < g.ow; ++ox)
          for (int64_t c = 0; c < g.c; ++c)
            for (int64_t ki = 0; ki < g.kh; ++ki)
              for (int64_t kj = 0; kj < g.kw; ++kj) {
                const int64_t iy = oy * g.stride - g.pad + ki, ix = ox * g.stride - g.pad + kj;
                if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) f(n, o, oy, ox, c, iy, ix, ki, kj);
              }
}

RT ref_conv2d(const RT& x, const RT& w, const RT* b, int64_t stride, int64_t pad) {
  const ConvGeom g = geom(x.shape, w.shape, stride, pad);
  RT y({g.n, g.o, g.oh, g.ow});
  for_conv_taps(g, [&](int64_t n, int64_t o, int64_t oy, int64_t ox, int64_t c, int64_t iy, int64_t ix, int64_t ki, int64_t kj) {
    y[{n, o, oy, ox}] += x[{n, c, iy, ix}] * w[{o, c, ki, kj}];
  });
  if (b)
    for (int64_t i = 0; i < y.numel(); ++i) y.v[i] += b->v[unravel(i, y.shape)[1]];
  return y;
}

RT ref_conv2d_backward_input(const RT& gy, const RT& w, const Shape& xs, int64_t stride, int64_t pad) {
  const ConvGeom g = geom(xs, w.shape, stride, pad);
  RT dx(xs);
  for_conv_taps(g, [&](int64_t n, int64_t o, int64_t oy, int64_t ox, int64_t c, int64_t iy, int64_t ix, int64_t ki, int64_t kj) {
    dx[{n, c, iy, ix}] += gy[{n, o, oy, ox}] * w[{o, c, ki, kj}];
  });
  return dx;
}

RT ref_conv2d_backward_weight(const RT& x, const RT& gy, const Shape& ws, int64_t stride, int64_t pad) {
  const ConvGeom g = geom(x.shape, ws, stride, pad);
  RT dw(ws);
  for_conv_taps(g, [&](int64_t n, int64_t o, int64_t oy, int64_t ox, int64_t c, int64_t iy, int64_t ix, int64_t ki, int64_t kj) {
    dw[{o, c, ki, kj}] += gy[{n, o, oy, ox}] * x[{n, c, iy, ix}];
  });
  return dw;
}

// ---- pooling references -------------------------------------------------------------------------

RT ref_pool(const RT& x, int64_t k, int64_t s, int64_t p, bool is_max) {
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const int64_t OH = conv_output_size(H, k, s, p), OW = conv_output_size(W, k, s, p);
  RT y({N, C, OH, OW});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          double acc = is_max ? -std::numeric_limits<double>::infinity() : 0.0;
          for (int64_t ki = 0; ki < k; ++ki)
            for (int64_t kj = 0; kj < k; ++kj) {
              const int64_t iy = oy * s - p + ki, ix = ox * s - p + kj;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;  // padding: never the max, adds 0
              const double v = x[{n, c, iy, ix}];
              acc = is_max ? std::max(acc, v) : acc + v;
            }
          y[{n, c, oy, ox}] = is_max ? acc : acc / static_cast<double>(k * k);
        }
  return y;
}

// PyTorch's adaptive windows: [floor(i * in / out), ceil((i + 1) * in / out)).
RT ref_adaptive_avg_pool2d(const RT& x, int64_t OH, int64_t OW) {
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  RT y({N, C, OH, OW});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t y0 = static_cast<int64_t>(std::floor(double(oy) * H / OH));
          const int64_t y1 = static_cast<int64_t>(std::ceil(double(oy + 1) * H / OH));
          const int64_t x0 = static_cast<int64_t>(std::floor(double(ox) * W / OW));
          const int64_t x1 = static_cast<int64_t>(std::ceil(double(ox + 1) * W / OW));
          double acc = 0;
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) acc += x[{n, c, iy, ix}];
          y[{n, c, oy, ox}] = acc / static_cast<double>((y1 - y0) * (x1 - x0));
        }
  return y;
}

// ---- normalisation and losses --------------------------------------------------------------------

// Per-channel mean and biased variance of x ([N,C] or [N,C,H,W]).
void channel_stats(const RT& x, std::vector<double>& mu, std::vector<double>& var) {
  const int64_t C = x.shape[1];
  mu.assign(C, 0.0);
  var.assign(C, 0.0);
  std::vector<double> cnt(C, 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = unravel(i, x.shape)[1];
    mu[c] += x.v[i];
    cnt[c] += 1;
  }
  for (int64_t c = 0; c < C; ++c) mu[c] /= cnt[c];
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = unravel(i, x.shape)[1];
    var[c] += (x.v[i] - mu[c]) * (x.v[i] - mu[c]);
  }
  for (int64_t c = 0; c < C; ++c) var[c] /= cnt[c];
}

RT ref_batch_norm(const RT& x, const RT& gamma, const RT& beta, const std::vector<double>& mu,
                  const std::vector<double>& var, double eps) {
  RT y(x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = unravel(i, x.shape)[1];
    y.v[i] = (x.v[i] - mu[c]) / std::sqrt(var[c] + eps) * gamma.v[c] + beta.v[c];
  }
  return y;
}

// The ReLU of a reference output: the fused epilogues' rows (conv2d_relu, linear_relu, batch_norm_relu).
RT ref_relu(RT r) {
  for (double& v : r.v) v = v > 0 ? v : 0;
  return r;
}

RT ref_log_softmax(const RT& z, int64_t dim) {
  dim = dim < 0 ? dim + z.dim() : dim;
  const RT m = ref_max(z, dim, true, false);
  RT se(m.shape);
  for (int64_t i = 0; i < z.numel(); ++i) {
    const Idx o = reduced_index(unravel(i, z.shape), {dim}, true);
    se[o] += std::exp(z.v[i] - m[o]);
  }
  RT r(z.shape);
  for (int64_t i = 0; i < z.numel(); ++i) {
    const Idx o = reduced_index(unravel(i, z.shape), {dim}, true);
    r.v[i] = z.v[i] - m[o] - std::log(se[o]);
  }
  return r;
}

RT ref_cross_entropy(const RT& z, const RT& y, bool reduce) {
  const RT lp = ref_log_softmax(z, 1);
  const int64_t N = z.shape[0];
  RT per({N});
  for (int64_t n = 0; n < N; ++n) per.v[n] = -lp[{n, static_cast<int64_t>(y.v[n])}];
  if (!reduce) return per;
  RT r(Shape{});
  for (double v : per.v) r.v[0] += v / static_cast<double>(N);
  return r;
}

RT ref_cw_margin(const RT& z, const RT& y) {
  const int64_t N = z.shape[0], K = z.shape[1];
  RT r({N});
  for (int64_t n = 0; n < N; ++n) {
    const int64_t label = static_cast<int64_t>(y.v[n]);
    double other = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k)
      if (k != label) other = std::max(other, z[{n, k}]);
    r.v[n] = other - z[{n, label}];
  }
  return r;
}

// ---- case builders ---------------------------------------------------------------------------------

InputSpec in(Shape s, Gen g = uniform()) { return InputSpec{std::move(s), std::move(g)}; }
InputSpec in_t(Shape s, Gen g = uniform()) { return InputSpec{std::move(s), std::move(g), Layout::transposed}; }
InputSpec in_o(Shape s, Gen g = uniform()) { return InputSpec{std::move(s), std::move(g), Layout::offset}; }
InputSpec constant(Shape s, Gen g) { return InputSpec{std::move(s), std::move(g), Layout::contiguous, false}; }

// 0/1 floats (a mask passed as a float tensor).
Gen float_bits() {
  Gen g = ints(0, 1);
  g.integer = false;
  return g;
}

std::string with_shapes(const std::string& name, const std::vector<InputSpec>& ins) {
  std::string s = name + " ";
  for (size_t i = 0; i < ins.size(); ++i)
    s += (i ? "," : "") + shape_str(ins[i].shape) +
         (ins[i].layout == Layout::transposed ? "T" : ins[i].layout == Layout::offset ? "+off" : "");
  return s;
}

OpCase unary(const std::string& name, InputSpec x, std::function<Tensor(const Tensor&)> op, std::function<double(double)> f) {
  OpCase c;
  c.name = with_shapes(name, {x});
  c.inputs = {std::move(x)};
  c.op = [op](const Args& a) { return op(a[0]); };
  c.ref = [f](const Refs& r) { return map1(r[0], f); };
  return c;
}

OpCase binary(const std::string& name, InputSpec a, InputSpec b, std::function<Tensor(const Tensor&, const Tensor&)> op,
              std::function<double(double, double)> f) {
  OpCase c;
  c.name = with_shapes(name, {a, b});
  c.inputs = {std::move(a), std::move(b)};
  c.op = [op](const Args& x) { return op(x[0], x[1]); };
  c.ref = [f](const Refs& r) { return map2(r[0], r[1], f); };
  return c;
}

OpCase with_gradgrad(OpCase c) {
  c.gradgrad = true;
  return c;
}
OpCase forward_only(OpCase c) {
  c.grad = false;
  return c;
}
// A row for the CUDA backend's awkward sizes: the forward against the reference, and the CUDA
// forward and gradients against the CPU backend's; no finite differences (slow at these sizes).
OpCase at_cuda_size(OpCase c) {
  c.finite_differences = false;
  return c;
}

// Element counts that leave a partial warp (31), a partial 256-thread block (1000) and a
// partial last block of several (4099) in the CUDA elementwise kernels.
const int64_t kCudaSizes[] = {31, 1000, 4099};

// Shapes every unary op is run on: a vector, 3-d, ones, a 0-d scalar, a transposed view.
std::vector<InputSpec> unary_shapes(const Gen& g) {
  return {in({7}, g), in({2, 3, 4}, g), in({1, 1}, g), in({}, g), in_t({3, 5}, g), in_o({2, 3}, g), in({0, 3}, g)};
}

void add_unary(std::vector<OpCase>& cases, const std::string& name, const Gen& g, std::function<Tensor(const Tensor&)> op,
               std::function<double(double)> f, bool gradgrad = false, bool grad = true) {
  for (const InputSpec& s : unary_shapes(g)) {
    OpCase c = unary(name, s, op, f);
    c.gradgrad = gradgrad;
    c.grad = grad;
    cases.push_back(c);
  }
  for (int64_t n : kCudaSizes) {
    OpCase c = at_cuda_size(unary(name, in({n}, g), op, f));
    c.grad = grad;
    cases.push_back(c);
  }
}

// Broadcasting pairs every binary op is run on.
std::vector<std::pair<Shape, Shape>> binary_shapes() {
  return {{{3, 1, 5}, {4, 5}}, {{2, 3}, {2, 3}}, {{2, 3}, {}}, {{}, {4}}, {{4, 1}, {1, 3}}, {{1}, {2, 1, 1}}, {{5}, {1}}};
}

void add_binary(std::vector<OpCase>& cases, const std::string& name, const Gen& ga, const Gen& gb,
                std::function<Tensor(const Tensor&, const Tensor&)> op, std::function<double(double, double)> f,
                bool gradgrad = false) {
  for (const auto& [sa, sb] : binary_shapes()) {
    OpCase c = binary(name, in(sa, ga), in(sb, gb), op, f);
    c.gradgrad = gradgrad;
    cases.push_back(c);
  }
  // Strided operands: a transposed view with a broadcast row, and two transposed views.
  OpCase t1 = binary(name, in_t({4, 5}, ga), in({5}, gb), op, f);
  OpCase t2 = binary(name, in_t({3, 4}, ga), in_t({3, 4}, gb), op, f);
  OpCase t3 = binary(name, in_o({2, 3}, ga), in_o({3}, gb), op, f);
  t1.gradgrad = t2.gradgrad = t3.gradgrad = gradgrad;
  cases.push_back(t1);
  cases.push_back(t2);
  cases.push_back(t3);
  cases.push_back(binary(name, in({0, 3}, ga), in({3}, gb), op, f));  // empty
  // The CUDA kernels' awkward sizes: a partial last block, a bias over a 33-wide inner dim,
  // broadcasts both ways, a scalar and a transposed operand.
  for (const auto& [a, b] : std::vector<std::pair<InputSpec, InputSpec>>{
           {in({4099}, ga), in({4099}, gb)}, {in({2, 3, 33}, ga), in({3, 1}, gb)}, {in({3, 1, 5}, ga), in({1, 7, 5}, gb)},
           {in({31, 9}, ga), in({}, gb)}, {in_t({29, 37}, ga), in({29, 37}, gb)}})
    cases.push_back(at_cuda_size(binary(name, a, b, op, f)));
  // Big enough for the multi-threaded paths; forward only (gradcheck would be slow).
  cases.push_back(forward_only(binary(name, in({48, 33, 25}, ga), in({33, 1}, gb), op, f)));
  cases.push_back(forward_only(binary(name, in({40, 1000}, ga), in({40, 1000}, gb), op, f)));
}

double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// ==== elementwise ==================================================================================

TEST_CASE("ops: elementwise binary", "[ops][cuda]") {
  std::vector<OpCase> cases;
  add_binary(cases, "add", uniform(), uniform(), [](auto& a, auto& b) { return add(a, b); },
             [](double a, double b) { return a + b; }, true);
  add_binary(cases, "sub", uniform(), uniform(), [](auto& a, auto& b) { return a - b; },
             [](double a, double b) { return a - b; });
  add_binary(cases, "mul", uniform(), uniform(), [](auto& a, auto& b) { return a * b; },
             [](double a, double b) { return a * b; }, true);
  add_binary(cases, "div", uniform(), away_from_zero(0.5, 2.0), [](auto& a, auto& b) { return a / b; },
             [](double a, double b) { return a / b; }, true);
  add_binary(cases, "maximum", grid(0.0), grid(0.04), [](auto& a, auto& b) { return maximum(a, b); },
             [](double a, double b) { return std::max(a, b); });
  add_binary(cases, "minimum", grid(0.0), grid(0.04), [](auto& a, auto& b) { return minimum(a, b); },
             [](double a, double b) { return std::min(a, b); });
  check_ops(cases);
}

TEST_CASE("ops: elementwise unary", "[ops][cuda]") {
  std::vector<OpCase> cases;
  add_unary(cases, "affine", uniform(), [](auto& a) { return affine(a, -1.5, 0.25); },
            [](double a) { return -1.5 * a + 0.25; });
  add_unary(cases, "add scalar", uniform(), [](auto& a) { return a + 0.75; }, [](double a) { return a + 0.75; });
  add_unary(cases, "sub scalar", uniform(), [](auto& a) { return a - 0.75; }, [](double a) { return a - 0.75; });
  add_unary(cases, "mul scalar", uniform(), [](auto& a) { return 3.0 * a; }, [](double a) { return 3.0 * a; });
  add_unary(cases, "div scalar", uniform(), [](auto& a) { return a / 4.0; }, [](double a) { return a / 4.0; });
  add_unary(cases, "neg", uniform(), [](auto& a) { return -a; }, [](double a) { return -a; });
  add_unary(cases, "abs", away_from_zero(), [](auto& a) { return abs(a); }, [](double a) { return std::abs(a); });
  add_unary(cases, "sign", away_from_zero(), [](auto& a) { return sign(a); },
            [](double a) { return a > 0 ? 1.0 : -1.0; }, false, /*grad=*/false);
  cases.push_back(forward_only(unary("sign of zeros", in({3}, values({0.0, -0.0, 2.0})), [](auto& a) { return sign(a); },
                                     [](double a) { return a > 0 ? 1.0 : a < 0 ? -1.0 : 0.0; })));
  add_unary(cases, "exp", uniform(-2, 2), [](auto& a) { return exp(a); }, [](double a) { return std::exp(a); }, true);
  add_unary(cases, "log", positive(0.5, 3), [](auto& a) { return log(a); }, [](double a) { return std::log(a); }, true);
  add_unary(cases, "sqrt", positive(0.5, 3), [](auto& a) { return sqrt(a); }, [](double a) { return std::sqrt(a); }, true);
  add_unary(cases, "square", uniform(), [](auto& a) { return square(a); }, [](double a) { return a * a; }, true);
  add_unary(cases, "relu", away_from_zero(0.05), [](auto& a) { return relu(a); },
            [](double a) { return a > 0 ? a : 0.0; }, true);
  add_unary(cases, "softplus", uniform(-4, 4), [](auto& a) { return softplus(a); },
            [](double a) { return std::log1p(std::exp(a)); }, true);
  cases.push_back(unary("softplus far tails", in({4}, values({-60, -30, 30, 60})), [](auto& a) { return softplus(a); },
                        [](double a) { return a > 0 ? a + std::log1p(std::exp(-a)) : std::log1p(std::exp(a)); }));
  add_unary(cases, "sigmoid", uniform(-4, 4), [](auto& a) { return sigmoid(a); }, sigmoid_ref, true);
  add_unary(cases, "clamp", grid(0.05), [](auto& a) { return clamp(a, -0.5, 0.5); },
            [](double a) { return std::min(std::max(a, -0.5), 0.5); });
  // Big inputs take the multi-threaded loops.
  cases.push_back(forward_only(unary("exp", in({70000}, uniform(-2, 2)), [](auto& a) { return exp(a); },
                                     [](double a) { return std::exp(a); })));
  cases.push_back(forward_only(unary("relu", in_t({300, 250}), [](auto& a) { return relu(a); },
                                     [](double a) { return a > 0 ? a : 0.0; })));
  check_ops(cases);
}

TEST_CASE("ops: clamp with tensor bounds, where, comparisons", "[ops][cuda]") {
  const auto clamp3 = [](const Refs& r) {
    return map3(r[0], r[1], r[2], [](double a, double lo, double hi) { return std::min(std::max(a, lo), hi); });
  };
  const auto where3 = [](const Refs& r) {
    return map3(r[0], r[1], r[2], [](double c, double a, double b) { return c != 0 ? a : b; });
  };
  std::vector<OpCase> cases = {
      {.name = "clamp tensor bounds [3,4],[3,4],[3,4]",
       .inputs = {in({3, 4}, grid(0.0)), in({3, 4}, grid(-0.47, 5)), in({3, 4}, grid(0.53, 5))},
       .op = [](const Args& a) { return clamp(a[0], a[1], a[2]); }, .ref = clamp3},
      {.name = "clamp tensor bounds broadcast [2,3,4],[4],[]",
       .inputs = {in({2, 3, 4}, grid(0.0)), in({4}, grid(-0.47, 3)), in({}, values({0.43}))},
       .op = [](const Args& a) { return clamp(a[0], a[1], a[2]); }, .ref = clamp3},
      {.name = "where f32 mask [3,4]",
       .inputs = {constant({3, 4}, float_bits()), in({3, 4}), in({3, 4})},
       .op = [](const Args& a) { return where(a[0], a[1], a[2]); }, .ref = where3, .gradgrad = true},
      {.name = "where i32 mask broadcast [3,1],[3,4],[4]",
       .inputs = {in({3, 1}, ints(0, 1)), in({3, 4}), in({4})},
       .op = [](const Args& a) { return where(a[0], a[1], a[2]); }, .ref = where3},
      {.name = "where scalar branch [2,1,3],[],[2,3]",
       .inputs = {constant({2, 1, 3}, float_bits()), in({}), in_t({2, 3})},
       .op = [](const Args& a) { return where(a[0], a[1], a[2]); }, .ref = where3},
  };
  const auto cmp = [&](const std::string& name, std::function<Tensor(const Tensor&, const Tensor&)> op,
                       std::function<double(double, double)> f) {
    cases.push_back(forward_only(binary(name, in({3, 4}, grid(0.0, 3)), in({4}, grid(0.0, 3)), op, f)));
    cases.push_back(forward_only(binary(name, in_t({2, 5}, grid(0.0, 2)), in({2, 1}, grid(0.0, 2)), op, f)));
    cases.push_back(forward_only(binary(name, in_t({29, 37}, grid(0.0, 3)), in({37}, grid(0.0, 3)), op, f)));
  };
  for (const Shape& s : std::vector<Shape>{{4099}, {29, 37}}) {
    cases.push_back(at_cuda_size({.name = "where f32 mask " + shape_str(s), .inputs = {constant(s, float_bits()), in(s), in_t(s)},
                                  .op = [](const Args& a) { return where(a[0], a[1], a[2]); }, .ref = where3}));
  }
  cmp("gt", [](auto& a, auto& b) { return gt(a, b); }, [](double a, double b) { return a > b ? 1.0 : 0.0; });
  cmp("ge", [](auto& a, auto& b) { return ge(a, b); }, [](double a, double b) { return a >= b ? 1.0 : 0.0; });
  cmp("eq", [](auto& a, auto& b) { return eq(a, b); }, [](double a, double b) { return a == b ? 1.0 : 0.0; });
  cases.push_back(forward_only(unary("gt scalar", in({3, 4}, grid(0.0, 3)), [](auto& a) { return gt(a, 0.15); },
                                     [](double a) { return a > 0.15 ? 1.0 : 0.0; })));
  check_ops(cases);
}

// ==== reductions ===================================================================================

TEST_CASE("ops: sum and mean", "[ops][cuda]") {
  std::vector<OpCase> cases;
  struct R {
    Shape shape;
    Idx dims;  // empty: all elements, through sum(a) / mean(a)
    bool keepdim;
    bool transposed;
  };
  const std::vector<R> reds = {
      {{3, 4, 5}, {}, false, false}, {{7}, {}, false, false}, {{}, {}, false, false}, {{4, 5}, {}, false, true},
      {{3, 4, 5}, {1}, false, false}, {{3, 4, 5}, {1}, true, false}, {{3, 4, 5}, {0, 2}, false, false},
      {{3, 4, 5}, {0, 2}, true, false}, {{2, 3, 4, 5}, {0, 2, 3}, false, false}, {{2, 3, 4, 5}, {0, 2, 3}, true, false},
      {{3, 4, 5}, {-1}, false, false}, {{3, 4, 5}, {1, 2}, true, false}, {{3, 1, 5}, {1}, false, false},
      {{4, 6}, {0}, false, true}, {{4, 6}, {1}, true, true}, {{1, 1}, {0, 1}, false, false},
      {{2, 3, 4, 5}, {0, 1, 2, 3}, true, false}, {{2, 3, 4, 5}, {3, 1}, false, false},
  };
  for (bool is_mean : {false, true})
    for (const R& r : reds) {
      OpCase c;
      c.name = fmt::format("{} {}{} dims {} keepdim {}", is_mean ? "mean" : "sum", shape_str(r.shape), r.transposed ? "T" : "",
                           shape_str(r.dims), r.keepdim);
      c.inputs = {r.transposed ? in_t(r.shape) : in(r.shape)};
      const R rr = r;
      c.op = [rr, is_mean](const Args& a) {
        if (rr.dims.empty()) return is_mean ? mean(a[0]) : sum(a[0]);
        return is_mean ? mean(a[0], rr.dims, rr.keepdim) : sum(a[0], rr.dims, rr.keepdim);
      };
      c.ref = [rr, is_mean](const Refs& x) {
        return ref_sum(x[0], rr.dims.empty() ? all_dims(x[0]) : rr.dims, rr.keepdim, is_mean);
      };
      c.gradgrad = r.dims.size() == 3;
      cases.push_back(c);
    }
  // Offset storage, and empty tensors (a sum over nothing is 0; a mean over nothing is NaN,
  // as in PyTorch, so only sums here).
  for (const auto& [x, dims] : std::vector<std::pair<InputSpec, Idx>>{
           {in_o({3, 4}), {1}}, {in_o({2, 3, 2}), {0, 2}}, {in({0, 3}), {0}}, {in({0, 3}), {1}}, {in({2, 0}), {0, 1}}}) {
    const Idx d = dims;
    cases.push_back({.name = with_shapes(fmt::format("sum dims {}", shape_str(d)), {x}), .inputs = {x},
                     .op = [d](const Args& a) { return sum(a[0], d); },
                     .ref = [d](const Refs& r) { return ref_sum(r[0], d, false); }});
  }
  // The CUDA reduction over the middle of [outer, n, inner]: one element, partial warps, more than
  // one block per row, a strided inner dimension.
  for (const Shape& x : std::vector<Shape>{{1, 1, 1}, {3, 31, 1}, {2, 1000, 1}, {1, 4099, 1}, {5, 7, 3}, {2, 129, 33}, {1, 2, 1000}})
    cases.push_back(at_cuda_size({.name = fmt::format("sum {} dims [1]", shape_str(x)), .inputs = {in(x)},
                                  .op = [](const Args& a) { return sum(a[0], {1}); },
                                  .ref = [](const Refs& r) { return ref_sum(r[0], {1}, false); }, .f32 = {1e-4, 1e-5}}));
  // Big reductions: the multi-threaded and non-leading-dim paths, forward only.
  for (const Idx& dims : {Idx{0, 2, 3}, Idx{1}, Idx{0}, Idx{3}, Idx{0, 1, 2, 3}}) {
    OpCase c;
    c.name = fmt::format("sum big [16,32,12,11] dims {}", shape_str(dims));
    c.inputs = {in({16, 32, 12, 11})};
    c.op = [dims](const Args& a) { return sum(a[0], dims, false); };
    c.ref = [dims](const Refs& x) { return ref_sum(x[0], dims, false); };
    c.grad = false;
    c.f32 = {1e-4, 1e-5};
    cases.push_back(c);
  }
  check_ops(cases);
}

TEST_CASE("ops: max, argmax, sum_to", "[ops][cuda]") {
  std::vector<OpCase> cases;
  struct M {
    Shape shape;
    int64_t dim;
    bool keepdim, transposed;
  };
  for (const M& m : std::vector<M>{{{3, 5}, 1, false, false}, {{4, 3, 2}, 0, true, false}, {{4, 3, 2}, -1, false, false},
                                   {{2, 3, 4}, 1, false, false}, {{3, 5}, 0, false, true}, {{1, 1}, 1, false, false},
                                   {{6}, 0, false, false}}) {
    const std::string s = fmt::format("{}{} dim {} keepdim {}", shape_str(m.shape), m.transposed ? "T" : "", m.dim, m.keepdim);
    const InputSpec x = m.transposed ? in_t(m.shape, distinct()) : in(m.shape, distinct());
    cases.push_back({.name = "max " + s, .inputs = {x},
                     .op = [m](const Args& a) { return max(a[0], m.dim, m.keepdim); },
                     .ref = [m](const Refs& r) { return ref_max(r[0], m.dim, m.keepdim, false); }, .gradgrad = true});
    cases.push_back({.name = "argmax " + s, .inputs = {x},
                     .op = [m](const Args& a) { return argmax(a[0], m.dim, m.keepdim); },
                     .ref = [m](const Refs& r) { return ref_max(r[0], m.dim, m.keepdim, true); }, .grad = false});
  }
  // Ties (small integers) and NaNs at the CUDA kernel's sizes: the first maximum wins, a NaN never
  // beats a number. One element in 7 is NaN, so no reduced row of these shapes is all NaN.
  const Gen ties_and_nans{[](std::mt19937_64& rng, int64_t n) {
    std::uniform_int_distribution<int> d(0, 4);
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = i % 7 == 3 ? std::nan("") : d(rng);
    return v;
  }};
  for (const Shape& x : std::vector<Shape>{{3, 31, 1}, {2, 1000, 1}, {1, 4099, 1}, {5, 7, 3}, {2, 129, 33}, {1, 2, 1000}})
    cases.push_back({.name = fmt::format("argmax ties and NaNs {} dim 1", shape_str(x)), .inputs = {in(x, ties_and_nans)},
                     .op = [](const Args& a) { return argmax(a[0], 1); },
                     .ref = [](const Refs& r) { return ref_max(r[0], 1, false, true); }, .grad = false});
  // Ties: argmax returns the first maximum.
  cases.push_back({.name = "argmax ties", .inputs = {in({2, 4}, values({1, 3, 3, 0, 2, 2, 2, 2}))},
                   .op = [](const Args& a) { return argmax(a[0], 1); },
                   .ref = [](const Refs&) { RT r({2}); r.v = {1, 0}; return r; }, .grad = false});
  for (const auto& [from, to] : std::vector<std::pair<Shape, Shape>>{
           {{2, 3, 4}, {3, 1}}, {{2, 3, 4}, {1, 4}}, {{2, 3, 4}, {4}}, {{2, 3, 4}, {}}, {{2, 3, 4}, {2, 1, 4}}, {{5, 1}, {1}},
           {{3, 4}, {3, 4}}}) {
    const Shape target = to;
    cases.push_back({.name = fmt::format("sum_to {} -> {}", shape_str(from), shape_str(to)), .inputs = {in(from)},
                     .op = [target](const Args& a) { return sum_to(a[0], target); },
                     .ref = [target](const Refs& r) {
                       RT out(target);
                       for (int64_t i = 0; i < r[0].numel(); ++i) {
                         const Idx idx = unravel(i, r[0].shape);
                         const size_t lead = idx.size() - target.size();
                         Idx o(target.size());
                         for (size_t d = 0; d < target.size(); ++d) o[d] = target[d] == 1 ? 0 : idx[lead + d];
                         out[o] += r[0].v[i];
                       }
                       return out;
                     }});
  }
  check_ops(cases);
}

// ==== indexing =====================================================================================

namespace {
RT ref_gather(const RT& a, const RT& idx, int64_t dim) {
  RT r(idx.shape);
  for (int64_t i = 0; i < r.numel(); ++i) {
    Idx k = unravel(i, idx.shape);
    k[dim] = static_cast<int64_t>(idx.v[i]);
    r.v[i] = a[k];
  }
  return r;
}
RT ref_scatter_add(const RT& src, const RT& idx, int64_t dim, const Shape& shape) {
  RT r(shape);
  for (int64_t i = 0; i < src.numel(); ++i) {
    Idx k = unravel(i, idx.shape);
    k[dim] = static_cast<int64_t>(idx.v[i]);
    r[k] += src.v[i];
  }
  return r;
}
RT ref_concat(const Refs& ts, int64_t dim) {
  Shape s = ts[0].shape;
  s[dim] = 0;
  for (const RT& t : ts) s[dim] += t.shape[dim];
  RT r(s);
  int64_t at = 0;
  for (const RT& t : ts) {
    for (int64_t i = 0; i < t.numel(); ++i) {
      Idx k = unravel(i, t.shape);
      k[dim] += at;
      r[k] = t.v[i];
    }
    at += t.shape[dim];
  }
  return r;
}
RT ref_slice(const RT& a, int64_t dim, int64_t start, int64_t end) {
  Shape s = a.shape;
  s[dim] = end - start;
  RT r(s);
  for (int64_t i = 0; i < r.numel(); ++i) {
    Idx k = unravel(i, s);
    k[dim] += start;
    r.v[i] = a[k];
  }
  return r;
}
}  // namespace

TEST_CASE("ops: gather, scatter_add, one_hot, concat, slice", "[ops][cuda]") {
  std::vector<OpCase> cases;
  struct G {
    Shape data, idx;
    int64_t dim;
  };
  // The CUDA gather over the middle of [outer, n, inner] and, through its gradient, scatter_add:
  // m = 3 picks per row out of 1000, 4099 and 129 (with a 33-wide inner dim), repeats colliding.
  for (const G& g : std::vector<G>{{{2, 1000, 1}, {2, 3, 1}, 1}, {{1, 4099}, {1, 3}, 1}, {{2, 129, 33}, {2, 3, 33}, 1}}) {
    const int hi = static_cast<int>(g.data[1]) - 1;
    cases.push_back(at_cuda_size({.name = fmt::format("gather {} idx {} dim 1", shape_str(g.data), shape_str(g.idx)),
                                  .inputs = {in(g.data), in(g.idx, ints(0, hi))},
                                  .op = [](const Args& a) { return gather(a[0], a[1], 1); },
                                  .ref = [](const Refs& r) { return ref_gather(r[0], r[1], 1); }}));
  }
  for (const G& g : std::vector<G>{{{3, 5}, {3, 2}, 1}, {{4, 3}, {2, 3}, 0}, {{2, 4, 3}, {2, 5, 3}, 1}, {{2, 3}, {2, 1}, -1},
                                   {{1, 1}, {1, 1}, 0}}) {
    const int64_t dim = g.dim < 0 ? g.dim + static_cast<int64_t>(g.data.size()) : g.dim;
    const int hi = static_cast<int>(g.data[dim]) - 1;
    const Shape data = g.data;
    cases.push_back({.name = fmt::format("gather {} idx {} dim {}", shape_str(g.data), shape_str(g.idx), g.dim),
                     .inputs = {in(g.data), in(g.idx, ints(0, hi))},
                     .op = [g](const Args& a) { return gather(a[0], a[1], g.dim); },
                     .ref = [dim](const Refs& r) { return ref_gather(r[0], r[1], dim); }, .gradgrad = true});
    cases.push_back({.name = fmt::format("scatter_add {} idx {} dim {}", shape_str(g.idx), shape_str(g.idx), g.dim),
                     .inputs = {in(g.idx), in(g.idx, ints(0, hi))},
                     .op = [g, data](const Args& a) { return scatter_add(a[0], a[1], g.dim, data); },
                     .ref = [dim, data](const Refs& r) { return ref_scatter_add(r[0], r[1], dim, data); }, .gradgrad = true});
  }
  cases.push_back({.name = "gather offset data and indices", .inputs = {in_o({3, 4}), in_o({3, 2}, ints(0, 3))},
                   .op = [](const Args& a) { return gather(a[0], a[1], 1); },
                   .ref = [](const Refs& r) { return ref_gather(r[0], r[1], 1); }});
  cases.push_back({.name = "gather transposed data", .inputs = {in_t({4, 3}), in({4, 2}, ints(0, 2))},
                   .op = [](const Args& a) { return gather(a[0], a[1], 1); },
                   .ref = [](const Refs& r) { return ref_gather(r[0], r[1], 1); }});
  for (const auto& [shape, k] : std::vector<std::pair<Shape, int>>{{{5}, 4}, {{2, 3}, 3}, {{1}, 1}}) {
    const int64_t classes = k;
    cases.push_back({.name = fmt::format("one_hot {} {}", shape_str(shape), k), .inputs = {in(shape, ints(0, k - 1))},
                     .op = [classes](const Args& a) { return one_hot(a[0], classes, a.dtype); },
                     .ref = [classes](const Refs& r) {
                       Shape s = r[0].shape;
                       s.push_back(classes);
                       RT out(s);
                       for (int64_t i = 0; i < r[0].numel(); ++i) out.v[i * classes + static_cast<int64_t>(r[0].v[i])] = 1;
                       return out;
                     }});
  }
  const auto concat_case = [&](std::vector<InputSpec> ins, int64_t dim) {
    OpCase c{.name = with_shapes(fmt::format("concat dim {}", dim), ins), .inputs = ins,
             .op = [dim](const Args& a) { return concat(a.t, dim); },
             .ref = [dim, n = static_cast<int64_t>(ins[0].shape.size())](const Refs& r) { return ref_concat(r, dim < 0 ? dim + n : dim); }};
    cases.push_back(c);
  };
  concat_case({in({2, 3}), in({2, 1}), in({2, 4})}, 1);
  concat_case({in({1, 3}), in({2, 3})}, 0);
  concat_case({in({2, 3, 2}), in_t({2, 3, 3})}, -1);
  concat_case({in({4})}, 0);
  concat_case({in_o({2, 2}), in_o({2, 3})}, 1);
  concat_case({in({2, 0, 3}), in({2, 2, 3})}, 1);
  struct S {
    Shape shape;
    int64_t dim, start, end;  // as passed to slice (negative allowed)
    bool transposed;
  };
  for (const S& s : std::vector<S>{{{5, 4}, 0, 1, 4, false}, {{5, 4}, 1, -3, -1, false}, {{2, 5, 3}, 1, 2, 5, false},
                                   {{4, 6}, 1, 0, 100, true}, {{3, 3}, 0, 1, 2, false}}) {
    const int64_t n = s.shape[s.dim], st = s.start < 0 ? s.start + n : s.start;
    const int64_t en = std::min(s.end < 0 ? s.end + n : s.end, n);
    cases.push_back({.name = fmt::format("slice {}{} dim {} [{}, {})", shape_str(s.shape), s.transposed ? "T" : "", s.dim, s.start, s.end),
                     .inputs = {s.transposed ? in_t(s.shape) : in(s.shape)},
                     .op = [s](const Args& a) { return a[0].slice(s.dim, s.start, s.end); },
                     .ref = [s, st, en](const Refs& r) { return ref_slice(r[0], s.dim, st, en); }, .gradgrad = true});
  }
  for (const auto& [g, shape, dim, start] : std::vector<std::tuple<Shape, Shape, int64_t, int64_t>>{
           {{2, 4}, {5, 4}, 0, 1}, {{3, 2, 2}, {3, 5, 2}, 1, 3}, {{3, 1}, {3, 3}, 1, 0}}) {
    cases.push_back({.name = fmt::format("slice_backward {} into {} dim {} at {}", shape_str(g), shape_str(shape), dim, start),
                     .inputs = {in(g)},
                     .op = [shape, dim, start](const Args& a) { return slice_backward(a[0], shape, dim, start); },
                     .ref = [shape, dim, start](const Refs& r) {
                       RT out(shape);
                       for (int64_t i = 0; i < r[0].numel(); ++i) {
                         Idx k = unravel(i, r[0].shape);
                         k[dim] += start;
                         out[k] = r[0].v[i];
                       }
                       return out;
                     },
                     .gradgrad = true});
  }
  check_ops(cases);
}

// ==== views and copies ===============================================================================

TEST_CASE("ops: views, reshape, contiguous, dtype conversion", "[ops][cuda]") {
  std::vector<OpCase> cases;
  const auto view_case = [&](const std::string& name, InputSpec x, std::function<Tensor(const Tensor&)> op,
                             std::function<RT(const RT&)> ref) {
    cases.push_back({.name = with_shapes(name, {x}), .inputs = {x}, .op = [op](const Args& a) { return op(a[0]); },
                     .ref = [ref](const Refs& r) { return ref(r[0]); }, .gradgrad = true});
  };
  for (const InputSpec& x : {in({2, 3, 4}), in_t({2, 3, 4})}) {
    view_case("reshape [6,4]", x, [](auto& t) { return t.reshape({6, 4}); }, [](const RT& r) { return ref_reshape(r, {6, 4}); });
    view_case("reshape [-1,2]", x, [](auto& t) { return t.reshape({-1, 2}); }, [](const RT& r) { return ref_reshape(r, {12, 2}); });
    view_case("reshape [24]", x, [](auto& t) { return t.reshape({24}); }, [](const RT& r) { return ref_reshape(r, {24}); });
    view_case("flatten 1", x, [](auto& t) { return t.flatten(); }, [](const RT& r) { return ref_reshape(r, {2, 12}); });
    view_case("flatten 0", x, [](auto& t) { return t.flatten(0); }, [](const RT& r) { return ref_reshape(r, {24}); });
    view_case("transpose 0 2", x, [](auto& t) { return t.transpose(0, 2); }, [](const RT& r) { return ref_permute(r, {2, 1, 0}); });
    view_case("transpose -1 -2", x, [](auto& t) { return t.transpose(-1, -2); }, [](const RT& r) { return ref_permute(r, {0, 2, 1}); });
    view_case("permute 2 0 1", x, [](auto& t) { return t.permute({2, 0, 1}); }, [](const RT& r) { return ref_permute(r, {2, 0, 1}); });
    view_case("contiguous", x, [](auto& t) { return t.contiguous(); }, [](const RT& r) { return r; });
    view_case("clone", x, [](auto& t) { return t.clone(); }, [](const RT& r) { return r; });
    view_case("permute then reshape", x, [](auto& t) { return t.permute({1, 0, 2}).reshape({3, 8}); },
              [](const RT& r) { return ref_reshape(ref_permute(r, {1, 0, 2}), {3, 8}); });
  }
  view_case("t()", in({3, 5}), [](auto& t) { return t.t(); }, [](const RT& r) { return ref_permute(r, {1, 0}); });
  view_case("reshape scalar", in({1, 1}), [](auto& t) { return t.reshape({}); }, [](const RT& r) { return ref_reshape(r, {}); });
  const auto expand_ref = [](Shape target) {
    return [target](const RT& r) {
      RT out(target);
      for (int64_t i = 0; i < out.numel(); ++i) out.v[i] = bget(r, unravel(i, target));
      return out;
    };
  };
  view_case("expand [2,3,4]", in({3, 1}), [](auto& t) { return t.expand({2, 3, 4}); }, expand_ref({2, 3, 4}));
  view_case("expand [2,2]", in({}), [](auto& t) { return t.expand({2, 2}); }, expand_ref({2, 2}));
  view_case("expand [3]", in({1}), [](auto& t) { return t.expand({3}); }, expand_ref({3}));
  view_case("expand then op", in_t({3, 1}), [](auto& t) { return t.expand({2, 3, 4}) * 2.0; },
            [&](const RT& r) { return map1(expand_ref({2, 3, 4})(r), [](double v) { return 2 * v; }); });
  // dtype conversion: the values of f32-representable inputs survive f32 <-> f64 exactly.
  // (f64 exists on the CPU backend only: no CUDA run for these two.)
  cases.push_back({.name = "to f64", .inputs = {in({3, 4})}, .op = [](const Args& a) { return a[0].to(DType::f64); },
                   .ref = [](const Refs& r) { return r[0]; }, .same_dtype = false, .cuda = false});
  cases.push_back({.name = "to f32 (transposed)", .inputs = {in_t({3, 4})}, .op = [](const Args& a) { return a[0].to(DType::f32); },
                   .ref = [](const Refs& r) { return r[0]; }, .grad = false, .same_dtype = false});
  cases.push_back({.name = "to f64 and back", .inputs = {in({5})},
                   .op = [](const Args& a) { return a[0].to(DType::f64).to(a.dtype) * 3.0; },
                   .ref = [](const Refs& r) { return map1(r[0], [](double v) { return 3 * v; }); }, .cuda = false});
  cases.push_back({.name = "to i32 truncates", .inputs = {in({4}, values({1.75, -1.75, 0.5, 3}))},
                   .op = [](const Args& a) { return a[0].to(DType::i32); },
                   .ref = [](const Refs& r) { return map1(r[0], [](double v) { return std::trunc(v); }); }, .grad = false});
  // The CUDA copy, fill and conversion kernels at awkward sizes: strided copies of offset,
  // broadcast and transposed views, in f32 and i32; fills and conversions both ways.
  const auto to_7 = [e = expand_ref({3, 7, 5})](const Refs& r) { return e(r[0]); };
  for (const InputSpec& x : {in_o({4099}), in_t({29, 37})})
    cases.push_back(at_cuda_size({.name = with_shapes("contiguous", {x}), .inputs = {x},
                                  .op = [](const Args& a) { return a[0].contiguous(); },
                                  .ref = [](const Refs& r) { return r[0]; }}));
  cases.push_back(at_cuda_size({.name = "expand [3,1,5] to [3,7,5], contiguous", .inputs = {in({3, 1, 5})},
                                .op = [](const Args& a) { return a[0].expand({3, 7, 5}).contiguous(); }, .ref = to_7}));
  cases.push_back({.name = "i32 [29,37] transposed copy", .inputs = {in({29, 37}, ints(-6, 6))},
                   .op = [](const Args& a) { return a[0].t().contiguous(); },
                   .ref = [](const Refs& r) { return ref_permute(r[0], {1, 0}); }});
  cases.push_back({.name = "i32 [3,1,5] expand [3,7,5] copy", .inputs = {in({3, 1, 5}, ints(-6, 6))},
                   .op = [](const Args& a) { return a[0].expand({3, 7, 5}).contiguous(); }, .ref = to_7});
  for (int64_t n : kCudaSizes) {
    cases.push_back({.name = fmt::format("to i32 [{}]", n), .inputs = {in({n}, uniform(-100, 100))},
                     .op = [](const Args& a) { return a[0].to(DType::i32); },
                     .ref = [](const Refs& r) { return map1(r[0], [](double v) { return std::trunc(v); }); }, .grad = false});
    // i32 -> float, times a float fill, plus an i32 fill converted.
    cases.push_back({.name = fmt::format("i32 [{}] to float, with fills", n), .inputs = {in({n}, ints(-6, 6))},
                     .op = [n](const Args& a) {
                       const Device dev = a[0].device();
                       return a[0].to(a.dtype) * Tensor::full({n}, -2.5, a.dtype, dev) +
                              Tensor::full({n}, 42, DType::i32, dev).to(a.dtype);
                     },
                     .ref = [](const Refs& r) { return map1(r[0], [](double v) { return -2.5 * v + 42; }); }});
  }
  check_ops(cases);
}

// ==== linear algebra ==================================================================================

TEST_CASE("ops: matmul and linear", "[ops][cuda]") {
  std::vector<OpCase> cases;
  const auto mm = [](const Refs& r) { return ref_matmul(r[0], r[1]); };
  const auto op_mm = [](const Args& a) { return matmul(a[0], a[1]); };
  for (const auto& [a, b] : std::vector<std::pair<InputSpec, InputSpec>>{
           {in({3, 4}), in({4, 5})}, {in({1, 4}), in({4, 1})}, {in({5, 1}), in({1, 3})}, {in_t({3, 4}), in({4, 5})},
           {in({3, 4}), in_t({4, 5})}, {in_t({3, 4}), in_t({4, 5})}, {in({1, 1}), in({1, 1})}, {in_t({1, 6}), in({6, 2})},
           {in_o({3, 4}), in_o({4, 2})}, {in({2, 0}), in({0, 3})}, {in({0, 4}), in({4, 3})}})
    cases.push_back({.name = with_shapes("matmul", {a, b}), .inputs = {a, b}, .op = op_mm, .ref = mm, .gradgrad = true});
  // Views the op builds itself: a.t() and a column slice (row stride > cols).
  cases.push_back({.name = "matmul a @ b.t()", .inputs = {in({3, 4}), in({5, 4})},
                   .op = [](const Args& a) { return matmul(a[0], a[1].t()); },
                   .ref = [](const Refs& r) { return ref_matmul(r[0], ref_permute(r[1], {1, 0})); }});
  cases.push_back({.name = "matmul of a column slice", .inputs = {in({3, 6}), in({2, 4})},
                   .op = [](const Args& a) { return matmul(a[0].slice(1, 1, 3), a[1]); },
                   .ref = [](const Refs& r) { return ref_matmul(ref_slice(r[0], 1, 1, 3), r[1]); }});
  cases.push_back({.name = "matmul of a transposed row slice", .inputs = {in({6, 3}), in({4, 2})},
                   .op = [](const Args& a) { return matmul(a[0].slice(0, 1, 5).t(), a[1]); },
                   .ref = [](const Refs& r) { return ref_matmul(ref_permute(ref_slice(r[0], 0, 1, 5), {1, 0}), r[1]); }});
  cases.push_back({.name = "matmul of a transposed column slice", .inputs = {in({3, 6}), in({3, 2})},
                   .op = [](const Args& a) { return matmul(a[0].slice(1, 2, 5).t(), a[1]); },
                   .ref = [](const Refs& r) { return ref_matmul(ref_permute(ref_slice(r[0], 1, 2, 5), {1, 0}), r[1]); }});
  // The CUDA tile GEMM off its 64x64 tile, every transpose (the gradients add the others):
  // a partial tile each way, a long K, a short K.
  for (const auto& [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{67, 45, 33}, {128, 10, 800}, {70, 130, 9}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const std::vector<InputSpec> ins = {ta ? in_t({m, k}) : in({m, k}), tb ? in_t({k, n}) : in({k, n})};
        cases.push_back(at_cuda_size({.name = with_shapes("matmul", ins), .inputs = ins, .op = op_mm, .ref = mm,
                                      .f32 = {1e-3, 1e-4}, .cuda_tol = {1e-3, 1e-4}}));
      }
  // Large enough for the threaded row split.
  cases.push_back({.name = "matmul big [256,128]x[128,80]", .inputs = {in({256, 128}), in_t({128, 80})}, .op = op_mm, .ref = mm,
                   .grad = false, .f32 = {1e-4, 1e-5}});
  // The bias in the tile loop's epilogue, off the tile each way.
  cases.push_back(at_cuda_size({.name = "linear [67,33] x [45,33]^T + b", .inputs = {in({67, 33}), in({45, 33}), in({45})},
                                .op = [](const Args& a) { return linear(a[0], a[1], a[2]); },
                                .ref = [](const Refs& r) { return ref_linear(r[0], r[1], &r[2]); },
                                .f32 = {1e-3, 1e-4}, .cuda_tol = {1e-3, 1e-4}}));
  for (bool bias : {true, false})
    for (const auto& [x, w] : std::vector<std::pair<Shape, Shape>>{{{3, 4}, {5, 4}}, {{1, 3}, {2, 3}}, {{4, 1}, {1, 1}}}) {
      std::vector<InputSpec> ins = {in(x), in(w)};
      if (bias) ins.push_back(in({w[0]}));
      cases.push_back({.name = with_shapes("linear", ins), .inputs = ins,
                       .op = [bias](const Args& a) { return bias ? linear(a[0], a[1], a[2]) : linear(a[0], a[1]); },
                       .ref = [bias](const Refs& r) { return ref_linear(r[0], r[1], bias ? &r[2] : nullptr); },
                       .gradgrad = true});
    }
  // linear_relu: the ReLU in the same epilogue, off the tile each way, with and without a bias.
  cases.push_back(at_cuda_size({.name = "linear_relu [67,33] x [45,33]^T + b", .inputs = {in({67, 33}), in({45, 33}), in({45})},
                                .op = [](const Args& a) { return linear_relu(a[0], a[1], a[2]); },
                                .ref = [](const Refs& r) { return ref_relu(ref_linear(r[0], r[1], &r[2])); },
                                .f32 = {1e-3, 1e-4}, .cuda_tol = {1e-3, 1e-4}}));
  for (bool bias : {true, false}) {
    std::vector<InputSpec> ins = {in({5, 4}), in({6, 4})};
    if (bias) ins.push_back(in({6}));
    cases.push_back({.name = with_shapes("linear_relu", ins), .inputs = ins,
                     .op = [bias](const Args& a) { return bias ? linear_relu(a[0], a[1], a[2]) : linear_relu(a[0], a[1]); },
                     .ref = [bias](const Refs& r) { return ref_relu(ref_linear(r[0], r[1], bias ? &r[2] : nullptr)); },
                     .gradgrad = true});
  }
  check_ops(cases);
}

TEST_CASE("ops: normalize_channels", "[ops][cuda]") {
  std::vector<OpCase> cases;
  // mean and stddev are constants (no gradient): the fused kernel's path.
  const auto constant = [](Shape s, Gen g) { return InputSpec{std::move(s), std::move(g), Layout::contiguous, false}; };
  for (const Shape& x : std::vector<Shape>{{2, 3, 4, 5}, {1, 1, 28, 28}, {3, 5, 1, 1}, {4, 7}, {0, 3, 2, 2}, {2, 3, 5, 3}}) {
    const int64_t c = x[1];
    cases.push_back({.name = with_shapes("normalize_channels", {in(x)}), .inputs = {in(x), constant({c}, uniform(-0.5, 0.5)),
                                                                                    constant({c}, uniform(0.2, 2.0))},
                     .op = [](const Args& a) { return normalize_channels(a[0], a[1], a[2]); },
                     .ref = [](const Refs& r) {
                       RT y(r[0].shape);
                       const int64_t n = r[0].size(0), ch = r[0].size(1), inner = n * ch > 0 ? r[0].numel() / (n * ch) : 0;
                       for (int64_t i = 0; i < r[0].numel(); ++i) {
                         const auto k = static_cast<size_t>(inner > 0 ? i / inner % ch : 0);
                         y.v[static_cast<size_t>(i)] = (r[0].v[static_cast<size_t>(i)] - r[1].v[k]) / r[2].v[k];
                       }
                       return y;
                     },
                     .gradgrad = true});
  }
  cases.push_back(at_cuda_size({.name = "normalize_channels [3, 3, 67, 45]", .inputs = {in({3, 3, 67, 45}),
                                constant({3}, uniform(-0.5, 0.5)), constant({3}, uniform(0.2, 2.0))},
                                .op = [](const Args& a) { return normalize_channels(a[0], a[1], a[2]); },
                                .ref = [](const Refs& r) {
                                  RT y(r[0].shape);
                                  const int64_t inner = 67 * 45;
                                  for (int64_t i = 0; i < r[0].numel(); ++i) {
                                    const auto k = static_cast<size_t>(i / inner % 3);
                                    y.v[static_cast<size_t>(i)] = (r[0].v[static_cast<size_t>(i)] - r[1].v[k]) / r[2].v[k];
                                  }
                                  return y;
                                }}));
  check_ops(cases);
}

TEST_CASE("normalize_channels is bitwise the broadcast subtract and divide, and falls back when mean needs a gradient",
          "[ops]") {
  Generator g(5);
  const Tensor x = rand_uniform({2, 3, 4, 4}, 0, 1, g);
  const Tensor m = Tensor::from_vector(std::vector<float>{0.4914f, 0.4822f, 0.4465f}, {3});
  const Tensor s = Tensor::from_vector(std::vector<float>{0.2471f, 0.2435f, 0.2616f}, {3});
  const Tensor fused = normalize_channels(x, m, s), composed = (x - m.reshape({1, 3, 1, 1})) / s.reshape({1, 3, 1, 1});
  CHECK(std::memcmp(fused.data<float>(), composed.data<float>(), sizeof(float) * 96) == 0);
  Tensor mg = m.clone();
  mg.set_requires_grad(true);
  backward(sum(normalize_channels(x, mg, s)));
  REQUIRE(mg.grad().defined());
  CHECK(mg.grad().to(Device::cpu).data<float>()[0] == Approx(-32 / 0.2471f));  // 2 x 4 x 4 elements a channel
  CHECK_THROWS_WITH(normalize_channels(x, Tensor::zeros({2}), s), Catch::Matchers::Contains("normalize_channels: input"));
}

// ==== convolution ======================================================================================

namespace {
struct ConvCfg {
  int64_t n, c, h, w, o, k, stride, pad;
  bool bias, gradgrad;
  bool transposed_input = false;
  int64_t kw = 0;  // non-square kernel when set
};
std::string conv_name(const ConvCfg& c) {
  return fmt::format("x[{},{},{},{}]{} w[{},{},{},{}] s{} p{}{}", c.n, c.c, c.h, c.w, c.transposed_input ? "T" : "", c.o, c.c, c.k,
                     c.kw ? c.kw : c.k, c.stride, c.pad, c.bias ? " bias" : "");
}
const std::vector<ConvCfg> conv_cfgs = {
    {2, 3, 5, 5, 4, 3, 1, 1, true, true},    // 3x3 same
    {1, 1, 4, 4, 1, 1, 1, 0, false, false},  // pointwise, batch 1
    {2, 3, 4, 3, 2, 1, 1, 0, true, true},    // pointwise, non-square
    {2, 3, 7, 6, 2, 3, 2, 0, true, true},    // stride 2, non-square input
    {1, 5, 6, 6, 3, 4, 2, 1, true, true},    // 4x4 stride 2 pad 1 (the IBP CNNs), odd channels
    {2, 2, 5, 4, 3, 3, 1, 2, false, false},  // padding 2
    {1, 3, 5, 5, 2, 1, 2, 0, true, false},   // 1x1 stride 2 (not pointwise)
    {2, 3, 3, 3, 2, 3, 1, 0, false, false},  // 1x1 output
    {1, 2, 8, 5, 3, 4, 2, 2, true, false},   // 4x4 stride 2 pad 2, odd width
    {3, 1, 6, 5, 1, 3, 3, 1, true, false},   // stride 3 (rows left over)
    {2, 3, 5, 6, 2, 3, 1, 1, true, false, true},      // non-contiguous input
    {1, 2, 5, 6, 3, 2, 1, 1, true, false, false, 3},  // 2x3 kernel
    {1, 2, 3, 3, 2, 1, 1, 1, false, false},  // 1x1 kernel with padding: a zero border
    {2, 2, 2, 2, 3, 4, 1, 1, true, false},   // kernel larger than the input, padding makes it fit
    {1, 2, 7, 7, 2, 2, 3, 0, false, false},  // stride larger than the kernel: skipped pixels
};
Shape conv_x(const ConvCfg& c) { return {c.n, c.c, c.h, c.w}; }
Shape conv_w(const ConvCfg& c) { return {c.o, c.c, c.k, c.kw ? c.kw : c.k}; }
Shape conv_y(const ConvCfg& c) {
  const ConvGeom g = geom(conv_x(c), conv_w(c), c.stride, c.pad);
  return {g.n, g.o, g.oh, g.ow};
}
}  // namespace

TEST_CASE("ops: conv2d", "[ops][cuda][conv]") {
  std::vector<OpCase> cases;
  for (const ConvCfg& cfg : conv_cfgs) {
    std::vector<InputSpec> ins = {cfg.transposed_input ? in_t(conv_x(cfg)) : in(conv_x(cfg)), in(conv_w(cfg))};
    if (cfg.bias) ins.push_back(in({cfg.o}));
    const Conv2dParams p{cfg.stride, cfg.pad};
    cases.push_back({.name = "conv2d " + conv_name(cfg), .inputs = ins,
                     .op = [cfg, p](const Args& a) { return conv2d(a[0], a[1], cfg.bias ? a[2] : Tensor(), p); },
                     .ref = [cfg](const Refs& r) { return ref_conv2d(r[0], r[1], cfg.bias ? &r[2] : nullptr, cfg.stride, cfg.pad); },
                     .gradgrad = cfg.gradgrad});
  }
  cases.push_back({.name = "conv2d offset input", .inputs = {in_o({2, 3, 5, 4}), in_o({2, 3, 3, 3}), in_o({2})},
                   .op = [](const Args& a) { return conv2d(a[0], a[1], a[2], {1, 1}); },
                   .ref = [](const Refs& r) { return ref_conv2d(r[0], r[1], &r[2], 1, 1); }});
  cases.push_back({.name = "conv2d empty batch", .inputs = {in({0, 3, 5, 4}), in({2, 3, 3, 3}), in({2})},
                   .op = [](const Args& a) { return conv2d(a[0], a[1], a[2], {1, 1}); },
                   .ref = [](const Refs& r) { return ref_conv2d(r[0], r[1], &r[2], 1, 1); }});
  // conv2d_relu: the bias and the ReLU in the forward's epilogue, its backward through the mask.
  for (const ConvCfg& cfg : {conv_cfgs[0], conv_cfgs[3], conv_cfgs[4], conv_cfgs[5], conv_cfgs[10]}) {
    std::vector<InputSpec> ins = {cfg.transposed_input ? in_t(conv_x(cfg)) : in(conv_x(cfg)), in(conv_w(cfg))};
    if (cfg.bias) ins.push_back(in({cfg.o}));
    const Conv2dParams p{cfg.stride, cfg.pad};
    cases.push_back({.name = "conv2d_relu " + conv_name(cfg), .inputs = ins,
                     .op = [cfg, p](const Args& a) { return conv2d_relu(a[0], a[1], cfg.bias ? a[2] : Tensor(), p); },
                     .ref = [cfg](const Refs& r) {
                       return ref_relu(ref_conv2d(r[0], r[1], cfg.bias ? &r[2] : nullptr, cfg.stride, cfg.pad));
                     },
                     .gradgrad = cfg.gradgrad});
  }
  // A bigger layer: the threaded batch loop and a real im2col, forward only.
  const ConvCfg big{6, 8, 12, 11, 16, 3, 1, 1, true, false};
  cases.push_back({.name = "conv2d big " + conv_name(big), .inputs = {in(conv_x(big)), in(conv_w(big)), in({big.o})},
                   .op = [](const Args& a) { return conv2d(a[0], a[1], a[2], {1, 1}); },
                   .ref = [](const Refs& r) { return ref_conv2d(r[0], r[1], &r[2], 1, 1); }, .grad = false, .f32 = {1e-4, 1e-5}});
  check_ops(cases);
}

TEST_CASE("ops: conv2d_backward_input and conv2d_backward_weight", "[ops][cuda][conv]") {
  std::vector<OpCase> cases;
  for (const ConvCfg& cfg : conv_cfgs) {
    const Conv2dParams p{cfg.stride, cfg.pad};
    const Shape xs = conv_x(cfg), ws = conv_w(cfg);
    cases.push_back({.name = "conv2d_backward_input " + conv_name(cfg), .inputs = {in(conv_y(cfg)), in(ws)},
                     .op = [xs, p](const Args& a) { return conv2d_backward_input(a[0], a[1], xs, p); },
                     .ref = [xs, cfg](const Refs& r) { return ref_conv2d_backward_input(r[0], r[1], xs, cfg.stride, cfg.pad); },
                     .gradgrad = cfg.gradgrad});
    cases.push_back({.name = "conv2d_backward_weight " + conv_name(cfg), .inputs = {in(xs), in(conv_y(cfg))},
                     .op = [ws, p](const Args& a) { return conv2d_backward_weight(a[0], a[1], ws, p); },
                     .ref = [ws, cfg](const Refs& r) { return ref_conv2d_backward_weight(r[0], r[1], ws, cfg.stride, cfg.pad); },
                     .gradgrad = cfg.gradgrad});
  }
  // More samples than the weight gradient's chunk count (8), so chunks hold several samples.
  const ConvCfg many{11, 2, 4, 4, 3, 3, 1, 1, false, false};
  cases.push_back({.name = "conv2d_backward_weight batch 11", .inputs = {in(conv_x(many)), in(conv_y(many))},
                   .op = [ws = conv_w(many)](const Args& a) { return conv2d_backward_weight(a[0], a[1], ws, {1, 1}); },
                   .ref = [ws = conv_w(many)](const Refs& r) { return ref_conv2d_backward_weight(r[0], r[1], ws, 1, 1); },
                   .grad = false});
  check_ops(cases);
}

TEST_CASE("ops: conv2d at the CUDA kernels' awkward sizes", "[ops][cuda][conv]") {
  // conv2d's CUDA gradients run the backward-input and backward-weight kernels, so each row checks
  // all three implicit GEMMs against the CPU backend.
  const std::vector<ConvCfg> cfgs = {
      {1, 3, 13, 11, 5, 3, 1, 1, true, false},  // batch 1, 3x3 same padding
      {3, 5, 13, 11, 7, 3, 2, 0, true, false},  // stride 2, no padding: the image's last row/column unused
      {3, 7, 13, 11, 5, 4, 2, 1, true, false},  // even kernel, stride 2
      {1, 5, 7, 9, 3, 1, 1, 0, true, false},    // pointwise
      {3, 3, 13, 11, 7, 1, 2, 2, true, false},  // 1x1 with padding 2: outputs that see only padding
      {3, 3, 9, 10, 5, 4, 1, 2, true, false},   // padding 2 on a 4x4 kernel
      {2, 3, 8, 8, 70, 3, 1, 1, true, false},   // O > 64: two tile rows forward and backward-weight
      {1, 67, 5, 5, 3, 3, 1, 1, true, false},   // C > 64: two tile rows backward-input, CKK > 64
      {3, 5, 13, 11, 7, 3, 2, 0, false, false}, // no bias
  };
  std::vector<OpCase> cases;
  for (const ConvCfg& cfg : cfgs) {
    std::vector<InputSpec> ins = {in(conv_x(cfg)), in(conv_w(cfg))};
    if (cfg.bias) ins.push_back(in({cfg.o}));
    const Conv2dParams p{cfg.stride, cfg.pad};
    cases.push_back(at_cuda_size(
        {.name = "conv2d " + conv_name(cfg), .inputs = ins,
         .op = [cfg, p](const Args& a) { return conv2d(a[0], a[1], cfg.bias ? a[2] : Tensor(), p); },
         .ref = [cfg](const Refs& r) { return ref_conv2d(r[0], r[1], cfg.bias ? &r[2] : nullptr, cfg.stride, cfg.pad); },
         .f32 = {1e-4, 1e-4}, .cuda_tol = {1e-4, 1e-4}}));
  }
  // The bias+ReLU epilogue of the implicit GEMM: stride 2, O > 64 (two tile rows), no bias.
  for (const ConvCfg& cfg : {cfgs[1], cfgs[6], cfgs[8]}) {
    std::vector<InputSpec> ins = {in(conv_x(cfg)), in(conv_w(cfg))};
    if (cfg.bias) ins.push_back(in({cfg.o}));
    const Conv2dParams p{cfg.stride, cfg.pad};
    cases.push_back(at_cuda_size(
        {.name = "conv2d_relu " + conv_name(cfg), .inputs = ins,
         .op = [cfg, p](const Args& a) { return conv2d_relu(a[0], a[1], cfg.bias ? a[2] : Tensor(), p); },
         .ref = [cfg](const Refs& r) { return ref_relu(ref_conv2d(r[0], r[1], cfg.bias ? &r[2] : nullptr, cfg.stride, cfg.pad)); },
         .f32 = {1e-4, 1e-4}, .cuda_tol = {1e-4, 1e-4}}));
  }
  check_ops(cases);
}

namespace {
// The CPU's process-wide conv algorithm and math precision, put back when a test ends.
struct CpuConvSettings {
  cpu::ConvAlgorithm algorithm = cpu::conv_algorithm();
  ~CpuConvSettings() {
    cpu::set_conv_algorithm(algorithm);
    cpu::set_math_precision(MathPrecision::fp32);
  }
};
}  // namespace

TEST_CASE("ops: conv2d on the CPU's direct kernels at awkward sizes", "[ops][conv]") {
  // kernels/cpu/conv_direct.cpp, forced for every shape it takes (the automatic choice keeps it to
  // the shapes where it wins): partial channel blocks (O and C not multiples of 16 or 32), output
  // rows split into uneven tile columns, the tile's row remainder, stride-2 parity classes of
  // 1, 2 and 3 taps and of none (1x1 stride 2), padding up to KH - 1, non-square kernels; for
  // backward-weight, tap tiles split by rows and columns and samples in several groups, the
  // last one short.
  const std::vector<ConvCfg> cfgs = {
      {1, 16, 9, 9, 17, 3, 1, 1, true, false},           // O = 17: one 2-vector block, mostly padding
      {3, 19, 14, 14, 33, 4, 2, 1, true, false},         // wong_small's conv2 with odd channels: blocks 32 + 1
      {2, 16, 17, 23, 40, 3, 1, 2, false, false},        // padding 2; 25-wide rows: tile columns 7, 6, 6, 6
      {1, 20, 15, 16, 16, 5, 2, 2, true, false},         // 5x5 stride 2: classes of 3 and 2 taps a side
      {2, 16, 8, 7, 18, 2, 1, 0, true, false, false, 3}, // 2x3 kernel, no padding
      {2, 17, 9, 9, 16, 1, 2, 0, true, false},           // 1x1 stride 2: three classes get no tap
      {1, 16, 33, 31, 16, 3, 2, 1, true, false},         // stride 2, 16-wide output, odd input
      {2, 16, 4, 4, 20, 4, 1, 1, false, false},          // kernel as large as the input
      {11, 16, 6, 6, 16, 9, 1, 4, true, false},          // 9-wide kernel: two tap columns
      {11, 16, 24, 24, 16, 3, 1, 1, true, false},        // backward-weight: groups of 7 and 4 samples (576 pixels each)
      // block-major order (weights past 512 KB, over twice blocks x padded sample): forward with
      // W = 576 taps x 256 x 4 B, O = 250 (a last block of 26); backward-input at stride 2, four
      // classes' weights of 2,250 taps x 64
      {3, 64, 4, 4, 250, 3, 1, 1, true, false},
      {3, 64, 7, 7, 250, 3, 2, 1, false, false},
  };
  const CpuConvSettings restore;
  cpu::set_conv_algorithm(cpu::ConvAlgorithm::direct);
  std::vector<OpCase> cases;
  for (const ConvCfg& cfg : cfgs) {
    const ConvShape s = make_conv_shape(cfg.n, cfg.c, cfg.h, cfg.w, cfg.o, cfg.k, cfg.kw ? cfg.kw : cfg.k, cfg.stride, cfg.pad);
    INFO(conv_name(cfg));
    CHECK(cpu::direct::takes_forward(s));
    CHECK(cpu::direct::takes_backward_input(s));
    CHECK(cpu::direct::takes_backward_weight(s));
    std::vector<InputSpec> ins = {in(conv_x(cfg)), in(conv_w(cfg))};
    if (cfg.bias) ins.push_back(in({cfg.o}));
    const Conv2dParams p{cfg.stride, cfg.pad};
    const Shape xs = conv_x(cfg);
    for (const bool relu : {false, true})
      cases.push_back({.name = std::string(relu ? "direct conv2d_relu " : "direct conv2d ") + conv_name(cfg), .inputs = ins,
                       .op = [cfg, p, relu](const Args& a) {
                         const Tensor b = cfg.bias ? a[2] : Tensor();
                         return relu ? conv2d_relu(a[0], a[1], b, p) : conv2d(a[0], a[1], b, p);
                       },
                       .ref = [cfg, relu](const Refs& r) {
                         const RT y = ref_conv2d(r[0], r[1], cfg.bias ? &r[2] : nullptr, cfg.stride, cfg.pad);
                         return relu ? ref_relu(y) : y;
                       },
                       .grad = false, .f32 = {1e-4, 1e-4}, .cuda = false});
    cases.push_back({.name = "direct conv2d_backward_input " + conv_name(cfg), .inputs = {in(conv_y(cfg)), in(conv_w(cfg))},
                     .op = [xs, p](const Args& a) { return conv2d_backward_input(a[0], a[1], xs, p); },
                     .ref = [xs, cfg](const Refs& r) { return ref_conv2d_backward_input(r[0], r[1], xs, cfg.stride, cfg.pad); },
                     .grad = false, .f32 = {1e-4, 1e-4}, .cuda = false});
    const Shape ws = conv_w(cfg);
    cases.push_back({.name = "direct conv2d_backward_weight " + conv_name(cfg), .inputs = {in(xs), in(conv_y(cfg))},
                     .op = [ws, p](const Args& a) { return conv2d_backward_weight(a[0], a[1], ws, p); },
                     .ref = [ws, cfg](const Refs& r) { return ref_conv2d_backward_weight(r[0], r[1], ws, cfg.stride, cfg.pad); },
                     .grad = false, .f32 = {1e-4, 1e-4}, .cuda = false});
  }
  check_ops(cases);
  // Where the kernels do not apply, the im2col path runs even when direct is asked for.
  CHECK_FALSE(cpu::direct::takes_forward(make_conv_shape(2, 16, 9, 9, 16, 3, 3, 3, 1)));          // stride 3
  CHECK_FALSE(cpu::direct::takes_forward(make_conv_shape(2, 16, 9, 9, 15, 3, 3, 1, 1)));          // O < 16
  CHECK_FALSE(cpu::direct::takes_backward_input(make_conv_shape(2, 15, 9, 9, 16, 3, 3, 1, 1)));   // C < 16
  CHECK_FALSE(cpu::direct::takes_backward_input(make_conv_shape(2, 16, 9, 9, 16, 1, 1, 1, 1)));   // pad > KH - 1
  cpu::set_math_precision(MathPrecision::bf16);
  cpu::set_math_precision(MathPrecision::tf32);
  CHECK_FALSE(cpu::direct::takes_forward(make_conv_shape(2, 16, 9, 9, 16, 3, 3, 1, 1)));  // tf32: the GEMM path rounds
}

TEST_CASE("ops: conv2d on the CPU's direct kernels in BF16 (AVX512-BF16)", "[ops][conv]") {
  // --precision bf16 on the CPU: the direct kernel pairs input channels (backward-weight: output
  // pixels) and multiplies BF16 pairs with VDPBF16PS. Its operands are rounded as the im2col path rounds them (both then
  // sum exact products in f32), so the two agree to f32 summation-order noise; and both are
  // within BF16 tolerance of the f32 result. Odd channel counts leave a zero in the last pair.
  const ConvShape probe = make_conv_shape(1, 16, 8, 8, 16, 3, 3, 1, 1);
  const CpuConvSettings restore;
  cpu::set_math_precision(MathPrecision::bf16);
  cpu::set_conv_algorithm(cpu::ConvAlgorithm::direct);
  if (!cpu::direct::takes_forward(probe)) {
    WARN("SKIPPED: this build's CPU has no AVX512-BF16 (the im2col path's rounded GEMM serves --precision bf16)");
    return;
  }
  const std::vector<ConvCfg> cfgs = {
      {3, 19, 14, 14, 33, 4, 2, 1, true, false},         // odd input channels, blocks 32 + 1
      {2, 16, 17, 23, 40, 3, 1, 2, false, false},        // padding 2, uneven tile columns
      {1, 20, 15, 16, 17, 5, 2, 2, true, false},         // 5x5 stride 2, O = 17
      {2, 17, 9, 9, 16, 1, 2, 0, true, false},           // 1x1 stride 2: empty classes; O = 16 odd pairs
      {11, 16, 6, 7, 16, 3, 1, 1, true, false},          // odd output rows (7 wide): a last pixel paired with 0
      {11, 16, 32, 40, 16, 3, 1, 1, false, false},       // backward-weight: groups of 6 and 5 samples (640 words each)
      {3, 128, 4, 4, 250, 3, 1, 1, true, false},         // block-major forward: 576 words x 256 x 4 B of weights
  };
  Generator gen(11);
  for (const ConvCfg& cfg : cfgs) {
    INFO(conv_name(cfg));
    const Conv2dParams p{cfg.stride, cfg.pad};
    const Tensor x = rand_uniform(conv_x(cfg), -1.0, 1.0, gen), w = rand_uniform(conv_w(cfg), -1.0, 1.0, gen);
    const Tensor b = cfg.bias ? rand_uniform({cfg.o}, -1.0, 1.0, gen) : Tensor();
    const Tensor gy = rand_uniform(conv_y(cfg), -1.0, 1.0, gen);
    auto run = [&](cpu::ConvAlgorithm a, MathPrecision precision) {
      cpu::set_conv_algorithm(a);
      cpu::set_math_precision(precision);
      return std::vector<std::vector<double>>{conv2d_relu(x, w, b, p).to_vector_f64(),
                                              conv2d_backward_input(gy, w, conv_x(cfg), p).to_vector_f64(),
                                              conv2d_backward_weight(x, gy, conv_w(cfg), p).to_vector_f64()};
    };
    const auto direct = run(cpu::ConvAlgorithm::direct, MathPrecision::bf16);
    const auto rounded_gemm = run(cpu::ConvAlgorithm::im2col, MathPrecision::bf16);
    const auto f32 = run(cpu::ConvAlgorithm::im2col, MathPrecision::fp32);
    for (size_t pass = 0; pass < 3; ++pass) {
      INFO((pass == 0 ? "conv2d_relu forward" : pass == 1 ? "conv2d_backward_input" : "conv2d_backward_weight"));
      const Shape shape{static_cast<int64_t>(direct[pass].size())};
      CHECK(compare(direct[pass], rounded_gemm[pass], shape, {1e-4, 1e-4}) == "");
      // BF16 rounds each operand by up to 2^-9: a sum of `terms` products of [-1, 1] values
      // moves by about 1e-3 sqrt(terms); 4x that is the bound
      const int64_t kk = cfg.kw ? cfg.kw : cfg.k;
      const ConvGeom geo = geom(conv_x(cfg), conv_w(cfg), cfg.stride, cfg.pad);
      const double terms = pass == 0 ? double(cfg.c * cfg.k * kk) : pass == 1 ? double(cfg.o * cfg.k * kk) : double(cfg.n * geo.oh * geo.ow);
      CHECK(compare(direct[pass], f32[pass], shape, {4e-3 * std::sqrt(terms), 2e-2}) == "");
      CHECK(compare(direct[pass], f32[pass], shape, {1e-6, 1e-6}) != "");  // it did round: not the f32 result
    }
  }
}

TEST_CASE("ops: the CPU's BF16 GEMM against exact products of the rounded operands", "[ops]") {
  // gemm<float> at --precision bf16 rounds both operands to BF16 (nearest-even) and multiplies
  // them in f32, where their products are exact: it must equal the f64 sum of the products of
  // the rounded operands up to f32 summation error, for every transpose, odd K, N and M off any
  // tile, alpha, beta (0: C is not read, so a NaN there must not leak), a wider ldc, and the
  // threaded split into blocks of C.
  const CpuConvSettings restore;
  cpu::set_math_precision(MathPrecision::bf16);
  struct Case {
    bool ta, tb;
    int64_t m, n, k;
    float alpha, beta;
  };
  const std::vector<Case> cases = {
      {false, false, 1, 1, 1, 1.0f, 0.0f},     {false, true, 13, 17, 3, 1.0f, 0.0f},
      {true, false, 15, 33, 513, 0.5f, 2.0f},  {true, true, 29, 47, 1100, 1.0f, 1.0f},
      {false, true, 130, 70, 600, 1.0f, 0.0f}, {false, false, 70, 130, 601, -1.0f, 0.5f},
  };
  Generator gen(5);
  for (const Case& c : cases) {
    INFO("ta " << c.ta << " tb " << c.tb << " M " << c.m << " N " << c.n << " K " << c.k << " alpha " << c.alpha << " beta " << c.beta);
    const int64_t lda = c.ta ? c.m : c.k, ldb = c.tb ? c.k : c.n, ldc = c.n + 3;
    const std::vector<float> a = rand_uniform({c.m * c.k}, -2.0, 2.0, gen).to_vector();
    const std::vector<float> b = rand_uniform({c.k * c.n}, -2.0, 2.0, gen).to_vector();
    std::vector<float> cmat = rand_uniform({c.m * ldc}, -1.0, 1.0, gen).to_vector();
    if (c.beta == 0.0f) std::fill(cmat.begin(), cmat.end(), std::numeric_limits<float>::quiet_NaN());
    const std::vector<float> c0 = cmat;
    cpu::gemm<float>(c.ta, c.tb, c.m, c.n, c.k, c.alpha, a.data(), lda, b.data(), ldb, c.beta, cmat.data(), ldc);
    std::vector<double> got, want;
    double worst = 0;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double sum = 0, mag = 0;
        for (int64_t l = 0; l < c.k; ++l) {
          const double p = double(precision::round_bf16(c.ta ? a[l * lda + i] : a[i * lda + l])) *
                           double(precision::round_bf16(c.tb ? b[j * ldb + l] : b[l * ldb + j]));
          sum += p, mag += std::abs(p);
        }
        const double ref = c.alpha * sum + (c.beta == 0.0f ? 0.0 : c.beta * double(c0[i * ldc + j]));
        worst = std::max(worst, std::abs(double(cmat[i * ldc + j]) - ref) / (1e-30 + std::abs(c.alpha) * mag + std::abs(c.beta)));
        REQUIRE(std::isfinite(cmat[i * ldc + j]));
      }
    CHECK(worst < 1e-5);
    for (int64_t i = 0; i < c.m; ++i)  // the columns past N are untouched
      for (int64_t j = c.n; j < ldc; ++j) CHECK(std::memcmp(&cmat[i * ldc + j], &c0[i * ldc + j], sizeof(float)) == 0);
  }
}

// ==== interval bound propagation (engine/interval_ops.cpp) ==========================================

namespace {
// [W c + b; |W| r], then (relu) the interval ReLU's box after it: the unfused composition, in f64.
RT ref_interval_stack(const RT& yc, const RT& yr, bool relu) {
  Shape s{relu ? 4 : 2};
  s.insert(s.end(), yc.shape.begin(), yc.shape.end());
  RT out(s);
  const int64_t n = yc.numel();
  for (int64_t i = 0; i < n; ++i) {
    out.v[i] = yc.v[i];
    out.v[n + i] = yr.v[i];
    if (!relu) continue;
    const double l = std::max(yc.v[i] - yr.v[i], 0.0), u = std::max(yc.v[i] + yr.v[i], 0.0);
    out.v[2 * n + i] = (u + l) / 2;
    out.v[3 * n + i] = (u - l) / 2;
  }
  return out;
}
RT ref_abs_of(const RT& a) {
  RT r = a;
  for (double& v : r.v) v = std::fabs(v);
  return r;
}
// Radii are positive, weights away from 0 (|w| has a kink there).
std::vector<InputSpec> interval_inputs(const Shape& x, const Shape& w, int64_t bias) {
  std::vector<InputSpec> ins = {in(x), in(x, positive(0.05, 0.6)), in(w, away_from_zero(0.05, 1.0))};
  if (bias) ins.push_back(in({bias}));
  return ins;
}
}  // namespace

TEST_CASE("ops: elided_margin_radius (the last layer merged with the margins)", "[ops][cuda][interval]") {
  const auto ref = [](const Refs& r) {
    const int64_t n = r[0].size(0), in = r[0].size(1), k = r[1].size(0);
    RT out({n, k});
    for (int64_t s = 0; s < n; ++s) {
      const auto y = static_cast<int64_t>(r[2].v[s]);
      for (int64_t j = 0; j < k; ++j)
        for (int64_t i = 0; i < in; ++i) out[{s, j}] += std::fabs(r[1][{j, i}] - r[1][{y, i}]) * r[0][{s, i}];
    }
    return out;
  };
  std::vector<OpCase> cases;
  // distinct weights: no two entries of a column equal, so |W_j - W_y| has no kink to straddle.
  const struct { int64_t n, in, k; bool fd; } shapes[] = {{1, 3, 2, true}, {5, 7, 4, true}, {6, 9, 10, true},
                                                          {33, 300, 10, false}};
  for (const auto& sh : shapes)
    cases.push_back({.name = fmt::format("elided_margin_radius r[{}, {}] w[{}, {}]", sh.n, sh.in, sh.k, sh.in),
                     .inputs = {in({sh.n, sh.in}, positive(0.05, 0.6)), in({sh.k, sh.in}, distinct(-2.0, 2.0)),
                                in({sh.n}, ints(0, int(sh.k) - 1))},
                     .op = [](const Args& a) { return elided_margin_radius(a[0], a[1], a[2]); },
                     .ref = ref, .gradgrad = sh.n == 5, .finite_differences = sh.fd, .f32 = {1e-4, 1e-5}});
  check_ops(cases);
}

TEST_CASE("ops: interval_conv2d and interval_linear, with and without the fused ReLU", "[ops][cuda][conv][interval]") {
  std::vector<OpCase> cases;
  for (const bool relu : {false, true}) {
    const std::string tag = relu ? " relu" : "";
    for (const ConvCfg& cfg : conv_cfgs) {
      if (cfg.transposed_input) continue;
      const Conv2dParams p{cfg.stride, cfg.pad};
      cases.push_back({.name = "interval_conv2d" + tag + " " + conv_name(cfg),
                       .inputs = interval_inputs(conv_x(cfg), conv_w(cfg), cfg.bias ? cfg.o : 0),
                       .op = [cfg, p, relu](const Args& a) {
                         return interval_conv2d(a[0], a[1], a[2], cfg.bias ? a[3] : Tensor(), p, relu);
                       },
                       .ref = [cfg, relu](const Refs& r) {
                         return ref_interval_stack(ref_conv2d(r[0], r[2], cfg.bias ? &r[3] : nullptr, cfg.stride, cfg.pad),
                                                   ref_conv2d(r[1], ref_abs_of(r[2]), nullptr, cfg.stride, cfg.pad), relu);
                       },
                       .gradgrad = cfg.gradgrad});
    }
    // Off the 64x64 tile: two tile rows (O = 70), more than one column tile, batch 1.
    const ConvCfg wide{2, 3, 9, 8, 70, 3, 1, 1, true, false}, deep{1, 67, 5, 5, 3, 3, 1, 1, true, false};
    for (const ConvCfg& cfg : {wide, deep}) {
      const Conv2dParams p{cfg.stride, cfg.pad};
      cases.push_back({.name = "interval_conv2d" + tag + " tiles " + conv_name(cfg),
                       .inputs = interval_inputs(conv_x(cfg), conv_w(cfg), cfg.o),
                       .op = [p, relu](const Args& a) { return interval_conv2d(a[0], a[1], a[2], a[3], p, relu); },
                       .ref = [cfg, relu](const Refs& r) {
                         return ref_interval_stack(ref_conv2d(r[0], r[2], &r[3], cfg.stride, cfg.pad),
                                                   ref_conv2d(r[1], ref_abs_of(r[2]), nullptr, cfg.stride, cfg.pad), relu);
                       },
                       .finite_differences = false, .f32 = {1e-4, 1e-5}});
    }
    // Linear: batch 1, the IBP models' shapes scaled down, and sizes off the tile both ways.
    const struct { int64_t n, in, out; bool bias, gradgrad, fd; } lins[] = {
        {1, 3, 1, true, true, true}, {4, 7, 5, false, false, true}, {3, 10, 6, true, false, true},
        {67, 70, 5, true, false, false}, {5, 130, 66, true, false, false}};
    for (const auto& l : lins) {
      cases.push_back({.name = fmt::format("interval_linear{} [{}, {}] -> {}{}", tag, l.n, l.in, l.out, l.bias ? " bias" : ""),
                       .inputs = interval_inputs({l.n, l.in}, {l.out, l.in}, l.bias ? l.out : 0),
                       .op = [l, relu](const Args& a) { return interval_linear(a[0], a[1], a[2], l.bias ? a[3] : Tensor(), relu); },
                       .ref = [l, relu](const Refs& r) {
                         return ref_interval_stack(ref_linear(r[0], r[2], l.bias ? &r[3] : nullptr),
                                                   ref_linear(r[1], ref_abs_of(r[2]), nullptr), relu);
                       },
                       .gradgrad = l.gradgrad, .finite_differences = l.fd, .f32 = {1e-4, 1e-5}});
    }
  }
  check_ops(cases);
}


// ==== pooling ============================================================================================

TEST_CASE("ops: pooling", "[ops][cuda]") {
  std::vector<OpCase> cases;
  struct P {
    Shape x;
    int64_t k, s, p;
    bool gradgrad;
  };
  for (const P& c : std::vector<P>{{{2, 3, 6, 6}, 2, 2, 0, true}, {{1, 2, 5, 7}, 3, 2, 1, true}, {{1, 1, 4, 4}, 3, 1, 1, false},
                                   {{2, 1, 5, 5}, 2, 1, 0, false}, {{1, 3, 7, 5}, 3, 3, 0, false}, {{1, 1, 1, 1}, 1, 1, 0, false},
                                   {{2, 2, 6, 5}, 2, 2, 1, false}}) {
    const std::string s = fmt::format("{} k{} s{} p{}", shape_str(c.x), c.k, c.s, c.p);
    cases.push_back({.name = "max_pool2d " + s, .inputs = {in(c.x, distinct())},
                     .op = [c](const Args& a) { return max_pool2d(a[0], c.k, c.s, c.p); },
                     .ref = [c](const Refs& r) { return ref_pool(r[0], c.k, c.s, c.p, true); }, .gradgrad = c.gradgrad});
    cases.push_back({.name = "avg_pool2d " + s, .inputs = {in(c.x)},
                     .op = [c](const Args& a) { return avg_pool2d(a[0], c.k, c.s, c.p); },
                     .ref = [c](const Refs& r) { return ref_pool(r[0], c.k, c.s, c.p, false); }, .gradgrad = c.gradgrad});
  }
  // The CUDA pooling kernels at awkward sizes: odd planes and sizes, partial windows, padding 2.
  for (const P& c : std::vector<P>{{{1, 6, 13, 11}, 3, 2, 1, false}, {{1, 5, 9, 10}, 2, 2, 0, false},
                                   {{1, 3, 8, 7}, 3, 1, 1, false}, {{1, 2, 12, 12}, 4, 3, 2, false},
                                   {{1, 1, 5, 5}, 5, 1, 2, false}}) {
    const std::string s = fmt::format("{} k{} s{} p{}", shape_str(c.x), c.k, c.s, c.p);
    cases.push_back(at_cuda_size({.name = "max_pool2d " + s, .inputs = {in(c.x, distinct())},
                                  .op = [c](const Args& a) { return max_pool2d(a[0], c.k, c.s, c.p); },
                                  .ref = [c](const Refs& r) { return ref_pool(r[0], c.k, c.s, c.p, true); }}));
    cases.push_back(at_cuda_size({.name = "avg_pool2d " + s, .inputs = {in(c.x)},
                                  .op = [c](const Args& a) { return avg_pool2d(a[0], c.k, c.s, c.p); },
                                  .ref = [c](const Refs& r) { return ref_pool(r[0], c.k, c.s, c.p, false); }}));
  }
  cases.push_back({.name = "max_pool2d all-negative window at the padding", .inputs = {in({1, 1, 3, 3}, distinct(-5, -1))},
                   .op = [](const Args& a) { return max_pool2d(a[0], 2, 2, 1); },
                   .ref = [](const Refs& r) { return ref_pool(r[0], 2, 2, 1, true); }});
  cases.push_back({.name = "max_pool2d offset input", .inputs = {in_o({1, 2, 4, 4}, distinct())},
                   .op = [](const Args& a) { return max_pool2d(a[0], 2, 2, 0); },
                   .ref = [](const Refs& r) { return ref_pool(r[0], 2, 2, 0, true); }});
  cases.push_back({.name = "avg_pool2d offset input", .inputs = {in_o({1, 2, 4, 4})},
                   .op = [](const Args& a) { return avg_pool2d(a[0], 2, 2, 0); },
                   .ref = [](const Refs& r) { return ref_pool(r[0], 2, 2, 0, false); }});
  cases.push_back({.name = "max_pool2d transposed input", .inputs = {in_t({2, 2, 5, 4}, distinct())},
                   .op = [](const Args& a) { return max_pool2d(a[0], 2, 2, 0); },
                   .ref = [](const Refs& r) { return ref_pool(r[0], 2, 2, 0, true); }});
  for (const auto& [x, oh, ow, gg] : std::vector<std::tuple<Shape, int64_t, int64_t, bool>>{
           {{2, 3, 7, 5}, 3, 2, true}, {{1, 2, 6, 6}, 3, 3, false}, {{2, 1, 5, 5}, 1, 1, false}, {{1, 2, 4, 4}, 5, 3, false},
           {{1, 1, 8, 8}, 8, 8, false}, {{1, 4, 13, 11}, 5, 3, false}, {{1, 3, 7, 7}, 1, 1, false}, {{1, 2, 5, 6}, 7, 4, false},
           {{1, 3, 10, 10}, 3, 3, false}, {{1, 1, 1, 1}, 2, 3, false}}) {
    const int64_t h = oh, w = ow;
    cases.push_back({.name = fmt::format("adaptive_avg_pool2d {} -> {}x{}", shape_str(x), oh, ow), .inputs = {in(x)},
                     .op = [h, w](const Args& a) { return adaptive_avg_pool2d(a[0], h, w); },
                     .ref = [h, w](const Refs& r) { return ref_adaptive_avg_pool2d(r[0], h, w); }, .gradgrad = gg});
  }
  check_ops(cases);
}

// ==== normalisation ========================================================================================

namespace {
// batch_norm (batch_norm_relu with `relu`) with fresh running statistics (mean 0.1, var 1.5) on
// every call.
Tensor bn_op(const Args& a, bool training, bool relu = false) {
  const int64_t c = a[0].size(1);
  const Device dev = a[0].device();
  Tensor rm = Tensor::full({c}, 0.1, a.dtype, dev), rv = Tensor::full({c}, 1.5, a.dtype, dev);
  return (relu ? batch_norm_relu : batch_norm)(a[0], a[1], a[2], rm, rv, training, 0.1, 1e-5);
}
}  // namespace

TEST_CASE("ops: batch_norm", "[ops][cuda]") {
  std::vector<OpCase> cases;
  for (const Shape& x : std::vector<Shape>{{4, 3}, {2, 3, 3, 2}, {2, 1}, {1, 2, 2, 2}, {3, 5, 1, 1}}) {
    const std::vector<InputSpec> ins = {in(x, uniform(-2, 2)), in({x[1]}, uniform(0.5, 1.5)), in({x[1]})};
    cases.push_back({.name = fmt::format("batch_norm train {}", shape_str(x)), .inputs = ins,
                     .op = [](const Args& a) { return bn_op(a, true); },
                     .ref = [](const Refs& r) {
                       std::vector<double> mu, var;
                       channel_stats(r[0], mu, var);
                       return ref_batch_norm(r[0], r[1], r[2], mu, var, 1e-5);
                     },
                     .gradgrad = true, .f32 = {1e-4, 1e-4}});
    cases.push_back({.name = fmt::format("batch_norm eval {}", shape_str(x)), .inputs = ins,
                     .op = [](const Args& a) { return bn_op(a, false); },
                     .ref = [](const Refs& r) {
                       const int64_t c = r[0].shape[1];
                       return ref_batch_norm(r[0], r[1], r[2], std::vector<double>(c, 0.1), std::vector<double>(c, 1.5), 1e-5);
                     },
                     .gradgrad = true});
  }
  // The CUDA training kernels: inner 49 and 100, batch 1, many samples of inner 1, and means far
  // from 0 (the shifted variance).
  for (const auto& [x, g] : std::vector<std::pair<Shape, Gen>>{{{3, 5, 7, 7}, uniform(-1, 1)}, {{8, 7}, uniform(-1, 1)},
                                                              {{4, 3, 10, 10}, uniform(49, 51)}, {{1, 3, 7, 7}, uniform(-1, 1)},
                                                              {{300, 2}, uniform(-21, -19)}}) {
    cases.push_back(at_cuda_size({.name = fmt::format("batch_norm train {} at the CUDA sizes", shape_str(x)),
                                  .inputs = {in(x, g), in({x[1]}, uniform(0.5, 1.5)), in({x[1]})},
                                  .op = [](const Args& a) { return bn_op(a, true); },
                                  .ref = [](const Refs& r) {
                                    std::vector<double> mu, var;
                                    channel_stats(r[0], mu, var);
                                    return ref_batch_norm(r[0], r[1], r[2], mu, var, 1e-5);
                                  },
                                  .f32 = {1e-4, 1e-4}, .cuda_tol = {1e-4, 1e-4}}));
  }
  // batch_norm_relu: the ReLU in the training kernels' writing pass and its mask read with g in
  // the backward's two passes (train), the composition in eval mode.
  for (const Shape& x : std::vector<Shape>{{4, 3}, {2, 3, 3, 2}, {3, 5, 7, 7}, {1, 3, 7, 7}}) {
    const bool small = shape_numel(x) < 50;
    for (const bool training : {true, false}) {
      OpCase c{.name = fmt::format("batch_norm_relu {} {}", training ? "train" : "eval", shape_str(x)),
               .inputs = {in(x, uniform(-2, 2)), in({x[1]}, uniform(0.5, 1.5)), in({x[1]})},
               .op = [training](const Args& a) { return bn_op(a, training, true); },
               .ref = [training](const Refs& r) {
                 const int64_t c = r[0].shape[1];
                 std::vector<double> mu(c, 0.1), var(c, 1.5);
                 if (training) channel_stats(r[0], mu, var);
                 return ref_relu(ref_batch_norm(r[0], r[1], r[2], mu, var, 1e-5));
               },
               .gradgrad = small, .f32 = {1e-4, 1e-4}};
      cases.push_back(small ? c : at_cuda_size(c));
    }
  }
  check_ops(cases);
}

namespace {
uint64_t total_launches() {  // every kernel launched so far under the emulator
  uint64_t n = 0;
  for (const auto& [name, record] : emu::launch_counts()) n += record.launches;
  return n;
}

// Runs f on fresh leaves made from `values` on `dev`, then a backward of <u, f> for a fixed
// random u: the output and every input's gradient (CPU copies), and the kernels it launched.
struct FusedRun {
  std::vector<Tensor> tensors;  // output, then each input's gradient
  uint64_t launches = 0;
};
FusedRun run_on(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& values, Device dev) {
  std::vector<Tensor> leaves;
  for (const Tensor& v : values) {
    Tensor t = v.to(dev).clone();
    t.set_requires_grad(true);
    leaves.push_back(t);
  }
  const uint64_t before = total_launches();
  const Tensor y = f(leaves);
  Generator gu(99);
  const Tensor u = rand_uniform(y.shape(), -1, 1, gu).to(dev);
  const std::vector<Tensor> grads = grad({y}, leaves, {u});
  FusedRun r{{y.detach().to(Device::cpu)}, total_launches() - before};
  for (const Tensor& gi : grads) r.tensors.push_back(gi.to(Device::cpu));
  return r;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.contiguous().data<float>(), b.contiguous().data<float>(),
                                               sizeof(float) * static_cast<size_t>(a.numel())) == 0;
}
}  // namespace

// The fused ReLU epilogues compute the same function as the op then relu(), to the bit, forward
// and backward, on each backend; on CUDA the fused forward saves the ReLU's launch, and BN+ReLU's
// backward saves relu_grad's too (its kernels read the mask themselves).
TEST_CASE("conv2d_relu, linear_relu and batch_norm_relu are bitwise the op then relu, in fewer launches",
          "[ops][cuda]") {
  Generator g(11);
  const Tensor x = rand_uniform({3, 5, 9, 7}, -1, 1, g), w = rand_uniform({6, 5, 3, 3}, -0.3, 0.3, g),
               b = rand_uniform({6}, -0.3, 0.3, g), xl = rand_uniform({7, 13}, -1, 1, g), wl = rand_uniform({9, 13}, -0.5, 0.5, g),
               bl = rand_uniform({9}, -0.5, 0.5, g), xb = rand_uniform({4, 6, 5, 5}, -2, 2, g),
               gamma = rand_uniform({6}, 0.5, 1.5, g), beta = rand_uniform({6}, -0.5, 0.5, g);
  const auto bn = [](bool relu, Tensor& rm, Tensor& rv) {
    return [relu, &rm, &rv](const std::vector<Tensor>& a) {
      return relu ? batch_norm_relu(a[0], a[1], a[2], rm, rv, true) : bulwark::relu(batch_norm(a[0], a[1], a[2], rm, rv, true));
    };
  };
  for (const Device dev : {Device::cpu, Device::cuda}) {
    INFO(device_name(dev));
    Tensor rm_f = Tensor::zeros({6}).to(dev), rv_f = Tensor::ones({6}).to(dev), rm_c = rm_f.clone(), rv_c = rv_f.clone();
    struct Pair {
      const char* what;
      std::function<Tensor(const std::vector<Tensor>&)> fused, composed;
      std::vector<Tensor> values;
      uint64_t saved;  // launches the fused version saves on CUDA
    };
    const Conv2dParams p{2, 1};
    const std::vector<Pair> pairs = {
        {"conv2d_relu", [p](const auto& a) { return conv2d_relu(a[0], a[1], a[2], p); },
         [p](const auto& a) { return bulwark::relu(conv2d(a[0], a[1], a[2], p)); }, {x, w, b}, 1},
        {"conv2d_relu without bias", [](const auto& a) { return conv2d_relu(a[0], a[1]); },
         [](const auto& a) { return bulwark::relu(conv2d(a[0], a[1])); }, {x, w}, 1},
        {"linear_relu", [](const auto& a) { return linear_relu(a[0], a[1], a[2]); },
         [](const auto& a) { return bulwark::relu(linear(a[0], a[1], a[2])); }, {xl, wl, bl}, 1},
        {"batch_norm_relu", bn(true, rm_f, rv_f), bn(false, rm_c, rv_c), {xb, gamma, beta}, 2},
    };
    for (const Pair& pr : pairs) {
      INFO(pr.what);
      const FusedRun fused = run_on(pr.fused, pr.values, dev), composed = run_on(pr.composed, pr.values, dev);
      REQUIRE(fused.tensors.size() == composed.tensors.size());
      for (size_t i = 0; i < fused.tensors.size(); ++i) {
        INFO("tensor " << i << " (0: output, then the inputs' gradients)");
        CHECK(same_bits(fused.tensors[i], composed.tensors[i]));
      }
      const float* out = fused.tensors[0].data<float>();
      CHECK(std::count(out, out + fused.tensors[0].numel(), 0.0f) > 0);  // the ReLU clipped: the mask matters
      if (dev == Device::cuda) CHECK(composed.launches - fused.launches == pr.saved);
    }
    CHECK(same_bits(rm_f.to(Device::cpu), rm_c.to(Device::cpu)));
    CHECK(same_bits(rv_f.to(Device::cpu), rv_c.to(Device::cpu)));
  }
}

TEST_CASE("ops: batch_norm updates the running statistics (unbiased variance)", "[ops]") {
  for (const Shape& xs : std::vector<Shape>{{5, 3}, {2, 3, 2, 3}}) {
    for (DType dt : {DType::f32, DType::f64}) {
      RT x(xs);
      std::mt19937_64 rng(7);
      x.v = uniform(-2, 3).draw(rng, x.numel());
      const int64_t c = xs[1];
      RT rm0({c}), rv0({c});
      rm0.v = uniform(-1, 1).draw(rng, c);
      rv0.v = uniform(0.5, 2).draw(rng, c);
      Tensor rm = from_rt(rm0, dt), rv = from_rt(rv0, dt);
      const double momentum = 0.3;
      Tensor xt = from_rt(x, dt);
      xt.set_requires_grad(true);
      batch_norm(xt, Tensor::ones({c}, dt), Tensor::zeros({c}, dt), rm, rv, true, momentum, 1e-5);
      std::vector<double> mu, var;
      channel_stats(x, mu, var);
      const double n = static_cast<double>(x.numel() / c);
      RT want_m({c}), want_v({c});
      for (int64_t k = 0; k < c; ++k) {
        want_m.v[k] = (1 - momentum) * rm0.v[k] + momentum * mu[k];
        want_v.v[k] = (1 - momentum) * rv0.v[k] + momentum * var[k] * n / (n - 1);
      }
      const Tol tol = dt == DType::f32 ? Tol{1e-5, 1e-5} : Tol{1e-12, 1e-12};
      INFO(shape_str(xs) << " " << dtype_name(dt));
      CHECK(compare(rm.to_vector_f64(), want_m.v, {c}, tol) == "");
      CHECK(compare(rv.to_vector_f64(), want_v.v, {c}, tol) == "");
      CHECK(rm.is_leaf());  // the update is not recorded
      CHECK_FALSE(rm.requires_grad());
      // Eval mode leaves them alone.
      const std::vector<double> before = rm.to_vector_f64();
      batch_norm(xt, Tensor::ones({c}, dt), Tensor::zeros({c}, dt), rm, rv, false, momentum, 1e-5);
      CHECK(rm.to_vector_f64() == before);
    }
  }
}

// ==== softmax and losses ===================================================================================

// The training step's loss and accuracy from one kernel: the loss is cross_entropy's to the bit,
// the count is argmax == label's, ties (the first maximum wins) and NaN rows included, on both
// backends and at sizes where a row spans several warp strides; on CUDA in 4 launches, not 8.
TEST_CASE("cross_entropy_and_correct is cross_entropy and the argmax == label count, in half the launches",
          "[ops][cuda]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Rows: clear win; the label ties an earlier maximum (wrong) or a later one (right); NaN at the
  // label; NaN elsewhere; all NaN with label 0 (argmax 0: right) and label 1 (wrong).
  const std::vector<float> special = {3, 1, 2, 1, 1,    2, 5, 1, 5, 0,    2, 5, 1, 5, 0,    1, nan, 0, 2, 1,
                                      0, 4, nan, 1, 2,  nan, nan, nan, nan, nan,  nan, nan, nan, nan, nan};
  const std::vector<int32_t> special_labels = {0, 3, 1, 1, 1, 0, 1};  // right: 1, 0, 1, 0, 1, 1, 0
  Generator g(21);
  for (const Device dev : {Device::cpu, Device::cuda}) {
    INFO(device_name(dev));
    const auto composed_count = [](const Tensor& z, const Tensor& y) {
      return sum(eq(argmax(z, 1).to(DType::f32), y.to(DType::f32))).item();
    };
    {
      const Tensor z = Tensor::from_vector(special, {7, 5}).to(dev), y = Tensor::from_vector(special_labels, {7}).to(dev);
      const LossAndCorrect r = cross_entropy_and_correct(z, y);
      CHECK(r.correct.item() == 4.0);
      CHECK(r.correct.item() == composed_count(z, y));
    }
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {37, 10}, {9, 33}, {5, 1000}}) {
      INFO(rows << " x " << cols);
      // Values on a coarse grid, so rows have ties; labels drawn so that about half are right.
      Tensor z = rand_uniform({rows, cols}, 0, 4, g).to(dev);
      z = (z * 2.0).to(DType::i32).to(DType::f32);
      std::vector<int32_t> labels(static_cast<size_t>(rows));
      const Tensor am = argmax(z, 1).to(Device::cpu);
      for (int64_t r = 0; r < rows; ++r)
        labels[static_cast<size_t>(r)] = r % 2 == 0 ? am.data<int32_t>()[r] : static_cast<int32_t>((r * 7) % cols);
      const Tensor y = Tensor::from_vector(labels, {rows}).to(dev);
      Tensor zl = z.clone();
      zl.set_requires_grad(true);
      const LossAndCorrect r = cross_entropy_and_correct(zl, y);
      const Tensor loss = cross_entropy(z, y);
      CHECK(r.loss.item() == loss.item());
      CHECK(r.correct.item() == composed_count(z, y));
      backward(r.loss);
      Tensor zc = z.clone();
      zc.set_requires_grad(true);
      backward(cross_entropy(zc, y));
      CHECK(zl.grad().to(Device::cpu).to_vector() == zc.grad().to(Device::cpu).to_vector());
    }
    if (dev == Device::cuda) {
      const Tensor z = rand_uniform({8, 10}, -1, 1, g).to(dev), y = Tensor::zeros({8}, DType::i32).to(dev);
      const auto launches = [](const std::function<void()>& f) {
        const uint64_t before = total_launches();
        f();
        return total_launches() - before;
      };
      const uint64_t fused = launches([&] { cross_entropy_and_correct(z, y); });
      const uint64_t apart = launches([&] {
        cross_entropy(z, y);
        sum(eq(argmax(z, 1).to(DType::f32), y.to(DType::f32)));
      });
      CHECK(fused == 4);  // the label check, the loss rows (with the flags), and the two sums
      CHECK(apart - fused == 4);
    }
  }
}

TEST_CASE("ops: log_softmax, softmax, cross_entropy, cw_margin", "[ops][cuda]") {
  std::vector<OpCase> cases;
  for (const auto& [x, dim] : std::vector<std::pair<InputSpec, int64_t>>{
           {in({3, 5}, uniform(-3, 3)), -1}, {in({2, 4, 3}, uniform(-3, 3)), 1}, {in({1, 1}), -1}, {in_t({4, 3}, uniform(-3, 3)), 1},
           {in({3, 5}, uniform(-3, 3)), 0}, {in({2, 3}, values({100, 101, 102, -50, 0, 50})), 1}}) {
    cases.push_back({.name = with_shapes(fmt::format("log_softmax dim {}", dim), {x}), .inputs = {x},
                     .op = [dim](const Args& a) { return log_softmax(a[0], dim); },
                     .ref = [dim](const Refs& r) { return ref_log_softmax(r[0], dim); }, .gradgrad = true});
    cases.push_back({.name = with_shapes(fmt::format("softmax dim {}", dim), {x}), .inputs = {x},
                     .op = [dim](const Args& a) { return softmax(a[0], dim); },
                     .ref = [dim](const Refs& r) { return map1(ref_log_softmax(r[0], dim), [](double v) { return std::exp(v); }); },
                     .gradgrad = true});
  }
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{4, 5}, {1, 3}, {6, 2}, {3, 1}}) {
    for (bool reduce : {true, false}) {
      cases.push_back({.name = fmt::format("cross_entropy [{},{}] reduce {}", n, k, reduce),
                       .inputs = {in({n, k}, uniform(-3, 3)), in({n}, ints(0, static_cast<int>(k) - 1))},
                       .op = [reduce](const Args& a) { return cross_entropy(a[0], a[1], reduce); },
                       .ref = [reduce](const Refs& r) { return ref_cross_entropy(r[0], r[1], reduce); }, .gradgrad = true});
    }
  }
  // The CUDA row kernels: rows of 1000 (several warps per row), 31 and 33 (either side of a warp),
  // 129 rows.
  for (const Shape& z : std::vector<Shape>{{7, 1000}, {129, 33}, {1, 31}, {129, 10}}) {
    cases.push_back(at_cuda_size({.name = fmt::format("log_softmax {} dim 1", shape_str(z)), .inputs = {in(z, uniform(-8, 8))},
                                  .op = [](const Args& a) { return log_softmax(a[0], 1); },
                                  .ref = [](const Refs& r) { return ref_log_softmax(r[0], 1); }}));
    cases.push_back(at_cuda_size({.name = fmt::format("cross_entropy {} reduce false", shape_str(z)),
                                  .inputs = {in(z, uniform(-8, 8)), in({z[0]}, ints(0, static_cast<int>(z[1]) - 1))},
                                  .op = [](const Args& a) { return cross_entropy(a[0], a[1], false); },
                                  .ref = [](const Refs& r) { return ref_cross_entropy(r[0], r[1], false); }}));
  }
  cases.push_back({.name = "cross_entropy large logits", .inputs = {in({2, 3}, values({1000, 0, -1000, 50, 60, 70})), in({2}, values({1, 2}))},
                   .op = [](const Args& a) { return cross_entropy(a[0], a[1].to(DType::i32), false); },
                   .ref = [](const Refs& r) { return ref_cross_entropy(r[0], r[1], false); }, .grad = false});
  cases.push_back({.name = "cross_entropy offset logits and labels", .inputs = {in_o({3, 4}), in_o({3}, ints(0, 3))},
                   .op = [](const Args& a) { return cross_entropy(a[0], a[1], false); },
                   .ref = [](const Refs& r) { return ref_cross_entropy(r[0], r[1], false); }});
  cases.push_back({.name = "cross_entropy transposed logits", .inputs = {in_t({4, 3}), in({4}, ints(0, 2))},
                   .op = [](const Args& a) { return cross_entropy(a[0], a[1]); },
                   .ref = [](const Refs& r) { return ref_cross_entropy(r[0], r[1], true); }});
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{4, 5}, {1, 2}, {3, 10}}) {
    cases.push_back({.name = fmt::format("cw_margin [{},{}]", n, k),
                     .inputs = {in({n, k}, distinct()), in({n}, ints(0, static_cast<int>(k) - 1))},
                     .op = [](const Args& a) { return cw_margin(a[0], a[1]); },
                     .ref = [](const Refs& r) { return ref_cw_margin(r[0], r[1]); }, .gradgrad = true});
  }
  check_ops(cases);
}

// ==== helpers and argument errors ========================================================================

TEST_CASE("ops: zeros_like, ones_like, allclose, max_abs_diff", "[ops]") {
  const Tensor a = Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  CHECK(zeros_like(a).to_vector_f64() == std::vector<double>{0, 0, 0, 0});
  CHECK(ones_like(a).dtype() == DType::f64);
  CHECK(ones_like(a.t()).shape() == Shape{2, 2});
  const Tensor b = Tensor::from_vector(std::vector<double>{1, 2, 3, 4.5}, {2, 2});
  CHECK(max_abs_diff(a, b) == Approx(0.5));
  CHECK(max_abs_diff(a.t(), a.t().contiguous()) == 0.0);
  CHECK_FALSE(allclose(a, b));
  CHECK(allclose(a, b, 0.0, 0.5));
  CHECK(allclose(a, b, 0.2, 0.0));  // |4 - 4.5| <= 0.2 * 4.5
  CHECK_FALSE(allclose(a, a.reshape({4})));
}

TEST_CASE("ops: bad arguments give clear errors", "[ops]") {
  const Tensor x = Tensor::zeros({2, 3, 5, 5});
  const Tensor labels = Tensor::from_vector(std::vector<int32_t>{0, 5}, {2});
  CHECK_THROWS_WITH(cross_entropy(Tensor::zeros({2, 3}), labels), Catch::Contains("label 5"));
  CHECK_THROWS_AS(gather(Tensor::zeros({2, 3}), Tensor::from_vector(std::vector<int32_t>{3, 0}, {2, 1}), 1), std::out_of_range);
  CHECK_THROWS_AS(one_hot(labels, 3), std::out_of_range);
  CHECK_THROWS_AS(max_pool2d(x, 2, 2, 2), std::invalid_argument);  // padding > kernel / 2
  CHECK_THROWS_AS(conv2d(x, Tensor::zeros({4, 3, 7, 7})), std::invalid_argument);  // kernel larger than input
  // (2 - 3) / 2 + 1 truncates to 1: the fit is tested, not read off the formula.
  CHECK_THROWS_WITH(conv2d(Tensor::zeros({1, 3, 2, 2}), Tensor::zeros({4, 3, 3, 3}), Tensor(), {2, 0}),
                    Catch::Contains("smaller than the kernel"));
  CHECK_THROWS_WITH(avg_pool2d(Tensor::zeros({1, 3, 2, 2}), 3, 2, 0), Catch::Contains("smaller than the kernel"));
  CHECK_THROWS_AS(conv2d(x, Tensor::zeros({4, 3, 3, 3}), Tensor(), {0, 0}), std::invalid_argument);  // stride 0
  CHECK_THROWS_AS(conv2d(x, Tensor::zeros({4, 3, 3, 3}), Tensor::zeros({3})), std::invalid_argument);  // bias size
  CHECK_THROWS_AS(sum(x, {4}), std::invalid_argument);
  CHECK_THROWS_AS(sum(x, {1, -3}), std::invalid_argument);  // repeated
  CHECK_THROWS_AS(x.reshape({7, -1}), std::invalid_argument);
  CHECK_THROWS_AS(x.permute({0, 1, 1, 2}), std::invalid_argument);
  CHECK_THROWS_AS(x.slice(1, 2, 1), std::invalid_argument);
  CHECK_THROWS_AS(x.expand({2, 4, 5, 5}), std::invalid_argument);
  CHECK_THROWS_AS(concat({Tensor::zeros({2, 3}), Tensor::zeros({3, 3})}, 1), std::invalid_argument);
  CHECK_THROWS_AS(add(Tensor::zeros({2}), Tensor::zeros({2}, DType::f64)), std::invalid_argument);
  CHECK_THROWS_AS(exp(labels), std::invalid_argument);
  Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  CHECK_THROWS_AS(batch_norm(Tensor::zeros({1, 3}), Tensor::ones({3}), Tensor::zeros({3}), rm, rv, true),
                  std::invalid_argument);  // one value per channel: no batch statistics
}

TEST_CASE("ops: CPU kernels give the same bits on 1 and 2 threads", "[ops]") {
  // Reductions and the conv weight gradient split work in a fixed way, so a run is
  // reproducible on any machine, whatever its core count.
  std::mt19937_64 rng(3);
  const auto rand = [&](const Shape& s) {
    RT r(s);
    r.v = uniform().draw(rng, r.numel());
    return from_rt(r, DType::f32);
  };
  const Tensor x = rand({16, 8, 14, 14}), w = rand({16, 8, 4, 4}), b = rand({16}), big = rand({64, 300, 7});
  const Tensor m1 = rand({200, 96}), m2 = rand({96, 150});
  const auto run = [&] {
    const Tensor y = conv2d(x, w, b, {2, 1});
    return std::vector<Tensor>{y, conv2d_backward_input(y, w, x.shape(), {2, 1}), conv2d_backward_weight(x, y, w.shape(), {2, 1}),
                               sum(big), sum(big, {0, 2}), sum(big, {1}), matmul(m1, m2), add(x, b.reshape({1, 16, 1, 1}).slice(1, 0, 8))};
  };
  // The direct backward-weight: every dW entry is one thread's, summed over sample groups in order.
  const Tensor xd = rand({11, 16, 24, 24}), gd = rand({11, 16, 24, 24});
  const auto run_direct = [&] {
    const CpuConvSettings restore;
    cpu::set_conv_algorithm(cpu::ConvAlgorithm::direct);
    std::vector<Tensor> out = {conv2d_backward_weight(xd, gd, {16, 16, 3, 3}, {1, 1})};
    cpu::set_math_precision(MathPrecision::bf16);
    out.push_back(conv2d_backward_weight(xd, gd, {16, 16, 3, 3}, {1, 1}));
    return out;
  };
  const int before = cpu::num_threads();
  cpu::set_num_threads(1);
  std::vector<Tensor> one = run();
  for (const Tensor& t : run_direct()) one.push_back(t);
  cpu::set_num_threads(2);
  std::vector<Tensor> two = run();
  for (const Tensor& t : run_direct()) two.push_back(t);
  cpu::set_num_threads(before);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result " << i);
    CHECK(one[i].to_vector() == two[i].to_vector());
  }
}

TEST_CASE("ops: CUDA tensors (emulated backend): moves, autograd across devices, clear errors", "[ops][cuda]") {
  const Tensor h = Tensor::from_vector(std::vector<float>{1, -2, 3, 4, 5, -6}, {2, 3});
  const Tensor d = h.cuda();
  CHECK(d.device() == Device::cuda);
  CHECK(d.to_vector() == h.to_vector());
  CHECK(d.cpu().device() == Device::cpu);
  CHECK(sum(d).item() == 5.0);
  CHECK(Tensor::ones({4}, DType::f32, Device::cuda).to_vector() == std::vector<float>(4, 1.0f));
  CHECK(Tensor::zeros({3}, DType::i32, Device::cuda).to_vector_i32() == std::vector<int32_t>(3, 0));
  CHECK(d.t().contiguous().to_vector() == h.t().contiguous().to_vector());
  Tensor e = Tensor::empty({2, 3}, DType::f32, Device::cuda);
  e.copy_(h);  // host to device
  CHECK(e.to_vector() == h.to_vector());
  // to(Device)'s backward moves the gradient back to the leaf's device.
  Tensor leaf = h.detach().clone();
  leaf.set_requires_grad(true);
  const std::vector<Tensor> g = grad({sum(square(leaf.cuda()))}, {leaf});
  CHECK(g[0].device() == Device::cpu);
  CHECK(g[0].to_vector() == (h * 2.0).to_vector());
  // Mixed devices and f64 on CUDA are clear errors; device indices are checked on the device and
  // a bad one is raised when a result is read (docs/engine.md, "Deferred index errors").
  CHECK_THROWS_AS(add(d, h), std::invalid_argument);
  CHECK_THROWS_WITH(add(d, h), Catch::Contains("different devices"));
  CHECK_THROWS_WITH(Tensor::zeros({2}, DType::f64, Device::cuda), Catch::Contains("f32 only"));
  const Tensor labels = Tensor::from_vector(std::vector<int32_t>{0, 5}, {2}).cuda();
  CHECK_THROWS_WITH(cross_entropy(d, labels).item(), Catch::Contains("label 5"));
  CHECK_THROWS_AS(gather(d, Tensor::from_vector(std::vector<int32_t>{3, 0}, {2, 1}).cuda(), 1).cpu(), std::out_of_range);
}

// ==== symbolic intervals (engine/symbolic_ops.cpp) ===================================================

namespace {
// The rows' concrete bounds as models/symbolic.h defines them, in f64: [2, N, M].
RT ref_symbolic_bounds(const Refs& a) {
  const RT &c = a[0], &r = a[1], &bc = a[2], &br = a[3];
  const int64_t n = c.size(0), d = c.size(1) - 3, m = c.size(2);
  RT out({2, n, m});
  for (int64_t s = 0; s < n; ++s)
    for (int64_t j = 0; j < m; ++j) {
      double lo = c[{s, d, j}] - r[{s, d, j}], up = c[{s, d, j}] + r[{s, d, j}];
      for (int64_t i = 0; i < d; ++i) {
        const double cc = c[{s, i, j}] - c[{s, d + 1, j}], U = cc + r[{s, i, j}], L = cc - r[{s, i, j}];
        up += U * bc[{s, i}] + std::fabs(U) * br[{s, i}];
        lo += L * bc[{s, i}] - std::fabs(L) * br[{s, i}];
      }
      const double ic = c[{s, d + 2, j}], ir = r[{s, d + 2, j}];
      out[{0, s, j}] = std::max(lo, ic - ir);
      out[{1, s, j}] = std::min(up, ic + ir);
    }
  return out;
}
// The rows after the ReLU with bounds [l, u], in f64: [2, N, d + 3, M].
RT ref_symbolic_relu(const Refs& a) {
  const RT &c = a[0], &r = a[1], &b = a[2];
  const int64_t n = c.size(0), d = c.size(1) - 3, m = c.size(2);
  RT out({2, n, d + 3, m});
  for (int64_t s = 0; s < n; ++s)
    for (int64_t j = 0; j < m; ++j) {
      const double l = b[{0, s, j}], u = b[{1, s, j}];
      const double up = std::max(u, 0.0), lo = std::min(l, 0.0), lp = std::max(l, 0.0);
      const double lambda = up / std::max(up - lo, 1e-12), h = -lambda * lo / 2;
      for (int64_t i = 0; i < d; ++i) {
        out[{0, s, i, j}] = lambda * (c[{s, i, j}] - c[{s, d + 1, j}]);
        out[{1, s, i, j}] = lambda * r[{s, i, j}];
      }
      out[{0, s, d, j}] = lambda * c[{s, d, j}] + h;
      out[{1, s, d, j}] = lambda * r[{s, d, j}] + h;
      out[{0, s, d + 2, j}] = (up + lp) / 2;
      out[{1, s, d + 2, j}] = (up - lp) / 2;
    }
  return out;
}
}  // namespace

TEST_CASE("ops: symbolic_bounds and symbolic_relu (the symbolic-interval ReLU)", "[ops][cuda][symbolic]") {
  std::vector<OpCase> cases;
  // (n, d, m): one of each; a partial warp of neurons; a row count off every block size.
  const struct { int64_t n, d, m; bool fd; } shapes[] = {{1, 1, 1, true}, {2, 3, 5, true}, {3, 7, 33, true},
                                                          {2, 19, 301, false}};
  for (const auto& sh : shapes) {
    const Shape rows{sh.n, sh.d + 3, sh.m};
    cases.push_back({.name = fmt::format("symbolic_bounds rows[{}, {}, {}]", sh.n, sh.d + 3, sh.m),
                     .inputs = {in(rows), in(rows), in({sh.n, sh.d}, positive(0.1, 0.9)),
                                in({sh.n, sh.d}, positive(0.01, 0.2))},
                     .op = [](const Args& a) { return symbolic_bounds(a[0], a[1], a[2], a[3]); },
                     .ref = ref_symbolic_bounds, .gradgrad = sh.n == 2, .finite_differences = sh.fd,
                     .f32 = {1e-4, 1e-4}, .cuda_tol = {1e-4, 1e-4}});
    cases.push_back({.name = fmt::format("symbolic_relu rows[{}, {}, {}]", sh.n, sh.d + 3, sh.m),
                     .inputs = {in(rows), in(rows), in({2, sh.n, sh.m}, away_from_zero(0.05, 1.0))},
                     .op = [](const Args& a) { return symbolic_relu(a[0], a[1], a[2]); },
                     .ref = ref_symbolic_relu, .gradgrad = sh.n == 2, .finite_differences = sh.fd,
                     .f32 = {1e-4, 1e-4}, .cuda_tol = {1e-4, 1e-4}});
  }
  check_ops(cases);
}
