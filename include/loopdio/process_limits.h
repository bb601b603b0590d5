// The limits that make one nbdkit process a host's bounded disk service, applied once it
// serves (nbdkit's .after_fork: after it forked into the background, after --run's command
// was started, before the first connection). nbdkit allocates every request's buffer (up to
// 64 MiB) before any plugin sees the request, and keeps it per worker thread, so only the
// kernel can bound that memory: RLIMIT_DATA makes the allocation fail, and nbdkit answers
// that request with ENOMEM and goes on. Thread stacks count too, so new threads get small
// ones; freed request buffers go back to the system at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loopdio/options.h"

namespace loopdio {

// Descriptors one connection may cost: its socket, nbdkit's status pipe, and one eventfd or
// io_uring per worker thread (nbdkit's default of 16 threads; with more, fewer fit).
inline constexpr unsigned kFdsPerConnection = 4 + 16;
// Stack of every thread started from now on (glibc's default is RLIMIT_STACK, 8 MiB).
inline constexpr std::size_t kThreadStack = 256 * 1024;
// Freed buffers this large or larger go back to the system at once.
inline constexpr int kMmapThreshold = 1 << 20;

struct ProcessLimits {
  std::uint64_t memory_max = 0;   // the RLIMIT_DATA now in force (0: none)
  std::uint64_t fd_limit = 0;     // RLIMIT_NOFILE now in force
  unsigned fd_connections = 0;    // connections (open and handshaking) the fds allow
  std::vector<std::string> notes; // what could not be done as asked, one line each
};

// Applies `o.memory_max` and the rest to this process. Never throws.
ProcessLimits apply_process_limits(const Options& o) noexcept;

// The process's private writable memory now (VmData), or 0 when it cannot be read.
std::uint64_t private_memory() noexcept;

}  // namespace loopdio
