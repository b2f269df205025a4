// Tensor storage, factories, metadata and the view ops.
#include "engine/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <unordered_map>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"

namespace bulwark {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
  }
  return 0;
}
const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
  }
  return "?";
}
const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
int64_t shape_numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<int64_t>());
}
Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= s[d];
  }
  return st;
}

namespace {
// A cache of freed CPU blocks. A training step allocates the same sizes every iteration, and
// glibc serves blocks above its mmap threshold (32 MiB at most) fresh from the kernel each time:
// first touching a 33 MiB block (cnn7's first activations at batch 128) costs 8192 page faults,
// measured at 17 ms of CPU on the 2-core dev VM, more than a BatchNorm pass over it. Freed blocks
// are kept by exact (64-byte rounded) size and handed out again, small ones too, so that a step
// in its steady state allocates nothing (MemoryStats::system_allocations); when keeping one would
// exceed kMaxBytes the cache is emptied first, so it never holds more than that.
class BlockCache {
 public:
  static constexpr size_t kMaxBytes = size_t{2} << 30;
#if defined(__SANITIZE_ADDRESS__)
  static constexpr bool kEnabled = false;  // a reused block would hide use-after-free from ASan
#else
  static constexpr bool kEnabled = true;
#endif

  void* take(size_t bytes) {
    if (!kEnabled) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.find(bytes);
    if (it == blocks_.end()) return nullptr;
    void* p = it->second;
    blocks_.erase(it);
    cached_ -= bytes;
    return p;
  }
  // false: not kept (the cache is off, or the block is larger than the whole cache), the caller frees it
  bool give(void* p, size_t bytes) {
    if (!kEnabled || bytes > kMaxBytes) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ + bytes > kMaxBytes) {
      for (auto& [size, block] : blocks_) std::free(block);
      blocks_.clear();
      cached_ = 0;
    }
    blocks_.emplace(bytes, p);
    cached_ += bytes;
    return true;
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> blocks_;
  size_t cached_ = 0;
};

// Never destroyed: tensors held in other static objects may be freed after it would be.
BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache;
  return *cache;
}

size_t rounded_bytes(size_t nbytes) { return ((nbytes + 63) / 64) * 64; }
}  // namespace

// CUDA storage comes from the backend's allocator (cuda::device_malloc: the stream-ordered
// caching allocator of kernels/cuda/runtime.cu; host memory in the emulated backend).
namespace {
// Bytes of live storages per device (cpu, cuda), and the most since the last reset.
std::atomic<int64_t> g_live[2], g_peak[2];
std::atomic<uint64_t> g_host_system_allocations{0};

void count_allocation(Device dev, int64_t bytes) {
  const int d = dev == Device::cuda ? 1 : 0;
  const int64_t now = g_live[d].fetch_add(bytes) + bytes;
  int64_t peak = g_peak[d].load();
  while (now > peak && !g_peak[d].compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

MemoryStats memory_stats(Device dev) {
  const int d = dev == Device::cuda ? 1 : 0;
  return {g_live[d].load(), g_peak[d].load(),
          dev == Device::cuda ? cuda::device_system_allocations() : g_host_system_allocations.load()};
}

void reset_peak_memory(Device dev) {
  const int d = dev == Device::cuda ? 1 : 0;
  g_peak[d].store(g_live[d].load());
}

Storage::Storage(size_t nbytes, Device dev) : bytes(nbytes), device(dev) {
  if (dev == Device::cuda) {
    if (nbytes) data = cuda::device_malloc(nbytes);
    count_allocation(dev, static_cast<int64_t>(nbytes));
    return;
  }
  const size_t rounded = rounded_bytes(nbytes);
  if (!rounded) return;
  data = block_cache().take(rounded);
  if (!data) {
    data = std::aligned_alloc(64, rounded);
    if (!data) throw std::bad_alloc();
    g_host_system_allocations.fetch_add(1, std::memory_order_relaxed);
  }
  count_allocation(dev, static_cast<int64_t>(rounded));
}
Storage::~Storage() {
  g_live[device == Device::cuda ? 1 : 0] -= static_cast<int64_t>(device == Device::cuda ? bytes : rounded_bytes(bytes));
  if (device == Device::cuda) {
    if (data) cuda::device_free(data);
    return;
  }
  if (data && !block_cache().give(data, rounded_bytes(bytes))) std::free(data);
}

// ---- factories -----------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument(fmt::format("negative dimension in shape {}", shape_str(shape)));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), dev);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  impl->device = dev;
  return Tensor(std::move(impl));
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device dev) { return full(shape, 0.0, dtype, dev); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device dev) { return full(shape, 1.0, dtype, dev); }
Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  t.fill_(value);
  return t;
}
Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

template <class T>
static Tensor from_vec(const std::vector<T>& v, const Shape& shape, DType dt) {
  if (static_cast<int64_t>(v.size()) != shape_numel(shape))
    throw std::invalid_argument(fmt::format("from_vector: {} values for shape {}", v.size(), shape_str(shape)));
  Tensor t = Tensor::empty(shape, dt);
  if (!v.empty()) std::memcpy(t.data<T>(), v.data(), v.size() * sizeof(T));
  return t;
}
Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& s) { return from_vec(v, s, DType::f32); }
Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& s) { return from_vec(v, s, DType::f64); }
Tensor Tensor::from_vector(const std::vector<int32_t>& v, const Shape& s) { return from_vec(v, s, DType::i32); }

