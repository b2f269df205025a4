// Tests of the CUDA execution-model emulator (kernels/emu, docs/emulator.md).
//
// This file is itself CUDA source run by the emulator: it includes kernels/emu/emu.h (a kernel
// file gets it force-included instead) and defines small kernels next to the tests that launch
// them. tests/emu_kernels/gemm.cu goes through the exact build path of kernels/cuda
// (bulwark_emulated_cuda in CMakeLists.txt).
//
// Two halves: kernels that are correct must give exactly the CPU's answer at awkward sizes and
// under every schedule; kernels that break a rule of the GPU (too many threads, too much shared
// memory, a barrier not all threads reach, a shared-memory race, a shuffle whose lanes never
// meet, ...) must be rejected with an Error of the right kind and a message that says what and
// where.
#include <catch2/catch.hpp>

#include "kernels/emu/emu.h"
#include "kernels/emu/launch.h"

#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda_test_util.h"
#include "tests/emu_kernels/emu_kernels.h"

namespace emu = bulwark::emu;
using Catch::Matchers::Contains;
using bulwark::testing::DeviceBuffer;

namespace {

// ---- helpers -------------------------------------------------------------------------------------

// Restores the emulator's configuration when the scope ends.
struct ConfigGuard {
  emu::Config saved = emu::config();
  ~ConfigGuard() { emu::config() = saved; }
};

// For tests of the checker and of which thread a message names: those assume the shared-memory
// checks on and the forward schedule, whatever BULWARK_EMU_SCHEDULE / _CHECK_SHARED the suite
// runs under.
struct CheckedForward : ConfigGuard {
  CheckedForward() {
    emu::config().schedule = emu::Schedule::forward;
    emu::config().check_shared = true;
  }
};

// The Error a launch throws; fails the test if it throws nothing or something else.
template <class F>
emu::Error launch_error(F f) {
  try {
    f();
  } catch (const emu::Error& e) {
    return e;
  }
  FAIL("expected bulwark::emu::Error");
  return emu::Error(emu::Fault::kernel_exception, "unreachable");
}

std::vector<float> small_ints(size_t n, unsigned seed, int lo = -4, int hi = 4) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(d(rng));
  return v;
}

// ---- correct kernels -----------------------------------------------------------------------------

__global__ void vector_add(const float* a, const float* b, float* c, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// One partial sum per block: grid-stride loads, then a shared-memory tree.
__global__ void block_sum(const float* x, float* partial, int n) {
  BW_SHARED(float, sdata, [256]);
  const int tid = threadIdx.x;
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + tid; i < n; i += blockDim.x * gridDim.x) v += x[i];
  sdata[tid] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (tid < stride) sdata[tid] += sdata[tid + stride];
    __syncthreads();
  }
  if (tid == 0) partial[blockIdx.x] = sdata[0];
}

// Warp-level sums with __shfl_down_sync, one value per warp through shared memory, and a count
// of positive inputs with __ballot_sync.
__global__ void warp_sum_and_count(const float* x, float* sums, int* positives, int n) {
  BW_SHARED(float, warp_sums, [32]);
  BW_SHARED(int, warp_counts, [32]);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = i < n ? x[i] : 0.0f;
  const unsigned positive = __ballot_sync(0xffffffffu, i < n && x[i] > 0.0f);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) {
    warp_sums[warp] = v;
    warp_counts[warp] = __popc(positive);
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    float s = lane < warps ? float(warp_sums[lane]) : 0.0f;
    int c = lane < warps ? int(warp_counts[lane]) : 0;
    for (int offset = 16; offset > 0; offset /= 2) {
      s += __shfl_xor_sync(0xffffffffu, s, offset);
      c += __shfl_xor_sync(0xffffffffu, c, offset);
    }
    if (lane == 0) {
      sums[blockIdx.x] = s;
      positives[blockIdx.x] = c;
    }
  }
}

// Every lane records what each shuffle flavour hands it, for comparison with the PTX rules.
__global__ void shuffle_table(int* out, int width) {
  const int lane = threadIdx.x;
  const int v = 100 + lane;
  out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, 3, width);
  out[1 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 2, width);
  out[2 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3, width);
  out[3 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  out[4 * 32 + lane] = __shfl_sync(0xffffffffu, v, -1, width);
}

__global__ void warp_votes(const int* x, unsigned* out) {
  const int lane = threadIdx.x % 32;
  const int v = x[threadIdx.x];
  unsigned* o = out + 8 * (threadIdx.x / 32);
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
  const int any = __any_sync(0xffffffffu, v > 5);
  const int all = __all_sync(0xffffffffu, v >= 0);
  const unsigned same = __match_any_sync(0xffffffffu, v % 3);
  const unsigned sum = __reduce_add_sync(0xffffffffu, static_cast<unsigned>(v));
  const int lowest = __reduce_min_sync(0xffffffffu, v - 10);
  if (lane == 0) {
    o[0] = ballot;
    o[1] = static_cast<unsigned>(any);
    o[2] = static_cast<unsigned>(all);
    o[3] = same;
    o[4] = sum;
    o[5] = static_cast<unsigned>(lowest);
    o[6] = __activemask();
  }
}

__global__ void histogram(const int* x, int n, unsigned* bins, int nbins) {
  BW_SHARED(unsigned, local, [64]);
  for (int b = threadIdx.x; b < nbins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    atomicAdd(&local[x[i] % nbins], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < nbins; b += blockDim.x) atomicAdd(&bins[b], unsigned(local[b]));
}

// Float max has no atomic in CUDA; the idiom is a CAS loop on the bits.
__device__ __forceinline__ void atomic_max_float(float* address, float value) {
  int* bits = reinterpret_cast<int*>(address);
  int old = *bits;
  while (__int_as_float(old) < value) {
    const int assumed = old;
    old = atomicCAS(bits, assumed, __float_as_int(value));
    if (old == assumed) break;
  }
}

__global__ void atomic_mix(const float* x, int n, float* max_out, int* min_out, int* max_out_int, unsigned* ring,
                           int* exchanged) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomic_max_float(max_out, x[i]);
  atomicMin(min_out, static_cast<int>(x[i]));
  atomicMax(max_out_int, static_cast<int>(x[i]));
  atomicInc(ring, 9u);  // counts modulo 10
  atomicExch(exchanged, 7);
}

