// The control socket's server and commands; see control.h.
#include "loopdio/control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "loopdio/backing.h"
#include "loopdio/drain_gate.h"
#include "loopdio/error.h"
#include "loopdio/log.h"

namespace loopdio {

std::string json_string(std::string_view s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      r += '\\';
      r += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      r += buf;
    } else {
      r += c;
    }
  }
  return r + "\"";
}

ControlServer::ControlServer(std::string path, Handler handler)
    : path_(std::move(path)), handler_(std::move(handler)) {
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) throw Error("control=" + path_ + ": path too long");
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path_.c_str());
  listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_) throw sys_error("control=" + path_ + ": socket");
  mode_t old = ::umask(077);
  int r = ::bind(listen_.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (r != 0) throw sys_error("control=" + path_ + ": bind");
  if (::listen(listen_.get(), 8) != 0) throw sys_error("control=" + path_ + ": listen");
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw sys_error("control: pipe");
  stop_read_.reset(p[0]);
  stop_write_.reset(p[1]);
}

ControlServer::~ControlServer() {
  // Only the process that serves the socket removes it: when nbdkit forks into the
  // background, the parent that exits must leave the child's socket alone.
  if (!thread_.joinable()) return;
  char c = 0;
  (void)!::write(stop_write_.get(), &c, 1);
  thread_.join();
  ::unlink(path_.c_str());
}

void ControlServer::start() { thread_ = std::thread([this] { serve(); }); }

void ControlServer::serve() noexcept {
  for (;;) {
    struct pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (c) answer(c.get());
  }
}

// Only root or the server's own user may talk to it.
void ControlServer::answer(int fd) noexcept {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      (cred.uid != 0 && cred.uid != ::geteuid()))
    return;
  std::string line;
  char buf[256];
  while (line.find('\n') == std::string::npos && line.size() < 4096) {
    struct pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    line.append(buf, static_cast<std::size_t>(n));
  }
  if (auto nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
  std::string reply;
  try {
    reply = handler_(line) + "\n";
  } catch (...) {
    reply = "{\"ok\":false,\"error\":\"internal error\"}\n";
  }
  const char* p = reply.data();
  std::size_t left = reply.size();
  while (left > 0) {
    ssize_t n = ::send(fd, p, left, MSG_NOSIGNAL);
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void switch_direct_io(Backing& b, DrainGate& gate, bool on) {
  if (b.direct() == on) return;
  b.check_direct(on);
  gate.drained([&] {
    if (::fdatasync(b.fd()) != 0) throw sys_error("fdatasync: " + b.options().file);
    b.set_direct(on);
    // Pages cached while buffered are stale once writes bypass the cache: drop them.
    if (on) ::posix_fadvise(b.fd(), 0, 0, POSIX_FADV_DONTNEED);
  });
  notice(std::string("direct I/O switched ") + (on ? "on" : "off") + " at run time for " +
         b.options().file);
}

namespace {

std::string status_json(ControlContext& ctx) {
  Backing& b = ctx.backing;
  const Options& o = b.options();
  const Geometry& g = b.geometry();
  std::string s = "{\"ok\":true,\"file\":" + json_string(o.file) +
                  ",\"size\":" + std::to_string(g.size) + ",\"offset\":" + std::to_string(g.base) +
                  ",\"sizelimit\":" + (o.sizelimit ? std::to_string(*o.sizelimit) : "null") +
                  ",\"readonly\":" + (b.writable() ? "false" : "true") +
                  ",\"dio\":" + (b.direct() ? "true" : "false") +
                  ",\"dio_reason\":" + json_string(b.direct_reason()) +
                  ",\"aio\":" + json_string(to_string(o.engine)) +
                  ",\"log_sec\":" + std::to_string(b.min_block()) +
                  ",\"alignment\":" + std::to_string(b.probe().dio_supported ? b.probe().align.offset : 0) +
                  ",\"pid\":" + std::to_string(::getpid());
  if (ctx.extra_status) s += ctx.extra_status();
  return s + "}";
}

std::string error_json(const std::string& what) {
  return "{\"ok\":false,\"error\":" + json_string(what) + "}";
}

}  // namespace

std::string handle_control(std::string_view line, ControlContext& ctx) {
  try {
    if (line == "status") return status_json(ctx);
    if (line == "flush") {
      if (::fdatasync(ctx.backing.fd()) != 0) throw sys_error("fdatasync");
      return "{\"ok\":true}";
    }
    if (line == "set direct-io on" || line == "set direct-io off") {
      bool on = line.ends_with("on");
      switch_direct_io(ctx.backing, ctx.gate, on);
      return std::string("{\"ok\":true,\"dio\":") + (ctx.backing.direct() ? "true" : "false") + "}";
    }
    return error_json("unknown command: " + std::string(line));
  } catch (const std::exception& e) {
    return error_json(e.what());
  }
}

}  // namespace loopdio
