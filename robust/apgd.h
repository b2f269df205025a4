#pragma once
// APGD, L-inf and L2 (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
// ensemble of diverse parameter-free attacks", ICML; Algorithm 1 and Section 3): PGD whose step
// size needs no tuning. attack() runs it for AttackKind::apgd_ce, apgd_dlr and apgd_t; these are
// the pieces, public for the tests and for whoever builds an AutoAttack-style ensemble.
//
// With P the projection onto the eps-ball around x intersected with [0,1], f the per-sample loss,
// s(g) the norm's steepest direction (sign(g) in L-inf, g / ||g||_2 in L2), from x0 (the
// attack's random start) and for k = 0 .. N_iter - 1:
//
//   eta_0   = 2 eps                                  (per sample from here on)
//   x1      = P(x0 + eta s(grad f(x0)))
//   z       = P(x_k + eta s(grad f(x_k)))                                     for k >= 1
//   x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})),    alpha = 0.75
//
// Checkpoints w_j = ceil(p_j N_iter), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
// 0.03, 0.06) (N_iter = 100: 0, 22, 41, 57, 70, 80, 87, 93, 99). At each w_j, per sample, eta is
// halved and the iterate restarts from the best point found so far (x_{k-1} too, so no stale
// momentum carries over the jump) when
//   1. the loss went up in fewer than rho = 0.75 of the w_j - w_{j-1} steps since w_{j-1}, or
//   2. eta was not halved at w_{j-1} and the best loss has not improved since w_{j-1}.
//
// Losses: cross-entropy (APGD-CE); DLR, the margin scaled by the logits' spread, invariant to
// shifting and scaling the logits (z sorted descending as z_pi1 >= z_pi2 >= ...):
//   DLR(z, y)      = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)              (APGD-DLR)
//   DLR_T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)              (APGD-T)
// APGD-T attacks the n_target highest non-true classes of the clean logits in turn (1st, 2nd,
// ...), each run on the samples no earlier target broke, each from the restart's start.
//
// EOT (Athalye et al. 2018, AutoAttack's "rand" version): with eot = m > 1 every point's loss and
// gradient are the mean of m forwards and backwards, the expectation a randomised model is
// attacked through; whether the point is misclassified is the last draw's answer.
//
// A run returns per sample the first point it found misclassified, else its best-loss point, so
// the result is never worse than the start. Each run costs N_iter + 1 forwards and N_iter
// backwards (the last point needs no gradient), times eot; APGD-T adds one forward for the clean
// logits.
// All bookkeeping is per-sample tensor ops on x's device; the host waits once per APGD-T target.
#include <vector>

#include "engine/tensor.h"
#include "models/module.h"
#include "robust/attacks.h"

namespace bulwark {

// Per-sample DLR of logits z [N, K] (K >= 3) with i32 labels [N]; positive = misclassified.
Tensor dlr_loss(const Tensor& logits, const Tensor& labels);
// Per-sample targeted DLR (K >= 4) towards i32 classes `targets` [N].
Tensor targeted_dlr_loss(const Tensor& logits, const Tensor& labels, const Tensor& targets);

// w_0 = 0, w_1, ... <= steps, strictly increasing (ceil(p_j N) can repeat for small N).
std::vector<int> apgd_checkpoints(int steps);

// One APGD restart from x_start (o resolved, o.kind an APGD kind): the example per sample.
Tensor apgd_ascend(Module& model, const Tensor& x, const Tensor& y, const Tensor& x_start, const AttackOptions& o,
                   AttackStats& stats);

}  // namespace bulwark
