// A move-only heap buffer whose address is a multiple of a power-of-two alignment (probes'
// O_DIRECT reads, the zero buffer). From aligned operator new, so that it falls back to the
// reserve for the server's own work when clients' buffers fill memory-max (reserve_heap.h).
#pragma once

#include <cstddef>
#include <new>
#include <utility>

namespace loopdio {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Throws std::bad_alloc when the memory cannot be had.
  AlignedBuffer(std::size_t align, std::size_t size)
      : size_(size), align_(align < sizeof(void*) ? sizeof(void*) : align) {
    if (size) data_ = ::operator new(size, std::align_val_t{align_});
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)),
        align_(o.align_) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      align_ = o.align_;
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  char* data() { return static_cast<char*>(data_); }
  const char* data() const { return static_cast<const char*>(data_); }
  std::size_t size() const { return size_; }

 private:
  void release() noexcept {
    if (data_) ::operator delete(data_, std::align_val_t{align_});
  }

  void* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t align_ = sizeof(void*);
};

}  // namespace loopdio
