#pragma once
// The Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): L-inf, score-based
// random search that never asks for a gradient. robust/square.cpp explains the algorithm; use
// it through attack() with AttackKind::square (robust/attacks.h). What is public here is what
// the tests and attacks.cpp need: the size schedule, the Philox layout and the search itself.
#include <cstdint>

#include "engine/tensor.h"
#include "models/module.h"
#include "robust/attacks.h"

namespace bulwark {

// The fraction p of the image a square covers at loop iteration `iteration` (0-based; the
// stripe start is query 0, iteration i is query i + 1) of a run of `queries` queries: p_init,
// halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a 10,000-query
// run, the breakpoints scaled by queries / 10,000.
double square_p(double p_init, int64_t iteration, int64_t queries);

// The side of the square at fraction p of an h x w image: round(sqrt(p h w)), at least 1 and
// at most min(h, w) - 1 (1 for a 1-pixel-high image).
int64_t square_side(double p, int64_t height, int64_t width);

// Philox counters one restart of the search on a batch of `shape` [N, C, H, W] consumes.
uint64_t square_counters(const AttackOptions& options, const Shape& shape);

// The search with the options' restarts: x's shape, dtype and device, detached, within eps of
// x and in [0,1]. Counts its forwards (no backwards) in `stats`. `options` must be resolved.
Tensor square_attack(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& options, AttackStats& stats);

}  // namespace bulwark
