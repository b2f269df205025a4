#pragma once
// Helpers shared by the test files.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

#include "training/config.h"

namespace bulwark::testing {

// A small run on the synthetic data, on the CPU with one thread, quiet enough for a test: 96
// training samples in batches of 32 for 1 epoch, 32 validation (16 attacked by PGD-2), 32 test
// (16 attacked by PGD-2), the method's eps 4/255. Callers change what their test is about.
inline training::TrainConfig synthetic_run(const std::string& model, const std::string& method, const std::string& out) {
  training::TrainConfig c;
  c.model = model;
  c.data.dataset = "synthetic";
  c.data.train_size = 96;
  c.data.val_size = 32;
  c.data.test_size = 32;
  c.epochs = 1;
  c.batch_size = 32;
  c.robust_val_size = 16;
  c.robust_val_steps = 2;
  c.final_attack_size = 16;
  c.final_attack_steps = 2;
  c.method.name = method;
  c.method.options.set("eps", 4.0 / 255);
  c.threads = 1;
  c.device = "cpu";
  c.out = out;
  return c;
}

// A fresh, empty directory under the system temp folder, removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "tmp") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("bulwark-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace bulwark::testing
