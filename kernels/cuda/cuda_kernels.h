#pragma once
// The CUDA backend's host launchers: the same raw-pointer contract as kernels/cpu/cpu_kernels.h
// (so the engine dispatches to either with the same arguments), f32 only, device pointers,
// work queued on bulwark::cuda::current_stream(). No launcher synchronises with the host.
//
// Every .cu file in this folder is compiled twice: by nvcc for the real GPU build, and by g++
// with kernels/emu/emu.h force-included for the emulated backend that the tests run
// (docs/emulator.md). Launches go through BW_LAUNCH, never <<<...>>>.
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/common/elementwise.h"
#include "kernels/common/fused_attack.h"
#include "kernels/common/optim.h"
#include "kernels/common/precision.h"
#include "kernels/cpu/cpu_kernels.h"  // Strided, ConvShape, PoolShape: plain structs shared by both backends

namespace bulwark::cuda {

using cpu::ConvShape;
using cpu::PoolShape;
using cpu::Strided;

// ---- runtime (runtime.cu) ----------------------------------------------------------------------
// Whether a usable device exists; `why` says what is missing when not.
bool device_available(std::string* why);
bool emulated();  // true in the emulated backend (kernels run on the CPU under kernels/emu)
// The emulator's record-only mode (launches counted and observed, no thread run); false and a
// no-op in the real backend.
bool set_record_only(bool on);
void* device_malloc(size_t bytes);     // stream-ordered caching allocator, never managed memory
void device_free(void* p);
uint64_t device_system_allocations();  // the cudaMalloc calls the cache could not spare, so far
// Free and total device memory (cudaMemGetInfo); the caching allocator's idle blocks count as used.
void device_memory_info(size_t* free_bytes, size_t* total_bytes);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);  // waits; raises deferred index errors
void copy_device(void* dst, const void* src, size_t bytes);
void synchronize();                                           // waits; raises deferred index errors
uint64_t host_copy_count();  // device-to-host copies so far (each one makes the host wait)
// An NVTX range around a profiled op (Nsight Systems shows them on the timeline); no-ops in the
// emulated backend.
void range_push(const char* name);
void range_pop();
uint64_t synchronize_count();  // synchronize() calls so far
// The profiler's timing events (one thread): record one on the current stream, nothing waits;
// once a synchronize has passed two of them, the milliseconds between; then all back to the pool.
using TimingEvent = int;
TimingEvent record_timing_event();
double timing_elapsed_ms(TimingEvent from, TimingEvent to);
void release_timing_events();

// This process's GPU: the rank's local index modulo the devices there (cudaSetDevice), before
// anything is allocated; a no-op in the emulated backend.
void select_device(int local_rank);

// ---- NCCL (nccl.cu) ----
// The gradient all-reduce between GPUs (engine/comm.h's NCCL communicator). nccl_built(): a real
// build that found NCCL; elsewhere the other calls throw. One communicator per process: rank 0's
// nccl_unique_id() reaches every rank (over MPI) before each calls nccl_init.
bool nccl_built();
// Opens NCCL's library (once; BULWARK_NCCL_LIBRARY names it, else the loader's search and the one
// found at build time): true when loaded, `status` its version and file, or why it is not.
bool nccl_load(std::string* status);
std::string nccl_unique_id();
void nccl_init(const std::string& id, int rank, int size);
void nccl_all_reduce_sum(float* device_data, int64_t n);  // in place, queued on current_stream()
// The same on NCCL's side stream, after what current_stream() queued so far; returns a token
// for nccl_join, which makes current_stream() wait for the sum (the host never waits).
void* nccl_all_reduce_sum_async(float* device_data, int64_t n);
void nccl_join(void* token);
// Waits on the host until the NCCL work issued so far has finished: "" when it has, else why not
// (NCCL reported an error, or `timeout_seconds` passed), the communicator then aborted.
std::string nccl_wait_idle(double timeout_seconds);
void nccl_finalize();

