// `loopdio set`: change a live export: direct I/O (the LOOP_SET_DIRECT_IO of loopdio: the
// plugin drains every request of every connection, fdatasyncs, flips O_DIRECT and resumes)
// and its throttle limits (effective at once), or a group's limits; or the server refuses
// with the reason (a backing that cannot do direct I/O, a bad limit), printed as it is.
#include <optional>
#include <string>
#include <vector>

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
    "set", "[--direct-io=on|off] [limits...] DEVICE|SOCKET|URI",
    "Changes a running export started by loopdio, without stopping it. The export is named\n"
    "as `loopdio list` shows it (device, socket or URI; an export of a served directory by\n"
    "its own URI, e.g. nbd://localhost:10809/vm1.img).\n"
    "--direct-io: in-flight requests complete first; a backing that cannot do direct I/O\n"
    "refuses `on`, with the reason. For an image of a directory no client has open, the\n"
    "setting applies from its next connection on.\n"
    "Limits (--iops, --bps, ..., --limit KEY=VALUE for bursts: iops-max=4000\n"
    "iops-max-length=5): only the ones given change; they take effect at once, for every\n"
    "connection, and for the next ones. --for-group=NAME sets the limits of group NAME on\n"
    "the export's server instead (made if new); --group=NAME puts the export in it. A bad\n"
    "limit is refused with the reason, and nothing changes.\n"};

// The limit options and their keys (throttle_limits.h).
const char* const kLimitOptions[] = {"iops", "iops-read", "iops-write", "bps", "bps-read",
                                     "bps-write", "iops-size"};

// The `set limits` words the options give, empty when they give none.
std::vector<std::string> limit_words(const po::variables_map& vm) {
  std::vector<std::string> words;
  if (vm.count("no-limits")) words.push_back("none");
  for (const char* key : kLimitOptions)
    if (vm.count(key)) words.push_back(std::string(key) + "=" + vm[key].as<std::string>());
  if (vm.count("limit"))
    for (const std::string& w : vm["limit"].as<std::vector<std::string>>()) words.push_back(w);
  if (vm.count("group")) words.push_back("group=" + vm["group"].as<std::string>());
  return words;
}

}  // namespace

int run_set(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()
      ("direct-io", po::value<std::string>()->value_name("on|off"), "Direct I/O on or off.")
      ("iops", po::value<std::string>()->value_name("N"), "Total I/Os per second (none: no limit).")
      ("iops-read", po::value<std::string>()->value_name("N"), "Read I/Os per second.")
      ("iops-write", po::value<std::string>()->value_name("N"), "Write I/Os per second.")
      ("bps", po::value<std::string>()->value_name("SIZE"), "Total bytes per second (50M).")
      ("bps-read", po::value<std::string>()->value_name("SIZE"), "Bytes read per second.")
      ("bps-write", po::value<std::string>()->value_name("SIZE"), "Bytes written per second.")
      ("iops-size", po::value<std::string>()->value_name("SIZE"),
       "A request of n bytes counts as n/SIZE I/Os (0: one).")
      ("limit", po::value<std::vector<std::string>>()->value_name("KEY=VALUE"),
       "Any limit, e.g. iops-max=4000 iops-max-length=5 (a burst of 4000/s for 5 s).")
      ("group", po::value<std::string>()->value_name("NAME"),
       "Share group NAME's budget too (the group must exist).")
      ("no-limits", "Clear every limit first (not the group).")
      ("for-group", po::value<std::string>()->value_name("NAME"),
       "Set the limits of group NAME, on the export's server.");
  po::options_description hidden;
  hidden.add_options()("target", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("target", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  const std::vector<std::string> words = limit_words(*vm);
  if (!vm->count("direct-io") && words.empty())
    throw UsageError("set: nothing to set (--direct-io=on|off, or limits such as --iops=2000)");
  if (vm->count("for-group") && (vm->count("direct-io") || vm->count("group")))
    throw UsageError("set: --for-group sets a group's limits only (no --direct-io, no --group)");
  if (!vm->count("target")) throw UsageError("set: which export? (a DEVICE or SOCKET, as loopdio list shows)");
  std::optional<std::string> value;
  if (vm->count("direct-io")) {
    value = vm->at("direct-io").as<std::string>();
    if (*value != "on" && *value != "off") throw UsageError("set: --direct-io=" + *value + ": expected on or off");
  }

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
  if (!s.requested.dir.empty() && export_name.empty() && !vm->count("for-group"))
    throw UsageError("set: " + target + " serves a directory: name one of its exports, as "
                     "loopdio list shows it (" + export_uri(s, "NAME") + ")");
  std::string what = "control socket " + s.control;
  const std::string name = export_name.empty() ? s.display_name() : target;
  if (!words.empty()) {
    std::string command = "set limits";
    for (const std::string& w : words) command += " " + w;
    if (vm->count("for-group"))
      command += " -- group:" + vm->at("for-group").as<std::string>();
    else if (!export_name.empty())
      command += " -- " + export_name;
    Json reply = control_request(s.control, command, 30s);
    if (!member<bool>(reply, "ok", what))
      throw Error(name + ": limits refused: " +
                  opt_member<std::string>(reply, "error", what).value_or("refused"));
  }
  if (!value) return kExitOk;
  std::string command = "set direct-io " + *value + (export_name.empty() ? "" : " " + export_name);
  Json reply = control_request(s.control, command, 120s);
  if (!member<bool>(reply, "ok", what))
    throw Error(name + ": cannot switch direct I/O " + *value + ": " +
                opt_member<std::string>(reply, "error", what).value_or("refused"));
  bool dio = member<bool>(reply, "dio", what);
  if (dio != (*value == "on"))
    throw Error(name + ": the server reports direct I/O " + (dio ? "on" : "off"));
  return kExitOk;
}

}  // namespace loopdio::cli
