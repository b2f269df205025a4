// The emulated CUDA runtime (runtime.h): device memory as tracked host memory, synchronous
// streams and host-clock events, an H100's properties, and CUDA's error reporting.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "kernels/emu/emu.h"
#include "kernels/emu/internal.h"

struct CUstream_st {
  unsigned flags;
};
struct CUevent_st {
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point time;
};
struct CUmemPoolHandle_st {
  unsigned long long release_threshold;
};

namespace bulwark::emu {
namespace {

constexpr size_t kDeviceMemoryBytes = 80ull << 30;  // an 80 GB H100: larger requests fail like on one

enum class Kind { device, pinned_host };
struct Allocation {
  size_t bytes;
  Kind kind;
};

struct RuntimeState {
  std::mutex mutex;
  std::map<uintptr_t, Allocation> allocations;  // by start address
  size_t device_bytes = 0, device_count = 0;
  std::set<const CUstream_st*> streams;
  std::set<const CUevent_st*> events;
  std::map<const void*, size_t> max_dynamic_shared;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  CUmemPoolHandle_st default_pool{0};
};
RuntimeState& rt() {
  static RuntimeState s;
  return s;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_detail_code = cudaSuccess;
thread_local std::string t_detail;

cudaError_t record(cudaError_t code, const std::string& detail) {
  t_last_error = code;
  t_detail_code = code;
  t_detail = std::string(cudaGetErrorString(code)) + ": " + detail;
  return code;
}

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// The allocation containing [p, p + bytes), if any (requires the mutex).
const std::pair<const uintptr_t, Allocation>* find_allocation(const void* p) {
  auto& allocs = rt().allocations;
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return nullptr;
  --it;
  if (a >= it->first + std::max<size_t>(it->second.bytes, 1)) return nullptr;
  return &*it;
}

bool in_device_memory(const void* p) {
  const auto* a = find_allocation(p);
  return a && a->second.kind == Kind::device;
}

// Whether [p, p + bytes) lies inside one device allocation; otherwise explains why not.
bool device_range(const void* p, size_t bytes, const char* what, std::string* why) {
  const auto* a = find_allocation(p);
  if (!a || a->second.kind != Kind::device) {
    *why = std::string(what) + " " + hex(p) + " is not device memory (not from cudaMalloc/cudaMallocAsync, or freed)";
    return false;
  }
  const size_t offset = reinterpret_cast<uintptr_t>(p) - a->first;
  if (offset + bytes > a->second.bytes) {
    *why = std::string(what) + " range of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
           " runs past the end of its " + std::to_string(a->second.bytes) + "-byte device allocation";
    return false;
  }
  return true;
}

cudaError_t allocate(void** ptr, size_t size, Kind kind, const char* api) {
  if (ptr == nullptr) return record(cudaErrorInvalidValue, std::string(api) + " with a null result pointer");
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(rt().mutex);
  if (kind == Kind::device && rt().device_bytes + size > kDeviceMemoryBytes)
    return record(cudaErrorMemoryAllocation, std::string(api) + " of " + std::to_string(size) + " bytes exceeds the " +
                                                 "emulated device's 80 GB (" + std::to_string(rt().device_bytes) +
                                                 " bytes in use)");
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0)
    return record(cudaErrorMemoryAllocation, std::string(api) + " of " + std::to_string(size) + " bytes: host allocation failed");
  if (kind == Kind::device && config().poison_device_memory && !config().record_only) std::memset(p, 0xff, size);
  rt().allocations[reinterpret_cast<uintptr_t>(p)] = Allocation{size, kind};
  if (kind == Kind::device) {
    rt().device_bytes += size;
    rt().device_count += 1;
  }
  *ptr = p;
  return cudaSuccess;
}

cudaError_t release(void* p, Kind kind, const char* api) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(rt().mutex);
  auto& allocs = rt().allocations;
  auto it = allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == allocs.end() || it->second.kind != kind)
    return record(cudaErrorInvalidValue, std::string(api) + "(" + hex(p) + ") is not the start of a live " +
                                             (kind == Kind::device ? "device" : "pinned host") +
                                             " allocation (freed twice, or never allocated there)");
  if (kind == Kind::device) {
    rt().device_bytes -= it->second.bytes;
    rt().device_count -= 1;
  }
  allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}

const char* kind_name(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "?";
}

cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* api) {
  if (count == 0) return cudaSuccess;
  std::string why;
  const std::string call = std::string(api) + "(" + kind_name(kind) + ", " + std::to_string(count) + " bytes): ";
  {
    std::lock_guard<std::mutex> lock(rt().mutex);
    if (kind == cudaMemcpyDefault) {
      if (in_device_memory(dst) && !device_range(dst, count, "destination", &why)) return record(cudaErrorInvalidValue, call + why);
      if (in_device_memory(src) && !device_range(src, count, "source", &why)) return record(cudaErrorInvalidValue, call + why);
    } else if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice ||
               kind == cudaMemcpyHostToHost) {
      const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
      const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
      if (dst_device && !device_range(dst, count, "destination", &why)) return record(cudaErrorInvalidValue, call + why);
      if (src_device && !device_range(src, count, "source", &why)) return record(cudaErrorInvalidValue, call + why);
      if (!dst_device && in_device_memory(dst))
        return record(cudaErrorInvalidValue, call + "destination " + hex(dst) + " is device memory but the kind says host");
      if (!src_device && in_device_memory(src))
        return record(cudaErrorInvalidValue, call + "source " + hex(src) + " is device memory but the kind says host");
    } else {
      return record(cudaErrorInvalidMemcpyDirection, call + "unknown copy kind " + std::to_string(static_cast<int>(kind)));
    }
    if (dst == nullptr || src == nullptr) return record(cudaErrorInvalidValue, call + "null pointer");
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t set(void* ptr, int value, size_t count, const char* api) {
  if (count == 0) return cudaSuccess;
  std::string why;
  {
    std::lock_guard<std::mutex> lock(rt().mutex);
    if (!device_range(ptr, count, "destination", &why))
      return record(cudaErrorInvalidValue, std::string(api) + "(" + std::to_string(count) + " bytes): " + why);
  }
  std::memset(ptr, value, count);
  return cudaSuccess;
}

bool valid_stream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  std::lock_guard<std::mutex> lock(rt().mutex);
  return rt().streams.count(s) != 0;
}

cudaError_t check_stream(cudaStream_t s, const char* api) {
  if (valid_stream(s)) return cudaSuccess;
  return record(cudaErrorInvalidResourceHandle, std::string(api) + ": " + hex(s) + " is not a live stream");
}

bool valid_event(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(rt().mutex);
  return e != nullptr && rt().events.count(e) != 0;
}

// Streams and events are heap objects whose addresses are the handles; `live` says which exist.
template <class Handle>
cudaError_t create_handle(Handle** out, Handle init, std::set<const Handle*>& live, const char* api) {
  if (!out) return record(cudaErrorInvalidValue, std::string(api) + " with a null pointer");
  auto* h = new Handle(init);
  std::lock_guard<std::mutex> lock(rt().mutex);
  live.insert(h);
  *out = h;
  return cudaSuccess;
}

template <class Handle>
cudaError_t destroy_handle(Handle* h, std::set<const Handle*>& live, const char* api) {
  std::lock_guard<std::mutex> lock(rt().mutex);
  if (!live.erase(h)) return record(cudaErrorInvalidResourceHandle, std::string(api) + "(" + hex(h) + "): not a live handle");
  delete h;
  return cudaSuccess;
}

}  // namespace

size_t device_bytes_in_use() {
  std::lock_guard<std::mutex> lock(rt().mutex);
  return rt().device_bytes;
}

size_t device_allocations_in_use() {
  std::lock_guard<std::mutex> lock(rt().mutex);
  return rt().device_count;
}

