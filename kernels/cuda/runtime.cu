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
//
// Deferred index errors. An index op (gather, scatter_add, the labels of cross_entropy) must
// reject an out-of-range index, but reading device indices on the host to check them would cost
// a host sync per op, i.e. per attack step. So check_indices queues a small kernel that records
// the first bad index in a device-resident record, and the runtime raises it as
// std::out_of_range at the next point where the host waits anyway (copy_to_host, synchronize),
// then clears it. The consuming kernels guard their accesses, so a bad index never reads or
// writes out of bounds in the meantime (their outputs are then meaningless, and never seen:
// reading them is what raises). Only the first failing check since the last wait is reported,
// the one whose bad result every later op may have consumed.
#include <atomic>
#include <cstring>
#include <memory>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/common.cuh"

#if !defined(BULWARK_EMU)
#include <nvtx3/nvToolsExt.h>
#endif

namespace bulwark::cuda {

namespace {

size_t size_class(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(1) << 20;
  if (bytes <= kLarge) return (bytes + kSmall - 1) / kSmall * kSmall;
  size_t c = kLarge;
  while (c < bytes) c <<= 1;
  return c;
}

// A graph's private pool (PyTorch's graph memory pools): while a stream captures, allocations
// come from here and blocks freed go back here, never to the shared cache. A replay writes the
// addresses its capture recorded, so no eager tensor may ever be handed one of them while the
// graph lives; the blocks the capture's outputs occupy (a loss the host reads later) come back
// here when those tensors die. When the graph dies the pool's idle blocks join the shared cache,
// and blocks still in use go there as they are released.
}  // namespace
struct Pool {
  std::map<size_t, std::vector<void*>> free;
  bool retired = false;
};
namespace {

// Runs f with the calling thread's capture mode relaxed: cudaMalloc and cudaMallocHost may
// synchronise, which a capture forbids, so PyTorch's allocator relaxes the mode around them, and
// so does this runtime (the memory is new: no queued work uses it).
template <class F>
cudaError_t with_relaxed_capture(F f) {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  const cudaError_t err = f();
  check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  return err;
}

class CachingAllocator {
 public:
  std::atomic<uint64_t> system_allocations{0};  // cudaMalloc calls that succeeded
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = capturing_ ? capturing_->free[cls] : free_[cls];
    if (!list.empty()) {
      void* p = list.back();
      list.pop_back();
      live_[p] = {cls, capturing_};
      return p;
    }
    void* p = nullptr;
    cudaError_t err = system_malloc(&p, cls);
    if (err == cudaErrorMemoryAllocation && !capturing_) {
      (void)cudaGetLastError();  // clear the sticky error, give the cache back, try once more
      release_cached_locked();
      err = system_malloc(&p, cls);
    }
    if (err != cudaSuccess)
      throw std::runtime_error("CUDA out of memory: could not allocate " + std::to_string(cls) +
                               " bytes (" + cudaGetErrorString(err) + ")");
    system_allocations.fetch_add(1, std::memory_order_relaxed);
    live_[p] = {cls, capturing_};
    return p;
  }

  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) throw std::logic_error("cuda::device_free: pointer not from cuda::device_malloc");
    const Block& b = it->second;
    (b.pool && !b.pool->retired ? b.pool->free : free_)[b.cls].push_back(p);
    live_.erase(it);
  }

  // Allocations go to `pool` (nullptr: the shared cache again).
  void capture_into(std::shared_ptr<Pool> pool) {
    std::lock_guard<std::mutex> lock(mu_);
    capturing_ = std::move(pool);
  }
  void retire(Pool& pool) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [cls, list] : pool.free) free_[cls].insert(free_[cls].end(), list.begin(), list.end());
    pool.free.clear();
    pool.retired = true;
  }

 private:
  struct Block {
    size_t cls;
    std::shared_ptr<Pool> pool;  // null: the shared cache
  };
  static cudaError_t system_malloc(void** p, size_t bytes) {
    return with_relaxed_capture([&] { return cudaMalloc(p, bytes); });
  }
  void release_cached_locked() {
    (void)cudaDeviceSynchronize();  // blocks in the cache may still be used by queued kernels
    for (auto& [cls, list] : free_)
      for (void* p : list) (void)cudaFree(p);
    free_.clear();
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, Block> live_;
  std::shared_ptr<Pool> capturing_;
};

// Leaked on purpose: tensors freed during static destruction must still find it, and the CUDA
// runtime may already be shut down by then (the driver reclaims the memory at exit).
CachingAllocator& allocator() {
  static auto* a = new CachingAllocator;
  return *a;
}

