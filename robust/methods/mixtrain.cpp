// MixTrain (Wang, Chen, Abdou, Jana 2018, "MixTrain: scalable training of verifiably robust neural
// networks"): verifiably robust training made cheap by two ideas.
//
// Stochastic robust approximation (SRA): the sound bound, the expensive part, is computed per
// batch on k randomly chosen samples only (--sra-k: a count, a percentage of the batch, or "all"),
// so its cost no longer grows with the batch. The symbolic bound (--bound symbolic, models/
// symbolic.h: d + 3 rows per sample) is what SRA makes affordable.
//
// Dynamic mixed training (DMT): the loss mixes the clean cross-entropy of the whole batch with the
// verified loss of the k samples,
//
//   L = CE(f(x), y) + w_t * CE(wc(x_k, eps_t), y_k)
//
// the verified term added to a batch with probability --dmt-prob (0.8), eps_t following the
// --eps-ramp warm-up (10 epochs by default: the schedule_length of the authors' group's code).
// The weight w_t (assumed: the paper's exact rule is not public, METHODS.md):
//   ramp     (default; the authors' group's re-implementation) w_t = min(w0 g^floor(max(t - T, 0) / s),
//            w_max) with T the epoch the eps ramp ends, w0 0.1, g 2.5, s 5, w_max 50;
//   balance  after each epoch, with clean validation accuracy A and verified validation accuracy V
//            (by the run's bound, as the trainer reports it), w <- clip(w exp(eta (dA - dV)), w_min, w_max): the
//            verified weight grows while accuracy improves faster than verified robustness.
//
// Passes: the clean forward and backward count one each; a bound pass over k samples counts as
// many forward (and backward) passes as batches of rows it carries, ceil(rows / batch): k for IBP
// and CROWN-IBP (CROWN's backward pass is one more), k (d + 3) for the symbolic bound. The paper's
// MNIST setting: wong_small, eps 0.1 or 0.3, the symbolic bound, k about 10% of the batch.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/symbolic.h"
#include "robust/attack_rows.h"
#include "robust/bounds.h"
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

struct DmtConstants {
  bool balance = false;
  double prob = 0.8, w0 = 0.1, growth = 2.5, every = 5, w_min = 0.01, w_max = 50, eta = 10;
};

// --sra-k: "all", "N%" of the batch, or a count; read once, when the method is made.
struct SraSpec {
  enum { all, percent, count } kind = all;
  double value = 0;
  // k for a batch of n samples (a percentage: at least 1).
  int64_t k(int64_t n) const {
    if (kind == all) return n;
    if (kind == count) return static_cast<int64_t>(value);
    return std::max<int64_t>(1, static_cast<int64_t>(std::llround(value / 100 * static_cast<double>(n))));
  }
};

SraSpec parse_sra(const std::string& spec) {
  const auto bad = [&] {
    return std::invalid_argument(
        fmt::format("--sra-k '{}': give a number of samples (e.g. 13), a percentage of the batch (e.g. 10%) or 'all'",
                    spec));
  };
  if (spec == "all") return {};
  try {
    size_t used = 0;
    const bool percent = !spec.empty() && spec.back() == '%';
    const std::string number = percent ? spec.substr(0, spec.size() - 1) : spec;
    const double v = percent ? std::stod(number, &used) : static_cast<double>(std::stoll(number, &used));
    if (used != number.size() || !(v > 0) || (percent && v > 100)) throw bad();
    return {percent ? SraSpec::percent : SraSpec::count, v};
  } catch (const std::invalid_argument&) {
    throw bad();
  } catch (const std::out_of_range&) {
    throw bad();
  }
}

class MixTrain final : public Method {
 public:
  MixTrain(double eps, BoundKind bound, SraSpec sra, DmtConstants dmt, double ramp_end, double memory_mib)
      : eps_(eps), bound_(bound), sra_(sra), dmt_(dmt), ramp_end_(ramp_end), memory_mib_(memory_mib), w_(dmt.w0) {}
  std::string name() const override { return "mixtrain"; }
  BoundKind verified_bound() const override { return bound_; }

