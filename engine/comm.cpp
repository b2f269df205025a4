#include "engine/comm.h"

#include <cstdlib>

#include "engine/autograd.h"

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

bool nccl_built() {
#ifdef BULWARK_NCCL
  return true;
#else
  return false;
#endif
}

}  // namespace bulwark::comm

#ifndef BULWARK_NCCL
namespace bulwark::comm {
std::unique_ptr<Communicator> make_nccl(Communicator&, double) {
  throw std::runtime_error(
      "this bulwark was built without NCCL (a CUDA build finds it beside the CUDA toolkit): use --comm mpi");
}
}  // namespace bulwark::comm
#endif
