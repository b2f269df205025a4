// The tape itself: selective gradients, accumulation, grad modes, deep graphs, views and
// storage, error messages; the op harness checked against deliberately broken ops; Philox
// against the Random123 known-answer vectors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "tests/op_harness.h"

using namespace bulwark;
using namespace bulwark::test;

namespace {

Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

Tensor random(const Shape& s, uint64_t seed, DType dt = DType::f64) {
  std::mt19937_64 rng(seed);
  RT r(s);
  r.v = uniform(-1, 1).draw(rng, r.numel());
  return from_rt(r, dt);
}

bool contains_all(const std::string& msg, std::initializer_list<const char*> parts) {
  for (const char* p : parts)
    if (msg.find(p) == std::string::npos) return false;
  return true;
}

// The message of the std::invalid_argument that f throws ("" when it throws nothing).
template <class F>
std::string invalid_argument_message(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// A small conv -> relu -> linear classifier with every parameter a leaf.
struct TinyNet {
  Tensor w1 = leaf(random({4, 3, 3, 3}, 1)), b1 = leaf(random({4}, 2));
  Tensor w2 = leaf(random({5, 4 * 3 * 3}, 3)), b2 = leaf(random({5}, 4));
  Tensor forward(const Tensor& x) const {
    const Tensor h = relu(conv2d(x, w1, b1, {2, 1}));
    return linear(h.flatten(), w2, b2);
  }
};

}  // namespace

// ---- the harness finds broken ops --------------------------------------------------------------

TEST_CASE("harness: reports a wrong forward, a wrong gradient and a wrong double backward", "[autograd][harness]") {
  const RefFn twice = [](const std::vector<RT>& r) {
    RT o = r[0];
    for (double& v : o.v) v *= 2;
    return o;
  };
  // Forward off by 0.1%.
  OpCase wrong_forward{.name = "wrong forward", .inputs = {InputSpec{{3, 2}}},
                       .op = [](const Args& a) { return a[0] * 2.002; }, .ref = twice};
  // Correct forward, backward scaled by 1.5.
  OpCase wrong_grad{.name = "wrong gradient", .inputs = {InputSpec{{3, 2}}},
                    .op = [](const Args& a) {
                      return record(mul(a[0].detach(), 2.0), "bad", {a[0]},
                                    [](const Node&, const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g * 3.0}; });
                    },
                    .ref = twice};
  // x^2 with a backward that detaches x: right first derivative, zero second derivative.
  OpCase wrong_gradgrad{.name = "wrong double backward", .inputs = {InputSpec{{4}}},
                        .op = [](const Args& a) {
                          return record(square(a[0].detach()), "bad_square", {a[0]},
                                        [](const Node& n, const Tensor& g, const std::vector<bool>&) {
                                          return std::vector<Tensor>{g * n.inputs[0].detach() * 2.0};
                                        });
                        },
                        .ref = [](const std::vector<RT>& r) {
                          RT o = r[0];
                          for (double& v : o.v) v *= v;
                          return o;
                        },
                        .gradgrad = true};
  OpCase right = wrong_gradgrad;
  right.name = "right square";
  right.op = [](const Args& a) { return square(a[0]); };

  const auto fails_of = [](const OpCase& c) {
    std::string all;
    for (const std::string& f : op_failures(c)) all += f + "\n";
    return all;
  };
  const std::string f1 = fails_of(wrong_forward), f2 = fails_of(wrong_grad), f3 = fails_of(wrong_gradgrad);
  INFO(f1 << f2 << f3);
  CHECK(contains_all(f1, {"[f32 forward]", "[f64 forward]", "at [0, 0]"}));
  CHECK(f1.find("gradcheck") == std::string::npos);  // its gradient (2.002) is right for the op
  CHECK(f2.find("forward") == std::string::npos);
  CHECK(f2.find("[gradcheck] input 0") != std::string::npos);
  CHECK(f3.find("forward") == std::string::npos);
  CHECK(f3.find("[gradcheck]") == std::string::npos);
  CHECK(f3.find("[gradgradcheck] d2/d input 0") != std::string::npos);
  CHECK(fails_of(right).empty());
}

// ---- selective gradients ---------------------------------------------------------------------------

