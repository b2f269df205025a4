// The op API: each op is its forward (a kernel call) and its backward formula (engine ops).
#include "engine/ops.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "engine/dispatch.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark {

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

// ---- dispatch helpers ------------------------------------------------------------------------

void require_float(const Tensor& t, const char* op) {
  if (!t.defined()) throw std::invalid_argument(fmt::format("{}: undefined tensor", op));
  if (t.dtype() == DType::i32) throw std::invalid_argument(fmt::format("{}: needs a float tensor, got {}", op, t.str()));
}

void require_same_device(const Tensor& a, const Tensor& b, const char* op) {
  if (a.device() != b.device())
    throw std::invalid_argument(fmt::format("{}: tensors on different devices ({} on {}, {} on {}); move them with .to(Device)",
                                            op, a.str(), device_name(a.device()), b.str(), device_name(b.device())));
}
void require_cuda_dtype(DType dt, const char* op) {
  if (dt != DType::f32)
    throw std::invalid_argument(fmt::format("{}: the CUDA backend supports f32 only, got a {} tensor on cuda", op, dtype_name(dt)));
}

void check_index_range(const Tensor& idx, int64_t bound, const char* op, cuda::IndexRole role) {
  const int32_t* p = idx.data<int32_t>();
  const int64_t count = idx.numel();
  if (idx.device() == Device::cuda) return cuda::check_indices(p, count, bound, op, role);
  for (int64_t i = 0; i < count; ++i)
    if (p[i] < 0 || p[i] >= bound) throw std::out_of_range(cuda::index_error_message(op, role, p[i], i, bound));
}

static cpu::Strided strided_of(const Shape& shape, const Shape& strides) {
  if (shape.size() > static_cast<size_t>(cpu::kMaxDims))
    throw std::invalid_argument(fmt::format("tensors have at most {} dims, got {}", cpu::kMaxDims, shape_str(shape)));
  cpu::Strided s;
  s.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < s.ndim; ++d) {
    s.shape[d] = shape[d];
    s.stride[d] = strides[d];
  }
  return s;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw std::invalid_argument(fmt::format("shapes {} and {} do not broadcast", shape_str(a), shape_str(b)));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

cpu::Strided broadcast_view(const Tensor& t, const Shape& out) {
  const size_t lead = out.size() - t.shape().size();
  Shape st(out.size(), 0);
  for (size_t i = 0; i < t.shape().size(); ++i)
    st[lead + i] = t.shape()[i] == 1 && out[lead + i] != 1 ? 0 : t.strides()[i];
  return strided_of(out, st);
}

void copy_strided(const Tensor& src, Tensor& dst) {
  require_same_device(src, dst, "copy");
  const cpu::Strided s = strided_of(src.shape(), src.strides());
  if (src.device() == Device::cuda) {
    switch (src.dtype()) {
      case DType::f32: cuda::strided_copy(src.data<float>(), s, dst.data<float>()); break;
      case DType::i32: cuda::strided_copy_i32(src.data<int32_t>(), s, dst.data<int32_t>()); break;
      default: require_cuda_dtype(src.dtype(), "copy");
    }
    return;
  }
  switch (src.dtype()) {
    case DType::f32: cpu::strided_copy(src.data<float>(), s, dst.data<float>()); break;
    case DType::f64: cpu::strided_copy(src.data<double>(), s, dst.data<double>()); break;
    case DType::i32: cpu::strided_copy(src.data<int32_t>(), s, dst.data<int32_t>()); break;
  }
}

void convert_dtype(const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  const DType a = src.dtype(), b = dst.dtype();
  require_same_device(src, dst, "to(dtype)");
  if (src.device() == Device::cuda) {
    if (a == DType::i32 && b == DType::f32) cuda::convert_i32_to_f32(src.data<int32_t>(), dst.data<float>(), n);
    else if (a == DType::f32 && b == DType::i32) cuda::convert_f32_to_i32(src.data<float>(), dst.data<int32_t>(), n);
    else throw std::invalid_argument(fmt::format("to(dtype): {} to {} on cuda; the CUDA backend converts only f32 <-> i32",
                                                 dtype_name(a), dtype_name(b)));
    return;
  }
  if (a == DType::f32 && b == DType::f64) cpu::convert(src.data<float>(), dst.data<double>(), n);
  else if (a == DType::f64 && b == DType::f32) cpu::convert(src.data<double>(), dst.data<float>(), n);
  else if (a == DType::i32 && b == DType::f32) cpu::convert(src.data<int32_t>(), dst.data<float>(), n);
  else if (a == DType::i32 && b == DType::f64) cpu::convert(src.data<int32_t>(), dst.data<double>(), n);
  else if (a == DType::f32 && b == DType::i32) cpu::convert(src.data<float>(), dst.data<int32_t>(), n);
  else if (a == DType::f64 && b == DType::i32) cpu::convert(src.data<double>(), dst.data<int32_t>(), n);
}

// ---- raw (unrecorded) elementwise maps ----------------------------------------------------------

static Tensor unary_raw(ew::Unary op, const Tensor& a_in, double p0 = 0, double p1 = 0) {
  require_float(a_in, "unary op");
  const Tensor a = a_in.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  BW_KERNEL(a.device(), a.dtype(), ew::unary_name(op), unary, op, a.data<T>(), out.data<T>(), a.numel(), static_cast<T>(p0),
            static_cast<T>(p1));
  return out;
}

static Tensor binary_raw(ew::Binary op, const Tensor& a, const Tensor& b) {
  require_float(a, "binary op");
  require_float(b, "binary op");
  require_same_device(a, b, "binary op");
  if (a.dtype() != b.dtype())
    throw std::invalid_argument(fmt::format("binary op on {} and {}: dtypes differ", a.str(), b.str()));
  const Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  const cpu::Strided sa = broadcast_view(a, shape), sb = broadcast_view(b, shape);
  BW_KERNEL(a.device(), a.dtype(), ew::binary_name(op), binary, op, a.data<T>(), sa, b.data<T>(), sb, out.data<T>());
  return out;
}