// Reverses each block's segment through dynamic shared memory sized at launch.
__global__ void reverse_segments(const float* x, float* y, int n) {
  BW_DYNAMIC_SHARED(float, buf);
  const int base = blockIdx.x * blockDim.x;
  const int i = base + threadIdx.x;
  const int tid = threadIdx.x;
  const int len = min(static_cast<int>(blockDim.x), n - base);
  if (tid < len) buf[tid] = x[i];
  __syncthreads();
  if (tid < len) y[i] = buf[len - 1 - tid];
}

// Touches every byte of a large dynamic shared-memory buffer (which needs the opt-in).
__global__ void fill_dynamic(int words, int* out) {
  BW_DYNAMIC_SHARED(int, buf);
  for (int w = threadIdx.x; w < words; w += blockDim.x) buf[w] = w;
  __syncthreads();
  int s = 0;
  for (int w = threadIdx.x; w < words; w += blockDim.x) s += buf[(w + 1) % words];
  atomicAdd(out, s);
}

__global__ void barrier_votes(const int* x, int* out) {
  const int v = x[threadIdx.x];
  const int count = __syncthreads_count(v > 0);
  const int all = __syncthreads_and(v > 0);
  const int any = __syncthreads_or(v > 5);
  if (threadIdx.x == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
  }
}

// Plain __shared__ (unchecked, but it must work): a per-block transpose-in-place of indices.
__global__ void plain_shared_reverse(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x) * 10;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void thread_coordinates(int* out) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int g = block * blockDim.x * blockDim.y * blockDim.z + linear;
  out[4 * g + 0] = threadIdx.x + 100 * threadIdx.y + 10000 * threadIdx.z;
  out[4 * g + 1] = blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z;
  out[4 * g + 2] = __shfl_sync(0xffffffffu, linear, 0);  // lane 0 of my warp
  out[4 * g + 3] = warpSize;
}

// Warp-synchronous exchange through shared memory, correct only because of the __syncwarp().
__global__ void warp_exchange(int* out, bool sync) {
  BW_SHARED(int, s, [32]);
  s[threadIdx.x] = threadIdx.x;
  if (sync) __syncwarp();
  out[threadIdx.x] = s[threadIdx.x / 2];
}

// Last writer wins: the result depends on the order threads run, which no barrier fixes.
__global__ void last_writer(int* out) { out[0] = threadIdx.x; }

// Lanes 16-31 exit before the shuffle: a full mask still completes (exited lanes are absent,
// as CUDA specifies), and reading an exited lane gives the emulator's "undefined" all-one bits.
__global__ void shuffle_after_exit(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 8);
}

// ---- kernels that break the rules ---------------------------------------------------------------

__global__ void noop() {}

__global__ void big_static_shared(float* out) {
  BW_SHARED(float, big, [12800]);  // 51,200 bytes
  big[threadIdx.x] = 1.0f;
  out[0] = big[threadIdx.x];
}

__global__ void static_40k(float* out) {
  BW_SHARED(float, tile, [10240]);  // 40,960 bytes
  BW_DYNAMIC_SHARED(float, extra);
  tile[threadIdx.x] = 1.0f;
  extra[threadIdx.x] = tile[threadIdx.x];
  out[0] = extra[threadIdx.x];
}

__global__ void barrier_in_branch(float* out) {
  BW_SHARED(float, s, [64]);
  s[threadIdx.x] = 1.0f;
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void two_barriers(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// The classic bug: an early return before a barrier, with a grid that is not a multiple.
__global__ void early_return(const float* x, float* y, int n) {
  BW_SHARED(float, s, [128]);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  s[threadIdx.x] = x[i];
  __syncthreads();
  y[i] = s[threadIdx.x] + s[(threadIdx.x + 1) % blockDim.x];
}

// block_sum without the __syncthreads() inside the tree loop.
__global__ void racy_sum(const float* x, float* out) {
  BW_SHARED(float, sdata, [128]);
  const int tid = threadIdx.x;
  sdata[tid] = x[tid];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (tid < stride) sdata[tid] += sdata[tid + stride];
  }
  if (tid == 0) out[0] = sdata[0];
}

// Reads a neighbour's element right after writing its own, without any barrier.
__global__ void racy_neighbour(float* out) {
  BW_SHARED(float, s, [64]);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (threadIdx.x > 0) out[threadIdx.x] = s[threadIdx.x - 1];
}

__global__ void atomics_then_read(unsigned* out) {
  BW_SHARED(unsigned, counter, [1]);
  if (threadIdx.x == 0) counter[0] = 0;
  __syncthreads();
  atomicAdd(&counter[0], 1u);
  out[threadIdx.x] = counter[0];  // reads while other threads may still be adding
}

__global__ void index_past_end(float* out) {
  BW_SHARED(float, s, [32]);
  s[threadIdx.x + 1] = 1.0f;
  out[0] = 0.0f;
}

__global__ void reads_unwritten(float* out) {
  BW_SHARED(float, s, [64]);
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void needs_dynamic(float* out) {
  BW_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.0f;
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void shuffle_outside_mask(float* out) {
  const float v = __shfl_sync(0x0000ffffu, 1.0f, 0);  // lanes 16-31 call it too
  out[threadIdx.x] = v;
}

__global__ void shuffle_meets_barrier(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_down_sync(0xffffffffu, v, 1);  // waits for lanes 16-31 ...
  }
  __syncthreads();  // ... which wait here
  out[threadIdx.x] = v;
}

__global__ void mismatched_collectives(unsigned* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
  } else {
    out[threadIdx.x] = static_cast<unsigned>(__shfl_sync(0xffffffffu, 1, 0));
  }
}

__global__ void bad_width(float* out) { out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0, 12); }

