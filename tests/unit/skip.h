// When a unit test may be skipped. In CI (CI=true) a skip is a failure, unless the kernel
// truly lacks the feature (io_uring compiled out or switched off by the administrator), and
// then the reason is printed: a green run must mean the code was tested.
#pragma once

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>

namespace loopdio::test {

inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Why this kernel has no io_uring for us, or empty when it has (the refusal `err` is then
// a defect to report, not a reason to skip).
inline std::string kernel_lacks_io_uring(int err) {
  if (err == ENOSYS) return "io_uring is not built into this kernel (ENOSYS)";
  std::ifstream in("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  if (in >> disabled && disabled != 0)
    return "kernel.io_uring_disabled=" + std::to_string(disabled);
  return {};
}

}  // namespace loopdio::test

// Skips outside CI; fails in CI. For a missing tool or filesystem feature, never the kernel.
#define LOOPDIO_SKIP_OUTSIDE_CI(why)                                            \
  do {                                                                          \
    if (::loopdio::test::in_ci()) FAIL() << "in CI nothing may be skipped: " << why; \
    GTEST_SKIP() << why;                                                        \
  } while (0)
