// An in-memory stand-in for a file opened with O_DIRECT, for testing the alignment layer:
// it refuses (EINVAL) any transfer whose offset, length or buffer address is misaligned, as
// ext4 and xfs do, reads short at end of file, grows when written past its end, and records
// every transfer so a test can check exactly what would have reached the kernel.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "loopdio/align.h"
#include "loopdio/engine.h"

namespace loopdio::test {

class FakeEngine : public Engine {
 public:
  struct Call {
    IoKind kind;
    std::uint64_t off;
    std::size_t len;
    bool dsync;
  };

  FakeEngine(std::uint32_t align, std::uint32_t mem_align, std::size_t size)
      : align_(align), mem_align_(mem_align), data_(size) {}

  const char* name() const noexcept override { return "fake"; }

  void run(std::span<IoOp> ops) noexcept override {
    for (IoOp& op : ops) {
      {
        std::lock_guard lk(mu_);
        calls_.push_back({op.kind, op.off, op.len, op.dsync});
      }
      if (inject) {
        if (auto r = inject(op)) {
          op.result = *r;
          continue;
        }
      }
      op.result = transfer(op);
      if (yield_between) std::this_thread::yield();
    }
  }

  int datasync(int) noexcept override {
    std::lock_guard lk(mu_);
    ++syncs_;
    return 0;
  }
  int truncate(int, std::uint64_t size) noexcept override {
    std::lock_guard lk(mu_);
    data_.resize(size);
    ++truncations_;
    return 0;
  }

  // Emulates FALLOC_FL_PUNCH_HOLE / ZERO_RANGE (both zero the range here) unless refused.
  int fallocate(int, int mode, std::uint64_t off, std::uint64_t len) noexcept override {
    std::lock_guard lk(mu_);
    falloc_calls_.push_back({mode, off, len});
    if (refuse_fallocate_mode & mode) return -EOPNOTSUPP;
    if (off + len > data_.size()) return -EINVAL;
    std::memset(data_.data() + off, 0, len);
    return 0;
  }
  struct Falloc {
    int mode;
    std::uint64_t off, len;
  };
  std::vector<Falloc> falloc_calls() {
    std::lock_guard lk(mu_);
    return falloc_calls_;
  }
  int refuse_fallocate_mode = 0;  // fallocate modes to answer with EOPNOTSUPP

  std::vector<char> data() {
    std::lock_guard lk(mu_);
    return data_;
  }
  void set_data(std::vector<char> d) {
    std::lock_guard lk(mu_);
    data_ = std::move(d);
  }
  std::vector<Call> calls() {
    std::lock_guard lk(mu_);
    return calls_;
  }
  void clear_calls() {
    std::lock_guard lk(mu_);
    calls_.clear();
  }
  int syncs() { std::lock_guard lk(mu_); return syncs_; }
  int truncations() { std::lock_guard lk(mu_); return truncations_; }

  // Return a result to replace the transfer of `op`, or nullopt to let it happen.
  std::function<std::optional<std::int64_t>(const IoOp&)> inject;
  bool yield_between = false;

 private:
  std::int64_t transfer(const IoOp& op) {
    if (!is_aligned(op.off, std::uint64_t{align_}) || !is_aligned(std::uint64_t{op.len}, std::uint64_t{align_}) ||
        !is_aligned_ptr(op.buf, mem_align_))
      return -EINVAL;
    // Hold the lock across the copy, but let another thread run between the transfers of a
    // read-modify-write (see yield_between): that is where lost updates happen.
    std::lock_guard lk(mu_);
    if (op.kind == IoKind::kRead) {
      if (op.off >= data_.size()) return 0;
      std::size_t n = std::min<std::size_t>(op.len, data_.size() - op.off);
      std::memcpy(op.buf, data_.data() + op.off, n);
      return static_cast<std::int64_t>(n);
    }
    if (op.off + op.len > data_.size()) data_.resize(op.off + op.len);
    std::memcpy(data_.data() + op.off, op.buf, op.len);
    return static_cast<std::int64_t>(op.len);
  }

  std::uint32_t align_, mem_align_;
  std::mutex mu_;  // protects everything below
  std::vector<char> data_;
  std::vector<Call> calls_;
  std::vector<Falloc> falloc_calls_;
  int syncs_ = 0;
  int truncations_ = 0;
};

}  // namespace loopdio::test
