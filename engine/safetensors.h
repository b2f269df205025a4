#pragma once
// safetensors I/O (the format of Hugging Face's `safetensors`): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {string: string}}, then the raw little-endian tensor bytes. Files written here load in
// PyTorch with safetensors.torch.load_file, and vice versa (F32, F64 and I32 tensors; I64, which PyTorch
// writes for integer buffers such as num_batches_tracked, is read into i32 when it fits).
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace bulwark {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Writes atomically: to `path + ".tmp"`, flushed, then renamed over `path`, so an interrupted
// write never leaves a truncated file where a good one was. `before_rename`, when given, runs
// between the two (tests reach that moment through it).
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      const std::function<void()>& before_rename = {});

// Validates the header, dtypes, shapes and offsets against the file size; errors name the file
// and what is wrong.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace bulwark