// ---- elementwise ---------------------------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) {
  return record(binary_raw(ew::Binary::add, a, b), "add", {a, b}, [](const Node& n, const Tensor& g, const Needs& need) {
    return Grads{need[0] ? sum_to(g, n.inputs[0].shape()) : Tensor(), need[1] ? sum_to(g, n.inputs[1].shape()) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record(binary_raw(ew::Binary::sub, a, b), "sub", {a, b}, [](const Node& n, const Tensor& g, const Needs& need) {
    return Grads{need[0] ? sum_to(g, n.inputs[0].shape()) : Tensor(), need[1] ? sum_to(neg(g), n.inputs[1].shape()) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record(binary_raw(ew::Binary::mul, a, b), "mul", {a, b}, [](const Node& n, const Tensor& g, const Needs& need) {
    const Tensor &x = n.inputs[0], &y = n.inputs[1];
    return Grads{need[0] ? sum_to(g * y, x.shape()) : Tensor(), need[1] ? sum_to(g * x, y.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  return record(binary_raw(ew::Binary::div, a, b), "div", {a, b}, [](const Node& n, const Tensor& g, const Needs& need) {
    const Tensor &x = n.inputs[0], &y = n.inputs[1];
    return Grads{need[0] ? sum_to(g / y, x.shape()) : Tensor(),
                 need[1] ? sum_to(neg(g * x) / square(y), y.shape()) : Tensor()};
  });
}

// maximum/minimum: the gradient goes to a where the mask holds, to b elsewhere.
static Tensor select_op(const Tensor& a, const Tensor& b, ew::Binary value_op, ew::Binary mask_op, const char* name) {
  return record(binary_raw(value_op, a, b), name, {a, b}, [mask_op](const Node& n, const Tensor& g, const Needs& need) {
    const Tensor mask = binary_raw(mask_op, n.inputs[0].detach(), n.inputs[1].detach());
    return Grads{need[0] ? sum_to(g * mask, n.inputs[0].shape()) : Tensor(),
                 need[1] ? sum_to(g - g * mask, n.inputs[1].shape()) : Tensor()};
  });
}
Tensor maximum(const Tensor& a, const Tensor& b) { return select_op(a, b, ew::Binary::maximum, ew::Binary::ge, "maximum"); }
Tensor minimum(const Tensor& a, const Tensor& b) { return select_op(a, b, ew::Binary::minimum, ew::Binary::le, "minimum"); }

Tensor affine(const Tensor& a, double scale, double shift) {
  return record(unary_raw(ew::Unary::affine, a, scale, shift), "affine", {a},
                [scale](const Node&, const Tensor& g, const Needs&) { return Grads{mul(g, scale)}; });
}
Tensor add(const Tensor& a, double s) { return affine(a, 1.0, s); }
Tensor mul(const Tensor& a, double s) { return affine(a, s, 0.0); }
Tensor neg(const Tensor& a) { return affine(a, -1.0, 0.0); }

Tensor abs(const Tensor& a) {
  return record(unary_raw(ew::Unary::abs, a), "abs", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g * sign(n.inputs[0].detach())}; });
}

Tensor sign(const Tensor& a) { return unary_raw(ew::Unary::sign, a); }  // piecewise constant: no gradient

Tensor exp(const Tensor& a) {
  return record(unary_raw(ew::Unary::exp, a), "exp", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g * n.output()}; });
}

Tensor log(const Tensor& a) {
  return record(unary_raw(ew::Unary::log, a), "log", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g / n.inputs[0]}; });
}

Tensor sqrt(const Tensor& a) {
  return record(unary_raw(ew::Unary::sqrt, a), "sqrt", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g / (n.output() * 2.0)}; });
}

Tensor square(const Tensor& a) {
  return record(unary_raw(ew::Unary::square, a), "square", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g * n.inputs[0] * 2.0}; });
}

// ReLU's backward: g where x > 0, else 0, in one pass (PyTorch's threshold_backward), not a mask
// then a product. Linear in g with itself as derivative, so a double backward passes through it.
static Tensor relu_grad(const Tensor& g, const Tensor& x) {
  return record(binary_raw(ew::Binary::relu_grad, g, x), "relu_grad", {g},
                [x](const Node&, const Tensor& gg, const Needs&) { return Grads{relu_grad(gg, x)}; });
}

Tensor relu(const Tensor& a) {
  return record(unary_raw(ew::Unary::relu, a), "relu", {a}, [](const Node& n, const Tensor& g, const Needs&) {
    return Grads{relu_grad(g, n.inputs[0].detach())};
  });
}

Tensor sigmoid(const Tensor& a) {
  return record(unary_raw(ew::Unary::sigmoid, a), "sigmoid", {a}, [](const Node& n, const Tensor& g, const Needs&) {
    const Tensor s = n.output();
    return Grads{g * s * affine(s, -1.0, 1.0)};
  });
}

Tensor softplus(const Tensor& a) {
  return record(unary_raw(ew::Unary::softplus, a), "softplus", {a},
                [](const Node& n, const Tensor& g, const Needs&) { return Grads{g * sigmoid(n.inputs[0])}; });
}

Tensor clamp(const Tensor& a, double lo, double hi) {
  return record(unary_raw(ew::Unary::clamp, a, lo, hi), "clamp", {a}, [lo, hi](const Node& n, const Tensor& g, const Needs&) {
    return Grads{g * unary_raw(ew::Unary::clamp_mask, n.inputs[0].detach(), lo, hi)};
  });
}

Tensor clamp(const Tensor& a, const Tensor& lo, const Tensor& hi) { return minimum(maximum(a, lo), hi); }

static Tensor where_raw(const Tensor& c, const Tensor& a, const Tensor& b) {
  require_float(a, "where");
  require_float(b, "where");
  require_same_device(a, b, "where");
  require_same_device(a, c, "where");
  const Tensor cf = c.dtype() == a.dtype() ? c : c.detach().to(a.dtype());
  const Shape shape = broadcast_shapes(broadcast_shapes(cf.shape(), a.shape()), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  const cpu::Strided sc = broadcast_view(cf, shape), sa = broadcast_view(a, shape), sb = broadcast_view(b, shape);
  BW_KERNEL(a.device(), a.dtype(), "where", where, cf.data<T>(), sc, a.data<T>(), sa, b.data<T>(), sb, out.data<T>());
  return out;
}

Tensor where(const Tensor& c, const Tensor& a, const Tensor& b) {
  const Tensor cond = c.detach();
  return record(where_raw(cond, a, b), "where", {a, b}, [cond](const Node& n, const Tensor& g, const Needs& need) {
    const Tensor z = zeros_like(g);
    return Grads{need[0] ? sum_to(where(cond, g, z), n.inputs[0].shape()) : Tensor(),
                 need[1] ? sum_to(where(cond, z, g), n.inputs[1].shape()) : Tensor()};
  });
}

Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(ew::Binary::gt, a.detach(), b.detach()); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_raw(ew::Binary::ge, a.detach(), b.detach()); }
Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(ew::Binary::eq, a.detach(), b.detach()); }
Tensor gt(const Tensor& a, double s) { return unary_raw(ew::Unary::gt_scalar, a.detach(), s); }

// ---- reductions ------------------------------------------------------------------------------------

static std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim) {
  std::vector<int64_t> r;
  for (int64_t d : dims) r.push_back(normalize_dim(d, ndim));
  std::sort(r.begin(), r.end());
  if (std::adjacent_find(r.begin(), r.end()) != r.end()) throw std::invalid_argument("repeated dimension in reduction");
  return r;
}

