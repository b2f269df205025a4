// The gradient all-reduce between GPUs, on NCCL (docs/distributed.md): the one NCCL call site,
// behind the raw-pointer launchers of cuda_kernels.h, wrapped by engine/comm.cpp's NCCL
// communicator. NCCL's ring all-reduce reduces each chunk on one rank and passes the result on,
// so every rank ends with the same bits, which the trainer's equal-weights contract needs.
//
// Real build, NCCL found (BULWARK_NCCL): ncclCommInitRank from a unique id that rank 0 makes and
// MPI broadcasts; ncclAllReduce in place on current_stream(), so the sum is ordered after the
// backward that wrote the gradients and before the optimizer kernel that reads them, and the host
// does not wait. The gradient buckets (training/data_parallel.h) use the asynchronous form: the
// sum runs on a side stream that waits for an event after the bucket's copies, so it overlaps
// the rest of the backward on current_stream(), which waits for its end event before the step. The emulated backend and a build without NCCL: nccl_built() is false and the
// calls throw; the MPI communicator (the "twin") sums through host memory there instead.
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_kernels.h"

#if defined(BULWARK_NCCL) && !defined(BULWARK_EMU)
#include <cuda_runtime.h>
#include <nccl.h>

#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "kernels/cuda/common.cuh"
#endif

namespace bulwark::cuda {

#if defined(BULWARK_NCCL) && !defined(BULWARK_EMU)
namespace {
// NCCL is opened at run time (dlopen), not linked: a machine without it still runs everything
// but a multi-GPU run, which then says what is missing on every rank instead of the dynamic
// loader refusing to start bulwark at all. The header gives the types; these are the calls.
struct NcclLibrary {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclGetVersion) get_version = nullptr;
  std::string path;   // the file opened
  std::string error;  // why none could be ("" when loaded)
};

template <class F>
bool resolve(void* handle, const char* name, F& f, std::string& error) {
  f = reinterpret_cast<F>(dlsym(handle, name));
  if (f == nullptr && error.empty()) error = std::string("it has no ") + name;
  return f != nullptr;
}

// BULWARK_NCCL_LIBRARY when set; else the loader's search for libnccl.so.2, then the library
// CMake found when bulwark was built.
NcclLibrary open_nccl() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("BULWARK_NCCL_LIBRARY"); env != nullptr && *env != '\0') {
    candidates.emplace_back(env);
  } else {
    candidates.emplace_back("libnccl.so.2");
#ifdef BULWARK_NCCL_FALLBACK
    candidates.emplace_back(BULWARK_NCCL_FALLBACK);
#endif
  }
  NcclLibrary lib;
  std::string tried;
  for (const std::string& c : candidates) {
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + std::string(why != nullptr ? why : c.c_str());
      continue;
    }
    std::string missing;
    resolve(h, "ncclGetUniqueId", lib.get_unique_id, missing);
    resolve(h, "ncclCommInitRank", lib.comm_init_rank, missing);
    resolve(h, "ncclAllReduce", lib.all_reduce, missing);
    resolve(h, "ncclCommDestroy", lib.comm_destroy, missing);
    resolve(h, "ncclCommAbort", lib.comm_abort, missing);
    resolve(h, "ncclCommGetAsyncError", lib.comm_get_async_error, missing);
    resolve(h, "ncclGetErrorString", lib.get_error_string, missing);
    resolve(h, "ncclGetVersion", lib.get_version, missing);
    if (missing.empty()) {
      lib.path = c;
      return lib;
    }
    tried += (tried.empty() ? "" : "; ") + c + ": " + missing + " (an NCCL older than 2.4?)";
    dlclose(h);
  }
  lib = NcclLibrary{};
  lib.error = "NCCL could not be loaded (" + tried +
              "): install it (libnccl2 from NVIDIA's CUDA repository, or the toolkit's) or set BULWARK_NCCL_LIBRARY "
              "to its libnccl.so.2";
  return lib;
}

const NcclLibrary& nccl_library() {
  static const NcclLibrary lib = open_nccl();
  return lib;
}

// The loaded library, or the reason it is not, thrown.
const NcclLibrary& nccl() {
  const NcclLibrary& lib = nccl_library();
  if (!lib.error.empty()) throw std::runtime_error(lib.error);
  return lib;
}

ncclComm_t g_comm = nullptr;
cudaStream_t g_side = nullptr;  // the asynchronous sums' stream
cudaEvent_t g_last = nullptr;   // recorded after the latest NCCL call

void mark_last(cudaStream_t s) {
  if (g_last == nullptr) check_cuda(cudaEventCreateWithFlags(&g_last, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventRecord(g_last, s), "cudaEventRecord");
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    throw std::runtime_error(std::string("NCCL ") + what + " failed: " + nccl().get_error_string(r) +
                             " (NCCL_DEBUG=INFO says more)");
}
}  // namespace

bool nccl_built() { return true; }

