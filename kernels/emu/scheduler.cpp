// The CUDA execution model on one OS thread (execution.h): launch validation, blocks run one by
// one, the threads of a block as fibers, __syncthreads() and the warp collectives, diagnosis of
// kernels that would hang, the launch registry, configuration and counters.
//
// Scheduling. A block's threads are fibers with a FIFO run queue. The running fiber keeps the
// CPU until it reaches a barrier or a warp collective; if it is not the last to arrive it
// switches directly to the next fiber in the queue (one context switch, no trip through a
// scheduler). The last thread to arrive completes the operation: it computes every
// participant's result and queues all of them, itself included, in schedule order (so under the
// forward schedule thread 0 always runs first after a barrier). A block of 256 threads passing a
// __syncthreads() costs about 257 switches, and a warp shuffle about 33.
//
// A block ends when every thread has returned, when one throws (the emulator's own checks
// throw from inside the offending thread), or when the queue runs dry with threads still
// waiting: that block would hang on a GPU, and the waiting threads say why.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/emu/emu.h"
#include "kernels/emu/fiber.h"
#include "kernels/emu/internal.h"

thread_local constinit uint3 threadIdx{0, 0, 0};
thread_local constinit uint3 blockIdx{0, 0, 0};
thread_local constinit dim3 blockDim{1, 1, 1};
thread_local constinit dim3 gridDim{1, 1, 1};

namespace bulwark::emu {

namespace detail {
thread_local constinit Current current;
}

const char* fault_name(Fault fault) {
  switch (fault) {
    case Fault::launch_config: return "launch_config";
    case Fault::shared_memory_limit: return "shared_memory_limit";
    case Fault::pointer_argument: return "pointer_argument";
    case Fault::barrier_divergence: return "barrier_divergence";
    case Fault::warp_divergence: return "warp_divergence";
    case Fault::shared_race: return "shared_race";
    case Fault::shared_out_of_bounds: return "shared_out_of_bounds";
    case Fault::shared_uninitialized: return "shared_uninitialized";
    case Fault::kernel_exception: return "kernel_exception";
  }
  return "unknown";
}

namespace {

// ---- configuration -----------------------------------------------------------------------------

Config config_from_environment() {
  Config c;
  if (const char* kb = std::getenv("BULWARK_EMU_STACK_KB")) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(kb, &end, 10);
    if (end == kb || *end != '\0' || v < 16 || v > 1024 * 1024)
      throw std::invalid_argument(std::string("BULWARK_EMU_STACK_KB=") + kb + ": expected kilobytes from 16 to 1048576");
    c.stack_bytes = v * 1024;
  }
  if (const char* s = std::getenv("BULWARK_EMU_SCHEDULE")) {
    const std::string v = s;
    if (v == "forward") {
      c.schedule = Schedule::forward;
    } else if (v == "reverse") {
      c.schedule = Schedule::reverse;
    } else if (v.rfind("shuffled", 0) == 0 && (v.size() == 8 || v[8] == ':')) {
      c.schedule = Schedule::shuffled;
      if (v.size() > 9) c.schedule_seed = std::strtoull(v.c_str() + 9, nullptr, 10);
    } else {
      throw std::invalid_argument("BULWARK_EMU_SCHEDULE=" + v + ": expected forward, reverse, shuffled or shuffled:SEED");
    }
  }
  if (const char* v = std::getenv("BULWARK_EMU_CHECK_SHARED")) c.check_shared = std::strcmp(v, "0") != 0;
  if (const char* v = std::getenv("BULWARK_EMU_RECORD_ONLY")) c.record_only = std::strcmp(v, "0") != 0;
  return c;
}

// ---- launch registry ---------------------------------------------------------------------------

std::mutex g_registry_mutex;
std::map<std::string, LaunchRecord>& registry() {
  static std::map<std::string, LaunchRecord> r;
  return r;
}

// ---- formatting --------------------------------------------------------------------------------

std::string coords(const uint3& v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
  return buf;
}
std::string coords(const dim3& v) { return coords(static_cast<uint3>(v)); }

std::string hex_mask(unsigned mask) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", mask);
  return buf;
}

// "0-15,20,22-23"
std::string lane_list(uint32_t lanes) {
  std::string s;
  for (int l = 0; l < 32;) {
    if (!(lanes >> l & 1u)) {
      ++l;
      continue;
    }
    int e = l;
    while (e + 1 < 32 && (lanes >> (e + 1) & 1u)) ++e;
    if (!s.empty()) s += ",";
    s += std::to_string(l);
    if (e > l) {
      s += '-';
      s += std::to_string(e);
    }
    l = e + 1;
  }
  return s;
}

