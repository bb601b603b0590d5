// `loopdio set`: switch a live export, the LOOP_SET_DIRECT_IO of loopdio. The plugin drains
// every request of every connection, fdatasyncs, flips O_DIRECT and resumes; or it refuses
// with the reason (a backing that cannot do direct I/O), which is printed as it is.
#include <string>

#include "args.h"
#include "cli.h"
#include "control_client.h"
#include "json_read.h"
#include "loopdio/error.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "set", "--direct-io=on|off DEVICE|SOCKET|URI",
    "Switches direct I/O of a running export started by loopdio, without stopping it. The\n"
    "export is named as `loopdio list` shows it (device, socket or URI; an export of a\n"
    "served directory by its own URI, e.g. nbd://localhost:10809/vm1.img). In-flight\n"
    "requests complete first; a backing that cannot do direct I/O refuses `on`, with the\n"
    "reason. For an image of a directory no client has open, the setting applies from its\n"
    "next connection on.\n"};

}  // namespace

int run_set(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()("direct-io", po::value<std::string>()->value_name("on|off"),
                        "Direct I/O on or off.");
  po::options_description hidden;
  hidden.add_options()("target", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("target", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  if (!vm->count("direct-io")) throw UsageError("set: nothing to set (--direct-io=on|off)");
  if (!vm->count("target")) throw UsageError("set: which export? (a DEVICE or SOCKET, as loopdio list shows)");
  std::string value = vm->at("direct-io").as<std::string>();
  if (value != "on" && value != "off") throw UsageError("set: --direct-io=" + value + ": expected on or off");

  StateDir dir;
  const std::string target = vm->at("target").as<std::string>();
  std::string export_name;
  ExportState s = [&] {
    StateLock lock(dir);
    for (const ExportState& live : dir.live())
      if (auto name = export_in(live, target)) {
        export_name = *name;
        return live;
      }
    return dir.find(target);
  }();
  if (!s.requested.dir.empty() && export_name.empty())
    throw UsageError("set: " + target + " serves a directory: name one of its exports, as "
                     "loopdio list shows it (" + export_uri(s, "NAME") + ")");
  std::string command = "set direct-io " + value + (export_name.empty() ? "" : " " + export_name);
  Json reply = control_request(s.control, command, 120s);
  std::string what = "control socket " + s.control;
  const std::string name = export_name.empty() ? s.display_name() : target;
  if (!member<bool>(reply, "ok", what))
    throw Error(name + ": cannot switch direct I/O " + value + ": " +
                opt_member<std::string>(reply, "error", what).value_or("refused"));
  bool dio = member<bool>(reply, "dio", what);
  if (dio != (value == "on"))
    throw Error(name + ": the server reports direct I/O " + (dio ? "on" : "off"));
  return kExitOk;
}

}  // namespace loopdio::cli
