// The io_uring engine: one ring per nbdkit worker thread (so per connection: nbdkit's worker
// threads belong to one connection), created at the thread's first request and torn down
// when the thread exits. A request is one io_uring_enter that submits every transfer and
// waits for them, and with SINGLE_ISSUER|DEFER_TASKRUN the completions are processed in
// that same call, by the thread that waits for them: no other thread is ever woken.
#include <liburing.h>

#include <cerrno>
#include <string>
#include <vector>

#include "loopdio/engine.h"
#include "loopdio/error.h"

namespace loopdio {
namespace {

// A ring with the backing's fd registered at index 0.
class Ring {
 public:
  Ring(unsigned depth, int fd) {
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
  ~Ring() { io_uring_queue_exit(&ring_); }

  struct io_uring* get() { return &ring_; }
  int fixed_fd() const { return fixed_fd_; }

 private:
  struct io_uring ring_ {};
  int fixed_fd_ = -1;  // the fd registered at index 0, or -1
};

class UringEngine final : public Engine {
 public:
  UringEngine(unsigned depth, int fd) : depth_(depth), fd_(fd) {
    Ring probe(depth, fd);  // fail now, at open, when the kernel refuses io_uring
  }

  const char* name() const noexcept override { return "io_uring"; }

  void run(std::span<IoOp> ops) noexcept override {
    Ring* ring = thread_ring();
    if (!ring) {
      for (IoOp& op : ops) op.result = -ENOMEM;
      return;
    }
    std::size_t next = 0, inflight = 0, done = 0;
    std::vector<std::size_t>& retry = retries();
    while (done < ops.size()) {
      while ((next < ops.size() || !retry.empty()) && inflight < depth_) {
        struct io_uring_sqe* sqe = io_uring_get_sqe(ring->get());
        if (!sqe) break;
        std::size_t i = retry.empty() ? next++ : pop(retry);
        prepare(sqe, ops[i], i, ring->fixed_fd());
        ++inflight;
      }
      int r = io_uring_submit_and_wait(ring->get(), 1);
      if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
        fail_rest(ring, ops, retry, r, next, inflight, done);
        return;
      }
      reap(ring, ops, retry, inflight, done);
    }
  }

 private:
  Ring* thread_ring() noexcept {
    try {
      thread_local Ring ring(depth_, fd_);
      return &ring;
    } catch (...) {
      return nullptr;
    }
  }

  static std::vector<std::size_t>& retries() {
    thread_local std::vector<std::size_t> v;
    v.clear();
    return v;
  }

  static std::size_t pop(std::vector<std::size_t>& v) {
    std::size_t i = v.back();
    v.pop_back();
    return i;
  }

  static void prepare(struct io_uring_sqe* sqe, const IoOp& op, std::size_t i, int fixed_fd) {
    int fd = op.fd;
    if (op.kind == IoKind::kRead)
      io_uring_prep_read(sqe, fd == fixed_fd ? 0 : fd, op.buf, static_cast<unsigned>(op.len), op.off);
    else
      io_uring_prep_write(sqe, fd == fixed_fd ? 0 : fd, op.buf, static_cast<unsigned>(op.len), op.off);
    if (fd == fixed_fd) sqe->flags |= IOSQE_FIXED_FILE;
    sqe->rw_flags = op.dsync ? RWF_DSYNC : 0;
    io_uring_sqe_set_data64(sqe, i);
  }

  // -EAGAIN is retried; anything else is the op's result.
  static void reap(Ring* ring, std::span<IoOp> ops, std::vector<std::size_t>& retry,
                   std::size_t& inflight, std::size_t& done) {
    struct io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring->get(), head, cqe) {
      ++n;
      --inflight;
      std::size_t i = static_cast<std::size_t>(io_uring_cqe_get_data64(cqe));
      if (cqe->res == -EAGAIN) {
        retry.push_back(i);
      } else {
        ops[i].result = cqe->res;
        ++done;
      }
    }
    io_uring_cq_advance(ring->get(), n);
  }

  // The ring itself failed: fail what was never submitted, and wait out what is in flight
  // (the kernel still owns those buffers).
  static void fail_rest(Ring* ring, std::span<IoOp> ops, std::vector<std::size_t>& retry,
                        int err, std::size_t next, std::size_t& inflight, std::size_t& done) {
    for (std::size_t i = next; i < ops.size(); ++i) ops[i].result = err;
    for (std::size_t i : retry) ops[i].result = err;
    retry.clear();
    while (inflight > 0) {
      struct io_uring_cqe* cqe;
      if (io_uring_wait_cqe(ring->get(), &cqe) < 0) continue;
      reap(ring, ops, retry, inflight, done);
      for (std::size_t i : retry) ops[i].result = err;
      retry.clear();
    }
  }

  unsigned depth_;
  int fd_;
};

}  // namespace

std::unique_ptr<Engine> make_uring_engine(unsigned depth, int fd) {
  return std::make_unique<UringEngine>(depth, fd);
}

}  // namespace loopdio
