#pragma once
// The interval attack (Wang, Chen, Abdou, Jana 2018, MixTrain's evaluation; METHODS.md): PGD
// guided by the symbolic bound where PGD's own gradient gives no direction.
//
//   restarts R: the first from x, the others from x + U(-eps, eps)
//   per restart: the base attack (PGD-`steps`, step `alpha`, 0.01 in the paper) from the start;
//     then, for each sample it left unbroken, widen a box around its point until the symbolic
//     bound (models/symbolic.h) of the box can no longer prove it: ed = 1, 3, 9, 15 ... in units
//     of `unit` (0.01), the box [x_adv - unit ed, x_adv + unit ed] in [0, 1]; where a margin
//     z_d - z_y has a positive upper bound, step by unit ed along the sign of that bound's input
//     coefficients, project to the eps-ball and [0, 1], and finish with the base attack from
//     there. A sample whose box reaches half the eps-ball (ed = eps / (2 unit)) still proved is
//     given up. The widening caps ed at eps / (2 unit) so that the last box is that half-ball
//     (the paper's rule, `ed == eps / (2 unit)`, only ends at eps that are 3^k / 50).
//   per sample the first restart that breaks it counts.
//
// The bound costs (d + 3) rows per sample (d input values), counted in AttackStats as forward
// images and one forward pass per bound. L-inf only.
#include "robust/attacks.h"

namespace bulwark {

// o: kind interval, eps, steps and alpha of the base PGD, restarts, seed/offset of the starts.
Tensor interval_attack(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& o, AttackStats& stats);

}  // namespace bulwark
