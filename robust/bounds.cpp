#include "robust/bounds.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/symbolic.h"
#include "models/layers.h"

namespace bulwark::robust {

namespace {
struct BoundEntry {
  BoundKind kind;
  const char* name;
};
constexpr BoundEntry kBounds[] = {
    {BoundKind::ibp, "ibp"}, {BoundKind::crown_ibp, "crown-ibp"}, {BoundKind::crown, "crown"}, {BoundKind::symbolic, "symbolic"}};
}  // namespace

BoundKind bound_from_name(const std::string& name) {
  for (const BoundEntry& b : kBounds)
    if (name == b.name) return b.kind;
  throw std::invalid_argument(
      fmt::format("unknown bound '{}' (bulwark implements: {})", name, fmt::join(bound_names(), ", ")));
}

const char* bound_name(BoundKind kind) {
  for (const BoundEntry& b : kBounds)
    if (kind == b.kind) return b.name;
  return "?";
}

std::vector<std::string> bound_names() {
  std::vector<std::string> names;
  for (const BoundEntry& b : kBounds) names.emplace_back(b.name);
  return names;
}

namespace {

// CROWN's upper bounds of the margins z_j - z_y over `box` ([N, classes]), once an interval pass
// over the box has recorded the relaxations: the margins carried back through the model.
Tensor crown_margins(Module& model, const Interval& box, const Tensor& labels, int64_t classes,
                     const CrownOptions& options) {
  const Tensor& x = box.center;
  const LinearBound start{margin_specification(labels, classes, x.dtype()),
                          Tensor::zeros({x.size(0), classes}, x.dtype(), x.device())};
  return maximize_over_box(model.crown_backward(start, options), box);
}

Tensor crown_worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps) {
  NoGradGuard no_grad;  // for verification: its many backward passes keep no graph
  const Interval box = input_box(x, eps);
  Interval logits;
  {
    CrownTightening tightening(box);  // every ReLU's pre-activation box: IBP's intersected with CROWN's
    logits = model.interval_forward(box);
  }
  return crown_margins(model, box, labels, logits.center.size(1), {});
}

Tensor symbolic_worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps) {
  SymbolicPass pass(input_box(x, eps));
  return pass.bounds(model.interval_margin(pass.expanded(), pass.repeat_labels(labels))).upper();
}

}  // namespace

Tensor margin_specification(const Tensor& labels, int64_t classes, DType dtype) {
  std::vector<int32_t> all(static_cast<size_t>(classes));
  for (int32_t c = 0; c < classes; ++c) all[c] = c;
  const Tensor eye = one_hot(Tensor::from_vector(all, {classes}).to(labels.device()), classes, dtype);
  const int64_t n = labels.size(0);
  return eye.reshape({1, classes, classes}) - one_hot(labels, classes, dtype).reshape({n, 1, classes});
}

Tensor mixed_worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps, double beta,
                               const CrownOptions& options) {
  if (!(beta >= 0 && beta <= 1)) throw std::invalid_argument(fmt::format("CROWN-IBP's beta must be in [0, 1], got {}", beta));
  const Interval box = input_box(x, eps);
  const Tensor ibp = model.interval_margin(box, labels).upper();  // also records what CROWN needs
  if (beta == 0) return ibp;
  const Tensor crown = crown_margins(model, box, labels, ibp.size(1), options);
  return beta == 1 ? crown : crown * beta + ibp * (1 - beta);
}

Interval input_box(const Tensor& x, double eps) {
  if (!(eps >= 0 && eps <= 1))
    throw std::invalid_argument(fmt::format("the input box needs eps in [0, 1] (pixel units), got {}", eps));
  return interval_from_bounds(clamp(x - eps, 0.0, 1.0), clamp(x + eps, 0.0, 1.0));
}

Tensor worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps, BoundKind kind) {
  if (labels.dtype() != DType::i32 || labels.dim() != 1 || labels.size(0) != x.size(0))
    throw std::invalid_argument(fmt::format("worst_case_logits: labels must be i32 [{}], got {}", x.size(0), labels.str()));
  switch (kind) {
    case BoundKind::ibp: return model.interval_margin(input_box(x, eps), labels).upper();
    case BoundKind::crown_ibp: return mixed_worst_case_logits(model, x, labels, eps, 1.0);
    case BoundKind::crown: return crown_worst_case_logits(model, x, labels, eps);
    case BoundKind::symbolic: return symbolic_worst_case_logits(model, x, labels, eps);
  }
  throw std::invalid_argument("worst_case_logits: unknown bound");
}

std::vector<uint8_t> verified_samples(const Tensor& worst_case, const Tensor& labels) {
  NoGradGuard no_grad;
  const int64_t n = worst_case.size(0), k = worst_case.size(1);
  const std::vector<double> wc = worst_case.to(DType::f64).cpu().to_vector_f64();
  const std::vector<int32_t> y = labels.cpu().to_vector_i32();
  std::vector<uint8_t> out(static_cast<size_t>(n), 1);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      if (j != y[i] && !(wc[i * k + j] < 0)) out[i] = 0;
  return out;
}

}  // namespace bulwark::robust
