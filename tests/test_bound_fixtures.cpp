// bulwark's IBP and CROWN-IBP against auto_LiRPA (Xu et al. 2020), on fixed networks.
//
// tests/fixtures/bounds/make_bound_fixtures.py built mlp, wong_small, ibp_small and cnn7 in
// PyTorch (python/bulwark_torch.py), set every state_dict entry by a closed formula, and stored
// the float32 logits and auto_LiRPA 0.3's upper bounds of the margins z_j - z_y (IBP and
// CROWN-IBP, the specification C passed to compute_bounds) for a formula batch of 4 images. This
// test builds the same models with make_model, sets the same formula weights (written out again
// below, independently of the script; tests/fixtures/bounds/README.md states the rule), and
// compares logits and robust::worst_case_logits with the stored numbers. No Python is needed.
//
// The two libraries compute the same functions: auto_LiRPA merges C into the last Linear for
// IBP (its IBP_general, "merge the last BoundLinear node with the specification"), which is
// bulwark's elision, and its CROWN-IBP takes every intermediate bound from that IBP pass and runs
// CROWN's backward pass from C through the last Linear with the "adaptive" ReLU relaxation (lower
// slope 1 where u / (u - l) > 0.5, i.e. u > -l), which is relu_crown_backward's rule. So the
// bounds agree up to float32 rounding; the tolerances are in the README (cnn7 has unstable ReLUs
// within float32 rounding of u = -l, where the adaptive slope switches; flipping any of them moves
// its CROWN-IBP bound by at most 4.3e-5 relative, measured by the script, inside 1e-4).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/zoo.h"
#include "robust/bounds.h"

using namespace bulwark;
using json = nlohmann::json;