TEST_CASE("autograd: grad w.r.t. the input computes no weight gradient", "[autograd]") {
  const TinyNet net;
  const Tensor x = leaf(random({2, 3, 6, 6}, 5));
  const Tensor labels = Tensor::from_vector(std::vector<int32_t>{1, 4}, {2});
  const Tensor loss = cross_entropy(net.forward(x), labels);

  const RecordGradsByOpGuard by_op;
  backward_stats() = {};
  const Tensor gx = grad({loss}, {x})[0];
  const BackwardStats st = backward_stats();
  CHECK(st.grads_computed.count("conv2d[0]") == 1);  // d/dx: conv2d_backward_input, once
  CHECK(st.grads_computed.at("conv2d[0]") == 1);
  CHECK(st.grads_computed.count("conv2d[1]") == 0);  // no conv2d_backward_weight
  CHECK(st.grads_computed.count("conv2d[2]") == 0);  // no bias gradient
  CHECK(st.grads_computed.count("linear[1]") == 0);  // no linear weight gradient
  CHECK(st.grads_computed.count("linear[2]") == 0);  // no linear bias gradient
  CHECK(st.inputs_skipped >= 4);
  CHECK(!net.w1.grad().defined());  // grad() never touches .grad

  // The same gradient as a full backward, which does compute every weight gradient.
  backward_stats() = {};
  backward(loss);
  CHECK(backward_stats().grads_computed.at("conv2d[1]") == 1);
  CHECK(backward_stats().grads_computed.at("linear[1]") == 1);  // the names the checks above look for
  CHECK(backward_stats().grads_computed.at("linear[2]") == 1);
  CHECK(backward_stats().grads_computed.at("conv2d[0]") == 1);  // x is a leaf that requires grad
  CHECK(max_abs_diff(gx, x.grad()) < 1e-14);

  // And the other way round: d loss / d w1 needs no input gradient at the first conv.
  backward_stats() = {};
  const Tensor gw = grad({loss}, {net.w1})[0];
  CHECK(backward_stats().grads_computed.at("conv2d[1]") == 1);
  CHECK(backward_stats().grads_computed.count("conv2d[0]") == 0);
  CHECK(backward_stats().grads_computed.count("linear[1]") == 0);
  CHECK(max_abs_diff(gw, net.w1.grad()) < 1e-14);
}

TEST_CASE("autograd: the per-op gradient record is kept only under RecordGradsByOpGuard", "[autograd]") {
  const Tensor x = leaf(random({3, 4}, 7));
  backward_stats() = {};
  backward(sum(x * x));
  CHECK(backward_stats().nodes_run > 0);
  CHECK(backward_stats().grads_computed.empty());
}

TEST_CASE("autograd: grad w.r.t. an intermediate tensor stops there", "[autograd]") {
  const Tensor x = leaf(random({3, 4}, 6));
  const Tensor h = x * 2.0;
  const Tensor loss = sum(h * h);
  const RecordGradsByOpGuard by_op;
  backward_stats() = {};
  const Tensor gh = grad({loss}, {h})[0];
  CHECK(max_abs_diff(gh, h * 2.0) < 1e-14);
  CHECK(backward_stats().grads_computed.count("affine[0]") == 0);  // nothing below h
}

// ---- backward(), grad modes, unused inputs ---------------------------------------------------------

TEST_CASE("autograd: backward accumulates into leaf .grad", "[autograd]") {
  const Tensor x = leaf(random({2, 3}, 7)), w = leaf(random({3}, 8));
  const auto loss = [&] { return sum(square(x * w)); };
  backward(loss());
  const Tensor once = x.grad().clone(), once_w = w.grad().clone();
  CHECK(max_abs_diff(once, x * square(w) * 2.0) < 1e-14);
  backward(loss());
  CHECK(max_abs_diff(x.grad(), once * 2.0) < 1e-14);
  CHECK(max_abs_diff(w.grad(), once_w * 2.0) < 1e-14);
  CHECK(x.grad().is_leaf());
  CHECK_FALSE(x.grad().requires_grad());
  Tensor xm = x;
  xm.zero_grad();
  CHECK_FALSE(x.grad().defined());
  // Intermediate tensors get no .grad.
  const Tensor h = x * 3.0;
  backward(sum(h));
  CHECK_FALSE(h.grad().defined());
  CHECK(max_abs_diff(x.grad(), Tensor::full({2, 3}, 3.0, DType::f64)) == 0.0);
}