  void check(Module& model, const Tensor& probe_x, const Tensor& probe_y, int64_t batch_size) override {
    const int64_t k = sra_.k(batch_size);
    if (k > batch_size)
      throw std::invalid_argument(fmt::format("mixtrain: --sra-k {} is larger than the batch ({} samples)", k, batch_size));
    // One sample through the bound, as training will run it: a layer it cannot pass fails here.
    NoGradGuard no_grad;
    const Tensor x1 = probe_x.slice(0, 0, 1), y1 = probe_y.slice(0, 0, 1);
    try {
      if (bound_ != BoundKind::symbolic) {
        worst_case_logits(model, x1, y1, eps_, bound_);
        return;
      }
      SymbolicPass pass(input_box(x1, eps_));
      model.interval_margin(pass.expanded(), pass.repeat_labels(y1));
      const double mib = static_cast<double>(pass.total_row_bytes()) * static_cast<double>(k) / (1024.0 * 1024.0);
      if (mib > memory_mib_)
        throw std::invalid_argument(fmt::format(
            "the symbolic bound's rows for k = {} samples take at least {:.0f} MiB ({:.1f} MiB a sample: {} rows per "
            "sample through the model), over --bound-memory {:.0f} MiB: lower --sra-k or raise --bound-memory",
            k, mib, mib / static_cast<double>(k), x1.numel() + 3, memory_mib_));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("mixtrain --bound {}: {}", bound_name(bound_), e.what()));
    }
  }

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    const int64_t n = x.size(0);
    eps_t_ = ctx.eps_scale * eps_;
    if (!dmt_.balance) w_ = ramp_weight(ctx.epoch);
    // Both draws every batch, so the stream's position does not depend on the outcome.
    const double draw = rand_uniform({1}, 0, 1, ctx.gen, DType::f64).item();
    std::vector<int64_t> order = randperm(n, ctx.gen);
    ctx.optimizer.zero_grad();
    const Tensor logits = ctx.model(x);
    Tensor loss = cross_entropy(logits, y);
    int64_t passes = 1;
    const int64_t k = std::min(sra_.k(n), n);
    k_ = std::max(k_, k);  // the epoch's full batches' k
    if (eps_t_ > 0 && draw < dmt_.prob) {
      order.resize(static_cast<size_t>(k));
      const Tensor xk = k == n ? x : take_rows(x, order), yk = k == n ? y : take_rows(y, order);
      loss = loss + cross_entropy(worst_case_logits(ctx.model, xk, yk, eps_t_, bound_), yk) * w_;
      const int64_t rows = bound_ == BoundKind::symbolic ? k * (x.numel() / n + 3) : k;
      passes += (rows + n - 1) / n + (bound_ == BoundKind::crown_ibp ? 1 : 0);
      ++bounded_batches_;
    }
    ++batches_;
    ctx.passes.fwd += passes;
    ctx.optimizer.backward(loss, true);
    ctx.passes.bwd += passes;
    ctx.optimizer.step();
    ctx.log.record(loss, correct_predictions(logits, y), n);
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["w"] = w_;
    end.extra["eps_t"] = eps_t_;
    end.extra["k"] = static_cast<double>(k_);
    end.extra["bounded_batches"] = batches_ > 0 ? static_cast<double>(bounded_batches_) / static_cast<double>(batches_) : 0;
    batches_ = bounded_batches_ = k_ = 0;
    if (dmt_.balance) {
      const auto v = end.extra.find("verified_val_acc");
      const double A = end.val_acc, V = v == end.extra.end() ? 0.0 : v->second;
      if (have_previous_) w_ = std::clamp(w_ * std::exp(dmt_.eta * ((A - last_A_) - (V - last_V_))), dmt_.w_min, dmt_.w_max);
      last_A_ = A;
      last_V_ = V;
      have_previous_ = true;
    }
    return EpochVerdict::keep_going;
  }

  nlohmann::json state() const override {
    return {{"w", w_}, {"last_A", last_A_}, {"last_V", last_V_}, {"have_previous", have_previous_}};
  }
  void load_state(const nlohmann::json& s) override {
    if (s.contains("w")) {
      w_ = s.at("w").get<double>();
      last_A_ = s.at("last_A").get<double>();
      last_V_ = s.at("last_V").get<double>();
      have_previous_ = s.at("have_previous").get<bool>();
    }
  }

 private:
  double ramp_weight(int64_t epoch) const {
    const double past = std::max(static_cast<double>(epoch) - ramp_end_, 0.0);
    return std::min(dmt_.w0 * std::pow(dmt_.growth, std::floor(past / dmt_.every)), dmt_.w_max);
  }

  double eps_;
  BoundKind bound_;
  SraSpec sra_;
  DmtConstants dmt_;
  double ramp_end_, memory_mib_;
  double w_, eps_t_ = 0, last_A_ = 0, last_V_ = 0;
  bool have_previous_ = false;
  int64_t k_ = 0, batches_ = 0, bounded_batches_ = 0;
};

}  // namespace

