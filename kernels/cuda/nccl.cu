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

#include <chrono>
#include <thread>

#include "kernels/cuda/common.cuh"
#endif

namespace bulwark::cuda {

#if defined(BULWARK_NCCL) && !defined(BULWARK_EMU)
namespace {
ncclComm_t g_comm = nullptr;
cudaStream_t g_side = nullptr;  // the asynchronous sums' stream
cudaEvent_t g_last = nullptr;   // recorded after the latest NCCL call

void mark_last(cudaStream_t s) {
  if (g_last == nullptr) check_cuda(cudaEventCreateWithFlags(&g_last, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventRecord(g_last, s), "cudaEventRecord");
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    throw std::runtime_error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(r) +
                             " (NCCL_DEBUG=INFO says more)");
}
}  // namespace

bool nccl_built() { return true; }

std::string nccl_unique_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  return std::string(id.internal, sizeof id.internal);
}

void nccl_init(const std::string& id, int rank, int size) {
  if (id.size() != sizeof(ncclUniqueId::internal))
    throw std::invalid_argument("nccl_init: the unique id is " + std::to_string(id.size()) + " bytes, not " +
                                std::to_string(sizeof(ncclUniqueId::internal)));
  ncclUniqueId uid;
  std::copy(id.begin(), id.end(), uid.internal);
  check_nccl(ncclCommInitRank(&g_comm, size, uid, rank), "ncclCommInitRank");
}

void nccl_all_reduce_sum(float* data, int64_t n) {
  if (g_comm == nullptr) throw std::logic_error("nccl_all_reduce_sum before nccl_init");
  check_nccl(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, g_comm, current_stream()),
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
  check_nccl(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, g_comm, g_side), "ncclAllReduce");
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
    check_nccl(ncclCommGetAsyncError(g_comm, &async), "ncclCommGetAsyncError");
    std::string failure;
    if (async != ncclSuccess && async != ncclInProgress)
      failure = std::string("reported ") + ncclGetErrorString(async);
    else if (std::chrono::steady_clock::now() > deadline)
      failure = "gave no answer for " + std::to_string(static_cast<int64_t>(timeout_seconds)) + " s";
    if (!failure.empty()) {
      ncclCommAbort(g_comm);  // frees the spinning kernels
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
  ncclCommDestroy(g_comm);
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
std::string nccl_unique_id() { no_nccl(); }
void nccl_init(const std::string&, int, int) { no_nccl(); }
void nccl_all_reduce_sum(float*, int64_t) { no_nccl(); }
void* nccl_all_reduce_sum_async(float*, int64_t) { no_nccl(); }
void nccl_join(void*) { no_nccl(); }
std::string nccl_wait_idle(double) { no_nccl(); }
void nccl_finalize() {}

#endif

}  // namespace bulwark::cuda
