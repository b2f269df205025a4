#include "engine/comm.h"

#include <cstdlib>

#include <fmt/format.h>

#include "engine/autograd.h"
#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::comm {

namespace {

// One process: every collective leaves its argument as it is.
class Single final : public Communicator {
 public:
  std::string backend() const override { return "single"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(Tensor&) override {}
  void all_reduce_sum(std::vector<double>&) override {}
  void broadcast(std::string&) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

std::unique_ptr<Communicator>& world_slot() {
  static std::unique_ptr<Communicator> w = make_single();
  return w;
}

}  // namespace

std::unique_ptr<Communicator> make_single() { return std::make_unique<Single>(); }

namespace {
struct DoneSum final : PendingSum {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingSum> Communicator::start_all_reduce_sum(Tensor t) {
  all_reduce_sum(t);
  return std::make_unique<DoneSum>();
}

Tensor all_reduce_sum(const Tensor& t, Communicator& comm) {
  Tensor out = t.detach().contiguous().clone();
  comm.all_reduce_sum(out);
  return record(out, "all_reduce_sum", {t}, [&comm](const Node&, const Tensor& g, const std::vector<bool>&) {
    // Under create_graph the gradient keeps its history: the sum is recorded again.
    return std::vector<Tensor>{all_reduce_sum(g, comm)};
  });
}

Communicator& world() { return *world_slot(); }

void set_world(std::unique_ptr<Communicator> comm) { world_slot() = comm ? std::move(comm) : make_single(); }

bool launched_by_mpi() {
  // Open MPI's mpirun, MPICH/Hydra and Slurm's PMI each leave their world size in the environment.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

bool mpi_built() {
#ifdef BULWARK_MPI
  return true;
#else
  return false;
#endif
}

bool nccl_built() { return cuda::nccl_built(); }
bool nccl_loads(std::string* status) { return cuda::nccl_load(status); }

namespace {
// NCCL for the gradients on the GPU; the bootstrap communicator (MPI) for the rest.
class Nccl final : public Communicator {
 public:
  Nccl(std::unique_ptr<Communicator> bootstrap, double timeout_seconds)
      : boot_(std::move(bootstrap)), timeout_(timeout_seconds) {
    std::string id = boot_->rank() == 0 ? cuda::nccl_unique_id() : std::string();
    boot_->broadcast(id);
    cuda::nccl_init(id, boot_->rank(), boot_->size());
  }
  ~Nccl() override { cuda::nccl_finalize(); }
  std::string backend() const override { return "nccl+" + boot_->backend(); }
  int rank() const override { return boot_->rank(); }
  int size() const override { return boot_->size(); }
  int local_rank() const override { return boot_->local_rank(); }
  int local_size() const override { return boot_->local_size(); }
  void all_reduce_sum(Tensor& t) override {
    if (t.device() != Device::cuda || !t.is_contiguous() || t.dtype() != DType::f32) return boot_->all_reduce_sum(t);
    cuda::nccl_all_reduce_sum(t.data<float>(), t.numel());
  }
  void all_reduce_sum(std::vector<double>& v) override {
    nccl_settled();
    boot_->all_reduce_sum(v);
  }
  // On a side stream that waits for what the device's stream queued so far (the gradients);
  // wait() makes the device's stream wait for the sum.
  std::unique_ptr<PendingSum> start_all_reduce_sum(Tensor t) override {
    if (t.device() != Device::cuda || !t.is_contiguous() || t.dtype() != DType::f32)
      return boot_->start_all_reduce_sum(std::move(t));
    struct OnSideStream final : PendingSum {
      Tensor t;  // its memory stays allocated until the device's stream waited for the sum
      void* done = nullptr;
      ~OnSideStream() override { wait(); }
      void wait() override {
        if (done) cuda::nccl_join(done);
        done = nullptr;
      }
    };
    auto pending = std::make_unique<OnSideStream>();
    pending->done = cuda::nccl_all_reduce_sum_async(t.data<float>(), t.numel());
    pending->t = std::move(t);
    return pending;
  }
  void progress() override { boot_->progress(); }
  void broadcast(std::string& bytes) override {
    nccl_settled();
    boot_->broadcast(bytes);
  }
  void barrier() override {
    nccl_settled();
    boot_->barrier();
  }
  [[noreturn]] void abort(int code) override {
    boot_->abort(code);
    std::exit(code);  // not reached
  }

 private:
  void nccl_settled() {
    const std::string failure = cuda::nccl_wait_idle(timeout_);
    if (!failure.empty())
      throw CommTimeout(fmt::format("NCCL {}: a rank died or hangs (--comm-timeout sets the limit)", failure));
  }

  std::unique_ptr<Communicator> boot_;
  double timeout_;
};
}  // namespace

std::unique_ptr<Communicator> make_nccl(std::unique_ptr<Communicator> bootstrap, double timeout_seconds) {
  if (!nccl_built())
    throw std::runtime_error(cuda::emulated() ? "NCCL cannot run on the emulated CUDA backend: use the MPI communicator"
                                              : "this build has no NCCL (a CUDA build finds it beside the toolkit)");
  if (std::string why; !nccl_loads(&why)) throw std::runtime_error(why);
  return std::make_unique<Nccl>(std::move(bootstrap), timeout_seconds);
}

}  // namespace bulwark::comm

