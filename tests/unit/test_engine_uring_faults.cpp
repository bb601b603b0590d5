// The io_uring engine when the ring itself fails: every request ends, and the next request
// gets a fresh ring, but never before the kernel is done with every buffer it was handed.
// Regressions: (1) transfers counted as in flight before io_uring_submit_and_wait, so a
// failing wait was retried for ever for transfers the kernel never got (the worker hung);
// (2) after a failure the engine waited at most three times, then answered every op and
// closed the ring while transfers were still in flight: a late read landed in a buffer
// that another request was using, a late write overtook the client's retry.
// Each case runs in a child process, so that a hang is a failure, not a stuck test.
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

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
    if (::waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
    std::this_thread::sleep_for(10ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

constexpr std::size_t kLen = 4096;
constexpr char kCanary = '\xcc';

// Reads that stay in flight until the test says so: op i reads its own empty pipe, which
// the kernel takes and keeps until `feed(i)` writes the op's pattern into the pipe.
struct PipeReads {
  explicit PipeReads(std::size_t n) : buf(4096, n * kLen), ops(n) {
    std::memset(buf.data(), kCanary, n * kLen);
    for (std::size_t i = 0; i < n; ++i) {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
      rd.emplace_back(p[0]);
      wr.emplace_back(p[1]);
      ops[i] = {IoKind::kRead, false, p[0], buf.data() + i * kLen, kLen, 0, 0};
    }
  }
  static char pattern(std::size_t i) { return static_cast<char>('A' + i); }
  void feed(std::size_t i) {
    std::vector<char> data(kLen, pattern(i));
    if (::write(wr[i].get(), data.data(), kLen) != static_cast<ssize_t>(kLen)) std::abort();
    fed.push_back(i);
  }
  bool was_fed(std::size_t i) const { return std::find(fed.begin(), fed.end(), i) != fed.end(); }
  // The kernel completed op i's read: its pipe was fed and is empty again.
  bool drained(std::size_t i) const {
    int n = -1;
    return was_fed(i) && ::ioctl(rd[i].get(), FIONREAD, &n) == 0 && n == 0;
  }
  bool holds(std::size_t i, char c) const {
    const char* p = buf.data() + i * kLen;
    return std::all_of(p, p + kLen, [c](char x) { return x == c; });
  }

  AlignedBuffer buf;
  std::vector<IoOp> ops;
  std::vector<UniqueFd> rd, wr;
  std::vector<std::size_t> fed;
};

// After run(): 0 when each of the first `taken` ops (the ones the kernel took) completed in
// the kernel and was answered with its data, and every other op failed with `err` and its
// buffer still holds the canary; else which rule was broken.
int check_answers(const PipeReads& r, std::size_t taken, std::int64_t err) {
  for (std::size_t i = 0; i < taken; ++i)
    if (!r.drained(i)) return 3;  // run() returned while the kernel still owned buffer i
  for (std::size_t i = 0; i < taken; ++i)
    if (r.ops[i].result != static_cast<std::int64_t>(kLen) || !r.holds(i, r.pattern(i))) return 4;
  for (std::size_t i = taken; i < r.ops.size(); ++i)
    if (r.ops[i].result != err || !r.holds(i, kCanary)) return 5;
  return 0;
}

std::string explain(int rc) {
  switch (rc) {
    case -1: return "the request hung";
    case 0: return "";
    case 2: return "the next request, on a fresh ring, failed";
    case 3: return "run() returned while a transfer the kernel took was still in flight";
    case 4: return "a transfer the kernel took was not answered with its own data";
    case 5: return "an op the kernel never took did not fail with the error, or its buffer changed";
    case 10: return "the kernel did not take the eight transfers the test counts on";
    default: return "wrong results (" + std::to_string(rc) + ")";
  }
}

// Hooks for a ring that fails while transfers are in flight: the first submission is real
// but does not wait (the pipes are empty), and records how many transfers the kernel took;
// every later submission fails with ENOMEM. Each wait goes through `wait`. Once `healed` is
// set, both calls are the real ones again.
struct FailingRing {
  int taken = -1;
  bool healed = false;
};
UringHooks failing_ring_hooks(std::shared_ptr<FailingRing> s,
                              std::function<int(struct io_uring*, struct io_uring_cqe**)> wait) {
  UringHooks h = UringHooks::real();
  auto real_submit = h.submit_and_wait;
  auto real_wait = h.wait_cqe;
  h.submit_and_wait = [s, real_submit](struct io_uring* ring, unsigned n) {
    if (s->healed) return real_submit(ring, n);
    if (s->taken >= 0) return -ENOMEM;
    s->taken = real_submit(ring, 0);
    return s->taken;
  };
  h.wait_cqe = [s, real_wait, wait](struct io_uring* ring, struct io_uring_cqe** cqe) {
    return s->healed ? real_wait(ring, cqe) : wait(ring, cqe);
  };
  return h;
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
      make_uring_engine(kDepth, fd_.get());
    } catch (const Error& e) {
      std::string lacks = test::kernel_lacks_io_uring(e.code());
      if (!lacks.empty()) GTEST_SKIP() << "kernel lacks: " << lacks;
      FAIL() << "the kernel refuses io_uring: " << e.what();
    }
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  // Four 4 KiB reads of the image; 0 when each got `want`.
  int four_reads(Engine& engine, std::int64_t want) {
    AlignedBuffer buf(4096, 4 * kLen);
    IoOp ops[4];
    for (int i = 0; i < 4; ++i)
      ops[i] = {IoKind::kRead, false, fd_.get(), buf.data() + i * kLen, kLen,
                static_cast<std::uint64_t>(i) * kLen, 0};
    engine.run(ops);
    for (const IoOp& op : ops)
      if (op.result != want) return 1;
    return 0;
  }

  // The first request through `hooks` gets `want` in every op; the thread's next request
  // gets a fresh ring (or the same, healthy one) and reads for real.
  int two_requests(UringHooks hooks, std::int64_t want) {
    auto engine = make_uring_engine(kDepth, fd_.get(), std::move(hooks));
    if (four_reads(*engine, want) != 0) return 1;
    return four_reads(*engine, kLen) != 0 ? 2 : 0;
  }

  static constexpr unsigned kDepth = 8;
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
    return two_requests(h, -ENOMEM);
  });
  EXPECT_EQ(rc, 0) << explain(rc);
}

