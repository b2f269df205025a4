// Data parallelism (training/data_parallel.h, engine/comm.h, docs/distributed.md): the loader's
// slices, the gradient average, and whole runs of `bulwark train` under `mpirun -np 2` on this
// machine's two cores, against one process accumulating the same micro-batches (bitwise) and
// one process training the global batch at once (validation accuracy within 0.2 points).
// The mpirun cases skip, saying why, where Open MPI was not found at build time.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "models/layers.h"
#include "training/data_parallel.h"
#include "training/optim.h"

namespace fs = std::filesystem;
using namespace bulwark;
using Catch::Matchers::Contains;

namespace {

struct Result {
  int code = -1;
  std::string err;
  double seconds = 0;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Scratch {
  fs::path path;
  Scratch() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("bulwark-dp-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Runs a shell command with stderr (and stdout) in `dir`/log.txt.
Result shell(const std::string& command, const fs::path& dir) {
  const fs::path log = dir / "log.txt";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system((command + " > '" + log.string() + "' 2>&1").c_str());
  Result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = slurp(log);
  return r;
}

#ifdef BULWARK_MPIEXEC
constexpr bool kHaveMpi = true;
const std::string kMpirun = std::string("'") + BULWARK_MPIEXEC +
                            "' --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp";
#else
constexpr bool kHaveMpi = false;
const std::string kMpirun;
#endif

// `bulwark train <args>` as 1 process, or as `ranks` ranks of mpirun.
std::string train_command(const std::string& binary, const std::string& args, int ranks) {
  const std::string one = "'" + binary + "' train " + args;
  return ranks == 1 ? one : kMpirun + " -np " + std::to_string(ranks) + " " + one;
}

bool fashion_mnist_installed() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

// The model's and optimizer's tensors of a checkpoint.
std::map<std::string, std::vector<float>> checkpoint_tensors(const fs::path& file) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : load_safetensors(file.string()).tensors)
    if (t.dtype() == DType::f32) out[name] = t.to_vector();
  return out;
}

std::vector<nlohmann::json> metrics(const fs::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

void require_same_weights(const fs::path& a, const fs::path& b) {
  const auto ta = checkpoint_tensors(a / "last.safetensors"), tb = checkpoint_tensors(b / "last.safetensors");
  REQUIRE(ta.size() == tb.size());
  REQUIRE(ta.size() > 2);
  for (const auto& [name, v] : ta) {
    INFO(name);
    REQUIRE(tb.count(name) == 1);
    CHECK(v == tb.at(name));  // bit for bit
  }
}

// Catch2 2 has no SKIP: the case says what it skips, and passes.
#define SKIP_BECAUSE(why)        \
  do {                           \
    WARN("SKIPPED: " << (why));  \
    return;                      \
  } while (false)
// Both runs wrote `epochs` lines of metrics.jsonl, equal in each of `keys`.
void require_equal_metrics(const fs::path& a, const fs::path& b, size_t epochs, const std::vector<std::string>& keys) {
  const auto ma = metrics(a), mb = metrics(b);
  REQUIRE(ma.size() == epochs);
  REQUIRE(mb.size() == epochs);
  for (size_t e = 0; e < epochs; ++e)
    for (const std::string& k : keys) {
      INFO("epoch " << e + 1 << ", " << k);
      CHECK(ma[e].at(k) == mb[e].at(k));
    }
}

// `bulwark train <args>` on `ranks` ranks, which must succeed.
void train_ok(const std::string& binary, const std::string& args, int ranks, const fs::path& dir) {
  const Result r = shell(train_command(binary, args, ranks), dir);
  INFO(r.err);
  REQUIRE(r.code == 0);
}

#define SKIP_WITHOUT_MPI() \
  if (!kHaveMpi) SKIP_BECAUSE("Open MPI was not found when this was built (apt-get install libopenmpi-dev openmpi-bin)")

const char* kSmallRun =
    "--dataset synthetic --train-size 512 --val-size 200 --test-size 100 --model mlp --epochs 2 --batch-size 32 "
    "--robust-val-size 50 --final-attack-size 50 --threads 1 --quiet";

}  // namespace

TEST_CASE("the slices of a global batch are its rows, in rank order", "[distributed][data]") {
  const data::Dataset d = data::make_synthetic(130, 3);  // 130: a tail that fills no global batch of 24
  const int64_t global = 24;
  data::Loader whole(d, global, true, 5, data::AugmentOptions{2, true}, true);
  data::Loader first(d, global, true, 5, data::AugmentOptions{2, true}, true);
  data::Loader second(d, global, true, 5, data::AugmentOptions{2, true}, true);
  first.set_slice(0, 16);
  second.set_slice(16, 8);
  REQUIRE(whole.batches_per_epoch() == 5);
  for (int64_t epoch : {0, 3}) {
    whole.start_epoch(epoch);
    first.start_epoch(epoch);
    second.start_epoch(epoch);
    data::Batch w, a, b;
    int64_t batches = 0;
    while (whole.next(w)) {
      REQUIRE(first.next(a));
      REQUIRE(second.next(b));
      REQUIRE(a.n == 16);
      REQUIRE(b.n == 8);
      std::vector<float> x = a.x;
      x.insert(x.end(), b.x.begin(), b.x.end());
      std::vector<int64_t> idx = a.indices;
      idx.insert(idx.end(), b.indices.begin(), b.indices.end());
      CHECK(x == w.x);  // the same samples, augmented the same way
      CHECK(idx == w.indices);
      ++batches;
    }
    CHECK(batches == 5);
    CHECK_FALSE(first.next(a));
  }
  data::Loader keeps_tail(d, global, true, 5);
  CHECK_THROWS_WITH(keeps_tail.set_slice(0, 8), Contains("needs drop_last"));
  data::Loader wide(d, global, true, 5, {}, true);
  CHECK_THROWS_WITH(wide.set_slice(16, 9), Contains("must lie in the batch of 24"));
}

TEST_CASE("the gradient average sums micro-batches in order, divides once and steps once", "[distributed]") {
  // A stand-in optimizer that records the gradient it steps with.
  struct Recorder : robust::ParameterUpdate {
    Tensor w;
    std::vector<std::vector<float>> stepped;
    void zero_grad() override { w.zero_grad(); }
    void step() override { stepped.push_back(w.grad().to_vector()); }
  };
  Recorder opt;
  opt.w = Tensor::from_vector(std::vector<float>{0.5f, -1.25f, 2.0f}, {3}).set_requires_grad(true);
  Tensor unused = Tensor::from_vector(std::vector<float>{1.0f}, {1}).set_requires_grad(true);
  training::GradientAverager avg(opt, {{"w", opt.w}, {"unused", unused}}, comm::world(), 3);
  const std::vector<std::vector<float>> inputs{{0.1f, 0.7f, -0.3f}, {1.9f, 0.2f, 0.4f}, {-0.6f, 0.05f, 3.0f}};
  std::vector<float> expect(3, 0.0f);
  for (int a = 0; a < 3; ++a) {
    avg.begin_micro_batch(a);
    avg.zero_grad();
    const Tensor x = Tensor::from_vector(inputs[a], {3});
    backward(sum(opt.w * opt.w * x));  // d/dw = 2 w x
    const std::vector<float> g = opt.w.grad().to_vector();
    for (size_t i = 0; i < 3; ++i) expect[i] = a == 0 ? g[i] : expect[i] + g[i];
    avg.step();
    CHECK(opt.stepped.size() == (a == 2 ? 1u : 0u));
  }
  for (float& e : expect) e *= 1.0f / 3.0f;
  REQUIRE(opt.stepped.size() == 1);
  CHECK(opt.stepped[0] == expect);
  CHECK_FALSE(unused.grad().defined());  // no micro-batch gave it a gradient: it keeps none

  avg.begin_micro_batch(0);
  backward(sum(opt.w));
  avg.step();
  CHECK_THROWS_WITH(avg.step(), Contains("twice in one micro-batch"));
}

namespace {
// Two ranks in one process for the op tests: the other rank holds exactly this rank's values, so
// a sum over ranks is twice the value.
class MirroredPair : public comm::Communicator {
 public:
  std::string backend() const override { return "mirrored pair"; }
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void all_reduce_sum(Tensor& t) override { t.copy_(affine(t, 2.0, 0.0)); }
  void all_reduce_sum(std::vector<double>& v) override {
    for (double& x : v) x *= 2;
  }
  void broadcast(std::string&) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};
}  // namespace

namespace {
// MirroredPair that records each asynchronous sum: when it started (backward nodes run so far),
// how long it was, and whether it had been waited for when the step read the gradients.
class RecordingPair final : public MirroredPair {
 public:
  struct Sent {
    int64_t nodes_run, numel;
    bool waited = false;
  };
  std::vector<Sent> sent;
  std::unique_ptr<comm::PendingSum> start_all_reduce_sum(Tensor t) override {
    sent.push_back({backward_stats().nodes_run, t.numel()});
    // The sum appears only when waited for, so a step that read a bucket early would see it unsummed.
    struct Pending final : comm::PendingSum {
      RecordingPair* pair;
      size_t index;
      Tensor t;
      void wait() override {
        pair->all_reduce_sum(t);
        pair->sent[index].waited = true;
      }
    };
    auto p = std::make_unique<Pending>();
    p->pair = this;
    p->index = sent.size() - 1;
    p->t = std::move(t);
    return p;
  }
};

// An optimizer that records the gradients it steps with.
struct GradientsRecorder : robust::ParameterUpdate {
  NamedTensors params;
  std::vector<std::vector<std::vector<float>>> stepped;  // per step, per parameter
  void zero_grad() override {
    for (auto& [name, p] : params) p.zero_grad();
  }
  void step() override {
    stepped.emplace_back();
    for (auto& [name, p] : params) stepped.back().push_back(p.grad().defined() ? p.grad().to_vector() : std::vector<float>{});
  }
};
}  // namespace

TEST_CASE("the gradient average sends its buckets while the backward runs, in order, and sums what one bucket does",
          "[distributed]") {
  // `spare` (registered first, so in the last bucket) gets no gradient; then six layers of 1,000
  // weights. Buckets of 8,000 bytes: {w5, w4}, {w3, w2}, {w1, w0}, {spare}, the last of which
  // can only go in step().
  struct Run {
    std::vector<std::vector<std::vector<float>>> stepped;
    std::vector<std::vector<size_t>> buckets;
    int sent_early = 0;
    int64_t first_backward_start = 0, first_backward_nodes = 0;
  };
  const auto run = [](int64_t bucket_bytes, int accum, RecordingPair& pair) {
    Generator gen(5), data(9);
    GradientsRecorder opt;
    opt.params.emplace_back("spare", Tensor::zeros({10}).set_requires_grad(true));
    for (int k = 0; k < 6; ++k)
      opt.params.emplace_back("w" + std::to_string(k), rand_normal({1000}, 0.0, 1.0, gen).set_requires_grad(true));
    training::GradientAverager avg(opt, opt.params, pair, accum, bucket_bytes);
    Run r;
    r.buckets = avg.buckets();
    for (int step = 0; step < 2; ++step)
      for (int a = 0; a < accum; ++a) {
        avg.begin_micro_batch(a);
        avg.zero_grad();
        Tensor h = rand_normal({1000}, 0.0, 1.0, data);
        for (size_t k = 1; k <= 6; ++k) h = relu(h * opt.params[k].second) + h * 0.5;
        const size_t sent_before = pair.sent.size();
        const int64_t start = backward_stats().nodes_run;
        avg.backward(sum(h * h), true);
        if (step == 0 && a + 1 == accum) {
          r.first_backward_start = start;
          r.first_backward_nodes = backward_stats().nodes_run - start;
        }
        if (a + 1 < accum) CHECK(pair.sent.size() == sent_before);  // nothing goes before the last micro-batch
        avg.step();
      }
    r.stepped = opt.stepped;
    r.sent_early = avg.sent_during_backward();
    return r;
  };
  for (const int accum : {1, 2}) {
    INFO("--grad-accum " << accum);
    RecordingPair many, one;
    const Run by_buckets = run(8000, accum, many), by_one = run(int64_t{1} << 30, accum, one);
    CHECK(by_buckets.buckets == std::vector<std::vector<size_t>>{{6, 5}, {4, 3}, {2, 1}, {0}});
    REQUIRE(many.sent.size() == 8);  // 2 steps x 4 buckets
    CHECK(by_buckets.sent_early == 3);
    for (size_t b = 0; b < 4; ++b) CHECK(many.sent[b].numel == (b < 3 ? 2000 : 10));
    for (const auto& sent : many.sent) CHECK(sent.waited);
    // The first bucket left after the loss's 2 nodes and the last two layers' 4 each: 10 of 25
    // (the first layer's h * 0.5 records none: h is data).
    CHECK(by_buckets.first_backward_nodes == 25);
    CHECK(many.sent[0].nodes_run - by_buckets.first_backward_start == 10);
    CHECK(many.sent[1].nodes_run > many.sent[0].nodes_run);
    CHECK(many.sent[2].nodes_run > many.sent[1].nodes_run);
    REQUIRE(one.sent.size() == 2);
    CHECK(by_one.sent_early == 0);  // `spare` is in the one bucket: it goes in step()
    REQUIRE(by_buckets.stepped.size() == 2);
    CHECK(by_buckets.stepped == by_one.stepped);  // bit for bit
    CHECK(by_buckets.stepped[0][0].empty());      // no rank gave `spare` a gradient: it has none
    CHECK(by_buckets.stepped[0][1].size() == 1000);
  }
}

TEST_CASE("sync BatchNorm on a rank is BatchNorm of every rank's batch together, values and gradients",
          "[distributed][ops]") {
  // Rank 0 holds x and (MirroredPair) rank 1 the same x: sync BatchNorm of x must equal the first
  // half of plain BatchNorm over [x; x'] with x' = x, its gradient (both ranks' losses) that of
  // the first half there, and the running statistics theirs.
  Generator gen(3);
  const Tensor x0 = rand_normal({5, 3, 4, 2}, 0.5, 2.0, gen);
  const Tensor g0 = rand_normal({5, 3, 4, 2}, 0.0, 1.0, gen);
  for (const bool relu : {false, true}) {
    INFO("relu " << relu);
    BatchNorm2d synced(3), plain(3);
    for (BatchNorm2d* bn : {&synced, &plain}) {
      bn->weight.copy_(Tensor::from_vector(std::vector<float>{1.5f, -0.5f, 0.75f}, {3}));
      bn->bias.copy_(Tensor::from_vector(std::vector<float>{0.1f, 0.2f, -0.3f}, {3}));
      bn->train();
    }
    MirroredPair pair;
    Tensor xs = x0.clone().set_requires_grad(true);
    set_batch_norm_sync(&pair);
    const Tensor ys = relu ? *synced.forward_relu(xs) : synced.forward(xs);
    set_batch_norm_sync(nullptr);
    backward(sum(ys * g0));
    Tensor xa = x0.clone().set_requires_grad(true), xb = x0.clone().set_requires_grad(true);
    const Tensor both = concat({xa, xb}, 0);
    const Tensor yp = relu ? *plain.forward_relu(both) : plain.forward(both);
    backward(sum(yp * concat({g0, g0}, 0)));
    const std::vector<float> a = ys.to_vector(), b = yp.slice(0, 0, 5).to_vector();
    const std::vector<float> ga = xs.grad().to_vector(), gb = xa.grad().to_vector();
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(std::abs(a[i] - b[i]) < 2e-5f);
      REQUIRE(std::abs(ga[i] - gb[i]) < 2e-4f);
    }
    // The weight's gradient is this rank's part: half of the whole batch's.
    const std::vector<float> wa = synced.weight.grad().to_vector(), wb = plain.weight.grad().to_vector();
    for (size_t c = 0; c < 3; ++c) CHECK(std::abs(wa[c] - wb[c] / 2) < 1e-3f * (1 + std::abs(wb[c])));
    for (const auto& [sa, sb] : {std::pair{synced.running_mean, plain.running_mean},
                                 std::pair{synced.running_var, plain.running_var}}) {
      const std::vector<float> va = sa.to_vector(), vb = sb.to_vector();
      for (size_t c = 0; c < 3; ++c) CHECK(std::abs(va[c] - vb[c]) < 1e-5f);
    }
  }
}

TEST_CASE("the differentiable all-reduce sums values and gradients over ranks", "[distributed][ops]") {
  MirroredPair pair;
  Tensor x = Tensor::from_vector(std::vector<float>{1.0f, -2.0f}, {2}).set_requires_grad(true);
  const Tensor y = comm::all_reduce_sum(x * x, pair);
  CHECK(y.to_vector() == std::vector<float>{2.0f, 8.0f});
  CHECK(x.to_vector() == std::vector<float>{1.0f, -2.0f});
  backward(sum(y));
  CHECK(x.grad().to_vector() == std::vector<float>{4.0f, -8.0f});  // 2 ranks' losses x 2x
}

TEST_CASE("the trainer refuses data too small for a global batch, --sync-bn with --grad-accum, and a global batch "
          "the micro-batches do not divide",
          "[distributed][cli]") {
  Scratch s;
  // One process with `options` on the small run: refused, saying `why`.
  const auto refused = [&](const std::string& options, const std::string& why) {
    const Result r = shell(train_command(BULWARK_BINARY, std::string(kSmallRun) + " " + options + " --out " +
                                                            (s.path / "run").string(),
                                         1),
                           s.path);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Contains(why));
  };
  refused("--method standard --grad-accum 20", "training samples do not fill one global batch of 640");
  refused("--sync-bn --grad-accum 2", "--sync-bn with --grad-accum 2: a rank's micro-batches run one after another");
  // --global-batch-size sets the per-rank batch, or says why it cannot.
  refused("--global-batch-size 100 --grad-accum 3",
          "--global-batch-size 100 over 1 rank x --grad-accum 3: 100 is not a multiple of 3");
  const Result r =
      shell(train_command(BULWARK_BINARY, std::string(kSmallRun) + " --global-batch-size 96 --grad-accum 2 --dry-run", 1),
            s.path);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.err, Contains("\"batch_size\": 48,"));
}

