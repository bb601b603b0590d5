// A flat JSON object: what the control socket answers, what a state file holds and what
// `list --json` prints. Members are strings, integers, booleans or null, kept in the order
// they were set, so that output reads the way it was written. A nested object or array is
// kept as its JSON text (JsonRaw): passed through, never looked into.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace loopdio::cli {

struct JsonRaw {
  std::string text;  // e.g. {"libaio":2,"sync":0}
};

using JsonValue = std::variant<std::nullptr_t, bool, std::int64_t, std::string, JsonRaw>;

class JsonObject {
 public:
  // Parses one object. Throws loopdio::Error naming `what`.
  static JsonObject parse(std::string_view text, const std::string& what);

  JsonObject& set(const std::string& key, JsonValue value);
  std::string dump() const;

  bool has(const std::string& key) const { return find(key) != nullptr; }
  bool is_null(const std::string& key) const;
  // Typed getters: throw loopdio::Error when the member is missing or of another type.
  const std::string& str(const std::string& key) const;
  std::int64_t num(const std::string& key) const;
  bool boolean(const std::string& key) const;
  // The same, with a default for a missing or null member.
  std::string str_or(const std::string& key, const std::string& def) const;
  std::int64_t num_or(const std::string& key, std::int64_t def) const;
  std::optional<bool> opt_boolean(const std::string& key) const;
  // A member as it is, if present (to pass it on).
  std::optional<JsonValue> value(const std::string& key) const;

 private:
  const JsonValue* find(const std::string& key) const;
  const JsonValue& get(const std::string& key) const;

  std::vector<std::pair<std::string, JsonValue>> members_;
  std::string what_;  // for messages: "control socket /run/loopdio/nbd0.ctl"
};

// A JSON array of objects, one a line: `list --json`.
std::string json_array(const std::vector<JsonObject>& objects);

}  // namespace loopdio::cli
