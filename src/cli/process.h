// Processes: children that loopdio starts (nbdkit, nbd-client), owned by an RAII handle
// that stops them unless released, and processes started by an earlier loopdio (a
// server recorded in a state file), recognised by their command line before any signal.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace loopdio::cli {

constexpr int kInherit = -1;  // SpawnOptions: keep loopdio's own descriptor
constexpr int kDevNull = -2;  // SpawnOptions: /dev/null

struct SpawnOptions {
  int in = kDevNull;
  int out = kInherit;
  int err = kInherit;
  bool new_session = false;      // setsid(): no terminal signal reaches it, it outlives us
  std::optional<mode_t> umask;   // e.g. 077 so that the sockets it creates are private
};

class Child {
 public:
  // fork + exec argv[0] (searched in PATH). Throws loopdio::Error when it cannot be run,
  // with exec's own reason ("nbdkit: No such file or directory").
  static Child spawn(const std::vector<std::string>& argv, const SpawnOptions& opts);

  Child(Child&& o) noexcept;
  Child& operator=(Child&&) = delete;
  Child(const Child&) = delete;
  ~Child();  // stops a child that is still ours: SIGTERM, then SIGKILL after 10 s

  // The running child's pid; -1 once it has been waited for or released.
  pid_t pid() const { return pid_; }
  // The exit code once it has exited (128 + N after signal N), without blocking. Once
  // reaped, the same code again; nullopt while it runs, and after release().
  std::optional<int> try_wait();
  // Blocks until it has exited; the recorded code when it already has. Throws
  // loopdio::Error after release(): it is no longer ours to wait for.
  int wait();
  // Sends `sig` while it is still ours and running; false otherwise. Never signals a
  // process group or every process (a pid of 0 or -1 would).
  bool signal(int sig);
  // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit code. After wait() or
  // release() no signal is sent: it returns the recorded code (0 after release()).
  int stop(std::chrono::milliseconds grace);
  // It is no longer ours to stop: it keeps running after loopdio exits.
  void release() { pid_ = -1; }

 private:
  explicit Child(pid_t pid) : pid_(pid) {}
  int reaped(int status);  // records the exit code of a child that waitpid returned

  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// fork, fork again, exec: the program runs as a child of init (or of the nearest
// subreaper), in a session of its own, and outlives loopdio whatever it does with
// PR_SET_PDEATHSIG (Debian's nbdkit 1.32 sets it even without --exit-with-parent). The
// grandchild execs only once its first parent is gone, so that the death signal it may
// set up can never be sent. Returns its pid. Throws loopdio::Error when it cannot be run.
pid_t spawn_detached(const std::vector<std::string>& argv, const SpawnOptions& opts);

// Running, and not a zombie.
bool process_alive(pid_t pid);

struct RunResult {
  int status = 0;      // exit code, as Child::wait
  std::string output;  // stdout and stderr together
};

// Runs a command to completion, in a session of its own (a Ctrl-C meant for loopdio does
// not cut it short), and captures what it prints. The output goes to a memory file rather
// than a pipe, so that a grandchild that daemonises cannot hold us up. Throws
// loopdio::Error when it has not finished within `timeout` (it is then stopped).
RunResult run_capture(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// A process that is running (not a zombie) and whose command line holds the argument
// `marker` (e.g. "control=/run/loopdio/nbd0.ctl"): the check that keeps a recycled pid
// from being signalled.
bool process_runs(pid_t pid, const std::string& marker);

// Sends SIGTERM to such a process and waits until it is gone; SIGKILL after `grace`.
// Returns false when it had to be killed.
bool stop_process(pid_t pid, const std::string& marker, std::chrono::milliseconds grace);

// A server that runs detached from loopdio (nbdkit after it forked into the background, so
// not our child): stopped with stop_process on destruction unless released.
class DaemonGuard {
 public:
  DaemonGuard(pid_t pid, std::string marker) : pid_(pid), marker_(std::move(marker)) {}
  DaemonGuard(const DaemonGuard&) = delete;
  DaemonGuard& operator=(const DaemonGuard&) = delete;
  ~DaemonGuard();
  void release() { pid_ = -1; }

 private:
  pid_t pid_;
  std::string marker_;
};

}  // namespace loopdio::cli