// Sums contiguous `a` over `dims` (sorted, unique), keeping them as size-1 dims. Each run of
// adjacent reduced dims is one [outer, n, inner] pass, last run first, so [N,C,H,W] over
// {0,2,3} reads the input once (rows of H*W) and then sums the small [N,C] result over N:
// no transposing copy.
// The sum over `dims` (sorted), keeping them as size 1, times `scale` (applied by the last
// reduction's kernel: a mean costs no extra launch).
static Tensor sum_raw_keepdim(const Tensor& a, const std::vector<int64_t>& dims, double scale = 1.0) {
  Tensor cur = a;
  size_t end = dims.size();
  if (dims.empty()) {  // nothing reduced: a copy (a mean over no dims has n = 1, scale 1)
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
    copy_strided(a, out);
    return out;
  }
  while (end > 0) {
    size_t begin = end - 1;
    while (begin > 0 && dims[begin - 1] + 1 == dims[begin]) --begin;
    const int64_t lo = dims[begin], hi = dims[end - 1];
    int64_t outer = 1, n = 1, inner = 1;
    for (int64_t d = 0; d < cur.dim(); ++d) (d < lo ? outer : d > hi ? inner : n) *= cur.shape()[d];
    Shape s = cur.shape();
    for (int64_t d = lo; d <= hi; ++d) s[d] = 1;
    Tensor out = Tensor::empty(s, a.dtype(), a.device());
    const double s_here = begin == 0 ? scale : 1.0;
    BW_KERNEL(a.device(), a.dtype(), "sum", sum_middle, cur.data<T>(), out.data<T>(), outer, n, inner, T(s_here));
    cur = out;
    end = begin;
  }
  return cur;
}

// sum (scale 1) and mean (scale 1/n) over `dims`: one node whose backward broadcasts the scaled
// gradient back over the reduced dims.
static Tensor scaled_sum(const Tensor& a, const std::vector<int64_t>& dims_in, bool keepdim, bool mean_of) {
  require_float(a, mean_of ? "mean" : "sum");
  const std::vector<int64_t> dims = normalize_dims(dims_in, a.dim());
  int64_t n = 1;
  for (int64_t d : dims) n *= a.shape()[d];
  const double scale = mean_of ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  Tensor out = sum_raw_keepdim(a.detach().contiguous(), dims, scale);
  const Shape keep_shape = out.shape();
  if (!keepdim) {
    Shape s;
    for (int64_t d = 0; d < a.dim(); ++d)
      if (!std::binary_search(dims.begin(), dims.end(), d)) s.push_back(a.shape()[d]);
    out = make_view(out, s, contiguous_strides(s), 0);
  }
  return record(out, mean_of ? "mean" : "sum", {a}, [keep_shape, scale](const Node& n, const Tensor& g, const Needs&) {
    const Tensor gs = scale == 1.0 ? g : mul(g, scale);
    return Grads{gs.reshape(keep_shape).expand(n.inputs[0].shape())};
  });
}

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) { return scaled_sum(a, dims, keepdim, false); }

Tensor sum(const Tensor& a) {
  std::vector<int64_t> all(a.dim());
  std::iota(all.begin(), all.end(), 0);
  return sum(a, all, false);
}

// One node and, for a contiguous run of dims, one kernel: the sum's kernel applies 1/n. The
// values are those of mul(sum(a, dims), 1 / n): the same sum, then the same one rounding.
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) { return scaled_sum(a, dims, keepdim, true); }

Tensor mean(const Tensor& a) {
  std::vector<int64_t> all(a.dim());
  std::iota(all.begin(), all.end(), 0);
  return mean(a, all, false);
}

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  const int64_t lead = a.dim() - static_cast<int64_t>(shape.size());
  if (lead < 0) throw std::invalid_argument(fmt::format("sum_to: {} has fewer dims than {}", a.str(), shape_str(shape)));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && a.shape()[d] != 1)) dims.push_back(d);
  return sum(a, dims, true).reshape(shape);
}

// [outer, n, inner] decomposition of a contiguous tensor around `dim`.
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};
static Around around(const Shape& s, int64_t dim) {
  Around r;
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) (d < dim ? r.outer : d > dim ? r.inner : r.n) *= s[d];
  return r;
}

Tensor argmax(const Tensor& a_in, int64_t dim, bool keepdim) {
  require_float(a_in, "argmax");
  dim = normalize_dim(dim, a_in.dim());
  const Tensor a = a_in.contiguous();
  const Around g = around(a.shape(), dim);
  Shape s = a.shape();
  s[dim] = 1;
  Tensor idx = Tensor::empty(s, DType::i32, a.device());
  BW_KERNEL(a.device(), a.dtype(), "argmax", argmax_middle, a.data<T>(), idx.data<int32_t>(), g.outer, g.n, g.inner);
  if (!keepdim) s.erase(s.begin() + dim);
  return make_view(idx, s, contiguous_strides(s), 0);
}

Tensor max(const Tensor& a, int64_t dim, bool keepdim) {
  dim = normalize_dim(dim, a.dim());
  Tensor v = gather(a, argmax(a, dim, true), dim);
  if (keepdim) return v;
  Shape s = a.shape();
  s.erase(s.begin() + dim);
  return v.reshape(s);
}

// ---- indexing --------------------------------------------------------------------------------------

static void check_index_shapes(const Shape& data, const Tensor& idx, int64_t dim, const char* op) {
  if (idx.dtype() != DType::i32) throw std::invalid_argument(fmt::format("{}: indices must be i32, got {}", op, idx.str()));
  bool ok = idx.dim() == static_cast<int64_t>(data.size());
  for (int64_t d = 0; ok && d < idx.dim(); ++d) ok = d == dim || idx.shape()[d] == data[d];
  if (!ok) throw std::invalid_argument(fmt::format("{}: indices {} do not match data {} along dim {}", op, idx.str(), shape_str(data), dim));
  check_index_range(idx.contiguous(), data[dim], op, cuda::IndexRole::index);
}

// gather with `check` off trusts the indices (max_pool2d's come from its own kernel).
static Tensor gather_impl(const Tensor& a_in, const Tensor& idx_in, int64_t dim, bool check) {
  require_float(a_in, "gather");
  dim = normalize_dim(dim, a_in.dim());
  require_same_device(a_in, idx_in, "gather");
  if (check) check_index_shapes(a_in.shape(), idx_in, dim, "gather");
  const Tensor a = a_in.contiguous(), idx = idx_in.contiguous();
  const Around g = around(a.shape(), dim);
  Tensor out = Tensor::empty(idx.shape(), a.dtype(), a.device());
  BW_KERNEL(a.device(), a.dtype(), "gather", gather_middle, a.data<T>(), idx.data<int32_t>(), out.data<T>(), g.outer, g.n,
            idx.shape()[dim], g.inner);
  return record(out, "gather", {a_in}, [idx, dim](const Node& n, const Tensor& gr, const Needs&) {
    return Grads{scatter_add(gr, idx, dim, n.inputs[0].shape())};
  });
}

Tensor gather(const Tensor& a, const Tensor& idx, int64_t dim) { return gather_impl(a, idx, dim, true); }

