// The control socket: a root-only Unix socket on which a running export answers `loopdio
// list` (its effective state) and `loopdio set` (switch direct I/O live). One request line,
// one JSON reply line:
//   status                 -> {"ok":true,"file":...,"dio":true,"aio":"libaio",
//                              "engines":{"libaio":2,"io_uring":0,"sync":1},...}
//   set direct-io on|off   -> {"ok":true,"dio":false} or {"ok":false,"error":"..."}
//   flush                  -> {"ok":true} once fdatasync returned
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "loopdio/unique_fd.h"

namespace loopdio {

class Backing;
class DrainGate;

class ControlServer {
 public:
  using Handler = std::function<std::string(std::string_view line)>;

  // Creates, binds (mode 0600) and listens; a stale socket file is replaced. No thread yet.
  // Throws loopdio::Error.
  ControlServer(std::string path, Handler handler);
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  ~ControlServer();

  // Starts answering, on a thread of its own (call after nbdkit has forked).
  void start();
  const std::string& path() const { return path_; }

 private:
  void serve() noexcept;
  void answer(int fd) noexcept;

  std::string path_;
  Handler handler_;
  UniqueFd listen_;
  UniqueFd stop_read_, stop_write_;  // a pipe that wakes the thread to stop
  std::thread thread_;
};

// What a control command may look at and change.
struct ControlContext {
  Backing& backing;
  DrainGate& gate;
  std::function<std::string()> extra_status;  // more JSON members: ,"connections":2,...
};

// Executes one command line; returns the JSON reply (no newline). Never throws.
std::string handle_control(std::string_view line, ControlContext& ctx);

// Switches direct I/O on a live export: drains every request of every connection,
// fdatasyncs, switches the fd, and resumes. Throws loopdio::Error with the reason when the
// backing cannot do it.
void switch_direct_io(Backing& b, DrainGate& gate, bool on);

std::string json_string(std::string_view s);

}  // namespace loopdio
