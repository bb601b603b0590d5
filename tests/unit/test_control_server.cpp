// The control socket's server: pipelined commands answered in order, slow commands, idle,
// trickling and slow-reading clients holding no one else, shutdown with a command running,
// a live socket never taken over, a stale one replaced, anything else refused, and the
// socket removed only by the process that owns it, and only while it is still its own.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "loopdio/control_server.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"

using namespace loopdio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

struct TempDir {
  TempDir() {
    char t[] = "/tmp/loopdio-ctl-XXXXXX";
    path = ::mkdtemp(t);
  }
  ~TempDir() { std::system(("rm -rf " + path).c_str()); }
  std::string path;
};

UniqueFd connect_to(const std::string& path, int flags = 0) {
  struct sockaddr_un a {};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0));
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&a), sizeof a) != 0) return {};
  return fd;
}

void send_all(int fd, std::string_view s) {
  ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
}

// What arrives on `fd` until `lines` lines have, the peer closes, or `within` passes.
std::string read_lines(int fd, std::size_t lines, std::chrono::milliseconds within = 10s) {
  std::string got;
  char buf[4096];
  auto deadline = Clock::now() + within;
  while (static_cast<std::size_t>(std::count(got.begin(), got.end(), '\n')) < lines) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    struct pollfd p = {fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    else if (n == 0 || errno != EAGAIN) break;
  }
  return got;
}

// True when the server closes `fd` within `within` (what it sends until then is discarded).
bool closed_within(int fd, std::chrono::milliseconds within) {
  auto deadline = Clock::now() + within;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    struct pollfd p = {fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN)) return true;
  }
}

std::string reply_for(std::string_view line) {
  return "{\"pid\":" + std::to_string(::getpid()) + ",\"got\":\"" + std::string(line) + "\"}";
}

ControlServer::Handler echo() { return reply_for; }

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// Where a handler waits until the test lets it go; the test can wait for it to get there.
class Gate {
 public:
  void pass() {
    std::unique_lock lock(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
  }
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool arrived(std::size_t n, std::chrono::milliseconds within = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, within, [&] { return arrived_ >= n; });
  }
  std::size_t count() {
    std::lock_guard lock(mu_);
    return arrived_;
  }

 private:
  std::mutex mu_;  // protects arrived_ and open_
  std::condition_variable cv_;
  std::size_t arrived_ = 0;
  bool open_ = false;
};

// Declared after the server: opens the gate before the server is destroyed, even when an
// assertion ends the test early, so that no test hangs in a handler.
struct OpenAtExit {
  Gate& gate;
  ~OpenAtExit() { gate.open(); }
};

// A handler that waits at `gate` for the command "slow" and echoes every command.
ControlServer::Handler gated(Gate& gate) {
  return [&gate](std::string_view line) {
    if (line == "slow") gate.pass();
    return reply_for(line);
  };
}

}  // namespace

TEST(ControlServer, PipelinedCommandsAreAnsweredInOrder) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  UniqueFd c = connect_to(s.path());
  ASSERT_TRUE(c);
  std::string req = "a\nb\r\nc\n";
  ASSERT_EQ(::send(c.get(), req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string got = read_lines(c.get(), 3);
  EXPECT_NE(got.find("\"got\":\"a\"}\n{"), std::string::npos) << got;
  EXPECT_LT(got.find("\"got\":\"a\""), got.find("\"got\":\"b\"")) << got;
  EXPECT_LT(got.find("\"got\":\"b\""), got.find("\"got\":\"c\"")) << got;
}

// Ordered by events, not by the clock: the reply must come while the idle client is still
// connected, i.e. before the server gives up on it (a server waiting for the idle client's
// line would answer only once it has dropped that client).
TEST(ControlServer, AnIdleClientDelaysNobody) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  UniqueFd idle = connect_to(s.path());
  send_all(idle.get(), "sta");  // half a command, then silence
  UniqueFd c = connect_to(s.path());
  send_all(c.get(), "status\n");
  std::string got = read_lines(c.get(), 1);
  EXPECT_NE(got.find("\"got\":\"status\""), std::string::npos) << got;
  char b;
  EXPECT_EQ(::recv(idle.get(), &b, 1, MSG_DONTWAIT), -1) << "the idle client was dropped first";
  EXPECT_EQ(errno, EAGAIN);
}

