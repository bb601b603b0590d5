// State files in the run directory; see state.h.
#include "state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>

#include "json_read.h"
#include "loopdio/error.h"
#include "paths.h"
#include "process.h"
#include "safe_text.h"

namespace loopdio::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxStateFile = 64 << 10;

// A name loopdio gives an export ("nbd0", "serve-1234"): it becomes file names.
bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 64 || !std::isalnum(static_cast<unsigned char>(n[0]))) return false;
  return std::all_of(n.begin(), n.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

}  // namespace

std::string ExportState::display_name() const {
  if (!device.empty()) return device;
  if (!socket.empty()) return socket;
  return uri;
}

bool ExportState::alive() const { return process_runs(pid, marker()); }

Json ExportState::to_json() const {
  Json j;
  j["name"] = name;
  j["kind"] = kind;
  put_path(j, "device", device);
  put_path(j, "socket", socket);
  put_path(j, "uri", uri);
  put_path(j, "control", control);
  put_path(j, "log", log);
  j["pid"] = pid;
  j["owner"] = owner;
  put_path(j, "image", requested.dir.empty() ? requested.file : requested.dir);
  if (!requested.dir.empty()) j["is-dir"] = true;
  j["direct-io"] = to_string(requested.direct_io);
  j["aio"] = to_string(requested.engine);
  j["offset"] = requested.offset;
  j["sizelimit"] = requested.sizelimit ? Json(*requested.sizelimit) : Json(nullptr);
  j["sector-size"] = requested.sector_size;
  j["read-only"] = read_only;
  j["connections"] = connections;
  put_path(j, "export-name", export_name);
  return j;
}

namespace {

// A path member that may be absent (an older file) or empty.
std::string opt_path(const Json& j, const std::string& key) {
  return j.contains(key) ? get_path(j, key) : std::string();
}

std::int64_t number(const Json& j, const std::string& key, std::int64_t def,
                    const std::string& what) {
  std::int64_t v = opt_member<std::int64_t>(j, key, what).value_or(def);
  if (v < 0) throw Error(what + ": \"" + key + "\" is negative");
  return v;
}

}  // namespace

ExportState ExportState::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw Error(what + ": not a JSON object");
  ExportState s;
  s.name = member<std::string>(j, "name", what);
  s.kind = member<std::string>(j, "kind", what);
  s.pid = static_cast<pid_t>(member<std::int64_t>(j, "pid", what));
  s.owner = static_cast<pid_t>(number(j, "owner", 0, what));
  std::string dio = opt_member<std::string>(j, "direct-io", what).value_or("auto");
  std::string aio = opt_member<std::string>(j, "aio", what).value_or("libaio");
  s.requested.offset = static_cast<std::uint64_t>(number(j, "offset", 0, what));
  if (auto limit = opt_member<std::int64_t>(j, "sizelimit", what))
    s.requested.sizelimit = static_cast<std::uint64_t>(*limit);
  s.requested.sector_size = static_cast<std::uint32_t>(number(j, "sector-size", 0, what));
  s.read_only = opt_member<bool>(j, "read-only", what).value_or(false);
  s.connections = static_cast<int>(number(j, "connections", 1, what));
  try {
    s.device = opt_path(j, "device");
    s.socket = opt_path(j, "socket");
    s.uri = opt_path(j, "uri");
    s.control = get_path(j, "control");
    s.log = opt_path(j, "log");
    (opt_member<bool>(j, "is-dir", what).value_or(false) ? s.requested.dir : s.requested.file) =
        get_path(j, "image");
    s.export_name = opt_path(j, "export-name");
    apply_option(s.requested, "directio", dio);
    apply_option(s.requested, "aio", aio);
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
  s.requested.control = s.control;
  return s;
}

StateDir::StateDir() : run_(absolute_path(run_dir())) {}

ExportState StateDir::load(const std::string& file_name) const {
  std::string what = file(file_name, "");
  std::optional<std::string> text = run_.read(file_name, kMaxStateFile);
  if (!text) throw Error(what + ": removed meanwhile");
  ExportState s = ExportState::from_json(parse_json(*text, what), what);
  // What loopdio itself writes: the name is the file's, the control socket and the log are
  // the export's own files in this directory.
  if (!valid_name(s.name) || file_name != s.name + ".json")
    throw Error(what + ": its name \"" + s.name + "\" is not the file's");
  if (s.control != file(s.name, ".ctl"))
    throw Error(what + ": its control socket is not " + file(s.name, ".ctl"));
  if (!s.log.empty() && s.log != file(s.name, ".log"))
    throw Error(what + ": its log is not " + file(s.name, ".log"));
  return s;
}