// ---- CUDA Graphs (runtime.cu) ----
// Capture of this thread's queued work into a graph, replayed later with one launch. Between
// begin_capture and end_capture nothing runs: launches and copies are recorded (on a capture
// stream: current_stream() returns it), allocations come from the graph's private pool (so no
// eager tensor is ever handed an address a replay writes), and host-to-device copies are staged
// in pinned memory the graph keeps. Anything that makes the host wait (a copy to the host,
// synchronize) fails the capture with CUDA's error. A kernel's arguments are frozen at capture,
// so what must change between replays lives in device memory the host writes before each one:
// the Philox offset of the draws below, an optimizer's learning rate.
struct CapturedGraph;
// Random draws of (philox_seed, offset >= philox_origin) made during the capture are replayed at
// offset - philox_origin + the base given to replay().
void begin_capture(uint64_t philox_seed, uint64_t philox_origin);
std::shared_ptr<CapturedGraph> end_capture();  // throws CUDA's reason when the capture failed
void abort_capture();                          // after an exception during capture; no-op when not capturing
bool capturing();                              // this thread
// What changes from one replay to the next, in device memory the kernels read when they run:
// the Philox base of the draws, and the optimizer step's learning rate (SGD) or its per-step
// scalars (Adam, from the hyper-parameters captured, this lr and step count t).
struct ReplayScalars {
  unsigned long long philox_base;
  float lr;
  optim::AdamStep<float> adam;
};
// The device copy of the scalars while this thread captures, else nullptr (launchers then pass
// their values as arguments, as always).
const ReplayScalars* captured_scalars();
// Called by the Adam launcher during a capture: the hyper-parameters every replay's step uses
// (its lr and t come from replay()). A capture may step an optimizer once.
void capture_optimizer_step(const optim::AdamHyper* adam);
// Runs the graph on the stream (the host does not wait): its draws at base `philox_base`, its
// optimizer step (if any) at learning rate lr, step count t.
void replay(const CapturedGraph& graph, uint64_t philox_base, double lr, int64_t t);
size_t graph_nodes(const CapturedGraph& graph);  // what one replay runs (kernels, copies, memsets)
// The Philox offset a random kernel adds its counters to: `offset` itself, or during a capture a
// device-resident base plus offset - origin, read by the kernel when it runs.
struct PhiloxOffset {
  const unsigned long long* base;
  uint64_t offset;
};
PhiloxOffset philox_offset(uint64_t seed, uint64_t offset);

// Deferred index check: queues a kernel that records the first idx[i] (of `count`, device
// memory) outside [0, bound). Nothing waits here; the next copy_to_host or synchronize throws
// it as std::out_of_range with index_error_message, which the engine's immediate CPU check
// uses too, so both backends word it alike:
//   IndexRole::index: "<op>: index 12 out of range [0, 10) at position 3"
//   IndexRole::label: "<op>: label 12 of sample 3 out of range [0, 10)"
enum class IndexRole { index, label };
void check_indices(const int32_t* idx, int64_t count, int64_t bound, const char* op, IndexRole role);
std::string index_error_message(const std::string& op, IndexRole role, int32_t value, int64_t position, int64_t bound);

// ---- elementwise / reductions / indexing (elementwise.cu, reduce.cu) ----------------------------
void strided_copy(const float* src, const Strided& s, float* dst);
void strided_copy_i32(const int32_t* src, const Strided& s, int32_t* dst);
void fill(float* dst, int64_t n, float value);
void fill_i32(int32_t* dst, int64_t n, int32_t value);
void add_i32(int32_t* dst, int64_t n, int32_t value);  // dst[i] += value, in place
void normalize_channels(const float* x, const float* mean, const float* stddev, float* y, int64_t n, int64_t channels,
                        int64_t inner);  // y = (x - mean[c]) / stddev[c], one launch (cpu::normalize_channels)
