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
    "set", "--direct-io=on|off DEVICE|SOCKET",
    "Switches direct I/O of a running export started by loopdio, without stopping it. The\n"
    "export is named as `loopdio list` shows it (device, socket or URI). In-flight requests\n"
    "complete first; a backing that cannot do direct I/O refuses `on`, with the reason.\n"};

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
  ExportState s = [&] {
    StateLock lock(dir);
    return dir.find(vm->at("target").as<std::string>());
  }();
  Json reply = control_request(s.control, "set direct-io " + value, 120s);
  std::string what = "control socket " + s.control;
  const std::string& name = s.display_name();
  if (!member<bool>(reply, "ok", what))
    throw Error(name + ": cannot switch direct I/O " + value + ": " +
                opt_member<std::string>(reply, "error", what).value_or("refused"));
  bool dio = member<bool>(reply, "dio", what);
  if (dio != (value == "on"))
    throw Error(name + ": the server reports direct I/O " + (dio ? "on" : "off"));
  return kExitOk;
}

}  // namespace loopdio::cli
