#pragma once
// argmax's rule as a predicate, shared by the CPU and CUDA kernels that need "is the prediction
// the label?" without computing the argmax index (the fused cross-entropy's per-row correctness).
//
// argmax (argmax_middle, both backends) takes the first index of the largest number, and index 0
// when every value is NaN (a NaN never stays the maximum over numbers). So the prediction equals
// label y, with value zy = z[y], exactly when no other column j outranks it:
//   zy a number:  j < y outranks when z[j] >= zy (an earlier tie wins), j > y when z[j] > zy;
//   zy NaN:       y wins only as index 0 of an all-NaN row, so any number outranks it, and so
//                 does every j < y.
// Comparisons with a NaN z[j] are false, so a NaN never outranks a number.
#include <cstdint>

#include "kernels/common/hd.h"

namespace bulwark::ew {

template <class T>
BW_HD inline bool outranks_label(int64_t j, T zj, int64_t y, T zy) {
  if (zy != zy) return zj == zj || j < y;
  return j < y ? zj >= zy : zj > zy;
}

}  // namespace bulwark::ew
