#include "tests/op_harness.h"

#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <exception>

namespace bulwark::test {

// ---- reference tensors ----------------------------------------------------------------------

int64_t RT::flat(const std::vector<int64_t>& idx) const {
  int64_t f = 0;
  for (size_t d = 0; d < shape.size(); ++d) f = f * shape[d] + idx[d];
  return f;
}

std::vector<int64_t> unravel(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return idx;
}

RT to_rt(const Tensor& t) {
  RT r(t.shape());
  r.v = t.to_vector_f64();
  return r;
}

Tensor from_rt(const RT& r, DType dtype) {
  switch (dtype) {
    case DType::f64: return Tensor::from_vector(r.v, r.shape);
    case DType::f32: return Tensor::from_vector(std::vector<float>(r.v.begin(), r.v.end()), r.shape);
    case DType::i32: {
      std::vector<int32_t> v(r.v.size());
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int32_t>(r.v[i]);
      return Tensor::from_vector(v, r.shape);
    }
  }
  return Tensor();
}

// ---- generators ----------------------------------------------------------------------------

static double f32(double x) { return static_cast<double>(static_cast<float>(x)); }

Gen uniform(double lo, double hi) {
  return {[lo, hi](std::mt19937_64& rng, int64_t n) {
    std::uniform_real_distribution<double> d(lo, hi);
    std::vector<double> v(n);
    for (double& x : v) x = f32(d(rng));
    return v;
  }};
}

Gen away_from_zero(double min_abs, double max_abs) {
  return {[min_abs, max_abs](std::mt19937_64& rng, int64_t n) {
    std::uniform_real_distribution<double> d(min_abs, max_abs);
    std::bernoulli_distribution s(0.5);
    std::vector<double> v(n);
    for (double& x : v) x = f32(s(rng) ? d(rng) : -d(rng));
    return v;
  }};
}

Gen positive(double lo, double hi) { return uniform(lo, hi); }

Gen grid(double offset, int k) {
  return {[offset, k](std::mt19937_64& rng, int64_t n) {
    std::uniform_int_distribution<int> d(-k, k);
    std::vector<double> v(n);
    for (double& x : v) x = f32(offset + 0.1 * d(rng));
    return v;
  }};
}

Gen distinct(double lo, double hi) {
  return {[lo, hi](std::mt19937_64& rng, int64_t n) {
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = f32(lo + (hi - lo) * (static_cast<double>(i) + 0.5) / static_cast<double>(n));
    std::shuffle(v.begin(), v.end(), rng);
    return v;
  }};
}

Gen ints(int lo, int hi) {
  Gen g{[lo, hi](std::mt19937_64& rng, int64_t n) {
    std::uniform_int_distribution<int> d(lo, hi);
    std::vector<double> v(n);
    for (double& x : v) x = d(rng);
    return v;
  }};
  g.integer = true;
  return g;
}

Gen values(std::vector<double> vals) {
  return {[vals](std::mt19937_64&, int64_t n) {
    if (static_cast<int64_t>(vals.size()) != n)
      throw std::logic_error(fmt::format("values(): {} values for {} elements", vals.size(), n));
    std::vector<double> v = vals;
    for (double& x : v) x = f32(x);
    return v;
  }};
}

// ---- comparison ----------------------------------------------------------------------------

std::string compare(const std::vector<double>& got, const std::vector<double>& want, const Shape& shape, Tol tol) {
  if (got.size() != want.size()) return fmt::format("{} values, want {}", got.size(), want.size());
  int64_t bad = 0;
  double worst = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    if (err <= tol.atol + tol.rtol * std::abs(want[i])) continue;  // false for NaN: counted
    if (bad < 5)
      first += fmt::format("\n    at {}: got {:.10g}, want {:.10g} (diff {:.3g})", shape_str(unravel(static_cast<int64_t>(i), shape)),
                           got[i], want[i], got[i] - want[i]);
    ++bad;
    worst = std::max(worst, std::isnan(err) ? INFINITY : err);
  }
  if (!bad) return "";
  return fmt::format("{} of {} values differ (max |diff| {:.3g}, atol {:g}, rtol {:g}); first:{}", bad, got.size(), worst,
                     tol.atol, tol.rtol, first);
}

