#include "engine/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <tuple>

namespace bulwark {

namespace {
const char* st_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
  }
  return "?";
}
// How a stored dtype is read: its size in the file, and the engine dtype it becomes. I64 (PyTorch's
// integer buffers, such as BatchNorm's num_batches_tracked) is narrowed to i32, checked.
struct StoredDType {
  DType dtype;
  size_t file_size;
};
StoredDType parse_dtype(const std::string& s, const std::string& path, const std::string& name) {
  if (s == "F32") return {DType::f32, 4};
  if (s == "F64") return {DType::f64, 8};
  if (s == "I32") return {DType::i32, 4};
  if (s == "I64") return {DType::i32, 8};
  throw std::runtime_error(
      fmt::format("{}: tensor '{}' has dtype {}, bulwark reads F32, F64, I32 and I64 (as i32)", path, name, s));
}

// Little-endian int64 values into i32, or an error naming the tensor and the value.
void narrow_i64(const std::vector<char>& bytes, Tensor& out, const std::string& path, const std::string& name) {
  int32_t* dst = out.data<int32_t>();
  for (size_t i = 0; i < bytes.size() / 8; ++i) {
    int64_t v = 0;
    std::memcpy(&v, bytes.data() + 8 * i, 8);
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      throw std::runtime_error(fmt::format("{}: I64 tensor '{}' holds {}, beyond bulwark's 32-bit integers", path, name, v));
    dst[i] = static_cast<int32_t>(v);
  }
}

// One tensor's header entry, checked before anything is allocated: a hostile file cannot make the
// reader allocate more than its own data section holds.
struct TensorEntry {
  StoredDType stored;
  Shape shape;
  uint64_t begin = 0, bytes = 0;
};
TensorEntry tensor_entry(const nlohmann::json& entry, uint64_t data_size, const std::string& path, const std::string& name) {
  const auto bad = [&](const std::string& what) {
    return std::runtime_error(fmt::format("{}: tensor '{}' {}", path, name, what));
  };
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
    throw bad("is not an object with dtype, shape and data_offsets");
  const nlohmann::json &dtype = entry["dtype"], &shape = entry["shape"], &offsets = entry["data_offsets"];
  if (!dtype.is_string()) throw bad("has a dtype that is not a string");
  TensorEntry e;
  e.stored = parse_dtype(dtype.get<std::string>(), path, name);
  if (!shape.is_array()) throw bad("has a shape that is not a list");
  // The element count, bounded as it grows (by the data section, or 2^32 for the other dimensions
  // of an empty tensor), so neither it nor the strides made from the shape can overflow.
  const uint64_t limit = std::max<uint64_t>(data_size, uint64_t{1} << 32);
  uint64_t numel = 1;
  bool empty = false;
  for (const nlohmann::json& d : shape) {
    if (!d.is_number_unsigned()) throw bad(fmt::format("has a dimension {} that is not a non-negative integer", d.dump()));
    const uint64_t n = d.get<uint64_t>();
    if (n == 0) {
      empty = true;
    } else if (numel > limit / n) {
      throw bad(fmt::format("has shape {}, more elements than the file's {} data bytes hold", shape.dump(), data_size));
    } else {
      numel *= n;
    }
    e.shape.push_back(static_cast<int64_t>(n));
  }
  if (empty) numel = 0;
  e.bytes = numel * e.stored.file_size;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
    throw bad("has data_offsets that are not two non-negative integers");
  e.begin = offsets[0].get<uint64_t>();
  const uint64_t end = offsets[1].get<uint64_t>();
  if (end < e.begin || end - e.begin != e.bytes)
    throw bad(fmt::format("{} needs {} bytes, its offsets say otherwise", shape_str(e.shape), e.bytes));
  if (end > data_size)
    throw bad(fmt::format("ends at byte {} of a {}-byte data section: truncated file?", end, data_size));
  return e;
}
}  // namespace

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata, const std::function<void()>& before_rename) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> bodies;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.contains(name)) throw std::invalid_argument(fmt::format("save_safetensors: duplicate name '{}'", name));
    const Tensor c = t.detach().cpu().contiguous();  // a cuda tensor is written from a host copy
    const size_t bytes = c.numel() * dtype_size(c.dtype());
    header[name] = {{"dtype", st_dtype(c.dtype())}, {"shape", c.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    bodies.push_back(c);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  const uint64_t hlen = h.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hlen >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const Tensor& c : bodies)
      out.write(static_cast<const char*>(c.impl()->storage->data) + c.offset() * dtype_size(c.dtype()),
                static_cast<std::streamsize>(c.numel() * dtype_size(c.dtype())));
    out.flush();
    if (!out) throw std::runtime_error(fmt::format("writing {} failed: {}", tmp, std::strerror(errno)));
  }
  if (before_rename) before_rename();
  std::filesystem::rename(tmp, path);
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  const uint64_t size = std::filesystem::file_size(path);
  if (size < 8) throw std::runtime_error(fmt::format("{}: {} bytes is too short for a safetensors file", path, size));
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (hlen > size - 8)
    throw std::runtime_error(fmt::format("{}: header length {} exceeds the file size {}: truncated or not safetensors", path, hlen, size));
  std::string h(hlen, '\0');
  in.read(h.data(), static_cast<std::streamsize>(hlen));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(h);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: header is not valid JSON ({})", path, e.what()));
  }
  if (!header.is_object())
    throw std::runtime_error(fmt::format("{}: header is JSON but not an object of tensors", path));
  const uint64_t data_start = 8 + hlen, data_size = size - data_start;
  SafetensorsFile file;
  std::vector<std::pair<std::string, TensorEntry>> entries;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw std::runtime_error(fmt::format("{}: __metadata__ is not an object", path));
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw std::runtime_error(fmt::format("{}: metadata '{}' is not a string", path, k));
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    entries.emplace_back(name, tensor_entry(entry, data_size, path, name));
  }
  // No two tensors share bytes (the format's rule), so all of them together take at most the
  // data section's size in memory, whatever the header says.
  std::vector<std::tuple<uint64_t, uint64_t, const std::string*>> ranges;  // begin, end, name
  for (const auto& [name, e] : entries)
    if (e.bytes > 0) ranges.emplace_back(e.begin, e.begin + e.bytes, &name);
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (std::get<0>(ranges[i]) < std::get<1>(ranges[i - 1]))
      throw std::runtime_error(fmt::format("{}: tensors '{}' and '{}' overlap in the data section", path,
                                           *std::get<2>(ranges[i - 1]), *std::get<2>(ranges[i])));
  for (const auto& [name, e] : entries) {
    Tensor t = Tensor::empty(e.shape, e.stored.dtype);
    in.seekg(static_cast<std::streamoff>(data_start + e.begin));
    if (e.stored.file_size == dtype_size(e.stored.dtype)) {
      in.read(static_cast<char*>(t.impl()->storage->data), static_cast<std::streamsize>(e.bytes));
    } else {
      std::vector<char> bytes(e.bytes);
      in.read(bytes.data(), static_cast<std::streamsize>(e.bytes));
      if (in) narrow_i64(bytes, t, path, name);
    }
    if (!in) throw std::runtime_error(fmt::format("{}: reading tensor '{}' failed", path, name));
    file.tensors.emplace(name, t);
  }
  return file;
}

}  // namespace bulwark
