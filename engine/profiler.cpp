// The engine's op profiler (profiler.h).
#include "engine/profiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>

#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::profiler {

namespace detail {
std::atomic<bool> g_active{false};
}

namespace {

using Clock = std::chrono::steady_clock;

const std::string kGradientSums = "autograd (gradient sums)";

// A CUDA kernel call whose events the device has not passed yet: read at the step's end.
struct PendingCall {
  const std::string* op;  // a row's key (stable: std::map)
  bool backward;
  cuda::TimingEvent start, end;
};

struct Session {
  std::map<std::string, OpRow> rows;
  int64_t steps = 0, trace_step = -1;
  double seconds = 0;
  bool in_step = false;
  Clock::time_point step_start;
  std::vector<TraceEvent> trace;
  std::vector<PendingCall> pending;  // this step's CUDA calls
  double first_pending_us = 0;        // host time of the step's first CUDA call, from step_start
};

std::mutex g_mutex;  // guards g_session's lifetime; the calls themselves come from one thread
Session* g_session = nullptr;

// The calling thread's kernel in flight and attribution.
struct ThreadState {
  const char* op = nullptr;
  bool cuda = false;
  Clock::time_point start;
  cuda::TimingEvent start_event = -1;
  const std::string* backward_op = nullptr;
  double pending_flops = 0;
};
thread_local ThreadState t_state;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

namespace detail {

// On CUDA a call is bracketed by two events on the stream and an NVTX range; nothing waits: the
// step's end synchronizes once and reads every call's time from its events (CUDA's own clock:
// the time between the device reaching the start event and the end event, launch gaps included).
// On the CPU the kernels are synchronous and the host clock times them.
void begin_kernel(const char* op, bool cuda) {
  Session* s = g_session;
  if (!s || !s->in_step) {  // only the kernels of a Step count
    t_state.op = nullptr;
    return;
  }
  t_state.op = op;
  t_state.cuda = cuda;
  if (cuda) {
    if (s->pending.empty()) s->first_pending_us = 1e6 * seconds_between(s->step_start, Clock::now());
    cuda::range_push(op);
    t_state.start_event = cuda::record_timing_event();
  }
  t_state.start = Clock::now();
}

void end_kernel() {
  Session* s = g_session;
  if (!s || !t_state.op || !s->in_step) {
    t_state.op = nullptr;
    t_state.pending_flops = 0;
    return;
  }
  const bool backward = t_state.backward_op != nullptr;
  const std::string& name = backward ? *t_state.backward_op : std::string(t_state.op);
  OpRow& row = s->rows[name];
  row.op = name;
  (backward ? row.bwd_calls : row.fwd_calls) += 1;
  (backward ? row.bwd_flops : row.fwd_flops) += t_state.pending_flops;
  t_state.pending_flops = 0;
  t_state.op = nullptr;
  if (t_state.cuda) {
    const cuda::TimingEvent end = cuda::record_timing_event();
    cuda::range_pop();
    s->pending.push_back({&row.op, backward, t_state.start_event, end});
    return;
  }
  const Clock::time_point now = Clock::now();
  const double dt = seconds_between(t_state.start, now);
  (backward ? row.bwd_seconds : row.fwd_seconds) += dt;
  if (s->steps == s->trace_step)
    s->trace.push_back({name, backward, 1e6 * seconds_between(s->step_start, t_state.start), 1e6 * dt});
}

}  // namespace detail

void start(int64_t trace_step) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_session) throw std::logic_error("profiler::start: a session is already active");
  g_session = new Session;
  g_session->trace_step = trace_step;
  t_state = ThreadState{};
  detail::g_active.store(true);
}

Report stop() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_session) throw std::logic_error("profiler::stop: no active session");
  detail::g_active.store(false);
  Report r;
  r.steps = g_session->steps;
  r.seconds = g_session->seconds;
  for (auto& [name, row] : g_session->rows) r.ops.push_back(row);
  std::sort(r.ops.begin(), r.ops.end(), [](const OpRow& a, const OpRow& b) { return a.seconds() > b.seconds(); });
  r.trace = std::move(g_session->trace);
  delete g_session;
  g_session = nullptr;
  return r;
}

bool active() { return detail::g_active.load(std::memory_order_relaxed); }

Step::Step() : start_(Clock::now()), on_(active()) {
  if (on_ && g_session) {
    g_session->in_step = true;
    g_session->step_start = start_;
  }
}