Tensor scatter_add(const Tensor& src_in, const Tensor& idx_in, int64_t dim, const Shape& shape) {
  require_float(src_in, "scatter_add");
  dim = normalize_dim(dim, static_cast<int64_t>(shape.size()));
  require_same_device(src_in, idx_in, "scatter_add");
  check_index_shapes(shape, idx_in, dim, "scatter_add");
  const Tensor src = src_in.contiguous(), idx = idx_in.contiguous();
  if (src.shape() != idx.shape())
    throw std::invalid_argument(fmt::format("scatter_add: source {} and indices {} differ", src.str(), idx.str()));
  const Around g = around(shape, dim);
  Tensor out = Tensor::zeros(shape, src.dtype(), src.device());
  BW_KERNEL(src.device(), src.dtype(), "scatter_add", scatter_add_middle, src.data<T>(), idx.data<int32_t>(), out.data<T>(),
            g.outer, g.n, idx.shape()[dim], g.inner);
  return record(out, "scatter_add", {src_in}, [idx, dim](const Node&, const Tensor& gr, const Needs&) {
    return Grads{gather(gr, idx, dim)};
  });
}

Tensor one_hot(const Tensor& labels, int64_t num_classes, DType dtype) {
  if (labels.dtype() != DType::i32) throw std::invalid_argument("one_hot: labels must be i32");
  if (labels.device() == Device::cuda) {
    // On the device, as the adjoint of gather: ones scattered into zeros at the labels. No host
    // copy (cross_entropy's backward runs this once per attack step); a bad label surfaces as
    // scatter_add's deferred index error at the next host wait.
    Shape s = labels.shape();
    s.push_back(1);
    const Tensor idx = labels.contiguous().reshape(s);
    Shape out = labels.shape();
    out.push_back(num_classes);
    return scatter_add(Tensor::ones(s, DType::f32, Device::cuda), idx, -1, out).to(dtype);
  }
  const std::vector<int32_t> y = labels.to_vector_i32();
  Shape s = labels.shape();
  s.push_back(num_classes);
  Tensor out = Tensor::zeros(s, DType::f64);
  double* p = out.data<double>();
  for (size_t i = 0; i < y.size(); ++i) {
    if (y[i] < 0 || y[i] >= num_classes)
      throw std::out_of_range(fmt::format("one_hot: label {} out of range [0, {})", y[i], num_classes));
    p[i * num_classes + y[i]] = 1.0;
  }
  return out.to(dtype);
}

// Copies `src` (contiguous, [outer, n, inner] around dim) into rows [start, start+n) of `dst`.
static void copy_block(const Tensor& src, Tensor& dst, int64_t dim, int64_t start) {
  const Around s = around(src.shape(), dim), d = around(dst.shape(), dim);
  const size_t es = dtype_size(src.dtype());
  const char* from = static_cast<const char*>(src.impl()->storage->data) + src.offset() * es;
  char* to = static_cast<char*>(dst.impl()->storage->data) + dst.offset() * es;
  require_same_device(src, dst, "concat");
  if (src.device() == Device::cuda) {
    for (int64_t o = 0; o < s.outer; ++o)
      cuda::copy_device(to + ((o * d.n + start) * d.inner) * es, from + (o * s.n * s.inner) * es, s.n * s.inner * es);
    return;
  }
  for (int64_t o = 0; o < s.outer; ++o)
    std::memcpy(to + ((o * d.n + start) * d.inner) * es, from + (o * s.n * s.inner) * es, s.n * s.inner * es);
}

Tensor concat(const std::vector<Tensor>& ts, int64_t dim) {
  if (ts.empty()) throw std::invalid_argument("concat: no tensors");
  dim = normalize_dim(dim, ts[0].dim());
  Shape s = ts[0].shape();
  s[dim] = 0;
  for (const Tensor& t : ts) {
    require_same_device(ts[0], t, "concat");
    bool ok = t.dim() == ts[0].dim() && t.dtype() == ts[0].dtype();
    for (int64_t d = 0; ok && d < t.dim(); ++d) ok = d == dim || t.shape()[d] == ts[0].shape()[d];
    if (!ok) throw std::invalid_argument(fmt::format("concat: {} does not match {} along dim {}", t.str(), ts[0].str(), dim));
    s[dim] += t.shape()[dim];
  }
  Tensor out = Tensor::empty(s, ts[0].dtype(), ts[0].device());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& t : ts) {
    starts.push_back(at);
    copy_block(t.contiguous(), out, dim, at);
    at += t.shape()[dim];
  }
  return record(out, "concat", ts, [starts, dim](const Node& n, const Tensor& g, const Needs& need) {
    Grads r(n.inputs.size());
    for (size_t i = 0; i < r.size(); ++i)
      if (need[i]) r[i] = g.slice(dim, starts[i], starts[i] + n.inputs[i].shape()[dim]);
    return r;
  });
}

Tensor slice_backward(const Tensor& g, const Shape& shape, int64_t dim, int64_t start) {
  Tensor out = Tensor::zeros(shape, g.dtype(), g.device());
  copy_block(g.contiguous(), out, dim, start);
  const int64_t len = g.shape()[dim];
  return record(out, "slice_backward", {g}, [dim, start, len](const Node&, const Tensor& gg, const Needs&) {
    return Grads{gg.slice(dim, start, start + len)};
  });
}

// ---- linear algebra -----------------------------------------------------------------------------------

// A 2-D operand as BLAS sees it: row-major data with an optional transpose flag.
struct GemmOperand {
  Tensor t;
  bool trans = false;
  int64_t ld = 0;
};
static GemmOperand gemm_operand(const Tensor& m) {
  if (m.is_contiguous()) return {m, false, std::max<int64_t>(m.shape()[1], 1)};
  if (m.strides()[1] == 1 && m.strides()[0] >= std::max<int64_t>(m.shape()[1], 1))
    return {m, false, m.strides()[0]};  // rows with a gap between them (a column slice)
  if (m.strides()[0] == 1 && m.strides()[1] >= std::max<int64_t>(m.shape()[0], 1))
    return {m, true, m.strides()[1]};  // a transposed view of a row-major matrix
  const Tensor c = m.contiguous();
  return {c, false, std::max<int64_t>(c.shape()[1], 1)};
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  require_float(a, "matmul");
  require_float(b, "matmul");
  require_same_device(a, b, "matmul");
  if (a.dim() != 2 || b.dim() != 2 || a.shape()[1] != b.shape()[0] || a.dtype() != b.dtype())
    throw std::invalid_argument(fmt::format("matmul: cannot multiply {} by {}", a.str(), b.str()));
  const int64_t M = a.shape()[0], K = a.shape()[1], N = b.shape()[1];
  const GemmOperand A = gemm_operand(a.detach()), B = gemm_operand(b.detach());
  Tensor out = Tensor::empty({M, N}, a.dtype(), a.device());
  profiler::count_flops(2.0 * double(M) * double(N) * double(K));
  BW_KERNEL(a.device(), a.dtype(), "matmul", gemm, A.trans, B.trans, M, N, K, T(1), A.t.data<T>(), A.ld, B.t.data<T>(), B.ld,
            T(0), out.data<T>(), std::max<int64_t>(N, 1));
  return record(out, "matmul", {a, b}, [](const Node& n, const Tensor& g, const Needs& need) {
    const Tensor &x = n.inputs[0], &y = n.inputs[1];
    // When b is a transposed view (linear's w.t()), (g^T a)^T is the same gradient, and the
    // transpose's backward turns it into a contiguous dW; x^T g would end as a transposed view
    // that backward() copies (a 64 MiB strided copy for cnn7's FC 32768 -> 512).
    const bool b_transposed = !y.is_contiguous() && y.strides()[0] == 1;
    Tensor gb;
    if (need[1]) gb = b_transposed ? matmul(g.t(), x).t() : matmul(x.t(), g);
    return Grads{need[0] ? matmul(g, y.t()) : Tensor(), gb};
  });
}

