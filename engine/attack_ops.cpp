#include "engine/attack_ops.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/dispatch.h"
#include "engine/rng.h"
#include "kernels/cpu/attack_kernels.h"

namespace bulwark {

void check_attack_budget(double eps, double alpha) {
  if (!(eps >= 0.0) || !(alpha >= 0.0) || !std::isfinite(eps) || !std::isfinite(alpha))
    throw std::invalid_argument(fmt::format("attack: eps ({}) and alpha ({}) must be finite and >= 0", eps, alpha));
}

void pgd_step_(Tensor& x_adv, const Tensor& x_in, const Tensor& g_in, double eps, double alpha, const Tensor& l1) {
  require_float(x_adv, "pgd_step_ x_adv");
  check_attack_budget(eps, alpha);
  if (!x_adv.is_contiguous()) throw std::invalid_argument("pgd_step_: x_adv must be contiguous (it is updated in place)");
  for (const Tensor* t : {&x_in, &g_in}) {
    require_float(*t, "pgd_step_");
    if (t->shape() != x_adv.shape() || t->dtype() != x_adv.dtype())
      throw std::invalid_argument(fmt::format("pgd_step_: x_adv is {} but got {}", x_adv.str(), t->str()));
    require_same_device(x_adv, *t, "pgd_step_");
  }
  if (l1.defined()) {
    if (l1.dtype() != DType::f64 || l1.numel() != 1 || !l1.is_contiguous())
      throw std::invalid_argument(fmt::format("pgd_step_: l1 must be one contiguous f64 element, got {}", l1.str()));
    require_same_device(x_adv, l1, "pgd_step_");
  }
  const Tensor x = x_in.detach().contiguous(), g = g_in.detach().contiguous();
  double* l1_out = l1.defined() ? l1.data<double>() : nullptr;
  BW_KERNEL(x_adv.device(), x_adv.dtype(), "pgd_step_", pgd_step, x.data<T>(), x_adv.data<T>(), g.data<T>(), x_adv.numel(),
            static_cast<T>(eps), static_cast<T>(alpha), l1_out);
}

static_assert(kFusedMaxLayers == fused::kMaxLayers);

namespace {

// The kernels' description of `layers` for a sample of `sample` shape ([C, H, W] or [D]), every
// shape checked; the parameter pointers are bound by bind_params.
fused::Net<float> fused_shapes(const std::vector<FusedLayer>& layers, const Shape& sample, const Tensor& like) {
  if (layers.empty() || layers.size() > static_cast<size_t>(kFusedMaxLayers))
    throw std::invalid_argument(
        fmt::format("fused_pgd_: {} layers; the fused attack takes 1 to {}", layers.size(), kFusedMaxLayers));
  auto check_param = [&](const Tensor& t, const char* what, size_t l) {
    if (t.defined() && (t.dtype() != like.dtype() || t.device() != like.device()))
      throw std::invalid_argument(fmt::format("fused_pgd_: layer {}'s {} is {}, the input {}", l, what, t.str(), like.str()));
  };
  auto narrow = [](int64_t v) {
    if (v > (int64_t{1} << 30)) throw std::invalid_argument("fused_pgd_: a layer of more than 2^30 elements a sample");
    return static_cast<int>(v);
  };
  fused::Net<float> net;
  int64_t c = sample.empty() ? 1 : sample[0];
  int64_t h = sample.size() == 3 ? sample[1] : 1, w = sample.size() == 3 ? sample[2] : 1;
  if (sample.size() != 1 && sample.size() != 3)
    throw std::invalid_argument(fmt::format("fused_pgd_: samples must be [C, H, W] or [D], got {}", like.str()));
  int64_t act = 0, widest = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const FusedLayer& f = layers[l];
    fused::Layer<float>& L = net.layer[l];
    L.in_c = narrow(c), L.in_h = narrow(h), L.in_w = narrow(w);
    widest = std::max(widest, c * h * w);
    const Shape ws = f.weight.defined() ? f.weight.shape() : Shape{};
    if (f.kind == FusedLayer::Kind::normalize) {
      if (ws != Shape{c} || !f.bias.defined() || f.bias.shape() != Shape{c})
        throw std::invalid_argument(fmt::format("fused_pgd_: layer {} normalises {} channels with mean {} and std {}", l,
                                                c, f.weight.str(), f.bias.str()));
      L.kind = fused::kNormalize;
      L.out_c = L.in_c, L.out_h = L.in_h, L.out_w = L.in_w;
    } else if (f.kind == FusedLayer::Kind::linear) {
      if (ws.size() != 2 || ws[1] != c * h * w)
        throw std::invalid_argument(
            fmt::format("fused_pgd_: layer {} is linear with weight {} on {} features", l, f.weight.str(), c * h * w));
      L.kind = fused::kLinear;
      L.in_c = narrow(c * h * w), L.in_h = L.in_w = 1;
      L.out_c = narrow(ws[0]);
    } else {
      if (sample.size() != 3 || ws.size() != 4 || ws[1] != c || ws[2] != ws[3] ||
          f.stride < 1 || f.padding < 0)
        throw std::invalid_argument(fmt::format("fused_pgd_: layer {} is a convolution with weight {} (stride {}, "
                                                "padding {}) on [{}, {}, {}]",
                                                l, f.weight.str(), f.stride, f.padding, c, h, w));
      const int64_t k = ws[2], oh = (h + 2 * f.padding - k) / f.stride + 1, ow = (w + 2 * f.padding - k) / f.stride + 1;
      if (h + 2 * f.padding < k || w + 2 * f.padding < k)
        throw std::invalid_argument(fmt::format("fused_pgd_: layer {}'s {}x{} kernel does not fit [{}, {}]", l, k, k, h, w));
      L.kind = fused::kConv;
      L.kernel = narrow(k), L.stride = narrow(f.stride), L.pad = narrow(f.padding);
      L.out_c = narrow(ws[0]), L.out_h = narrow(oh), L.out_w = narrow(ow);
    }
    if (f.kind != FusedLayer::Kind::normalize && f.bias.defined() && f.bias.shape() != Shape{ws[0]})
      throw std::invalid_argument(fmt::format("fused_pgd_: layer {}'s bias is {} for {} outputs", l, f.bias.str(), ws[0]));
    check_param(f.weight, "weight", l);
    check_param(f.bias, f.kind == FusedLayer::Kind::normalize ? "std" : "bias", l);
    if (f.kind != FusedLayer::Kind::normalize && !f.weight.defined())
      throw std::invalid_argument(fmt::format("fused_pgd_: layer {} has no weight", l));
    L.relu = f.relu;
    L.out_offset = narrow(act);
    act += L.out_size();
    c = L.out_c, h = L.out_h, w = L.out_w;
  }
  net.layers = static_cast<int>(layers.size());
  if (layers.back().relu || net.classes() < 2)
    throw std::invalid_argument(fmt::format("fused_pgd_: the last layer must give logits (>= 2 outputs, no ReLU), got {}{}",
                                            net.classes(), layers.back().relu ? " with a ReLU" : ""));
  net.act_size = narrow(act);
  net.grad_size = narrow(std::max<int64_t>(widest, net.classes()));
  return net;
}

// `shapes` with its pointers bound to contiguous copies of the layers' parameters, kept alive
// in `kept` for the kernel.
template <class T>
fused::Net<T> bind_params(const fused::Net<float>& shapes, const std::vector<FusedLayer>& layers,
                          std::vector<Tensor>& kept) {
  auto pointer = [&](const Tensor& t) -> const T* {
    if (!t.defined()) return nullptr;
    kept.push_back(t.detach().contiguous());
    return kept.back().data<T>();
  };
  fused::Net<T> net;
  net.layers = shapes.layers, net.act_size = shapes.act_size, net.grad_size = shapes.grad_size;
  for (int l = 0; l < shapes.layers; ++l) {
    const fused::Layer<float>& s = shapes.layer[l];
    fused::Layer<T>& L = net.layer[l];
    L.kind = s.kind, L.relu = s.relu, L.out_offset = s.out_offset;
    L.in_c = s.in_c, L.in_h = s.in_h, L.in_w = s.in_w, L.out_c = s.out_c, L.out_h = s.out_h, L.out_w = s.out_w;
    L.kernel = s.kernel, L.stride = s.stride, L.pad = s.pad;
    L.weight = pointer(layers[l].weight);
    L.bias = pointer(layers[l].bias);
  }
  return net;
}

}  // namespace

