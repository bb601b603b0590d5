// Where the core library's notices go: decisions and fallbacks the user must be able to see
// (direct I/O refused, a kernel feature switched off). The nbdkit glue and the CLI each
// install their own sink; the default writes to stderr.
#pragma once

#include <functional>
#include <string>

namespace loopdio {

void set_notice_sink(std::function<void(const std::string&)> sink);
void notice(const std::string& message);

}  // namespace loopdio