// x w^T + b as one node: the bias (and with `relu` the ReLU) is added by the GEMM's epilogue (one
// launch on CUDA instead of the GEMM, a broadcast add and a ReLU), with the same rounding as
// matmul, add and relu in turn. The fused ReLU's backward is relu_grad against the output (y > 0
// exactly where the pre-activation was), so the pre-activation is never stored.
static Tensor linear_epilogue(const Tensor& x, const Tensor& w, const Tensor& b, bool relu) {
  if (!b.defined()) {
    const Tensor y = matmul(x, w.t());
    return relu ? bulwark::relu(y) : y;
  }
  require_float(x, "linear");
  require_float(w, "linear");
  require_float(b, "linear");
  require_same_device(x, w, "linear");
  require_same_device(x, b, "linear");
  if (x.dim() != 2 || w.dim() != 2 || x.shape()[1] != w.shape()[1] || x.dtype() != w.dtype() ||
      b.shape() != Shape{w.shape()[0]} || b.dtype() != x.dtype())
    throw std::invalid_argument(
        fmt::format("linear: input {}, weight {} and bias {} do not match (want [N,I], [O,I], [O])", x.str(), w.str(), b.str()));
  const int64_t M = x.shape()[0], K = x.shape()[1], N = w.shape()[0];
  const GemmOperand A = gemm_operand(x.detach()), B = gemm_operand(w.detach().t());
  const Tensor bias = b.detach().contiguous();
  Tensor out = Tensor::empty({M, N}, x.dtype(), x.device());
  profiler::count_flops(2.0 * double(M) * double(N) * double(K) + double(M) * double(N));
  BW_KERNEL(x.device(), x.dtype(), relu ? "linear_relu" : "linear", gemm_bias, A.trans, B.trans, M, N, K, A.t.data<T>(), A.ld, B.t.data<T>(),
            B.ld, bias.data<T>(), out.data<T>(), std::max<int64_t>(N, 1), relu);
  return record(out, relu ? "linear_relu" : "linear", {x, w, b}, [relu](const Node& n, const Tensor& g_out, const Needs& need) {
    const Tensor &xx = n.inputs[0], &ww = n.inputs[1], &bb = n.inputs[2];
    const Tensor g = relu ? relu_grad(g_out, n.output().detach()) : g_out;
    // The gradients add(., b) and matmul(x, w.t()) give, in their order: db, dW, dx.
    Grads r(3);
    if (need[2]) r[2] = sum_to(g, bb.shape());
    if (need[1]) r[1] = matmul(g.t(), xx);
    if (need[0]) r[0] = matmul(g, ww);
    return r;
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) { return linear_epilogue(x, w, b, false); }
Tensor linear_relu(const Tensor& x, const Tensor& w, const Tensor& b) { return linear_epilogue(x, w, b, true); }

Tensor normalize_channels(const Tensor& x, const Tensor& mean, const Tensor& stddev) {
  if (x.dim() < 2 || mean.dim() != 1 || stddev.dim() != 1 || mean.size(0) != x.size(1) || stddev.size(0) != x.size(1))
    throw std::invalid_argument(fmt::format("normalize_channels: input {} with mean {} and stddev {} (want [N, C, ...], "
                                            "[C], [C])", x.str(), mean.str(), stddev.str()));
  Shape per_channel(static_cast<size_t>(x.dim()), 1);
  per_channel[1] = x.size(1);
  if (mean.requires_grad() || stddev.requires_grad())
    return (x - mean.reshape(per_channel)) / stddev.reshape(per_channel);
  require_float(x, "normalize_channels");
  require_same_device(x, mean, "normalize_channels");
  require_same_device(x, stddev, "normalize_channels");
  if (mean.dtype() != x.dtype() || stddev.dtype() != x.dtype())
    throw std::invalid_argument(fmt::format("normalize_channels: {} input with {} mean and {} stddev", dtype_name(x.dtype()),
                                            dtype_name(mean.dtype()), dtype_name(stddev.dtype())));
  const Tensor xc = x.detach().contiguous(), m = mean.contiguous(), sd = stddev.contiguous();
  const int64_t n = x.size(0), c = x.size(1), inner = c > 0 && n > 0 ? x.numel() / (n * c) : 0;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "normalize_channels", normalize_channels, xc.data<T>(), m.data<T>(), sd.data<T>(),
            out.data<T>(), n, c, inner);
  return record(out, "normalize_channels", {x}, [per_channel, sd](const Node&, const Tensor& g, const Needs& need) {
    return Grads{need[0] ? g / sd.reshape(per_channel) : Tensor()};  // div's gradient for its numerator
  });
}

// ---- convolution ----------------------------------------------------------------------------------------

static ConvShape conv_shape(const Shape& x, const Shape& w, Conv2dParams p) {
  if (x.size() != 4 || w.size() != 4 || x[1] != w[1])
    throw std::invalid_argument(fmt::format("conv2d: input {} and weight {} do not match (want [N,C,H,W] and [O,C,KH,KW])",
                                            shape_str(x), shape_str(w)));
  return make_conv_shape(x[0], x[1], x[2], x[3], w[0], w[2], w[3], p.stride, p.padding,
                         fmt::format("conv2d of {} by {}", shape_str(x), shape_str(w)));
}

// The forward's epilogue adds the bias and, with `relu`, applies the ReLU as the outputs are
// stored (conv2d_relu: one launch and one pass over the output instead of two); its backward is
// relu_grad against the output, then the convolution's.
static Tensor conv2d_epilogue(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, Conv2dParams p, bool relu) {
  require_float(x_in, "conv2d");
  require_float(w_in, "conv2d");
  require_same_device(x_in, w_in, "conv2d");
  if (bias.defined()) require_same_device(x_in, bias, "conv2d");
  const ConvShape s = conv_shape(x_in.shape(), w_in.shape(), p);
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor bc;
  if (bias.defined()) {
    if (bias.shape() != Shape{s.o}) throw std::invalid_argument(fmt::format("conv2d: bias {} for {} filters", bias.str(), s.o));
    bc = bias.contiguous();
  }
  Tensor out = Tensor::empty({s.n, s.o, s.oh, s.ow}, x.dtype(), x.device());
  profiler::count_flops(conv_flops(s));
  BW_KERNEL(x.device(), x.dtype(), relu ? "conv2d_relu" : "conv2d", conv2d_forward, s, x.data<T>(), w.data<T>(),
            bc.defined() ? bc.data<T>() : nullptr, out.data<T>(), relu);
  std::vector<Tensor> inputs{x_in, w_in};
  if (bias.defined()) inputs.push_back(bias);
  return record(out, relu ? "conv2d_relu" : "conv2d", inputs, [p, relu](const Node& n, const Tensor& g_out, const Needs& need) {
    const Tensor &xx = n.inputs[0], &ww = n.inputs[1];
    const Tensor g = relu ? relu_grad(g_out, n.output().detach()) : g_out;
    Grads r(n.inputs.size());
    if (need[0]) r[0] = conv2d_backward_input(g, ww, xx.shape(), p);
    if (need[1]) r[1] = conv2d_backward_weight(xx, g, ww.shape(), p);
    if (n.inputs.size() > 2 && need[2]) r[2] = sum(g, {0, 2, 3});
    return r;
  });
}

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dParams p) {
  return conv2d_epilogue(x, w, bias, p, false);
}
Tensor conv2d_relu(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dParams p) {
  return conv2d_epilogue(x, w, bias, p, true);
}

