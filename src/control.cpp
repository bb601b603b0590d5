// The control socket's commands; see control.h.
#include "loopdio/control.h"

#include <fcntl.h>
#include <unistd.h>

#include "loopdio/backing.h"
#include "loopdio/drain_gate.h"
#include "loopdio/error.h"
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

namespace {

Json status(ControlContext& ctx) {
  Backing& b = ctx.backing;
  const Options& o = b.options();
  const Geometry& g = b.geometry();
  Json j;
  j["ok"] = true;
  put_path(j, "file", o.file);
  j["size"] = g.size;
  j["offset"] = g.base;
  j["sizelimit"] = o.sizelimit ? Json(*o.sizelimit) : Json(nullptr);
  j["readonly"] = !b.writable();
  j["dio"] = b.direct();
  j["dio_reason"] = b.direct_reason();
  j["aio"] = to_string(o.engine);
  j["log_sec"] = b.min_block();
  j["alignment"] = b.probe().dio_supported ? b.probe().align.offset : 0;
  j["pid"] = ::getpid();
  if (ctx.extra_status) ctx.extra_status(j);
  return j;
}

Json error(const std::string& what) { return Json{{"ok", false}, {"error", what}}; }

Json execute(std::string_view line, ControlContext& ctx) {
  if (line == "status") return status(ctx);
  if (line == "flush") {
    if (::fdatasync(ctx.backing.fd()) != 0) throw sys_error("fdatasync");
    return Json{{"ok", true}};
  }
  if (line == "set direct-io on" || line == "set direct-io off") {
    switch_direct_io(ctx.backing, ctx.gate, line.ends_with("on"));
    return Json{{"ok", true}, {"dio", ctx.backing.direct()}};
  }
  return error("unknown command: " + std::string(line));
}

}  // namespace

std::string handle_control(std::string_view line, ControlContext& ctx) {
  try {
    return dump_line(execute(line, ctx));
  } catch (const std::exception& e) {
    return dump_line(error(e.what()));
  }
}

}  // namespace loopdio
