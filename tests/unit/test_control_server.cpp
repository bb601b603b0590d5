// The control socket's server: concurrent clients, pipelined commands answered in order,
// a live socket never taken over, a stale one replaced, anything else refused, and the
// socket removed only by the process that owns it.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

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

UniqueFd connect_to(const std::string& path) {
  struct sockaddr_un a {};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&a), sizeof a) != 0) return {};
  return fd;
}

std::string read_lines(int fd, std::size_t lines) {
  std::string got;
  char buf[4096];
  auto deadline = Clock::now() + 5s;
  while (static_cast<std::size_t>(std::count(got.begin(), got.end(), '\n')) < lines &&
         Clock::now() < deadline) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    else if (n == 0) break;
    else std::this_thread::sleep_for(1ms);
  }
  return got;
}

ControlServer::Handler echo() {
  return [](std::string_view line) { return "{\"pid\":" + std::to_string(::getpid()) + ",\"got\":\"" + std::string(line) + "\"}"; };
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
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

TEST(ControlServer, AnIdleClientDelaysNobody) {
  TempDir d;
  ControlServer s(d.path + "/ctl", echo());
  s.start();
  UniqueFd idle = connect_to(s.path());
  std::string half = "sta";  // half a command, then silence
  ASSERT_EQ(::send(idle.get(), half.data(), half.size(), 0), 3);
  auto t0 = Clock::now();
  UniqueFd c = connect_to(s.path());
  ASSERT_EQ(::send(c.get(), "status\n", 7, 0), 7);
  std::string got = read_lines(c.get(), 1);
  EXPECT_NE(got.find("\"got\":\"status\""), std::string::npos) << got;
  EXPECT_LT(Clock::now() - t0, 500ms);
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
  ASSERT_EQ(::send(c.get(), "status\n", 7, 0), 7);
  EXPECT_EQ(read_lines(c.get(), 1), "{\"server\":\"B\"}\n");
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
