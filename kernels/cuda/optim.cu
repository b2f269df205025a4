// The fused optimizer step over all parameters in one launch (scalar body: optim::sgd_update in
// kernels/common/optim.h, the same as the CPU loop in kernels/cpu/optim.cpp):
//
//   d = g + wd * p;  buf = m * buf + d;  d = nesterov ? d + m * buf : buf;  p -= lr * d
// Per element 6 FLOPs, 12 B read + 8 B written (f32): memory-bound. A ResNet-18 has 62 parameter
// tensors; one launch per tensor (or six elementwise launches per tensor, written with ops) is
// hundreds of launches a step, each too small to fill the GPU.
//
// Versions:
//   v1 (this file) multi-tensor apply (as NVIDIA apex's multi_tensor_apply): the host cuts every
//      parameter into chunks of kChunk elements and uploads a table of (segment, chunk start)
//      with the segment list; each block takes chunks in a grid-stride loop over the table.
//      One launch for the whole model whatever the number of tensors; the two small tables are
//      copied with one async host-to-device copy each and freed stream-ordered.
#include <vector>

#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

constexpr int64_t kChunk = 4096;

struct Chunk {
  int32_t segment;
  int64_t start;
};

__global__ void sgd_step_multi_kernel(const SgdSegment* segments, const Chunk* chunks, int64_t num_chunks, float lr,
                                      float momentum, float weight_decay, bool nesterov) {
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk ch = chunks[c];
    const SgdSegment s = segments[ch.segment];
    const int64_t end = ch.start + kChunk < s.n ? ch.start + kChunk : s.n;
    for (int64_t i = ch.start + threadIdx.x; i < end; i += blockDim.x)
      optim::sgd_update(s.param[i], s.grad[i], s.momentum_buf[i], lr, momentum, weight_decay, nesterov);
  }
}

}  // namespace

void sgd_step_multi(const SgdSegment* params, int count, const optim::SgdHyper& h) {
  std::vector<Chunk> chunks;
  for (int s = 0; s < count; ++s)
    for (int64_t start = 0; start < params[s].n; start += kChunk) chunks.push_back({s, start});
  if (chunks.empty()) return;
  const size_t seg_bytes = sizeof(SgdSegment) * static_cast<size_t>(count);
  const size_t chunk_bytes = sizeof(Chunk) * chunks.size();
  auto* d_segments = static_cast<SgdSegment*>(device_malloc(seg_bytes));
  auto* d_chunks = static_cast<Chunk*>(device_malloc(chunk_bytes));
  try {
    copy_to_device(d_segments, params, seg_bytes);
    copy_to_device(d_chunks, chunks.data(), chunk_bytes);
    const int64_t n = static_cast<int64_t>(chunks.size());
    BW_LAUNCH(sgd_step_multi_kernel, static_cast<unsigned>(n < kMaxBlocks ? n : kMaxBlocks), kThreads, 0,
              current_stream(), d_segments, d_chunks, n, static_cast<float>(h.lr), static_cast<float>(h.momentum),
              static_cast<float>(h.weight_decay), h.nesterov);
  } catch (...) {
    device_free(d_segments);
    device_free(d_chunks);
    throw;
  }
  device_free(d_segments);  // stream-ordered: reused only by work queued after this launch
  device_free(d_chunks);
}

}  // namespace bulwark::cuda
