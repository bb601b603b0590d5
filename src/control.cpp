// Switching direct I/O on a live export; see control.h.
#include "loopdio/control.h"

#include <fcntl.h>
#include <unistd.h>

#include "loopdio/backing.h"
#include "loopdio/drain_gate.h"
#include "loopdio/error.h"
#include "loopdio/json.h"
#include "loopdio/log.h"

namespace loopdio {

void switch_direct_io(Backing& b, DrainGate& gate, bool on) {
  if (b.direct() == on) return;
  b.check_direct(on);
  gate.drained([&] {
    if (::fdatasync(b.fd()) != 0) throw sys_error("fdatasync: " + b.options().file);
    b.set_direct(on);
    // Pages cached while buffered are stale once writes bypass the cache: drop them.
    if (on) ::posix_fadvise(b.fd(), 0, 0, POSIX_FADV_DONTNEED);
  });
  notice(std::string("direct I/O switched ") + (on ? "on" : "off") + " at run time for " +
         b.options().file);
}

}  // namespace loopdio