__global__ void traps(float* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1.0f;
}

__global__ void throws_in_kernel(float* out) {
  if (blockIdx.x == 1 && threadIdx.x == 5) throw std::out_of_range("index 99 out of range");
  out[threadIdx.x] = 1.0f;
}

__global__ void launches_inside(float* out) { BW_LAUNCH(noop, 1, 1, 0, 0); }

__device__ char recurse(int depth) {
  volatile char frame[16 * 1024];
  frame[0] = static_cast<char>(depth);
  if (depth > 0) frame[1] = recurse(depth - 1);
  return frame[0] + frame[1];
}

__global__ void deep_stack(float* out, int depth) { out[0] = recurse(depth); }

}  // namespace

// ---- correct kernels give the CPU's answer -------------------------------------------------------

TEST_CASE("emu: vector add at awkward sizes and block shapes", "[emu]") {
  for (int n : {1, 31, 1000, 4097}) {
    for (int block : {32, 96, 1024}) {
      const auto a = small_ints(n, 1), b = small_ints(n, 2);
      DeviceBuffer<float> da(a), db(b), dc(static_cast<size_t>(n));
      BW_LAUNCH(vector_add, (n + block - 1) / block, block, 0, 0, da.ptr, db.ptr, dc.ptr, n);
      const auto c = dc.host();
      for (int i = 0; i < n; ++i) REQUIRE(c[i] == a[i] + b[i]);
    }
  }
}

TEST_CASE("emu: tiled shared-memory GEMM 67x45x33 matches a CPU loop exactly, under every schedule", "[emu]") {
  const int m = 67, n = 45, k = 33;
  const auto a = small_ints(size_t(m) * k, 3), b = small_ints(size_t(k) * n, 4);
  std::vector<float> ref(size_t(m) * n, 0.0f);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p) ref[size_t(i) * n + j] += a[size_t(i) * k + p] * b[size_t(p) * n + j];
  const size_t in_use = emu::device_bytes_in_use();
  for (emu::Schedule schedule : {emu::Schedule::forward, emu::Schedule::reverse, emu::Schedule::shuffled}) {
    for (int tile : {8, 16, 32}) {
      ConfigGuard guard;
      emu::config().schedule = schedule;
      emu::config().schedule_seed = 11;
      REQUIRE(emu_kernels::gemm_tiled(a, b, m, n, k, tile) == ref);
    }
  }
  REQUIRE(emu::device_bytes_in_use() == in_use);  // the host wrapper freed everything
}

TEST_CASE("emu: block reduction with __syncthreads over several blocks", "[emu]") {
  for (int n : {1, 255, 256, 10007}) {
    const auto x = small_ints(n, 5);
    const int blocks = 7;
    DeviceBuffer<float> dx(x), partial(static_cast<size_t>(blocks));
    BW_LAUNCH(block_sum, blocks, 256, 0, 0, dx.ptr, partial.ptr, n);
    const auto p = partial.host();
    REQUIRE(std::accumulate(p.begin(), p.end(), 0.0f) == std::accumulate(x.begin(), x.end(), 0.0f));
  }
}

TEST_CASE("emu: warp reduction with __shfl_down_sync/__shfl_xor_sync and a __ballot_sync count", "[emu]") {
  const int n = 1000, block = 128;
  const int blocks = (n + block - 1) / block;
  const auto x = small_ints(n, 6);
  DeviceBuffer<float> dx(x), sums(static_cast<size_t>(blocks));
  DeviceBuffer<int> positives(static_cast<size_t>(blocks));
  BW_LAUNCH(warp_sum_and_count, blocks, block, 0, 0, dx.ptr, sums.ptr, positives.ptr, n);
  const auto s = sums.host();
  const auto c = positives.host();
  for (int bi = 0; bi < blocks; ++bi) {
    float ref = 0.0f;
    int count = 0;
    for (int i = bi * block; i < std::min(n, (bi + 1) * block); ++i) {
      ref += x[i];
      count += x[i] > 0.0f;
    }
    REQUIRE(s[bi] == ref);
    REQUIRE(c[bi] == count);
  }
}

TEST_CASE("emu: shuffles follow the PTX lane rules for every width", "[emu]") {
  for (int width : {32, 16, 8, 4, 2, 1}) {
    DeviceBuffer<int> out(5 * 32);
    BW_LAUNCH(shuffle_table, 1, 32, 0, 0, out.ptr, width);
    const auto o = out.host();
    for (int lane = 0; lane < 32; ++lane) {
      const int first = lane / width * width, last = first + width - 1;
      const int up = lane - 2 >= first ? lane - 2 : lane;
      const int down = lane + 3 <= last ? lane + 3 : lane;
      const int x = lane ^ 5;
      const int xr = x <= last ? x : lane;  // xor leaving the segment upwards keeps its own value
      INFO("width " << width << " lane " << lane);
      REQUIRE(o[0 * 32 + lane] == 100 + first + 3 % width);
      REQUIRE(o[1 * 32 + lane] == 100 + up);
      REQUIRE(o[2 * 32 + lane] == 100 + down);
      REQUIRE(o[3 * 32 + lane] == 100 + xr);
      REQUIRE(o[4 * 32 + lane] == 100 + first + width - 1);  // srcLane -1 is lane width-1 of the segment
    }
  }
}

