#!/usr/bin/env bash
# Child::stop() after Child::wait(): wait() had set the pid to -1, and stop() then sent
# kill(-1, SIGTERM) (every process root may signal), waited out its grace period, sent
# kill(-1, SIGKILL) and reaped whichever child waitpid(-1) returned. The class is built here
# from src/cli/process.cpp and run as PID 1 of a PID namespace of its own, where "every
# process" is only a sentinel child: stop() after wait() must leave the sentinel running.
source "$(dirname "$0")/lib.sh"
require_root
require g++ unshare
: "${LOOPDIO_SOURCE:?run through ctest, or set LOOPDIO_SOURCE to the source tree}"

cat >"$T/child_stop.cpp" <<'CPP'
#include <cstdio>
#include <exception>

#include "process.h"

using namespace loopdio::cli;
using namespace std::chrono_literals;

int main() {
  Child sentinel = Child::spawn({"sleep", "60"}, {});
  Child done = Child::spawn({"true"}, {});
  int rc = done.wait();
  int again = done.stop(200ms);  // already reaped: must signal nobody
  bool sentinel_runs = false;
  try {
    sentinel_runs = !sentinel.try_wait();
  } catch (const std::exception& e) {  // reaped by someone else's waitpid(-1)
    std::printf("sentinel: %s\n", e.what());
  }
  std::printf("wait %d, stop after wait %d, sentinel %s\n", rc, again,
              sentinel_runs ? "running" : "killed");
  return rc == 0 && again == 0 && sentinel_runs ? 0 : 1;
}
CPP
g++ -std=c++20 -Wall -Wextra -I"$LOOPDIO_SOURCE/include" -I"$LOOPDIO_SOURCE/src/cli" \
  "$T/child_stop.cpp" "$LOOPDIO_SOURCE/src/cli/process.cpp" -o "$T/child_stop" || fail "build"
# Never outside a namespace of its own: on the faulty code it signals everything it can.
unshare --pid --fork --kill-child true || skip "cannot make a PID namespace here"
unshare --pid --fork --kill-child "$T/child_stop" || fail "Child::stop after wait signalled other processes"
pass "Child::stop after wait signals nobody"