// ---- running a case --------------------------------------------------------------------------

namespace {

using Values = std::vector<std::vector<double>>;  // one flat, row-major vector per input
using Failures = std::vector<std::string>;

uint64_t seed_of(const std::string& name) {  // FNV-1a: each case has its own, stable values
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

bool is_float_input(const InputSpec& s) { return !s.gen.integer; }
bool is_grad_input(const InputSpec& s) { return is_float_input(s) && s.differentiable; }

// Builds one input tensor with the given logical values; `transposed` inputs are non-contiguous
// leaves (a transposed view of storage laid out with the last two dims swapped).
Tensor make_input(const InputSpec& s, const std::vector<double>& v, DType dt, bool requires_grad,
                  Device dev = Device::cpu) {
  RT logical(s.shape);
  logical.v = v;
  if (s.gen.integer) return from_rt(logical, DType::i32).to(dev);
  Tensor t;
  if (s.layout == Layout::transposed && s.shape.size() >= 2) {
    Shape st = s.shape;
    std::swap(st[st.size() - 1], st[st.size() - 2]);
    RT stored(st);
    for (int64_t i = 0; i < logical.numel(); ++i) {
      std::vector<int64_t> idx = unravel(i, s.shape);
      std::swap(idx[idx.size() - 1], idx[idx.size() - 2]);
      stored[idx] = logical.v[i];
    }
    t = from_rt(stored, dt).to(dev).transpose(-1, -2).detach();
  } else if (s.layout == Layout::offset) {
    constexpr int64_t kOffset = 3;
    RT padded({logical.numel() + kOffset}, -777.0);  // garbage an op must not read
    std::copy(logical.v.begin(), logical.v.end(), padded.v.begin() + kOffset);
    t = make_view(from_rt(padded, dt).to(dev), s.shape, contiguous_strides(s.shape), kOffset);
  } else {
    t = from_rt(logical, dt).to(dev);
  }
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

Args make_args(const OpCase& c, const Values& vals, DType dt, bool requires_grad, Device dev = Device::cpu) {
  Args a;
  a.dtype = dt;
  for (size_t i = 0; i < c.inputs.size(); ++i)
    a.t.push_back(make_input(c.inputs[i], vals[i], dt, requires_grad && is_grad_input(c.inputs[i]), dev));
  return a;
}

std::vector<Tensor> grad_leaves(const OpCase& c, const Args& a) {
  std::vector<Tensor> r;
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (is_grad_input(c.inputs[i])) r.push_back(a.t[i]);
  return r;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::vector<double> random_vector(std::mt19937_64& rng, int64_t n) { return uniform(-1.0, 1.0).draw(rng, n); }

// <u, op(vals)> in f64, with no tape.
double contract_output(const OpCase& c, const Values& vals, const std::vector<double>& u) {
  NoGradGuard ng;
  const Tensor out = c.op(make_args(c, vals, DType::f64, false));
  return dot(u, out.to_vector_f64());
}

// sum_k <v_k, d<u, op>/dx_k> in f64 (first-order gradients, no graph).
double contract_gradient(const OpCase& c, const Values& vals, const std::vector<double>& u, const Values& v) {
  const Args a = make_args(c, vals, DType::f64, true);
  const Tensor out = c.op(a);
  const std::vector<Tensor> gs = grad({out}, grad_leaves(c, a), {Tensor::from_vector(u, out.shape())});
  double s = 0;
  for (size_t k = 0; k < gs.size(); ++k) s += dot(v[k], gs[k].to_vector_f64());
  return s;
}

// Central differences of f over every element of `x`.
template <class F>
std::vector<double> finite_differences(std::vector<double>& x, double eps, F&& f) {
  std::vector<double> d(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    const double x0 = x[j];
    x[j] = x0 + eps;
    const double fp = f();
    x[j] = x0 - eps;
    const double fm = f();
    x[j] = x0;
    d[j] = (fp - fm) / (2 * eps);
  }
  return d;
}

void check_forward(const OpCase& c, const Values& vals, Failures& fails) {
  std::vector<RT> ref_in;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    RT r(c.inputs[i].shape);
    r.v = vals[i];
    ref_in.push_back(r);
  }
  const RT want = c.ref(ref_in);
  for (DType dt : {DType::f32, DType::f64}) {
    const std::string where = fmt::format("{} [{} forward]", c.name, dtype_name(dt));
    try {
      const Tensor out = c.op(make_args(c, vals, dt, false));
      if (out.shape() != want.shape) {
        fails.push_back(fmt::format("{}: shape {}, want {}", where, shape_str(out.shape()), shape_str(want.shape)));
        continue;
      }
      if (c.same_dtype && out.dtype() != DType::i32 && out.dtype() != dt)
        fails.push_back(fmt::format("{}: output dtype {}, want {}", where, dtype_name(out.dtype()), dtype_name(dt)));
      const std::string msg = compare(out.to_vector_f64(), want.v, want.shape, dt == DType::f32 ? c.f32 : c.f64);
      if (!msg.empty()) fails.push_back(where + ": " + msg);
    } catch (const std::exception& e) {
      fails.push_back(where + " threw: " + e.what());
    }
  }
}

void check_gradient(const OpCase& c, Values vals, std::mt19937_64& rng, Failures& fails) {
  const std::string where = c.name + " [gradcheck]";
  try {
    const Args a = make_args(c, vals, DType::f64, true);
    const Tensor out = c.op(a);
    const std::vector<double> u = random_vector(rng, out.numel());
    const std::vector<Tensor> gs = grad({out}, grad_leaves(c, a), {Tensor::from_vector(u, out.shape())});
    size_t k = 0;
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      if (!is_grad_input(c.inputs[i])) continue;
      const Tensor& g = gs[k++];
      if (g.shape() != c.inputs[i].shape) {
        fails.push_back(fmt::format("{}: gradient of input {} has shape {}, want {}", where, i, shape_str(g.shape()),
                                    shape_str(c.inputs[i].shape)));
        continue;
      }
      const std::vector<double> numeric =
          finite_differences(vals[i], c.eps, [&] { return contract_output(c, vals, u); });
      const std::string msg = compare(g.to_vector_f64(), numeric, c.inputs[i].shape, c.fd);
      if (!msg.empty()) fails.push_back(fmt::format("{} input {} (analytic vs numeric): {}", where, i, msg));
    }
  } catch (const std::exception& e) {
    fails.push_back(where + " threw: " + e.what());
  }
}

void check_gradgrad(const OpCase& c, Values vals, std::mt19937_64& rng, Failures& fails) {
  const std::string where = c.name + " [gradgradcheck]";
  try {
    const Args a = make_args(c, vals, DType::f64, true);
    const std::vector<Tensor> leaves = grad_leaves(c, a);
    const Tensor out = c.op(a);
    std::vector<double> u = random_vector(rng, out.numel());
    Tensor ut = Tensor::from_vector(u, out.shape());
    ut.set_requires_grad(true);
    const std::vector<Tensor> gs = grad({out}, leaves, {ut}, /*create_graph=*/true);
    Values v;
    Tensor s = Tensor::scalar(0.0, DType::f64);
    for (const Tensor& g : gs) {
      v.push_back(random_vector(rng, g.numel()));
      s = s + sum(g * Tensor::from_vector(v.back(), g.shape()));
    }
    std::vector<Tensor> wrt = leaves;
    wrt.push_back(ut);
    const std::vector<Tensor> second = grad({s}, wrt, {}, false, /*allow_unused=*/true);

    size_t k = 0;
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      if (!is_grad_input(c.inputs[i])) continue;
      const std::vector<double> numeric =
          finite_differences(vals[i], c.eps, [&] { return contract_gradient(c, vals, u, v); });
      const std::string msg = compare(second[k++].to_vector_f64(), numeric, c.inputs[i].shape, c.fd);
      if (!msg.empty()) fails.push_back(fmt::format("{} d2/d input {}: {}", where, i, msg));
    }
    const std::vector<double> numeric_u = finite_differences(u, c.eps, [&] { return contract_gradient(c, vals, u, v); });
    const std::string msg = compare(second.back().to_vector_f64(), numeric_u, out.shape(), c.fd);
    if (!msg.empty()) fails.push_back(where + " d2/d grad_output: " + msg);
  } catch (const std::exception& e) {
    fails.push_back(where + " threw: " + e.what());
  }
}

// (d): the f32 op on Device::cuda against the CPU backend, forward and first-order gradients.
void check_cuda(const OpCase& c, const Values& vals, std::mt19937_64& rng, Failures& fails) {
  const std::string where = c.name + " [cuda vs cpu]";
  try {
    bool any_grad = false;
    for (const InputSpec& s : c.inputs) any_grad = any_grad || is_grad_input(s);
    const bool grads = c.grad && any_grad;
    const Args ac = make_args(c, vals, DType::f32, grads), ag = make_args(c, vals, DType::f32, grads, Device::cuda);
    const Tensor oc = c.op(ac), og = c.op(ag);
    if (og.device() != Device::cuda) fails.push_back(fmt::format("{}: output on {}, want cuda", where, device_name(og.device())));
    if (og.shape() != oc.shape() || og.dtype() != oc.dtype()) {
      fails.push_back(fmt::format("{}: output {}, the CPU backend gives {}", where, og.str(), oc.str()));
      return;
    }
    std::string msg = compare(og.to_vector_f64(), oc.to_vector_f64(), oc.shape(), c.cuda_tol);
    if (!msg.empty()) fails.push_back(where + " forward: " + msg);
    if (!grads || oc.dtype() == DType::i32) return;
    const std::vector<double> u = random_vector(rng, oc.numel());
    const Tensor uc = Tensor::from_vector(std::vector<float>(u.begin(), u.end()), oc.shape());
    const std::vector<Tensor> gc = grad({oc}, grad_leaves(c, ac), {uc});
    const std::vector<Tensor> gg = grad({og}, grad_leaves(c, ag), {uc.to(Device::cuda)});
    for (size_t k = 0; k < gc.size(); ++k) {
      if (gg[k].device() != Device::cuda) fails.push_back(fmt::format("{}: gradient {} on the host", where, k));
      msg = compare(gg[k].to_vector_f64(), gc[k].to_vector_f64(), gc[k].shape(), c.cuda_tol);
      if (!msg.empty()) fails.push_back(fmt::format("{} gradient of grad input {}: {}", where, k, msg));
    }
  } catch (const std::exception& e) {
    fails.push_back(where + " threw: " + e.what());
  }
}

}  // namespace

std::vector<std::string> op_failures(const OpCase& c) {
  Failures fails;
  std::mt19937_64 rng(seed_of(c.name));
  Values vals;
  for (const InputSpec& s : c.inputs) vals.push_back(s.gen.draw(rng, shape_numel(s.shape)));
  check_forward(c, vals, fails);
  bool any_grad = false;
  for (const InputSpec& s : c.inputs) any_grad = any_grad || is_grad_input(s);
  if (c.finite_differences && c.grad && any_grad) check_gradient(c, vals, rng, fails);
  if (c.finite_differences && c.gradgrad && any_grad) check_gradgrad(c, vals, rng, fails);
  if (c.cuda) check_cuda(c, vals, rng, fails);
  return fails;
}

void check_op(const OpCase& c) {
  for (const std::string& f : op_failures(c)) FAIL_CHECK(f);
}

void check_ops(const std::vector<OpCase>& cases) {
  for (const OpCase& c : cases) check_op(c);
}

}  // namespace bulwark::test