// ---- metadata ------------------------------------------------------------------------------

int64_t Tensor::size(int64_t d) const { return impl_->shape[normalize_dim(d, dim())]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (impl_->shape[d] != 1 && impl_->strides[d] != expect) return false;
    expect *= impl_->shape[d];
  }
  return true;
}

std::string Tensor::str() const {
  if (!impl_) return "undefined";
  return fmt::format("{}{}", dtype_name(dtype()), shape_str(shape()));
}

template <class T>
static DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else return DType::i32;
}

template <class T>
T* Tensor::data() const {
  if (impl_->dtype != dtype_of<T>())
    throw std::logic_error(fmt::format("data<{}>() on a {} tensor", dtype_name(dtype_of<T>()), str()));
  return static_cast<T*>(impl_->storage->data) + impl_->offset;
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int32_t* Tensor::data<int32_t>() const;

double Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument(fmt::format("item() on {} with {} elements", str(), numel()));
  if (device() != Device::cpu) return detach().to(Device::cpu).item();  // synchronising copy to the host
  switch (dtype()) {
    case DType::f32: return *data<float>();
    case DType::f64: return *data<double>();
    case DType::i32: return *data<int32_t>();
  }
  return 0;
}

template <class T>
static std::vector<T> values_as(const Tensor& t) {
  // A CUDA tensor is copied to the host first (synchronising), then converted there.
  const Tensor c = (t.device() == Device::cpu ? t : t.detach().to(Device::cpu)).contiguous().to(dtype_of<T>());
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
std::vector<float> Tensor::to_vector() const { return values_as<float>(*this); }
std::vector<double> Tensor::to_vector_f64() const { return values_as<double>(*this); }
std::vector<int32_t> Tensor::to_vector_i32() const { return values_as<int32_t>(*this); }

// ---- autograd glue -------------------------------------------------------------------------

Tensor& Tensor::set_requires_grad(bool on) {
  if (on && dtype() == DType::i32) throw std::invalid_argument("integer tensors cannot require grad");
  if (!on && impl_->grad_fn) throw std::invalid_argument("set_requires_grad(false) on a non-leaf; use detach()");
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->device = base.device();
  return Tensor(std::move(impl));
}

// ---- views and copies ----------------------------------------------------------------------

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), dtype(), device());
  copy_strided(*this, out);
  return record(out, "contiguous", {*this}, [](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g};
  });
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  copy_strided(*this, out);
  return record(out, "clone", {*this}, [](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g};
  });
}

Tensor Tensor::reshape(const Shape& new_shape_in) const {
  Shape new_shape = new_shape_in;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < new_shape.size(); ++i) {
    if (new_shape[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: more than one -1");
      infer = static_cast<int64_t>(i);
    } else {
      known *= new_shape[i];
    }
  }
  if (infer >= 0) new_shape[infer] = known ? numel() / known : 0;
  if (shape_numel(new_shape) != numel())
    throw std::invalid_argument(fmt::format("reshape: cannot view {} as {}", str(), shape_str(new_shape_in)));
  if (!is_contiguous()) return contiguous().reshape(new_shape);
  const Shape old = shape();
  Tensor out = make_view(*this, new_shape, contiguous_strides(new_shape), offset());
  return record(out, "reshape", {*this}, [old](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.reshape(old)};
  });
}

Tensor Tensor::flatten(int64_t start_dim) const {
  start_dim = normalize_dim(start_dim, dim());
  Shape s(shape().begin(), shape().begin() + start_dim);
  int64_t rest = 1;
  for (int64_t d = start_dim; d < dim(); ++d) rest *= shape()[d];
  s.push_back(rest);
  return reshape(s);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims_in) const {
  if (static_cast<int64_t>(dims_in.size()) != dim())
    throw std::invalid_argument(fmt::format("permute: {} dims given for {}", dims_in.size(), str()));
  std::vector<int64_t> dims(dims_in.size()), inverse(dims_in.size());
  Shape s(dim()), st(dim());
  std::vector<bool> used(dim(), false);
  for (int64_t i = 0; i < dim(); ++i) {
    dims[i] = normalize_dim(dims_in[i], dim());
    if (used[dims[i]]) throw std::invalid_argument("permute: repeated dimension");
    used[dims[i]] = true;
    s[i] = shape()[dims[i]];
    st[i] = strides()[dims[i]];
    inverse[dims[i]] = i;
  }
  Tensor out = make_view(*this, s, st, offset());
  return record(out, "permute", {*this}, [inverse](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.permute(inverse)};
  });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[normalize_dim(d0, dim())], dims[normalize_dim(d1, dim())]);
  return permute(dims);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = normalize_dim(d, dim());
  const int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  if (start < 0 || start > end)
    throw std::invalid_argument(fmt::format("slice [{}, {}) out of range for dim {} of {}", start, end, d, str()));
  Shape s = shape();
  s[d] = end - start;
  Tensor out = make_view(*this, s, strides(), offset() + start * strides()[d]);
  const Shape full = shape();
  out = record(out, "slice", {*this}, [full, d, start](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{slice_backward(g, full, d, start)};
  });
  // The slice is one contiguous block of its base when every dim before d has size 1 (d = 0
  // included); then its gradient can be added into the base's gradient in place. A slice along
  // an inner dim keeps the plain backward.
  Node* node = out.impl()->grad_fn.get();
  if (node && std::all_of(full.begin(), full.begin() + d, [](int64_t size) { return size == 1; })) {
    node->accumulate_into = [full, d, start](Tensor& acc, const Tensor& g) {
      if (!acc.defined()) acc = Tensor::zeros(full, g.dtype(), g.device());
      Tensor block = acc.slice(d, start, start + g.shape()[d]);
      if (block.numel() > 0) block.copy_(add(block, g));
    };
  }
  return out;
}

