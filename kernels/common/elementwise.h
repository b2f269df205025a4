#pragma once
// Scalar bodies of the elementwise ops, shared by the CPU kernels and the CUDA kernels so that
// both backends compute the same function (and the same bits, for everything but libm calls).
#include <cmath>

#include "kernels/common/hd.h"

namespace bulwark::ew {

enum class Unary : int {
  neg, abs, sign, exp, log, sqrt, square, relu, softplus, sigmoid,
  affine,      // p0 * x + p1
  clamp,       // min(max(x, p0), p1)
  clamp_mask,  // 1 where p0 <= x <= p1, else 0 (the clamp's gradient mask)
  gt_scalar,   // 1 where x > p0
};

// The ReLU epilogue of a fused kernel (conv/linear/BatchNorm followed by a ReLU): relu(v) when
// `relu`, else v, the same function (and bits) as Unary::relu, so fused and unfused agree bitwise.
template <class T>
BW_HD inline T relu_if(T v, bool relu) {
  return relu && !(v > T(0)) ? T(0) : v;
}

enum class Binary : int {
  add, sub, mul, div, maximum, minimum, gt, ge, le, eq,
  relu_grad,  // a where b > 0, else 0: ReLU's backward in one pass (g where the input was positive)
};

// Their names, for messages and the profiler's op column.
inline const char* unary_name(Unary op) {
  static const char* const names[] = {"neg",  "abs",      "sign",    "exp",    "log",   "sqrt",       "square",
                                      "relu", "softplus", "sigmoid", "affine", "clamp", "clamp_mask", "gt_scalar"};
  return names[static_cast<int>(op)];
}
inline const char* binary_name(Binary op) {
  static const char* const names[] = {"add", "sub", "mul", "div", "maximum", "minimum",
                                      "gt",  "ge",  "le",  "eq",  "relu_grad"};
  return names[static_cast<int>(op)];
}

template <class T>
BW_HD inline T unary_apply(Unary op, T x, T p0, T p1) {
  switch (op) {
    case Unary::neg: return -x;
    case Unary::abs: return x < T(0) ? -x : x;
    case Unary::sign: return T((x > T(0)) - (x < T(0)));
    case Unary::exp: return std::exp(x);
    case Unary::log: return std::log(x);
    case Unary::sqrt: return std::sqrt(x);
    case Unary::square: return x * x;
    case Unary::relu: return x > T(0) ? x : T(0);
    // log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|)
    case Unary::softplus: return (x > T(0) ? x : T(0)) + std::log1p(std::exp(x < T(0) ? x : -x));
    case Unary::sigmoid: return T(1) / (T(1) + std::exp(-x));
    case Unary::affine: return p0 * x + p1;
    case Unary::clamp: return x < p0 ? p0 : (x > p1 ? p1 : x);
    case Unary::clamp_mask: return (x >= p0 && x <= p1) ? T(1) : T(0);
    case Unary::gt_scalar: return x > p0 ? T(1) : T(0);
  }
  return x;
}

template <class T>
BW_HD inline T binary_apply(Binary op, T a, T b) {
  switch (op) {
    case Binary::add: return a + b;
    case Binary::sub: return a - b;
    case Binary::mul: return a * b;
    case Binary::div: return a / b;
    case Binary::maximum: return a >= b ? a : b;
    case Binary::minimum: return a <= b ? a : b;
    case Binary::gt: return a > b ? T(1) : T(0);
    case Binary::ge: return a >= b ? T(1) : T(0);
    case Binary::le: return a <= b ? T(1) : T(0);
    case Binary::eq: return a == b ? T(1) : T(0);
    case Binary::relu_grad: return b > T(0) ? a : T(0);
  }
  return a;
}

}  // namespace bulwark::ew
