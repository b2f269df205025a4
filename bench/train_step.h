#pragma once
// The end-to-end benchmark: one adversarial training step of a zoo model on the CPU,
//
//   attack    k x (forward + backward to the input only), then the fused pgd step
//   forward   the training forward on the adversarial batch
//   backward  the weight gradients (loss.backward())
//   optimizer SGD momentum 0.9, weight decay 5e-4
//
// the model in train mode throughout (BatchNorm uses batch statistics in the attack too, as in
// the Fast-AT and DEAT code). bench/peer_pytorch.py runs the same step in PyTorch.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/profiler.h"
#include "engine/tensor.h"
#include "models/zoo.h"
#include "training/optim.h"

namespace bulwark::bench {

struct TrainStepConfig {
  std::string model = "wong_small";
  int64_t channels = 1, height = 28, width = 28;
  std::vector<double> mean, std;  // the model's input normalisation
  int64_t batch = 128;
  int threads = 2;
  int attack_steps = 10;
  double eps = 0.3, alpha = 0.075;
  bool random_start = true;
  int warmup = 2, iters = 10;
  uint64_t seed = 0;
  bool profile = false;  // per-op table of the timed iterations (engine/profiler.h)
  std::string precision = "fp32";  // the GEMM/conv inputs: fp32, tf32 or bf16 (runtime::set_math_precision)
};

// The two configurations the benches compare with PyTorch:
//   wong_small  MNIST 1x28x28, PGD-10, eps 0.3, alpha eps/4, random start
//   cnn7        CIFAR 3x32x32, FGSM-RS (random start + 1 step), eps 8/255, alpha 1.25 eps
// The other MNIST models of the zoo (mlp, ibp_small, ibp_large, wong_large) get wong_small's
// setting, any other model cnn7's.
TrainStepConfig default_train_step(const std::string& model);

// Matrix-multiply FLOPs of one pass of the model at the configured batch (2 per multiply-add of
// every conv and linear layer; normalisation, BatchNorm, ReLU and bias adds are not counted).
struct PassFlops {
  double forward = 0;
  double backward_weights = 0;   // dW of every layer
  double backward_inputs = 0;    // dx of every layer (what an attack step needs)
  double first_layer_input = 0;  // the first layer's dx, which a training backward skips
};

struct PhaseTimes {  // milliseconds, one entry per measured iteration
  std::vector<double> attack, forward, backward, optimizer, total;
  std::vector<double> total_cpu;  // process CPU time of the step (all threads)
};

struct TrainStepResult {
  TrainStepConfig config;
  PassFlops flops;
  PhaseTimes times;
  double final_loss = 0;
  std::optional<profiler::Report> profile;  // with config.profile
};

TrainStepResult run_train_step(const TrainStepConfig& config);

double median(std::vector<double> v);

// The input of the step benches (bound-step, mixtrain-step, sgn-step): `batch` uniform images of
// the model's default_train_step shape (Philox seed 1) with labels i mod 10, and the ModelConfig
// of that shape and normalisation.
struct BenchBatch {
  TrainStepConfig shape;
  ModelConfig model;
  Tensor x, y;
};
BenchBatch bench_batch(const std::string& model, int64_t batch);
// Their optimizer: SGD 0.01, momentum 0.9, weight decay 5e-4.
training::OptimizerConfig bench_sgd();
double minimum(const std::vector<double>& v);
// In a GPU build on a machine without a GPU (no emulator linked in): runs bulwark-bench-emu, the
// same benches on the emulated backend, from this executable's folder with `command` and the
// arguments; returns only on failure (throws).
int run_emulated_twin(const char* command, int argc, char** argv);

// A human-readable table of the phases, and one JSON line for scripts (bench/compare.sh).
void print_train_step(const TrainStepResult& result);
void print_train_step_json(const TrainStepResult& result);

}  // namespace bulwark::bench