MethodInfo mixtrain_method() {
  MethodInfo m;
  m.name = "mixtrain";
  m.title = "MixTrain (Wang et al. 2018)";
  m.summary =
      "Verifiably robust training on a sampled bound: loss = CE(f(x), y) + w_t CE(worst-case logits of k random samples, "
      "y_k), the verified term on a batch with probability --dmt-prob. --bound symbolic is the paper's (symbolic "
      "intervals), --sra-k the sample count (10% of the batch; 'all' turns SRA off), --dmt ramp|balance the weight "
      "rule. The paper: wong_small on MNIST at eps 0.1 and 0.3.";
  m.adversarial = false;
  m.certified = true;
  Option ramp = eps_ramp_option();
  ramp.default_to(10.0);
  m.options = {
      eps_option(),
      Option::make("bound", "--bound", OptionType::text, "mixtrain: the sound bound of the verified loss")
          .one_of({"symbolic", "ibp", "crown-ibp"})
          .default_to("symbolic"),
      Option::make("sra_k", "--sra-k", OptionType::text,
                   "mixtrain: samples of each batch the bound is computed on: a count, a percentage of the batch "
                   "(10%), or 'all' (no stochastic robust approximation)")
          .default_to("10%"),
      Option::make("dmt", "--dmt", OptionType::text, "mixtrain: the verified loss's weight rule (ramp, balance)")
          .one_of({"ramp", "balance"})
          .default_to("ramp"),
      Option::make("dmt_prob", "--dmt-prob", OptionType::real,
                   "mixtrain: probability that a batch gets the verified term")
          .at_least(0)
          .at_most(1)
          .default_to(0.8),
      Option::make("dmt_w0", "--dmt-w0", OptionType::real, "mixtrain: the weight w at the start (both rules)")
          .above(0)
          .default_to(0.1),
      Option::make("dmt_growth", "--dmt-growth", OptionType::real,
                   "mixtrain ramp: w is multiplied by this every --dmt-every epochs after the eps ramp")
          .at_least(1)
          .default_to(2.5),
      Option::make("dmt_every", "--dmt-every", OptionType::real, "mixtrain ramp: epochs between two growths of w")
          .above(0)
          .default_to(5.0),
      Option::make("dmt_w_max", "--dmt-w-max", OptionType::real, "mixtrain: the largest weight w (both rules)")
          .above(0)
          .default_to(50.0),
      Option::make("dmt_w_min", "--dmt-w-min", OptionType::real, "mixtrain balance: the smallest weight w")
          .above(0)
          .default_to(0.01),
      Option::make("dmt_eta", "--dmt-eta", OptionType::real,
                   "mixtrain balance: w <- w exp(eta (dA - dV)) after each epoch (assumed constant)")
          .at_least(0)
          .default_to(10.0),
      Option::make("bound_memory", "--bound-memory", OptionType::real,
                   "mixtrain: the most MiB the symbolic bound's rows of one batch may take (checked before training)")
          .above(0)
          .default_to(4096.0),
      ramp,
      eps_ramp_start_option(),
      eps_ramp_shape_option()};
  m.make = [](const OptionValues& o) {
    const SraSpec sra = parse_sra(o.text("sra_k"));
    DmtConstants dmt;
    dmt.balance = o.text("dmt") == "balance";
    dmt.prob = o.real("dmt_prob");
    dmt.w0 = o.real("dmt_w0");
    dmt.growth = o.real("dmt_growth");
    dmt.every = o.real("dmt_every");
    dmt.w_max = o.real("dmt_w_max");
    dmt.w_min = o.real("dmt_w_min");
    dmt.eta = o.real("dmt_eta");
    if (dmt.w_min > dmt.w_max)
      throw std::invalid_argument(fmt::format("mixtrain: --dmt-w-min {} is above --dmt-w-max {}", dmt.w_min, dmt.w_max));
    const double ramp_end = o.real("eps_ramp_start") + o.real("eps_ramp");
    return std::make_unique<MixTrain>(o.real("eps"), bound_from_name(o.text("bound")), sra, dmt, ramp_end,
                                      o.real("bound_memory"));
  };
  return m;
}

}  // namespace bulwark::robust