// The first out-of-range index found by the checks queued since the host last waited. `key`
// orders candidates by position and carries the value: (position - base) << 32 | uint32(value),
// so one 64-bit atomicMin keeps both of the first bad element. `check` is the sequence number of
// the check that failed first (0: none); only its threads write.
struct IndexErrorRecord {
  unsigned long long check;
  unsigned long long key;
  int64_t base;   // position of the checked range's first element within the whole index tensor
  int64_t bound;  // indices must lie in [0, bound)
  int32_t what;   // the (op, role) description, interned on the host
};

// Elements one check launch covers: positions within it must fit the key's high 32 bits.
constexpr int64_t kCheckRange = int64_t(1) << 31;

__global__ void check_index_range_kernel(const int32_t* idx, int64_t n, int64_t bound, unsigned long long check,
                                         int32_t what, int64_t base, IndexErrorRecord* record) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = idx[i];
    if (v >= 0 && v < bound) continue;
    const unsigned long long first = atomicCAS(&record->check, 0ull, check);
    if (first != 0 && first != check) return;  // an earlier check failed: it is the one to report
    if (first == 0) {
      record->what = what;
      record->bound = bound;
      record->base = base;
    }
    atomicMin(&record->key, (static_cast<unsigned long long>(i) << 32) | static_cast<uint32_t>(v));
  }
}

struct CheckDescription {
  std::string op;
  IndexRole role;
};

std::atomic<uint64_t> device_to_host_copies{0};
std::atomic<uint64_t> synchronizations{0};

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
  device_to_host_copies.fetch_add(1, std::memory_order_relaxed);
}

class DeferredIndexErrors {
 public:
  void queue_check(const int32_t* idx, int64_t count, int64_t bound, const char* op, IndexRole role) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!record_) create_record_locked();
    const int32_t what = describe_locked(op, role);
    for (int64_t base = 0; base < count; base += kCheckRange) {
      const int64_t n = count - base < kCheckRange ? count - base : kCheckRange;
      BW_LAUNCH_COSTED((LaunchCost{2.0 * n, 4.0 * n}), check_index_range_kernel, blocks_for(n), kThreads, 0,
                       current_stream(), idx + base, n, bound, next_check_++, what, base, record_);
    }
    pending_ = true;
  }

  // The record exists before a capture starts (creating it queues a copy from pageable memory,
  // which a capture refuses).
  void ensure_record() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!record_) create_record_locked();
  }
  // A replayed graph may have run checks: the next wait looks at the record.
  void mark_pending() {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = true;
  }

  // After the host has waited for the stream: throws the recorded error, if any, and clears it.
  void raise_recorded() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pending_) return;  // nothing queued since the last look: no copy
    pending_ = false;
    IndexErrorRecord r{};
    copy_device_to_host(&r, record_, sizeof r);
    if (r.check == 0) return;
    clear_locked();
    const auto position = static_cast<int64_t>(r.key >> 32) + r.base;
    const auto value = static_cast<int32_t>(static_cast<uint32_t>(r.key & 0xffffffffull));
    const CheckDescription& d = descriptions_.at(static_cast<size_t>(r.what));
    throw std::out_of_range(index_error_message(d.op, d.role, value, position, r.bound));
  }

 private:
  void create_record_locked() {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, sizeof(IndexErrorRecord)), "allocation of the index error record");
    record_ = static_cast<IndexErrorRecord*>(p);
    clear_locked();
  }
  void clear_locked() {
    const IndexErrorRecord empty{0, ~0ull, 0, 0, 0};
    check_cuda(cudaMemcpyAsync(record_, &empty, sizeof empty, cudaMemcpyHostToDevice, current_stream()),
          "reset of the index error record");
  }
  int32_t describe_locked(const char* op, IndexRole role) {
    for (size_t i = 0; i < descriptions_.size(); ++i)
      if (descriptions_[i].role == role && descriptions_[i].op == op) return static_cast<int32_t>(i);
    descriptions_.push_back({op, role});
    return static_cast<int32_t>(descriptions_.size() - 1);
  }

  std::mutex mu_;
  IndexErrorRecord* record_ = nullptr;  // device memory, kept for the life of the process
  unsigned long long next_check_ = 1;
  bool pending_ = false;                // a check was queued since the host last looked
  std::vector<CheckDescription> descriptions_;
};

// Leaked on purpose, like the allocator.
DeferredIndexErrors& deferred_index_errors() {
  static auto* e = new DeferredIndexErrors;
  return *e;
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

void select_device(int local_rank) {
#if !defined(BULWARK_EMU)
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return;
  }
  check_cuda(cudaSetDevice(local_rank % count), "cudaSetDevice");
#else
  (void)local_rank;
#endif
}

bool emulated() {
#if defined(BULWARK_EMU)
  return true;
#else
  return false;
#endif
}

