// The export's shared engine; see engine_share.h.
#include "loopdio/engine_share.h"

#include <string>
#include <string_view>
#include <utility>

#include "loopdio/error.h"
#include "loopdio/log.h"

namespace loopdio {

std::shared_ptr<Engine> EngineShare::acquire() {
  std::lock_guard lock(mu_);
  if (auto e = shared_.lock()) return e;
  std::shared_ptr<Engine> e = make();
  if (std::string_view(e->name()) != "sync") shared_ = e;
  return e;
}

std::shared_ptr<Engine> EngineShare::make() {
  if (kind_ == EngineKind::kSync) return make_sync_engine();
  std::shared_ptr<Engine> e = make_aio();
  bool split = kind_ == EngineKind::kSyncLibaio || kind_ == EngineKind::kSyncIoUring;
  if (!split || std::string_view(e->name()) == "sync") return e;
  return make_split_engine(std::move(e));
}

std::shared_ptr<Engine> EngineShare::make_aio() {
  if (kind_ == EngineKind::kIoUring || kind_ == EngineKind::kSyncIoUring) {
    try {
      return make_uring_engine(kRingDepth, fd_);
    } catch (const Error& e) {
      if (!std::exchange(uring_refusal_told_, true))
        notice(std::string("io_uring refused (") + e.what() + "): the export uses libaio instead");
    }
  }
  for (unsigned depth : {kAioDepth, kAioDepthLow}) {
    try {
      if (auto e = make_libaio(depth)) {
        aio_refusal_told_ = false;
        return e;
      }
    } catch (const Error& e) {
      if (depth == kAioDepthLow && !std::exchange(aio_refusal_told_, true))
        notice(std::string(e.what()) +
               " (fs.aio-max-nr used up?): connections use the sync engine until a context "
               "can be had");
    }
  }
  if (!std::exchange(aio_refusal_told_, true))
    notice("the server's AIO budget (aio-events=" + std::to_string(budget_.total()) + ", " +
           std::to_string(budget_.used()) + " in use) is spent: connections use the sync " +
           "engine until exports close");
  return make_sync_engine();
}

// A context of `depth` slots charged to the budget until it is freed; null when the budget
// has no room for it.
std::shared_ptr<Engine> EngineShare::make_libaio(unsigned depth) {
  if (!budget_.take(depth)) return nullptr;
  std::unique_ptr<Engine> e;
  try {
    e = make_libaio_engine(depth);
  } catch (...) {
    budget_.give(depth);
    throw;
  }
  AioBudget* budget = &budget_;
  return std::shared_ptr<Engine>(e.release(), [budget, depth](Engine* p) {
    delete p;
    budget->give(depth);
  });
}

}  // namespace loopdio
