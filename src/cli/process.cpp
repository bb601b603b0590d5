// Child processes and recorded servers; see process.h.
#include "process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include "loopdio/error.h"
#include "loopdio/unique_fd.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

// In the child, between fork and exec: async-signal-safe calls only.
void redirect(int target, int fd, int devnull) {
  if (fd == kInherit) return;
  int from = fd == kDevNull ? devnull : fd;
  if (from == target)
    ::fcntl(target, F_SETFD, 0);
  else
    ::dup2(from, target);
}

// The child's state before exec: signals as at birth, the umask and the three streams.
void child_setup(const SpawnOptions& o, int devnull) {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::signal(SIGPIPE, SIG_DFL);
  if (o.umask) ::umask(*o.umask);
  redirect(STDIN_FILENO, o.in, devnull);
  redirect(STDOUT_FILENO, o.out, devnull);
  redirect(STDERR_FILENO, o.err, devnull);
}

[[noreturn]] void exec_child(char* const* argv, const SpawnOptions& o, int devnull, int report) {
  if (o.new_session) ::setsid();
  child_setup(o, devnull);
  ::execvp(argv[0], argv);
  int e = errno;
  (void)!::write(report, &e, sizeof e);
  ::_exit(127);
}

// What the parent prepares before fork, so that the child only makes async-signal-safe
// calls: argv as C strings, /dev/null, and a pipe on which the child reports exec's failure.
struct ExecPrep {
  explicit ExecPrep(const std::vector<std::string>& argv) {
    for (const std::string& a : argv) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!devnull) throw sys_error("/dev/null");
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw sys_error("pipe");
    report_read.reset(p[0]);
    report_write.reset(p[1]);
  }
  std::vector<char*> av;
  UniqueFd devnull, report_read, report_write;
};

}  // namespace

Child Child::spawn(const std::vector<std::string>& argv, const SpawnOptions& opts) {
  ExecPrep prep(argv);
  UniqueFd& report_read = prep.report_read;
  pid_t pid = ::fork();
  if (pid < 0) throw sys_error("fork");
  if (pid == 0) exec_child(prep.av.data(), opts, prep.devnull.get(), prep.report_write.get());

  prep.report_write.reset();
  int e = 0;
  ssize_t n;
  do {
    n = ::read(report_read.get(), &e, sizeof e);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof e)) {  // exec failed: the child reported why
    ::waitpid(pid, nullptr, 0);
    throw sys_error(argv[0], e);
  }
  return Child(pid);
}

namespace {

struct DetachReport {
  int kind;  // 0: the grandchild's pid, from the intermediate; 1: exec's errno
  int value;
};

[[noreturn]] void detach_child(char* const* argv, const SpawnOptions& o, int devnull, int report) {
  pid_t me = ::getpid();
  ::setsid();
  pid_t pid = ::fork();
  if (pid != 0) {
    DetachReport r{pid > 0 ? 0 : 1, pid > 0 ? pid : errno};
    (void)!::write(report, &r, sizeof r);
    ::_exit(0);
  }
  while (::getppid() == me) {
    struct timespec ts = {0, 1000000};
    ::nanosleep(&ts, nullptr);
  }
  child_setup(o, devnull);  // its session was made above
  ::execvp(argv[0], argv);
  DetachReport r{1, errno};
  (void)!::write(report, &r, sizeof r);
  ::_exit(127);
}

}  // namespace

pid_t spawn_detached(const std::vector<std::string>& argv, const SpawnOptions& opts) {
  ExecPrep prep(argv);
  UniqueFd& report_read = prep.report_read;
  pid_t mid = ::fork();
  if (mid < 0) throw sys_error("fork");
  if (mid == 0) detach_child(prep.av.data(), opts, prep.devnull.get(), prep.report_write.get());
  prep.report_write.reset();
  ::waitpid(mid, nullptr, 0);
  pid_t pid = -1;
  DetachReport r{};
  ssize_t n;
  // The intermediate's report, then EOF once exec succeeded, or exec's errno.
  while ((n = ::read(report_read.get(), &r, sizeof r)) == static_cast<ssize_t>(sizeof r) ||
         (n < 0 && errno == EINTR)) {
    if (n < 0) continue;
    if (r.kind == 1) throw sys_error(argv[0], r.value);
    pid = r.value;
  }
  if (pid <= 0) throw Error(argv[0] + ": could not be started");
  return pid;
}

