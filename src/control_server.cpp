// The control socket's server; see control_server.h. The polling thread owns every client
// (its buffers and timers) and never calls the handler: it hands one command of a client at a
// time to the workers and reads that client's next line only once the reply is queued, so
// replies stay in order and a client that reads slowly holds back only its own commands.
#include "loopdio/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "loopdio/error.h"
#include "loopdio/file_kind.h"
#include "loopdio/json.h"
#include "loopdio/log.h"

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

constexpr std::size_t kAcceptBatch = 64;  // connections taken per wake-up, to serve the others too

struct sockaddr_un socket_address(const std::string& path) {
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    throw Error("control=" + path + ": path too long for a Unix socket (" +
                std::to_string(sizeof addr.sun_path - 1) + " bytes at most)");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Makes room for the socket at `path`, or says why not.
void clear_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw sys_error("control=" + path);
  }
  if (!S_ISSOCK(st.st_mode))
    throw Error("control=" + path + ": exists and is not a socket (" + file_kind(st.st_mode) +
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

// Only root or the server's own user may talk to it.
bool trusted_peer(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
         (cred.uid == 0 || cred.uid == ::geteuid());
}

std::string error_reply(const std::string& message) {
  return dump_line(Json{{"ok", false}, {"error", message}});
}

}  // namespace

