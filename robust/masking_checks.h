#pragma once
// Gradient-masking checks: signs that an evaluation's robust accuracy comes from gradients the
// attacks cannot use rather than from robustness (Athalye, Carlini, Wagner 2018; Carlini et al.
// 2019, "On evaluating adversarial robustness"). `bulwark eval` prints them under its table and
// writes them to its JSON; each one names the attacks and figures that made it fire.
//
//   fgsm-below-pgd         FGSM (one step) leaves lower accuracy than the strongest iterative
//                          white-box attack: many steps from the same gradients should never do worse.
//   above-clean            an attack leaves higher accuracy than the clean samples: an attack
//                          that helps the model is not searching the ball.
//   rises-with-eps         (--eps-sweep) an attack's accuracy grows with eps: a larger ball
//                          contains the smaller one.
//   black-box-below-white  a gradient-free (Square) or transfer attack leaves more than 2 points
//                          less than the strongest white-box attack: the white-box attacks were
//                          blind, so their figure is void.
//   nonzero-at-eps-1       (--eps-sweep with 1) accuracy above 0% at L-inf eps 1, where every
//                          image can be turned into any other (an L2 ball of radius 1 cannot).
#include <string>
#include <vector>

#include "robust/attack_registry.h"

namespace bulwark::robust {

// One row of an evaluation: an attack at one eps, run on the model or transferred from another.
struct AttackRow {
  std::string name;  // "PGD-50x10", "transfer PGD-50x10"
  AttackRole role = AttackRole::white_box;
  bool transfer = false;  // crafted on --source-checkpoint's model
  double eps = 0;
  double accuracy = 0;
  int64_t samples = 0;
  Norm norm = Norm::linf;
};

struct MaskingCheck {
  std::string name;     // as in the table above
  bool applicable = false;  // the evaluation ran what the check compares
  bool fired = false;
  std::string detail;   // the figures compared
};

// The checks over the main rows (all at one eps) and the rows of an eps sweep (any eps).
std::vector<MaskingCheck> masking_checks(const std::vector<AttackRow>& rows, const std::vector<AttackRow>& sweep);

}  // namespace bulwark::robust
