#pragma once
// The geometry the attacks share, per sample of a batch [N, ...], in L-inf or L2: the steepest
// ascent direction of a norm and the projection onto its eps-ball around x intersected with
// [0,1]. Internal to robust/ (attacks.cpp defines them; APGD and FAB use them too).
#include "engine/tensor.h"
#include "robust/attacks.h"

namespace bulwark {

// ||t_i||_2 per sample, shaped [N, 1, ..., 1] to broadcast against t.
Tensor sample_l2_norm(const Tensor& t);

// ||t_i|| in `norm` per sample, shaped [N, 1, ..., 1] ([n, 1] for rows of [n, d]).
Tensor sample_norm(const Tensor& t, Norm norm);

// The unit-norm direction of steepest ascent for a gradient g: sign(g) in L-inf, g / ||g||_2 in
// L2 (a zero gradient gives a zero step).
Tensor steepest_direction(const Tensor& g, Norm norm);

// Points v projected onto { z : ||z - x|| <= eps } and then [0,1]. L-inf: clamp to [x - eps,
// x + eps] intersected with [0,1] (the exact projection onto the intersection; the box's faces
// are computed once, here, for all the points an attack projects). L2: x + delta * min(1,
// eps / ||delta||_2), then [0,1]; clipping moves each coordinate towards x, so the result stays
// in the ball.
class BallProjection {
 public:
  BallProjection(const Tensor& x, double eps, Norm norm);
  Tensor operator()(const Tensor& v) const;

 private:
  Tensor x_, lo_, hi_;  // lo_, hi_: L-inf only
  double eps_;
  Norm norm_;
};

}  // namespace bulwark
