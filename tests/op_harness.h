#pragma once
// One harness for every op (tinygrad's test_ops, ggml's test-backend-ops).
//
// An OpCase is: input specs (shape + value generator), the op under test written with the
// engine, and an independent reference written plainly in f64 with index loops. check_op runs
//   (a) forward in f32 and f64 against the reference, |got - ref| <= atol + rtol * |ref|;
//   (b) gradcheck: bulwark::grad of <u, op(x)> for a random cotangent u, against central finite
//       differences in f64, for every float input;
//   (c) optionally gradgradcheck: with create_graph, S = sum_i <v_i, d<u, op>/dx_i> for random
//       v_i, and d S / d (x, u) against finite differences of the first gradient;
//   (d) the CUDA backend (emulated in the tests): the f32 run with every input moved to
//       Device::cuda (same layouts), forward and autograd gradients against the CPU backend's
//       (OpCase::cuda_tol), unless OpCase::cuda is false (ops the CUDA backend cannot run: f64).
//       This is where every op's CUDA kernels are checked at awkward sizes (batch 1, odd
//       channels, partial warps and blocks, sizes off the 64x64 GEMM tile): a per-kernel test
//       keeps only what an op cannot reach (launch counts, kernel versions, emulator checks).
// It prints the first mismatches with their multi-indices. Inputs are generated away from kinks
// (relu at 0, ties of max, clamp bounds) so finite differences are meaningful.
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/ops.h"

namespace bulwark::test {

// A reference tensor: f64 values in row-major order. References are written with these.
struct RT {
  Shape shape;
  std::vector<double> v;

  RT() = default;
  explicit RT(Shape s, double fill = 0.0) : shape(std::move(s)), v(static_cast<size_t>(shape_numel(shape)), fill) {}
  int64_t numel() const { return static_cast<int64_t>(v.size()); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const { return shape[d < 0 ? d + dim() : d]; }
  int64_t flat(const std::vector<int64_t>& idx) const;  // row-major offset of a multi-index
  double& operator[](const std::vector<int64_t>& idx) { return v[flat(idx)]; }
  double operator[](const std::vector<int64_t>& idx) const { return v[flat(idx)]; }
};
std::vector<int64_t> unravel(int64_t flat, const Shape& shape);

// How an input's values are drawn. Every generator yields f32-representable values, so the
// f32 and f64 runs and the reference all see the same numbers.
struct Gen {
  std::function<std::vector<double>(std::mt19937_64&, int64_t numel)> draw;
  bool integer = false;  // an i32 input (labels, indices): passed as i32, never differentiated
};
Gen uniform(double lo = -1.0, double hi = 1.0);
Gen away_from_zero(double min_abs = 0.2, double max_abs = 1.0);  // random sign, |x| in [min, max]
Gen positive(double lo = 0.5, double hi = 2.0);
// offset + 0.1 * k for random integer k in [-n, n]: two grids with different offsets never
// come closer than their offsets' difference (no ties for maximum/clamp/where).
Gen grid(double offset, int n = 10);
// A shuffled set of well-separated values (max, argmax, max_pool: no ties within the tensor).
Gen distinct(double lo = -2.0, double hi = 2.0);
Gen ints(int lo, int hi);  // i32 values in [lo, hi]
Gen values(std::vector<double> v);

// transposed: a non-contiguous view of the last two dims; offset: contiguous, but starting a
// few elements into its storage (as slices do).
enum class Layout { contiguous, transposed, offset };

struct InputSpec {
  Shape shape;
  Gen gen = uniform();
  Layout layout = Layout::contiguous;
  bool differentiable = true;  // float inputs only
};

// What the op under test sees: the inputs (f32 or f64 for float inputs, i32 for integer ones)
// and the float dtype of this run, for ops that create tensors.
struct Args {
  std::vector<Tensor> t;
  DType dtype = DType::f32;
  const Tensor& operator[](size_t i) const { return t[i]; }
};
using OpFn = std::function<Tensor(const Args&)>;
using RefFn = std::function<RT(const std::vector<RT>&)>;

struct Tol {
  double atol, rtol;
};

struct OpCase {
  std::string name;
  std::vector<InputSpec> inputs;
  OpFn op;
  RefFn ref;
  bool grad = true;       // gradcheck the float inputs
  bool gradgrad = false;  // double backward
  // Run (b) and (c), the finite differences in f64. Off for the rows that exist for the CUDA
  // backend's awkward sizes (partial warps and blocks, sizes off the GEMM tile), where one
  // difference per element would be slow: (d) still compares the gradients there when `grad`.
  bool finite_differences = true;
  bool same_dtype = true;  // a float output has the inputs' dtype (false for dtype conversions)
  Tol f32{1e-5, 1e-5};
  Tol f64{1e-11, 1e-10};
  Tol fd{1e-6, 1e-5};  // gradcheck / gradgradcheck tolerance
  double eps = 1e-6;   // finite-difference step
  bool cuda = true;    // also run (d) on Device::cuda
  Tol cuda_tol{1e-5, 1e-4};  // CUDA vs CPU backend, forward and gradients (f32)
};

// Runs every check of `c` and returns one message per failed check (empty: all passed).
std::vector<std::string> op_failures(const OpCase& c);
// The same, reporting each failure through Catch2 (CHECK-style: the test goes on).
void check_op(const OpCase& c);
void check_ops(const std::vector<OpCase>& cases);

// Compares `got` with `want` elementwise; returns an empty string when they match, else a
// description of the first mismatches.
std::string compare(const std::vector<double>& got, const std::vector<double>& want, const Shape& shape, Tol tol);

// Engine tensor <-> reference tensor.
RT to_rt(const Tensor& t);
Tensor from_rt(const RT& r, DType dtype);

}  // namespace bulwark::test
