// Stream capture and CUDA Graphs under the emulator (runtime.h lists what is emulated).
//
// A capture is a list: one stream, so every node depends on the one before it, which is the
// graph PyTorch and bulwark capture (a training step queued on one stream). Kernel nodes keep a
// heap copy of the launch's argument block (KernelLaunch::clone_params), copy nodes their
// pointers: a pinned host buffer is read (or written) when the graph runs, not when it is
// captured, exactly the aliasing that makes graphs fast and that the code capturing them must
// respect. Instantiation shares the nodes; cudaGraphLaunch runs them in order through the same
// launcher as any launch, so every replayed kernel is validated, poisoned-memory- and
// race-checked, and counted in the launch registry (a replay counts every node it runs).
#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/emu/emu.h"
#include "kernels/emu/internal.h"

namespace {

struct Node {
  enum class Kind { kernel, copy, set } kind = Kind::kernel;
  bulwark::emu::detail::KernelLaunch launch{};  // kernel: params owned (destroy_params)
  void* dst = nullptr;
  const void* src = nullptr;
  size_t count = 0;
  cudaMemcpyKind copy_kind = cudaMemcpyDeviceToDevice;
  int value = 0;
  ~Node() {
    if (kind == Kind::kernel && launch.params) launch.destroy_params(launch.params);
  }
};

}  // namespace

struct CUgraph_st {
  std::vector<std::shared_ptr<Node>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::shared_ptr<Node>> nodes;
};
struct CUgraphNode_st {};  // a cudaGraphNode_t is the address of a Node

namespace bulwark::emu::detail {
namespace {

struct Capture {
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  bool invalidated = false;
  std::string why;  // what invalidated it
  std::unique_ptr<CUgraph_st> graph;
};

struct GraphState {
  std::mutex mutex;
  std::map<cudaStream_t, Capture> captures;  // by capturing stream
  std::set<const CUgraph_st*> graphs;
  std::set<const CUgraphExec_st*> execs;
};
GraphState& gs() {
  static GraphState s;
  return s;
}

thread_local cudaStreamCaptureMode t_mode = cudaStreamCaptureModeGlobal;
// Captures open in the process: every launch and copy asks, and almost always none is.
std::atomic<int> g_open{0};

const char* mode_name(cudaStreamCaptureMode m) {
  switch (m) {
    case cudaStreamCaptureModeGlobal: return "global";
    case cudaStreamCaptureModeThreadLocal: return "thread-local";
    case cudaStreamCaptureModeRelaxed: return "relaxed";
  }
  return "?";
}

bool legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy; }

// Captures that make an unsafe call by the calling thread illegal (CUDA's rule): its own captures
// not begun in relaxed mode, and other threads' global-mode captures; none when the thread's own
// mode is relaxed. Caller holds the mutex.
std::vector<Capture*> prohibiting_locked() {
  std::vector<Capture*> out;
  if (t_mode == cudaStreamCaptureModeRelaxed) return out;
  const auto me = std::this_thread::get_id();
  for (auto& [stream, c] : gs().captures)
    if ((c.thread == me && c.mode != cudaStreamCaptureModeRelaxed) ||
        (c.thread != me && c.mode == cudaStreamCaptureModeGlobal))
      out.push_back(&c);
  return out;
}

void invalidate(Capture& c, const std::string& why) {
  if (!c.invalidated) c.why = why;
  c.invalidated = true;
}

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

}  // namespace

