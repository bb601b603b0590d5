// Paths in JSON and the one-line writer; see json.h.
#include "loopdio/json.h"

#include "loopdio/error.h"

namespace loopdio {
namespace {

constexpr char kHex[] = "0123456789abcdef";

std::string to_hex(std::string_view s) {
  std::string r;
  r.reserve(s.size() * 2);
  for (unsigned char c : s) {
    r += kHex[c >> 4];
    r += kHex[c & 15];
  }
  return r;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

void put_path(Json& j, const std::string& key, std::string_view path) {
  if (is_utf8(path)) {
    j[key] = std::string(path);
    return;
  }
  // The library's own replacement, read back as a string.
  std::string replaced =
      Json(std::string(path)).dump(-1, ' ', false, Json::error_handler_t::replace);
  j[key] = Json::parse(replaced).get<std::string>();
  j[key + "-hex"] = to_hex(path);
}

std::string get_path(const Json& j, const std::string& key) {
  if (auto h = j.find(key + "-hex"); h != j.end() && h->is_string()) {
    const std::string& hex = h->get_ref<const std::string&>();
    if (hex.size() % 2 != 0) throw Error(key + "-hex: odd number of hex digits");
    std::string r;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
      if (hi < 0 || lo < 0) throw Error(key + "-hex: not a hex string");
      r += static_cast<char>(hi * 16 + lo);
    }
    return r;
  }
  auto v = j.find(key);
  if (v == j.end() || !v->is_string()) throw Error("\"" + key + "\": missing or not a string");
  return v->get<std::string>();
}

std::string dump_line(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json parse_json(std::string_view text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(what + ": not valid JSON: " + e.what());
  }
}

}  // namespace loopdio