Tensor conv2d_backward_input(const Tensor& g_in, const Tensor& w_in, const Shape& x_shape, Conv2dParams p) {
  const ConvShape s = conv_shape(x_shape, w_in.shape(), p);
  const Tensor g = g_in.contiguous(), w = w_in.contiguous();
  if (g.shape() != Shape{s.n, s.o, s.oh, s.ow})
    throw std::invalid_argument(fmt::format("conv2d_backward_input: gradient {} for output [{}, {}, {}, {}]", g.str(), s.n, s.o, s.oh, s.ow));
  require_same_device(g, w, "conv2d_backward_input");
  Tensor out = Tensor::empty(x_shape, g.dtype(), g.device());
  profiler::count_flops(conv_flops(s));
  BW_KERNEL(g.device(), g.dtype(), "conv2d_backward_input", conv2d_backward_input, s, g.data<T>(), w.data<T>(), out.data<T>());
  return record(out, "conv2d_backward_input", {g_in, w_in}, [p](const Node& n, const Tensor& gg, const Needs& need) {
    return Grads{need[0] ? conv2d(gg, n.inputs[1], Tensor(), p) : Tensor(),
                 need[1] ? conv2d_backward_weight(gg, n.inputs[0], n.inputs[1].shape(), p) : Tensor()};
  });
}

Tensor conv2d_backward_weight(const Tensor& x_in, const Tensor& g_in, const Shape& w_shape, Conv2dParams p) {
  const ConvShape s = conv_shape(x_in.shape(), w_shape, p);
  const Tensor x = x_in.contiguous(), g = g_in.contiguous();
  if (g.shape() != Shape{s.n, s.o, s.oh, s.ow})
    throw std::invalid_argument(fmt::format("conv2d_backward_weight: gradient {} for output [{}, {}, {}, {}]", g.str(), s.n, s.o, s.oh, s.ow));
  require_same_device(x, g, "conv2d_backward_weight");
  Tensor out = Tensor::empty(w_shape, x.dtype(), x.device());
  profiler::count_flops(conv_flops(s));
  BW_KERNEL(x.device(), x.dtype(), "conv2d_backward_weight", conv2d_backward_weight, s, x.data<T>(), g.data<T>(), out.data<T>());
  return record(out, "conv2d_backward_weight", {x_in, g_in}, [p](const Node& n, const Tensor& gg, const Needs& need) {
    return Grads{need[0] ? conv2d_backward_input(n.inputs[1], gg, n.inputs[0].shape(), p) : Tensor(),
                 need[1] ? conv2d(n.inputs[0], gg, Tensor(), p) : Tensor()};
  });
}

// ---- pooling ------------------------------------------------------------------------------------------

static PoolShape pool_shape(const Tensor& x, int64_t k, int64_t s, int64_t p, const char* op) {
  if (x.dim() != 4) throw std::invalid_argument(fmt::format("{}: input must be [N,C,H,W], got {}", op, x.str()));
  const PoolShape ps = make_pool_shape(x.size(0) * x.size(1), x.size(2), x.size(3), k, s, p, fmt::format("{} of {}", op, x.str()));
  if (2 * p > k) throw std::invalid_argument(fmt::format("{}: padding {} is more than half the window {}", op, p, k));
  return ps;
}

Tensor max_pool2d(const Tensor& x_in, int64_t kernel, int64_t stride, int64_t padding) {
  require_float(x_in, "max_pool2d");
  const PoolShape s = pool_shape(x_in, kernel, stride, padding, "max_pool2d");
  const Tensor x = x_in.contiguous();
  Tensor idx = Tensor::empty({s.planes, s.oh * s.ow}, DType::i32, x.device());
  BW_KERNEL(x.device(), x.dtype(), "max_pool2d", max_pool2d_indices, s, x.data<T>(), idx.data<int32_t>());
  return gather_impl(x_in.reshape({s.planes, s.h * s.w}), idx, 1, false).reshape({x.size(0), x.size(1), s.oh, s.ow});
}

static Tensor avg_pool2d_backward(const Tensor& g, const Shape& x_shape, int64_t k, int64_t st, int64_t p);

Tensor avg_pool2d(const Tensor& x_in, int64_t k, int64_t st, int64_t p) {
  require_float(x_in, "avg_pool2d");
  const PoolShape s = pool_shape(x_in, k, st, p, "avg_pool2d");
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty({x.size(0), x.size(1), s.oh, s.ow}, x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "avg_pool2d", avg_pool2d_forward, s, x.data<T>(), out.data<T>());
  return record(out, "avg_pool2d", {x_in}, [k, st, p](const Node& n, const Tensor& g, const Needs&) {
    return Grads{avg_pool2d_backward(g, n.inputs[0].shape(), k, st, p)};
  });
}

static Tensor avg_pool2d_backward(const Tensor& g_in, const Shape& x_shape, int64_t k, int64_t st, int64_t p) {
  const Tensor g = g_in.contiguous();
  Tensor out = Tensor::empty(x_shape, g.dtype(), g.device());
  const PoolShape s = pool_shape(out, k, st, p, "avg_pool2d");
  BW_KERNEL(g.device(), g.dtype(), "avg_pool2d_backward", avg_pool2d_backward, s, g.data<T>(), out.data<T>());
  return record(out, "avg_pool2d_backward", {g_in}, [k, st, p](const Node&, const Tensor& gg, const Needs&) {
    return Grads{avg_pool2d(gg, k, st, p)};
  });
}