TEST_CASE("autograd: leaves never share gradient storage", "[autograd]") {
  // d/dx and d/dz of (x + z) * c are the same tensor inside the backward pass: each leaf's
  // .grad must still be its own memory, or an in-place update of one (clipping, zeroing,
  // an optimizer's fused step) would change the other.
  const Tensor x = leaf(random({2, 3}, 9)), z = leaf(random({2, 3}, 10)), c = random({2, 3}, 11);
  backward(sum((x + z) * c));
  REQUIRE(max_abs_diff(x.grad(), z.grad()) == 0.0);
  Tensor gx = x.grad();
  gx.fill_(0.0);
  CHECK(max_abs_diff(z.grad(), c) == 0.0);
  // The same for a seed the caller passes in: the caller's tensor is not adopted as .grad.
  const Tensor y = leaf(random({4}, 12));
  const Tensor seed = Tensor::full({4}, 2.0, DType::f64);
  backward(y * 1.0, seed);
  Tensor gy = y.grad();
  gy.fill_(5.0);
  CHECK(seed.to_vector_f64() == std::vector<double>{2, 2, 2, 2});
}

TEST_CASE("autograd: backward announces each leaf's gradient once, as soon as it is final", "[autograd]") {
  // A chain h_{k+1} = relu(h_k * w_k) + h_k * 0.5, w_2 used once more at the end: the last
  // layer's weight is final after a few nodes, the first layer's only at the end. Each
  // announcement must come with the leaf's .grad written and equal to its final value.
  std::vector<Tensor> w;
  for (int k = 0; k < 4; ++k) w.push_back(leaf(random({5}, 20 + k)));
  const Tensor x = random({5}, 31), unused = leaf(random({5}, 32));
  const auto loss = [&] {
    Tensor h = x;
    for (size_t k = 0; k < 4; ++k) h = relu(h * w[k]) + h * 0.5;
    return sum(h * w[2]);
  };
  backward(loss());
  std::vector<Tensor> final_grads;
  for (Tensor& t : w) {
    final_grads.push_back(t.grad().clone());
    t.zero_grad();
  }

  std::vector<int> order;
  std::vector<int64_t> nodes_at;
  const int64_t nodes_before = backward_stats().nodes_run;
  backward(loss(), Tensor(), false, [&](const Tensor& t) {
    for (size_t k = 0; k < 4; ++k)
      if (t.impl() == w[k].impl()) {
        order.push_back(static_cast<int>(k));
        REQUIRE(t.grad().defined());
        CHECK(max_abs_diff(t.grad(), final_grads[k]) == 0.0);
      }
    CHECK(t.impl() != unused.impl());
    nodes_at.push_back(backward_stats().nodes_run - nodes_before);
  });
  const int64_t nodes = backward_stats().nodes_run - nodes_before;
  CHECK(order == std::vector<int>{3, 2, 1, 0});  // w_2 once both its uses are in
  REQUIRE(nodes_at.size() == 4);
  CHECK(nodes_at.front() < nodes / 2);  // the last layer's weight long before the walk ends
  for (size_t k = 0; k < 4; ++k) CHECK(max_abs_diff(w[k].grad(), final_grads[k]) == 0.0);
  CHECK_FALSE(unused.grad().defined());
  // A gradient already there is added to, then announced.
  int announced = 0;
  backward(loss(), Tensor(), false, [&](const Tensor& t) {
    if (t.impl() != w[0].impl()) return;
    ++announced;
    CHECK(max_abs_diff(t.grad(), final_grads[0] * 2.0) == 0.0);
  });
  CHECK(announced == 1);
}

TEST_CASE("autograd: NoGradGuard records nothing and nests", "[autograd]") {
  const Tensor x = leaf(random({3}, 13));
  {
    NoGradGuard ng;
    CHECK_FALSE(grad_enabled());
    const Tensor y = exp(x) * 2.0 + x;
    CHECK(y.is_leaf());
    CHECK_FALSE(y.requires_grad());
    {
      GradModeGuard on(true);
      CHECK(exp(x).requires_grad());
    }
    CHECK_FALSE(grad_enabled());
    CHECK_FALSE(x.reshape({1, 3}).t().requires_grad());  // views too
    CHECK_FALSE(conv2d(random({1, 1, 3, 3}, 1), leaf(random({1, 1, 2, 2}, 2))).requires_grad());
  }
  CHECK(grad_enabled());
  CHECK_FALSE(exp(x).is_leaf());
}

