// The control socket's server: a root-only Unix socket on which a running export answers
// `loopdio list` and `loopdio set`. One command per line, one reply line per command, in
// order. One thread polls every client and never runs a command; a small pool of workers
// runs them, so a command that blocks (a drain, an fdatasync on a hung disk) holds no one else.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "loopdio/unique_fd.h"

namespace loopdio {

// What the control server lets clients hold. The defaults are the plugin's; tests shorten them.
struct ControlLimits {
  std::size_t workers = 4;       // commands that run at once
  std::size_t max_clients = 32;  // connected at once; at the limit the longest idle one goes
  // A client with no command in progress that neither completes a command nor reads a reply
  // for this long is dropped.
  std::chrono::milliseconds idle{std::chrono::seconds(10)};
  // A command line must be complete this long after its first byte, however it trickles in.
  std::chrono::milliseconds line{std::chrono::seconds(5)};
  // A command that finds no free worker for this long is answered "busy: N commands running".
  std::chrono::milliseconds queue_wait{std::chrono::seconds(2)};
  // How long shutdown waits for a running command before it ends the process (see ~ControlServer).
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(30)};
  // A client's unread replies beyond this stop its next command from being read (backpressure).
  std::size_t max_pending_output = 64 * 1024;
};

class ControlServer {
 public:
  using Handler = std::function<std::string(std::string_view line)>;
  // True for a command that may block on I/O for long (a drain, an fdatasync). Such commands
  // never take the last free worker, so the others (status, stats) stay quick while they hang.
  using MayBlock = std::function<bool(std::string_view line)>;

  static constexpr std::size_t kMaxLine = 4096;  // a longer command is refused

  // Binds `path` (absolute; mode 0600) and listens; no thread yet. A socket already at the
  // path that answers belongs to a live server: refused, naming it. A stale one (nobody
  // listening) is replaced. Anything else at the path is refused. Throws loopdio::Error
  // ("control=PATH: ..."). The handler is called from several threads at once. Without
  // `may_block`, every command is treated alike.
  ControlServer(std::string path, Handler handler);
  ControlServer(std::string path, Handler handler, MayBlock may_block,
                const ControlLimits& limits = ControlLimits());
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  // Closes every client and removes the socket (if this process owns it and it is still the
  // one bound here), then waits for running commands. One still running after
  // limits.shutdown_grace cannot be abandoned (it uses state about to be freed, and code
  // about to be unloaded): the process then exits with status 1, after a notice naming it.
  ~ControlServer();

  // Starts answering: the polling thread and the workers (call after nbdkit has forked).
  void start();
  const std::string& path() const { return path_; }

 private:
  struct Client;
  // A command on its way to a worker and back.
  struct Job {
    std::uint64_t client = 0;
    std::string text;  // the command line; then its reply
    bool may_block = false;
    bool failed = false;  // the handler threw: `text` holds what it said
    std::chrono::steady_clock::time_point queued;
  };

  // The polling thread: it owns the clients and never runs a command.
  void serve() noexcept;
  bool handle_io(Client& c, short revents);
  bool read_input(Client& c);
  bool write_output(Client& c);
  bool wants_input(const Client& c) const;
  void dispatch(Client& c);
  void take_replies(std::vector<Job>& done);
  void expire_queued(std::vector<Job>& done);
  void deliver(std::vector<Client>& clients, std::vector<Job>& done);
  void accept_clients(std::vector<Client>& clients);
  bool evict_idle(std::vector<Client>& clients);
  void drop(Client& c);
  std::chrono::steady_clock::time_point deadline(const Client& c) const;
  int poll_timeout(const std::vector<Client>& clients);

  // A worker thread.
  void work(std::size_t index) noexcept;
  void run(Job& job) noexcept;
  std::deque<Job>::iterator next_job();

  // This process may remove the socket: it serves it, or it bound it and has not forked
  // since (a start that failed before nbdkit forked). A parent that forked nbdkit into the
  // background (or to run --run's command) leaves the socket to the child that serves it.
  bool owner() const;
  void remove_socket();
  void stop_workers();

  std::string path_;
  Handler handler_;
  MayBlock may_block_;
  ControlLimits limits_;
  UniqueFd listen_;
  UniqueFd stop_read_, stop_write_;  // a pipe that wakes the polling thread to stop
  UniqueFd wake_;                    // an eventfd: a worker has a reply for the polling thread
  dev_t bound_dev_ = 0;              // the socket file this server bound: it removes only that
  ino_t bound_ino_ = 0;
  std::uint64_t forks_at_bind_ = 0;  // this process's fork count when it bound the socket
  bool started_ = false;
  std::uint64_t next_client_ = 0;  // the polling thread's: names clients to their jobs
  std::chrono::steady_clock::time_point accept_paused_until_;  // the polling thread's: EMFILE
  std::thread poller_;
  std::vector<std::thread> workers_;

  // Protects queue_, done_, running_, running_blocking_, running_lines_ and stopping_.
  std::mutex mu_;
  std::condition_variable work_cv_;  // a job queued, a blocking slot freed, or stopping
  std::condition_variable idle_cv_;  // a worker finished a job
  std::deque<Job> queue_;            // at most one per client: bounded by max_clients
  std::vector<Job> done_;            // replies for the polling thread (capacity reserved)
  std::size_t running_ = 0, running_blocking_ = 0;
  std::vector<std::string> running_lines_;  // per worker: its command, to name a stuck one
  bool stopping_ = false;
};

// The one-line reply a live control socket gives to "status", or empty when nothing
// answers at `path` within `timeout`. Used to name the owner of a socket in the way.
std::string query_control(const std::string& path, std::string_view command,
                          std::chrono::milliseconds timeout);

}  // namespace loopdio
