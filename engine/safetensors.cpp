#include "engine/safetensors.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

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
  const uint64_t data_start = 8 + hlen, data_size = size - data_start;
  SafetensorsFile file;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (auto& [k, v] : entry.items()) file.metadata[k] = v.get<std::string>();
      continue;
    }
    const StoredDType stored = parse_dtype(entry.at("dtype").get<std::string>(), path, name);
    const DType dt = stored.dtype;
    const Shape shape = entry.at("shape").get<Shape>();
    const auto offs = entry.at("data_offsets").get<std::vector<uint64_t>>();
    const uint64_t expect = shape_numel(shape) * stored.file_size;
    if (offs.size() != 2 || offs[1] < offs[0] || offs[1] - offs[0] != expect)
      throw std::runtime_error(fmt::format("{}: tensor '{}' {} needs {} bytes, its offsets say otherwise", path, name, shape_str(shape), expect));
    if (offs[1] > data_size)
      throw std::runtime_error(fmt::format("{}: tensor '{}' ends at byte {} of a {}-byte data section: truncated file?", path, name, offs[1], data_size));
    Tensor t = Tensor::empty(shape, dt);
    in.seekg(static_cast<std::streamoff>(data_start + offs[0]));
    if (stored.file_size == dtype_size(dt)) {
      in.read(static_cast<char*>(t.impl()->storage->data), static_cast<std::streamsize>(expect));
    } else {
      std::vector<char> bytes(expect);
      in.read(bytes.data(), static_cast<std::streamsize>(expect));
      if (in) narrow_i64(bytes, t, path, name);
    }
    if (!in) throw std::runtime_error(fmt::format("{}: reading tensor '{}' failed", path, name));
    file.tensors.emplace(name, t);
  }
  return file;
}

}  // namespace bulwark