bool same_site(const detail::Site& a, const detail::Site& b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

bool is_shuffle(detail::WarpOp op) {
  using detail::WarpOp;
  return op == WarpOp::shfl_idx || op == WarpOp::shfl_up || op == WarpOp::shfl_down || op == WarpOp::shfl_xor;
}

// The lane a shuffle reads from, as PTX's shfl.sync defines it: lanes are split into segments
// of `width`; idx reads lane (srcLane mod width) of the caller's segment; up/down/xor read
// lane -/+/^ arg, and keep their own value if that falls outside the segment.
unsigned shuffle_source(detail::WarpOp op, unsigned lane, int arg, int width) {
  const long long segment_mask = 32 - width;  // the lane bits that select the segment
  const long long first = lane & segment_mask;
  const long long last = first | (31 & ~segment_mask);
  const long long delta = static_cast<unsigned>(arg);
  long long j = lane;
  switch (op) {
    case detail::WarpOp::shfl_idx: return static_cast<unsigned>(first | (arg & 31 & ~segment_mask));
    case detail::WarpOp::shfl_up: j = lane - delta; return j >= first ? static_cast<unsigned>(j) : lane;
    case detail::WarpOp::shfl_down: j = lane + delta; return j <= last ? static_cast<unsigned>(j) : lane;
    case detail::WarpOp::shfl_xor: j = lane ^ delta; return j <= last ? static_cast<unsigned>(j) : lane;
    default: return lane;
  }
}

// ---- the engine --------------------------------------------------------------------------------

enum class State : uint8_t { runnable, at_barrier, at_warp, exited };

struct EmuThread {
  detail::Context context;
  detail::FiberStack stack;
  detail::ProxySlot proxies[detail::kProxySlots];
  unsigned proxy_pos = 0;
  uint3 idx{};
  unsigned linear = 0, warp = 0, lane = 0;
  State state = State::runnable;
  detail::Site site;  // where it waits
  int predicate = 0;  // __syncthreads_count/and/or
  detail::WarpOp op = detail::WarpOp::sync;
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0, width = 32;
  bool is_signed = false;
  uint64_t result = 0;
};

struct WarpState {
  uint32_t live = 0;     // lanes that exist and have not exited
  uint32_t arrived = 0;  // lanes waiting at a warp collective
};

enum class BlockEnd { finished, failed, hung };

class Engine {
 public:
  ~Engine() {
    for (auto& t : threads_) detail::free_stack(t->stack);
  }

  // notify: tell the thread's LaunchObserver (a launch site does; a graph node replayed does not,
  // as no host code launches it on a GPU either).
  void run(const detail::KernelLaunch& k, bool notify = true);
  int block_barrier(detail::BarrierOp op, int predicate, detail::Site site);
  uint64_t warp_collective(detail::WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed,
                           detail::Site site);
  unsigned active_mask() const { return warps_[running_->warp].live; }
  EmuThread& running(const char* what);
  const detail::KernelLaunch* launch() const { return launch_; }
  Stats stats;

 private:
  static void fiber_main(void* arg);
  void prepare_threads(unsigned n);
  void run_block();
  void switch_to(EmuThread* from, EmuThread* to, bool from_finished);
  void block_current(EmuThread& me);
  void push(EmuThread* t) {
    queue_[(head_ + size_) % n_] = t;
    ++size_;
  }
  EmuThread* pop() {
    if (size_ == 0) return nullptr;
    EmuThread* t = queue_[head_];
    head_ = (head_ + 1) % n_;
    --size_;
    return t;
  }
  void refresh_order();
  uint64_t block_at(uint64_t i, uint64_t total) const;
  void release_barrier(EmuThread& me, detail::BarrierOp op);
  bool try_complete(unsigned warp, unsigned lane);
  void compute_collective(unsigned warp, uint32_t need, const EmuThread& lead);
  void thread_exited(EmuThread& me);
  [[noreturn]] void rethrow_failure();
  [[noreturn]] void diagnose_hang();
  EmuThread& lane_thread(unsigned warp, unsigned lane) { return *threads_[warp * 32 + lane]; }
  std::string barrier_groups(State state) const;

  std::vector<std::unique_ptr<EmuThread>> threads_;
  size_t stack_bytes_ = 0;
  detail::Context scheduler_;
  const detail::KernelLaunch* launch_ = nullptr;
  EmuThread* running_ = nullptr;
  unsigned n_ = 0;
  std::vector<EmuThread*> queue_;
  unsigned head_ = 0, size_ = 0;
  std::vector<unsigned> order_;
  std::vector<WarpState> warps_;
  unsigned arrived_ = 0, exited_ = 0;
  int barrier_result_ = 0;
  BlockEnd end_ = BlockEnd::finished;
  std::exception_ptr failure_;
  unsigned failed_thread_ = 0;
  Schedule schedule_ = Schedule::forward;
  std::mt19937_64 rng_;
  uint64_t block_stride_ = 1, block_offset_ = 0;
};

thread_local std::unique_ptr<Engine> t_engine;

Engine& engine() {
  if (!t_engine) t_engine = std::make_unique<Engine>();
  return *t_engine;
}

void validate(const detail::KernelLaunch& k) {
  const dim3 b = k.block, g = k.grid;
  const std::string where = "kernel '" + normalize_launch_name(k.name) + "' launched with grid " + coords(g) +
                            " and block " + coords(b) + ": ";
  const char* axis[3] = {"x", "y", "z"};
  const unsigned bd[3] = {b.x, b.y, b.z};
  const unsigned gd[3] = {g.x, g.y, g.z};
  for (int i = 0; i < 3; ++i) {
    if (bd[i] == 0) detail::fail(Fault::launch_config, where + "blockDim." + axis[i] + " is 0; every dimension must be at least 1");
    if (bd[i] > kMaxBlockDim[i])
      detail::fail(Fault::launch_config, where + "blockDim." + axis[i] + " = " + std::to_string(bd[i]) +
                                             " exceeds the limit of " + std::to_string(kMaxBlockDim[i]) +
                                             " (block dimensions are limited to (1024, 1024, 64))");
  }
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (threads > kMaxThreadsPerBlock)
    detail::fail(Fault::launch_config, where + std::to_string(threads) + " threads per block exceed the limit of 1024");
  for (int i = 0; i < 3; ++i) {
    if (gd[i] == 0) detail::fail(Fault::launch_config, where + "gridDim." + axis[i] + " is 0; every dimension must be at least 1");
    if (gd[i] > kMaxGridDim[i])
      detail::fail(Fault::launch_config, where + "gridDim." + axis[i] + " = " + std::to_string(gd[i]) +
                                             " exceeds the limit of " + std::to_string(kMaxGridDim[i]));
  }
  if (k.param_bytes > kMaxKernelParamBytes)
    detail::fail(Fault::launch_config, where + std::to_string(k.param_bytes) + " bytes of kernel arguments exceed the limit of " +
                                           std::to_string(kMaxKernelParamBytes));
  if (!detail::is_valid_stream(k.stream))
    detail::fail(Fault::launch_config, where + "the stream is not a live cudaStream_t (destroyed, or never created)");
  const size_t optin = detail::max_dynamic_shared(k.func);
  if (optin == 0 && k.dynamic_shared > kSharedPerBlockDefault)
    detail::fail(Fault::shared_memory_limit,
                 where + "it asks for " + std::to_string(k.dynamic_shared) +
                     " bytes of dynamic shared memory, but a block gets at most 49152 bytes (48 KB) unless the kernel "
                     "opts in with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) "
                     "(up to 232448 bytes, 227 KB)");
  if (optin != 0 && k.dynamic_shared > optin)
    detail::fail(Fault::shared_memory_limit, where + "it asks for " + std::to_string(k.dynamic_shared) +
                                                 " bytes of dynamic shared memory, more than the " + std::to_string(optin) +
                                                 " bytes it opted in to with cudaFuncSetAttribute");
}

void Engine::prepare_threads(unsigned n) {
  const size_t want = config().stack_bytes;
  if (want < 16 * 1024) detail::fail(Fault::launch_config, "bulwark::emu::config().stack_bytes must be at least 16384");
  if (want != stack_bytes_) {
    for (auto& t : threads_) detail::free_stack(t->stack);
    threads_.clear();
    stack_bytes_ = want;
  }
  while (threads_.size() < n) {
    auto t = std::make_unique<EmuThread>();
    t->stack = detail::allocate_stack(stack_bytes_);
    threads_.push_back(std::move(t));
  }
  queue_.assign(n, nullptr);
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0u);
  if (schedule_ == Schedule::reverse) std::reverse(order_.begin(), order_.end());
}

