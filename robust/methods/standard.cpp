// Standard training: no inner maximisation. One forward, mean cross-entropy, one backward, one
// optimizer step per batch. Its eps is only the radius of the robust validation and final attack.
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

class StandardTraining final : public Method {
 public:
  std::string name() const override { return "standard"; }
  bool capturable() const override { return true; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override { train_on(ctx, x, y, false); }
};

}  // namespace

MethodInfo standard_method() {
  MethodInfo m;
  m.name = "standard";
  m.title = "standard training";
  m.summary =
      "Clean training: one forward, one backward and one optimizer step per batch. The baseline every "
      "robust method is compared with; --eps only sets the radius of the robust validation.";
  m.adversarial = false;
  m.options = {eps_option()};
  m.make = [](const OptionValues&) { return std::make_unique<StandardTraining>(); };
  return m;
}

}  // namespace bulwark::robust
