#pragma once
// The CUDA execution model on one CPU thread: grids, blocks, threads as fibers, barriers and
// warp collectives (scheduler.cpp), and the errors the emulator raises where a GPU would hang,
// fail the launch or silently compute garbage.
//
// How a launch runs (see docs/emulator.md for the full story):
//   - the launch is validated against the H100 limits (runtime.h) and rejected with an Error;
//   - blocks run one after another, in the order set by Config::schedule;
//   - the threads of a block are fibers on the calling OS thread, each with its own stack. A
//     fiber runs until it reaches __syncthreads() or a warp collective (__shfl_*_sync,
//     __ballot_sync, __syncwarp, ...), then the next runnable fiber of the block takes over. A
//     barrier releases when every thread of the block has arrived at the same __syncthreads();
//     a warp collective completes when every non-exited lane named in its mask has arrived;
//   - when no fiber can run and the block is not finished, the kernel would hang on a GPU: the
//     emulator says which threads wait where, and which ones exited or wait elsewhere.
// The builtin variables threadIdx, blockIdx, blockDim and gridDim are thread_local globals that
// the scheduler rewrites on every fiber switch, so kernel code reads them as on a GPU.
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include "kernels/emu/cuda_types.h"
#include "kernels/emu/launch_cost.h"
#include "kernels/emu/runtime.h"

extern thread_local constinit uint3 threadIdx;
extern thread_local constinit uint3 blockIdx;
extern thread_local constinit dim3 blockDim;
extern thread_local constinit dim3 gridDim;
inline constexpr int warpSize = 32;

namespace bulwark::emu {

// What went wrong, so tests can assert on the kind as well as the message.
enum class Fault {
  launch_config,        // block/grid shape, parameter size, stream, nested launch
  shared_memory_limit,  // static + dynamic shared memory over the per-block limit
  pointer_argument,     // a kernel argument points to host memory
  barrier_divergence,   // __syncthreads() not reached by every thread, or at different places
  warp_divergence,      // a warp collective some lane in its mask never reaches, or a bad mask
  shared_race,          // two threads touch one shared byte between barriers, one writing
  shared_out_of_bounds, // an index outside a BW_SHARED array or the dynamic shared memory
  shared_uninitialized, // a read of shared memory no thread of the block has written
  kernel_exception,     // the kernel threw, or called __trap()
};
const char* fault_name(Fault fault);

class Error : public std::runtime_error {
 public:
  Error(Fault fault, const std::string& message) : std::runtime_error(message), fault_(fault) {}
  Fault fault() const { return fault_; }