#if defined(BULWARK_EMU)
void range_push(const char*) {}
void range_pop() {}
#else
void range_push(const char* name) { nvtxRangePushA(name); }
void range_pop() { nvtxRangePop(); }
#endif

bool set_record_only(bool on) {
#if defined(BULWARK_EMU)
  emu::config().record_only = on;
  return true;
#else
  (void)on;
  return false;
#endif
}

// The legacy default stream orders every launch after the previous one, which is what the
// allocator above relies on. (A dedicated non-blocking stream per thread is the next step when
// copies should overlap compute.) While the thread captures a graph its work goes to the capture
// stream instead (a capture needs a created stream); replays run on the legacy stream again.
// A captured graph and what it owns (cuda_kernels.h).
struct CapturedGraph {
  cudaGraphExec_t exec = nullptr;
  size_t nodes = 0;
  std::shared_ptr<Pool> pool;                 // the private memory pool
  std::vector<void*> staging;                 // pinned buffers the copy nodes read
  ReplayScalars* scalars = nullptr;  // device: what replay() writes before each launch
  int optimizer_steps = 0;           // optimizer steps captured (at most 1)
  bool adam = false;                 // the step is Adam's, with these hyper-parameters
  optim::AdamHyper adam_hyper;
  CapturedGraph() = default;
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  ~CapturedGraph();
};

namespace {
struct CaptureState {
  cudaStream_t stream = nullptr;
  std::shared_ptr<CapturedGraph> graph;
  uint64_t seed = 0, origin = 0;
};
thread_local CaptureState* t_capture = nullptr;
}  // namespace

cudaStream_t current_stream() { return t_capture ? t_capture->stream : 0; }

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

void* device_malloc(size_t bytes) { return allocator().allocate(bytes); }
void device_free(void* p) { allocator().release(p); }
uint64_t device_system_allocations() { return allocator().system_allocations.load(); }
void device_memory_info(size_t* free_bytes, size_t* total_bytes) {
  check_cuda(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (t_capture) {
    // A captured copy reads its host buffer when the graph runs: stage the bytes in pinned memory
    // that lives as long as the graph (every replay uploads the same values).
    void* pinned = nullptr;
    check_cuda(with_relaxed_capture([&] { return cudaMallocHost(&pinned, bytes); }), "pinned staging of a captured copy");
    t_capture->graph->staging.push_back(pinned);
    std::memcpy(pinned, src, bytes);
    src = pinned;
  }
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, current_stream()), "copy to device");
}
// A copy to pageable host memory returns when the data is there: one of the two places the host
// waits, so the place where deferred index errors surface.
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  copy_device_to_host(dst, src, bytes);
  deferred_index_errors().raise_recorded();
}
void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()), "device copy");
}
void synchronize() {
  synchronizations.fetch_add(1, std::memory_order_relaxed);
  check_cuda(cudaStreamSynchronize(current_stream()), "synchronize");
  deferred_index_errors().raise_recorded();
}

std::string index_error_message(const std::string& op, IndexRole role, int32_t value, int64_t position, int64_t bound) {
  const std::string v = std::to_string(value), at = std::to_string(position);
  const std::string range = "[0, " + std::to_string(bound) + ")";
  if (role == IndexRole::label) return op + ": label " + v + " of sample " + at + " out of range " + range;
  return op + ": index " + v + " out of range " + range + " at position " + at;
}

uint64_t host_copy_count() { return device_to_host_copies.load(std::memory_order_relaxed); }
uint64_t synchronize_count() { return synchronizations.load(std::memory_order_relaxed); }

// The profiler's events: created once, reused every step (no allocation in the steady state).
// Deliberately never destroyed: they may outlive the CUDA context at exit.
namespace {
std::vector<cudaEvent_t>& timing_events() {
  static auto* events = new std::vector<cudaEvent_t>;
  return *events;
}
size_t timing_events_used = 0;
}  // namespace

TimingEvent record_timing_event() {
  std::vector<cudaEvent_t>& events = timing_events();
  if (timing_events_used == events.size()) {
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreate(&e), "cudaEventCreate");
    events.push_back(e);
  }
  check_cuda(cudaEventRecord(events[timing_events_used], current_stream()), "cudaEventRecord");
  return static_cast<TimingEvent>(timing_events_used++);
}

double timing_elapsed_ms(TimingEvent from, TimingEvent to) {
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, timing_events().at(static_cast<size_t>(from)),
                                  timing_events().at(static_cast<size_t>(to))),
             "cudaEventElapsedTime");
  return ms;
}

void release_timing_events() { timing_events_used = 0; }

void check_indices(const int32_t* idx, int64_t count, int64_t bound, const char* op, IndexRole role) {
  if (count > 0) deferred_index_errors().queue_check(idx, count, bound, op, role);
}

