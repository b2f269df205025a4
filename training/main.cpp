// The `bulwark` executable: see training/cli.h.
#include "training/cli.h"

int main(int argc, char** argv) { return bulwark::training::run_cli(argc, argv); }
