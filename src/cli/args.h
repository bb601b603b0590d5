// Command-line parsing shared by the subcommands, on Boost.Program_options: one layout for
// every --help, the plugin's options (parsed by the core's apply_option, so the CLI and
// nbdkit accept and refuse exactly the same values), and Boost's errors turned into
// UsageError.
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>

#include "cli.h"
#include "loopdio/options.h"

namespace loopdio::cli {

namespace po = boost::program_options;

struct CommandHelp {
  const char* name;   // "attach"
  const char* usage;  // "[options] IMAGE [/dev/nbdN]"
  const char* about;  // what it does, a few lines
};

// Parses `args` against `visible` (shown by --help) and `hidden` (the positional
// arguments), with --help added. Returns nullopt after printing the help when --help was
// asked for. Throws UsageError on anything Boost refuses.
std::optional<po::variables_map> parse_args(const CommandHelp& help, const Args& args,
                                            po::options_description visible,
                                            const po::options_description& hidden,
                                            const po::positional_options_description& positional);

// --direct-io, --aio, -o/--offset, --sizelimit, --sector-size.
po::options_description plugin_options();
// Applies those that were given to `o`; a bad value is a UsageError ("--offset=12q: not a
// size: unknown suffix \"q\"").
void apply_plugin_options(const po::variables_map& vm, Options& o);

// The exit status paragraph that ends every --help.
extern const char kExitCodesHelp[];

}  // namespace loopdio::cli