namespace {

constexpr double kLogitTol = 1e-5;  // relative to max(1, |z|): float32 forwards, different summation orders
constexpr double kBoundTol = 1e-4;  // relative to max(1, |bound|): see the README and the note above

const std::vector<std::string> kFixtures = {"mlp_eps0.02", "mlp_eps0.1", "wong_small_eps0.02", "ibp_small_eps0.02",
                                            "cnn7_eps0.02"};

json read_fixture(const std::string& name) {
  const std::string path = std::string(BULWARK_SOURCE_DIR) + "/tests/fixtures/bounds/" + name + ".json";
  std::ifstream in(path);
  INFO("fixture " << path);
  REQUIRE(in.good());
  return json::parse(in);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The fixture rule: entries sorted by name, k = position, i = flat index,
// t = sin(0.37 i + 1.1 k + 0.2) in double, rounded to the tensor's float32 by copy_.
void set_fixture_weights(Module& model) {
  NamedTensors state = model.state_dict();
  std::sort(state.begin(), state.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::map<std::string, Tensor> by_name(state.begin(), state.end());
  for (size_t k = 0; k < state.size(); ++k) {
    const std::string& name = state[k].first;
    Tensor& t = state[k].second;
    if (name == "normalize.mean" || name == "normalize.std") continue;  // the config's values
    if (ends_with(name, ".num_batches_tracked")) {
      t.fill_(0);
      continue;
    }
    const std::string prefix = name.substr(0, name.rfind('.'));
    const std::string leaf = name.substr(name.rfind('.') + 1);
    const bool batch_norm = by_name.count(prefix + ".running_mean") > 0;
    double offset = 0, scale = 0;
    if (batch_norm) {
      if (leaf == "weight") offset = 1.0, scale = 0.5;
      else if (leaf == "bias") scale = 0.5;
      else if (leaf == "running_mean") scale = 0.2;
      else if (leaf == "running_var") offset = 1.0, scale = 0.5;
      else FAIL("no fixture rule for " << name);
    } else if (leaf == "weight" || leaf == "bias") {
      const Tensor& w = by_name.at(prefix + ".weight");
      const int64_t fan_in = w.numel() / w.size(0);
      scale = 1.0 / std::sqrt(static_cast<double>(fan_in));
    } else {
      FAIL("no fixture rule for " << name);
    }
    std::vector<double> v(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) {
      const double s = std::sin(0.37 * static_cast<double>(i) + 1.1 * static_cast<double>(k) + 0.2);
      v[i] = offset == 0 ? scale * s : offset + scale * s;
    }
    t.copy_(Tensor::from_vector(v, t.shape()).to(t.dtype()));
  }
}

// x[n, c, h, w] = 0.5 + 0.4 sin(0.91 j + 0.3 n), j the flat index over the whole batch.
Tensor fixture_input(const Shape& shape) {
  const int64_t total = shape_numel(shape), per_sample = total / shape[0];
  std::vector<double> x(static_cast<size_t>(total));
  for (int64_t j = 0; j < total; ++j)
    x[static_cast<size_t>(j)] =
        0.5 + 0.4 * std::sin(0.91 * static_cast<double>(j) + 0.3 * static_cast<double>(j / per_sample));
  return Tensor::from_vector(x, shape).to(DType::f32);
}

// The largest |got - want| / max(1, |want|) over a [N, K] tensor and the fixture's rows.
double max_relative_error(const Tensor& got, const json& want, std::string& where) {
  const std::vector<double> g = got.to(DType::f64).to_vector_f64();
  const int64_t n = got.size(0), k = got.size(1);
  REQUIRE(want.size() == static_cast<size_t>(n));
  double worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(want[i].size() == static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {
      const double w = want[i][j].get<double>(), v = g[static_cast<size_t>(i * k + j)];
      const double err = std::abs(v - w) / std::max(1.0, std::abs(w));
      if (!(err <= worst)) {  // also catches NaN
        worst = std::isnan(err) ? INFINITY : err;
        std::ostringstream at;
        at.precision(9);
        at << "[" << i << ", " << j << "]: bulwark " << v << ", fixture " << w;
        where = at.str();
      }
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("IBP and CROWN-IBP bounds equal auto_LiRPA's on the fixture networks", "[bounds]") {
  for (const std::string& fixture_name : kFixtures) {
    DYNAMIC_SECTION(fixture_name) {
      const json f = read_fixture(fixture_name);
      const json& input = f.at("config").at("input");
      ModelConfig cfg;
      cfg.in_channels = input.at("channels").get<int64_t>();
      cfg.height = input.at("height").get<int64_t>();
      cfg.width = input.at("width").get<int64_t>();
      cfg.num_classes = input.at("num_classes").get<int64_t>();
      cfg.mean = input.at("mean").get<std::vector<double>>();
      cfg.std = input.at("std").get<std::vector<double>>();
      cfg.dtype = DType::f32;
      auto model = make_model(f.at("model").get<std::string>(), cfg);
      NoGradGuard no_grad;
      set_fixture_weights(*model);
      model->eval();

      const Shape shape = f.at("x_shape").get<Shape>();
      REQUIRE(shape == Shape{4, cfg.in_channels, cfg.height, cfg.width});
      const Tensor x = fixture_input(shape);
      const std::vector<int32_t> labels = f.at("labels").get<std::vector<int32_t>>();
      const Tensor y = Tensor::from_vector(labels, {static_cast<int64_t>(labels.size())});
      const double eps = f.at("eps").get<double>();

      std::string where;
      const double logit_err = max_relative_error(model->forward(x), f.at("logits"), where);
      INFO("logits: largest relative difference " << logit_err << " at " << where);
      CHECK(logit_err <= kLogitTol);

      const Tensor ibp = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::ibp);
      const double ibp_err = max_relative_error(ibp, f.at("ibp_upper"), where);
      INFO("IBP: largest relative difference " << ibp_err << " at " << where);
      CHECK(ibp_err <= kBoundTol);

      const Tensor crown = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::crown_ibp);
      const double crown_err = max_relative_error(crown, f.at("crown_ibp_upper"), where);
      INFO("CROWN-IBP: largest relative difference " << crown_err << " at " << where);
      CHECK(crown_err <= kBoundTol);

      // On these untrained networks CROWN-IBP is tighter than IBP for every margin (the fixtures
      // say so too): a bound pass that silently fell back to IBP would pass the checks above only
      // if the fixture were wrong, so this also guards the fixture.
      const std::vector<double> wi = ibp.to(DType::f64).to_vector_f64(), wc = crown.to(DType::f64).to_vector_f64();
      for (size_t i = 0; i < wi.size(); ++i) {
        const bool is_label = static_cast<int32_t>(i % static_cast<size_t>(cfg.num_classes)) ==
                              labels[i / static_cast<size_t>(cfg.num_classes)];
        if (is_label) {
          CHECK(wi[i] == 0.0);
          CHECK(wc[i] == 0.0);
        } else {
          CHECK(wc[i] < wi[i]);
        }
      }
    }
  }
}
