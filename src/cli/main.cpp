// The `loopdio` command: losetup for NBD, on nbdkit with the loopdio plugin. Dispatches to
// one subcommand, and is the only place where an error becomes a message ("loopdio: ...",
// one line on stderr) and an exit code.
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "args.h"
#include "cli.h"
#include "loopdio/error.h"
#include "loopdio/version.h"
#include "safe_text.h"

namespace {

using namespace loopdio::cli;

struct Command {
  const char* name;
  int (*run)(const Args&);
  const char* summary;
};

const Command kCommands[] = {
    {"serve", run_serve, "serve an image over NBD in the foreground (TCP or a Unix socket)"},
    {"attach", run_attach, "attach an image to /dev/nbdN through a private server"},
    {"detach", run_detach, "flush and detach /dev/nbdN (or --all) and stop its server"},
    {"list", run_list, "list the exports started by loopdio, with their live state"},
    {"set", run_set, "switch direct I/O of a running export on or off"},
    {"snapshot", run_snapshot, "clone a running export's image to a new file (reflink)"},
    {"info", run_info, "show size, block sizes, flags and description of any NBD export"},
    {"stat", run_stat, "show what exports are doing: IOPS, MiB/s, latency (like iostat -x)"},
};

void print_help(std::FILE* to) {
  std::fprintf(to,
               "Usage: loopdio COMMAND [options] [arguments]\n"
               "       loopdio COMMAND --help\n\n"
               "losetup for NBD: serves disk images with nbdkit and the loopdio plugin (O_DIRECT\n"
               "and asynchronous kernel I/O), to remote clients or to /dev/nbdN.\n\nCommands:\n");
  for (const Command& c : kCommands) std::fprintf(to, "  %-8s %s\n", c.name, c.summary);
  std::fprintf(to,
               "\nState: one JSON file per export in /run/loopdio ($LOOPDIO_RUN_DIR), with its\n"
               "control socket. The plugin: $LOOPDIO_PLUGIN, else loopdio.so next to this\n"
               "program, else nbdkit's plugin directory. nbdkit (1.34 or later):\n"
               "$LOOPDIO_NBDKIT, else the one the plugin was built against, else PATH's.\n\n%s",
               kExitCodesHelp);
}

const Command* find_command(const std::string& name) {
  for (const Command& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

}  // namespace

int main(int argc, char* argv[]) {
  std::string name = argc > 1 ? argv[1] : "";
  try {
    if (name.empty()) {
      print_help(stderr);
      return kExitUsage;
    }
    if (name == "--help" || name == "-h" || name == "help") {
      if (argc > 2 && find_command(argv[2])) return find_command(argv[2])->run({"--help"});
      print_help(stdout);
      return kExitOk;
    }
    if (name == "--version" || name == "-V") {
      std::printf("loopdio %s (built against nbdkit %s)\nnbdkit %s (%s)\n", loopdio::kVersion,
                  loopdio::kNbdkitVersion, loopdio::kNbdkitVersion, loopdio::kNbdkitOrigin);
      return kExitOk;
    }
    const Command* c = find_command(name);
    if (!c) throw UsageError("unknown command \"" + name + "\"");
    return c->run(Args(argv + 2, argv + argc));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "loopdio: %s (see loopdio %s--help)\n", safe_encode(e.what()).c_str(),
                 find_command(name) ? (name + " ").c_str() : "");
    return kExitUsage;
  } catch (const std::exception& e) {
    // Messages carry paths, which may hold any byte: still one line, still readable.
    std::fprintf(stderr, "loopdio: %s\n", safe_encode(e.what()).c_str());
    return kExitFailure;
  }
}