TEST_CASE("autograd: unused inputs error unless allow_unused", "[autograd]") {
  const Tensor x = leaf(random({3}, 14)), unused = leaf(random({2, 2}, 15));
  const Tensor loss = sum(exp(x));
  const std::string msg = invalid_argument_message([&] { grad({loss}, {x, unused}); });
  CHECK(contains_all(msg, {"[2, 2]"}));
  const std::vector<Tensor> g = grad({loss}, {x, unused}, {}, false, /*allow_unused=*/true);
  CHECK(max_abs_diff(g[0], exp(x)) < 1e-14);
  CHECK(g[1].shape() == Shape{2, 2});
  CHECK(max_abs_diff(g[1], Tensor::zeros({2, 2}, DType::f64)) == 0.0);
  // An input that does not require grad is an error, not a silent zero.
  CHECK_THROWS_AS(grad({loss}, {random({3}, 16)}), std::invalid_argument);
  // A grad_output of the wrong shape or dtype names both.
  CHECK(contains_all(invalid_argument_message([&] { grad({exp(x)}, {x}, {Tensor::ones({4}, DType::f64)}); }), {"[4]", "[3]"}));
  CHECK(contains_all(invalid_argument_message([&] { grad({exp(x)}, {x}, {Tensor::ones({3}, DType::f32)}); }), {"f32[3]", "f64[3]"}));
  // Without a grad_output the output must be a scalar (a per-sample loss is not silently summed).
  CHECK(contains_all(invalid_argument_message([&] { grad({exp(x)}, {x}); }), {"f64[3]", "scalar"}));
  CHECK_THROWS_AS(backward(exp(x)), std::invalid_argument);
  CHECK(grad({exp(x).reshape({1, 3}).slice(1, 0, 1)}, {x})[0].to_vector_f64()[1] == 0.0);  // one element is fine
}

TEST_CASE("autograd: create_graph decides whether gradients are differentiable", "[autograd]") {
  const Tensor x = leaf(random({4}, 17));
  const Tensor loss = sum(x * x * x);
  const Tensor g0 = grad({loss}, {x})[0];
  CHECK(g0.is_leaf());
  CHECK_FALSE(g0.requires_grad());
  const Tensor g1 = grad({loss}, {x}, {}, /*create_graph=*/true)[0];
  CHECK_FALSE(g1.is_leaf());
  CHECK(g1.requires_grad());
  CHECK(max_abs_diff(g0, g1) < 1e-14);
  // d/dx sum(3 x^2) = 6 x, and the graph can be walked again (it is not freed).
  CHECK(max_abs_diff(grad({sum(g1)}, {x})[0], x * 6.0) < 1e-13);
  CHECK(max_abs_diff(grad({loss}, {x})[0], g0) == 0.0);
  // backward(create_graph) leaves a differentiable .grad behind.
  backward(loss, Tensor(), true);
  CHECK(x.grad().requires_grad());
}

TEST_CASE("autograd: gradients keep the leaf's dtype across to()", "[autograd]") {
  const Tensor x = leaf(random({3}, 18, DType::f32));
  const Tensor g = grad({sum(x.to(DType::f64) * 3.0)}, {x})[0];
  CHECK(g.dtype() == DType::f32);
  CHECK(g.to_vector() == std::vector<float>{3, 3, 3});
}

TEST_CASE("autograd: deep graphs neither overflow the stack in backward nor when freed", "[autograd]") {
  const Tensor x = leaf(Tensor::ones({2}, DType::f64));
  {
    Tensor y = x;
    for (int i = 0; i < 5000; ++i) y = add(y, x);
    CHECK(grad({sum(y)}, {x})[0].to_vector_f64() == std::vector<double>{5001, 5001});
  }
  // Freeing a long chain releases node after node; a recursive destructor would need a stack
  // frame per node.
  Tensor y = x;
  for (int i = 0; i < 200000; ++i) y = y * 1.0;
  CHECK(y.requires_grad());
  y = Tensor();
  SUCCEED("a 200000-node chain was freed");
}

// ---- storage, views, in-place -----------------------------------------------------------------------

TEST_CASE("autograd: detach shares storage, and copy_ on a leaf under NoGradGuard keeps it a leaf", "[autograd]") {
  Tensor w = leaf(Tensor::from_vector(std::vector<double>{1, 2, 3}, {3}));
  Tensor d = w.detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  d.fill_(7.0);
  CHECK(w.to_vector_f64() == std::vector<double>{7, 7, 7});
  const Tensor v = w.reshape({1, 3}).t().detach();
  CHECK(v.impl()->storage == w.impl()->storage);

  // An optimizer-style update: the leaf stays a leaf that requires grad, with the new values.
  w.fill_(1.0);
  backward(sum(square(w)));
  {
    NoGradGuard ng;
    w.copy_(w - w.grad() * 0.25);
  }
  CHECK(w.is_leaf());
  CHECK(w.requires_grad());
  CHECK(w.to_vector_f64() == std::vector<double>{0.5, 0.5, 0.5});
  w.zero_grad();
  backward(sum(square(w)));
  CHECK(w.grad().to_vector_f64() == std::vector<double>{1, 1, 1});
  // copy_ converts dtypes and reads strided sources.
  Tensor dst = Tensor::zeros({2, 3});
  dst.copy_(Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {3, 2}).t());
  CHECK(dst.to_vector() == std::vector<float>{1, 3, 5, 2, 4, 6});
  CHECK_THROWS_AS(dst.copy_(Tensor::zeros({3, 2})), std::invalid_argument);
}