bool stream_is_capturing(cudaStream_t stream) {
  if (legacy(stream) || g_open.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> lock(gs().mutex);
  return gs().captures.count(stream) != 0;
}

bool capture_forbids_legacy(cudaStream_t stream) {
  if (!legacy(stream) || g_open.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> lock(gs().mutex);
  for (auto& [s, c] : gs().captures)
    if (c.mode != cudaStreamCaptureModeRelaxed) return true;
  return false;
}

void capture_kernel(const KernelLaunch& launch) {
  std::lock_guard<std::mutex> lock(gs().mutex);
  const std::string kernel = "kernel '" + normalize_launch_name(launch.name) + "'";
  if (legacy(launch.stream)) {
    const std::string why = kernel + " was launched on the legacy default stream while a stream was capturing";
    for (auto& [s, c] : gs().captures) invalidate(c, why);
    record_error(cudaErrorStreamCaptureImplicit, why);
    fail(Fault::launch_config, "cudaErrorStreamCaptureImplicit: " + why +
                                   " (it would make the legacy stream depend on the capture)");
  }
  Capture& c = gs().captures.at(launch.stream);
  if (c.invalidated) {
    record_error(cudaErrorStreamCaptureInvalidated, kernel + " launched into an invalidated capture (" + c.why + ")");
    fail(Fault::launch_config, "cudaErrorStreamCaptureInvalidated: " + kernel +
                                   " launched into a capture that was invalidated: " + c.why);
  }
  auto node = std::make_shared<Node>();
  node->kind = Node::Kind::kernel;
  node->launch = launch;
  node->launch.params = launch.clone_params(launch.params);
  c.graph->nodes.push_back(std::move(node));
}

cudaError_t capture_check_unsafe(const char* api, cudaStream_t stream, bool waits_on_stream) {
  if (g_open.load(std::memory_order_acquire) == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(gs().mutex);
  const std::string call = std::string(api);
  if (waits_on_stream && !legacy(stream)) {
    auto it = gs().captures.find(stream);
    if (it != gs().captures.end()) {
      const std::string why = call + " waits on a capturing stream";
      invalidate(it->second, why);
      return record_error(cudaErrorStreamCaptureUnsupported, why + ": the host cannot wait for work that is only "
                                                                   "being recorded (operation not permitted when "
                                                                   "stream is capturing)");
    }
  }
  const std::vector<Capture*> blocking = prohibiting_locked();
  if (blocking.empty()) return cudaSuccess;
  const std::string why = call + " was called while a stream was capturing in " + mode_name(blocking.front()->mode) +
                          " mode";
  for (Capture* c : blocking) invalidate(*c, why);
  return record_error(cudaErrorStreamCaptureUnsupported,
                      why + " (operation not permitted when stream is capturing: it may synchronise with the "
                            "device, or wait for the host)");
}

namespace {
// Async work queued on the legacy stream while a capture is open: every open capture is
// invalidated (the legacy stream would have to wait for work that is only being recorded).
cudaError_t legacy_during_capture(const char* api) {
  std::lock_guard<std::mutex> lock(gs().mutex);
  const std::string why = std::string(api) + " on the legacy default stream while a stream was capturing";
  for (auto& [s, c] : gs().captures) invalidate(c, why);
  return record_error(cudaErrorStreamCaptureImplicit, why);
}
}  // namespace

cudaError_t capture_copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream,
                         bool* captured) {
  *captured = false;
  if (g_open.load(std::memory_order_acquire) == 0) return cudaSuccess;
  if (legacy(stream)) return capture_forbids_legacy(stream) ? legacy_during_capture("cudaMemcpyAsync") : cudaSuccess;
  std::lock_guard<std::mutex> lock(gs().mutex);
  auto it = gs().captures.find(stream);
  if (it == gs().captures.end()) return cudaSuccess;
  *captured = true;
  Capture& c = it->second;
  if (c.invalidated) return record_error(cudaErrorStreamCaptureInvalidated, "cudaMemcpyAsync into an invalidated capture: " + c.why);
  // The host side of a captured copy is read or written when the graph runs: it must be pinned.
  const bool host_src = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost ||
                        (kind == cudaMemcpyDefault && !is_device_accessible(src));
  const bool host_dst = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost ||
                        (kind == cudaMemcpyDefault && !is_device_accessible(dst));
  const void* pageable = host_src && !is_pinned_host(src) ? src : host_dst && !is_pinned_host(dst) ? dst : nullptr;
  if (pageable) {
    const std::string why = "cudaMemcpyAsync of " + std::to_string(count) + " bytes with pageable host memory " +
                            hex(pageable) + " during capture";
    invalidate(c, why);
    return record_error(cudaErrorStreamCaptureUnsupported,
                        why + " (operation not permitted when stream is capturing: a graph's copy node needs "
                              "pinned host memory, cudaMallocHost)");
  }
  auto node = std::make_shared<Node>();
  node->kind = Node::Kind::copy;
  node->dst = dst;
  node->src = src;
  node->count = count;
  node->copy_kind = kind;
  c.graph->nodes.push_back(std::move(node));
  return cudaSuccess;
}

cudaError_t capture_set(void* ptr, int value, size_t count, cudaStream_t stream, bool* captured) {
  *captured = false;
  if (g_open.load(std::memory_order_acquire) == 0) return cudaSuccess;
  if (legacy(stream)) return capture_forbids_legacy(stream) ? legacy_during_capture("cudaMemsetAsync") : cudaSuccess;
  std::lock_guard<std::mutex> lock(gs().mutex);
  auto it = gs().captures.find(stream);
  if (it == gs().captures.end()) return cudaSuccess;
  *captured = true;
  if (it->second.invalidated)
    return record_error(cudaErrorStreamCaptureInvalidated, "cudaMemsetAsync into an invalidated capture: " + it->second.why);
  auto node = std::make_shared<Node>();
  node->kind = Node::Kind::set;
  node->dst = ptr;
  node->count = count;
  node->value = value;
  it->second.graph->nodes.push_back(std::move(node));
  return cudaSuccess;
}

}  // namespace bulwark::emu::detail

using namespace bulwark::emu::detail;

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (!is_valid_stream(stream)) return record_error(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: not a live stream");
  if (legacy(stream) || stream == cudaStreamPerThread)
    return record_error(cudaErrorStreamCaptureUnsupported,
                        "cudaStreamBeginCapture on the default stream: capture needs a stream from cudaStreamCreate");
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return record_error(cudaErrorInvalidValue, "cudaStreamBeginCapture: unknown capture mode");
  std::lock_guard<std::mutex> lock(gs().mutex);
  if (gs().captures.count(stream))
    return record_error(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
  Capture c{mode, std::this_thread::get_id(), false, {}, std::make_unique<CUgraph_st>()};
  gs().captures.emplace(stream, std::move(c));
  g_open.fetch_add(1, std::memory_order_acq_rel);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (!graph) return record_error(cudaErrorInvalidValue, "cudaStreamEndCapture with a null graph pointer");
  *graph = nullptr;
  std::lock_guard<std::mutex> lock(gs().mutex);
  auto it = gs().captures.find(stream);
  if (it == gs().captures.end())
    return record_error(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
  if (it->second.thread != std::this_thread::get_id() && it->second.mode != cudaStreamCaptureModeRelaxed)
    return record_error(cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture from a thread that did not begin the capture");
  Capture c = std::move(it->second);
  gs().captures.erase(it);
  g_open.fetch_sub(1, std::memory_order_acq_rel);
  if (c.invalidated)
    return record_error(cudaErrorStreamCaptureInvalidated, "the capture was invalidated: " + c.why);
  *graph = c.graph.release();
  gs().graphs.insert(*graph);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  if (!status) return record_error(cudaErrorInvalidValue, "cudaStreamIsCapturing with a null pointer");
  if (!is_valid_stream(stream)) return record_error(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing: not a live stream");
  std::lock_guard<std::mutex> lock(gs().mutex);
  auto it = legacy(stream) ? gs().captures.end() : gs().captures.find(stream);
  *status = it == gs().captures.end() ? cudaStreamCaptureStatusNone
            : it->second.invalidated  ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (!mode) return record_error(cudaErrorInvalidValue, "cudaThreadExchangeStreamCaptureMode with a null pointer");
  std::swap(*mode, t_mode);
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* num_nodes) {
  if (!num_nodes) return record_error(cudaErrorInvalidValue, "cudaGraphGetNodes with a null count");
  std::lock_guard<std::mutex> lock(gs().mutex);
  if (!gs().graphs.count(graph)) return record_error(cudaErrorInvalidValue, "cudaGraphGetNodes: not a live graph");
  if (nodes) {
    const size_t n = std::min(*num_nodes, graph->nodes.size());
    for (size_t i = 0; i < n; ++i) nodes[i] = reinterpret_cast<cudaGraphNode_t>(graph->nodes[i].get());
  }
  *num_nodes = graph->nodes.size();
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!exec) return record_error(cudaErrorInvalidValue, "cudaGraphInstantiate with a null pointer");
  std::lock_guard<std::mutex> lock(gs().mutex);
  if (!gs().graphs.count(graph)) return record_error(cudaErrorInvalidValue, "cudaGraphInstantiate: not a live graph");
  *exec = new CUgraphExec_st{graph->nodes};
  gs().execs.insert(*exec);
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (!is_valid_stream(stream)) return record_error(cudaErrorInvalidResourceHandle, "cudaGraphLaunch: not a live stream");
  std::vector<std::shared_ptr<Node>> nodes;
  {
    std::lock_guard<std::mutex> lock(gs().mutex);
    if (!gs().execs.count(exec)) return record_error(cudaErrorInvalidValue, "cudaGraphLaunch: not a live executable graph");
    nodes = exec->nodes;
  }
  if (stream_is_capturing(stream) || capture_forbids_legacy(stream))
    return record_error(cudaErrorStreamCaptureUnsupported,
                        "cudaGraphLaunch into a capture: child graphs are not emulated");
  for (const auto& node : nodes) {
    cudaError_t err = cudaSuccess;
    switch (node->kind) {
      case Node::Kind::kernel: {
        KernelLaunch k = node->launch;
        k.stream = stream;
        run_graph_kernel(k);
        break;
      }
      case Node::Kind::copy: err = copy_now(node->dst, node->src, node->count, node->copy_kind, "graph copy node"); break;
      case Node::Kind::set: err = set_now(node->dst, node->value, node->count, "graph memset node"); break;
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  std::lock_guard<std::mutex> lock(gs().mutex);
  if (!gs().execs.erase(exec)) return record_error(cudaErrorInvalidValue, "cudaGraphExecDestroy: not a live executable graph");
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  std::lock_guard<std::mutex> lock(gs().mutex);
  if (!gs().graphs.erase(graph)) return record_error(cudaErrorInvalidValue, "cudaGraphDestroy: not a live graph");
  delete graph;
  return cudaSuccess;
}