TEST_CASE("emu: ballot, any, all, match and reduce, with a partial last warp", "[emu]") {
  const CheckedForward checked_forward;
  // 48 threads: warp 0 is full, warp 1 has lanes 0-15 only (the others count as exited).
  std::vector<int> x(48);
  for (int i = 0; i < 48; ++i) x[i] = (i * 7) % 11 - 2;
  DeviceBuffer<int> dx(x);
  DeviceBuffer<unsigned> out(16);
  BW_LAUNCH(warp_votes, 1, 48, 0, 0, dx.ptr, out.ptr);
  const auto o = out.host();
  for (int w = 0; w < 2; ++w) {
    const int lanes = w == 0 ? 32 : 16;
    unsigned ballot = 0, same = 0, sum = 0;
    bool any = false, all = true;
    int lowest = 1 << 30;
    for (int l = 0; l < lanes; ++l) {
      const int v = x[32 * w + l];
      if (v > 0) ballot |= 1u << l;
      any = any || v > 5;
      all = all && v >= 0;
      if (v % 3 == x[32 * w] % 3) same |= 1u << l;
      sum += static_cast<unsigned>(v);
      lowest = std::min(lowest, v - 10);
    }
    INFO("warp " << w);
    REQUIRE(o[8 * w + 0] == ballot);
    REQUIRE(o[8 * w + 1] == unsigned(any));
    REQUIRE(o[8 * w + 2] == unsigned(all));
    REQUIRE(o[8 * w + 3] == same);
    REQUIRE(o[8 * w + 4] == sum);
    REQUIRE(static_cast<int>(o[8 * w + 5]) == lowest);
    REQUIRE(o[8 * w + 6] == (w == 0 ? 0xffffffffu : 0x0000ffffu));
  }
}

TEST_CASE("emu: exited lanes are absent from warp collectives", "[emu]") {
  const CheckedForward checked_forward;
  DeviceBuffer<int> out(16);
  BW_LAUNCH(shuffle_after_exit, 1, 32, 0, 0, out.ptr);
  const auto o = out.host();
  for (int lane = 0; lane < 8; ++lane) REQUIRE(o[lane] == lane + 8);
  for (int lane = 8; lane < 16; ++lane) REQUIRE(o[lane] == -1);  // lanes 16-23 had exited
}

TEST_CASE("emu: the hand-written bit and conversion intrinsics", "[emu]") {
  REQUIRE(__brev(1u) == 0x80000000u);
  REQUIRE(__brev(0x12345678u) == 0x1E6A2C48u);
  REQUIRE(__brevll(1ull) == 0x8000000000000000ull);
  REQUIRE(__byte_perm(0x33221100u, 0x77665544u, 0x4321u) == 0x44332211u);
  REQUIRE(__byte_perm(0x33221100u, 0x77665544u, 0x7007u) == 0x77000077u);
  REQUIRE(__funnelshift_l(0x80000000u, 0x1u, 1) == 3u);
  REQUIRE(__funnelshift_r(0x2u, 0x1u, 1) == 0x80000001u);
  REQUIRE(__ffs(0) == 0);
  REQUIRE(__ffs(8) == 4);
  REQUIRE(__clz(1) == 31);
  REQUIRE(__popc(0xffu) == 8);
  REQUIRE(__umulhi(0xffffffffu, 0xffffffffu) == 0xfffffffeu);
  REQUIRE(__mul24(0x00800000, 2) == -16777216);  // bit 23 is the sign of a 24-bit operand
  REQUIRE(__sad(3, 10, 5u) == 12u);
  REQUIRE(__float2int_rn(2.5f) == 2);  // ties to even
  REQUIRE(__float2int_rn(3.5f) == 4);
  REQUIRE(__float2int_rn(-2.5f) == -2);
  REQUIRE(__float2int_rd(-2.5f) == -3);
  REQUIRE(__saturatef(std::nanf("")) == 0.0f);
  REQUIRE(__saturatef(1.5f) == 1.0f);
  REQUIRE(__float_as_uint(1.0f) == 0x3f800000u);
  REQUIRE(__uint_as_float(0x40000000u) == 2.0f);
  REQUIRE(min(-1, 2u) == 2u);  // CUDA's min(int, unsigned) compares as unsigned
  REQUIRE(max(1.0f, std::nanf("")) == 1.0f);
  REQUIRE(rsqrtf(4.0f) == 0.5f);
}

TEST_CASE("emu: shared-memory histogram with atomics, and the global atomics", "[emu]") {
  const int n = 5000, nbins = 37;
  std::vector<int> x(n);
  std::mt19937 rng(7);
  for (int& v : x) v = static_cast<int>(rng() % 1000);
  DeviceBuffer<int> dx(x);
  DeviceBuffer<unsigned> bins(static_cast<size_t>(nbins));
  REQUIRE(cudaMemset(bins.ptr, 0, nbins * sizeof(unsigned)) == cudaSuccess);
  BW_LAUNCH(histogram, 5, 128, 0, 0, dx.ptr, n, bins.ptr, nbins);
  std::vector<unsigned> ref(nbins, 0);
  for (int v : x) ref[v % nbins]++;
  REQUIRE(bins.host() == ref);

  const auto f = small_ints(300, 8, -50, 50);
  DeviceBuffer<float> df(f), fmax(1);
  DeviceBuffer<int> imin(1), imax(1), exch(1);
  DeviceBuffer<unsigned> ring(1);
  const float lowest = -1e30f;
  const int big = 1 << 30, small = -(1 << 30), zero = 0;
  cudaMemcpy(fmax.ptr, &lowest, 4, cudaMemcpyHostToDevice);
  cudaMemcpy(imin.ptr, &big, 4, cudaMemcpyHostToDevice);
  cudaMemcpy(imax.ptr, &small, 4, cudaMemcpyHostToDevice);
  cudaMemcpy(ring.ptr, &zero, 4, cudaMemcpyHostToDevice);
  cudaMemcpy(exch.ptr, &zero, 4, cudaMemcpyHostToDevice);
  BW_LAUNCH(atomic_mix, 3, 128, 0, 0, df.ptr, 300, fmax.ptr, imin.ptr, imax.ptr, ring.ptr, exch.ptr);
  REQUIRE(fmax.host()[0] == *std::max_element(f.begin(), f.end()));
  REQUIRE(imin.host()[0] == static_cast<int>(*std::min_element(f.begin(), f.end())));
  REQUIRE(imax.host()[0] == static_cast<int>(*std::max_element(f.begin(), f.end())));
  REQUIRE(ring.host()[0] == 300 % 10);
  REQUIRE(exch.host()[0] == 7);
}

