// The two liburing calls through which the io_uring engine waits, replaceable so that the
// unit tests can make a ring fail the way a broken kernel or exhausted memory would, and
// check that no request hangs for what the kernel never took, nor ends while the kernel
// still holds one of its buffers.
#pragma once

#include <functional>
#include <memory>

#include "loopdio/engine.h"

struct io_uring;
struct io_uring_cqe;

namespace loopdio {

struct UringHooks {
  // io_uring_submit_and_wait: the number of entries the kernel took, or -errno.
  std::function<int(struct io_uring*, unsigned wait_nr)> submit_and_wait;
  // io_uring_wait_cqe: 0, or -errno.
  std::function<int(struct io_uring*, struct io_uring_cqe**)> wait_cqe;

  static UringHooks real();
};

// make_uring_engine with the given hooks (tests only).
std::unique_ptr<Engine> make_uring_engine(unsigned depth, int fd, UringHooks hooks);

}  // namespace loopdio
