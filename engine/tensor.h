#pragma once
// Tensor: a reference-counted view (shape, strides, offset) over a reference-counted storage.
//
// A Tensor is a handle: copying it shares the same TensorImpl (like torch.Tensor). Views
// (reshape of contiguous data, transpose, permute, slice, expand) share the storage and have
// their own shape/strides. Autograd state (requires_grad, grad_fn, grad) lives on the TensorImpl.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace bulwark {

enum class DType : uint8_t { f32, f64, i32 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// Raw memory. CPU storage is 64-byte aligned so the kernels can use aligned vector loads.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  Storage(size_t nbytes, Device dev);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// Bytes held by tensor storages on a device: now, and the most since the last reset_peak_memory
// (the trainer's memory estimate measures training steps with them).
struct MemoryStats {
  int64_t live = 0, peak = 0;
  // Storage the allocator's cache could not serve, so far: fresh host memory (CPU) or a
  // cudaMalloc (CUDA). A training step in its steady state adds none.
  uint64_t system_allocations = 0;
};
MemoryStats memory_stats(Device dev);
void reset_peak_memory(Device dev);

struct Node;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  Device device = Device::cpu;
  bool requires_grad = false;       // leaf flag, or "has a grad_fn" for results of ops
  std::shared_ptr<Node> grad_fn;    // the op that produced this tensor (null for leaves)
  std::shared_ptr<TensorImpl> grad;  // accumulated by backward() on leaves
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- factories -------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<double>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<int32_t>& v, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::f32);

  // --- metadata --------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return static_cast<int64_t>(impl_->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->device; }
  int64_t offset() const { return impl_->offset; }
  bool is_contiguous() const;
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  std::string str() const;  // "f32[128, 3, 32, 32]"

  template <class T> T* data() const;       // pointer to element 0 of the view
  double item() const;                      // value of a one-element tensor (CUDA: copied to the host)
  std::vector<float> to_vector() const;     // row-major copy of the values (f32 result)
  std::vector<double> to_vector_f64() const;
  std::vector<int32_t> to_vector_i32() const;

  // --- autograd ------------------------------------------------------------------------------
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool on);
  Tensor grad() const { return Tensor(impl_->grad); }
  void zero_grad() { impl_->grad.reset(); }
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor detach() const;  // shares storage, no history

  // --- views and copies (differentiable; see ops.h for the rest of the op API) -------------
  Tensor contiguous() const;
  Tensor reshape(const Shape& shape) const;  // a view when contiguous, else a copy
  Tensor flatten(int64_t start_dim = 1) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor expand(const Shape& shape) const;
  Tensor to(DType dtype) const;
  // A copy on `dev` (the tensor itself when already there), through cuda::copy_to_device /
  // copy_to_host; differentiable: the gradient moves back to this tensor's device.
  Tensor to(Device dev) const;
  Tensor cuda() const { return to(Device::cuda); }
  Tensor cpu() const { return to(Device::cpu); }
  Tensor clone() const;

  // --- in-place, outside autograd (optimizers, data loading, attacks' projections) ---------
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& add_i32_(int32_t value);  // i32, contiguous: every element += value on its device (a counter)

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Views share storage with `base`; used by the view ops.
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset);

// The argument checks ops begin with, for the layers above too; std::invalid_argument naming `op`.
void require_float(const Tensor& t, const char* op);  // defined, f32 or f64, on any device
// `b` is on `a`'s device (no op mixes devices).
void require_same_device(const Tensor& a, const Tensor& b, const char* op);

}  // namespace bulwark
