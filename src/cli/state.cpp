// State files in the run directory; see state.h.
#include "state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "loopdio/error.h"
#include "paths.h"
#include "process.h"

namespace loopdio::cli {
namespace {

namespace fs = std::filesystem;

void unlink_if(const std::string& path, bool only_socket) {
  if (path.empty()) return;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (only_socket && !S_ISSOCK(st.st_mode)) return;
  ::unlink(path.c_str());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw sys_error(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string ExportState::display_name() const {
  if (!device.empty()) return device;
  if (!socket.empty()) return socket;
  return uri;
}

bool ExportState::alive() const { return process_runs(pid, marker()); }

JsonObject ExportState::to_json() const {
  JsonObject j;
  j.set("name", name).set("kind", kind).set("device", device).set("socket", socket);
  j.set("uri", uri).set("control", control).set("log", log);
  j.set("pid", std::int64_t{pid}).set("owner", std::int64_t{owner});
  j.set("image", requested.file).set("direct-io", std::string(to_string(requested.direct_io)));
  j.set("aio", std::string(to_string(requested.engine)));
  j.set("offset", static_cast<std::int64_t>(requested.offset));
  j.set("sizelimit", requested.sizelimit ? JsonValue(static_cast<std::int64_t>(*requested.sizelimit))
                                         : JsonValue(nullptr));
  j.set("sector-size", std::int64_t{requested.sector_size});
  j.set("read-only", read_only).set("connections", std::int64_t{connections});
  j.set("export-name", export_name);
  return j;
}

ExportState ExportState::from_json(const JsonObject& j) {
  ExportState s;
  s.name = j.str("name");
  s.kind = j.str("kind");
  s.device = j.str_or("device", "");
  s.socket = j.str_or("socket", "");
  s.uri = j.str_or("uri", "");
  s.control = j.str("control");
  s.log = j.str_or("log", "");
  s.pid = static_cast<pid_t>(j.num("pid"));
  s.owner = static_cast<pid_t>(j.num_or("owner", 0));
  s.requested.file = j.str("image");
  apply_option(s.requested, "directio", j.str_or("direct-io", "auto"));
  apply_option(s.requested, "aio", j.str_or("aio", "libaio"));
  s.requested.offset = static_cast<std::uint64_t>(j.num_or("offset", 0));
  if (!j.is_null("sizelimit")) s.requested.sizelimit = static_cast<std::uint64_t>(j.num("sizelimit"));
  s.requested.sector_size = static_cast<std::uint32_t>(j.num_or("sector-size", 0));
  s.requested.control = s.control;
  s.read_only = j.opt_boolean("read-only").value_or(false);
  s.connections = static_cast<int>(j.num_or("connections", 1));
  s.export_name = j.str_or("export-name", "");
  return s;
}

StateDir::StateDir() : path_(run_dir()) {}

std::string StateDir::file(const std::string& name, const std::string& suffix) const {
  return path_ + "/" + name + suffix;
}

void StateDir::create() const {
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec)
    throw Error(path_ + ": " + ec.message() +
                " (loopdio keeps its state there: run as root, or set LOOPDIO_RUN_DIR)");
  ::chmod(path_.c_str(), 0755);
}

std::vector<ExportState> StateDir::load_all() const {
  std::vector<ExportState> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path_, ec)) {
    const fs::path& p = entry.path();
    if (p.extension() != ".json") continue;
    try {
      out.push_back(ExportState::from_json(JsonObject::parse(read_file(p.string()), p.string())));
    } catch (const Error& e) {
      std::fprintf(stderr, "loopdio: warning: skipping %s\n", e.what());
    }
  }
  std::sort(out.begin(), out.end(), [](const ExportState& a, const ExportState& b) {
    return a.name < b.name;
  });
  return out;
}

void StateDir::save(const ExportState& s) const {
  std::string final_path = file(s.name, ".json");
  std::string tmp = final_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << s.to_json().dump() << "\n";
    out.flush();
    if (!out) throw sys_error(tmp);
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    Error e = sys_error("rename " + tmp);
    ::unlink(tmp.c_str());
    throw e;
  }
}

void StateDir::remove(const ExportState& s) const {
  unlink_if(file(s.name, ".json"), false);
  unlink_if(s.control, true);
  unlink_if(s.socket, true);
  unlink_if(s.log, false);
}

std::vector<ExportState> StateDir::live() {
  std::vector<ExportState> out;
  for (ExportState& s : load_all()) {
    if (s.alive()) {
      out.push_back(std::move(s));
      continue;
    }
    if (::access(path_.c_str(), W_OK) != 0) continue;  // not ours to clean: leave it
    remove(s);
    if (s.kind == "device")
      std::fprintf(stderr,
                   "loopdio: %s: its server (pid %d) is gone; removed its state "
                   "(`nbd-client -d %s` disconnects the device)\n",
                   s.device.c_str(), static_cast<int>(s.pid), s.device.c_str());
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
  if (::access(dir.path().c_str(), W_OK) != 0) return;
  std::string path = dir.path() + "/.lock";
  fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd_) throw sys_error(path);
  int r;
  do {
    r = ::flock(fd_.get(), LOCK_EX);
  } while (r != 0 && errno == EINTR);
  if (r != 0) throw sys_error("flock " + path);
}

}  // namespace loopdio::cli