// Timeline of the failure: every command ran on the one polling thread, so while one client's
// `set direct-io` drained or its `flush` waited on a hung disk, no other client got a reply.
TEST(ControlServer, ASlowCommandDelaysNoOtherClient) {
  TempDir d;
  Gate gate;
  ControlServer s(d.path + "/ctl", gated(gate));
  OpenAtExit opener{gate};
  s.start();
  UniqueFd slow = connect_to(s.path());
  send_all(slow.get(), "slow\n");
  ASSERT_TRUE(gate.arrived(1));
  UniqueFd fast = connect_to(s.path());
  send_all(fast.get(), "status\n");
  std::string got = read_lines(fast.get(), 1, 1s);  // while "slow" is still held
  EXPECT_NE(got.find("\"got\":\"status\""), std::string::npos)
      << "no reply while another client's command ran";
  gate.open();
  got = read_lines(slow.get(), 1);
  EXPECT_NE(got.find("\"got\":\"slow\""), std::string::npos) << got;
}

// Timeline of the failure: 200 idle connections (root's monitoring, a forgotten socat) took
// the 32 client slots and filled the listen backlog; each held its slot for 10 s, so
// `loopdio list` failed with "does not answer within 5 s".
TEST(ControlServer, TwoHundredIdleClientsDoNotLockOutANewOne) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  // Connects, retrying while the listen backlog is full, until `until`.
  auto connect_by = [&](Clock::time_point until) {
    UniqueFd fd;
    while (!(fd = connect_to(s.path(), SOCK_NONBLOCK)) && errno == EAGAIN && Clock::now() < until)
      std::this_thread::sleep_for(1ms);
    return fd;
  };
  std::vector<UniqueFd> idle;
  for (auto until = Clock::now() + 5s; idle.size() < 200 && Clock::now() < until;)
    if (UniqueFd fd = connect_by(until)) idle.push_back(std::move(fd));
  EXPECT_EQ(idle.size(), 200u) << "idle clients waited to connect";
  auto deadline = Clock::now() + 1s;
  UniqueFd c = connect_by(deadline);
  ASSERT_TRUE(c) << "no room for a new client: " << std::strerror(errno);
  send_all(c.get(), "status\n");
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  std::string got = read_lines(c.get(), 1, std::max(left, 0ms));
  EXPECT_NE(got.find("\"got\":\"status\""), std::string::npos) << "no reply within 1 s";
}

// Timeline of the failure: the idle timer restarted at every byte, so a client sending one
// byte every few seconds, never a whole line, kept its slot for ever.
TEST(ControlServer, ATricklingClientIsDropped) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  UniqueFd c = connect_to(s.path());
  auto start = Clock::now();
  bool dropped = false;
  while (!dropped && Clock::now() - start < 9s) {  // the line limit is 5 s
    dropped = ::send(c.get(), "x", 1, MSG_NOSIGNAL) != 1 || closed_within(c.get(), 500ms);
  }
  EXPECT_TRUE(dropped) << "a client trickling bytes without a newline was kept";
}

// Timeline of the failure: replies beyond 1 MiB that the client had not read yet got the
// client dropped, with none of its pending replies; now its next commands wait instead.
TEST(ControlServer, PipelinedRepliesAllReachAClientThatReadsSlowly) {
  TempDir d;
  const std::string pad(8000, 'x');
  ControlServer s(d.path + "/ctl",
                  [&](std::string_view line) { return std::string(line) + " " + pad; });
  s.start();
  UniqueFd c = connect_to(s.path());
  ASSERT_TRUE(c);
  constexpr int kCommands = 300;  // 2.4 MB of replies
  std::thread writer([&] {
    std::string all;
    for (int i = 0; i < kCommands; ++i) all += std::to_string(i) + "\n";
    for (std::size_t sent = 0; sent < all.size();) {
      ssize_t n = ::send(c.get(), all.data() + sent, all.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<std::size_t>(n);
    }
  });
  std::string got;
  char buf[4096];
  auto deadline = Clock::now() + 60s;
  for (long lines = 0; lines < kCommands && Clock::now() < deadline;) {
    struct pollfd p = {c.get(), POLLIN, 0};
    if (::poll(&p, 1, 1000) < 0) break;
    ssize_t n = ::recv(c.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN)) break;
    if (n > 0) {
      got.append(buf, static_cast<std::size_t>(n));
      lines += std::count(buf, buf + n, '\n');
    }
    std::this_thread::sleep_for(1ms);  // a slow reader: 4 KiB a millisecond at most
  }
  ::shutdown(c.get(), SHUT_RDWR);  // frees the writer if the server stopped reading
  writer.join();
  EXPECT_GE(got.size(), 2u << 20);
  std::size_t pos = 0;
  int i = 0;
  for (; i < kCommands && pos < got.size(); ++i) {
    std::string want = std::to_string(i) + " " + pad + "\n";
    if (got.compare(pos, want.size(), want) != 0) break;
    pos += want.size();
  }
  EXPECT_EQ(i, kCommands) << "reply " << i << " missing or out of order; " << got.size()
                          << " bytes arrived";
}