TEST_CASE("two ranks train bit for bit what one process does accumulating their two micro-batches",
          "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  // free and mplus-deat step on every replay: each replay's step sums the micro-batches' replays.
  for (const std::string method : {"standard", "pgd", "fgsm-rs", "free", "mplus-deat"}) {
    DYNAMIC_SECTION(method) {
      Scratch s;
      const std::string args = std::string(kSmallRun) + " --method " + method;
      const fs::path ranks = s.path / "ranks", accum = s.path / "accum";
      train_ok(BULWARK_BINARY, args + " --out " + ranks.string(), 2, s.path);
      train_ok(BULWARK_BINARY, args + " --grad-accum 2 --out " + accum.string(), 1, s.path);
      require_same_weights(ranks, accum);
      require_equal_metrics(ranks, accum, 2, {"val_acc", "train_acc", "fwd_passes", "bwd_passes"});
      if (method == "pgd") {
        // Buckets of 10 kB: each parameter its own, sent while the backward runs (the first
        // layer's 1.2 MB in MPI pieces); the same bits as one bucket.
        const fs::path small = s.path / "small-buckets";
        train_ok(BULWARK_BINARY, args + " --bucket-mb 0.01 --out " + small.string(), 2, s.path);
        require_same_weights(small, accum);
      }
      // The epoch's loss: the same terms, summed per rank first.
      const auto mr = metrics(ranks), ma = metrics(accum);
      for (size_t e = 0; e < 2; ++e)
        CHECK(std::abs(mr[e].at("train_loss").get<double>() - ma[e].at("train_loss").get<double>()) < 1e-12);
      const nlohmann::json cfg = nlohmann::json::parse(slurp(ranks / "config.json"));
      CHECK(cfg.at("world_size") == 2);
      CHECK_FALSE(fs::exists(ranks / "rank1"));
    }
  }
}

