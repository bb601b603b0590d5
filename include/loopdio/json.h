// JSON for everything loopdio writes or reads (control replies, state files, `list --json`),
// on nlohmann-json. Paths are bytes, not text: a path that is not valid UTF-8 is written as a
// string with each invalid byte replaced by U+FFFD (for people and strict parsers) plus its
// exact bytes in hex under "<key>-hex" (for programs), so any path survives a round trip.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "loopdio/safe_text.h"  // is_utf8: what a JSON string may hold

namespace loopdio {

// Members keep the order they were set in, so output reads the way it was written.
using Json = nlohmann::ordered_json;

// j[key] = path; and j[key + "-hex"] = its bytes in hex when it is not valid UTF-8.
void put_path(Json& j, const std::string& key, std::string_view path);
// The exact bytes put_path wrote (from "<key>-hex" when present). Throws loopdio::Error
// naming the key when it is missing or malformed.
std::string get_path(const Json& j, const std::string& key);

// One line of JSON, never throwing on bad UTF-8 (replaced by U+FFFD).
std::string dump_line(const Json& j);

// Parses one JSON document; throws loopdio::Error("<what>: <reason>") when it is not one.
Json parse_json(std::string_view text, const std::string& what);

}  // namespace loopdio
