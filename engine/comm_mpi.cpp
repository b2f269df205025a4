// The MPI communicator (engine/comm.h): MPI_COMM_WORLD, every collective non-blocking and
// polled against a deadline, so a rank that died or hangs turns into an error on the others
// instead of a hang.
//
// Sums are MPI_Ireduce to rank 0 followed by MPI_Ibcast, not MPI_Iallreduce: an allreduce may
// add in a different order on each rank (recursive doubling does), and ranks whose weights drift
// apart by a rounding bit would silently train different models. Reduce + broadcast gives every
// rank rank 0's bits, at twice the latency, which the CPU backend's step hides; GPUs use NCCL.
//
// Sums started without waiting (start_all_reduce_sum: the gradient buckets, sent during the
// backward) wait in a queue. Only its first has a request in flight, so every rank starts its
// collectives in the same order whenever it polls; a blocking collective first finishes the
// queue.
#include "engine/comm.h"

#include <fmt/format.h>

#ifdef BULWARK_MPI
#include <mpi.h>

#include <chrono>
#include <deque>
#include <memory>
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

  void all_reduce_sum(Tensor& t) override { start_all_reduce_sum(t)->wait(); }
  void all_reduce_sum(std::vector<double>& v) override {
    auto job = std::make_shared<Sum>();
    job->data = reinterpret_cast<char*>(v.data());
    job->n = static_cast<int64_t>(v.size());
    job->type = MPI_DOUBLE;
    job->size = sizeof(double);
    enqueue(job);
    finish(*job, "an all-reduce");
  }
  std::unique_ptr<PendingSum> start_all_reduce_sum(Tensor t) override {
    if (t.dtype() != DType::f32) throw std::invalid_argument("all_reduce_sum: f32 tensors only");
    auto job = std::make_shared<Sum>();
    if (t.device() == Device::cpu && t.is_contiguous()) {
      job->data = reinterpret_cast<char*>(t.data<float>());
    } else {
      job->staged = t.to_vector();  // device memory (the emulator's too) through the host
      job->data = reinterpret_cast<char*>(job->staged.data());
    }
    job->n = t.numel();
    job->type = MPI_FLOAT;
    job->size = sizeof(float);
    job->t = std::move(t);
    enqueue(job);
    struct Pending final : PendingSum {
      Mpi* mpi;
      std::shared_ptr<Sum> job;
      void wait() override { mpi->finish(*job, "an all-reduce"); }
    };
    auto pending = std::make_unique<Pending>();
    pending->mpi = this;
    pending->job = std::move(job);
    return pending;
  }
  // Moves the sums in the queue along as far as they go without waiting.
  void progress() override {
    while (!queue_.empty()) {
      Sum& j = *queue_.front();
      if (!j.in_flight) {
        start_piece(j);
        continue;
      }
      int done = 0;
      check(MPI_Test(&j.request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (!done) return;
      j.in_flight = false;
      ++moves_;
      if (!j.broadcasting) {
        j.broadcasting = true;  // rank 0 has this piece's sum: now every rank gets it
        start_piece(j);
        continue;
      }
      j.broadcasting = false;
      j.at += piece(j);
      if (j.at < j.n) continue;
      if (!j.staged.empty()) j.t.copy_(Tensor::from_vector(j.staged, j.t.shape()).to(j.t.device()));
      j.done = true;
      j.t = Tensor();
      queue_.pop_front();
    }
  }
  void broadcast(std::string& bytes) override {
    drain();
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
    drain();
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

  // One sum in the queue: piece by piece, MPI_Ireduce to rank 0 then MPI_Ibcast. One request is
  // in flight at a time, the queue's first, so every rank starts its collectives in one order.
  struct Sum {
    Tensor t;                   // the tensor summed (held until done)
    std::vector<float> staged;  // its values on the host, for device memory
    char* data = nullptr;
    int64_t n = 0, at = 0;  // elements, and those done
    MPI_Datatype type = MPI_FLOAT;
    size_t size = sizeof(float);
    MPI_Request request = MPI_REQUEST_NULL;
    bool in_flight = false, broadcasting = false, done = false;
  };
  static int piece(const Sum& j) { return static_cast<int>(std::min(kChunk, j.n - j.at)); }

  void start_piece(Sum& j) {
    char* at = j.data + j.at * static_cast<int64_t>(j.size);
    if (!j.broadcasting)
      check(MPI_Ireduce(rank_ == 0 ? MPI_IN_PLACE : at, at, piece(j), j.type, MPI_SUM, 0, MPI_COMM_WORLD, &j.request),
            "MPI_Ireduce");
    else
      check(MPI_Ibcast(at, piece(j), j.type, 0, MPI_COMM_WORLD, &j.request), "MPI_Ibcast");
    j.in_flight = true;
  }

  void enqueue(const std::shared_ptr<Sum>& job) {
    if (job->n == 0) {
      job->done = true;
      return;
    }
    queue_.push_back(job);
    progress();
  }
  void finish(const Sum& job, const char* what) {
    wait_until([&] {
      progress();
      return job.done;
    }, what);
  }
  // Every sum started so far, before a collective outside the queue.
  void drain() {
    if (!queue_.empty()) finish(*queue_.back(), "an all-reduce");
  }
  void wait(MPI_Request& r, const char* what) {
    wait_until([&] {
      int done = 0;
      check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), "MPI_Test");
      return done != 0;
    }, what);
  }

  // Polls until `done()` or the timeout passes. Shared-memory transports move a message in
  // fragments, each needing a poll, so the first kSpin of a wait polls back to back (yielding
  // the core to a rank that computes); a longer wait (the others are still computing) sleeps
  // between polls, 1 ms at most, and leaves the cores to them. Each piece of a queued sum that
  // completes starts the spinning (and the timeout) again: a long queue is many short waits.
  //
  // No helper thread polls while the rank computes: MPI moves a queued sum only when this
  // thread polls (in the backward, once per finished parameter). One that polled every 50 us
  // made 2-rank cnn7 steps 20-30% slower here in alternating runs: it takes cycles from the
  // compute threads of a machine with no idle core, and its sleeps delay the fragments. On
  // GPUs NCCL needs none.
  template <class Done>
  void wait_until(Done done, const char* what) {
    using Clock = std::chrono::steady_clock;
    constexpr auto kSpin = std::chrono::milliseconds(20);
    auto start = Clock::now();
    auto pause = std::chrono::microseconds(20);
    int64_t moves = moves_;
    for (;;) {
      if (done()) return;
      const auto now = Clock::now();
      if (moves_ != moves) {
        moves = moves_;
        start = now;
        pause = std::chrono::microseconds(20);
      }
      const auto deadline = start + std::chrono::duration<double>(timeout_);
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

  std::deque<std::shared_ptr<Sum>> queue_;
  int64_t moves_ = 0;  // requests of the queue completed so far
  double timeout_;
  bool owns_mpi_ = false;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi(double timeout_seconds) { return std::make_unique<Mpi>(timeout_seconds); }

std::string mpi_library() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);  // callable before MPI_Init
  const std::string v(text, static_cast<size_t>(len));
  return v.substr(0, v.find_first_of(",\n"));
}

#else

std::unique_ptr<Communicator> make_mpi(double) {
  throw std::runtime_error(
      "this bulwark was built without MPI, so its ranks cannot talk to each other: install Open MPI "
      "(apt-get install libopenmpi-dev openmpi-bin) and build again (cmake -DBULWARK_MPI=ON)");
}

std::string mpi_library() { return ""; }

#endif

}  // namespace bulwark::comm
