// The control socket's commands (the server is control_server.h). One request line, one
// JSON reply line:
//   status                 -> {"ok":true,"file":...,"dio":true,"aio":"libaio",
//                              "engines":{"libaio":2,"io_uring":0,"sync":1},...}
//   set direct-io on|off   -> {"ok":true,"dio":false} or {"ok":false,"error":"..."}
//   flush                  -> {"ok":true} once fdatasync returned
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "loopdio/json.h"

namespace loopdio {

class Backing;
class DrainGate;

// What a control command may look at and change.
struct ControlContext {
  Backing& backing;
  DrainGate& gate;
  std::function<void(Json&)> extra_status;  // adds the glue's members: connections, ...
};

// Executes one command line; returns the JSON reply (no newline). Never throws.
std::string handle_control(std::string_view line, ControlContext& ctx);

// Switches direct I/O on a live export: drains every request of every connection,
// fdatasyncs, switches the fd, and resumes. Throws loopdio::Error with the reason when the
// backing cannot do it.
void switch_direct_io(Backing& b, DrainGate& gate, bool on);

}  // namespace loopdio
