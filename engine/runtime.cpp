#include "engine/runtime.h"

#include <stdexcept>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::runtime {

void set_num_threads(int n) { cpu::set_num_threads(n); }
int num_threads() { return cpu::num_threads(); }

bool cuda_available(std::string* why) { return cuda::device_available(why); }

int64_t cuda_free_memory() {
  size_t free_bytes = 0, total_bytes = 0;
  cuda::device_memory_info(&free_bytes, &total_bytes);
  return static_cast<int64_t>(free_bytes);
}
bool cuda_emulated() { return cuda::emulated(); }
void cuda_select_device(int local_rank) { cuda::select_device(local_rank); }
void cuda_synchronize() { cuda::synchronize(); }
bool cuda_set_record_only(bool on) { return cuda::set_record_only(on); }

std::vector<std::string> kernel_source_names() {
  std::vector<std::string> names;
  for (cuda::KernelSource s : {cuda::KernelSource::automatic, cuda::KernelSource::ours, cuda::KernelSource::vendor})
    names.push_back(cuda::kernel_source_name(s));
  return names;
}

void check_kernel_source(const std::string& name) { cuda::parse_kernel_source(name); }
void set_kernel_source(const std::string& name) { cuda::set_kernel_source(cuda::parse_kernel_source(name)); }

std::vector<std::string> math_precision_names() {
  std::vector<std::string> names;
  for (MathPrecision p : kMathPrecisions) names.push_back(math_precision_name(p));
  return names;
}

void set_math_precision(const std::string& name) {
  for (MathPrecision p : kMathPrecisions)
    if (name == math_precision_name(p)) {
      cpu::set_math_precision(p);
      cuda::set_math_precision(p);
      return;
    }
  throw std::invalid_argument("unknown math precision '" + name + "': choose fp32, tf32 or bf16");
}

std::string math_precision() { return math_precision_name(cpu::math_precision()); }

struct CudaGraph::State {
  std::shared_ptr<cuda::CapturedGraph> graph;
  uint64_t seed = 0, draws = 0;  // the generator captured, and the counters one replay consumes
};

CudaGraph::CudaGraph() : state_(std::make_unique<State>()) {}
CudaGraph::~CudaGraph() = default;

void CudaGraph::capture(Generator& gen, const std::function<void()>& step) {
  reset();
  const uint64_t origin = gen.offset();
  cuda::begin_capture(gen.seed(), origin);
  try {
    step();
  } catch (...) {
    cuda::abort_capture();
    gen.set_offset(origin);
    throw;
  }
  std::shared_ptr<cuda::CapturedGraph> graph = cuda::end_capture();
  state_->graph = std::move(graph);
  state_->seed = gen.seed();
  state_->draws = gen.offset() - origin;
  gen.set_offset(origin);
}

void CudaGraph::replay(Generator& gen, double lr, int64_t optimizer_step) {
  if (!state_->graph) throw std::logic_error("CudaGraph::replay: nothing captured");
  if (gen.seed() != state_->seed)
    throw std::logic_error("CudaGraph::replay: the generator is not the one the step was captured with");
  cuda::replay(*state_->graph, gen.offset(), lr, optimizer_step);
  gen.set_offset(gen.offset() + state_->draws);
}

bool CudaGraph::captured() const { return state_->graph != nullptr; }
int64_t CudaGraph::nodes() const { return state_->graph ? static_cast<int64_t>(cuda::graph_nodes(*state_->graph)) : 0; }
void CudaGraph::reset() { state_->graph.reset(); }

}  // namespace bulwark::runtime
