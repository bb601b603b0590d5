// A move-only heap buffer whose address is a multiple of a power-of-two alignment, used as
// the bounce buffer between unaligned client buffers and O_DIRECT transfers.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

namespace loopdio {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Throws std::bad_alloc when the memory cannot be had.
  AlignedBuffer(std::size_t align, std::size_t size) : size_(size) {
    if (size == 0) return;
    if (posix_memalign(&data_, align < sizeof(void*) ? sizeof(void*) : align, size) != 0)
      throw std::bad_alloc();
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~AlignedBuffer() { std::free(data_); }

  char* data() { return static_cast<char*>(data_); }
  const char* data() const { return static_cast<const char*>(data_); }
  std::size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace loopdio
