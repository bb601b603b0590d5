// The io_uring engine: one ring per nbdkit worker thread, created at the thread's first
// request and torn down when the thread exits. A request is one io_uring_enter that submits
// every transfer and waits for them, and with SINGLE_ISSUER|DEFER_TASKRUN the completions
// are processed in that same call, by the thread that waits for them: no other thread is
// ever woken. Only what the kernel accepted is waited for, and all of it is, whatever
// fails: a ring that fails is given up (its requests fail with the error) only once the
// kernel has completed every transfer it took, and is replaced at the thread's next request.
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "loopdio/engine.h"
#include "loopdio/engine_uring_hooks.h"
#include "loopdio/error.h"
#include "loopdio/log.h"

namespace loopdio {
namespace {

// Ring memory is mapped by the kernel, and a ring made after another thread's ring was
// unmapped may get the same addresses. Creating and destroying rings under one mutex orders
// the old ring's last use before the new ring's first, for ThreadSanitizer too, which cannot
// see the kernel hand the pages over.
std::mutex g_ring_lifetime_mu;

// A ring with the backing's fd registered at index 0.
class Ring {
 public:
  Ring(unsigned depth, int fd) {
    std::lock_guard lock(g_ring_lifetime_mu);
    struct io_uring_params p {};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int r = io_uring_queue_init_params(depth, &ring_, &p);
    if (r == -EINVAL) {  // before Linux 6.1
      p = {};
      r = io_uring_queue_init_params(depth, &ring_, &p);
    }
    if (r < 0) throw sys_error("io_uring_queue_init", -r);
    if (io_uring_register_files(&ring_, &fd, 1) == 0) fixed_fd_ = fd;
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() {
    std::lock_guard lock(g_ring_lifetime_mu);
    io_uring_queue_exit(&ring_);
  }

  struct io_uring* get() { return &ring_; }
  int fixed_fd() const { return fixed_fd_; }

 private:
  struct io_uring ring_ {};
  int fixed_fd_ = -1;  // the fd registered at index 0, or -1
};

// One request's transfers on their way through a ring.
struct Batch {
  std::span<IoOp> ops;
  std::size_t next = 0;      // the first op never handed to the ring
  std::size_t queued = 0;    // in the submission queue, not yet taken by the kernel
  std::size_t inflight = 0;  // taken by the kernel, not yet completed
  std::size_t done = 0;
  std::vector<std::size_t>& retry;  // refused with -EAGAIN: to queue again
  std::vector<bool>& finished;

  bool has_work() const { return next < ops.size() || !retry.empty(); }
  void finish(std::size_t i, std::int64_t result) {
    ops[i].result = result;
    finished[i] = true;
    ++done;
  }
};

class UringEngine final : public Engine {
 public:
  UringEngine(unsigned depth, int fd, UringHooks hooks)
      : depth_(depth), fd_(fd), hooks_(std::move(hooks)) {
    Ring probe(depth, fd);  // fail now, at open, when the kernel refuses io_uring
  }

  const char* name() const noexcept override { return "io_uring"; }

  void run(std::span<IoOp> ops) noexcept override {
    if (ops.empty()) return;
    std::unique_ptr<Ring>& ring = thread_ring();
    std::vector<std::size_t>* retry = nullptr;
    std::vector<bool>* finished = nullptr;
    try {
      if (!ring) ring = std::make_unique<Ring>(depth_, fd_);
      retry = &thread_retries();
      finished = &thread_finished(ops.size());
    } catch (const Error& e) {
      return fail_all(ops, e.code() ? -e.code() : -ENOMEM);
    } catch (...) {
      return fail_all(ops, -ENOMEM);
    }
    Batch b{ops, 0, 0, 0, 0, *retry, *finished};
    if (!drive(*ring, b)) ring.reset();  // given up: the next request gets a fresh ring
  }

