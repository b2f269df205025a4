#include "training/interrupt.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

namespace bulwark::training {

namespace {

volatile std::sig_atomic_t g_signal = 0;

void on_signal(int signal) {
  if (g_signal != 0) {
    // Only async-signal-safe calls here: write(2) and _exit.
    const char message[] = "\nbulwark: second interrupt: exiting now (the last complete checkpoint stands)\n";
    [[maybe_unused]] const ssize_t ignored = write(STDERR_FILENO, message, sizeof message - 1);
    _exit(128 + signal);
  }
  g_signal = signal;
  const char message[] =
      "\nbulwark: interrupted: finishing the current batch and saving the run (interrupt again to exit at once)\n";
  [[maybe_unused]] const ssize_t ignored = write(STDERR_FILENO, message, sizeof message - 1);
}

struct sigaction handler_action() {
  struct sigaction a {};
  a.sa_handler = on_signal;
  sigemptyset(&a.sa_mask);
  a.sa_flags = SA_RESTART;  // a read or write the signal lands in carries on
  return a;
}

}  // namespace

InterruptScope::InterruptScope() {
  g_signal = 0;
  const struct sigaction a = handler_action();
  sigaction(SIGINT, &a, &previous_int_);
  sigaction(SIGTERM, &a, &previous_term_);
}

InterruptScope::~InterruptScope() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
  g_signal = 0;
}

int interrupt_signal() { return g_signal; }

void test_interrupt_point(const char* point) {
  static const char* spec = std::getenv("BULWARK_TEST_INTERRUPT");
  if (spec == nullptr) return;
  static std::map<std::string, int> reached;
  std::string where;
  int n = 0, signal = SIGINT, times = 1;
  {
    const std::string s = spec;
    const size_t colon = s.find(':');
    where = s.substr(0, colon);
    if (colon != std::string::npos && std::sscanf(s.c_str() + colon + 1, "%d:%d:%d", &n, &signal, &times) < 1)
      n = 0;
  }
  if (where != point || ++reached[where] != n) return;
  for (int i = 0; i < times; ++i) std::raise(signal);
}

const char* signal_name(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

}  // namespace bulwark::training
