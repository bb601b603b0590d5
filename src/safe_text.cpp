// The safe encoding of text for terminals and tables; see safe_text.h.
#include "loopdio/safe_text.h"

namespace loopdio {
namespace {

// The length of the valid UTF-8 sequence starting at s[i], 0 when it is not one. Overlong
// forms, surrogates and code points beyond U+10FFFF are not valid.
std::size_t utf8_length(std::string_view s, std::size_t i, char32_t& cp) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  cp = n == 1 ? c : c & (0x7f >> n);
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3f);
  }
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

bool is_control(char32_t cp) { return cp < 0x20 || (cp >= 0x7f && cp < 0xa0); }

void hex_byte(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[c >> 4];
  out += kHex[c & 15];
}

}  // namespace

std::string safe_encode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    std::size_t n = utf8_length(s, i, cp);
    if (n == 0 || is_control(cp) || cp == '\\') {
      for (std::size_t k = 0; k < (n ? n : 1); ++k)
        hex_byte(out, static_cast<unsigned char>(s[i + k]));
      i += n ? n : 1;
      continue;
    }
    out.append(s.substr(i, n));
    i += n;
  }
  return out;
}

bool is_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    std::size_t n = utf8_length(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool has_control(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    std::size_t n = utf8_length(s, i, cp);
    if (n == 0 || is_control(cp)) return true;
    i += n;
  }
  return false;
}

std::size_t display_width(std::string_view s) {
  std::size_t w = 0;
  for (unsigned char c : s) w += (c & 0xc0) != 0x80;  // lead bytes only
  return w;
}

}  // namespace loopdio