 private:
  // Transient refusals of io_uring_enter tried again before the ring is given up.
  static constexpr int kMaxTransient = 1000;
  // Pauses between failing waits for transfers the kernel still owns.
  static constexpr auto kFirstPause = std::chrono::microseconds(50);
  static constexpr auto kMaxPause = std::chrono::microseconds(100'000);

  static std::unique_ptr<Ring>& thread_ring() {
    thread_local std::unique_ptr<Ring> ring;
    return ring;
  }
  static std::vector<std::size_t>& thread_retries() {
    thread_local std::vector<std::size_t> v;
    v.clear();
    return v;
  }
  static std::vector<bool>& thread_finished(std::size_t n) {
    thread_local std::vector<bool> v;
    v.assign(n, false);
    return v;
  }
  static void fail_all(std::span<IoOp> ops, int err) {
    for (IoOp& op : ops) op.result = err;
  }

  // Runs the batch to the end. False when the ring failed and was given up.
  bool drive(Ring& ring, Batch& b) {
    int transient = 0;
    while (b.done < b.ops.size()) {
      queue(ring, b);
      // Waits for every transfer outstanding, not the first: the request returns only when
      // all are done, and with DEFER_TASKRUN the kernel then wakes the thread once for the
      // batch instead of once per completion. A submission the kernel takes only part of
      // returns without waiting (io_uring_enter), so this never waits for what it lacks.
      auto wait = static_cast<unsigned>(b.queued + b.inflight);
      int r = hooks_.submit_and_wait(ring.get(), wait);
      if (r >= 0) {
        auto taken = std::min<std::size_t>(static_cast<std::size_t>(r), b.queued);
        b.queued -= taken;
        b.inflight += taken;
        transient = 0;
      } else if ((r == -EINTR || r == -EAGAIN || r == -EBUSY) && ++transient < kMaxTransient) {
        if (r != -EINTR) std::this_thread::sleep_for(std::chrono::microseconds(50));
      } else {
        give_up(ring, b, r);
        return false;
      }
      reap(ring, b);
    }
    return true;
  }

  // Fills the submission queue, keeping at most depth_ transfers queued or in flight.
  void queue(Ring& ring, Batch& b) {
    while (b.has_work() && b.queued + b.inflight < depth_) {
      struct io_uring_sqe* sqe = io_uring_get_sqe(ring.get());
      if (!sqe) break;
      std::size_t i;
      if (!b.retry.empty()) {
        i = b.retry.back();
        b.retry.pop_back();
      } else {
        i = b.next++;
      }
      prepare(sqe, b.ops[i], i, ring.fixed_fd());
      ++b.queued;
    }
  }

  static void prepare(struct io_uring_sqe* sqe, const IoOp& op, std::size_t i, int fixed_fd) {
    int fd = op.fd == fixed_fd ? 0 : op.fd;
    auto len = static_cast<unsigned>(op.len);
    if (op.kind == IoKind::kRead)
      io_uring_prep_read(sqe, fd, op.buf, len, op.off);
    else
      io_uring_prep_write(sqe, fd, op.buf, len, op.off);
    if (op.fd == fixed_fd) sqe->flags |= IOSQE_FIXED_FILE;
    sqe->rw_flags = op.dsync ? RWF_DSYNC : 0;
    io_uring_sqe_set_data64(sqe, i);
  }

  // Takes every completion there is; -EAGAIN sends the op round again.
  static void reap(Ring& ring, Batch& b) {
    struct io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring.get(), head, cqe) {
      ++n;
      if (b.inflight > 0) --b.inflight;
      auto i = static_cast<std::size_t>(io_uring_cqe_get_data64(cqe));
      if (i >= b.ops.size() || b.finished[i]) continue;  // not of this batch: cannot be
      if (cqe->res == -EAGAIN)
        b.retry.push_back(i);
      else
        b.finish(i, cqe->res);
    }
    io_uring_cq_advance(ring.get(), n);
  }

  // The ring failed with `err`. Every transfer the kernel took still owns its buffer: a late
  // read would land in memory the caller has reused, a late write would overtake the
  // client's retry. Closing the ring does not wait for them (io_uring_release only queues
  // the teardown to a kernel workqueue, io_ring_ctx_wait_and_kill in io_uring/io_uring.c,
  // and a transfer already at the device cannot be cancelled), so they are waited for here,
  // for as long as it takes: waiting submits nothing, and a wait that fails is tried again
  // after a pause that grows to kMaxPause. Then every op without a result fails with `err`.
  void give_up(Ring& ring, Batch& b, int err) {
    auto pause = kFirstPause;
    bool told = false;
    while (b.inflight > 0) {
      struct io_uring_cqe* cqe = nullptr;
      int r = hooks_.wait_cqe(ring.get(), &cqe);
      std::size_t before = b.inflight;
      reap(ring, b);
      if (r == 0 || b.inflight < before || r == -EINTR) {
        pause = kFirstPause;
        continue;
      }
      if (!told) told = tell_waiting(err, r, b.inflight);
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kMaxPause);
    }
    for (std::size_t i = 0; i < b.ops.size(); ++i)
      if (!b.finished[i]) b.finish(i, err);
  }

  // Says once why a request is taking long. Always true.
  static bool tell_waiting(int err, int wait_err, std::size_t inflight) noexcept {
    try {
      notice("io_uring: the ring failed (" + std::string(std::strerror(-err)) +
             "), waiting on it fails (" + std::strerror(-wait_err) + "): waiting for the " +
             std::to_string(inflight) + " transfers the kernel still holds");
    } catch (...) {
    }
    return true;
  }

  unsigned depth_;
  int fd_;
  UringHooks hooks_;
};

}  // namespace

UringHooks UringHooks::real() {
  UringHooks h;
  h.submit_and_wait = [](struct io_uring* r, unsigned n) { return io_uring_submit_and_wait(r, n); };
  h.wait_cqe = [](struct io_uring* r, struct io_uring_cqe** c) { return io_uring_wait_cqe(r, c); };
  return h;
}

std::unique_ptr<Engine> make_uring_engine(unsigned depth, int fd) {
  return std::make_unique<UringEngine>(depth, fd, UringHooks::real());
}

std::unique_ptr<Engine> make_uring_engine(unsigned depth, int fd, UringHooks hooks) {
  return std::make_unique<UringEngine>(depth, fd, std::move(hooks));
}

}  // namespace loopdio