Step::~Step() {
  if (!on_ || !g_session) return;
  Session& session = *g_session;
  if (!session.pending.empty()) {
    cuda::synchronize();  // the step's one wait: its calls' events are all passed
    const cuda::TimingEvent first = session.pending.front().start;
    for (const PendingCall& c : session.pending) {
      OpRow& row = session.rows[*c.op];
      const double dt = 1e-3 * cuda::timing_elapsed_ms(c.start, c.end);
      (c.backward ? row.bwd_seconds : row.fwd_seconds) += dt;
      if (session.steps == session.trace_step)
        session.trace.push_back({*c.op, c.backward,
                                 session.first_pending_us + 1e3 * cuda::timing_elapsed_ms(first, c.start), 1e6 * dt});
    }
    session.pending.clear();
    cuda::release_timing_events();
  }
  g_session->seconds += seconds_between(start_, Clock::now());
  g_session->steps += 1;
  g_session->in_step = false;
}

BackwardScope::BackwardScope(const std::string& op) : previous_(t_state.backward_op), on_(active()) {
  if (on_) t_state.backward_op = &op;
}
BackwardScope::BackwardScope() : BackwardScope(kGradientSums) {}
BackwardScope::~BackwardScope() {
  if (on_) t_state.backward_op = previous_;
}

void count_flops(double flops) {
  if (active()) t_state.pending_flops += flops;
}

double Report::kernel_seconds() const {
  double total = 0;
  for (const OpRow& r : ops) total += r.seconds();
  return total;
}

std::string Report::table(size_t max_rows) const {
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  const double step_ms = 1e3 * seconds / n, kernel_ms = 1e3 * kernel_seconds() / n;
  std::string out = fmt::format(
      "profile: {} steps, {:.2f} ms a step; op kernels {:.2f} ms ({:.0f}%), the rest ({:.2f} ms) is the tape, "
      "allocation and host code\n",
      steps, step_ms, kernel_ms, step_ms > 0 ? 100 * kernel_ms / step_ms : 0.0, step_ms - kernel_ms);
  out += fmt::format("{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}\n", "op (per step)", "fwd calls", "fwd ms",
                     "bwd calls", "bwd ms", "total ms", "share", "GFLOP/s");
  for (size_t i = 0; i < ops.size() && i < max_rows; ++i) {
    const OpRow& r = ops[i];
    const double flops = r.fwd_flops + r.bwd_flops;
    out += fmt::format("{:<28} {:>9.1f} {:>9.3f} {:>9.1f} {:>9.3f} {:>9.3f} {:>6.1f}% {:>9}\n", r.op,
                       static_cast<double>(r.fwd_calls) / n, 1e3 * r.fwd_seconds / n,
                       static_cast<double>(r.bwd_calls) / n, 1e3 * r.bwd_seconds / n, 1e3 * r.seconds() / n,
                       seconds > 0 ? 100 * r.seconds() / seconds : 0.0,
                       flops > 0 && r.seconds() > 0 ? fmt::format("{:.1f}", flops / r.seconds() / 1e9) : "-");
  }
  if (ops.size() > max_rows) out += fmt::format("({} more ops in the JSON)\n", ops.size() - max_rows);
  return out;
}

nlohmann::ordered_json Report::to_json() const {
  nlohmann::ordered_json j;
  j["steps"] = steps;
  j["seconds"] = seconds;
  j["kernel_seconds"] = kernel_seconds();
  j["ops"] = nlohmann::ordered_json::array();
  for (const OpRow& r : ops)
    j["ops"].push_back({{"op", r.op},
                        {"fwd_calls", r.fwd_calls},
                        {"fwd_seconds", r.fwd_seconds},
                        {"fwd_flops", r.fwd_flops},
                        {"bwd_calls", r.bwd_calls},
                        {"bwd_seconds", r.bwd_seconds},
                        {"bwd_flops", r.bwd_flops}});
  return j;
}

nlohmann::ordered_json Report::chrome_trace() const {
  nlohmann::ordered_json events = nlohmann::ordered_json::array();
  for (const TraceEvent& e : trace)
    events.push_back({{"name", e.op},
                      {"cat", e.backward ? "backward" : "forward"},
                      {"ph", "X"},
                      {"ts", e.start_us},
                      {"dur", e.duration_us},
                      {"pid", 0},
                      {"tid", e.backward ? 1 : 0}});
  return {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
}

}  // namespace bulwark::profiler