TEST_CASE("two ranks at batch B match one process at batch 2B within 0.2 points of validation accuracy",
          "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  if (!fashion_mnist_installed()) SKIP_BECAUSE("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
  // The same algorithm in another summation order (a mean over 2B against the mean of two means
  // of B), random starts keyed by the sample's place in the global batch. Standard training and
  // M+DEAT stay equal over seeds 1-3 here; PGD-10's sign steps amplify rounding, and its gap was
  // 0.0-0.3 points over those seeds (0.0 for this one).
  for (const std::string method : {"standard", "pgd", "mplus-deat"}) {
    DYNAMIC_SECTION(method) {
      Scratch s;
      const std::string args =
          "--dataset fashion-mnist --train-size 2048 --val-size 1000 --test-size 200 --model mlp --epochs 2 "
          "--schedule constant --optimizer sgd --lr 0.01 --robust-val-size 0 --final-attack-size 0 --threads 1 "
          "--quiet --seed 2 --method " +
          method;
      const fs::path ranks = s.path / "ranks", plain = s.path / "plain";
      train_ok(BULWARK_BINARY, args + " --batch-size 32 --out " + ranks.string(), 2, s.path);
      train_ok(BULWARK_BINARY, args + " --batch-size 64 --out " + plain.string(), 1, s.path);
      const auto mr = metrics(ranks), mp = metrics(plain);
      REQUIRE(mr.size() == 2);
      REQUIRE(mp.size() == 2);
      for (size_t e = 0; e < 2; ++e) {
        INFO("epoch " << e + 1 << ": " << mr[e].at("val_acc") << " vs " << mp[e].at("val_acc"));
        CHECK(std::abs(mr[e].at("val_acc").get<double>() - mp[e].at("val_acc").get<double>()) <= 0.002 + 1e-12);
      }
    }
  }
}

