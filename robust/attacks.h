#pragma once
// Attacks in pixel space (inputs in [0,1]; the models normalise inside), on any device: every
// tensor op dispatches on the tensor's device, so a model moved with Module::to(Device::cuda)
// is attacked on the GPU. docs/attacks.md specifies and explains them.
//
// Every attack is "start, then k ascent steps on a loss, projected; keep the worst of R
// restarts", with L the attack's objective averaged over the batch:
//
//   FGSM     x' = clip_[0,1](x + eps * sign(grad_x CE))                        1 step from x
//   FGSM-RS  x0 = clip_[0,1](x + U(-eps, eps)), one signed step of alpha        (Wong et al. 2020;
//            projected to the eps-ball and [0,1]; alpha defaults to 1.25 eps)    Fast-AT's step)
//   PGD-k    x0 = clip_[0,1](x + U(-eps, eps)), then k times                    (Madry et al. 2018)
//              x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha * sign(grad_x_adv CE)))
//   CW-k     PGD-k on the Carlini-Wagner margin max_{j != y} z_j - z_y (maximised), which does
//            not saturate the way cross-entropy does on confident models
//   Square   no gradient: random search over square-shaped L-inf updates, accepted when the
//            margin z_y - max_{j != y} z_j falls (Andriushchenko et al. 2020; robust/square.cpp)
//   APGD-k   Croce & Hein 2020, robust/apgd.h: from the same start, k momentum steps whose
//            step size (2 eps at first) halves per sample when the loss stalls; cross-entropy
//            (APGD-CE), DLR (APGD-DLR) or targeted DLR once per target class (APGD-T); L-inf
//            and L2
//   L2       PGD-k and CW-k with norm = l2: steps of alpha * g / ||g||_2 per sample, projection
//            onto the L2 ball ||x_adv - x||_2 <= eps, then [0,1]; the start is uniform in the
//            L2 ball (Gaussian direction, radius eps * u^(1/d)), clipped to [0,1]
//
// The L-inf step is the fused kernel pgd_step_ (sign step + eps-ball + [0,1] + the gradient's
// L1 magnitude in one pass). Each step costs one forward and one backward that computes the
// input gradient alone (autograd's selective grad: no weight gradient is ever computed).
//
// Restarts: restart r starts from Philox offset `offset + r * start_counters(...)`, so the runs
// of R and R' > R restarts share their first R restarts. Per sample the result is the worst
// example found: the first restart that misclassifies the sample wins; while none does, the
// one with the highest objective. Judging a restart costs one forward (no backward). Restarts
// after the first attack only the samples still classified correctly (a broken sample keeps
// its example whatever follows), each from its own row of the whole batch's start; a pass
// over such a sub-batch counts as one pass in AttackStats, and its images as images.
//
// The model is used in whatever mode the caller set (train mode updates BatchNorm running
// statistics during the attack, exactly as in PyTorch); evaluation sets eval mode.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/attack_ops.h"  // pgd_step_ and random_start, for methods that drive their own loop
#include "engine/tensor.h"
#include "models/module.h"

