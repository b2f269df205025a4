// The fused optimizer steps over all parameters in one launch. Scalar bodies: optim::sgd_update
// and optim::adam_update in kernels/common/optim.h, the same as the CPU loops of
// kernels/cpu/optim.cpp:
//
//   SGD:  d = g + wd * p;  buf = m * buf + d;  d = nesterov ? d + m * buf : buf;  p -= lr * d
//         6 FLOPs, 12 B read + 8 B written per element (f32).
//   Adam: g += wd * p;  m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
//         p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//         ~14 FLOPs + a sqrt and a division, 16 B read + 12 B written per element. The per-step
//         scalars (bias corrections) are computed once on the host in double (optim::AdamStep).
// Both memory-bound. A ResNet-18 has 62 parameter tensors; one launch per tensor (or six
// elementwise launches per tensor, written with ops) is hundreds of launches a step, each too
// small to fill the GPU.
//
// Versions:
//   v1 (this file) multi-tensor apply (as NVIDIA apex's multi_tensor_apply): the host cuts every
//      parameter into chunks of kChunk elements and uploads a table of (segment, chunk start)
//      with the segment list; each block takes chunks in a grid-stride loop over the table.
//      One launch for the whole model whatever the number of tensors; the two small tables are
//      copied with one async host-to-device copy each and freed stream-ordered.
//      sqrtf and '/' are IEEE-rounded (nvcc's defaults without --use_fast_math), so the GPU
//      differs from the CPU only where nvcc contracts a multiply-add into an FMA (~1 ulp).
#include <vector>

#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

constexpr int64_t kChunk = 4096;

struct Chunk {
  int32_t segment;
  int64_t start;
};

// Calls update(segment, i) for every element of every segment, one chunk per block at a time.
template <class Segment, class Update>
__device__ inline void for_each_chunk_element(const Segment* segments, const Chunk* chunks, int64_t num_chunks,
                                              const Update& update) {
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk ch = chunks[c];
    const Segment s = segments[ch.segment];
    const int64_t end = ch.start + kChunk < s.n ? ch.start + kChunk : s.n;
    for (int64_t i = ch.start + threadIdx.x; i < end; i += blockDim.x) update(s, i);
  }
}

// lr_at / step_at: where a replayed graph keeps this step's values (runtime.cu), else nullptr.
__global__ void sgd_step_multi_kernel(const SgdSegment* segments, const Chunk* chunks, int64_t num_chunks, float lr,
                                      const float* lr_at, float momentum, float weight_decay, bool nesterov) {
  if (lr_at) lr = *lr_at;
  for_each_chunk_element(segments, chunks, num_chunks, [&](const SgdSegment& s, int64_t i) {
    optim::sgd_update(s.param[i], s.grad[i], s.momentum_buf[i], lr, momentum, weight_decay, nesterov);
  });
}

__global__ void adam_step_multi_kernel(const AdamSegment* segments, const Chunk* chunks, int64_t num_chunks,
                                       optim::AdamStep<float> step, const optim::AdamStep<float>* step_at) {
  if (step_at) step = *step_at;
  for_each_chunk_element(segments, chunks, num_chunks, [&](const AdamSegment& s, int64_t i) {
    optim::adam_update(s.param[i], s.grad[i], s.exp_avg[i], s.exp_avg_sq[i], step);
  });
}

// The segment list and the chunk table of a multi-tensor launch, on the device for as long as
// this object lives (freed stream-ordered: reused only by work queued after the launch).
template <class Segment>
class ChunkTables {
 public:
  ChunkTables(const Segment* params, int count) {
    std::vector<Chunk> table;
    for (int s = 0; s < count; ++s)
      for (int64_t start = 0; start < params[s].n; start += kChunk) table.push_back({s, start});
    num_chunks = static_cast<int64_t>(table.size());
    if (table.empty()) return;
    const size_t seg_bytes = sizeof(Segment) * static_cast<size_t>(count), chunk_bytes = sizeof(Chunk) * table.size();
    segments = static_cast<Segment*>(device_malloc(seg_bytes));
    try {
      chunks = static_cast<Chunk*>(device_malloc(chunk_bytes));
      copy_to_device(segments, params, seg_bytes);
      copy_to_device(chunks, table.data(), chunk_bytes);
    } catch (...) {
      release();
      throw;
    }
  }
  ~ChunkTables() { release(); }
  ChunkTables(const ChunkTables&) = delete;
  ChunkTables& operator=(const ChunkTables&) = delete;

  unsigned blocks() const { return static_cast<unsigned>(num_chunks < kMaxBlocks ? num_chunks : kMaxBlocks); }
  // flops_each and f32 values moved per parameter element (the header's counts), over all of them.
  static LaunchCost cost(const Segment* params, int count, double flops_each, int moved_each) {
    double elements = 0;
    for (int s = 0; s < count; ++s) elements += static_cast<double>(params[s].n);
    return {flops_each * elements, 4.0 * moved_each * elements};
  }

  Segment* segments = nullptr;
  Chunk* chunks = nullptr;
  int64_t num_chunks = 0;

 private:
  void release() {
    device_free(segments);
    device_free(chunks);
  }
};

}  // namespace

void sgd_step_multi(const SgdSegment* params, int count, const optim::SgdHyper& h) {
  const ChunkTables<SgdSegment> tables(params, count);
  if (tables.num_chunks == 0) return;
  const ReplayScalars* replay = captured_scalars();
  if (replay) capture_optimizer_step(nullptr);
  BW_LAUNCH_COSTED(ChunkTables<SgdSegment>::cost(params, count, 6, 5), sgd_step_multi_kernel, tables.blocks(), kThreads,
                   0, current_stream(), tables.segments, tables.chunks, tables.num_chunks, static_cast<float>(h.lr),
                   replay ? &replay->lr : nullptr, static_cast<float>(h.momentum), static_cast<float>(h.weight_decay), h.nesterov);
}

void adam_step_multi(const AdamSegment* params, int count, const optim::AdamHyper& h, int64_t t) {
  const ChunkTables<AdamSegment> tables(params, count);
  if (tables.num_chunks == 0) return;
  const ReplayScalars* replay = captured_scalars();
  if (replay) capture_optimizer_step(&h);
  BW_LAUNCH_COSTED(ChunkTables<AdamSegment>::cost(params, count, 16, 7), adam_step_multi_kernel, tables.blocks(),
                   kThreads, 0, current_stream(), tables.segments, tables.chunks, tables.num_chunks,
                   optim::AdamStep<float>(h, t), replay ? &replay->adam : nullptr);
}

}  // namespace bulwark::cuda
