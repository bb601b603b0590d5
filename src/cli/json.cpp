// The flat JSON object; see json.h. The parser takes exactly what the control socket and
// the state files write: one object of scalar members. Escaping reuses the core's
// json_string, the same function the control socket answers with.
#include "json.h"

#include <cctype>
#include <algorithm>
#include <charconv>

#include "loopdio/control.h"
#include "loopdio/error.h"

namespace loopdio::cli {
namespace {

class Parser {
 public:
  Parser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  std::vector<std::pair<std::string, JsonValue>> object() {
    std::vector<std::pair<std::string, JsonValue>> members;
    expect('{');
    if (peek() == '}') {
      ++i_;
    } else {
      for (;;) {
        std::string key = string();
        expect(':');
        members.emplace_back(std::move(key), value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        break;
      }
    }
    if (peek() != '\0') bad("text after the object");
    return members;
  }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    throw Error(what_ + ": not the JSON expected (" + why + " at byte " + std::to_string(i_) + ")");
  }

  char peek() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    return i_ < s_.size() ? s_[i_] : '\0';
  }

  void expect(char c) {
    if (peek() != c) bad(std::string("expected '") + c + "'");
    ++i_;
  }

  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }

  JsonValue value() {
    char c = peek();
    if (c == '"') return string();
    if (word("true")) return true;
    if (word("false")) return false;
    if (word("null")) return nullptr;
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) return integer();
    if (c == '{' || c == '[') return raw();
    bad("expected a value");
  }

  // A nested object or array, kept as its text: brackets counted outside strings.
  JsonRaw raw() {
    std::size_t start = i_;
    int depth = 0;
    bool in_string = false;
    for (; i_ < s_.size(); ++i_) {
      char c = s_[i_];
      if (in_string) {
        if (c == '\\') ++i_;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        ++i_;
        return JsonRaw{std::string(s_.substr(start, i_ - start))};
      }
    }
    bad("unterminated object or array");
  }

  std::int64_t integer() {
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + s_.size(), v);
    if (ec != std::errc()) bad("bad number");
    i_ = static_cast<std::size_t>(p - s_.data());
    if (i_ < s_.size() && (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E')) bad("not an integer");
    return v;
  }

  void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          unsigned cp = 0;
          auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + std::min(i_ + 4, s_.size()), cp, 16);
          if (ec != std::errc() || p != s_.data() + i_ + 4) bad("bad \\u escape");
          i_ += 4;
          append_utf8(out, cp);
          break;
        }
        default: out += e;  // \" \\ \/
      }
    }
    if (i_ >= s_.size()) bad("unterminated string");
    ++i_;
    return out;
  }

  std::string_view s_;
  const std::string& what_;
  std::size_t i_ = 0;
};

std::string dump_value(const JsonValue& v) {
  if (std::holds_alternative<std::nullptr_t>(v)) return "null";
  if (auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (auto* n = std::get_if<std::int64_t>(&v)) return std::to_string(*n);
  if (auto* r = std::get_if<JsonRaw>(&v)) return r->text;
  return json_string(std::get<std::string>(v));
}

}  // namespace

JsonObject JsonObject::parse(std::string_view text, const std::string& what) {
  JsonObject o;
  o.what_ = what;
  o.members_ = Parser(text, what).object();
  return o;
}

JsonObject& JsonObject::set(const std::string& key, JsonValue value) {
  for (auto& [k, v] : members_) {
    if (k == key) {
      v = std::move(value);
      return *this;
    }
  }
  members_.emplace_back(key, std::move(value));
  return *this;
}

std::string JsonObject::dump() const {
  std::string s = "{";
  for (const auto& [k, v] : members_) {
    if (s.size() > 1) s += ",";
    s += json_string(k) + ":" + dump_value(v);
  }
  return s + "}";
}

const JsonValue* JsonObject::find(const std::string& key) const {
  for (const auto& [k, v] : members_)
    if (k == key) return &v;
  return nullptr;
}

const JsonValue& JsonObject::get(const std::string& key) const {
  const JsonValue* v = find(key);
  if (!v) throw Error(what_ + ": no \"" + key + "\" in " + dump());
  return *v;
}

bool JsonObject::is_null(const std::string& key) const {
  const JsonValue* v = find(key);
  return !v || std::holds_alternative<std::nullptr_t>(*v);
}

const std::string& JsonObject::str(const std::string& key) const {
  if (auto* s = std::get_if<std::string>(&get(key))) return *s;
  throw Error(what_ + ": \"" + key + "\" is not a string");
}

std::int64_t JsonObject::num(const std::string& key) const {
  if (auto* n = std::get_if<std::int64_t>(&get(key))) return *n;
  throw Error(what_ + ": \"" + key + "\" is not an integer");
}

bool JsonObject::boolean(const std::string& key) const {
  if (auto* b = std::get_if<bool>(&get(key))) return *b;
  throw Error(what_ + ": \"" + key + "\" is not true or false");
}

std::string JsonObject::str_or(const std::string& key, const std::string& def) const {
  return is_null(key) ? def : str(key);
}

std::int64_t JsonObject::num_or(const std::string& key, std::int64_t def) const {
  return is_null(key) ? def : num(key);
}

std::optional<bool> JsonObject::opt_boolean(const std::string& key) const {
  if (is_null(key)) return std::nullopt;
  return boolean(key);
}

std::optional<JsonValue> JsonObject::value(const std::string& key) const {
  if (const JsonValue* v = find(key)) return *v;
  return std::nullopt;
}

std::string json_array(const std::vector<JsonObject>& objects) {
  if (objects.empty()) return "[]";
  std::string s = "[\n";
  for (std::size_t i = 0; i < objects.size(); ++i)
    s += "  " + objects[i].dump() + (i + 1 < objects.size() ? ",\n" : "\n");
  return s + "]";
}

}  // namespace loopdio::cli
