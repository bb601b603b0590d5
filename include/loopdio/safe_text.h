// Text from files and servers (image paths, descriptions) made safe for a terminal and a
// one-line-per-row table, the way `losetup -l` prints it (libsmartcols' safe encoding):
// control characters, DEL, C1 controls, bytes that are not valid UTF-8, and the backslash
// itself become \xHH, so each row stays one line and the bytes can still be told apart.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace loopdio {

// "/srv/a\nb\xff" -> "/srv/a\x0ab\xff" (as printed: backslash, x, two lowercase hex digits).
std::string safe_encode(std::string_view s);

// True when `s` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool is_utf8(std::string_view s);

// True when `s` holds a control character (C0, DEL, C1), or is not valid UTF-8.
bool has_control(std::string_view s);

// Columns the text takes on a terminal: one per character of valid UTF-8 (safe_encode's
// output is always valid UTF-8).
std::size_t display_width(std::string_view s);

}  // namespace loopdio
