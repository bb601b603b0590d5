// Built when liburing is absent: asking for io_uring then falls back to libaio, with a notice.
#include <cerrno>

#include "loopdio/engine.h"
#include "loopdio/engine_uring_hooks.h"
#include "loopdio/error.h"

namespace loopdio {

UringHooks UringHooks::real() { return {}; }

std::unique_ptr<Engine> make_uring_engine(unsigned, int) {
  throw Error("io_uring: this build has no liburing", ENOSYS);
}

std::unique_ptr<Engine> make_uring_engine(unsigned, int, UringHooks) {
  throw Error("io_uring: this build has no liburing", ENOSYS);
}

}  // namespace loopdio