std::vector<ExportState> StateDir::load_all() const {
  std::vector<ExportState> out;
  for (const std::string& n : run_.names(".json")) {
    if (n[0] == '.') continue;  // a temporary file
    try {
      out.push_back(load(n));
    } catch (const Error& e) {
      std::fprintf(stderr, "loopdio: warning: skipping %s\n", safe_encode(e.what()).c_str());
    }
  }
  std::sort(out.begin(), out.end(), [](const ExportState& a, const ExportState& b) {
    return a.name < b.name;
  });
  return out;
}

void StateDir::save(const ExportState& s) const {
  if (!valid_name(s.name)) throw Error("state: bad export name \"" + s.name + "\"");
  run_.write_atomic(s.name + ".json", dump_line(s.to_json()) + "\n", 0644);
}

void StateDir::remove(const ExportState& s) const {
  if (valid_name(s.name)) run_.remove_inside(file(s.name, ".json"), S_IFREG);
  run_.remove_inside(s.control, S_IFSOCK);
  run_.remove_inside(s.socket, S_IFSOCK);
  run_.remove_inside(s.log, S_IFREG);
}

std::vector<ExportState> StateDir::live() {
  std::vector<ExportState> out;
  for (ExportState& s : load_all()) {
    if (s.alive()) {
      out.push_back(std::move(s));
      continue;
    }
    if (!run_.writable()) continue;  // not ours to clean: leave it
    remove(s);
    if (s.kind == "device")
      std::fprintf(stderr,
                   "loopdio: %s: its server (pid %d) is gone; removed its state "
                   "(`nbd-client -d %s` disconnects the device)\n",
                   safe_encode(s.device).c_str(), static_cast<int>(s.pid),
                   safe_encode(s.device).c_str());
  }
  return out;
}

ExportState StateDir::find(const std::string& target) {
  bool is_uri = target.find("://") != std::string::npos;
  std::string abs = is_uri ? target : absolute_path(target);
  for (ExportState& s : live()) {
    bool device_match = !s.device.empty() &&
                        (s.device == abs || fs::path(s.device).filename() == target);
    if (s.name == target || device_match || (!s.socket.empty() && s.socket == abs) ||
        s.uri == target || s.control == abs)
      return s;
  }
  throw Error(target + ": no export started by loopdio has that name (see loopdio list)");
}

StateGuard::StateGuard(const StateDir& dir, ExportState s) : dir_(dir), state_(std::move(s)) {
  dir_.save(state_);
}

void StateGuard::update(const ExportState& s) {
  state_ = s;
  dir_.save(state_);
}

StateGuard::~StateGuard() {
  if (!kept_) dir_.remove(state_);
}

StateLock::StateLock(const StateDir& dir) {
  if (!dir.run().writable()) return;
  fd_ = dir.run().open_lock();
  int r;
  do {
    r = ::flock(fd_.get(), LOCK_EX);
  } while (r != 0 && errno == EINTR);
  if (r != 0) throw sys_error("flock " + dir.file(".lock", ""));
}

std::string export_uri(const ExportState& s, const std::string& name) {
  if (auto q = s.uri.find(":///"); q != std::string::npos)  // nbd+unix:///?socket=...
    return s.uri.substr(0, q + 4) + name + s.uri.substr(q + 4);
  return s.uri + "/" + name;
}

std::optional<std::string> export_in(const ExportState& s, const std::string& target) {
  if (s.requested.dir.empty()) return std::nullopt;
  std::string head = export_uri(s, ""), tail;
  if (auto q = head.find('?'); q != std::string::npos) {
    tail = head.substr(q);
    head.resize(q);
  }
  if (target.size() <= head.size() + tail.size() || !target.starts_with(head) ||
      !target.ends_with(tail))
    return std::nullopt;
  return target.substr(head.size(), target.size() - head.size() - tail.size());
}

}  // namespace loopdio::cli
