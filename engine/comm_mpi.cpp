// The MPI communicator (engine/comm.h): MPI_COMM_WORLD, every collective non-blocking and
// polled against a deadline, so a rank that died or hangs turns into an error on the others
// instead of a hang.
//
// Sums are MPI_Ireduce to rank 0 followed by MPI_Ibcast, not MPI_Iallreduce: an allreduce may
// add in a different order on each rank (recursive doubling does), and ranks whose weights drift
// apart by a rounding bit would silently train different models. Reduce + broadcast gives every
// rank rank 0's bits, at twice the latency, which the CPU backend's step hides; GPUs use NCCL.
#include "engine/comm.h"

#include <fmt/format.h>

#ifdef BULWARK_MPI
#include <mpi.h>

#include <chrono>
#include <thread>
#endif

namespace bulwark::comm {

#ifdef BULWARK_MPI
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(fmt::format("MPI {} failed: {}", what, std::string(text, static_cast<size_t>(len))));
}

class Mpi final : public Communicator {
 public:
  explicit Mpi(double timeout_seconds) : timeout_(timeout_seconds) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
          "MPI_Comm_split_type");
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
  }
  ~Mpi() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }

  std::string backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  void all_reduce_sum(Tensor& t) override {
    if (t.dtype() != DType::f32) throw std::invalid_argument("all_reduce_sum: f32 tensors only");
    if (t.device() == Device::cpu && t.is_contiguous()) {
      sum_in_place(t.data<float>(), t.numel(), MPI_FLOAT, "an all-reduce");
      return;
    }
    std::vector<float> host = t.to_vector();  // device memory (the emulator's too) through the host
    sum_in_place(host.data(), static_cast<int64_t>(host.size()), MPI_FLOAT, "an all-reduce");
    t.copy_(Tensor::from_vector(host, t.shape()).to(t.device()));
  }
  void all_reduce_sum(std::vector<double>& v) override {
    sum_in_place(v.data(), static_cast<int64_t>(v.size()), MPI_DOUBLE, "an all-reduce");
  }
  void broadcast(std::string& bytes) override {
    uint64_t n = bytes.size();
    MPI_Request r;
    check(MPI_Ibcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD, &r), "MPI_Ibcast");
    wait(r, "a broadcast");
    bytes.resize(n);
    for (uint64_t at = 0; at < n; at += kChunk) {
      check(MPI_Ibcast(bytes.data() + at, static_cast<int>(std::min<uint64_t>(kChunk, n - at)), MPI_CHAR, 0,
                       MPI_COMM_WORLD, &r),
            "MPI_Ibcast");
      wait(r, "a broadcast");
    }
  }
  void barrier() override {
    MPI_Request r;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
    wait(r, "a barrier");
  }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

 private:
  // Elements per collective: a large buffer goes in pieces, each of which a shared-memory
  // transport moves within wait()'s spinning phase (a 53 MB gradient in one piece took seconds
  // of 1 ms sleeps between its fragments). MPI counts are int in any case.
  static constexpr int64_t kChunk = int64_t{1} << 18;

  template <class T>
  void sum_in_place(T* data, int64_t n, MPI_Datatype type, const char* what) {
    for (int64_t at = 0; at < n; at += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, n - at));
      MPI_Request r;
      check(MPI_Ireduce(rank_ == 0 ? MPI_IN_PLACE : data + at, data + at, count, type, MPI_SUM, 0, MPI_COMM_WORLD, &r),
            "MPI_Ireduce");
      wait(r, what);
      check(MPI_Ibcast(data + at, count, type, 0, MPI_COMM_WORLD, &r), "MPI_Ibcast");
      wait(r, what);
    }
  }

  // Polls `r` until it completes or the timeout passes. Shared-memory transports move a message
  // in fragments, each needing a poll, so the first kSpin of a wait polls back to back (yielding
  // the core to a rank that computes); a longer wait (the others are still computing) sleeps
  // between polls, 1 ms at most, and leaves the cores to them.
  void wait(MPI_Request& r, const char* what) {
    using Clock = std::chrono::steady_clock;
    constexpr auto kSpin = std::chrono::milliseconds(20);
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(timeout_);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      const auto now = Clock::now();
      if (now > deadline)
        throw CommTimeout(fmt::format("no answer from the other ranks in {} for {:g} s: a rank died, "
                                      "hangs or runs other options (--comm-timeout sets the limit)",
                                      what, timeout_));
      if (now - start < kSpin) {
        std::this_thread::yield();
        continue;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  double timeout_;
  bool owns_mpi_ = false;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi(double timeout_seconds) { return std::make_unique<Mpi>(timeout_seconds); }

#else

std::unique_ptr<Communicator> make_mpi(double) {
  throw std::runtime_error(
      "this bulwark was built without MPI, so its ranks cannot talk to each other: install Open MPI "
      "(apt-get install libopenmpi-dev openmpi-bin) and build again (cmake -DBULWARK_MPI=ON)");
}

#endif

}  // namespace bulwark::comm
