// The control socket's server; see control_server.h. One thread polls the listening socket
// and every client; each client has its own input and output buffers, so commands that
// arrive together are answered one after another, and a client that reads slowly or not at
// all only fills its own buffer.
#include "loopdio/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "loopdio/error.h"
#include "loopdio/json.h"

namespace loopdio {
namespace {

using Clock = std::chrono::steady_clock;

// Forks this process has made (counted in the parent), to tell a start that failed before
// nbdkit forked from a parent that forked and now exits.
std::atomic<std::uint64_t> g_forks{0};

void count_forks() {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(nullptr, [] { ++g_forks; }, nullptr); });
}

constexpr std::size_t kMaxPendingOutput = 1 << 20;  // a client that never reads is dropped

struct sockaddr_un socket_address(const std::string& path) {
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    throw Error("control=" + path + ": path too long for a Unix socket (" +
                std::to_string(sizeof addr.sun_path - 1) + " bytes at most)");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

const char* kind_of(mode_t m) {
  if (S_ISREG(m)) return "a regular file";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device node";
  return "not a socket";
}

// Makes room for the socket at `path`, or says why not.
void clear_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw sys_error("control=" + path);
  }
  if (!S_ISSOCK(st.st_mode))
    throw Error("control=" + path + ": exists and is not a socket (" + kind_of(st.st_mode) +
                "); remove it or choose another path");
  std::string reply = query_control(path, "status", std::chrono::milliseconds(1000));
  if (!reply.empty()) {
    std::string who = "another process";
    try {
      Json status = parse_json(reply, "status");
      if (status.contains("pid")) {
        who = "the loopdio server with pid " + status["pid"].dump();
        if (status.contains("file")) who += " (serving " + get_path(status, "file") + ")";
      }
    } catch (const std::exception&) {  // something else answers there: "another process"
    }
    throw Error("control=" + path + ": in use by " + who + ", which still answers on it");
  }
  // Nobody answers: a socket left by a server that is gone.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw sys_error("control=" + path + ": removing the stale socket");
}

}  // namespace

struct ControlServer::Client {
  explicit Client(UniqueFd f) : fd(std::move(f)) {}
  UniqueFd fd;
  std::string in, out;
  Clock::time_point last_active = Clock::now();
  bool closing = false;  // reply written, then close (a refused or oversized request)
};

std::string query_control(const std::string& path, std::string_view command,
                          std::chrono::milliseconds timeout) {
  struct sockaddr_un addr = socket_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0)
    return {};
  std::string request = std::string(command) + "\n", reply;
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) return "?";
  auto deadline = Clock::now() + timeout;
  char buf[1024];
  while (reply.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    struct pollfd p = {fd.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  // It accepted the connection: something is alive there even if it said nothing.
  return reply.empty() ? "?" : reply.substr(0, reply.find('\n'));
}

ControlServer::ControlServer(std::string path, Handler handler)
    : path_(std::move(path)), handler_(std::move(handler)) {
  if (path_.empty() || path_[0] != '/') throw Error("control=" + path_ + ": not an absolute path");
  struct sockaddr_un addr = socket_address(path_);
  clear_path(path_);
  listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_) throw sys_error("control=" + path_ + ": socket");
  mode_t old = ::umask(077);
  int r = ::bind(listen_.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (r != 0) throw sys_error("control=" + path_ + ": bind");
  // The file just bound, to remove that one and no successor's. While our socket stays
  // bound its inode stays allocated, so the number cannot be reused by another socket.
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    bound_dev_ = st.st_dev;
    bound_ino_ = st.st_ino;
  }
  count_forks();
  forks_at_bind_ = g_forks.load();
  if (::listen(listen_.get(), 16) != 0) {
    Error e = sys_error("control=" + path_ + ": listen");
    remove_socket();
    throw e;
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    Error e = sys_error("control: pipe");
    remove_socket();
    throw e;
  }
  stop_read_.reset(p[0]);
  stop_write_.reset(p[1]);
}