TEST_F(UringFaults, TransientRefusalsAreRetried) {
  int rc = in_child([&] {
    auto calls = std::make_shared<int>(0);
    UringHooks h = UringHooks::real();
    auto real = h.submit_and_wait;
    h.submit_and_wait = [calls, real](struct io_uring* r, unsigned n) {
      return ++*calls <= 3 ? -EAGAIN : real(r, n);
    };
    return two_requests(h, kLen);
  });
  EXPECT_EQ(rc, 0) << explain(rc);
}

TEST_F(UringFaults, FailingWaitsDoNotHandBackBuffersTheKernelOwns) {
  // Twelve reads on a ring of depth 8: the kernel takes eight, then io_uring_enter fails
  // (ENOMEM) for every submission and for the next ten waits, and only after that do the
  // eight reads get their data. run() must not return before the kernel completed all
  // eight; the four it never took fail with the error and their buffers stay untouched.
  int rc = in_child([&] {
    PipeReads r(12);
    auto s = std::make_shared<FailingRing>();
    int failed_waits = 0;
    auto real_wait = UringHooks::real().wait_cqe;
    auto engine = make_uring_engine(
        kDepth, fd_.get(),
        failing_ring_hooks(s, [&](struct io_uring* ring, struct io_uring_cqe** cqe) {
          if (++failed_waits <= 10) return -ENOMEM;
          if (r.fed.empty())
            for (int i = 0; i < s->taken; ++i) r.feed(static_cast<std::size_t>(i));
          return real_wait(ring, cqe);
        }));
    engine->run(r.ops);
    s->healed = true;
    if (s->taken != static_cast<int>(kDepth)) return 10;
    if (int bad = check_answers(r, kDepth, -ENOMEM); bad != 0) return bad;
    return four_reads(*engine, kLen) != 0 ? 2 : 0;
  });
  EXPECT_EQ(rc, 0) << explain(rc);
}

TEST_F(UringFaults, SuccessfulWaitsAfterAFailureGoOnUntilTheLastTransfer) {
  // The kernel takes eight reads, then every submission fails; the waits work, and each
  // brings one completion. However many waits that takes, run() returns only after the last.
  int rc = in_child([&] {
    PipeReads r(kDepth);
    auto s = std::make_shared<FailingRing>();
    auto real_wait = UringHooks::real().wait_cqe;
    auto engine = make_uring_engine(
        kDepth, fd_.get(),
        failing_ring_hooks(s, [&](struct io_uring* ring, struct io_uring_cqe** cqe) {
          if (r.fed.size() < r.ops.size()) r.feed(r.fed.size());
          return real_wait(ring, cqe);
        }));
    engine->run(r.ops);
    s->healed = true;
    if (s->taken != static_cast<int>(kDepth)) return 10;
    if (int bad = check_answers(r, kDepth, -ENOMEM); bad != 0) return bad;
    return four_reads(*engine, kLen) != 0 ? 2 : 0;
  });
  EXPECT_EQ(rc, 0) << explain(rc);
}