namespace detail {

bool is_device_accessible(const void* p) {
  std::lock_guard<std::mutex> lock(rt().mutex);
  auto& allocs = rt().allocations;
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return false;
  --it;
  return a <= it->first + it->second.bytes;  // one past the end is a valid (empty) range
}

bool is_valid_stream(cudaStream_t stream) { return valid_stream(stream); }

bool is_pinned_host(const void* p) {
  std::lock_guard<std::mutex> lock(rt().mutex);
  const auto* a = find_allocation(p);
  return a && a->second.kind == Kind::pinned_host;
}

cudaError_t record_error(cudaError_t code, const std::string& detail) { return record(code, detail); }
cudaError_t copy_now(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* api) {
  return copy(dst, src, count, kind, api);
}
cudaError_t set_now(void* ptr, int value, size_t count, const char* api) { return set(ptr, value, count, api); }

size_t max_dynamic_shared(const void* func) {
  std::lock_guard<std::mutex> lock(rt().mutex);
  auto it = rt().max_dynamic_shared.find(func);
  return it == rt().max_dynamic_shared.end() ? 0 : it->second;
}

cudaError_t memcpy_symbol(void* symbol, size_t symbol_bytes, void* host, size_t count, size_t offset, bool to_symbol) {
  if (offset + count > symbol_bytes)
    return record(cudaErrorInvalidValue, std::string(to_symbol ? "cudaMemcpyToSymbol" : "cudaMemcpyFromSymbol") + ": " +
                                             std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                                             " run past the " + std::to_string(symbol_bytes) + "-byte symbol");
  if (to_symbol) {
    std::memcpy(static_cast<unsigned char*>(symbol) + offset, host, count);
  } else {
    std::memcpy(host, static_cast<unsigned char*>(symbol) + offset, count);
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace bulwark::emu

using namespace bulwark::emu;
using namespace bulwark::emu::detail;

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == t_detail_code && !t_detail.empty()) return t_detail.c_str();
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidSymbol: return "invalid device symbol";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorCapturedEvent: return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unrecognized error code";
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidSymbol: return "cudaErrorInvalidSymbol";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorCapturedEvent: return "cudaErrorCapturedEvent";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "cudaErrorUnrecognized";
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return record(cudaErrorInvalidValue, "cudaGetDeviceCount with a null pointer");
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return record(cudaErrorInvalidValue, "cudaGetDevice with a null pointer");
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) return record(cudaErrorInvalidDevice, "the emulator has one device, 0; asked for " + std::to_string(device));
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return record(cudaErrorInvalidValue, "cudaGetDeviceProperties with a null pointer");
  if (device != 0) return record(cudaErrorInvalidDevice, "the emulator has one device, 0; asked for " + std::to_string(device));
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "bulwark CUDA emulator (H100 SXM limits)");
  prop->totalGlobalMem = kDeviceMemoryBytes;
  prop->sharedMemPerBlock = kSharedPerBlockDefault;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = static_cast<int>(kMaxThreadsPerBlock);
  for (int i = 0; i < 3; ++i) {
    prop->maxThreadsDim[i] = static_cast<int>(kMaxBlockDim[i]);
    prop->maxGridSize[i] = static_cast<int>(kMaxGridDim[i]);
  }
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->texturePitchAlignment = 32;
  prop->multiProcessorCount = kMultiprocessors;
  prop->canMapHostMemory = 1;
  prop->concurrentKernels = 1;
  prop->asyncEngineCount = 2;
  prop->unifiedAddressing = 1;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->streamPrioritiesSupported = 1;
  prop->globalL1CacheSupported = 1;
  prop->localL1CacheSupported = 1;
  prop->sharedMemPerMultiprocessor = kSharedPerMultiprocessor;
  prop->regsPerMultiprocessor = 65536;
  prop->cooperativeLaunch = 1;
  prop->sharedMemPerBlockOptin = kSharedPerBlockOptin;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->reservedSharedMemPerBlock = 1024;
  prop->memoryPoolsSupported = 1;
  prop->clusterLaunch = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return record(cudaErrorInvalidValue, "cudaDeviceGetAttribute with a null pointer");
  cudaDeviceProp p;
  if (const cudaError_t e = cudaGetDeviceProperties(&p, device); e != cudaSuccess) return e;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrTotalConstantMemory: *value = static_cast<int>(p.totalConstMem); break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = p.memoryBusWidth; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(p.sharedMemPerMultiprocessor); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrMemoryPoolsSupported: *value = p.memoryPoolsSupported; break;
    default: return record(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute " + std::to_string(static_cast<int>(attr)) + " is not emulated");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return capture_check_unsafe("cudaDeviceSynchronize", nullptr, false); }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return record(cudaErrorInvalidValue, "cudaMemGetInfo with a null pointer");
  *total_bytes = kDeviceMemoryBytes;
  *free_bytes = kDeviceMemoryBytes - device_bytes_in_use();
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (const cudaError_t e = capture_check_unsafe("cudaMalloc", nullptr, false); e != cudaSuccess) return e;
  return allocate(ptr, size, Kind::device, "cudaMalloc");
}
cudaError_t cudaFree(void* ptr) {
  if (const cudaError_t e = capture_check_unsafe("cudaFree", nullptr, false); e != cudaSuccess) return e;
  return release(ptr, Kind::device, "cudaFree");
}
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaMallocAsync"); e != cudaSuccess) return e;
  if (stream_is_capturing(stream))
    return record(cudaErrorStreamCaptureUnsupported, "cudaMallocAsync during capture: allocation nodes are not emulated");
  return allocate(ptr, size, Kind::device, "cudaMallocAsync");
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaFreeAsync"); e != cudaSuccess) return e;
  if (stream_is_capturing(stream))
    return record(cudaErrorStreamCaptureUnsupported, "cudaFreeAsync during capture: free nodes are not emulated");
  return release(ptr, Kind::device, "cudaFreeAsync");
}
cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (const cudaError_t e = capture_check_unsafe("cudaMallocHost", nullptr, false); e != cudaSuccess) return e;
  return allocate(ptr, size, Kind::pinned_host, "cudaMallocHost");
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  if (const cudaError_t e = capture_check_unsafe("cudaHostAlloc", nullptr, false); e != cudaSuccess) return e;
  return allocate(ptr, size, Kind::pinned_host, "cudaHostAlloc");
}
cudaError_t cudaFreeHost(void* ptr) {
  if (const cudaError_t e = capture_check_unsafe("cudaFreeHost", nullptr, false); e != cudaSuccess) return e;
  return release(ptr, Kind::pinned_host, "cudaFreeHost");
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (const cudaError_t e = capture_check_unsafe("cudaMemcpy", nullptr, true); e != cudaSuccess) return e;
  return copy(dst, src, count, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaMemcpyAsync"); e != cudaSuccess) return e;
  bool captured = false;
  if (const cudaError_t e = capture_copy(dst, src, count, kind, stream, &captured); e != cudaSuccess || captured) return e;
  return copy(dst, src, count, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (const cudaError_t e = capture_check_unsafe("cudaMemset", nullptr, true); e != cudaSuccess) return e;
  return set(ptr, value, count, "cudaMemset");
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaMemsetAsync"); e != cudaSuccess) return e;
  bool captured = false;
  if (const cudaError_t e = capture_set(ptr, value, count, stream, &captured); e != cudaSuccess || captured) return e;
  return set(ptr, value, count, "cudaMemsetAsync");
}

cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t count, size_t offset, cudaMemcpyKind) {
  if (!symbol || !src) return record(cudaErrorInvalidSymbol, "cudaMemcpyToSymbol with a null pointer");
  std::memcpy(static_cast<unsigned char*>(const_cast<void*>(symbol)) + offset, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyFromSymbol(void* dst, const void* symbol, size_t count, size_t offset, cudaMemcpyKind) {
  if (!symbol || !dst) return record(cudaErrorInvalidSymbol, "cudaMemcpyFromSymbol with a null pointer");
  std::memcpy(dst, static_cast<const unsigned char*>(symbol) + offset, count);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool) return record(cudaErrorInvalidValue, "cudaDeviceGetDefaultMemPool with a null pointer");
  if (device != 0) return record(cudaErrorInvalidDevice, "the emulator has one device, 0");
  *pool = &rt().default_pool;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (pool != &rt().default_pool || !value) return record(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: unknown pool or null value");
  if (attr != cudaMemPoolAttrReleaseThreshold) return record(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: attribute not emulated");
  pool->release_threshold = *static_cast<unsigned long long*>(value);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  return create_handle(stream, CUstream_st{flags}, rt().streams, "cudaStreamCreate");
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) { return destroy_handle(stream, rt().streams, "cudaStreamDestroy"); }

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamSynchronize"); e != cudaSuccess) return e;
  return capture_check_unsafe("cudaStreamSynchronize", stream, true);
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamQuery"); e != cudaSuccess) return e;
  return capture_check_unsafe("cudaStreamQuery", stream, true);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (const cudaError_t e = check_stream(stream, "cudaStreamWaitEvent"); e != cudaSuccess) return e;
  if (!valid_event(event)) return record(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: not a live event");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  return create_handle(event, CUevent_st{flags, false, {}}, rt().events, "cudaEventCreate");
}

cudaError_t cudaEventDestroy(cudaEvent_t event) { return destroy_handle(event, rt().events, "cudaEventDestroy"); }

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (const cudaError_t e = check_stream(stream, "cudaEventRecord"); e != cudaSuccess) return e;
  if (!valid_event(event)) return record(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live event");
  if (stream_is_capturing(stream) || capture_forbids_legacy(stream))
    return record(cudaErrorStreamCaptureUnsupported, "cudaEventRecord during capture: event nodes are not emulated");
  event->recorded = true;
  event->time = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!valid_event(event)) return record(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  return capture_check_unsafe("cudaEventSynchronize", nullptr, false);
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!valid_event(event)) return record(cudaErrorInvalidResourceHandle, "cudaEventQuery: not a live event");
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return record(cudaErrorInvalidValue, "cudaEventElapsedTime with a null pointer");
  if (!valid_event(start) || !valid_event(end))
    return record(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not a live event");
  if ((start->flags | end->flags) & cudaEventDisableTiming)
    return record(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
  if (!start->recorded || !end->recorded)
    return record(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was never recorded");
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return record(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute with a null function");
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize: {
      if (value < 0 || static_cast<size_t>(value) > kSharedPerBlockOptin)
        return record(cudaErrorInvalidValue, "cudaFuncAttributeMaxDynamicSharedMemorySize = " + std::to_string(value) +
                                                 " is outside [0, 232448] (227 KB per block on an H100)");
      std::lock_guard<std::mutex> lock(rt().mutex);
      rt().max_dynamic_shared[func] = static_cast<size_t>(value);
      return cudaSuccess;
    }
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      if (value < -1 || value > 100)
        return record(cudaErrorInvalidValue, "cudaFuncAttributePreferredSharedMemoryCarveout must be -1 or a percentage");
      return cudaSuccess;
  }
  return record(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute " + std::to_string(static_cast<int>(attr)) + " not emulated");
}