void convert_i32_to_f32(const int32_t* src, float* dst, int64_t n);
void convert_f32_to_i32(const float* src, int32_t* dst, int64_t n);
void unary(ew::Unary op, const float* x, float* y, int64_t n, float p0, float p1);
void binary(ew::Binary op, const float* a, const Strided& sa, const float* b, const Strided& sb, float* out);
void where(const float* c, const Strided& sc, const float* a, const Strided& sa, const float* b, const Strided& sb,
           float* out);
void sum_middle(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, float scale = 1.0f);
void argmax_middle(const float* x, int32_t* idx, int64_t outer, int64_t n, int64_t inner);
void gather_middle(const float* x, const int32_t* idx, float* out, int64_t outer, int64_t n, int64_t m, int64_t inner);
void scatter_add_middle(const float* src, const int32_t* idx, float* out, int64_t outer, int64_t n, int64_t m,
                        int64_t inner);

// ---- softmax and loss (softmax.cu) ----------------------------------------------------------------
void log_softmax_rows(const float* z, float* y, int64_t rows, int64_t cols);
void softmax_xent_rows(const float* z, const int32_t* labels, float* loss, int64_t rows, int64_t cols,
                       float* correct = nullptr);
void softmax_xent_backward_rows(const float* z, const int32_t* labels, const float* g, int64_t g_stride, float scale,
                                float* dz, int64_t rows, int64_t cols);

// ---- GEMM and convolution (gemm.cu, conv.cu) ---------------------------------------------------------
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc);
// C = op(A) op(B) + bias[N] on every row (a linear layer), relu(...) with `relu`: ours adds the bias
// (and applies the ReLU) in the tile loop's epilogue, one launch; the vendor route is cuBLAS and a
// bias kernel.
void gemm_bias(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, const float* bias, float* C, int64_t ldc, bool relu = false);
// C[i, j] += bias[j] (then the ReLU, with `relu`) for the M x N block of C (row stride ldc):
// gemm_bias's vendor epilogue.
void add_row_bias(float* C, int64_t ldc, int64_t M, int64_t N, const float* bias, bool relu = false);
// y = conv(x, w) + bias (bias may be null), relu(y) with `relu`: the bias+ReLU epilogue.
void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu = false);
void conv2d_backward_input(const ConvShape& s, const float* g, const float* w, float* dx);
void conv2d_backward_weight(const ConvShape& s, const float* x, const float* g, float* dw);

// ---- interval bound propagation (interval.cu; the contract of kernels/cpu/cpu_kernels.h) --------
void interval_conv2d_forward(const ConvShape& s, const float* c, const float* r, const float* w, const float* bias,
                             bool relu, float* out);
void interval_conv2d_backward_input(const ConvShape& s, const float* gc, const float* gr, const float* w, float* dc,
                                    float* dr);
void interval_conv2d_backward_weight(const ConvShape& s, const float* c, const float* r, const float* gc,
                                     const float* gr, const float* w, float* dw);
void interval_linear_forward(int64_t n, int64_t in, int64_t o, const float* c, const float* r, const float* w,
                             const float* bias, bool relu, float* out);
void interval_linear_backward_input(int64_t n, int64_t in, int64_t o, const float* gc, const float* gr,
                                    const float* w, float* dc, float* dr);
void interval_linear_backward_weight(int64_t n, int64_t in, int64_t o, const float* c, const float* r,
                                     const float* gc, const float* gr, const float* w, float* dw);
void interval_relu_backward(int64_t count, const float* pre, const float* g, float* gpre);
// The symbolic-interval ReLU (kernels/cuda/symbolic.cu); layouts as the CPU kernels'.
void symbolic_bounds_forward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bc,
                             const float* br, float* bounds);
void symbolic_bounds_backward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bc,
                              const float* br, const float* g, float* dc, float* dr);
void symbolic_relu_forward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bounds,
                           float* out);
void symbolic_relu_backward(int64_t n, int64_t d, int64_t m, const float* c, const float* r, const float* bounds,
                            const float* g, float* dc, float* dr, float* dbounds);