bool nccl_load(std::string* status) {
  const NcclLibrary& lib = nccl_library();
  if (!lib.error.empty()) {
    if (status) *status = lib.error;
    return false;
  }
  int v = 0;
  check_nccl(lib.get_version(&v), "ncclGetVersion");
  // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch since 2.9, major * 1000 + ... before.
  const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10,
            patch = v % 100;
  if (status)
    *status = "NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) + " (" +
              lib.path + ")";
  return true;
}

std::string nccl_unique_id() {
  ncclUniqueId id;
  check_nccl(nccl().get_unique_id(&id), "ncclGetUniqueId");
  return std::string(id.internal, sizeof id.internal);
}

void nccl_init(const std::string& id, int rank, int size) {
  if (id.size() != sizeof(ncclUniqueId::internal))
    throw std::invalid_argument("nccl_init: the unique id is " + std::to_string(id.size()) + " bytes, not " +
                                std::to_string(sizeof(ncclUniqueId::internal)));
  ncclUniqueId uid;
  std::copy(id.begin(), id.end(), uid.internal);
  check_nccl(nccl().comm_init_rank(&g_comm, size, uid, rank), "ncclCommInitRank");
}

void nccl_all_reduce_sum(float* data, int64_t n) {
  if (g_comm == nullptr) throw std::logic_error("nccl_all_reduce_sum before nccl_init");
  check_nccl(nccl().all_reduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, g_comm, current_stream()),
             "ncclAllReduce");
  mark_last(current_stream());
}

// A sum started while the backward still queues kernels: the side stream waits for an event
// recorded after the bucket's copies, NCCL runs there, and an event marks its end. Kernels
// queued on current_stream() meanwhile (the rest of the backward) overlap with it.
void* nccl_all_reduce_sum_async(float* data, int64_t n) {
  if (g_comm == nullptr) throw std::logic_error("nccl_all_reduce_sum_async before nccl_init");
  if (g_side == nullptr) check_cuda(cudaStreamCreateWithFlags(&g_side, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaEvent_t ready = nullptr, done = nullptr;
  check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventRecord(ready, current_stream()), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(g_side, ready, 0), "cudaStreamWaitEvent");
  check_cuda(cudaEventDestroy(ready), "cudaEventDestroy");  // released once it has happened
  check_nccl(nccl().all_reduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, g_comm, g_side),
             "ncclAllReduce");
  check_cuda(cudaEventRecord(done, g_side), "cudaEventRecord");
  mark_last(g_side);
  return done;
}

// NCCL's kernels spin until every peer joins: a dead peer would hang the next host wait. So the
// host polls the last call's event and NCCL's asynchronous error, sleeping 1 ms between polls.
std::string nccl_wait_idle(double timeout_seconds) {
  if (g_comm == nullptr || g_last == nullptr) return "";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  for (;;) {
    const cudaError_t state = cudaEventQuery(g_last);
    if (state == cudaSuccess) return "";
    if (state != cudaErrorNotReady) check_cuda(state, "cudaEventQuery");
    ncclResult_t async = ncclSuccess;
    check_nccl(nccl().comm_get_async_error(g_comm, &async), "ncclCommGetAsyncError");
    std::string failure;
    if (async != ncclSuccess && async != ncclInProgress)
      failure = std::string("reported ") + nccl().get_error_string(async);
    else if (std::chrono::steady_clock::now() > deadline)
      failure = "gave no answer for " + std::to_string(static_cast<int64_t>(timeout_seconds)) + " s";
    if (!failure.empty()) {
      nccl().comm_abort(g_comm);  // frees the spinning kernels
      g_comm = nullptr;
      return failure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void nccl_join(void* token) {
  auto done = static_cast<cudaEvent_t>(token);
  check_cuda(cudaStreamWaitEvent(current_stream(), done, 0), "cudaStreamWaitEvent");
  check_cuda(cudaEventDestroy(done), "cudaEventDestroy");
}

void nccl_finalize() {
  if (g_comm == nullptr) return;
  if (g_side != nullptr) {
    cudaStreamSynchronize(g_side);
    cudaStreamDestroy(g_side);
    g_side = nullptr;
  }
  if (g_last != nullptr) {
    cudaEventDestroy(g_last);
    g_last = nullptr;
  }
  nccl().comm_destroy(g_comm);
  g_comm = nullptr;
}

#else

namespace {
[[noreturn]] void no_nccl() {
  throw std::runtime_error(emulated() ? "NCCL does not run on the emulated CUDA backend (the MPI communicator sums "
                                        "there)"
                                      : "this build has no NCCL (a CUDA build finds it beside the toolkit)");
}
}  // namespace

bool nccl_built() { return false; }
bool nccl_load(std::string* status) {
  try {
    no_nccl();
  } catch (const std::exception& e) {
    if (status) *status = e.what();
  }
  return false;
}
std::string nccl_unique_id() { no_nccl(); }
void nccl_init(const std::string&, int, int) { no_nccl(); }
void nccl_all_reduce_sum(float*, int64_t) { no_nccl(); }
void* nccl_all_reduce_sum_async(float*, int64_t) { no_nccl(); }
void nccl_join(void*) { no_nccl(); }
std::string nccl_wait_idle(double) { no_nccl(); }
void nccl_finalize() {}

#endif

}  // namespace bulwark::cuda
