// The CUDA backend's runtime: device detection, the caching allocator, copies, the stream.
//
// Allocator. cudaMalloc/cudaFree synchronise the whole device and cost tens of microseconds, and
// a training step allocates hundreds of temporaries of a few recurring sizes. So freed blocks go
// to a free list keyed by their size class and are handed out again to the next request of that
// class, without touching the driver (PyTorch's CUDACachingAllocator, minus block splitting).
// Size classes: multiples of 512 bytes up to 1 MiB, then powers of two (at most 2x waste for big
// blocks, which are few). All work is queued on one stream, so a block freed on the host while
// kernels that use it are still queued is safe to hand out again: the next user's kernels run
// after them on the same stream. No host synchronisation anywhere on this path; never managed
// memory. When cudaMalloc fails the cache is released and the allocation retried once.
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

size_t size_class(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(1) << 20;
  if (bytes <= kLarge) return (bytes + kSmall - 1) / kSmall * kSmall;
  size_t c = kLarge;
  while (c < bytes) c <<= 1;
  return c;
}

class CachingAllocator {
 public:
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[cls];
    if (!list.empty()) {
      void* p = list.back();
      list.pop_back();
      live_[p] = cls;
      return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky error, give the cache back, try once more
      release_cached_locked();
      err = cudaMalloc(&p, cls);
    }
    if (err != cudaSuccess)
      throw std::runtime_error("CUDA out of memory: could not allocate " + std::to_string(cls) +
                               " bytes (" + cudaGetErrorString(err) + ")");
    live_[p] = cls;
    return p;
  }

  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) throw std::logic_error("cuda::device_free: pointer not from cuda::device_malloc");
    free_[it->second].push_back(p);
    live_.erase(it);
  }

 private:
  void release_cached_locked() {
    (void)cudaDeviceSynchronize();  // blocks in the cache may still be used by queued kernels
    for (auto& [cls, list] : free_)
      for (void* p : list) (void)cudaFree(p);
    free_.clear();
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> live_;
};

// Leaked on purpose: tensors freed during static destruction must still find it, and the CUDA
// runtime may already be shut down by then (the driver reclaims the memory at exit).
CachingAllocator& allocator() {
  static auto* a = new CachingAllocator;
  return *a;
}

}  // namespace

bool device_available(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    return false;
  }
  if (count == 0) {
    if (why) *why = "no CUDA device found";
    return false;
  }
  return true;
}

bool emulated() {
#if defined(BULWARK_EMU)
  return true;
#else
  return false;
#endif
}

// The legacy default stream orders every launch after the previous one, which is what the
// allocator above relies on. (A dedicated non-blocking stream per thread is the next step when
// copies should overlap compute.)
cudaStream_t current_stream() { return 0; }

void* device_malloc(size_t bytes) { return allocator().allocate(bytes); }
void device_free(void* p) { allocator().release(p); }

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, current_stream()), "copy to device");
}
// A copy to pageable host memory returns when the data is there: the one place the host waits.
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}
void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()), "device copy");
}
void synchronize() { check(cudaStreamSynchronize(current_stream()), "synchronize"); }

}  // namespace bulwark::cuda