void Engine::refresh_order() {
  if (schedule_ == Schedule::shuffled) std::shuffle(order_.begin(), order_.end(), rng_);
}

// The i-th block to run: in order, reversed, or a pseudo-random permutation i -> (a i + c) mod
// total with a coprime to total (no table, however large the grid).
uint64_t Engine::block_at(uint64_t i, uint64_t total) const {
  switch (schedule_) {
    case Schedule::forward: return i;
    case Schedule::reverse: return total - 1 - i;
    case Schedule::shuffled:
      return static_cast<uint64_t>((static_cast<unsigned __int128>(block_stride_) * i + block_offset_) % total);
  }
  return i;
}

void Engine::run(const detail::KernelLaunch& k, bool notify) {
  if (detail::current.in_kernel)
    detail::fail(Fault::launch_config, "kernel '" + normalize_launch_name(k.name) + "' launched from inside kernel '" +
                                           normalize_launch_name(launch_->name) +
                                           "': dynamic parallelism is not supported by the emulator");
  validate(k);
  const Config& cfg = config();
  const uint64_t total = 1ull * k.grid.x * k.grid.y * k.grid.z;
  const unsigned n = k.block.x * k.block.y * k.block.z;
  if (notify) notify_launch(k.name, total, n, k.cost);
  const auto count = [&] {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    LaunchRecord& r = registry()[normalize_launch_name(k.name)];
    r.launches += 1;
    r.blocks += total;
    r.threads += total * n;
    if (k.cost.stated()) {
      r.flops += k.cost.flops;
      r.bytes += k.cost.bytes;
    }
  };
  if (cfg.record_only) return count();
  schedule_ = cfg.schedule;
  rng_.seed(cfg.schedule_seed);
  prepare_threads(n);
  n_ = n;
  warps_.assign((n + 31) / 32, WarpState{});
  block_stride_ = 1;
  block_offset_ = 0;
  if (schedule_ == Schedule::shuffled && total > 1) {
    block_stride_ = rng_() % total | 1;
    while (std::gcd(block_stride_, total) != 1) block_stride_ += 2;
    block_offset_ = rng_() % total;
  }

  launch_ = &k;
  blockDim = k.block;
  gridDim = k.grid;
  detail::current = detail::Current{};
  detail::current.in_kernel = true;
  detail::current.check_shared = cfg.check_shared;
  detail::set_overflow_context(k.name, stack_bytes_);
  struct Reset {
    Engine& e;
    ~Reset() {
      detail::current = detail::Current{};
      e.launch_ = nullptr;
      e.running_ = nullptr;
    }
  } reset{*this};
  detail::shared_begin_launch(k.dynamic_shared, detail::max_dynamic_shared(k.func), n);

  for (uint64_t i = 0; i < total; ++i) {
    const uint64_t b = block_at(i, total);
    blockIdx = uint3{static_cast<unsigned>(b % k.grid.x), static_cast<unsigned>(b / k.grid.x % k.grid.y),
                     static_cast<unsigned>(b / (1ull * k.grid.x * k.grid.y))};
    run_block();
  }
  count();
}