void fused_pgd_(Tensor& x_adv, const Tensor& x_in, const Tensor& y_in, const std::vector<FusedLayer>& layers, double eps,
                double alpha, int steps, const Tensor& l1) {
  require_float(x_adv, "fused_pgd_ x_adv");
  check_attack_budget(eps, alpha);
  if (steps < 0) throw std::invalid_argument(fmt::format("fused_pgd_: steps must be >= 0, got {}", steps));
  if (!x_adv.is_contiguous() || x_adv.dim() < 2)
    throw std::invalid_argument(fmt::format("fused_pgd_: x_adv must be a contiguous batch [N, ...], got {}", x_adv.str()));
  if (x_in.shape() != x_adv.shape() || x_in.dtype() != x_adv.dtype())
    throw std::invalid_argument(fmt::format("fused_pgd_: x_adv is {} but x is {}", x_adv.str(), x_in.str()));
  require_same_device(x_adv, x_in, "fused_pgd_");
  require_same_device(x_adv, y_in, "fused_pgd_");
  if (y_in.dtype() != DType::i32 || y_in.shape() != Shape{x_adv.size(0)})
    throw std::invalid_argument(fmt::format("fused_pgd_: labels must be i32 [{}], got {}", x_adv.size(0), y_in.str()));
  if (l1.defined() && (l1.dtype() != DType::f64 || l1.numel() != 1 || !l1.is_contiguous() || l1.device() != x_adv.device()))
    throw std::invalid_argument(fmt::format("fused_pgd_: l1 must be one contiguous f64 element on {}, got {}",
                                            x_adv.device() == Device::cuda ? "cuda" : "cpu", l1.str()));
  const Shape sample(x_adv.shape().begin() + 1, x_adv.shape().end());
  const Tensor x = x_in.detach().contiguous(), y = y_in.contiguous();
  std::vector<Tensor> kept;
  double* l1_out = l1.defined() ? l1.data<double>() : nullptr;
  const fused::Net<float> shapes = fused_shapes(layers, sample, x_adv);
  check_index_range(y, shapes.classes(), "fused_pgd_", cuda::IndexRole::label);
  BW_KERNEL(x_adv.device(), x_adv.dtype(), "fused_pgd_", fused_pgd, bind_params<T>(shapes, layers, kept), x.data<T>(),
            x_adv.data<T>(), y.data<int32_t>(), x_adv.size(0), steps, static_cast<T>(eps), static_cast<T>(alpha), l1_out);
}

int64_t fused_forward_macs(const std::vector<FusedLayer>& layers, const Shape& sample) {
  Shape batch{1};
  batch.insert(batch.end(), sample.begin(), sample.end());
  const Tensor& w = layers.at(0).weight;
  const fused::Net<float> net = fused_shapes(layers, sample, Tensor::empty(batch, w.dtype(), w.device()));
  int64_t macs = 0;
  for (int l = 0; l < net.layers; ++l) {
    const fused::Layer<float>& L = net.layer[l];
    if (L.kind == fused::kLinear) macs += int64_t{L.in_c} * L.out_c;
    if (L.kind == fused::kConv) macs += int64_t{L.out_size()} * L.in_c * L.kernel * L.kernel;
  }
  return macs;
}

// One Philox word per element, as rand_uniform draws them.
uint64_t random_start_counters(int64_t numel) { return uniform_counters(numel); }

Tensor random_start(const Tensor& x_in, double eps, uint64_t seed, uint64_t offset) {
  require_float(x_in, "random_start");
  check_attack_budget(eps, 0.0);
  const Tensor x = x_in.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "random_start", random_start, x.data<T>(), out.data<T>(), x.numel(), static_cast<T>(eps),
            seed, offset);
  return out;
}

}  // namespace bulwark
