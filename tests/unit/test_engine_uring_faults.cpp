// The io_uring engine when the ring itself fails: every request ends, with an error, and
// the next request gets a fresh ring. Regression: the engine counted transfers as in flight
// before io_uring_submit_and_wait, so when that call failed it waited for completions the
// kernel never got, retrying a failing io_uring_wait_cqe for ever: the worker thread hung,
// and with it every later direct-I/O switch (which waits for requests to drain).
// Each case runs in a child process, so that a hang is a failure, not a stuck test.
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "loopdio/aligned_buffer.h"
#include "loopdio/engine.h"
#include "loopdio/engine_uring_hooks.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"
#include "skip.h"

using namespace loopdio;
using namespace std::chrono_literals;

namespace {

// Runs `body` in a child; its exit status, or -1 when it had not finished within 10 s.
int in_child(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  for (int i = 0; i < 1000; ++i) {
    int status;
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
    std::this_thread::sleep_for(10ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

class UringFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "uring-faults-" + std::to_string(::getpid()) + ".img";
    UniqueFd fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 1 << 20), 0);
    fd_ = std::move(fd);
    try {
      make_uring_engine(8, fd_.get());
    } catch (const Error& e) {
      std::string lacks = test::kernel_lacks_io_uring(e.code());
      if (!lacks.empty()) GTEST_SKIP() << "kernel lacks: " << lacks;
      FAIL() << "the kernel refuses io_uring: " << e.what();
    }
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  // Four 4 KiB reads through an engine with `hooks`; 0 when each op got `want`, else 1.
  int four_reads(UringHooks hooks, std::int64_t want) {
    auto engine = make_uring_engine(8, fd_.get(), std::move(hooks));
    AlignedBuffer buf(4096, 4 * 4096);
    IoOp ops[4];
    for (int i = 0; i < 4; ++i)
      ops[i] = {IoKind::kRead, false, fd_.get(), buf.data() + i * 4096, 4096,
                static_cast<std::uint64_t>(i) * 4096, 0};
    engine->run(ops);
    for (const IoOp& op : ops)
      if (op.result != want) return 1;
    // The thread's next request gets a fresh ring and works.
    for (IoOp& op : ops) op.result = 0;
    engine->run(ops);
    for (const IoOp& op : ops)
      if (op.result != 4096 && want != 4096) return 2;
    return 0;
  }

  std::string path_;
  UniqueFd fd_;
};

}  // namespace

TEST_F(UringFaults, SubmitThatFailsEndsTheRequest) {
  // io_uring_enter fails before the kernel took anything (as on ENOMEM), then works again.
  int rc = in_child([&] {
    auto calls = std::make_shared<int>(0);
    UringHooks h = UringHooks::real();
    auto real = h.submit_and_wait;
    h.submit_and_wait = [calls, real](struct io_uring* r, unsigned n) {
      return ++*calls == 1 ? -ENOMEM : real(r, n);
    };
    return four_reads(h, -ENOMEM);
  });
  EXPECT_EQ(rc, 0) << (rc < 0 ? "the request hung" : "wrong results");
}

TEST_F(UringFaults, WaitThatKeepsFailingEndsTheRequest) {
  // The kernel takes the transfers, then every wait fails: the request ends with the error
  // after a few tries instead of waiting for ever.
  int rc = in_child([&] {
    UringHooks h = UringHooks::real();
    auto real = h.submit_and_wait;
    h.submit_and_wait = [real](struct io_uring* r, unsigned) {
      // Submit without waiting, then report the wait's failure when there is nothing to take.
      int n = real(r, 0);
      return n > 0 ? n : -EFAULT;
    };
    h.wait_cqe = [](struct io_uring*, struct io_uring_cqe**) { return -EFAULT; };
    auto engine = make_uring_engine(8, fd_.get(), h);
    AlignedBuffer buf(4096, 4 * 4096);
    IoOp ops[4];
    for (int i = 0; i < 4; ++i)
      ops[i] = {IoKind::kRead, false, fd_.get(), buf.data() + i * 4096, 4096,
                static_cast<std::uint64_t>(i) * 4096, 0};
    engine->run(ops);
    // Each op has a result: the completion (if the kernel posted it before the failure was
    // seen) or the error.
    for (const IoOp& op : ops)
      if (op.result != 4096 && op.result != -EFAULT) return 1;
    return 0;
  });
  EXPECT_EQ(rc, 0) << (rc < 0 ? "the request hung" : "wrong results");
}

TEST_F(UringFaults, TransientRefusalsAreRetried) {
  int rc = in_child([&] {
    auto calls = std::make_shared<int>(0);
    UringHooks h = UringHooks::real();
    auto real = h.submit_and_wait;
    h.submit_and_wait = [calls, real](struct io_uring* r, unsigned n) {
      return ++*calls <= 3 ? -EAGAIN : real(r, n);
    };
    return four_reads(h, 4096);
  });
  EXPECT_EQ(rc, 0) << (rc < 0 ? "the request hung" : "wrong results");
}