namespace bulwark {

enum class AttackKind {
  none,     // the clean input: x' = x (0 steps); evaluation's "clean" row
  fgsm,     // one signed step of eps from x
  fgsm_rs,  // one signed step of alpha from a random start
  pgd,      // k steps on cross-entropy
  cw,       // k steps on the CW margin
  square,   // score-based random search, no gradients (robust/square.h; L-inf only)
  fab_t,    // FAB-T, the targeted minimum-norm boundary attack (robust/fab.h)
  apgd_ce,  // APGD (robust/apgd.h): k steps of momentum PGD with halving step size, cross-entropy
  apgd_dlr, // APGD on the DLR loss
  apgd_t,   // APGD on the targeted DLR loss, once per target class (`targets` of them)
  interval, // PGD guided by the symbolic bound where its gradient stalls (robust/interval_attack.h)
};
enum class Norm { linf, l2 };

struct AttackOptions {
  AttackKind kind = AttackKind::pgd;
  Norm norm = Norm::linf;
  double eps = 0.3;    // radius of the ball, in [0,1] pixel units
  double alpha = 0;    // step size; 0 = the default: 2.5 eps / steps (Madry's rule) for pgd and
                       // cw, 1.25 eps for fgsm_rs; fgsm always steps eps
  int steps = 10;      // pgd and cw; fgsm and fgsm_rs take 1, none takes 0
  int restarts = 1;    // >= 1; fgsm and none have no randomness and run once
  int targets = 9;     // apgd_t: the classes attacked, the highest non-true clean logits first
  bool random_start = true;  // false: the FIRST restart starts at x (the others are always random)
  uint64_t seed = 0;         // Philox stream of the random starts (square: of all its draws)
  uint64_t offset = 0;
  int queries = 5000;        // square: forwards per restart, the stripe start included
  double p_init = 0.8;       // square: the fraction of the image the first squares cover
  int eot = 1;               // APGD: loss and gradient averaged over this many forwards and backwards
                             // (Expectation over Transformation, for randomised models)
  // L-inf ascents on cross-entropy (pgd, fgsm, fgsm_rs) of a model that fused_layers accepts run
  // as fused_pgd_, one kernel for all the steps, in the tensors' own f32/f64 arithmetic (the
  // --precision rounding of the layered ops does not apply); other attacks and models ignore it.
  bool fused = false;
};

// What an attack did, for the trainers' counters and DEAT's magnitude signal.
struct AttackStats {
  // A pass is one forward or backward through the whole model of whatever batch the attack had
  // then: restarts, targets and Square's queries on the samples still standing pass smaller
  // batches. The images count the same passes per sample, the work whatever the batch sizes.
  int64_t forward_passes = 0;
  int64_t backward_passes = 0;
  int64_t forward_images = 0;
  int64_t backward_images = 0;
  // What one call of the attacked model and one backward through it cost in passes
  // (Module::pass_cost: a self-gradient network's call is more than one forward). The attacks
  // set it from their model.
  Module::PassCost cost;
  void count_forward(int64_t images) {
    forward_passes += cost.forward;
    backward_passes += cost.forward_backward;
    forward_images += cost.forward * images;
    backward_images += cost.forward_backward * images;
  }
  void count_backward(int64_t images) {
    backward_passes += cost.backward;
    backward_images += cost.backward * images;
  }
  // sum |grad_x L| of the last step, as a one-element tensor on x's device (f64 from the fused
  // L-inf step, f32 from the L2 step), left there: item() reads it. Undefined when no step was
  // taken.
  Tensor last_grad_l1;
};

// The options as the attack runs them: defaults filled in (alpha), the fixed settings of fgsm,
// fgsm_rs and none applied (steps, restarts, start; square: steps = queries, alpha 0, norm linf).
// Throws std::invalid_argument naming the bad field: eps or alpha negative or not finite,
// steps < 0, restarts < 1, targets < 1, eot < 1, square with queries < 1, p_init outside (0, 1]
// or norm l2.
AttackOptions resolve_attack(const AttackOptions& options);

// "clean", "FGSM", "FGSM-RS", "PGD-50x10", "CW-20", "L2 PGD-20", "APGD-CE-100", "APGD-DLR-100x5"
// (5 restarts), "APGD-T-100x9" (9 targets), "APGD-T-100x9x2" (9 targets, 2 restarts),
// "Square-5000", "FAB-T-100x9" (9 targets), "L2 APGD-CE-100", "APGD-DLR-100 EOT-20" (20 draws
// per point): for tables and logs.
std::string attack_name(const AttackOptions& options);

// Philox counters one random start of an input of `shape` consumes (0 when it has none), and
// all restarts of the attack together (square: every draw of its search, square_counters per
// restart): a caller drawing attacks from a Generator reserves attack_counters(...) and passes
// the returned offset.
uint64_t start_counters(Norm norm, const Shape& shape);
uint64_t attack_counters(const AttackOptions& options, const Shape& shape);

// `model` as the chain of per-sample layers fused_pgd_ attacks: a Sequential of Normalize,
// Conv2d, Linear, ReLU (each after a Conv2d, Linear or Normalize, fused on its output) and
// Flatten (before the Linear layers); nullopt for anything else (BatchNorm, pooling, residual
// blocks, a self-gradient network). The layers share the model's parameters.
std::optional<std::vector<FusedLayer>> fused_layers(Module& model);

// The adversarial example of (x, y) for `model`: x's shape, dtype and device, detached, within
// eps of x (in the chosen norm) and in [0,1]. With one restart no judging forward is run.
Tensor attack(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& options,
              AttackStats* stats = nullptr);

// The iterations of a gradient attack (pgd, cw, the APGDs) from `start` instead of its own start
// (start: x's shape, within eps of x, in [0, 1]); one restart. The interval attack finishes with it.
Tensor attack_from(Module& model, const Tensor& x, const Tensor& y, const Tensor& start, const AttackOptions& options,
                   AttackStats* stats = nullptr);

// The attack's result per sample, judged by one forward at the chosen examples.
struct AttackOutcome {
  Tensor x_adv;                  // as attack() returns it
  std::vector<uint8_t> correct;  // 1 where argmax f(x_adv_i) == y_i (first maximum wins)
  std::vector<double> loss;      // cross-entropy of f at x_adv_i
};
AttackOutcome attack_outcome(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& options,
                             AttackStats* stats = nullptr);

// A transfer attack: the examples the attack finds on `source`, judged by one forward of `model`.
AttackOutcome transfer_outcome(Module& model, Module& source, const Tensor& x, const Tensor& y,
                               const AttackOptions& options, AttackStats* stats = nullptr);

// Throws std::invalid_argument when a model's `outputs` for a batch are not logits the attacks
// can use: not [N, K] with K >= 2 classes, or probabilities (every row non-negative and summing
// to 1: a softmax ends the model, and the margin, DLR and cross-entropy losses of the attacks
// would all be computed on the wrong quantity). Log-probabilities are logits shifted per row and
// pass.
void require_logits(const Tensor& outputs);

// Fraction of the batch still classified correctly under the attack, in [0, 1].
double robust_accuracy(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& options,
                       AttackStats* stats = nullptr);


// ---- L-inf PGD with one restart, the trainers' entry point ---------------------------------

struct PgdOptions {
  double eps = 0.3;
  double alpha = 0.01;  // 0 = 2.5 eps / steps
  int steps = 40;       // 0 = the start itself
  bool random_start = true;
  uint64_t seed = 0;    // Philox stream of the random start
  uint64_t offset = 0;
};

// attack() with kind pgd, norm linf and one restart.
Tensor pgd_attack(Module& model, const Tensor& x, const Tensor& y, const PgdOptions& options,
                  AttackStats* stats = nullptr);

}  // namespace bulwark