static Tensor adaptive_avg_pool2d_backward(const Tensor& g_in, const Shape& x_shape) {
  const Tensor g = g_in.contiguous();
  const int64_t oh = g.size(2), ow = g.size(3);
  Tensor out = Tensor::empty(x_shape, g.dtype(), g.device());
  BW_KERNEL(g.device(), g.dtype(), "adaptive_avg_pool2d_backward", adaptive_avg_pool2d_backward, x_shape[0] * x_shape[1],
            x_shape[2], x_shape[3], oh, ow, g.data<T>(), out.data<T>());
  return record(out, "adaptive_avg_pool2d_backward", {g_in}, [oh, ow](const Node&, const Tensor& gg, const Needs&) {
    return Grads{adaptive_avg_pool2d(gg, oh, ow)};
  });
}

Tensor adaptive_avg_pool2d(const Tensor& x_in, int64_t oh, int64_t ow) {
  require_float(x_in, "adaptive_avg_pool2d");
  if (x_in.dim() != 4 || oh < 1 || ow < 1)
    throw std::invalid_argument(fmt::format("adaptive_avg_pool2d: input {} to {}x{}", x_in.str(), oh, ow));
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty({x.size(0), x.size(1), oh, ow}, x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "adaptive_avg_pool2d", adaptive_avg_pool2d_forward, x.size(0) * x.size(1), x.size(2),
            x.size(3), oh, ow, x.data<T>(), out.data<T>());
  return record(out, "adaptive_avg_pool2d", {x_in}, [](const Node& n, const Tensor& g, const Needs&) {
    return Grads{adaptive_avg_pool2d_backward(g, n.inputs[0].shape())};
  });
}

// ---- normalisation ----------------------------------------------------------------------------------

// The backward of training-mode batch norm written with tensor ops, so it can be differentiated
// again (create_graph): with xhat = (x - mean) * invstd over the per-channel dims,
//   dbeta = sum g,  dgamma = sum g * xhat,  dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m).
// The statistics are recomputed from x, which puts their dependence on x into the new graph.
static Grads batch_norm_backward_ops(const Tensor& x, const Tensor& gamma, const Tensor& g, double eps, const Needs& need) {
  const int64_t c = x.size(1);
  Shape bshape(x.dim(), 1);
  bshape[1] = c;
  const std::vector<int64_t> dims = x.dim() == 4 ? std::vector<int64_t>{0, 2, 3} : std::vector<int64_t>{0};
  const double m = static_cast<double>(x.numel() / c);
  const Tensor xc = x - mean(x, dims, true);
  const Tensor invstd = div(Tensor::full({}, 1.0, x.dtype(), x.device()), sqrt(mean(square(xc), dims, true) + eps));
  const Tensor xhat = xc * invstd;
  const Tensor dbeta = sum(g, dims, true), dgamma = sum(g * xhat, dims, true);
  Grads r(3);
  if (need[0]) r[0] = gamma.reshape(bshape) * invstd * (g - dbeta * (1.0 / m) - xhat * (dgamma * (1.0 / m)));
  if (need[1]) r[1] = dgamma.reshape({c});
  if (need[2]) r[2] = dbeta.reshape({c});
  return r;
}

// Training mode runs the fused kernels of kernels/cpu/batch_norm.cpp (2-3 passes over x each way
// instead of ~30 elementwise passes); the backward falls back to batch_norm_backward_ops when a
// differentiable gradient is asked for. Eval mode is (x - running_mean) * scale + beta with the
// per-channel scale = gamma / sqrt(running_var + eps) computed on [C] first. With `relu` (BN+ReLU)
// the training kernels apply the ReLU in the forward's writing pass and its mask (output > 0) as
// they read g; eval mode and the differentiable backward compose relu and relu_grad.
static Tensor batch_norm_epilogue(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                                  Tensor& running_var, bool training, double momentum, double eps, bool relu) {
  if (x.dim() != 2 && x.dim() != 4) throw std::invalid_argument(fmt::format("batch_norm: input {} must be [N,C] or [N,C,H,W]", x.str()));
  require_float(x, "batch_norm");
  const int64_t c = x.size(1);
  for (const Tensor* p : {&gamma, &beta})
    if (p->shape() != Shape{c} || p->dtype() != x.dtype())
      throw std::invalid_argument(fmt::format("batch_norm: weight and bias must be {}[{}] for input {}, got {}",
                                              dtype_name(x.dtype()), c, x.str(), p->str()));
  for (const Tensor* p : std::initializer_list<const Tensor*>{&gamma, &beta, &running_mean, &running_var})
    require_same_device(x, *p, "batch_norm");
  Shape bshape(x.dim(), 1);
  bshape[1] = c;
  if (!training) {
    const Tensor scale = gamma / sqrt(running_var.detach() + eps);
    const Tensor y = (x - running_mean.detach().reshape(bshape)) * scale.reshape(bshape) + beta.reshape(bshape);
    return relu ? bulwark::relu(y) : y;
  }
  const int64_t m = x.numel() / std::max<int64_t>(c, 1);
  if (m < 2) throw std::invalid_argument(fmt::format("batch_norm: training needs more than one value per channel, got {}", x.str()));
  const int64_t n = x.size(0), inner = m / n;
  const Tensor xc = x.detach().contiguous(), gc = gamma.detach().contiguous(), bc = beta.detach().contiguous();
  const Device dev = x.device();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev);
  Tensor mu = Tensor::empty({c}, x.dtype(), dev), invstd = Tensor::empty({c}, x.dtype(), dev),
         var = Tensor::empty({c}, x.dtype(), dev);
  BW_KERNEL(dev, x.dtype(), relu ? "batch_norm_relu" : "batch_norm", batch_norm_forward_train, xc.data<T>(), gc.data<T>(), bc.data<T>(), y.data<T>(),
            mu.data<T>(), invstd.data<T>(), var.data<T>(), n, c, inner, eps, relu);
  {
    NoGradGuard ng;
    const double unbias = static_cast<double>(m) / static_cast<double>(m - 1);
    running_mean.copy_(affine(running_mean, 1.0 - momentum, 0.0) + mu * momentum);
    running_var.copy_(affine(running_var, 1.0 - momentum, 0.0) + var * (momentum * unbias));
  }
  const char* op = relu ? "batch_norm_relu" : "batch_norm";
  return record(y, op, {x, gamma, beta}, [mu, invstd, eps, n, c, inner, relu](const Node& node, const Tensor& g_in, const Needs& need) {
    const Tensor &xx = node.inputs[0], &gm = node.inputs[1];
    const Tensor out = relu ? node.output().detach() : Tensor();
    if (grad_enabled()) return batch_norm_backward_ops(xx, gm, relu ? relu_grad(g_in, out) : g_in, eps, need);  // create_graph
    const Tensor xd = xx.detach().contiguous(), g = g_in.detach().contiguous(), gmc = gm.detach().contiguous();
    Grads r(3);
    const Device dev = xx.device();
    if (need[0]) r[0] = Tensor::empty(xx.shape(), xx.dtype(), dev);
    if (need[1]) r[1] = Tensor::empty({c}, xx.dtype(), dev);
    if (need[2]) r[2] = Tensor::empty({c}, xx.dtype(), dev);
    BW_KERNEL(dev, xx.dtype(), "batch_norm backward", batch_norm_backward_train, xd.data<T>(), g.data<T>(), gmc.data<T>(),
              mu.data<T>(), invstd.data<T>(), need[0] ? r[0].data<T>() : nullptr, need[1] ? r[1].data<T>() : nullptr,
              need[2] ? r[2].data<T>() : nullptr, n, c, inner, relu ? out.data<T>() : nullptr);
    return r;
  });
}

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean, Tensor& running_var,
                  bool training, double momentum, double eps) {
  return batch_norm_epilogue(x, gamma, beta, running_mean, running_var, training, momentum, eps, false);
}
Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                       Tensor& running_var, bool training, double momentum, double eps) {
  return batch_norm_epilogue(x, gamma, beta, running_mean, running_var, training, momentum, eps, true);
}