TEST_CASE("with --sync-bn, two ranks at batch B train a BatchNorm model as one process at batch 2B",
          "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  if (!fashion_mnist_installed()) SKIP_BECAUSE("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
  // cnn7 has a BatchNorm after each of its six hidden layers. Each rank's own statistics (the
  // default) are those of 32 samples, not 64: that run is measurably another one.
  Scratch s;
  const std::string args =
      "--dataset fashion-mnist --train-size 512 --val-size 1000 --test-size 100 --model cnn7 --epochs 1 "
      "--method standard --schedule constant --optimizer sgd --lr 0.01 --robust-val-size 0 --final-attack-size 0 "
      "--threads 1 --quiet --seed 2";
  const fs::path synced = s.path / "synced", local = s.path / "local", plain = s.path / "plain";
  train_ok(BULWARK_BINARY, args + " --batch-size 32 --sync-bn --out " + synced.string(), 2, s.path);
  train_ok(BULWARK_BINARY, args + " --batch-size 32 --out " + local.string(), 2, s.path);
  train_ok(BULWARK_BINARY, args + " --batch-size 64 --out " + plain.string(), 1, s.path);
  const double loss_synced = metrics(synced)[0].at("train_loss"), loss_local = metrics(local)[0].at("train_loss"),
               loss_plain = metrics(plain)[0].at("train_loss");
  INFO("train loss: sync " << loss_synced << ", local " << loss_local << ", one process " << loss_plain);
  CHECK(std::abs(loss_synced - loss_plain) < 1e-3);
  CHECK(std::abs(loss_local - loss_plain) > 1e-2);
  CHECK(std::abs(metrics(synced)[0].at("val_acc").get<double>() - metrics(plain)[0].at("val_acc").get<double>()) <=
        0.002 + 1e-12);
}

