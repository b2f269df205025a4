#pragma once
// Symbolic intervals (Wang, Pei, Whitehouse, Yang, Jana: ReluVal 2018 and Neurify 2018; the bound
// of MixTrain, Wang, Chen, Abdou, Jana 2018): every neuron keeps a lower and an upper linear
// function of the input, L(x) <= h(x) <= U(x) for x in the input box, instead of two numbers. An
// affine layer moves them exactly (W+ U + W- L above, W+ L + W- U below); a ReLU with concrete
// bounds [l, u] of its input (U maximised and L minimised over the box, each intersected with
// IBP's box of the neuron):
//
//   l >= 0    passes both functions
//   u <= 0    sets both to 0
//   l < 0 < u scales both by lambda = u / (u - l) and adds -lambda l to the upper one
//             (relu(z) <= lambda (z - l) on [l, u], and relu(z) >= lambda z for any lambda in [0, 1])
//
// so the correlations between neurons survive the layers that IBP's boxes lose. The margins
// z_j - z_y are bounded at the end by maximising U_j - L_y (elided into the last Linear like IBP's).
//
// How it runs on the engine: the functions are kept in the center/radius form of the interval ops,
// C = (U + L) / 2 and R = (U - L) / 2 (W+ U + W- L = W C + |W| R), and every coefficient of a
// function is one row of a batch that the model's own interval pass carries. A sample of an
// N-sample box becomes d + 3 rows (d = values per sample of the input):
//
//   rows 0..d-1   coefficient i of C and R (an image-shaped slice of the input's shape)
//   row  d        the constant terms
//   row  d + 1    "zero": the pass applied to 0, so that an affine layer's bias, which reaches
//                 every row, can be taken off the coefficient rows again (coefficient = row - zero)
//   row  d + 2    the plain IBP box of the sample (its bias and ReLUs as IBP has them)
//
// Every layer whose interval pass is affine per row (convolution, linear, BatchNorm's eval form,
// Normalize, flatten, average pooling, residual add, the elided last layer) then moves the
// functions unchanged: one batched call of the fused interval kernels per layer. The ReLUs (the
// ReLU module and the zoo's inline ones, through relu_step) hand their input to the pass in
// scope; BatchNorm's train form takes its batch statistics from the IBP rows; max pooling, which
// is not affine, bounds each window by its inputs' concrete bounds and starts constant rows
// there (sound, and looser than a relaxation of the maximum would be; no zoo model has one). The rows cost (d + 3) times IBP's memory per sample: MixTrain's
// stochastic robust approximation bounds only a few samples of a batch for that reason.
#include <cstdint>
#include <vector>

#include "models/interval.h"

namespace bulwark {

class SymbolicPass {
 public:
  // The pass over `input_box` ([N, ...]) that follows, on the rows of expanded(); one per thread.
  explicit SymbolicPass(const Interval& input_box);
  ~SymbolicPass();
  SymbolicPass(const SymbolicPass&) = delete;
  SymbolicPass& operator=(const SymbolicPass&) = delete;
  // The pass in scope on this thread, or nullptr.
  static SymbolicPass* active();

  // The rows the model's interval pass takes instead of the input box, [N (d + 3), ...].
  const Interval& expanded() const { return expanded_; }
  // Labels [N] repeated for the rows of each sample (for an elided margin pass).
  Tensor repeat_labels(const Tensor& labels) const;
  // The ReLU's step on the rows of its input (see above).
  Interval relu(const Interval& pre);
  // Rows that stand for values known only to lie in `box` ([N, ...]): no coefficients, the box as
  // the constants and as the IBP row. Max pooling ends its inputs' functions this way (its
  // output lies in [max of the lower bounds, max of the upper bounds] of each window).
  Interval constant_rows(const Interval& box) const;
  // The IBP rows of `rows` ([N (d + 3), ...] -> [N, ...]): BatchNorm's train form reads its batch
  // statistics there, as IBP does from its box's centers.
  Tensor ibp_rows(const Tensor& rows) const;
  // The box of the values the rows stand for, [N, ...]: the functions' bounds over the input box,
  // intersected with the IBP rows' box.
  Interval bounds(const Interval& rows) const;
  // The input coefficients of the upper functions of the values the rows stand for, [N, d, M]
  // (M values per sample): the direction in which each upper bound grows (the interval attack).
  Tensor upper_coefficients(const Interval& rows) const;
  // Every ReLU's input box [l, u] as the pass used it, in order (tests, statistics).
  const std::vector<Interval>& boxes() const { return boxes_; }
  // The largest pair of row tensors (center and radius) a ReLU took, in bytes: the pass's peak
  // memory is a small multiple of it.
  int64_t peak_row_bytes() const { return peak_row_bytes_; }
  // The bytes of every ReLU's input rows together: what a training step's graph keeps at least.
  int64_t total_row_bytes() const { return total_row_bytes_; }

 private:
  Tensor lower_upper(const Interval& rows) const;  // symbolic_bounds of the rows, [2, N, M]
  Interval as_box(const Tensor& lower_upper, const Tensor& rows) const;

  Interval box_;      // the input box, [N, d]
  int64_t n_, d_;
  Interval expanded_;
  std::vector<Interval> boxes_;
  int64_t peak_row_bytes_ = 0, total_row_bytes_ = 0;
  SymbolicPass* previous_;
};

}  // namespace bulwark
