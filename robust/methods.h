#pragma once
// The training methods of METHODS.md, by name, with every rule constant as an option.
//
//   standard    clean training: one forward, one backward, one step per batch
//   pgd         PGD-AT (Madry et al. 2018): train on PGD-k examples
//   fgsm-rs     Fast-AT (Wong, Rice, Kolter 2020): one FGSM step from a random start, with the
//               catastrophic-overfitting guard
//   free        Free-AT (Shafahi et al. 2019): replay each batch m times, one backward per replay
//               giving both the weight step and the perturbation step
//   mplus-deat  DEAT with M+ acceleration (Wang et al.): Free-style replay whose count r grows
//               when the input gradient's L1 magnitude G grows
//   mplus-pgd   PGD-AT whose step count follows the same M+ rule, starting at 0
//   deat-d      ablation: r = min(floor(t / d) + 1, r_max)
//   deat-p      ablation: r += 1 when the epoch's training accuracy exceeds a threshold
//
// A value of 0 (or a negative eps) in the config means "the paper's default for this dataset",
// filled in by resolve_method_defaults.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "robust/method.h"

namespace bulwark::robust {

struct MethodConfig {
  std::string name = "standard";
  double eps = -1;    // L-inf radius in [0,1] pixel units; < 0: the dataset's default
  double alpha = 0;   // attack step size; 0: the method's default for eps
  // Warm-up: eps (and alpha) grow linearly from 0 to their value over the first eps_ramp epochs,
  // per batch (0 = off). A small model trained at MNIST's eps 0.3 from the start can stay at
  // chance for many epochs; the IBP/MixTrain line of work ramps eps for the same reason.
  double eps_ramp = 0;
  int steps = 0;      // pgd: attack steps k
  int replays = 0;    // free: replays m per batch
  // M+ (mplus-deat, mplus-pgd) and the DEAT ablations
  double gamma = 1.01;       // M+ threshold factor
  int r_max = 0;             // 0: 8 (mplus-deat), 7 (mplus-pgd), 5 (deat-d), 4 (deat-p)
  bool alpha_per_r = false;  // mplus-deat: after an increase alpha = max(eps / r, alpha_min)
  double alpha_min = 0;      // 0: eps / r_max... see resolve_method_defaults
  int deat_d = 3;            // deat-d: epochs per increment
  double deat_p_acc = 0.4;   // deat-p: training accuracy that triggers an increment
  // fgsm-rs: catastrophic-overfitting guard (PGD on a fixed training batch after each epoch)
  bool guard = true;
  double guard_drop = 0.2;  // stop when robust accuracy falls more than this below the best seen
  int guard_steps = 5;
};

std::vector<std::string> method_names();

// Whether the method trains on adversarial examples (everything but "standard").
bool is_adversarial(const std::string& name);

// Fills in eps, alpha, steps, replays, r_max and alpha_min from the papers' settings for the
// input kind (`mnist_like`: 1-channel 28x28 MNIST and Fashion-MNIST; else CIFAR-like 32x32
// RGB). Returns one line per default chosen, for the run's log. Throws std::invalid_argument
// for an unknown method name.
std::vector<std::string> resolve_method_defaults(MethodConfig& cfg, bool mnist_like);

// Throws std::invalid_argument naming the bad option (eps outside [0, 1], gamma <= 1, ...).
// Call after resolve_method_defaults.
void validate(const MethodConfig& cfg);

nlohmann::ordered_json to_json(const MethodConfig& cfg);
// Missing keys keep their defaults; wrong types throw with the key's name.
MethodConfig method_config_from_json(const nlohmann::json& j);

// The method cfg describes (resolved and validated).
std::unique_ptr<Method> make_method(const MethodConfig& cfg);

}  // namespace bulwark::robust
