// Shared option parsing and help layout; see args.h.
#include "args.h"

#include <iostream>

namespace loopdio::cli {

const char kExitCodesHelp[] =
    "Exit status: 0 success; 1 usage error (nothing was done); 2 the operation failed\n"
    "(the reason is one line on stderr, and nothing is left half set up).\n";

std::optional<po::variables_map> parse_args(const CommandHelp& help, const Args& args,
                                            po::options_description visible,
                                            const po::options_description& hidden,
                                            const po::positional_options_description& positional) {
  visible.add_options()("help,h", "Print this help and exit.");
  po::options_description all;
  all.add(visible).add(hidden);
  po::variables_map vm;
  try {
    auto style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    po::store(po::command_line_parser(args).options(all).positional(positional).style(style).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(help.name) + ": " + e.what());
  }
  if (vm.count("help")) {
    std::cout << "Usage: loopdio " << help.name << " " << help.usage << "\n\n"
              << help.about << "\n"
              << visible << "\n"
              << kExitCodesHelp;
    return std::nullopt;
  }
  return vm;
}

po::options_description plugin_options() {
  po::options_description d("Image options (as nbdkit loopdio's parameters)");
  d.add_options()
      ("direct-io", po::value<std::string>()->value_name("on|off|auto"),
       "O_DIRECT on the image: on demands it (refused when the backing cannot), off serves "
       "buffered, auto (default) uses it when the backing allows.")
      ("aio", po::value<std::string>()->value_name("libaio|io_uring|sync|sync+libaio|sync+io_uring"),
       "The I/O engine (default sync+libaio).")
      ("offset,o", po::value<std::string>()->value_name("SIZE"),
       "Serve from this byte of the image (losetup -o). Suffixes k, M, G, T.")
      ("sizelimit", po::value<std::string>()->value_name("SIZE"),
       "Serve at most this many bytes (losetup --sizelimit).")
      ("sector-size", po::value<std::string>()->value_name("N"),
       "The advertised minimum block size: 512, 1024, 2048 or 4096 (default: the image's "
       "direct-I/O alignment).");
  return d;
}

void apply_plugin_options(const po::variables_map& vm, Options& o) {
  for (const char* key : {"direct-io", "aio", "offset", "sizelimit", "sector-size"}) {
    if (!vm.count(key)) continue;
    try {
      apply_option(o, key, vm[key].as<std::string>());
    } catch (const Error& e) {
      throw UsageError(std::string("--") + e.what());
    }
  }
}

}  // namespace loopdio::cli