void Engine::run_block() {
  detail::shared_begin_block();
  const dim3 b = launch_->block;
  for (unsigned w = 0; w < warps_.size(); ++w) {
    const unsigned lanes = std::min(32u, n_ - w * 32);
    warps_[w] = WarpState{lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u, 0};
  }
  for (unsigned i = 0; i < n_; ++i) {
    EmuThread& t = *threads_[i];
    t.idx = uint3{i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.state = State::runnable;
    t.proxy_pos = 0;
    detail::prepare_context(t.context, t.stack, &Engine::fiber_main, &t);
  }
  head_ = size_ = 0;
  refresh_order();
  for (unsigned i : order_) push(threads_[i].get());
  arrived_ = exited_ = 0;
  failure_ = nullptr;
  end_ = BlockEnd::finished;

  switch_to(nullptr, pop(), false);  // returns when the block has finished, failed or hung

  running_ = nullptr;
  detail::current.proxy_ring = nullptr;
  stats.blocks += 1;
  stats.threads += n_;
  if (end_ == BlockEnd::failed) rethrow_failure();
  if (end_ == BlockEnd::hung) diagnose_hang();
}

void Engine::switch_to(EmuThread* from, EmuThread* to, bool from_finished) {
  running_ = to;
  if (from) from->proxy_pos = detail::current.proxy_pos;
  if (to) {
    threadIdx = to->idx;
    detail::current.proxy_ring = to->proxies;
    detail::current.proxy_pos = to->proxy_pos;
    detail::current.linear = to->linear;
  }
  ++stats.fiber_switches;
  detail::switch_context(from ? from->context : scheduler_, to ? to->context : scheduler_, to ? &to->stack : nullptr,
                         from_finished);
}

// Hands the CPU to the next runnable thread; `me` has just blocked, or just completed a barrier
// or collective and queued itself with the other participants. Returns when `me` runs again.
void Engine::block_current(EmuThread& me) {
  EmuThread* next = pop();
  if (next == &me) return;
  if (next == nullptr) end_ = BlockEnd::hung;  // nobody can run: back to run_block, for good
  switch_to(&me, next, false);
}

void Engine::fiber_main(void* arg) {
  detail::fiber_started();
  EmuThread& me = *static_cast<EmuThread*>(arg);
  Engine& e = engine();
  std::exception_ptr error;
  try {
    e.launch_->invoke(e.launch_->params);
    e.thread_exited(me);
  } catch (...) {
    error = std::current_exception();  // leave the handler before switching away
  }
  if (error) {
    e.failure_ = std::move(error);  // nothing may stay on this stack: it is never unwound
    e.failed_thread_ = me.linear;
    e.end_ = BlockEnd::failed;
    e.switch_to(&me, nullptr, true);
  }
  EmuThread* next = e.pop();
  if (next == nullptr && e.exited_ != e.n_) e.end_ = BlockEnd::hung;
  e.switch_to(&me, next, true);
  std::abort();  // a finished fiber is never resumed
}

EmuThread& Engine::running(const char* what) {
  if (!detail::current.in_kernel || running_ == nullptr)
    detail::fail(Fault::launch_config, std::string(what) + " called outside a kernel launch");
  return *running_;
}

int Engine::block_barrier(detail::BarrierOp op, int predicate, detail::Site site) {
  EmuThread& me = running("__syncthreads()");
  me.state = State::at_barrier;
  me.site = site;
  me.predicate = predicate;
  if (++arrived_ == n_) release_barrier(me, op);
  block_current(me);  // after a release: resume the first thread of the schedule, maybe `me`
  return barrier_result_;
}

std::string Engine::barrier_groups(State state) const {
  std::vector<std::pair<const EmuThread*, unsigned>> groups;  // first thread at a site, count
  for (unsigned i = 0; i < n_; ++i) {
    const EmuThread& t = *threads_[i];
    if (t.state != state) continue;
    auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return same_site(g.first->site, t.site); });
    if (it == groups.end()) {
      groups.emplace_back(&t, 1);
    } else {
      ++it->second;
    }
  }
  std::string s;
  for (auto& [t, count] : groups) {
    if (!s.empty()) s += "; ";
    s += std::to_string(count) + (count == 1 ? " thread" : " threads") + " (first: thread " + coords(t->idx) + ") at " +
         detail::format_site(t->site);
  }
  return s;
}

