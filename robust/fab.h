#pragma once
// FAB-T, the targeted fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted
// adversarial examples with a fast adaptive boundary attack"), L-inf and L2: the minimum-norm attack of
// the AutoAttack suite. It does not climb a loss inside the eps-ball; it walks to the nearest
// point of the decision boundary between the true class y and a target class t, by repeatedly
// projecting onto the boundary of the model's linearisation:
//
//   g(x) = f_y(x) - f_t(x)  (> 0 while x is still classified y rather than t)
//   at x_k: the hyperplane H = { z : g(x_k) + grad g(x_k) . (z - x_k) = 0 }
//   d_k = the smallest step (in the attack's norm) from x_k onto H with x_k + d_k in [0,1]
//   d_0 = the same from the original x_0 onto H
//   alpha = min(|d_k| / (|d_k| + |d_0|), alpha_max)   (|.| the attack's norm)
//   x_{k+1} = clip01((1 - alpha)(x_k + eta d_k) + alpha (x_0 + eta d_0))
//   if x_{k+1} is misclassified: record it when it is the closest to x_0 so far, then step back
//   towards x_0: x_{k+1} <- (1 - beta) x_0 + beta x_{k+1}
//
// with eta = 1.05 (overshoot), alpha_max = 0.1, beta = 0.9, the paper's values, from x_0 (one
// restart, as AutoAttack runs FAB-T), for each of the `targets` classes the clean logits rank
// highest after y, in turn. The projection onto H with the box constraint is found by bisection:
// L-inf, on the step size t: d(t)_i = clip(sign(c w_i) t, -x_i, 1 - x_i) moves w . d monotonically
// towards c = -g(x_k); the smallest t that reaches c (or t = 1 when none does) is d. L2 (the KKT
// conditions of min ||d||_2 subject to w . d = c and the box): d(lambda)_i = clip(lambda sign(c)
// w_i, -x_i, 1 - x_i), the smallest lambda that reaches c, at least |c| / ||w||_2^2. Per iteration:
// one forward and one backward (the gradient of g), and one forward to judge x_{k+1}.
//
// For an evaluation at eps the attack's example is the closest misclassified point found when
// it lies within eps of x, else x itself (the sample resists).
#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "models/module.h"
#include "robust/attacks.h"

namespace bulwark {

struct FabOptions {
  Norm norm = Norm::linf;
  double eps = 0.3;       // the evaluation's radius: examples farther than eps are not returned
  int steps = 100;        // iterations per target class
  int targets = 9;        // target classes, the highest-ranked non-true ones first
  double alpha_max = 0.1;
  double eta = 1.05;
  double beta = 0.9;
};

struct FabResult {
  Tensor x_adv;               // per sample: the closest misclassified point within eps, else x
  std::vector<double> norm;   // per sample: distance (in the attack's norm) of the closest misclassified point (inf: none)
};

FabResult fab_targeted(Module& model, const Tensor& x, const Tensor& y, const FabOptions& options,
                       AttackStats* stats = nullptr);

// The smallest-L-inf step d with w . d = c per row, x + d in [0,1] (lo = -x, hi = 1 - x); rows
// where no step within the box reaches c get the box's farthest step towards it. w, lo, hi: [n, d];
// c: [n]. Bisection to `iterations` halvings of [0, 1].
Tensor linf_box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, int iterations = 24);

// The smallest-L2 step d with w . d = c per row and lo <= d <= hi: d = clip(lambda sign(c) w, lo,
// hi) for the smallest lambda that reaches c (bisection on log2 lambda over 40 octaves above
// |c| / ||w||_2^2, the answer when the box does not bind); rows that cannot reach c get the
// farthest step of that range.
Tensor l2_box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, int iterations = 30);

// linf_box_projection or l2_box_projection.
Tensor box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, Norm norm);

}  // namespace bulwark