TEST_CASE("a two-rank run resumes bit for bit, and only on two ranks", "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  Scratch s;
  const std::string args = std::string(kSmallRun) + " --method mplus-deat --epochs 3";
  const fs::path whole = s.path / "whole", parts = s.path / "parts";
  train_ok(BULWARK_BINARY, args + " --out " + whole.string(), 2, s.path);
  train_ok(BULWARK_BINARY, args + " --stop-after 1 --out " + parts.string(), 2, s.path);
  Result r = shell(train_command(BULWARK_BINARY, "--resume " + parts.string() + " --quiet", 1), s.path);
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Contains("the run was configured for 2 ranks, and 1 were launched"));
  r = shell(train_command(BULWARK_BINARY, "--resume " + parts.string() + " --quiet", 2), s.path);
  REQUIRE(r.code == 0);
  require_same_weights(whole, parts);
  require_equal_metrics(whole, parts, 3, {"val_acc", "G", "r"});  // G: M+'s signal, summed over ranks
}

TEST_CASE("two ranks on the emulated CUDA backend match one accumulating process", "[distributed][mpi][emulated-cuda]") {
  SKIP_WITHOUT_MPI();
  Scratch s;
  const std::string args =
      "--dataset synthetic --train-size 64 --val-size 16 --test-size 16 --model mlp --epochs 1 --batch-size 16 "
      "--method pgd --steps 2 --robust-val-size 0 --final-attack-size 0 --threads 1 --quiet --device cuda "
      "--cuda-graphs off";
  const fs::path ranks = s.path / "ranks", accum = s.path / "accum";
  // The emulator is no GPU: the CLI takes --device cuda on it only when asked by name.
  struct EmulatedDevice {
    EmulatedDevice() { setenv("BULWARK_TEST_EMULATED_DEVICE", "1", 1); }
    ~EmulatedDevice() { unsetenv("BULWARK_TEST_EMULATED_DEVICE"); }
  } emulated;
  train_ok(BULWARK_EMULATED_BINARY, args + " --out " + ranks.string(), 2, s.path);
  train_ok(BULWARK_EMULATED_BINARY, args + " --grad-accum 2 --out " + accum.string(), 1, s.path);
  require_same_weights(ranks, accum);
  CHECK(nlohmann::json::parse(slurp(ranks / "config.json")).at("device") == "cuda");
}

