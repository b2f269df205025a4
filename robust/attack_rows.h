#pragma once
// Picking and merging rows of batches, for attacks that run later passes on the samples still
// standing (attacks.cpp's restarts, APGD-T's targets). Internal to robust/.
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace bulwark {

// Row `row` of tensor `source`: where one sample of an assembled batch comes from.
struct RowSource {
  const Tensor* source;
  int64_t row;
};

// The batch whose sample k is rows[k], copied run by run (consecutive rows of one source are
// one slice), so picking or merging whole batches costs a copy or none.
Tensor assemble_rows(const std::vector<RowSource>& rows);

// Rows `indices` of t, in that order.
Tensor take_rows(const Tensor& t, const std::vector<int64_t>& indices);

}  // namespace bulwark