// Timeline of the failure: server A ran; someone removed its socket file; server B started
// on the same path and bound its own; A exited and unlinked the path, which was B's socket.
TEST(ControlServer, ASuccessorsSocketSurvivesItsPredecessor) {
  TempDir d;
  std::string p = d.path + "/ctl";
  auto named = [](std::string name) {
    return [name](std::string_view) { return "{\"server\":\"" + name + "\"}"; };
  };
  auto a = std::make_unique<ControlServer>(p, named("A"));
  a->start();
  ASSERT_EQ(::unlink(p.c_str()), 0);
  ControlServer b(p, named("B"));
  b.start();
  a.reset();
  ASSERT_TRUE(exists(p)) << "the predecessor removed its successor's socket";
  UniqueFd c = connect_to(p);
  ASSERT_TRUE(c);
  send_all(c.get(), "status\n");
  EXPECT_EQ(read_lines(c.get(), 1), "{\"server\":\"B\"}\n");
}

// Shutdown closes the clients and the socket at once, then waits for the command still
// running: it uses the handler's state, which the caller frees once the destructor returns.
TEST(ControlServer, ShutdownWaitsForACommandThatIsStillRunning) {
  TempDir d;
  std::string p = d.path + "/ctl";
  Gate gate;
  auto s = std::make_unique<ControlServer>(p, gated(gate));
  OpenAtExit opener{gate};
  s->start();
  UniqueFd c = connect_to(p);
  send_all(c.get(), "slow\n");
  ASSERT_TRUE(gate.arrived(1));
  std::atomic<bool> destroyed{false};
  std::thread stopper([&] {
    s.reset();
    destroyed = true;
  });
  EXPECT_TRUE(closed_within(c.get(), 5s)) << "shutdown left its clients waiting";
  for (auto until = Clock::now() + 5s; exists(p) && Clock::now() < until;)
    std::this_thread::sleep_for(1ms);
  EXPECT_FALSE(exists(p)) << "shutdown left its socket while a command ran";
  EXPECT_FALSE(destroyed) << "the server was freed while its command still ran";
  gate.open();
  stopper.join();
  EXPECT_TRUE(destroyed);
}

TEST(ControlServer, ACommandTooLongIsRefusedWithAReply) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  UniqueFd c = connect_to(s.path());
  send_all(c.get(), std::string(ControlServer::kMaxLine + 2, 'a'));  // no newline in sight
  EXPECT_NE(read_lines(c.get(), 1).find("command too long"), std::string::npos);
  EXPECT_TRUE(closed_within(c.get(), 10s));
}

// A command that may block (flush, set direct-io) never takes the last free worker: with
// one such command hung, the next waits and is then told the server is busy, while a
// status still gets its answer.
TEST(ControlServer, BlockingCommandsLeaveAWorkerForTheOthers) {
  TempDir d;
  Gate gate;
  ControlLimits limits;
  limits.workers = 2;
  limits.queue_wait = 200ms;
  ControlServer s(d.path + "/ctl", gated(gate),
                  [](std::string_view line) { return line == "slow"; }, limits);
  OpenAtExit opener{gate};
  s.start();
  UniqueFd hung = connect_to(s.path());
  send_all(hung.get(), "slow\n");
  ASSERT_TRUE(gate.arrived(1));
  UniqueFd second = connect_to(s.path());
  send_all(second.get(), "slow\n");
  EXPECT_NE(read_lines(second.get(), 1).find("\"error\":\"busy: 1 commands running\""),
            std::string::npos);
  UniqueFd status = connect_to(s.path());
  send_all(status.get(), "status\n");
  EXPECT_NE(read_lines(status.get(), 1).find("\"got\":\"status\""), std::string::npos);
  EXPECT_EQ(gate.count(), 1u) << "a second blocking command took the last worker";
  gate.open();
  EXPECT_NE(read_lines(hung.get(), 1).find("\"got\":\"slow\""), std::string::npos);
}