void Engine::release_barrier(EmuThread& me, detail::BarrierOp op) {
  for (unsigned i = 0; i < n_; ++i) {
    if (!same_site(threads_[i]->site, me.site))
      detail::fail(Fault::barrier_divergence,
                   "threads of block " + coords(blockIdx) + " in kernel '" + normalize_launch_name(launch_->name) +
                       "' wait at different __syncthreads(): " + barrier_groups(State::at_barrier) +
                       ". All threads of a block must reach the same barrier (a barrier inside a branch that "
                       "threads take differently is undefined behaviour on a GPU).");
  }
  int count = 0;
  for (unsigned i = 0; i < n_; ++i) count += threads_[i]->predicate != 0;
  switch (op) {
    case detail::BarrierOp::sync: barrier_result_ = 0; break;
    case detail::BarrierOp::count: barrier_result_ = count; break;
    case detail::BarrierOp::all: barrier_result_ = count == static_cast<int>(n_); break;
    case detail::BarrierOp::any: barrier_result_ = count > 0; break;
  }
  arrived_ = 0;
  ++stats.block_barriers;
  detail::shared_after_block_barrier(me.site);
  refresh_order();
  for (unsigned i : order_) {
    EmuThread* t = threads_[i].get();
    t->state = State::runnable;
    push(t);
  }
}

