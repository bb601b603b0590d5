// The sync engine: the baseline every AIO engine is compared with, and the fallback when the
// kernel refuses an AIO context. Each op is one pread/pwritev2 from the calling thread.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

#include "loopdio/engine.h"

namespace loopdio {
namespace {

class SyncEngine final : public Engine {
 public:
  void run(std::span<IoOp> ops) noexcept override {
    for (IoOp& op : ops) op.result = transfer(op);
  }
  const char* name() const noexcept override { return "sync"; }

 private:
  static std::int64_t transfer(const IoOp& op) {
    for (;;) {
      ssize_t r;
      if (op.kind == IoKind::kRead) {
        r = ::pread(op.fd, op.buf, op.len, static_cast<off_t>(op.off));
      } else {
        struct iovec iov = {op.buf, op.len};
        r = ::pwritev2(op.fd, &iov, 1, static_cast<off_t>(op.off), op.dsync ? RWF_DSYNC : 0);
      }
      if (r >= 0) return r;
      if (errno != EINTR) return -errno;
    }
  }
};

}  // namespace

int Engine::datasync(int fd) noexcept { return ::fdatasync(fd) == 0 ? 0 : -errno; }

int Engine::truncate(int fd, std::uint64_t size) noexcept {
  return ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : -errno;
}

int Engine::fallocate(int fd, int mode, std::uint64_t off, std::uint64_t len) noexcept {
  for (;;) {
    if (::fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len)) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

int Engine::block_range(int fd, unsigned long request, std::uint64_t off,
                        std::uint64_t len) noexcept {
  std::uint64_t range[2] = {off, len};
  return ::ioctl(fd, request, range) == 0 ? 0 : -errno;
}

std::unique_ptr<Engine> make_sync_engine() { return std::make_unique<SyncEngine>(); }

}  // namespace loopdio
