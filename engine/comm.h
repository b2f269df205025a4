#pragma once
// The ranks of a data-parallel run and the collectives they use (docs/distributed.md).
//
// A Communicator joins the processes of one run (the ranks, 0..size-1). The trainer needs four
// collectives from it:
//   all_reduce_sum  element-wise sums over ranks: the gradients of every step, the epoch's totals,
//                   M+'s G; every rank gets the same result
//   broadcast       rank 0's bytes to every rank: the resolved config (compared on each rank),
//                   BatchNorm's running statistics, NCCL's unique id
//   barrier         after rank 0 writes a checkpoint the others may read
// Every call is made by every rank in the same order, like MPI's collectives.
//
// Implementations:
//   single  one process (world() by default): every collective is the identity, so a run that
//           is not launched by mpirun behaves exactly as before ranks existed
//   mpi     Open MPI or another MPI (BULWARK_MPI builds, engine/comm_mpi.cpp): the CPU backend's
//           all-reduce, the launcher's bootstrap, and the twin of NCCL where NCCL cannot run
//   nccl    GPU-to-GPU all-reduce on the device's stream (CUDA builds with NCCL,
//           kernels/cuda/nccl.cu), bootstrapped over MPI, which keeps the other collectives
// A collective that waits longer than the communicator's timeout (a rank died or hangs) throws
// CommTimeout on the rank that waited, naming the collective, instead of waiting forever.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace bulwark::comm {

struct CommTimeout : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A sum started by Communicator::start_all_reduce_sum.
class PendingSum {
 public:
  virtual ~PendingSum() = default;
  // Returns once the sum is in the tensor; on a GPU, once the device's stream is ordered after
  // it (what runs there next sees the sum; the host does not wait).
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks on this host, and this rank's index among them (its GPU).
  virtual int local_rank() const { return 0; }
  virtual int local_size() const { return 1; }

  // In place, over ranks: element i becomes the sum of every rank's element i. Each rank's `t`
  // has the same shape; f32, on any device (the MPI twin stages device memory through the host).
  virtual void all_reduce_sum(Tensor& t) = 0;
  virtual void all_reduce_sum(std::vector<double>& values) = 0;
  // all_reduce_sum(t) that returns before the sum is done: the caller computes while it moves
  // (the backward, while its first gradients are summed) and waits before reading `t`. Sums run
  // in the order they were started, on every rank alike; a blocking collective first finishes
  // those started before it. Where the transport needs the host to move data (MPI over shared
  // memory or TCP), progress() gives it a turn; the caller calls it now and then. By default the
  // sum is done at once.
  virtual std::unique_ptr<PendingSum> start_all_reduce_sum(Tensor t);
  virtual void progress() {}
  // Rank 0's `bytes` replace every other rank's.
  virtual void broadcast(std::string& bytes) = 0;
  virtual void barrier() = 0;
  // Ends the whole job at once (MPI_Abort), from a rank that cannot go on: the others would
  // otherwise wait in their next collective until the timeout.
  [[noreturn]] virtual void abort(int code) = 0;

  double sum(double value) {
    std::vector<double> v{value};
    all_reduce_sum(v);
    return v[0];
  }
  bool distributed() const { return size() > 1; }
};

// Differentiable all-reduce: every rank gets the sum of every rank's `t` (a copy; `t` is left
// alone), and in the backward every rank's upstream gradients are summed the same way (each
// rank's loss depends on every rank's input through the sum). Sync BatchNorm's statistics use it.
Tensor all_reduce_sum(const Tensor& t, Communicator& comm);

// The process's communicator: single until set_world() installs another (the CLI does, when
// launched by mpirun).
Communicator& world();
void set_world(std::unique_ptr<Communicator> comm);

std::unique_ptr<Communicator> make_single();

// Whether an MPI launcher (mpirun, srun with PMI) started this process: its environment says so.
bool launched_by_mpi();
// Whether this build can talk MPI (BULWARK_MPI) and NCCL (a CUDA build that found NCCL).
bool mpi_built();
bool nccl_built();
// The MPI library's own version line ("" in a build without MPI).
std::string mpi_library();
// Whether NCCL's library loads (it is opened at run time, not linked): `status` says its version
// and file, or why not (not built in, the emulator, the file missing).
bool nccl_loads(std::string* status);

// MPI_COMM_WORLD (initialising MPI): throws std::runtime_error in a build without MPI.
// `timeout_seconds` bounds every collective (CommTimeout).
std::unique_ptr<Communicator> make_mpi(double timeout_seconds);
// An NCCL communicator over the ranks of `bootstrap` (rank 0 makes the unique id and broadcasts
// it there), one GPU per rank (runtime::cuda_select_device first): its all_reduce_sum of a CUDA
// tensor is ncclAllReduce on the device's stream; everything else (sums of host values,
// broadcasts, barriers, the timeout) stays with `bootstrap`. Throws std::runtime_error where NCCL
// is not built in (nccl_built()) or cannot run (the emulator). NCCL's kernels have no timeout:
// before each collective of `bootstrap` (the epoch's sums, which the host waits for anyway) the
// host waits for NCCL's work so far, at most `timeout_seconds`, and an error NCCL reports (a
// peer lost) or the timeout aborts the NCCL communicator and throws CommTimeout.
std::unique_ptr<Communicator> make_nccl(std::unique_ptr<Communicator> bootstrap, double timeout_seconds);

}  // namespace bulwark::comm
