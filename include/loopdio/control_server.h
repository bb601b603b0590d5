// The control socket's server: a root-only Unix socket on which a running export answers
// `loopdio list` and `loopdio set`. One command per line, one reply line per command, in
// order; clients are served concurrently by one thread (poll), so an idle or slow client
// delays nobody, and one that stays idle is dropped.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "loopdio/unique_fd.h"

namespace loopdio {

class ControlServer {
 public:
  using Handler = std::function<std::string(std::string_view line)>;

  static constexpr std::chrono::seconds kIdleLimit{10};  // a client silent this long is dropped
  static constexpr std::size_t kMaxClients = 32;         // more wait in the listen backlog
  static constexpr std::size_t kMaxLine = 4096;          // a longer command is refused

  // Binds `path` (absolute; mode 0600) and listens; no thread yet. A socket already at the
  // path that answers belongs to a live server: refused, naming it. A stale one (nobody
  // listening) is replaced. Anything else at the path is refused. Throws loopdio::Error
  // ("control=PATH: ...").
  ControlServer(std::string path, Handler handler);
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  // Stops the thread and removes the socket, if this process owns it (see owner()) and it is
  // still the one this server bound.
  ~ControlServer();

  // Starts answering, on a thread of its own (call after nbdkit has forked).
  void start();
  const std::string& path() const { return path_; }

 private:
  struct Client;
  void serve() noexcept;
  // Reads what a client sent and answers every complete line. False: drop the client.
  bool read_commands(Client& c);
  // Sends what is pending for a client. False: drop the client.
  static bool write_replies(Client& c);
  // This process may remove the socket: it serves it, or it bound it and has not forked
  // since (a start that failed before nbdkit forked). A parent that forked nbdkit into the
  // background (or to run --run's command) leaves the socket to the child that serves it.
  bool owner() const;
  void remove_socket();

  std::string path_;
  Handler handler_;
  UniqueFd listen_;
  UniqueFd stop_read_, stop_write_;  // a pipe that wakes the thread to stop
  std::thread thread_;
  std::uint64_t forks_at_bind_ = 0;  // this process's fork count when it bound the socket
  dev_t bound_dev_ = 0;              // the socket file this server bound: it removes only that
  ino_t bound_ino_ = 0;
};

// The one-line reply a live control socket gives to "status", or empty when nothing
// answers at `path` within `timeout`. Used to name the owner of a socket in the way.
std::string query_control(const std::string& path, std::string_view command,
                          std::chrono::milliseconds timeout);

}  // namespace loopdio
