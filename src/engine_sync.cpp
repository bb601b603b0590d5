// The sync engine: the baseline every AIO engine is compared with, and the fallback when the
// kernel refuses an AIO context. Each op is one pread/pwritev2 from the calling thread.
// Also the split engine, which runs a request of one op that way and hands batches to AIO.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

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

namespace {

// nbdkit's worker thread waits for its request whatever the engine, so one transfer gains
// nothing from AIO: a blocking pread costs one system call and one wake-up, where AIO adds
// the submission, the wait for the completion and its hand-off. Only a batch, whose
// transfers can be in flight together, is worth an AIO engine.
class SplitEngine final : public Engine {
 public:
  explicit SplitEngine(std::shared_ptr<Engine> batches)
      : batches_(std::move(batches)), name_(std::string("sync+") + batches_->name()) {}

  void run(std::span<IoOp> ops) noexcept override {
    if (ops.size() == 1)
      single_.run(ops);
    else
      batches_->run(ops);
  }
  const char* name() const noexcept override { return name_.c_str(); }

  int datasync(int fd) noexcept override { return batches_->datasync(fd); }
  int truncate(int fd, std::uint64_t size) noexcept override {
    return batches_->truncate(fd, size);
  }
  int fallocate(int fd, int mode, std::uint64_t off, std::uint64_t len) noexcept override {
    return batches_->fallocate(fd, mode, off, len);
  }
  int block_range(int fd, unsigned long request, std::uint64_t off,
                  std::uint64_t len) noexcept override {
    return batches_->block_range(fd, request, off, len);
  }

 private:
  SyncEngine single_;
  std::shared_ptr<Engine> batches_;
  std::string name_;
};

}  // namespace

std::unique_ptr<Engine> make_split_engine(std::shared_ptr<Engine> batches) {
  return std::make_unique<SplitEngine>(std::move(batches));
}

}  // namespace loopdio