Tensor Tensor::expand(const Shape& target) const {
  if (static_cast<int64_t>(target.size()) < dim())
    throw std::invalid_argument(fmt::format("expand: {} to fewer dims {}", str(), shape_str(target)));
  const int64_t lead = static_cast<int64_t>(target.size()) - dim();
  Shape st(target.size(), 0);
  for (int64_t i = 0; i < dim(); ++i) {
    const int64_t have = shape()[i], want = target[lead + i];
    if (have == want)
      st[lead + i] = strides()[i];
    else if (have != 1)
      throw std::invalid_argument(fmt::format("expand: cannot expand {} to {}", str(), shape_str(target)));
  }
  const Shape orig = shape();
  Tensor out = make_view(*this, target, st, offset());
  return record(out, "expand", {*this}, [orig](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{sum_to(g, orig)};
  });
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  const Tensor src = contiguous();
  Tensor out = empty(shape(), dt, device());
  convert_dtype(src, out);
  if (dt == DType::i32 || dtype() == DType::i32) return out;  // integers carry no gradient
  const DType orig = dtype();
  return record(out, "to", {*this}, [orig](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.to(orig)};
  });
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  const Tensor src = detach().contiguous();
  Tensor out = empty(shape(), dtype(), dev);
  const size_t es = dtype_size(dtype()), nbytes = static_cast<size_t>(numel()) * es;
  if (nbytes) {
    const void* from = static_cast<const char*>(src.impl()->storage->data) + src.offset() * es;
    void* to = out.impl()->storage->data;
    if (dev == Device::cuda)
      cuda::copy_to_device(to, from, nbytes);
    else
      cuda::copy_to_host(to, from, nbytes);
  }
  if (dtype() == DType::i32) return out;  // integers carry no gradient
  const Device orig = device();
  return record(out, "to_device", {*this}, [orig](const Node&, const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.to(orig)};
  });
}

Tensor& Tensor::copy_(const Tensor& src) {
  if (src.shape() != shape())
    throw std::invalid_argument(fmt::format("copy_: source {} into {}", src.str(), str()));
  if (!is_contiguous()) throw std::invalid_argument("copy_: destination must be contiguous");
  if (src.device() != device()) return copy_(src.detach().to(device()));  // cross-device: move, then copy
  const Tensor s = src.dtype() == dtype() ? src : src.detach().to(dtype());
  copy_strided(s, *this);
  return *this;
}

Tensor& Tensor::fill_(double value) {
  if (!is_contiguous()) throw std::invalid_argument("fill_: tensor must be contiguous");
  if (device() == Device::cuda) {
    switch (dtype()) {
      case DType::f32: cuda::fill(data<float>(), numel(), static_cast<float>(value)); break;
      case DType::i32: cuda::fill_i32(data<int32_t>(), numel(), static_cast<int32_t>(value)); break;
      default: require_cuda_dtype(dtype(), "fill_");
    }
    return *this;
  }
  switch (dtype()) {
    case DType::f32: cpu::fill(data<float>(), numel(), static_cast<float>(value)); break;
    case DType::f64: cpu::fill(data<double>(), numel(), value); break;
    case DType::i32: cpu::fill(data<int32_t>(), numel(), static_cast<int32_t>(value)); break;
  }
  return *this;
}

Tensor& Tensor::add_i32_(int32_t value) {
  if (dtype() != DType::i32 || !is_contiguous())
    throw std::invalid_argument("add_i32_: needs a contiguous i32 tensor, got " + str());
  if (device() == Device::cuda) {
    cuda::add_i32(data<int32_t>(), numel(), value);
    return *this;
  }
  int32_t* p = data<int32_t>();
  for (int64_t i = 0; i < numel(); ++i) p[i] += value;
  return *this;
}

}  // namespace bulwark