bool ControlServer::owner() const { return thread_.joinable() || g_forks.load() == forks_at_bind_; }

// Removes the socket file only if it is still the one this server bound: a successor may
// have bound its own at the path after ours was removed by someone else. Our listening
// socket is still open here, so a loopdio successor probing the path finds it alive and
// does not replace it; the one race left (someone removes ours and a successor binds
// between the lstat and the unlink) cannot be closed, as unlink has no "if it is this
// inode" form, and needs a third party acting within microseconds.
void ControlServer::remove_socket() {
  struct stat st {};
  if (bound_ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == bound_dev_ &&
      st.st_ino == bound_ino_)
    ::unlink(path_.c_str());
}

ControlServer::~ControlServer() {
  bool mine = owner();
  if (thread_.joinable()) {
    char c = 0;
    (void)!::write(stop_write_.get(), &c, 1);
    thread_.join();
  }
  if (mine) remove_socket();
}

void ControlServer::start() { thread_ = std::thread([this] { serve(); }); }

namespace {

// Only root or the server's own user may talk to it.
bool trusted_peer(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
         (cred.uid == 0 || cred.uid == ::geteuid());
}

}  // namespace

bool ControlServer::read_commands(Client& c) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(c.fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno != EAGAIN) return false;
      break;
    }
    if (n == 0) {  // the client is done sending: answer what it sent, then close
      c.closing = true;
      break;
    }
    c.last_active = Clock::now();
    c.in.append(buf, static_cast<std::size_t>(n));
    if (c.in.size() > 64 * kMaxLine) break;  // answer some before reading more
  }
  std::size_t start = 0;
  for (auto nl = c.in.find('\n'); nl != std::string::npos; nl = c.in.find('\n', start)) {
    std::string_view line(c.in.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > kMaxLine) return false;
    c.out += handler_(line);
    c.out += '\n';
    start = nl + 1;
  }
  c.in.erase(0, start);
  if (c.in.size() > kMaxLine) {  // no newline in sight: not a command
    c.out += "{\"ok\":false,\"error\":\"command too long\"}\n";
    c.in.clear();
    c.closing = true;
  }
  return c.out.size() <= kMaxPendingOutput;
}

bool ControlServer::write_replies(Client& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN;
    c.out.erase(0, static_cast<std::size_t>(n));
    c.last_active = Clock::now();
  }
  return true;
}

void ControlServer::serve() noexcept {
  std::vector<Client> clients;
  for (;;) {
    std::vector<struct pollfd> fds = {{stop_read_.get(), POLLIN, 0},
                                      {listen_.get(), POLLIN, 0}};
    if (clients.size() >= kMaxClients) fds[1].events = 0;  // the backlog holds the rest
    for (const Client& c : clients)
      fds.push_back({c.fd.get(), static_cast<short>(c.out.empty() ? POLLIN : POLLIN | POLLOUT), 0});
    if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) return;
    if (fds[0].revents) return;
    if (fds[1].revents & POLLIN) {
      UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (fd && trusted_peer(fd.get())) clients.emplace_back(std::move(fd));
    }
    auto now = Clock::now();
    for (std::size_t i = 0; i < clients.size() && i + 2 < fds.size(); ++i) {
      Client& c = clients[i];
      short ev = fds[i + 2].revents;
      bool keep = true;
      try {
        if (ev & (POLLIN | POLLHUP | POLLERR)) keep = read_commands(c);
        if (keep && !c.out.empty()) keep = write_replies(c);
      } catch (...) {  // out of memory: drop this client, keep serving the others
        keep = false;
      }
      if (keep && c.out.empty() && c.closing) keep = false;
      if (keep && now - c.last_active > kIdleLimit) keep = false;
      if (!keep) c.fd.reset();
    }
    std::erase_if(clients, [](const Client& c) { return !c.fd; });
  }
}

}  // namespace loopdio