TEST_CASE("emu: dynamic shared memory, and the opt-in above 48 KB", "[emu]") {
  const int n = 1000, block = 128;
  const auto x = small_ints(n, 9);
  DeviceBuffer<float> dx(x), dy(static_cast<size_t>(n));
  BW_LAUNCH(reverse_segments, (n + block - 1) / block, block, block * sizeof(float), 0, dx.ptr, dy.ptr, n);
  const auto y = dy.host();
  for (int b0 = 0; b0 < n; b0 += block) {
    const int len = std::min(block, n - b0);
    for (int j = 0; j < len; ++j) REQUIRE(y[b0 + j] == x[b0 + len - 1 - j]);
  }

  const int words = 16 * 1024;  // 64 KB
  DeviceBuffer<int> out(1);
  const auto e = launch_error([&] { BW_LAUNCH(fill_dynamic, 1, 256, words * 4, 0, words, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_memory_limit);
  REQUIRE_THAT(e.what(), Contains("65536 bytes of dynamic shared memory") && Contains("cudaFuncSetAttribute"));

  REQUIRE(cudaFuncSetAttribute(fill_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, words * 4) == cudaSuccess);
  REQUIRE(cudaMemset(out.ptr, 0, 4) == cudaSuccess);
  BW_LAUNCH(fill_dynamic, 1, 256, words * 4, 0, words, out.ptr);
  REQUIRE(out.host()[0] == words * (words - 1) / 2);
  REQUIRE(cudaFuncSetAttribute(fill_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, 232449) == cudaErrorInvalidValue);
  REQUIRE(cudaGetLastError() == cudaErrorInvalidValue);
}

TEST_CASE("emu: __syncthreads_count/_and/_or", "[emu]") {
  std::vector<int> x(200);
  for (int i = 0; i < 200; ++i) x[i] = i % 7;
  DeviceBuffer<int> dx(x), out(3);
  BW_LAUNCH(barrier_votes, 1, 200, 0, 0, dx.ptr, out.ptr);
  const auto o = out.host();
  REQUIRE(o[0] == static_cast<int>(std::count_if(x.begin(), x.end(), [](int v) { return v > 0; })));
  REQUIRE(o[1] == 0);
  REQUIRE(o[2] == 1);
}

TEST_CASE("emu: plain __shared__ works, one copy per block", "[emu]") {
  DeviceBuffer<int> out(3 * 64);
  BW_LAUNCH(plain_shared_reverse, 3, 64, 0, 0, out.ptr);
  const auto o = out.host();
  for (int i = 0; i < 3 * 64; ++i) REQUIRE(o[i] == (63 - i % 64) * 10);
}

TEST_CASE("emu: 3-D blocks and grids map threads and warps like CUDA", "[emu]") {
  const dim3 grid(3, 2, 2), block(8, 4, 2);  // 64 threads per block: two warps
  const int total = 12 * 64;
  DeviceBuffer<int> out(4 * static_cast<size_t>(total));
  BW_LAUNCH(thread_coordinates, grid, block, 0, 0, out.ptr);
  const auto o = out.host();
  for (int g = 0; g < total; ++g) {
    const int b = g / 64, t = g % 64;
    const int tx = t % 8, ty = t / 8 % 4, tz = t / 32;
    const int bx = b % 3, by = b / 3 % 2, bz = b / 6;
    REQUIRE(o[4 * g + 0] == tx + 100 * ty + 10000 * tz);
    REQUIRE(o[4 * g + 1] == bx + 100 * by + 10000 * bz);
    REQUIRE(o[4 * g + 2] == t / 32 * 32);
    REQUIRE(o[4 * g + 3] == 32);
  }
}

TEST_CASE("emu: the schedule decides global-memory order dependence, not race-free results", "[emu]") {
  DeviceBuffer<int> out(1);
  int forward = -1, reverse = -1;
  {
    ConfigGuard guard;
    emu::config().schedule = emu::Schedule::forward;
    BW_LAUNCH(last_writer, 1, 64, 0, 0, out.ptr);
    forward = out.host()[0];
    emu::config().schedule = emu::Schedule::reverse;
    BW_LAUNCH(last_writer, 1, 64, 0, 0, out.ptr);
    reverse = out.host()[0];
  }
  REQUIRE(forward == 63);
  REQUIRE(reverse == 0);
}

TEST_CASE("emu: warp-synchronous shared memory needs __syncwarp", "[emu]") {
  const CheckedForward checked_forward;
  DeviceBuffer<int> out(32);
  BW_LAUNCH(warp_exchange, 1, 32, 0, 0, out.ptr, true);
  const auto o = out.host();
  for (int i = 0; i < 32; ++i) REQUIRE(o[i] == i / 2);
  const auto e = launch_error([&] { BW_LAUNCH(warp_exchange, 1, 32, 0, 0, out.ptr, false); });
  REQUIRE(e.fault() == emu::Fault::shared_race);
}

TEST_CASE("emu: launches are counted per kernel name", "[emu]") {
  // Deltas only: the registry accumulates over the whole test run, for the check that every
  // kernel of kernels/cuda ran under the emulator at least once.
  auto record = [](const std::string& name) {
    const auto counts = emu::launch_counts();
    const auto it = counts.find(name);
    return it == counts.end() ? emu::LaunchRecord{} : it->second;
  };
  const emu::LaunchRecord before = record("plain_shared_reverse");
  DeviceBuffer<int> out(64);
  BW_LAUNCH(plain_shared_reverse, 1, 64, 0, 0, out.ptr);
  BW_LAUNCH(plain_shared_reverse, 2, 32, 0, 0, out.ptr);
  const emu::LaunchRecord after = record("plain_shared_reverse");
  REQUIRE(after.launches - before.launches == 2);
  REQUIRE(after.blocks - before.blocks == 3);
  REQUIRE(after.threads - before.threads == 128);

  const auto x = small_ints(4, 1);
  const uint64_t gemm_before = record("gemm_tiled_kernel<TILE>").launches;
  emu_kernels::gemm_tiled(x, x, 2, 2, 2, 8);
  REQUIRE(record("gemm_tiled_kernel<TILE>").launches == gemm_before + 1);  // spelled (gemm_tiled_kernel<TILE>)
  REQUIRE(emu::kernel_base_name("gemm_tiled_kernel<TILE>") == "gemm_tiled_kernel");
  REQUIRE(emu::kernel_base_name("( bulwark::cuda::gemm<64, 64> )") == "gemm");
  REQUIRE(emu::kernel_base_name("&scale") == "scale");

  // A launch the emulator rejects did not run, and is not counted.
  const uint64_t noop_before = record("noop").launches;
  launch_error([&] { BW_LAUNCH(noop, 1, 1025, 0, 0); });
  REQUIRE(record("noop").launches == noop_before);
}

// ---- what a GPU rejects, the emulator rejects ----------------------------------------------------

TEST_CASE("emu: launch configurations over the limits are rejected", "[emu]") {
  auto e = launch_error([] { BW_LAUNCH(noop, 1, dim3(41, 25), 0, 0); });
  REQUIRE(e.fault() == emu::Fault::launch_config);
  REQUIRE_THAT(e.what(), Contains("kernel 'noop'") && Contains("1025 threads per block exceed the limit of 1024"));
  e = launch_error([] { BW_LAUNCH(noop, 1, 1025, 0, 0); });
  REQUIRE_THAT(e.what(), Contains("blockDim.x = 1025 exceeds the limit of 1024"));
  e = launch_error([] { BW_LAUNCH(noop, 1, dim3(1, 1, 65), 0, 0); });
  REQUIRE_THAT(e.what(), Contains("blockDim.z = 65 exceeds the limit of 64"));
  e = launch_error([] { BW_LAUNCH(noop, 1, dim3(2048, 1, 1), 0, 0); });
  REQUIRE_THAT(e.what(), Contains("blockDim.x = 2048"));
  e = launch_error([] { BW_LAUNCH(noop, dim3(1, 65536, 1), 1, 0, 0); });
  REQUIRE_THAT(e.what(), Contains("gridDim.y = 65536 exceeds the limit of 65535"));
  e = launch_error([] { BW_LAUNCH(noop, dim3(0, 1, 1), 1, 0, 0); });
  REQUIRE_THAT(e.what(), Contains("gridDim.x is 0"));
  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  e = launch_error([&] { BW_LAUNCH(noop, 1, 1, 0, s); });
  REQUIRE_THAT(e.what(), Contains("not a live cudaStream_t"));
  // 1024 threads in a legal shape runs.
  BW_LAUNCH(noop, 1, dim3(16, 16, 4), 0, 0);
}

TEST_CASE("emu: too much shared memory is rejected", "[emu]") {
  DeviceBuffer<float> out(1);
  auto e = launch_error([&] { BW_LAUNCH(big_static_shared, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_memory_limit);
  REQUIRE_THAT(e.what(), Contains("51200 bytes of static shared memory") && Contains("BW_SHARED 'big'"));
  e = launch_error([&] { BW_LAUNCH(needs_dynamic, 1, 32, 49 * 1024, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_memory_limit);
  // 40 KB static + 10 KB dynamic: each fits, the sum does not.
  BW_LAUNCH(static_40k, 1, 32, 4 * 1024, 0, out.ptr);
  e = launch_error([&] { BW_LAUNCH(static_40k, 1, 32, 10 * 1024, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_memory_limit);
  REQUIRE_THAT(e.what(), Contains("40960 bytes of static shared memory") && Contains("10240 bytes of dynamic"));
}

TEST_CASE("emu: a barrier not reached by every thread is rejected", "[emu]") {
  DeviceBuffer<float> out(64);
  auto e = launch_error([&] { BW_LAUNCH(barrier_in_branch, 1, 64, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::barrier_divergence);
  REQUIRE_THAT(e.what(), Contains("not reached by every thread") && Contains("16 threads (first: thread (0,0,0))") &&
                             Contains("48 threads exited") && Contains("test_emu.cpp:"));

  e = launch_error([&] { BW_LAUNCH(two_barriers, 1, 64, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::barrier_divergence);
  REQUIRE_THAT(e.what(), Contains("wait at different __syncthreads()"));

  // An early return is fine while whole blocks are in range, and a hang in the partial block.
  const auto x = small_ints(200, 10);
  DeviceBuffer<float> dx(x), dy(200);
  e = launch_error([&] { BW_LAUNCH(early_return, 2, 128, 0, 0, dx.ptr, dy.ptr, 200); });
  REQUIRE(e.fault() == emu::Fault::barrier_divergence);
  REQUIRE_THAT(e.what(), Contains("block (1,0,0)") && Contains("56 threads exited") &&
                             Contains("first: thread (72,0,0)"));
}

TEST_CASE("emu: shared-memory races are detected", "[emu]") {
  const CheckedForward checked_forward;
  const auto x = small_ints(128, 11);
  DeviceBuffer<float> dx(x), out(128);
  auto e = launch_error([&] { BW_LAUNCH(racy_sum, 1, 128, 0, 0, dx.ptr, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_race);
  REQUIRE_THAT(e.what(), Contains("shared-memory race") && Contains("BW_SHARED 'sdata'") &&
                             Contains("with no barrier in between"));
  // The same kernel with the barrier (block_sum) is race-free.
  BW_LAUNCH(block_sum, 1, 256, 0, 0, dx.ptr, out.ptr, 128);

  e = launch_error([&] { BW_LAUNCH(racy_neighbour, 1, 64, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_race);
  REQUIRE_THAT(e.what(), Contains("thread (1,0,0) of block (0,0,0) in kernel 'racy_neighbour' reads element 0 of BW_SHARED 's'") &&
                             Contains("which thread (0,0,0) wrote") &&
                             Contains("since the block started"));

  DeviceBuffer<unsigned> u(64);
  e = launch_error([&] { BW_LAUNCH(atomics_then_read, 1, 64, 0, 0, u.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_race);
  REQUIRE_THAT(e.what(), Contains("thread (1,0,0)") && Contains("atomically updates element 0 of BW_SHARED 'counter'") &&
                             Contains("which thread (0,0,0) read since the last __syncthreads()"));

  // With the checker off the racy kernels run (and give schedule-dependent garbage).
  ConfigGuard guard;
  emu::config().check_shared = false;
  BW_LAUNCH(racy_neighbour, 1, 64, 0, 0, out.ptr);
}

TEST_CASE("emu: shared-memory bounds and uninitialized reads are detected", "[emu]") {
  const CheckedForward checked_forward;
  DeviceBuffer<float> out(64);
  auto e = launch_error([&] { BW_LAUNCH(index_past_end, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_out_of_bounds);
  REQUIRE_THAT(e.what(), Contains("thread (31,0,0)") && Contains("with 32, outside [0, 32)"));

  e = launch_error([&] { BW_LAUNCH(reads_unwritten, 1, 64, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_uninitialized);
  REQUIRE_THAT(e.what(), Contains("thread (32,0,0)") && Contains("reads element 32 of BW_SHARED 's'"));

  e = launch_error([&] { BW_LAUNCH(needs_dynamic, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_out_of_bounds);
  REQUIRE_THAT(e.what(), Contains("launched with 0 bytes"));
  e = launch_error([&] { BW_LAUNCH(needs_dynamic, 1, 32, 31 * sizeof(float), 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::shared_out_of_bounds);
  REQUIRE_THAT(e.what(), Contains("thread (31,0,0)") && Contains("outside its 124 bytes"));

  // `auto x = tile[i];` must not compile: element proxies cannot be copied.
  STATIC_REQUIRE(!std::is_copy_constructible_v<emu::SharedRef<float>>);
}

TEST_CASE("emu: warp collectives whose lanes never meet are rejected", "[emu]") {
  const CheckedForward checked_forward;
  DeviceBuffer<float> out(32);
  auto e = launch_error([&] { BW_LAUNCH(shuffle_outside_mask, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::warp_divergence);
  REQUIRE_THAT(e.what(), Contains("mask 0x0000ffff, which does not include its own lane 16"));

  e = launch_error([&] { BW_LAUNCH(shuffle_meets_barrier, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::warp_divergence);
  REQUIRE_THAT(e.what(), Contains("lanes 0-15 of warp 0 wait at __shfl_down_sync(mask 0xffffffff)") &&
                             Contains("for lanes 16-31") && Contains("wait at __syncthreads()"));

  DeviceBuffer<unsigned> u(32);
  e = launch_error([&] { BW_LAUNCH(mismatched_collectives, 1, 32, 0, 0, u.ptr); });
  REQUIRE(e.fault() == emu::Fault::warp_divergence);
  REQUIRE_THAT(e.what(), Contains("meet at different warp collectives"));

  e = launch_error([&] { BW_LAUNCH(bad_width, 1, 32, 0, 0, out.ptr); });
  REQUIRE_THAT(e.what(), Contains("width 12"));
}

TEST_CASE("emu: host pointers, exceptions, __trap and nested launches are reported", "[emu]") {
  std::vector<float> host(64);
  auto e = launch_error([&] { BW_LAUNCH(traps, 1, 32, 0, 0, host.data()); });
  REQUIRE(e.fault() == emu::Fault::pointer_argument);
  REQUIRE_THAT(e.what(), Contains("kernel 'traps' argument 0") && Contains("not device memory"));

  DeviceBuffer<float> out(64);
  e = launch_error([&] { BW_LAUNCH(traps, 1, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::kernel_exception);
  REQUIRE_THAT(e.what(), Contains("thread (3,0,0) of block (0,0,0) in kernel 'traps' called __trap()"));

  e = launch_error([&] { BW_LAUNCH(throws_in_kernel, 2, 32, 0, 0, out.ptr); });
  REQUIRE(e.fault() == emu::Fault::kernel_exception);
  REQUIRE_THAT(e.what(), Contains("thread (5,0,0) of block (1,0,0)") && Contains("index 99 out of range"));

  e = launch_error([&] { BW_LAUNCH(launches_inside, 1, 1, 0, 0, out.ptr); });
  REQUIRE_THAT(e.what(), Contains("dynamic parallelism"));

  // The emulator is usable again after each failure.
  BW_LAUNCH(vector_add, 1, 64, 0, 0, out.ptr, out.ptr, out.ptr, 0);
}

#if !defined(__SANITIZE_ADDRESS__)
TEST_CASE("emu: a kernel overflowing its fiber stack dies with a message, not a bare segfault", "[emu]") {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the child overflows; its stderr comes back through the pipe
    dup2(pipe_fds[1], 2);
    if (FILE* quiet = std::freopen("/dev/null", "w", stdout)) (void)quiet;
    emu::config().stack_bytes = 64 * 1024;
    DeviceBuffer<float> out(1);
    BW_LAUNCH(deep_stack, 1, 2, 0, 0, out.ptr, 64);  // 64 frames of 16 KB on a 64 KB stack
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t r; (r = read(pipe_fds[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(r));
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGABRT);
  REQUIRE_THAT(err, Contains("kernel 'deep_stack' overflowed its 65536-byte fiber stack"));
}
#endif

// ---- the emulated runtime ------------------------------------------------------------------------

TEST_CASE("emu: device memory is tracked, poisoned and checked by the runtime API", "[emu]") {
  const size_t in_use = emu::device_bytes_in_use();
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 64 * sizeof(float)) == cudaSuccess);
  REQUIRE(emu::device_bytes_in_use() == in_use + 256);
  std::vector<float> h(64, 1.0f);
  REQUIRE(cudaMemcpy(h.data(), p, 256, cudaMemcpyDeviceToHost) == cudaSuccess);
  REQUIRE(std::isnan(h[0]));  // fresh device memory reads as NaN, not lucky zeros

  std::vector<float> big(65);
  REQUIRE(cudaMemcpy(p, big.data(), 65 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  REQUIRE_THAT(cudaGetErrorString(cudaErrorInvalidValue), Contains("runs past the end of its 256-byte device allocation"));
  REQUIRE(cudaGetLastError() == cudaErrorInvalidValue);
  REQUIRE(cudaGetLastError() == cudaSuccess);  // reading it clears it
  REQUIRE(cudaMemcpy(big.data(), p, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);  // wrong direction
  REQUIRE(cudaMemset(p + 60, 0, 5 * sizeof(float)) == cudaErrorInvalidValue);
  REQUIRE(cudaMemset(p + 60, 0, 4 * sizeof(float)) == cudaSuccess);

  float* q = nullptr;
  REQUIRE(cudaMalloc(&q, 64 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMemcpy(q, p, 256, cudaMemcpyDeviceToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(q + 1, p, 256, cudaMemcpyDefault) == cudaErrorInvalidValue);
  REQUIRE(cudaFree(q) == cudaSuccess);
  REQUIRE(cudaFree(p) == cudaSuccess);
  REQUIRE(cudaFree(p) == cudaErrorInvalidValue);
  REQUIRE_THAT(cudaGetErrorString(cudaErrorInvalidValue), Contains("freed twice"));
  REQUIRE(emu::device_bytes_in_use() == in_use);
  REQUIRE(cudaMalloc(&p, size_t(81) << 30) == cudaErrorMemoryAllocation);
  cudaGetLastError();
}

TEST_CASE("emu: the device looks like an H100", "[emu]") {
  cudaDeviceProp prop;
  REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  REQUIRE(prop.multiProcessorCount == 132);
  REQUIRE(prop.sharedMemPerBlock == 48 * 1024);
  REQUIRE(prop.sharedMemPerBlockOptin == 227 * 1024);
  REQUIRE(prop.sharedMemPerMultiprocessor == 228 * 1024);
  REQUIRE(prop.maxThreadsPerBlock == 1024);
  REQUIRE(prop.maxThreadsDim[2] == 64);
  REQUIRE(prop.warpSize == 32);
  REQUIRE(prop.major == 9);
  int v = 0;
  REQUIRE(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
  REQUIRE(v == 232448);
  REQUIRE(cudaGetDeviceProperties(&prop, 1) == cudaErrorInvalidDevice);
  cudaGetLastError();
}

TEST_CASE("emu: streams and events time the emulated work", "[emu]") {
  cudaStream_t stream;
  cudaEvent_t start, stop;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaEventCreate(&start) == cudaSuccess);
  REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
  float ms = -1.0f;
  REQUIRE(cudaEventElapsedTime(&ms, start, stop) == cudaErrorInvalidResourceHandle);  // not recorded yet
  REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
  DeviceBuffer<float> out(1024);
  BW_LAUNCH(vector_add, 8, 128, 0, stream, out.ptr, out.ptr, out.ptr, 1024);
  REQUIRE(cudaEventRecord(stop, stream) == cudaSuccess);
  REQUIRE(cudaEventSynchronize(stop) == cudaSuccess);
  REQUIRE(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
  REQUIRE(ms >= 0.0f);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  REQUIRE(cudaEventDestroy(start) == cudaSuccess);
  REQUIRE(cudaEventDestroy(stop) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaErrorInvalidResourceHandle);
  cudaGetLastError();
}

// Not run by default (hidden tag): `bulwark_tests "[.emu-perf]"` prints emulator throughput.
// Times are CPU time of the calling thread, so a busy machine does not inflate them.
namespace {
double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

__global__ void barriers_only(int iterations, float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int i = 0; i < iterations; ++i) {
    v = v * 0.5f + 1.0f;
    __syncthreads();
  }
  if (v < 0.0f) out[0] = v;
}
}  // namespace

TEST_CASE("emu: throughput of fiber switches and of a 256x256x256 tiled matmul", "[.emu-perf]") {
  DeviceBuffer<float> out(1);
  emu::reset_stats();
  double t0 = thread_seconds();
  BW_LAUNCH(barriers_only, 64, 256, 0, 0, 100, out.ptr);
  double s = thread_seconds() - t0;
  emu::Stats st = emu::stats();
  std::printf("__syncthreads() loop, 64 blocks x 256 threads x 100 barriers: %.3f s CPU, %llu switches, "
              "%.1f M switches/s (%.0f ns per switch, barrier bookkeeping included)\n",
              s, static_cast<unsigned long long>(st.fiber_switches), st.fiber_switches / s / 1e6,
              s / static_cast<double>(st.fiber_switches) * 1e9);
  REQUIRE(st.block_barriers == 64 * 100);

  const int n = 256;
  const auto a = small_ints(size_t(n) * n, 12), b = small_ints(size_t(n) * n, 13);
  for (bool check : {true, false}) {
    ConfigGuard guard;
    emu::config().check_shared = check;
    emu::reset_stats();
    t0 = thread_seconds();
    const auto c = emu_kernels::gemm_tiled(a, b, n, n, n, 16);
    s = thread_seconds() - t0;
    st = emu::stats();
    std::printf("256^3 tiled matmul (16x16 tiles, BW_SHARED), shared-memory checks %s: %.3f s CPU, %llu fiber "
                "switches, %llu barriers\n",
                check ? "on " : "off", s, static_cast<unsigned long long>(st.fiber_switches),
                static_cast<unsigned long long>(st.block_barriers));
    REQUIRE(c.size() == size_t(n) * n);
  }
}
