#pragma once
// The parts of docs/ that are generated from the registries (the trainer's option table,
// the schedules, the methods and their options), so the pages cannot drift from the code.
// A page marks each generated block:
//   <!-- bulwark docs: method-options -->
//   ...generated markdown...
//   <!-- end bulwark docs -->
// `bulwark docs --write docs` rewrites the blocks; `bulwark docs --check docs` (a ctest) fails
// when a committed block differs from what the registries give.
#include <string>
#include <vector>

namespace bulwark::training {

struct DocSection {
  std::string name;      // the marker's name
  std::string markdown;  // the block's content, ending in a newline
};

// Every generated block: train-options, schedules, schedule-options, methods, method-options,
// eval-attacks, eval-attack-options.
std::vector<DocSection> doc_sections();

// Brings the marked blocks of the .md files in `dir` in line with doc_sections() (write) or only
// compares them (check). Returns one line per block that differed ("docs/methods.md: methods"),
// and one per section no page holds. Throws std::invalid_argument for an unknown or unclosed marker.
std::vector<std::string> sync_docs(const std::string& dir, bool write);

}  // namespace bulwark::training