uint64_t Engine::warp_collective(detail::WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed,
                                 detail::Site site) {
  EmuThread& me = running(detail::warp_op_name(op));
  if (!(mask >> me.lane & 1u))
    detail::fail(Fault::warp_divergence, detail::describe_thread(me.linear) + " calls " + detail::warp_op_name(op) +
                                             " at " + detail::format_site(site) + " with mask " + hex_mask(mask) +
                                             ", which does not include its own lane " + std::to_string(me.lane) +
                                             " (undefined behaviour on a GPU)");
  if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1)) != 0))
    detail::fail(Fault::warp_divergence, detail::describe_thread(me.linear) + " calls " + detail::warp_op_name(op) +
                                             " at " + detail::format_site(site) + " with width " + std::to_string(width) +
                                             "; the width must be a power of two from 1 to 32");
  me.state = State::at_warp;
  me.op = op;
  me.mask = mask;
  me.value = value;
  me.arg = arg;
  me.width = width;
  me.is_signed = is_signed;
  me.site = site;
  warps_[me.warp].arrived |= 1u << me.lane;
  try_complete(me.warp, me.lane);
  block_current(me);
  return me.result;
}

// Completes the collective `lane` waits at, if every non-exited lane of its mask has arrived.
bool Engine::try_complete(unsigned warp, unsigned lane) {
  WarpState& ws = warps_[warp];
  const EmuThread& lead = lane_thread(warp, lane);
  const uint32_t need = lead.mask & ws.live;
  if ((ws.arrived & need) != need) return false;
  for (uint32_t m = need; m; m &= m - 1) {
    const EmuThread& t = lane_thread(warp, static_cast<unsigned>(std::countr_zero(m)));
    if (t.op != lead.op || t.mask != lead.mask)
      detail::fail(Fault::warp_divergence,
                   "lanes of warp " + std::to_string(warp) + " in block " + coords(blockIdx) + " of kernel '" +
                       normalize_launch_name(launch_->name) + "' meet at different warp collectives: lane " +
                       std::to_string(lead.lane) + " at " + detail::warp_op_name(lead.op) + "(mask " + hex_mask(lead.mask) +
                       ") at " + detail::format_site(lead.site) + ", lane " + std::to_string(t.lane) + " at " +
                       detail::warp_op_name(t.op) + "(mask " + hex_mask(t.mask) + ") at " + detail::format_site(t.site) +
                       ". All non-exited lanes named in a mask must execute the same collective with the same mask.");
  }
  compute_collective(warp, need, lead);
  ws.arrived &= ~need;
  ++stats.warp_collectives;
  if (lead.op == detail::WarpOp::sync) detail::shared_after_warp_sync(warp);
  for (int i = 0; i < 32; ++i) {
    const int l = schedule_ == Schedule::reverse ? 31 - i : i;
    if (!(need >> l & 1u)) continue;
    EmuThread& t = lane_thread(warp, static_cast<unsigned>(l));
    t.state = State::runnable;
    push(&t);
  }
  return true;
}

