// The I/O engine: how a batch of reads and writes reaches the kernel. One engine per open
// export (src/engine_share.cpp), shared by the nbdkit worker threads of all its
// connections; each thread hands it the ops of one request and gets control back when all
// of them are done.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace loopdio {

enum class IoKind : std::uint8_t { kRead, kWrite };

struct IoOp {
  IoKind kind = IoKind::kRead;
  bool dsync = false;  // RWF_DSYNC: durable when it completes (FUA)
  int fd = -1;
  char* buf = nullptr;
  std::size_t len = 0;
  std::uint64_t off = 0;
  // Out: bytes transferred (possibly short) or -errno. Signed, as io_event.res is.
  std::int64_t result = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Submits every op, concurrently where the engine can, and returns when each has a
  // result. One kernel transfer per op: a short transfer is reported as it is, for the caller
  // (who knows the alignment) to continue. Never throws; thread-safe.
  virtual void run(std::span<IoOp> ops) noexcept = 0;
  virtual const char* name() const noexcept = 0;

  // Synchronous whole-file operations, in the calling thread. Each returns 0 or -errno.
  // Virtual so a test engine can stand in for the kernel.
  virtual int datasync(int fd) noexcept;
  virtual int truncate(int fd, std::uint64_t size) noexcept;
  virtual int fallocate(int fd, int mode, std::uint64_t off, std::uint64_t len) noexcept;
  // BLKDISCARD or BLKZEROOUT on a block device.
  virtual int block_range(int fd, unsigned long request, std::uint64_t off,
                          std::uint64_t len) noexcept;
};

// pread/pwritev2 in the calling thread, one op after another.
std::unique_ptr<Engine> make_sync_engine();

// Runs a request of one op as the sync engine does, in the calling thread, and hands a
// request of several ops to `batches`, so they are in flight together. Its name is
// "sync+" and the batch engine's. The whole-file operations are the batch engine's.
std::unique_ptr<Engine> make_split_engine(std::shared_ptr<Engine> batches);

// A kernel AIO context of `depth` slots. Throws loopdio::Error (with the errno of io_setup)
// when the kernel refuses one, typically EAGAIN once fs.aio-max-nr is used up.
std::unique_ptr<Engine> make_libaio_engine(unsigned depth);

// One io_uring per worker thread, created at the thread's first request, with `fd`
// registered. Throws loopdio::Error when the kernel refuses io_uring.
std::unique_ptr<Engine> make_uring_engine(unsigned depth, int fd);

}  // namespace loopdio
