// The client side of the plugin's control socket (include/loopdio/control.h): one request
// line, one JSON reply line. Every wait is bounded, so an export that no longer answers
// becomes an error message instead of a hang.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "loopdio/json.h"

namespace loopdio::cli {

// Sends `command` and returns the reply, read strictly as JSON, except that raw bytes that
// are not UTF-8 (a path, from a plugin that writes paths without "<key>-hex") are taken
// as U+FFFD rather than failing the reply. Throws loopdio::Error ("<path>: the export does not
// answer: Connection refused") when it cannot connect or no reply comes within `timeout`.
// A reply {"ok":false,...} is returned as it is: the caller decides what it means.
Json control_request(const std::string& path, std::string_view command,
                           std::chrono::milliseconds timeout);

// control_request, then: {"ok":false,"error":E} becomes loopdio::Error(E).
Json control_call(const std::string& path, std::string_view command,
                        std::chrono::milliseconds timeout);

}  // namespace loopdio::cli
