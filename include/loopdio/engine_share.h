// The engine one export's connections share. An AIO context reserves its slots from the
// host-wide fs.aio-max-nr, so one per export (not one per connection) keeps what clients can
// take bounded however many connect: it is made when the first connection opens and freed
// when the last one closes. A kernel that refuses the engine asked for gets the next one
// (io_uring -> libaio -> sync), with a notice; a refused AIO context is asked for again by
// the next connection.
#pragma once

#include <memory>
#include <mutex>

#include "loopdio/engine.h"
#include "loopdio/options.h"

namespace loopdio {

class EngineShare {
 public:
  static constexpr unsigned kAioDepth = 256;    // slots of the shared libaio context
  static constexpr unsigned kAioDepthLow = 32;  // asked for when fs.aio-max-nr is short
  static constexpr unsigned kRingDepth = 128;   // entries of each worker thread's io_uring

  EngineShare(EngineKind kind, int fd) : kind_(kind), fd_(fd) {}

  // The engine for a connection that opens now. Never null; throws only std::bad_alloc.
  std::shared_ptr<Engine> acquire();

 private:
  std::shared_ptr<Engine> make();

  const EngineKind kind_;
  const int fd_;
  std::mutex mu_;                 // protects what follows
  std::weak_ptr<Engine> shared_;  // alive while a connection holds it
  bool uring_refusal_told_ = false;  // each fallback is told once, not at every connection
  bool aio_refusal_told_ = false;
};

}  // namespace loopdio
