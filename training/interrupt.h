#pragma once
// Ctrl-C (SIGINT) and SIGTERM during `bulwark train`.
//
// The first signal asks the trainer to stop: it finishes the batch it is in, writes
// interrupted.safetensors (the run so far, mid-epoch: model, optimizer, loader position, RNG
// offsets and the epoch's sums) or, when the signal comes during an epoch's validation or
// checkpoint, completes that epoch's checkpoint; then it prints where it stopped and the resume
// command on stderr (also with --quiet) and exits with 128 + the signal (130, 143). A resumed run
// ends bitwise equal to an uninterrupted one on the CPU. A second signal exits at once: every
// file bulwark writes goes to a temporary and is renamed into place, so the last complete
// checkpoint stands.
#include <csignal>
#include <stdexcept>
#include <string>

namespace bulwark::training {

// Installs the handlers for its lifetime (the CLI's train command), restoring the previous ones.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

// The first signal received in an InterruptScope (SIGINT or SIGTERM), or 0.
int interrupt_signal();

// Thrown by the trainer after it saved the run on an interrupt: the CLI prints the message and
// exits with 128 + signal.
struct TrainingInterrupted : std::runtime_error {
  TrainingInterrupted(int signal, const std::string& message) : std::runtime_error(message), signal(signal) {}
  int signal;
};

// Test-only, so tests can reach a named point of a real training process: with the environment
// variable BULWARK_TEST_INTERRUPT="<point>:<n>[:<signal>[:<times>]]", the n-th call (from 1) of
// test_interrupt_point("<point>") sends the process <signal> (a number; default SIGINT) <times>
// times (default 1). The trainer's points: "batch" (after a training batch's step, before the
// trainer looks at the flag), "validation" (between the clean and the robust validation) and
// "checkpoint" (between a checkpoint's temporary write and its rename).
void test_interrupt_point(const char* point);

const char* signal_name(int signal);  // "SIGINT", "SIGTERM", ...

}  // namespace bulwark::training