bool process_alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (pid <= 0 || !std::getline(stat, line)) return false;
  auto paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

Child::Child(Child&& o) noexcept : pid_(o.pid_), exit_code_(o.exit_code_) { o.pid_ = -1; }

Child::~Child() {
  if (pid_ > 0) {
    try {
      stop(10s);
    } catch (...) {
    }
  }
}

int Child::reaped(int status) {
  pid_ = -1;
  exit_code_ = exit_code(status);
  return *exit_code_;
}

std::optional<int> Child::try_wait() {
  if (pid_ <= 0) return exit_code_;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) throw sys_error("waitpid " + std::to_string(pid_));
  if (r == 0) return std::nullopt;
  return reaped(status);
}

int Child::wait() {
  // waitpid(-1) would reap some other child of ours.
  if (pid_ <= 0) {
    if (exit_code_) return *exit_code_;
    throw Error("wait: the process was released, it is no longer loopdio's child");
  }
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) throw sys_error("waitpid " + std::to_string(pid_));
  return reaped(status);
}

bool Child::signal(int sig) { return pid_ > 0 && ::kill(pid_, sig) == 0; }

int Child::stop(std::chrono::milliseconds grace) {
  // Reaped or released: nothing of ours to stop. kill(-1, ...) would signal every
  // process loopdio may signal, which for root is all of them.
  if (pid_ <= 0) return exit_code_.value_or(0);
  signal(SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto code = try_wait()) return *code;
    std::this_thread::sleep_for(20ms);
  }
  signal(SIGKILL);
  return wait();
}

RunResult run_capture(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  UniqueFd out(::memfd_create("loopdio-capture", MFD_CLOEXEC));
  if (!out) throw sys_error("memfd_create");
  SpawnOptions o;
  o.out = o.err = out.get();
  o.new_session = true;
  Child child = Child::spawn(argv, o);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::optional<int> status;
  while (!(status = child.try_wait())) {
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(argv[0] + ": no result within " + std::to_string(timeout.count() / 1000) + " s");
    std::this_thread::sleep_for(10ms);
  }
  RunResult r;
  r.status = *status;
  ::lseek(out.get(), 0, SEEK_SET);
  char buf[4096];
  ssize_t n;
  while ((n = ::read(out.get(), buf, sizeof buf)) > 0) r.output.append(buf, static_cast<std::size_t>(n));
  return r;
}

bool process_runs(pid_t pid, const std::string& marker) {
  if (!process_alive(pid)) return false;
  std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
  std::string arg;
  while (std::getline(cmdline, arg, '\0'))
    if (arg == marker) return true;
  return false;
}

bool stop_process(pid_t pid, const std::string& marker, std::chrono::milliseconds grace) {
  if (pid <= 0 || !process_runs(pid, marker)) return true;  // never a group, never -1
  if (::kill(pid, SIGTERM) != 0 && errno != ESRCH) throw sys_error("kill " + std::to_string(pid));
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!process_runs(pid, marker)) return true;
    std::this_thread::sleep_for(20ms);
  }
  ::kill(pid, SIGKILL);
  for (int i = 0; i < 250 && process_runs(pid, marker); ++i) std::this_thread::sleep_for(20ms);
  return false;
}

DaemonGuard::~DaemonGuard() {
  if (pid_ <= 0) return;
  try {
    stop_process(pid_, marker_, 10s);
  } catch (...) {
  }
}

}  // namespace loopdio::cli
