// The export's shared engine; see engine_share.h.
#include "loopdio/engine_share.h"

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
  if (kind_ == EngineKind::kIoUring) {
    try {
      return make_uring_engine(kRingDepth, fd_);
    } catch (const Error& e) {
      if (!std::exchange(uring_refusal_told_, true))
        notice(std::string("io_uring refused (") + e.what() + "): the export uses libaio instead");
    }
  }
  for (unsigned depth : {kAioDepth, kAioDepthLow}) {
    try {
      auto e = make_libaio_engine(depth);
      aio_refusal_told_ = false;
      return e;
    } catch (const Error& e) {
      if (depth == kAioDepthLow && !std::exchange(aio_refusal_told_, true))
        notice(std::string(e.what()) +
               " (fs.aio-max-nr used up?): connections use the sync engine until a context "
               "can be had");
    }
  }
  return make_sync_engine();
}

}  // namespace loopdio