// Idle clients make room for a new one; clients whose commands are all running cannot, and
// the newcomer is told so rather than left without an answer.
TEST(ControlServer, ANewClientFindingEverySlotBusyIsToldSo) {
  TempDir d;
  Gate gate;
  ControlLimits limits;
  limits.max_clients = 1;
  ControlServer s(d.path + "/ctl", gated(gate), nullptr, limits);
  OpenAtExit opener{gate};
  s.start();
  UniqueFd idle = connect_to(s.path());
  UniqueFd c = connect_to(s.path());
  EXPECT_TRUE(closed_within(idle.get(), 10s)) << "the idle client kept the only slot";
  send_all(c.get(), "slow\n");
  ASSERT_TRUE(gate.arrived(1));
  UniqueFd late = connect_to(s.path());
  EXPECT_NE(read_lines(late.get(), 1).find("busy: 1 clients have commands in progress"),
            std::string::npos);
  EXPECT_TRUE(closed_within(late.get(), 10s));
  gate.open();
  EXPECT_NE(read_lines(c.get(), 1).find("\"got\":\"slow\""), std::string::npos);
}

// A command that never returns cannot be abandoned (it uses state the caller frees next):
// after the grace, the process ends with a notice naming it, rather than hang for ever.
TEST(ControlServerDeathTest, ACommandThatNeverReturnsEndsTheProcessAfterTheGrace) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "ThreadSanitizer reports the threads _exit leaves on purpose, and fails the exit";
#endif
  TempDir d;
  std::string p = d.path + "/ctl";
  EXPECT_EXIT(
      {
        Gate never;
        ControlLimits limits;
        limits.shutdown_grace = 100ms;
        auto s = std::make_unique<ControlServer>(
            p, [&](std::string_view) { return never.pass(), std::string(); }, nullptr, limits);
        s->start();
        UniqueFd c = connect_to(p);
        send_all(c.get(), "flush\n");
        if (!never.arrived(1)) std::_Exit(2);
        s.reset();
        std::_Exit(0);
      },
      testing::ExitedWithCode(1), "command \"flush\" has not returned 100 ms after shutdown");
  EXPECT_FALSE(exists(p)) << "the socket was left behind";
}

TEST(ControlServer, ALiveSocketIsNeverTakenOver) {
  TempDir d;
  ControlServer live(d.path + "/ctl", echo());
  live.start();
  try {
    ControlServer second(d.path + "/ctl", echo());
    FAIL() << "a second server took over a live socket";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by the loopdio server with pid " +
                                         std::to_string(::getpid())),
              std::string::npos)
        << e.what();
  }
  UniqueFd c = connect_to(live.path());
  ASSERT_EQ(::send(c.get(), "x\n", 2, 0), 2);
  EXPECT_NE(read_lines(c.get(), 1).find("\"got\":\"x\""), std::string::npos);
}

TEST(ControlServer, AStaleSocketIsReplacedAndAnythingElseRefused) {
  TempDir d;
  std::string p = d.path + "/ctl";
  {
    // A socket nobody listens on any more: bound, then its listener closed.
    struct sockaddr_un a {};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, p.c_str());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<struct sockaddr*>(&a), sizeof a), 0);
  }
  ASSERT_TRUE(exists(p));
  {
    ControlServer s(p, echo());
    s.start();
    UniqueFd c = connect_to(p);
    EXPECT_TRUE(c) << "the stale socket was not replaced";
  }
  std::string file = d.path + "/file";
  std::ofstream(file) << "keep me";
  EXPECT_THROW(ControlServer(file, echo()), Error);
  std::ifstream in(file);
  std::string content;
  std::getline(in, content);
  EXPECT_EQ(content, "keep me");
  EXPECT_THROW(ControlServer("relative/ctl", echo()), Error);
}

TEST(ControlServer, OnlyTheOwnerRemovesTheSocket) {
  TempDir d;
  {
    ControlServer failed_start(d.path + "/a", echo());
  }
  EXPECT_FALSE(exists(d.path + "/a")) << "a start that failed before forking left its socket";
  {
    ControlServer parent(d.path + "/b", echo());
    pid_t pid = ::fork();  // as nbdkit forks into the background: the child serves
    if (pid == 0) ::_exit(0);
    int status;
    ::waitpid(pid, &status, 0);
  }
  EXPECT_TRUE(exists(d.path + "/b")) << "the parent removed the socket its child serves";
  ::unlink((d.path + "/b").c_str());
  {
    ControlServer serving(d.path + "/c", echo());
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    int status;
    ::waitpid(pid, &status, 0);
    serving.start();  // after_fork ran here: this process serves it
  }
  EXPECT_FALSE(exists(d.path + "/c")) << "the serving process left its socket behind";
}