// ---- error messages ----------------------------------------------------------------------------------

TEST_CASE("autograd: shape errors are std::invalid_argument naming the shapes", "[autograd]") {
  const std::string mm = invalid_argument_message([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); });
  CHECK(contains_all(mm, {"matmul", "[2, 3]", "[4, 5]"}));
  const std::string conv =
      invalid_argument_message([] { conv2d(Tensor::zeros({2, 3, 5, 5}), Tensor::zeros({4, 2, 3, 3})); });
  CHECK(contains_all(conv, {"conv2d", "[2, 3, 5, 5]", "[4, 2, 3, 3]"}));
  const std::string conv3d = invalid_argument_message([] { conv2d(Tensor::zeros({3, 5, 5}), Tensor::zeros({4, 3, 3, 3})); });
  CHECK(contains_all(conv3d, {"[3, 5, 5]"}));
  const std::string bc = invalid_argument_message([] { add(Tensor::zeros({2, 3}), Tensor::zeros({4})); });
  CHECK(contains_all(bc, {"[2, 3]", "[4]"}));
  const std::string lin = invalid_argument_message([] { linear(Tensor::zeros({2, 3}), Tensor::zeros({5, 4})); });
  CHECK(contains_all(lin, {"[2, 3]"}));
  const std::string ce = invalid_argument_message([] {
    cross_entropy(Tensor::zeros({2, 3}), Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3}));
  });
  CHECK(contains_all(ce, {"[2, 3]", "[3]"}));
  const std::string rs = invalid_argument_message([] { Tensor::zeros({2, 3}).reshape({4, 2}); });
  CHECK(contains_all(rs, {"[2, 3]", "[4, 2]"}));
}

// ---- Philox known answers ------------------------------------------------------------------------------

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors", "[autograd][rng]") {
  using philox::Block;
  struct Kat {
    Block ctr;
    uint32_t k0, k1;
    Block want;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) {
    const Block got = philox::philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) CHECK(got.v[i] == k.want.v[i]);
  }
  // The stream form puts the 64-bit counter in words 0-1 and the seed in the key.
  const uint64_t counter = 0x85a308d3243f6a88ull, seed = 0x299f31d0a4093822ull;
  const Block a = philox::philox4x32_10(counter, seed);
  const Block b = philox::philox4x32_10(Block{{0x243f6a88, 0x85a308d3, 0, 0}}, 0xa4093822, 0x299f31d0);
  for (int i = 0; i < 4; ++i) CHECK(a.v[i] == b.v[i]);
  CHECK(philox::word(seed, 5, 9) == philox::philox4x32_10(5 + 2, seed).v[1]);
}

TEST_CASE("slices of one tensor share its gradient buffer and still sum to the right gradient", "[autograd]") {
  // Overlapping row slices (accumulated in place into one buffer), an inner-dim slice (the plain
  // slice_backward), and a seed that must come out of the backward pass unchanged.
  Tensor x = Tensor::from_vector(std::vector<double>(12, 1.0), {4, 3});
  x.set_requires_grad(true);
  const Tensor loss = sum(x.slice(0, 0, 2) * 2.0) + sum(x.slice(0, 1, 4) * 3.0) + sum(x.slice(1, 0, 2) * 5.0);
  const std::vector<double> g = grad({loss}, {x})[0].to_vector_f64();
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      const double want = (i < 2 ? 2.0 : 0.0) + (i >= 1 ? 3.0 : 0.0) + (j < 2 ? 5.0 : 0.0);
      CHECK(g[i * 3 + j] == want);
    }
  const Tensor seed = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor gx = grad({x.slice(0, 1, 3)}, {x}, {seed})[0];
  CHECK(seed.to_vector_f64() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(gx.to_vector_f64() == std::vector<double>{0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0});
}