 private:
  Fault fault_;
};

// The order in which runnable threads (and blocks) are resumed. Any order is a legal GPU
// schedule, so a correct kernel gives the same result under all of them; running a test under
// two orders exposes order dependence that the shared-memory checker cannot see (global memory).
enum class Schedule { forward, reverse, shuffled };

struct Config {
  size_t stack_bytes = 64 * 1024;        // per emulated thread; env BULWARK_EMU_STACK_KB
  bool check_shared = true;              // race + uninitialized-read detection on BW_SHARED memory
  bool check_pointer_arguments = true;   // pointer kernel arguments must be device-accessible
  bool poison_device_memory = true;      // cudaMalloc fills with 0xFF bytes
  Schedule schedule = Schedule::forward; // env BULWARK_EMU_SCHEDULE=forward|reverse|shuffled[:seed]
  uint64_t schedule_seed = 0;
  // Launches are validated, counted (with their stated cost) and shown to the thread's
  // LaunchObserver, but no thread runs and device memory is not poisoned: what
  // bulwark-bench gpu-model needs to count a training step of a large model in seconds. Results
  // are garbage, so only code that reads nothing back may run this way (a method's train_batch
  // does not). Env BULWARK_EMU_RECORD_ONLY=1.
  bool record_only = false;
};
// The process-wide configuration, read from the environment on first use. Change it between
// launches, not during one.
Config& config();

// Launch registry: how often each kernel ran to completion under the emulator, keyed by the
// name as written at the launch site (BW_LAUNCH stringifies it; whitespace and enclosing
// parentheses removed, so "(gemm<64, 64>)" is recorded as "gemm<64,64>").
struct LaunchRecord {
  uint64_t launches = 0;
  uint64_t blocks = 0;
  uint64_t threads = 0;
  double flops = 0, bytes = 0;  // the stated costs (launch_cost.h) summed; unstated ones add nothing
};
std::map<std::string, LaunchRecord> launch_counts();
// "bulwark::cuda::gemm<64,64>" -> "gemm": the name a __global__ definition has in its source.
std::string kernel_base_name(std::string_view launch_name);

// Work counters of the calling OS thread, for performance reports.
struct Stats {
  uint64_t blocks = 0;
  uint64_t threads = 0;
  uint64_t fiber_switches = 0;
  uint64_t block_barriers = 0;
  uint64_t warp_collectives = 0;
};
Stats stats();
void reset_stats();

namespace detail {

// One launch, type-erased by bulwark::launch (launch.h).
struct KernelLaunch {
  const char* name;   // as written at the launch site
  const void* func;   // the kernel's address (key of cudaFuncSetAttribute)
  dim3 grid, block;
  size_t dynamic_shared;
  cudaStream_t stream;
  size_t param_bytes;
  LaunchCost cost;               // as stated at the launch site (launch_cost.h)
  void (*invoke)(void* params);  // calls the kernel with a fresh copy of the arguments
  void* params;
  void* (*clone_params)(const void* params);  // a heap copy of params (stream capture keeps one)
  void (*destroy_params)(void* params);
};
// Runs a launch to completion, or records it into the capture of its stream (graph.cpp).
void run_grid(const KernelLaunch& launch);
// Runs a kernel node of a graph being launched: as run_grid, without telling the LaunchObserver.
void run_graph_kernel(const KernelLaunch& launch);

// Raised at launch time for a pointer argument that a GPU could not dereference.
void check_pointer_argument(const char* kernel, int index, const void* p);

// Where an emulated thread waits, for error messages. Barriers and collectives take a defaulted
// Site::current(): the __builtin_FILE/LINE/FUNCTION default arguments are evaluated at the call
// site, as std::source_location's are, and unlike std::source_location they exist in g++ and in
// Debian's clang 14 with libstdc++ 12 (which lacks __builtin_source_location), so the emulator
// also builds with clang (the libFuzzer build of tests/fuzz links it).
struct Site {
  const char* file = nullptr;
  unsigned line = 0;
  const char* function = nullptr;
  static constexpr Site current(const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
                                const char* function = __builtin_FUNCTION()) {
    return {file, line, function};
  }
};

enum class BarrierOp { sync, count, all, any };
int block_barrier(BarrierOp op, int predicate, Site site);

enum class WarpOp { sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, match_any, match_all,
                    reduce_add, reduce_min, reduce_max, reduce_and, reduce_or, reduce_xor };
const char* warp_op_name(WarpOp op);
// The value of one lane after the collective. For shuffles, `arg` is the source lane, delta or
// lane mask and `width` the segment; for match_all, bit 32 of the result says "all equal";
// reduce_min/max compare `value` as signed when `is_signed`.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed,
                         Site site);
unsigned active_mask();

// The fiber-local state that inline device code needs without a call into the scheduler.
struct ProxySlot { void* p; };
inline constexpr unsigned kProxySlots = 64;
struct Current {
  ProxySlot* proxy_ring = nullptr;  // the running thread's ring of shared-memory proxies
  unsigned proxy_pos = 0;           // its next slot (saved and restored on fiber switches)
  unsigned linear = 0;              // the running thread's index within its block
  bool in_kernel = false;
  bool check_shared = false;
};
extern thread_local constinit Current current;

[[noreturn]] void fail(Fault fault, const std::string& message);
// "thread (3,1,0) of block (7,0,0) in kernel 'gemm'", for the thread with this linear index.
std::string describe_thread(unsigned linear);

}  // namespace detail
}  // namespace bulwark::emu
