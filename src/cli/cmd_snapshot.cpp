// `loopdio snapshot`: a point-in-time copy of a running export, by reflink. The server
// drains the export's requests, fdatasyncs, clones the image to DEST and resumes (the pause
// is printed); or it refuses with the reason, before pausing anything (a filesystem that
// cannot clone, DEST on another filesystem or already there, a block device, part of a file).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "args.h"
#include "cli.h"
#include "control_client.h"
#include "json_read.h"
#include "loopdio/backing.h"
#include "loopdio/error.h"
#include "safe_text.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "snapshot",
    "DEVICE|SOCKET|URI DEST [URI DEST]... | --all DESTDIR SOCKET|URI | --control SOCKET "
    "[--export NAME] DEST",
    "Clones a running export's image to the new file DEST, in the image's filesystem, with\n"
    "ioctl FICLONE (reflink: instant, and sharing the image's blocks until either changes).\n"
    "The export is named as `loopdio list` shows it (an export of a served directory by its\n"
    "own URI, e.g. nbd://localhost:10809/vm1.img). Its requests pause while it is drained,\n"
    "fdatasynced and cloned (printed: milliseconds, whatever the image's size); the clone\n"
    "is fsynced after.\n"
    "DEST holds every write acknowledged before the command started, and nothing a client\n"
    "sends after it returns. DEST must not exist; a relative DEST is taken from the current\n"
    "directory. A filesystem that cannot clone (ext4, tmpfs: use xfs with reflink=1, or\n"
    "btrfs), DEST on another filesystem, a block device, or an export of part of a file\n"
    "(--offset, --sizelimit) is refused with the reason before the export pauses, and\n"
    "nothing is left at DEST.\n"
    "A server loopdio did not start (a systemd instance, whose conf sets\n"
    "control=/run/loopdio/NAME/control; nbdkit loopdio ... control=SOCKET) is named by its\n"
    "control socket: loopdio snapshot --control SOCKET [--export NAME] DEST.\n"
    "Several exports of one served directory, named by their URIs, each with its DEST, are\n"
    "drained together and cloned at one instant (a VM's disks); all or nothing.\n"};

// DEST made absolute lexically: a symbolic link as its last component is refused by the
// server, not followed here.
std::string absolute_dest(std::string dest, bool all) {
  if (dest.empty()) throw UsageError(all ? "snapshot: DESTDIR is empty" : "snapshot: DEST is empty");
  if (dest[0] != '/') dest = (std::filesystem::current_path() / dest).string();
  return dest;
}

// One export of the request: its name (none with file=) and DEST.
Json snapshot_entry(const std::string& name, const std::string& dest) {
  Json e;
  if (!name.empty()) put_path(e, "name", name);
  put_path(e, "dest", dest);
  return e;
}

// --all of a directory: every export it has now, as its `status` lists them (not the stale
// ones, which no name leads to any more), each to DESTDIR/NAME.
Json every_export(const Json& status, const std::string& destdir, const std::string& what,
                  const std::string& server) {
  auto list = status.find("exports");
  if (list == status.end() || !list->is_array())
    throw Error(what + ": \"exports\" is missing or not an array");
  Json exports = Json::array();
  for (const Json& x : *list) {
    if (x.value("stale", false)) continue;
    const std::string name = get_path(x, "name");
    exports.push_back(snapshot_entry(name, destdir + "/" + name));
  }
  if (exports.empty()) throw Error(server + ": the directory has no export to snapshot");
  return exports;
}

// Sends the request, prints one line per snapshot: DEST, size, who paused how long.
void request_and_print(const std::string& control, Json exports,
                       const std::function<std::string(const std::string&)>& shown) {
  const std::string what = "control socket " + control;
  // The drain waits for requests in flight, which a slow disk can hold for a while.
  Json request{{"exports", std::move(exports)}};
  Json reply = control_request(control, "snapshot " + dump_line(request), 120s);
  if (!member<bool>(reply, "ok", what))
    throw Error(shown("") + ": no snapshot: " +
                opt_member<std::string>(reply, "error", what).value_or("refused"));
  auto done = reply.find("exports");
  if (done == reply.end() || !done->is_array())
    throw Error(what + ": \"exports\" is missing or not an array");
  for (const Json& x : *done) {
    const double ms = member<double>(x, "paused_ms", what);
    char paused[32];
    std::snprintf(paused, sizeof paused, "%.1f ms", ms);
    std::printf("%s: %s, %s paused %s\n", safe_encode(get_path(x, "dest")).c_str(),
                human_size(member<std::uint64_t>(x, "bytes", what)).c_str(),
                safe_encode(shown(get_path(x, "name"))).c_str(), paused);
  }
}

