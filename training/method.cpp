#include "training/method.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

#include "training/evaluate.h"

namespace bulwark::training {

BatchResult StandardTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  ctx.optimizer.zero_grad();
  const Tensor logits = ctx.model(x);
  const Tensor loss = cross_entropy(logits, y);
  ++ctx.passes.fwd;
  backward(loss);
  ++ctx.passes.bwd;
  ctx.optimizer.step();
  const int64_t n = x.size(0);
  return {loss.item() * static_cast<double>(n), count_correct(logits, y), n};
}

std::vector<std::string> method_names() { return {"standard"}; }

std::unique_ptr<Method> make_method(const std::string& name) {
  if (name == "standard") return std::make_unique<StandardTraining>();
  throw std::invalid_argument(fmt::format("unknown method '{}' (available: {})", name, fmt::join(method_names(), ", ")));
}

}  // namespace bulwark::training