// ---- CUDA Graphs ----------------------------------------------------------------------------------

size_t graph_nodes(const CapturedGraph& graph) { return graph.nodes; }

CapturedGraph::~CapturedGraph() {
  // A replay may still be queued: its copy nodes read the staging buffers freed below.
  if (exec) (void)cudaStreamSynchronize(current_stream());
  if (exec) (void)cudaGraphExecDestroy(exec);
  for (void* p : staging) (void)cudaFreeHost(p);
  if (scalars) device_free(scalars);
  if (pool) allocator().retire(*pool);
}

namespace {
cudaStream_t capture_stream() {
  static cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&created, cudaStreamDefault), "creation of the capture stream");
    return created;
  }();
  return s;
}
}  // namespace

void begin_capture(uint64_t philox_seed, uint64_t philox_origin) {
  if (t_capture) throw std::logic_error("cuda::begin_capture: this thread is already capturing");
  deferred_index_errors().ensure_record();
  auto graph = std::make_shared<CapturedGraph>();
  graph->scalars = static_cast<ReplayScalars*>(device_malloc(sizeof(ReplayScalars)));
  graph->pool = std::make_shared<Pool>();
  const cudaStream_t stream = capture_stream();
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  allocator().capture_into(graph->pool);
  t_capture = new CaptureState{stream, std::move(graph), philox_seed, philox_origin};
}

namespace {
// Ends this thread's capture: the runtime is eager again whatever happened.
std::shared_ptr<CapturedGraph> finish_capture(cudaGraph_t* graph, cudaError_t* err) {
  std::unique_ptr<CaptureState> state(t_capture);
  t_capture = nullptr;
  allocator().capture_into(nullptr);
  *err = cudaStreamEndCapture(state->stream, graph);
  return std::move(state->graph);
}
}  // namespace

std::shared_ptr<CapturedGraph> end_capture() {
  if (!t_capture) throw std::logic_error("cuda::end_capture: this thread is not capturing");
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaSuccess;
  std::shared_ptr<CapturedGraph> g = finish_capture(&graph, &err);
  check_cuda(err, "capture of a CUDA graph");
  size_t nodes = 0;
  err = cudaGraphGetNodes(graph, nullptr, &nodes);
  if (err == cudaSuccess) err = cudaGraphInstantiate(&g->exec, graph, 0);
  (void)cudaGraphDestroy(graph);  // the executable graph keeps what it needs
  check_cuda(err, "instantiation of a CUDA graph");
  g->nodes = nodes;
  return g;
}

void abort_capture() {
  if (!t_capture) return;
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaSuccess;
  finish_capture(&graph, &err);
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
}

bool capturing() { return t_capture != nullptr; }

const ReplayScalars* captured_scalars() { return t_capture ? t_capture->graph->scalars : nullptr; }

void capture_optimizer_step(const optim::AdamHyper* adam) {
  CapturedGraph& g = *t_capture->graph;
  if (++g.optimizer_steps > 1)
    throw std::runtime_error("a CUDA graph can capture one optimizer step: its learning rate and step count are "
                             "set per replay, not per step inside it");
  g.adam = adam != nullptr;
  if (adam) g.adam_hyper = *adam;
}

void replay(const CapturedGraph& graph, uint64_t philox_base, double lr, int64_t t) {
  if (t_capture) throw std::logic_error("cuda::replay: a graph cannot be replayed while capturing");
  optim::AdamHyper h = graph.adam_hyper;
  h.lr = lr;
  // The values the eager launchers would have passed as arguments, rounded the same way.
  const ReplayScalars scalars{philox_base, static_cast<float>(lr),
                              graph.adam ? optim::AdamStep<float>(h, t) : optim::AdamStep<float>(h, 1)};
  copy_to_device(graph.scalars, &scalars, sizeof scalars);
  check_cuda(cudaGraphLaunch(graph.exec, current_stream()), "cudaGraphLaunch");
  deferred_index_errors().mark_pending();
}

PhiloxOffset philox_offset(uint64_t seed, uint64_t offset) {
  if (!t_capture) return {nullptr, offset};
  if (seed != t_capture->seed || offset < t_capture->origin)
    throw std::runtime_error(
        "a random draw (seed " + std::to_string(seed) + ", offset " + std::to_string(offset) +
        ") from outside the captured generator's stream cannot be replayed by a CUDA graph: only draws from the "
        "generator given to the capture (seed " + std::to_string(t_capture->seed) + ", from offset " +
        std::to_string(t_capture->origin) + ") advance between replays");
  return {&t_capture->graph->scalars->philox_base, offset - t_capture->origin};
}

}  // namespace bulwark::cuda
