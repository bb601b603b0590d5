// The state files: one JSON file per export started by loopdio, under the run directory
// (/run/loopdio/<name>.json), next to that export's control socket (<name>.ctl) and, for an
// attached device, its private NBD socket and server log. `list`, `set` and `detach` find
// exports only through them; a file whose server is gone is stale and is removed.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "loopdio/json.h"
#include "loopdio/options.h"
#include "loopdio/unique_fd.h"
#include "run_dir.h"

namespace loopdio::cli {

struct ExportState {
  std::string name;         // the file stem: "nbd0" (attach) or "serve-<pid>" (serve)
  std::string kind;         // "device" or "socket"
  std::string device;       // /dev/nbd0, for kind "device"
  std::string socket;       // the Unix socket clients use; empty for a TCP export
  std::string uri;          // how a client reaches the export
  std::string control;      // the plugin's control socket
  std::string log;          // nbdkit's log file; empty when it logs to serve's terminal
  pid_t pid = 0;            // nbdkit
  pid_t owner = 0;          // the foreground `loopdio serve`; 0 for attach
  Options requested;        // file and plugin options as asked for
  bool read_only = false;   // -r
  int connections = 1;      // nbd-client -C
  std::string export_name;  // serve --export-name

  // The NAME column: the device, else the socket, else the URI.
  std::string display_name() const;
  // The argument that identifies this export's nbdkit among all processes.
  std::string marker() const { return "control=" + control; }
  bool alive() const;

  // Paths are written with put_path, so that any bytes survive the round trip. from_json
  // throws loopdio::Error naming `what` (the file) when a member is missing or mistyped.
  Json to_json() const;
  static ExportState from_json(const Json& j, const std::string& what);
};

// How a client reaches export `name` of the directory server `s` serves:
// nbd://localhost:10809/NAME, nbd+unix:///NAME?socket=PATH.
std::string export_uri(const ExportState& s, const std::string& name);
// The export name that `target` (such a URI) names on server `s`, if it names one.
std::optional<std::string> export_in(const ExportState& s, const std::string& target);

// The image an export serves, or the directory of images.
inline const std::string& image_of(const Options& o) { return o.dir.empty() ? o.file : o.dir; }

class StateDir {
 public:
  // $LOOPDIO_RUN_DIR or /run/loopdio, opened if it exists. Throws loopdio::Error when it is
  // not a directory loopdio may trust (run_dir.h).
  StateDir();
  const std::string& path() const { return run_.path(); }
  std::string file(const std::string& name, const std::string& suffix) const {
    return run_.file(name + suffix);
  }
  const RunDir& run() const { return run_; }

  // Creates the directory (mode 0755) if it is missing; says what to do when it cannot.
  void create() { run_.create(); }
  // Every readable state file, live or not, sorted by name. A file that cannot be read or
  // does not describe an export of this directory is skipped with a warning on stderr.
  std::vector<ExportState> load_all() const;
  // Writes atomically (a new temporary file renamed over the old one).
  void save(const ExportState& s) const;
  // Removes the state file and what belongs to the export inside the run directory: its
  // control socket, its log, its socket in private/. Nothing a state file names outside the
  // directory is ever removed.
  void remove(const ExportState& s) const;

  // Removes stale state (a server that is gone) and returns the live exports. A device
  // whose server is gone is reported on stderr: the kernel still holds it.
  std::vector<ExportState> live();
  // The live export that `target` names: its name, device (/dev/nbd0 or nbd0), socket
  // path, URI, or control socket. Throws loopdio::Error when none does.
  ExportState find(const std::string& target);

 private:
  ExportState load(const std::string& file_name) const;

  RunDir run_;
};

// A state file that exists exactly as long as its export: saved on construction, removed
// (with the export's sockets and log) on destruction unless keep() was called.
class StateGuard {
 public:
  StateGuard(const StateDir& dir, ExportState s);
  StateGuard(const StateGuard&) = delete;
  StateGuard& operator=(const StateGuard&) = delete;
  ~StateGuard();
  void update(const ExportState& s);  // saves it again
  void keep() { kept_ = true; }

 private:
  const StateDir& dir_;
  ExportState state_;
  bool kept_ = false;
};

// An exclusive flock on <run dir>/.lock for as long as it lives: attach, detach, serve's
// bookkeeping and the stale-state sweep take turns. Taken only when the directory exists and
// can be written (a user who may only read still gets `list`).
class StateLock {
 public:
  explicit StateLock(const StateDir& dir);

 private:
  UniqueFd fd_;
};

}  // namespace loopdio::cli