TEST_CASE("ranks given different options, a rank that dies and a rank that hangs end the job with an error",
          "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  Scratch s;
  const std::string bin = std::string("'") + BULWARK_BINARY + "' train ";
  const std::string args = std::string(kSmallRun) + " --method standard --epochs 3";
  SECTION("different options: every rank says which") {
    const Result r = shell(kMpirun + " -np 1 " + bin + args + " --seed 1 --out " + (s.path / "a").string() +
                               " : -np 1 " + bin + args + " --seed 2 --out " + (s.path / "a").string(),
                           s.path);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Contains("rank 1 of 2 was given another run than rank 0: 'seed' is 2 here and 1 on rank 0"));
    CHECK_THAT(r.err, Contains("rank 0 of 2: 1 other rank got options different from rank 0's"));
    CHECK_FALSE(fs::exists(s.path / "a"));  // nothing written
  }
  SECTION("a global batch the ranks do not divide") {
    const Result r = shell(kMpirun + " -np 2 " + bin + args + " --global-batch-size 65 --out " + (s.path / "g").string(),
                           s.path);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Contains("of 2: error: --global-batch-size 65 over 2 ranks x --grad-accum 1: 65 is not a "
                               "multiple of 2; choose a global batch that is (e.g. 64)"));
    CHECK_FALSE(fs::exists(s.path / "g"));
  }
  SECTION("a rank killed in training") {
    const Result r = shell(kMpirun + " -np 1 " + bin + args + " --out " + (s.path / "b").string() +
                               " : -np 1 env BULWARK_TEST_INTERRUPT=batch:3:9 " + bin + args + " --out " +
                               (s.path / "b").string(),
                           s.path);
    CHECK(r.code != 0);
    CHECK(r.seconds < 60);
    CHECK_THAT(r.err, Contains("signal 9"));
  }
  SECTION("a rank that stops answering: the others' collective times out") {
    const Result r = shell(kMpirun + " -np 1 " + bin + args + " --comm-timeout 3 --out " + (s.path / "c").string() +
                               " : -np 1 env BULWARK_TEST_INTERRUPT=batch:3:19 " + bin + args +
                               " --comm-timeout 3 --out " + (s.path / "c").string(),
                           s.path);
    CHECK(r.code != 0);
    CHECK(r.seconds < 60);
    CHECK_THAT(r.err, Contains("rank 0 of 2: error: no answer from the other ranks in an all-reduce "
                                        "for 3 s"));
  }
}

