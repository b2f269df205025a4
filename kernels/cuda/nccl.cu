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

#include "kernels/cuda/common.cuh"
#endif

namespace bulwark::cuda {

#if defined(BULWARK_NCCL) && !defined(BULWARK_EMU)
namespace {
ncclComm_t g_comm = nullptr;
cudaStream_t g_side = nullptr;  // the asynchronous sums' stream

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
  return done;
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
void nccl_finalize() {}

#endif

}  // namespace bulwark::cuda
