#pragma once
// Verified robustness by bound propagation: a sample is verified at eps when no input of the box
// [x - eps, x + eps] intersected with [0,1] can change the model's decision, which the bounds
// prove by showing every margin z_j - z_y (j != y) stays below 0 over the whole box.
//
//   ibp        interval bound propagation (Gowal et al. 2018): each layer maps a box of its inputs
//              to a box of its outputs (models/interval.h, Module::interval_forward), and the
//              model's last Linear is merged with the margins (elision: |W_j - W_y| r instead of
//              |W_j| r + |W_y| r), which is never looser.
//   crown-ibp  (Zhang et al. 2020) the ReLUs' pre-activation boxes from the IBP pass, then CROWN's
//              backward linear relaxation (Module::crown_backward) from the margins z_j - z_y
//              through the whole network to the input box, maximised there in closed form.
//   crown      (verification only) CROWN for the intermediate layers too: before each ReLU its
//              pre-activation box is the intersection of IBP's and CROWN's (the identity over the
//              layer's neurons carried back to the input, upper and lower), then crown-ibp's last
//              pass. Tighter, and as many backward passes as the network has ReLU neurons (in
//              chunks; models/module.h, CrownTightening, walks any zoo model). Not
//              differentiable (no graph is kept).
//   symbolic   (MixTrain's bound; ReluVal, Neurify) every neuron keeps a lower and an upper linear
//              function of the input (models/symbolic.h), each ReLU's concrete bounds intersected
//              with IBP's; the margins elided into the last Linear like IBP's. Never looser than
//              IBP; d + 3 times IBP's memory per sample (d: input values per sample).
//
// The worst-case logits wc_j = upper(z_j - z_y) (wc_y = 0) give the verified loss CE(wc, y),
// which IBP training minimises (robust/methods/ibp.cpp), and the verified decision
// max_{j != y} wc_j < 0. Everything is differentiable and runs on the model's device; a model
// with a layer the bound cannot pass throws, naming the layer.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "models/module.h"

namespace bulwark::robust {

enum class BoundKind { ibp, crown_ibp, crown, symbolic };

// "ibp", "crown-ibp", "crown", "symbolic"; throws std::invalid_argument listing the bounds bulwark implements.
BoundKind bound_from_name(const std::string& name);
const char* bound_name(BoundKind kind);
std::vector<std::string> bound_names();

// The box [x - eps, x + eps] intersected with [0, 1], as center and radius (eps in [0, 1]).
Interval input_box(const Tensor& x, double eps);

// Upper bounds of z_j - z_y over the box of radius eps around x, [N, K], 0 at j = y.
Tensor worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps,
                         BoundKind kind = BoundKind::ibp);

// CROWN-IBP training's mix, from one interval pass: beta * crown-ibp + (1 - beta) * ibp worst-case
// logits (both are upper bounds, so is any such mix). beta = 0 skips the CROWN pass.
Tensor mixed_worst_case_logits(Module& model, const Tensor& x, const Tensor& labels, double eps, double beta,
                               const CrownOptions& options = {});

// The margins z_j - z_y as linear functions of the logits, [N, K, K] (row j = e_j - e_y; row y is
// 0): where CROWN starts its backward pass.
Tensor margin_specification(const Tensor& labels, int64_t classes, DType dtype);

// Per sample, 1 where every wc_j (j != y) is below 0: the decision cannot change in the box.
std::vector<uint8_t> verified_samples(const Tensor& worst_case, const Tensor& labels);

}  // namespace bulwark::robust
