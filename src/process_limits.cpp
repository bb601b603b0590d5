// The process's memory and descriptor limits; see process_limits.h.
#include "loopdio/process_limits.h"

#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include "loopdio/backing.h"
#include "loopdio/dir_entries.h"
#include "loopdio/reserve_heap.h"

namespace loopdio {
namespace {

unsigned open_fds() {
  try {
    return static_cast<unsigned>(dir_entries(AT_FDCWD, "/proc/self/fd", "/proc/self/fd").size());
  } catch (...) {
    return 0;
  }
}

// Threads started from now on get kThreadStack (unless their creator sets a size), once a
// thread is seen to start with it: glibc refuses (EINVAL) a stack that cannot hold the
// static TLS, which a sanitizer's runtime makes larger than that.
void small_stacks(ProcessLimits& pl) {
  pthread_attr_t a;
  if (::pthread_getattr_default_np(&a) != 0) return;
  std::size_t size = 0;
  ::pthread_attr_getstacksize(&a, &size);
  if (size <= kThreadStack) {
    ::pthread_attr_destroy(&a);
    return;
  }
  int r = ::pthread_attr_setstacksize(&a, kThreadStack);
  if (r == 0) r = ::pthread_setattr_default_np(&a);
  if (r == 0) {
    pthread_t probe;
    r = ::pthread_create(&probe, nullptr, [](void*) -> void* { return nullptr; }, nullptr);
    if (r == 0) {
      ::pthread_join(probe, nullptr);
    } else {  // back to the size threads started with before
      ::pthread_attr_setstacksize(&a, size);
      ::pthread_setattr_default_np(&a);
    }
  }
  if (r != 0)
    pl.notes.push_back("thread stacks stay at " + human_size(size) + ": a thread with " +
                       human_size(kThreadStack) + " does not start: " + std::strerror(r));
  ::pthread_attr_destroy(&a);
}

void limit_memory(const Options& o, ProcessLimits& pl) {
  struct rlimit rl {};
  ::getrlimit(RLIMIT_DATA, &rl);
  const std::uint64_t now = private_memory();
  if (o.memory_max == 0) {
    pl.memory_max = rl.rlim_cur == RLIM_INFINITY ? 0 : rl.rlim_cur;
    return;
  }
  // Room for what the process already holds: a sanitizer's shadow memory is terabytes.
  if (now + (std::uint64_t{64} << 20) > o.memory_max) {
    pl.notes.push_back("memory-max=" + human_size(o.memory_max) + " is not enforced: the " +
                       "process already holds " + human_size(now) + " of private memory");
    return;
  }
  rlim_t want = o.memory_max;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) want = rl.rlim_max;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) want = rl.rlim_cur;  // stricter already
  rl.rlim_cur = want;
  if (::setrlimit(RLIMIT_DATA, &rl) != 0) {
    pl.notes.push_back(std::string("memory-max: setrlimit(RLIMIT_DATA): ") + std::strerror(errno));
    return;
  }
  pl.memory_max = want;
  if (want < o.memory_max)
    pl.notes.push_back("memory-max=" + human_size(o.memory_max) + ": the process's hard limit " +
                       "is lower; " + human_size(want) + " applies");
}

void limit_fds(const Options& o, ProcessLimits& pl) {
  struct rlimit rl {};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {  // as qemu does: the soft limit is only a default
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  pl.fd_limit = rl.rlim_cur;
  // Beyond the descriptors open now (listening sockets, logs, the control socket): room for
  // a flood of connects that nbdkit accepts before the plugin can refuse them, each with a
  // socket and a pipe for a moment. nbdkit 1.42 never closes the socket of a connection
  // whose pipe2 fails with EMFILE: the server must not get there.
  const std::uint64_t reserve =
      open_fds() + std::max<std::uint64_t>(64, static_cast<std::uint64_t>(pl.fd_limit) / 4);
  const std::uint64_t spare = pl.fd_limit > reserve ? pl.fd_limit - reserve : 0;
  const std::uint64_t fit = spare / kFdsPerConnection;
  const std::uint64_t want = std::uint64_t{o.max_connections} + o.max_handshakes;
  pl.fd_connections = static_cast<unsigned>(std::min(fit, want));
  if (fit < want)
    pl.notes.push_back("the descriptor limit (" + std::to_string(pl.fd_limit) + ") leaves room " +
                       "for " + std::to_string(fit) + " connections, not max-connections + " +
                       "max-handshakes = " + std::to_string(want) + ": raise it (LimitNOFILE=, " +
                       "ulimit -n) or lower them");
}

}  // namespace

std::uint64_t private_memory() noexcept {
  try {
    std::ifstream in("/proc/self/status");
    std::string key;
    std::uint64_t kib = 0;
    while (in >> key) {
      if (key == "VmData:" && in >> kib) return kib << 10;
      in.ignore(4096, '\n');
    }
  } catch (...) {
  }
  return 0;
}

ProcessLimits apply_process_limits(const Options& o) noexcept {
  ProcessLimits pl;
  try {
    // Freed request buffers (nbdkit's grow to the largest request and are freed with their
    // thread) go back to the system instead of staying in malloc's arenas.
    ::mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
    limit_memory(o, pl);
    if (pl.memory_max) {
      small_stacks(pl);  // stacks count against the limit
      // The server's own allocations' fallback, once clients' buffers fill the limit.
      if (!arm_reserve_heap())
        pl.notes.push_back(std::string("memory-max: no reserve for the server's own work: mmap: ") +
                           std::strerror(errno));
    }
    limit_fds(o, pl);
  } catch (...) {  // out of memory for the notes: the limits applied so far stay
  }
  return pl;
}

}  // namespace loopdio