struct ControlServer::Client {
  Client(std::uint64_t i, UniqueFd f) : id(i), fd(std::move(f)) {}
  std::uint64_t id;
  UniqueFd fd;
  std::string in, out;
  bool in_progress = false;  // its command is with the workers: its next line waits
  bool eof = false;          // it has sent all it will: answer what it sent, then close
  // Its last sign of life that counts against the idle limit: connected, completed a
  // command, was given a reply, or read some of one. Bytes without a newline do not count.
  Clock::time_point active = Clock::now();
  Clock::time_point line_start;  // when the incomplete line in `in` began
  bool has_line() const { return in.find('\n') != std::string::npos; }
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
    : ControlServer(std::move(path), std::move(handler), nullptr) {}

ControlServer::ControlServer(std::string path, Handler handler, MayBlock may_block,
                             const ControlLimits& limits)
    : path_(std::move(path)),
      handler_(std::move(handler)),
      may_block_(std::move(may_block)),
      limits_(limits) {
  if (path_.empty() || path_[0] != '/') throw Error("control=" + path_ + ": not an absolute path");
  if (limits_.workers == 0 || limits_.max_clients == 0)
    throw Error("control=" + path_ + ": needs at least one worker and one client");
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
  try {
    if (::listen(listen_.get(), SOMAXCONN) != 0) throw sys_error("control=" + path_ + ": listen");
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw sys_error("control: pipe");
    stop_read_.reset(p[0]);
    stop_write_.reset(p[1]);
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw sys_error("control: eventfd");
    done_.reserve(limits_.max_clients + limits_.workers);
    running_lines_.resize(limits_.workers);
  } catch (...) {
    remove_socket();
    throw;
  }
}

bool ControlServer::owner() const { return started_ || g_forks.load() == forks_at_bind_; }

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
  {
    std::lock_guard lock(mu_);  // no queued command starts now: its client is about to go
    stopping_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  if (poller_.joinable()) {
    char c = 0;
    (void)!::write(stop_write_.get(), &c, 1);
    poller_.join();  // it closed every client on its way out
  }
  if (mine) remove_socket();
  listen_.reset();
  stop_workers();
}

// Queued commands were dropped (their clients are gone); running ones are waited for, since
// they use the handler's state, which the caller frees once we return. A command that never
// returns (a disk that never answers) leaves two choices: hang the server's exit forever, or
// end the process without running the rest of its exit. The second is chosen, after a grace.
void ControlServer::stop_workers() {
  std::unique_lock lock(mu_);
  if (!idle_cv_.wait_for(lock, limits_.shutdown_grace, [this] { return running_ == 0; })) {
    std::string stuck;
    for (const std::string& l : running_lines_)
      if (!l.empty()) stuck += (stuck.empty() ? "\"" : ", \"") + l + "\"";
    notice("control=" + path_ + ": command " + stuck + " has not returned " +
           std::to_string(limits_.shutdown_grace.count()) +
           " ms after shutdown began; exiting without waiting for it");
    ::_exit(EXIT_FAILURE);
  }
  lock.unlock();
  for (std::thread& t : workers_) t.join();
}

void ControlServer::start() {
  started_ = true;
  workers_.reserve(limits_.workers);
  for (std::size_t i = 0; i < limits_.workers; ++i) workers_.emplace_back([this, i] { work(i); });
  poller_ = std::thread([this] { serve(); });
}

// ---- Workers ----

// The oldest command a worker may take. A command that may block leaves one worker free
// for the others (unless there is only one).
std::deque<ControlServer::Job>::iterator ControlServer::next_job() {
  std::size_t blocking_cap = std::max<std::size_t>(limits_.workers - 1, 1);
  return std::find_if(queue_.begin(), queue_.end(), [&](const Job& j) {
    return !j.may_block || running_blocking_ < blocking_cap;
  });
}

void ControlServer::work(std::size_t index) noexcept {
  std::unique_lock lock(mu_);
  for (;;) {
    auto it = queue_.end();
    work_cv_.wait(lock, [&] { return stopping_ || (it = next_job()) != queue_.end(); });
    if (stopping_) return;
    Job job = std::move(*it);
    queue_.erase(it);
    ++running_;
    if (job.may_block) ++running_blocking_;
    try {
      running_lines_[index] = job.text;
    } catch (...) {  // only to name it if it never returns
    }
    lock.unlock();
    run(job);
    lock.lock();
    running_lines_[index].clear();
    --running_;
    if (job.may_block) {
      --running_blocking_;
      work_cv_.notify_all();  // a blocking command may be waiting for this slot
    }
    try {
      done_.push_back(std::move(job));
    } catch (...) {  // out of memory: that client waits for nothing until it hangs up
    }
    idle_cv_.notify_all();
    std::uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
}

void ControlServer::run(Job& job) noexcept {
  try {
    job.text = handler_(job.text);
  } catch (const std::exception& e) {
    job.failed = true;
    try {
      job.text = e.what();
    } catch (...) {
      job.text.clear();
    }
  } catch (...) {
    job.failed = true;
    job.text.clear();
  }
}

// ---- The polling thread ----

void ControlServer::serve() noexcept {
  std::vector<Client> clients;
  std::vector<Job> done;
  std::vector<struct pollfd> fds;
  try {  // so that nothing below allocates but the clients' buffers
    clients.reserve(limits_.max_clients);
    done.reserve(limits_.max_clients + limits_.workers);
    fds.reserve(limits_.max_clients + 3);
  } catch (...) {
    return;
  }
  for (;;) {
    bool accepting = Clock::now() >= accept_paused_until_;
    fds.clear();
    fds.push_back({stop_read_.get(), POLLIN, 0});
    fds.push_back({listen_.get(), static_cast<short>(accepting ? POLLIN : 0), 0});
    fds.push_back({wake_.get(), POLLIN, 0});
    for (const Client& c : clients) {
      short events = wants_input(c) ? POLLIN : 0;
      if (!c.out.empty()) events |= POLLOUT;
      fds.push_back({c.fd.get(), events, 0});
    }
    if (::poll(fds.data(), fds.size(), poll_timeout(clients)) < 0 && errno != EINTR) return;
    if (fds[0].revents) return;
    if (fds[2].revents) {
      std::uint64_t n;
      (void)!::read(wake_.get(), &n, sizeof n);
    }
    for (std::size_t i = 0; i < clients.size(); ++i)
      if (fds[i + 3].revents && !handle_io(clients[i], fds[i + 3].revents)) drop(clients[i]);
    take_replies(done);
    expire_queued(done);
    deliver(clients, done);
    auto now = Clock::now();
    for (Client& c : clients) {
      bool finished = c.eof && !c.in_progress && c.out.empty() && !c.has_line();
      if (c.fd && (finished || now >= deadline(c))) drop(c);
    }
    std::erase_if(clients, [](const Client& c) { return !c.fd; });
    if (fds[1].revents & POLLIN) accept_clients(clients);
  }
}

// False: drop the client.
bool ControlServer::handle_io(Client& c, short revents) {
  if (revents & (POLLHUP | POLLERR)) return false;  // it hung up: nobody will read a reply
  try {
    if ((revents & POLLOUT) && !write_output(c)) return false;
    if ((revents & POLLIN) && !read_input(c)) return false;
    dispatch(c);
  } catch (...) {  // out of memory: drop this client, keep serving the others
    return false;
  }
  return true;
}

// Its next command is read only when it has none in progress, none buffered, and has read
// most of its replies: a client that pipelines faster than it reads waits for itself.
bool ControlServer::wants_input(const Client& c) const {
  return !c.in_progress && !c.eof && c.out.size() <= limits_.max_pending_output &&
         c.in.size() <= kMaxLine + 1 && !c.has_line();  // +1: a line may end in "\r\n"
}

bool ControlServer::read_input(Client& c) {
  char buf[4096];
  while (wants_input(c)) {
    ssize_t n = ::read(c.fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN;
    if (n == 0) {
      c.eof = true;
      break;
    }
    if (c.in.empty()) c.line_start = Clock::now();
    c.in.append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

bool ControlServer::write_output(Client& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN;
    c.out.erase(0, static_cast<std::size_t>(n));
    c.active = Clock::now();
  }
  return true;
}

// Hands the client's next complete line to the workers, if it may have one running.
void ControlServer::dispatch(Client& c) {
  if (c.in_progress || c.out.size() > limits_.max_pending_output) return;
  std::size_t nl = c.in.find('\n');
  std::string_view line(c.in.data(), nl == std::string::npos ? c.in.size() : nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > kMaxLine) {
    c.out += error_reply("command too long (" + std::to_string(kMaxLine) + " bytes at most)");
    c.out += '\n';
    c.in.clear();
    c.eof = true;  // what follows is not a command either: close once this is written
    return;
  }
  if (nl == std::string::npos) return;
  Job job{c.id, std::string(line), may_block_ && may_block_(line), false, Clock::now()};
  c.in.erase(0, nl + 1);
  c.line_start = c.active = job.queued;
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
  }
  c.in_progress = true;
  work_cv_.notify_one();
}

void ControlServer::take_replies(std::vector<Job>& done) {
  std::lock_guard lock(mu_);
  done.swap(done_);  // both keep a reserved capacity
}

// A command that found no worker in time is answered rather than left waiting: every
// worker is busy with commands that have not returned (a hung disk).
void ControlServer::expire_queued(std::vector<Job>& done) {
  auto now = Clock::now();
  std::lock_guard lock(mu_);
  try {
    while (!queue_.empty() && now - queue_.front().queued >= limits_.queue_wait) {
      std::string busy = error_reply("busy: " + std::to_string(running_) + " commands running");
      done.emplace_back();
      done.back() = std::move(queue_.front());
      queue_.pop_front();
      done.back().text = std::move(busy);
    }
  } catch (...) {  // out of memory: they wait for the next round
  }
}

void ControlServer::deliver(std::vector<Client>& clients, std::vector<Job>& done) {
  for (Job& job : done) {
    auto c = std::find_if(clients.begin(), clients.end(),
                          [&](const Client& x) { return x.fd && x.id == job.client; });
    if (c == clients.end()) continue;  // it left while its command ran
    try {
      c->out += job.failed ? error_reply("internal error: " + job.text) : job.text;
      c->out += '\n';
      c->in_progress = false;
      c->active = Clock::now();
      if (!write_output(*c)) {
        drop(*c);
        continue;
      }
      dispatch(*c);
    } catch (...) {
      drop(*c);
    }
  }
  done.clear();
}

void ControlServer::accept_clients(std::vector<Client>& clients) {
  for (std::size_t i = 0; i < kAcceptBatch; ++i) {
    UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      // Out of descriptors: the connection stays in the backlog; look again a little later
      // rather than spin on a listening socket that stays readable.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        accept_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    if (!trusted_peer(fd.get())) continue;
    if (clients.size() >= limits_.max_clients && !evict_idle(clients)) {
      // Every client has a command in progress: say so rather than leave it unanswered.
      std::string busy = error_reply("busy: " + std::to_string(clients.size()) +
                                     " clients have commands in progress");
      busy += '\n';
      (void)!::send(fd.get(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;
    }
    clients.emplace_back(next_client_++, std::move(fd));
  }
}

// Makes room for a new client: the one idle longest goes, if any is idle (no command in
// progress or waiting to be read). Idle clients therefore never lock others out.
bool ControlServer::evict_idle(std::vector<Client>& clients) {
  auto victim = clients.end();
  for (auto it = clients.begin(); it != clients.end(); ++it)
    if (!it->in_progress && !it->has_line() &&
        (victim == clients.end() || it->active < victim->active))
      victim = it;
  if (victim == clients.end()) return false;
  clients.erase(victim);
  return true;
}

void ControlServer::drop(Client& c) {
  if (c.in_progress) {  // a command not yet started is withdrawn; a running one is orphaned
    std::lock_guard lock(mu_);
    std::erase_if(queue_, [&](const Job& j) { return j.client == c.id; });
  }
  c.fd.reset();
}

// When the client is dropped unless it does something: never while its command runs;
// otherwise after the idle limit, or sooner when a line it began is not finished in time.
Clock::time_point ControlServer::deadline(const Client& c) const {
  if (c.in_progress) return Clock::time_point::max();
  Clock::time_point d = c.active + limits_.idle;
  if (!c.in.empty() && !c.has_line())
    d = std::min(d, std::max(c.line_start, c.active) + limits_.line);
  return d;
}

int ControlServer::poll_timeout(const std::vector<Client>& clients) {
  Clock::time_point next = Clock::time_point::max();
  for (const Client& c : clients) next = std::min(next, deadline(c));
  if (Clock::now() < accept_paused_until_) next = std::min(next, accept_paused_until_);
  {
    std::lock_guard lock(mu_);
    if (!queue_.empty()) next = std::min(next, queue_.front().queued + limits_.queue_wait);
  }
  if (next == Clock::time_point::max()) return -1;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(ms, 0, INT_MAX));
}

}  // namespace loopdio