namespace {
// Two network namespaces joined by a veth pair (10.77.<k>.1 and .2), each a "host" of its own
// network stack, removed again on destruction. ok() is false, with why(), where they cannot be
// made (not root, no iproute2, no CAP_NET_ADMIN in a container).
class TwoHosts {
 public:
  explicit TwoHosts(const fs::path& dir) {
    const std::string id = std::to_string(getpid() % 100000);
    a_ = "bwa" + id, b_ = "bwb" + id;
    subnet_ = "10.77." + std::to_string(getpid() % 250) + ".";
    const std::string va = "bwva" + id, vb = "bwvb" + id;
    const std::string script =
        "set -e; ip netns add " + a_ + "; ip netns add " + b_ + "; ip link add " + va + " type veth peer name " + vb +
        "; ip link set " + va + " netns " + a_ + "; ip link set " + vb + " netns " + b_ + "; ip -n " + a_ +
        " addr add " + subnet_ + "1/24 dev " + va + "; ip -n " + b_ + " addr add " + subnet_ + "2/24 dev " + vb +
        "; for n in " + a_ + " " + b_ + "; do ip -n $n link set lo up; done; ip -n " + a_ + " link set " + va +
        " up; ip -n " + b_ + " link set " + vb + " up";
    const Result r = shell("bash -c '" + script + "'", dir);
    made_ = r.code == 0;
    if (!made_) why_ = "network namespaces cannot be made here (" + r.err.substr(0, 200) + ")";
    // mpirun starts the remote rank's daemon through this instead of ssh: in the other namespace.
    agent_ = dir / "netns_agent.sh";
    std::ofstream(agent_) << "#!/bin/sh\nshift\nexec ip netns exec " << b_ << " sh -c \"$*\"\n";
    fs::permissions(agent_, fs::perms::owner_all);
  }
  ~TwoHosts() {
    if (made_) std::system(("ip netns del " + a_ + "; ip netns del " + b_ + " > /dev/null 2>&1").c_str());
  }
  bool ok() const { return made_; }
  const std::string& why() const { return why_; }
  // mpirun in the first namespace, one rank there and one in the second, TCP between them.
  std::string mpirun() const {
#ifdef BULWARK_MPIEXEC
    return "ip netns exec " + a_ + " '" + BULWARK_MPIEXEC + "' --allow-run-as-root --oversubscribe --bind-to none " +
           "--mca plm_rsh_agent '" + agent_.string() + "' --mca btl self,tcp --mca btl_tcp_if_include " + subnet_ +
           "0/24 --mca oob_tcp_if_include " + subnet_ + "0/24 --host " + subnet_ + "1," + subnet_ + "2 -np 2";
#else
    return "";
#endif
  }