// ---- softmax and losses -----------------------------------------------------------------------------

Tensor log_softmax(const Tensor& z_in, int64_t dim) {
  require_float(z_in, "log_softmax");
  dim = normalize_dim(dim, z_in.dim());
  if (dim != z_in.dim() - 1) return log_softmax(z_in.transpose(dim, -1), -1).transpose(dim, -1);
  const Tensor z = z_in.contiguous();
  const int64_t cols = z.size(-1), rows = z.numel() / std::max<int64_t>(cols, 1);
  Tensor out = Tensor::empty(z.shape(), z.dtype(), z.device());
  BW_KERNEL(z.device(), z.dtype(), "log_softmax", log_softmax_rows, z.data<T>(), out.data<T>(), rows, cols);
  return record(out, "log_softmax", {z_in}, [](const Node& n, const Tensor& g, const Needs&) {
    return Grads{g - exp(n.output()) * sum(g, {-1}, true)};
  });
}

Tensor softmax(const Tensor& z, int64_t dim) { return exp(log_softmax(z, dim)); }

static void check_logits_labels(const Tensor& z, const Tensor& labels, const char* op) {
  if (z.dim() != 2 || labels.dtype() != DType::i32 || labels.dim() != 1 || labels.size(0) != z.size(0))
    throw std::invalid_argument(fmt::format("{}: logits {} and labels {} (want [N,K] and i32[N])", op, z.str(), labels.str()));
}

// With `correct`, the forward kernel also writes each row's correctness and *correct becomes
// their sum (an f32 count, no node).
static Tensor cross_entropy_counting(const Tensor& z_in, const Tensor& labels, bool reduce, Tensor* correct) {
  require_float(z_in, "cross_entropy");
  check_logits_labels(z_in, labels, "cross_entropy");
  require_same_device(z_in, labels, "cross_entropy");
  const Tensor z = z_in.contiguous(), y = labels.contiguous();
  const int64_t rows = z.size(0), cols = z.size(1);
  check_index_range(y, cols, "cross_entropy", cuda::IndexRole::label);
  Tensor loss = Tensor::empty({rows}, z.dtype(), z.device());
  const Tensor flags = correct ? Tensor::empty({rows}, z.dtype(), z.device()) : Tensor();
  BW_KERNEL(z.device(), z.dtype(), "cross_entropy", softmax_xent_rows, z.data<T>(), y.data<int32_t>(), loss.data<T>(), rows,
            cols, correct ? flags.data<T>() : nullptr);
  if (correct) *correct = make_view(sum_raw_keepdim(flags, {0}, 1.0), {}, {}, 0);
  // The mean loss is one node over z: its sum's kernel applies 1/rows, and its backward takes the
  // one upstream value (g_stride 0) with the 1/rows scale into the fused kernel, where
  // mean(per-row losses) would add a scale and a broadcast copy of the gradient (two launches).
  const double scale = reduce ? 1.0 / static_cast<double>(std::max<int64_t>(rows, 1)) : 1.0;
  if (reduce) loss = make_view(sum_raw_keepdim(loss, {0}, scale), {}, {}, 0);
  return record(loss, "cross_entropy", {z_in}, [y, reduce, scale](const Node& n, const Tensor& g, const Needs&) {
    const Tensor& zz = n.inputs[0];
    // Under create_graph the formula in differentiable ops (a self-gradient network's double
    // backward goes through it); otherwise the one fused kernel, bitwise the same values.
    if (grad_enabled()) {
      const Tensor gr = reduce ? mul(g, scale).reshape({1, 1}) : g.reshape({-1, 1});
      return Grads{(softmax(zz, 1) - one_hot(y, zz.size(1), zz.dtype())) * gr};
    }
    const Tensor z = zz.detach().contiguous(), gc = g.contiguous();
    Tensor dz = Tensor::empty(z.shape(), z.dtype(), z.device());
    BW_KERNEL(z.device(), z.dtype(), "cross_entropy", softmax_xent_backward_rows, z.data<T>(), y.data<int32_t>(),
              gc.data<T>(), int64_t{reduce ? 0 : 1}, T(scale), dz.data<T>(), z.size(0), z.size(1));
    return Grads{dz};
  });
}

Tensor cross_entropy(const Tensor& z, const Tensor& labels, bool reduce) {
  return cross_entropy_counting(z, labels, reduce, nullptr);
}

LossAndCorrect cross_entropy_and_correct(const Tensor& z, const Tensor& labels) {
  LossAndCorrect r;
  r.loss = cross_entropy_counting(z, labels, true, &r.correct);
  return r;
}

Tensor cw_margin(const Tensor& z, const Tensor& labels) {
  check_logits_labels(z, labels, "cw_margin");
  const Tensor y = labels.reshape({-1, 1});
  const Tensor zy = gather(z, y, 1).reshape({-1});
  const Tensor mask = one_hot(labels, z.size(1), z.dtype());
  const Tensor others = where(mask, Tensor::full(z.shape(), -1e30, z.dtype(), z.device()), z);
  return max(others, 1) - zy;
}

// ---- helpers ------------------------------------------------------------------------------------------

Tensor zeros_like(const Tensor& a) { return Tensor::zeros(a.shape(), a.dtype(), a.device()); }
Tensor ones_like(const Tensor& a) { return Tensor::ones(a.shape(), a.dtype(), a.device()); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) throw std::invalid_argument(fmt::format("max_abs_diff: {} vs {}", a.str(), b.str()));
  const std::vector<double> x = a.to_vector_f64(), y = b.to_vector_f64();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  const std::vector<double> x = a.to_vector_f64(), y = b.to_vector_f64();
  for (size_t i = 0; i < x.size(); ++i)
    if (!(std::abs(x[i] - y[i]) <= atol + rtol * std::abs(y[i]))) return false;
  return true;
}

}  // namespace bulwark
