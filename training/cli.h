#pragma once
// The `bulwark` command line: `bulwark train` and `bulwark eval` (docs/training.md has the
// reference and examples). Every error is caught here, once, and becomes a message on stderr
// and an exit code:
//   0  success (and --help)
//   1  training ran and diverged (NaN or infinite loss)
//   2  bad usage or input: an unknown or out-of-range option, a missing or damaged data file,
//      an unusable run directory or checkpoint
namespace bulwark::training {

int run_cli(int argc, char** argv);

}  // namespace bulwark::training