void elided_radius_forward(int64_t n, int64_t in, int64_t k, const float* r, const float* w, const int32_t* labels,
                           float* out);
void elided_radius_backward(int64_t n, int64_t in, int64_t k, const float* r, const float* w, const int32_t* labels,
                            const float* g, float* dr, float* dw);

// ---- which implementation gemm and conv2d_* run (kernel_source.cu, docs/kernels.md) ---------------
// ours (gemm.cu, conv.cu) or the vendor's (cuBLAS, cuDNN). automatic, the default: on a GPU the
// first launch of each (op, shape) times both and keeps the faster (a tie goes to ours); in the
// emulated backend, ours. Choosing vendor in the emulated backend throws std::invalid_argument.
enum class KernelSource { automatic, ours, vendor };
void set_kernel_source(KernelSource source);  // process-wide
KernelSource kernel_source();
const char* kernel_source_name(KernelSource source);        // "auto", "ours", "vendor"
KernelSource parse_kernel_source(const std::string& name);  // the inverse; std::invalid_argument otherwise

// The input format of ours (gemm.cu, conv.cu): fp32 runs the FP32 tile loop (gemm_tile.cuh),
// tf32 and bf16 the tensor-core one (tensor_core.cuh). Process-wide, fp32 by default. The
// interval loops (interval.cu) stay f32: a rounded bound would not be sound.
void set_math_precision(MathPrecision precision);
MathPrecision math_precision();

// ---- pooling and normalisation (pool.cu, batch_norm.cu) ---------------------------------------------
void max_pool2d_indices(const PoolShape& s, const float* x, int32_t* idx);
void avg_pool2d_forward(const PoolShape& s, const float* x, float* y);
void avg_pool2d_backward(const PoolShape& s, const float* g, float* dx);
void adaptive_avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* x, float* y);
void adaptive_avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* g,
                                  float* dx);
// relu / relu_out: the fused BN+ReLU, as in kernels/cpu/cpu_kernels.h.
void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* invstd, float* var, int64_t n, int64_t c, int64_t inner, double eps,
                              bool relu = false);
void batch_norm_backward_train(const float* x, const float* g, const float* gamma, const float* mean,
                               const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c,
                               int64_t inner, const float* relu_out = nullptr);

// ---- Philox, attack step, optimizer (random.cu, attack.cu, optim.cu) --------------------------------
void uniform(float* out, int64_t n, float lo, float hi, uint64_t seed, uint64_t offset);
// The fused L-inf step; with l1 != nullptr (a device address) also *l1 = sum |g| in double, queued
// like everything else: the host does not wait for it (attack.cu).
void pgd_step(const float* x, float* x_adv, const float* g, int64_t n, float eps, float alpha, double* l1);
void random_start(const float* x, float* x_adv, int64_t n, float eps, uint64_t seed, uint64_t offset);
// The whole PGD attack of a small per-sample network in one launch, one block per sample
// (kernels/common/fused_attack.h; cpu::fused_pgd is its reference); l1 as pgd_step's, of the last step.
void fused_pgd(const fused::Net<float>& net, const float* x, float* x_adv, const int32_t* y, int64_t n, int steps,
               float eps, float alpha, double* l1);

// One SGD-momentum step (kernels/common/optim.h) over every parameter in a single launch.
// `params` is a host array of `count` segments whose pointers are device pointers.
struct SgdSegment {
  float* param;
  const float* grad;
  float* momentum_buf;
  int64_t n;
};
void sgd_step_multi(const SgdSegment* params, int count, const optim::SgdHyper& h);

// One Adam step (kernels/common/optim.h; t >= 1, the step count including this one) over every
// parameter in a single launch; the same segment contract as sgd_step_multi.
struct AdamSegment {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
};
void adam_step_multi(const AdamSegment* params, int count, const optim::AdamHyper& h, int64_t t);

}  // namespace bulwark::cuda
