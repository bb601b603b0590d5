// Switching direct I/O on a live export, for the control socket's `set direct-io` (the
// commands are answered by Service::control, the socket served by control_server.h).
#pragma once

#include <string>
#include <string_view>

namespace loopdio {

class Backing;
class DrainGate;

// Switches direct I/O on a live export: drains every request of every connection,
// fdatasyncs, switches the fd, and resumes. Throws loopdio::Error with the reason when the
// backing cannot do it.
void switch_direct_io(Backing& b, DrainGate& gate, bool on);

}  // namespace loopdio
