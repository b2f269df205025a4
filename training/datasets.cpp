#include "training/datasets.h"

#include <fmt/format.h>

#include <stdexcept>

#include "data/cifar.h"
#include "data/idx.h"
#include "data/synthetic.h"

namespace bulwark::training {

namespace {
// A whole split of a file-backed dataset, or `synthetic_n` generated samples.
data::Dataset load_split(const DataConfig& d, bool train, int64_t synthetic_n) {
  if (d.dataset == "synthetic") return data::make_synthetic_split(synthetic_n, d.data_seed, train);
  if (d.dataset == "mnist") return data::load_mnist(d.data_dir, train);
  if (d.dataset == "fashion-mnist") return data::load_fashion_mnist(d.data_dir, train);
  if (d.dataset == "cifar10") return data::load_cifar10(d.data_dir, train);
  if (d.dataset == "cifar100") return data::load_cifar100(d.data_dir, train);
  throw std::invalid_argument(fmt::format("unknown dataset '{}'", d.dataset));
}
}  // namespace

RunData load_run_data(TrainConfig& cfg) {
  DataConfig& d = cfg.data;
  const int64_t synthetic_train = d.train_size > 0 ? d.train_size : kSyntheticTrainSize;
  data::Dataset full = load_split(d, true, synthetic_train + d.val_size);
  const int64_t available = full.n - d.val_size;
  if (available < 1)
    throw std::invalid_argument(fmt::format("--val-size {} holds out all {} training samples of {}; lower it",
                                            d.val_size, full.n, full.name));
  if (d.train_size > available)
    throw std::invalid_argument(fmt::format("--train-size {} is more than the {} samples {} has besides the "
                                            "--val-size {} hold-out",
                                            d.train_size, available, full.name, d.val_size));
  d.train_size = d.train_size > 0 ? d.train_size : available;

  RunData r;
  r.train = full.slice(0, d.train_size);
  r.val = full.slice(full.n - d.val_size, d.val_size);
  r.test = load_test_split(d, d.test_size);
  d.test_size = r.test.n;

  const data::Dataset& t = r.train;
  if (r.test.c != t.c || r.test.h != t.h || r.test.w != t.w || r.test.num_classes != t.num_classes)
    throw std::runtime_error(fmt::format("{} and {} differ in shape or classes", t.name, r.test.name));
  cfg.input = {t.c, t.h, t.w, t.num_classes, {t.mean.begin(), t.mean.end()}, {t.stdev.begin(), t.stdev.end()}};
  return r;
}

data::Dataset load_test_split(const DataConfig& d, int64_t size) {
  data::Dataset test = load_split(d, false, size > 0 ? size : kSyntheticTestSize);
  if (size == 0 || size == test.n) return test;
  if (size > test.n)
    throw std::invalid_argument(fmt::format("--test-size {} is more than the {} samples of {}", size, test.n, test.name));
  return test.slice(0, size);
}

}  // namespace bulwark::training