// --control SOCKET: a server loopdio did not start, asked directly; what it serves (one
// image, or a directory and its exports) from its own status.
int snapshot_by_control(const po::variables_map& vm, bool all) {
  std::string control = vm.at("control").as<std::string>();
  if (control.empty()) throw UsageError("snapshot: --control names no socket");
  if (control[0] != '/') control = (std::filesystem::current_path() / control).string();
  if (vm.count("dest") || (all && vm.count("target")))
    throw UsageError("snapshot: with --control, give only DEST (or --all DESTDIR)");
  if (!all && !vm.count("target")) throw UsageError("snapshot: DEST is missing");
  const std::string dest =
      absolute_dest(all ? vm.at("all").as<std::string>() : vm.at("target").as<std::string>(), all);
  const std::string export_name = vm.count("export") ? vm.at("export").as<std::string>() : "";
  const std::string what = "control socket " + control;
  Json status = control_call(control, "status", 10s);
  const bool serves_dir = status.contains("dir");
  if (serves_dir && export_name.empty() && !all)
    throw UsageError("snapshot: " + control + " serves a directory: name one of its exports "
                     "with --export NAME, or use --all");
  if (!serves_dir && !export_name.empty())
    throw UsageError("snapshot: " + control + " serves one image, which has no export name");
  if (all && !export_name.empty())
    throw UsageError("snapshot: --all takes every export; no --export");
  Json exports = Json::array();
  if (!all) {
    exports.push_back(snapshot_entry(export_name, dest));
  } else if (!serves_dir) {
    const std::string file = get_path(status, "file");
    exports.push_back(snapshot_entry("", dest + "/" + std::filesystem::path(file).filename().string()));
  } else {
    exports = every_export(status, dest, what, control);
  }
  request_and_print(control, std::move(exports), [&](const std::string& name) {
    return name.empty() ? control : control + " (" + name + ")";
  });
  return kExitOk;
}

}  // namespace

int run_snapshot(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()
      ("all", po::value<std::string>()->value_name("DESTDIR"),
       "Every export of the server at one instant, each to DESTDIR/NAME (a single image: "
       "DESTDIR/its file name).")
      ("control", po::value<std::string>()->value_name("SOCKET"),
       "The server's control socket, for a server loopdio did not start (a systemd "
       "instance); then only DEST is given.")
      ("export", po::value<std::string>()->value_name("NAME"),
       "With --control: the export of a served directory.");
  po::options_description hidden;
  hidden.add_options()("target", po::value<std::string>())("dest", po::value<std::string>())(
      "more", po::value<std::vector<std::string>>());
  po::positional_options_description pos;
  pos.add("target", 1).add("dest", 1).add("more", -1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  const bool all = vm->count("all") > 0;
  if (vm->count("control")) return snapshot_by_control(*vm, all);
  if (vm->count("export"))
    throw UsageError("snapshot: --export goes with --control (otherwise name the export by its "
                     "URI, as loopdio list shows it)");
  if (!vm->count("target") || (!all && !vm->count("dest")))
    throw UsageError("snapshot: expected an export (DEVICE, SOCKET or URI, as loopdio list "
                     "shows it) and DEST, or --all DESTDIR and a server");
  if (all && (vm->count("dest") || vm->count("more")))
    throw UsageError("snapshot: --all takes DESTDIR, and no DEST");
  const std::string target = vm->at("target").as<std::string>();
  const std::string dest =
      absolute_dest(all ? vm->at("all").as<std::string>() : vm->at("dest").as<std::string>(), all);

  StateDir dir;
  // The server and the export a TARGET names.
  auto resolve = [&](const std::string& t, std::string& export_name) {
    StateLock lock(dir);
    for (const ExportState& live : dir.live())
      if (auto name = export_in(live, t)) {
        export_name = *name;
        return live;
      }
    return dir.find(t);
  };
  std::string export_name;
  ExportState s = resolve(target, export_name);
  const bool serves_dir = !s.requested.dir.empty();
  if (vm->count("more")) {  // TARGET DEST TARGET DEST...: exports of one directory, together
    const auto& more = vm->at("more").as<std::vector<std::string>>();
    if (more.size() % 2 != 0)
      throw UsageError("snapshot: " + more.back() + " has no DEST: give TARGET DEST pairs");
    if (export_name.empty())
      throw UsageError("snapshot: several exports at one instant must be of one served "
                       "directory, each named by its URI (" + target + " is not)");
    Json exports = Json::array();
    std::vector<std::string> uris;
    auto add = [&](const std::string& t, const std::string& d) {
      std::string name;
      ExportState other = resolve(t, name);
      if (other.control != s.control || name.empty())
        throw UsageError("snapshot: " + t + " is not an export of the directory " + target +
                         " is in: exports of different servers cannot be paused at one instant");
      exports.push_back(snapshot_entry(name, absolute_dest(d, false)));
    };
    add(target, vm->at("dest").as<std::string>());
    for (std::size_t i = 0; i < more.size(); i += 2) add(more[i], more[i + 1]);
    request_and_print(s.control, std::move(exports), [&](const std::string& exp_name) {
      return exp_name.empty() ? target : export_uri(s, exp_name);
    });
    return kExitOk;
  }
  if (serves_dir && export_name.empty() && !all)
    throw UsageError("snapshot: " + target + " serves a directory: name one of its exports, as "
                     "loopdio list shows it (" + export_uri(s, "NAME") + "), or use --all");
  if (all && !export_name.empty())
    throw UsageError("snapshot: --all takes the server (its socket or URI), not one export");
  const std::string what = "control socket " + s.control;

  Json exports = Json::array();
  if (!all) {
    exports.push_back(snapshot_entry(export_name, dest));
  } else if (!serves_dir) {
    const std::string file = s.requested.file;
    exports.push_back(snapshot_entry("", dest + "/" + std::filesystem::path(file).filename().string()));
  } else {
    exports = every_export(control_call(s.control, "status", 10s), dest, what, target);
  }

  const std::string name = export_name.empty() ? s.display_name() : target;
  request_and_print(s.control, std::move(exports), [&](const std::string& exp_name) {
    return all && serves_dir && !exp_name.empty() ? export_uri(s, exp_name) : name;
  });
  return kExitOk;
}

}  // namespace loopdio::cli
