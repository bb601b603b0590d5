// What every `loopdio` subcommand shares: the exit codes, the usage-error type, and the
// entry point of each subcommand. main.cpp dispatches to them and is the only place that
// turns an exception into a message and an exit code.
#pragma once

#include <string>
#include <vector>

#include "loopdio/error.h"

namespace loopdio::cli {

// The exit codes, as documented in `loopdio --help` and docs/cli.md.
constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;    // a bad command line: nothing was done
constexpr int kExitFailure = 2;  // the operation failed (or, for list, an export did not answer)

// A mistake on the command line. main prints it with a pointer to --help and exits 1.
class UsageError : public Error {
 public:
  using Error::Error;
};

using Args = std::vector<std::string>;  // the arguments after the subcommand's name

int run_serve(const Args& args);
int run_attach(const Args& args);
int run_detach(const Args& args);
int run_list(const Args& args);
int run_set(const Args& args);
int run_snapshot(const Args& args);
int run_info(const Args& args);
int run_stat(const Args& args);

}  // namespace loopdio::cli
