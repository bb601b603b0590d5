// The reserve for the server's own allocations: with RLIMIT_DATA reached and malloc refusing
// everything, as when clients' request buffers fill memory-max, operator new still serves
// loopdio's work from the reserve, gives freed blocks back to it, and throws std::bad_alloc
// only beyond it. Each case runs in a child process, whose memory it fills for good.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "loopdio/process_limits.h"
#include "loopdio/reserve_heap.h"

namespace loopdio {
namespace {

// A sanitizer's runtime allocates from terabytes of reserved shadow and arenas of its own:
// RLIMIT_DATA does not make its malloc fail the way glibc's does. The Release build runs these.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)

// Runs `body` in a child whose malloc refuses everything (RLIMIT_DATA just above what it
// holds, then filled with blocks from 1 MiB down to 16 bytes), with a reserve of `reserve`
// bytes armed first. The child's exit status: 0 when `body` returned true.
// The filling blocks, kept: unused, the compiler would drop the calls.
void* volatile g_sink;
bool keep(void* p) {
  g_sink = p;
  return p != nullptr;
}

int in_full_child(std::size_t reserve, bool (*body)()) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (reserve && !arm_reserve_heap(reserve)) ::_exit(10);
    struct rlimit rl {};
    ::getrlimit(RLIMIT_DATA, &rl);
    rl.rlim_cur = private_memory() + (4u << 20);
    if (::setrlimit(RLIMIT_DATA, &rl) != 0) ::_exit(11);
    for (std::size_t size = 1u << 20; size >= 16; size /= 2)
      for (int i = 0; i < 1 << 20 && keep(std::malloc(size)); ++i) {
      }
    if (keep(std::malloc(16))) ::_exit(12);  // not full: the case would prove nothing
    try {
      ::_exit(body() ? 0 : 1);
    } catch (const std::bad_alloc&) {
      ::_exit(13);
    }
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool work_is_served() {
  const ReserveStats before = reserve_heap_stats();
  {
    std::string answer(100000, 'x');  // a control command's answer
    std::vector<std::unique_ptr<int>> small;
    for (int i = 0; i < 1000; ++i) small.push_back(std::make_unique<int>(i));
    struct alignas(256) Page {
      char bytes[512];
    };
    auto page = std::make_unique<Page>();
    if (reinterpret_cast<std::uintptr_t>(page.get()) % 256 != 0) return false;
    if (answer.back() != 'x' || *small[999] != 999) return false;
  }
  const ReserveStats after = reserve_heap_stats();
  // Served by the reserve, and all of it given back.
  return after.fallbacks >= before.fallbacks + 1002 && after.used == before.used &&
         after.peak >= 100000;
}

bool freed_blocks_are_reused() {
  // Ten times the reserve, a block at a time: only reuse makes it fit.
  for (int i = 0; i < 10 * 4096; ++i) {
    auto block = std::make_unique<char[]>(1024);
    block[0] = 1;
  }
  return reserve_heap_stats().refused == 0;
}

bool beyond_it_is_bad_alloc() {
  try {
    std::vector<char> v(8u << 20);  // more than the reserve
    return false;
  } catch (const std::bad_alloc&) {
  }
  auto* p = new (std::nothrow) char[8u << 20];
  if (p) return false;
  // And afterwards small work still goes on.
  std::string s(1000, 'y');
  return reserve_heap_stats().refused >= 2 && s.size() == 1000;
}

bool without_reserve() {
  std::string answer(100000, 'x');
  return true;
}

TEST(ReserveHeap, ServesTheServersOwnWorkWhenMallocRefusesEverything) {
  EXPECT_EQ(in_full_child(4u << 20, work_is_served), 0);
}

TEST(ReserveHeap, ReusesFreedBlocks) {
  EXPECT_EQ(in_full_child(4u << 20, freed_blocks_are_reused), 0);
}

TEST(ReserveHeap, ThrowsBadAllocBeyondIt) {
  EXPECT_EQ(in_full_child(4u << 20, beyond_it_is_bad_alloc), 0);
}

// What the reserve is for: without one, the same work fails (13: std::bad_alloc).
TEST(ReserveHeap, WithoutItTheSameWorkFails) {
  EXPECT_EQ(in_full_child(0, without_reserve), 13);
}

#endif

}  // namespace
}  // namespace loopdio
