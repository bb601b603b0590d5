// Byte-range locks over the backing file, shared by every connection. A read-modify-write of
// a partial block holds its blocks exclusively, so that neither another RMW nor an aligned
// write can land between its read and its write; aligned direct writes hold theirs shared, so
// they run in parallel with each other and only wait for an RMW of the same blocks.
// Requests are granted in arrival order among those that overlap, so none starves.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace loopdio {

class RangeLock {
 public:
  // Holds [start, end) from construction to destruction. Not movable: the lock links it.
  class Guard {
   public:
    Guard(RangeLock& lock, std::uint64_t start, std::uint64_t end, bool exclusive);
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard();

   private:
    friend class RangeLock;
    RangeLock& lock_;
    std::uint64_t start_, end_;
    bool exclusive_;
    Guard* prev_ = nullptr;
    Guard* next_ = nullptr;
  };

  // Number of ranges held or waiting (for tests).
  std::size_t size();

 private:
  bool blocked(const Guard& g) const;

  std::mutex mu_;                // protects the list below
  std::condition_variable cv_;   // signalled whenever a range is released
  Guard* head_ = nullptr;        // every held or waiting range, oldest first
  Guard* tail_ = nullptr;
};

}  // namespace loopdio
