// The emulated warp matrix API's collective checks and scratch (wmma.h).
#include "kernels/emu/wmma.h"

#include <array>

namespace bulwark::emu::wmma::detail {

namespace {
constexpr int kWarpsPerBlock = 1024 / 32;
constexpr int kScratchFloats = 3 * 256;  // A, B and C of an m16n16k16 problem
}  // namespace

void wmma_fail(const std::string& what, bulwark::emu::Fault fault) {
  bulwark::emu::detail::fail(fault,
                             bulwark::emu::detail::describe_thread(bulwark::emu::detail::current.linear) + ": " + what);
}

int lane_id() { return static_cast<int>(bulwark::emu::detail::current.linear % 32); }
int warp_id() { return static_cast<int>(bulwark::emu::detail::current.linear / 32); }

float* warp_scratch() {
  // Blocks run one at a time on an OS thread and the lanes of a warp are its fibers.
  static thread_local std::array<std::array<float, kScratchFloats>, kWarpsPerBlock> scratch;
  return scratch[static_cast<size_t>(warp_id())].data();
}

void warp_agree(const char* op, uint64_t key) {
  using bulwark::emu::detail::WarpOp;
  if (bulwark::emu::detail::active_mask() != 0xffffffffu)
    wmma_fail(std::string(op) + " needs all 32 lanes of the warp (a block size that is a multiple of 32, no lane "
                                "exited or diverged)",
              bulwark::emu::Fault::warp_divergence);
  const uint64_t r = bulwark::emu::detail::warp_collective(WarpOp::match_all, 0xffffffffu, key, 0, 32, false,
                                                           bulwark::emu::detail::Site::current());
  if ((r >> 32) == 0)
    wmma_fail(std::string(op) + ": the lanes of the warp passed different pointers or ldm",
              bulwark::emu::Fault::warp_divergence);
  // The collective completes with the lanes that did not exit first: all 32 must be among them.
  if ((r & 0xffffffffu) != 0xffffffffu)
    wmma_fail(std::string(op) + " was reached by lanes " + std::to_string(r & 0xffffffffu) +
                  " (a mask) only: every lane of the warp must call it",
              bulwark::emu::Fault::warp_divergence);
}

}  // namespace bulwark::emu::wmma::detail