void Engine::compute_collective(unsigned warp, uint32_t need, const EmuThread& lead) {
  using detail::WarpOp;
  // A lane outside the collective (exited, absent, or not in the mask) has no value to give:
  // reading it is undefined on a GPU, and here returns all-ones bits (NaN as a float).
  constexpr uint64_t kUndefined = ~0ull;
  uint64_t v[32];
  for (int l = 0; l < 32; ++l) v[l] = (need >> l & 1u) ? lane_thread(warp, static_cast<unsigned>(l)).value : kUndefined;
  uint32_t ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((need >> l & 1u) && v[l] != 0) ballot |= 1u << l;
  auto as_signed = [](uint64_t x) { return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(x))); };
  uint64_t uniform = 0;  // the result every lane gets, for the reductions
  switch (lead.op) {
    case WarpOp::reduce_add:
    case WarpOp::reduce_and:
    case WarpOp::reduce_or:
    case WarpOp::reduce_xor:
    case WarpOp::reduce_min:
    case WarpOp::reduce_max: {
      bool first = true;
      int64_t acc = 0;
      for (int l = 0; l < 32; ++l) {
        if (!(need >> l & 1u)) continue;
        const int64_t x = lead.is_signed ? as_signed(v[l]) : static_cast<int64_t>(static_cast<uint32_t>(v[l]));
        if (first) {
          acc = x;
          first = false;
          continue;
        }
        switch (lead.op) {
          case WarpOp::reduce_add: acc += x; break;
          case WarpOp::reduce_and: acc &= x; break;
          case WarpOp::reduce_or: acc |= x; break;
          case WarpOp::reduce_xor: acc ^= x; break;
          case WarpOp::reduce_min: acc = std::min(acc, x); break;
          default: acc = std::max(acc, x); break;
        }
      }
      uniform = static_cast<uint32_t>(acc);
      break;
    }
    case WarpOp::ballot: uniform = ballot; break;
    case WarpOp::any: uniform = ballot != 0; break;
    case WarpOp::all: uniform = ballot == need; break;
    case WarpOp::match_all: {
      bool equal = true;
      for (uint32_t m = need; m; m &= m - 1) equal = equal && v[std::countr_zero(m)] == lead.value;
      uniform = equal ? (uint64_t{1} << 32 | need) : 0;
      break;
    }
    default: break;
  }
  for (uint32_t m = need; m; m &= m - 1) {
    const unsigned l = static_cast<unsigned>(std::countr_zero(m));
    EmuThread& t = lane_thread(warp, l);
    switch (lead.op) {
      case WarpOp::sync: t.result = 0; break;
      case WarpOp::shfl_idx:
      case WarpOp::shfl_up:
      case WarpOp::shfl_down:
      case WarpOp::shfl_xor: t.result = v[shuffle_source(t.op, l, t.arg, t.width)]; break;
      case WarpOp::match_any: {
        uint32_t same = 0;
        for (uint32_t k = need; k; k &= k - 1)
          if (v[std::countr_zero(k)] == t.value) same |= 1u << std::countr_zero(k);
        t.result = same;
        break;
      }
      default: t.result = uniform; break;
    }
  }
}

void Engine::thread_exited(EmuThread& me) {
  me.state = State::exited;
  ++exited_;
  WarpState& ws = warps_[me.warp];
  ws.live &= ~(1u << me.lane);
  // Collectives that were waiting for this lane may now be complete without it.
  uint32_t pending = ws.arrived;
  while (pending) {
    const unsigned l = static_cast<unsigned>(std::countr_zero(pending));
    pending &= pending - 1;
    if (try_complete(me.warp, l)) pending &= ws.arrived;
  }
}

void Engine::rethrow_failure() {
  try {
    std::rethrow_exception(failure_);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& ex) {
    detail::fail(Fault::kernel_exception, detail::describe_thread(failed_thread_) + " threw: " + ex.what());
  } catch (...) {
    detail::fail(Fault::kernel_exception, detail::describe_thread(failed_thread_) + " threw a non-standard exception");
  }
}

void Engine::diagnose_hang() {
  const std::string kernel = "kernel '" + normalize_launch_name(launch_->name) + "'";
  // A warp collective first: it can name exactly which lanes are missing and where they are.
  for (unsigned i = 0; i < n_; ++i) {
    const EmuThread& t = *threads_[i];
    if (t.state != State::at_warp) continue;
    const WarpState& ws = warps_[t.warp];
    const uint32_t need = t.mask & ws.live;
    const uint32_t waiting = need & ws.arrived;
    const uint32_t missing = need & ~ws.arrived;
    // Where the missing lanes are instead: they cannot run, so they wait at a __syncthreads().
    std::vector<std::pair<detail::Site, uint32_t>> places;
    for (uint32_t m = missing; m; m &= m - 1) {
      const EmuThread& o = lane_thread(t.warp, static_cast<unsigned>(std::countr_zero(m)));
      auto it = std::find_if(places.begin(), places.end(), [&](auto& p) { return same_site(p.first, o.site); });
      if (it == places.end()) {
        places.emplace_back(o.site, 1u << o.lane);
      } else {
        it->second |= 1u << o.lane;
      }
    }
    std::string elsewhere;
    for (auto& [site, lanes] : places) {
      if (!elsewhere.empty()) elsewhere += "; ";
      elsewhere += "lanes " + lane_list(lanes) + " wait at __syncthreads() at " + detail::format_site(site);
    }
    detail::fail(Fault::warp_divergence,
                 kernel + " would hang in block " + coords(blockIdx) + ": lanes " + lane_list(waiting) + " of warp " +
                     std::to_string(t.warp) + " wait at " + detail::warp_op_name(t.op) + "(mask " + hex_mask(t.mask) +
                     ") at " + detail::format_site(t.site) + " for lanes " + lane_list(missing) +
                     " named in the mask, which never arrive (" + elsewhere +
                     "). Every non-exited lane named in a warp collective's mask must reach it.");
  }
  std::string exited;
  unsigned exited_count = 0;
  for (unsigned i = 0; i < n_; ++i) {
    if (threads_[i]->state != State::exited) continue;
    if (exited_count++ == 0) exited = "first: thread " + coords(threads_[i]->idx);
  }
  detail::fail(Fault::barrier_divergence,
               "__syncthreads() is not reached by every thread of block " + coords(blockIdx) + " in " + kernel + ": " +
                   barrier_groups(State::at_barrier) + " wait, while " + std::to_string(exited_count) +
                   (exited_count == 1 ? " thread" : " threads") + " exited without reaching it" +
                   (exited_count ? " (" + exited + ")" : "") +
                   ". A barrier must be reached by all threads of the block; on a GPU this hangs or releases "
                   "the barrier early.");
}

}  // namespace

