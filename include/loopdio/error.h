// The one exception type of the core library. Its message is a complete, one-line,
// user-facing sentence ("offset=4k: beyond the end of disk.img (2048 bytes)"); the nbdkit glue
// and the CLI print it as it is.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace loopdio {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int err = 0) : std::runtime_error(what), errno_(err) {}
  // The errno that caused it, 0 when the cause was not a system call.
  int code() const noexcept { return errno_; }

 private:
  int errno_;
};

// "what: strerror(err)", the nbdkit house format for a failed system call.
inline Error sys_error(const std::string& what, int err = errno) {
  return Error(what + ": " + std::strerror(err), err);
}

}  // namespace loopdio
