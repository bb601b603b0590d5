// nbdkit's command line and start-up; see server.h.
#include "server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstring>
#include <sstream>

#include "control_client.h"
#include "json_read.h"
#include "loopdio/backing.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"
#include "paths.h"

namespace loopdio::cli {

std::vector<std::string> nbdkit_command(const ServerSpec& s, const std::string& plugin) {
  std::vector<std::string> a = {s.nbdkit, "-f"};
  if (s.exit_with_parent) a.push_back("--exit-with-parent");
  if (s.read_only) a.push_back("-r");
  if (s.threads) a.insert(a.end(), {"--threads", std::to_string(*s.threads)});
  if (s.handshake_timeout) a.push_back("--timeout=" + std::to_string(s.handshake_timeout));
  if (!s.unix_socket.empty()) {
    a.insert(a.end(), {"-U", s.unix_socket});
  } else {
    if (s.port) a.insert(a.end(), {"-p", std::to_string(*s.port)});
    if (!s.bind.empty()) a.insert(a.end(), {"-i", s.bind});
  }
  if (!s.tls_psk.empty()) a.insert(a.end(), {"--tls=require", "--tls-psk=" + s.tls_psk});
  if (!s.tls_certificates.empty())
    a.insert(a.end(), {"--tls=require", "--tls-certificates=" + s.tls_certificates});
  if (!s.export_name.empty()) a.push_back("--filter=exportname");
  a.push_back(plugin);

  const Options& o = s.opts;
  if (!o.dir.empty()) {
    a.push_back("dir=" + o.dir);
    if (!o.default_export.empty()) a.push_back("default-export=" + o.default_export);
  } else {
    a.push_back("file=" + o.file);
  }
  a.push_back(std::string("directio=") + to_string(o.direct_io));
  a.push_back(std::string("aio=") + to_string(o.engine));
  if (o.offset) a.push_back("offset=" + std::to_string(o.offset));
  if (o.sizelimit) a.push_back("sizelimit=" + std::to_string(*o.sizelimit));
  if (o.sector_size) a.push_back("sector-size=" + std::to_string(o.sector_size));
  if (o.readonly) a.push_back("readonly=1");
  if (o.max_connections != kDefaultMaxConnections)
    a.push_back("max-connections=" + std::to_string(o.max_connections));
  if (o.max_connections_per_export)
    a.push_back("max-connections-per-export=" + std::to_string(o.max_connections_per_export));
  if (o.max_handshakes != kDefaultMaxHandshakes)
    a.push_back("max-handshakes=" + std::to_string(o.max_handshakes));
  if (o.memory_max != kDefaultMemoryMax)
    a.push_back("memory-max=" + (o.memory_max ? std::to_string(o.memory_max) : "none"));
  if (o.aio_events != kDefaultAioEvents) a.push_back("aio-events=" + std::to_string(o.aio_events));
  if (o.devices) a.push_back("devices=1");
  a.push_back("control=" + o.control);
  if (!s.export_name.empty())
    a.insert(a.end(), {"exportname-list=explicit", "exportname-strict=true", "exportname=" + s.export_name});
  return a;
}

void check_image(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw sys_error(path);
}

namespace {

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

void remove_dead_socket(const std::string& path) {
  if (path.empty() || !is_socket(path)) return;
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw sys_error("socket");
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0 &&
      errno == ECONNREFUSED)
    ::unlink(path.c_str());
}

ServedSocket::~ServedSocket() {
  if (owned_ && !path_.empty() && is_socket(path_)) ::unlink(path_.c_str());
}

std::optional<Json> try_status(const std::string& control) {
  struct stat st {};
  if (::lstat(control.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return std::nullopt;
  try {
    Json j = control_request(control, "status", std::chrono::seconds(2));
    if (opt_member<bool>(j, "ok", control).value_or(false)) return j;
  } catch (const Error&) {
  }
  return std::nullopt;
}

std::string export_description(const Json& st) {
  if (st.contains("description")) return get_path(st, "description");
  const std::string what = "control socket status";
  auto size = static_cast<std::uint64_t>(member<std::int64_t>(st, "size", what));
  std::string d = "loopdio: " + get_path(st, "file") + " (" + human_size(size) + "): ";
  if (member<bool>(st, "dio", what))
    d += "direct I/O on, alignment " + std::to_string(member<std::int64_t>(st, "alignment", what));
  else
    d += "direct I/O off (" + opt_member<std::string>(st, "dio_reason", what).value_or("?") + ")";
  d += ", engine " + member<std::string>(st, "aio", what);
  return d + ", sector size " + std::to_string(member<std::int64_t>(st, "log_sec", what));
}

std::string nbdkit_error(const std::string& output) {
  std::istringstream in(output);
  std::string line, last, error;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    last = line;
    if (auto p = line.find("error: "); p != std::string::npos) error = line.substr(p + 7);
  }
  if (!error.empty()) return error;
  return last.rfind("nbdkit: ", 0) == 0 ? last.substr(8) : last;
}

}  // namespace loopdio::cli