Config& config() {
  static Config c = config_from_environment();
  return c;
}

std::map<std::string, LaunchRecord> launch_counts() {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  return registry();
}

std::string kernel_base_name(std::string_view launch_name) { return kernel_family(launch_name); }

Stats stats() { return t_engine ? t_engine->stats : Stats{}; }
void reset_stats() {
  if (t_engine) t_engine->stats = Stats{};
}

namespace detail {

void run_grid(const KernelLaunch& launch) {
  if (stream_is_capturing(launch.stream) || capture_forbids_legacy(launch.stream)) {
    if (current.in_kernel)
      fail(Fault::launch_config, "kernel '" + normalize_launch_name(launch.name) + "' launched from inside a kernel");
    validate(launch);
    notify_launch(launch.name, 1ull * launch.grid.x * launch.grid.y * launch.grid.z,
                  launch.block.x * launch.block.y * launch.block.z, launch.cost);
    capture_kernel(launch);  // recorded (or the capture invalidated and an Error thrown)
    return;
  }
  engine().run(launch);
}

void run_graph_kernel(const KernelLaunch& launch) { engine().run(launch, false); }

int block_barrier(BarrierOp op, int predicate, Site site) { return engine().block_barrier(op, predicate, site); }

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed, Site site) {
  return engine().warp_collective(op, mask, value, arg, width, is_signed, site);
}

unsigned active_mask() {
  Engine& e = engine();
  e.running("__activemask()");
  return e.active_mask();
}

const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::match_any: return "__match_any_sync";
    case WarpOp::match_all: return "__match_all_sync";
    case WarpOp::reduce_add: return "__reduce_add_sync";
    case WarpOp::reduce_min: return "__reduce_min_sync";
    case WarpOp::reduce_max: return "__reduce_max_sync";
    case WarpOp::reduce_and: return "__reduce_and_sync";
    case WarpOp::reduce_or: return "__reduce_or_sync";
    case WarpOp::reduce_xor: return "__reduce_xor_sync";
  }
  return "warp collective";
}

void check_pointer_argument(const char* kernel, int index, const void* p) {
  if (p == nullptr || is_device_accessible(p)) return;
  char addr[32];
  std::snprintf(addr, sizeof addr, "%p", p);
  fail(Fault::pointer_argument, "kernel '" + normalize_launch_name(kernel) + "' argument " + std::to_string(index) +
                                    " is " + addr +
                                    ", which is not device memory (cudaMalloc, cudaMallocAsync or cudaMallocHost): "
                                    "a GPU would fault on it. Was a host pointer passed to the kernel?");
}

void fail(Fault fault, const std::string& message) { throw Error(fault, message); }

std::string describe_thread(unsigned linear) {
  const uint3 t{linear % blockDim.x, linear / blockDim.x % blockDim.y, linear / (blockDim.x * blockDim.y)};
  const Engine* e = t_engine.get();
  const char* name = e && e->launch() ? e->launch()->name : "?";
  return "thread " + coords(t) + " of block " + coords(blockIdx) + " in kernel '" + normalize_launch_name(name) + "'";
}

const char* current_kernel_name() {
  const Engine* e = t_engine.get();
  return e && e->launch() ? e->launch()->name : "?";
}

std::string format_site(const Site& site) {
  if (!site.file) return "?";
  std::string_view f = site.file;
  size_t cut = f.rfind('/');
  if (cut != std::string_view::npos && cut > 0) {
    const size_t prev = f.rfind('/', cut - 1);
    if (prev != std::string_view::npos) f.remove_prefix(prev + 1);
  }
  return std::string(f) + ":" + std::to_string(site.line);
}

}  // namespace detail
}  // namespace bulwark::emu