 private:
  std::string a_, b_, subnet_, why_;
  fs::path agent_;
  bool made_ = false;
};
}  // namespace

TEST_CASE("two ranks on two hosts (network namespaces, MPI over TCP) train what two ranks on one host do",
          "[distributed][mpi]") {
  SKIP_WITHOUT_MPI();
  Scratch s;
  TwoHosts hosts(s.path);
  if (!hosts.ok()) SKIP_BECAUSE(hosts.why());
  const std::string args = std::string(kSmallRun) + " --method pgd";
  const fs::path apart = s.path / "apart", together = s.path / "together";
  Result r = shell(hosts.mpirun() + " '" + BULWARK_BINARY + "' train " + args + " --out " + apart.string(), s.path);
  INFO(r.err);
  REQUIRE(r.code == 0);
  train_ok(BULWARK_BINARY, args + " --out " + together.string(), 2, s.path);
  require_same_weights(apart, together);
  CHECK(metrics(apart)[1].at("val_acc") == metrics(together)[1].at("val_acc"));
}

TEST_CASE("bulwark info names the NCCL it opens, or why it cannot, and the MPI it was built with", "[distributed][cli]") {
  Scratch s;
  const Result plain = shell("'" + std::string(BULWARK_BINARY) + "' info", s.path);
  INFO(plain.err);
  REQUIRE(plain.code == 0);
  CHECK_THAT(plain.err, Contains("CUDA"));
  if (kHaveMpi) CHECK_THAT(plain.err, Contains("MPI       Open MPI v"));
  if (plain.err.find("NCCL      NCCL 2.") == std::string::npos) {
    CHECK_THAT(plain.err, Contains("NCCL      not available: this build has no NCCL"));
    SKIP_BECAUSE("this bulwark was built without NCCL (a CUDA build finds it beside the toolkit)");
  }
  // NCCL is opened at run time: the binary starts without it and says what is wrong.
  const auto with_library = [&](const std::string& path) {
    const Result r = shell("BULWARK_NCCL_LIBRARY='" + path + "' '" + std::string(BULWARK_BINARY) + "' info", s.path);
    CHECK(r.code == 0);
    return r.err;
  };
  CHECK_THAT(with_library("/nonexistent/libnccl.so.2"),
             Contains("NCCL      not available: NCCL could not be loaded (/nonexistent/libnccl.so.2: cannot open shared "
                      "object file") &&
                 Contains("set BULWARK_NCCL_LIBRARY to its libnccl.so.2"));
  const fs::path fake = s.path / "libnccl.so.2";
  std::ofstream(fake) << std::string(4096, 'x');
  CHECK_THAT(with_library(fake.string()),
             Contains("NCCL could not be loaded (" + fake.string() + ": invalid ELF header)"));
  CHECK_THAT(with_library("libm.so.6"), Contains("libm.so.6: it has no ncclGetUniqueId (an NCCL older than 2.4?)"));
}

TEST_CASE("the NCCL communicator is the real build's; the emulated backend says so and keeps MPI's",
          "[distributed]") {
  // The tests run the emulated backend, where NCCL cannot run: the trainer's ranks use the MPI
  // communicator (its all-reduce stages device memory through the host: the emulated-CUDA
  // mpirun case above) and make_nccl refuses.
  CHECK_FALSE(comm::nccl_built());
  CHECK_THROWS_WITH(comm::make_nccl(comm::make_single(), 60), Contains("NCCL cannot run on the emulated CUDA backend"));
}
