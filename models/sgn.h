#pragma once
// Self-gradient networks (SGN; Aboutalebi, Shafiee, Karg, Scharfenberger, Wong 2020).
//
// Only the paper's abstract is public: "the architecture explicitly taps into its own gradient
// flow during training". bulwark's reading of it (assumed, ../docs/sgn.md; every constant is an
// option) wraps a base network f and a set S of its layers:
//
//   probe:  z = f(x), with h_l the output of each tapped layer l;  yhat = argmax z
//           g_l = d CE(z, yhat) / d h_l                 (the predicted label: no label needed, and
//                                                         training and test behave the same)
//   main:   f again, continuing at each tapped layer from
//           h_l' = h_l - gamma_l * g_l / (rms(g_l) + 1e-12),   rms over one sample's elements
//           gamma_l = softplus(rho_l), one learned gate per channel (per feature after a Linear),
//           initialised to gamma_init (0.1)
//
// The main pass's logits are the network's output. Moving h_l against g_l lowers the loss of the
// network's own prediction, by a step the network learns; g / rms(g) makes the step's size the
// gate's alone, whatever the scale of the loss.
//
// Two gradient modes (--sgn-grad):
//   full      g_l stays a function of x and of the weights (the probe's backward is recorded,
//             create_graph): training and attacks differentiate through it (double backward).
//             This is the network as it computes, and what an attacker must differentiate.
//   detached  g_l is data (no graph through the probe's backward): cheaper, and a weaker attack.
//
// Cost (Module::pass_cost): a call is two forwards and one backward (the probe's); a backward
// through the full graph also runs back through the probe's backward and counts twice.
// In training mode both passes update BatchNorm's running statistics, as calling the base network
// twice in PyTorch would.
#include <memory>
#include <string>
#include <vector>

#include "models/module.h"

namespace bulwark {

enum class SgnGrad { full, detached };

struct SgnConfig {
  std::vector<std::string> taps;  // layer names; empty: the default (SelfGradientNetwork::default_taps)
  SgnGrad grad = SgnGrad::full;
  double gate_init = 0.1;         // gamma at initialisation, > 0
};

class SelfGradientNetwork : public Module {
 public:
  // `input_shape`: one sample's [C, H, W] (a dummy forward finds each tap's channels). Throws,
  // listing the base's tappable layers, when a tap is not one of them.
  SelfGradientNetwork(std::shared_ptr<Module> base, const SgnConfig& cfg, const Shape& input_shape);
  Tensor forward(const Tensor& x) override;
  PassCost pass_cost() const override;
  Interval interval_forward(const Interval& in) override;

  // The default taps of `base`: every ReLU layer of a Sequential base; otherwise every composite
  // layer of a Sequential inside it (a residual network's blocks).
  static std::vector<std::string> default_taps(Module& base);
  const std::vector<std::string>& taps() const { return tap_names_; }
  SgnGrad grad_mode() const { return grad_; }
  void set_grad_mode(SgnGrad mode) { grad_ = mode; }
  // gamma_l = softplus(rho_l), one tensor per tap.
  std::vector<Tensor> gates() const;

  std::shared_ptr<Module> base;

 private:
  std::vector<std::string> tap_names_;
  std::vector<const Module*> tap_layers_;
  std::vector<Tensor> rho_;  // the gates' parameters, "gates.<k>"
  SgnGrad grad_;
};

// The layers a tap can name: every layer of every Sequential in `model`, by dotted name.
std::vector<std::pair<std::string, Module*>> tappable_layers(Module& model);

// The SelfGradientNetwork `m` is, or nullptr.
SelfGradientNetwork* as_self_gradient(Module& m);

// Sets every self-gradient network's gradient mode for a scope (an evaluation's detached-gradient
// attack), restoring it at the end; a no-op for other models.
class SgnGradScope {
 public:
  SgnGradScope(Module& model, SgnGrad mode);
  ~SgnGradScope();
  SgnGradScope(const SgnGradScope&) = delete;
  SgnGradScope& operator=(const SgnGradScope&) = delete;

 private:
  SelfGradientNetwork* sgn_;
  SgnGrad previous_ = SgnGrad::full;
};

SgnGrad parse_sgn_grad(const std::string& text);  // "full" or "detached"
// "1, 3,layer2.0" -> {"1", "3", "layer2.0"} (blanks around names dropped; "" -> none: the default)
std::vector<std::string> parse_sgn_taps(const std::string& text);

}  // namespace bulwark
