// Typed reads of one member of a JSON object (a control reply, a state file), failing with
// loopdio's one-line message ("control socket /run/loopdio/nbd0.ctl: \"log_sec\" is missing
// or not an integer") instead of the library's exception text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "loopdio/error.h"
#include "loopdio/json.h"

namespace loopdio::cli {

namespace detail {
template <class T>
bool holds(const Json& v) {
  if constexpr (std::is_same_v<T, bool>) return v.is_boolean();
  if constexpr (std::is_same_v<T, std::string>) return v.is_string();
  if constexpr (std::is_same_v<T, std::int64_t>) return v.is_number_integer();
  if constexpr (std::is_same_v<T, std::uint64_t>) return v.is_number_unsigned();
  if constexpr (std::is_same_v<T, double>) return v.is_number();
}
template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean";
  if constexpr (std::is_same_v<T, std::string>) return "a string";
  if constexpr (std::is_same_v<T, std::int64_t>) return "an integer";
  if constexpr (std::is_same_v<T, std::uint64_t>) return "an unsigned integer";
  if constexpr (std::is_same_v<T, double>) return "a number";
}
}  // namespace detail

// The member, or nullopt when it is missing or null. Throws loopdio::Error naming `what`
// and the key when it has another type.
template <class T>
std::optional<T> opt_member(const Json& j, const std::string& key, std::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!detail::holds<T>(*it))
    throw Error(std::string(what) + ": \"" + key + "\" is not " + detail::type_name<T>());
  return it->template get<T>();
}

// The member, which must be there. Throws loopdio::Error naming `what` and the key.
template <class T>
T member(const Json& j, const std::string& key, std::string_view what) {
  if (auto v = opt_member<T>(j, key, what)) return *v;
  throw Error(std::string(what) + ": \"" + key + "\" is missing or not " + detail::type_name<T>());
}

}  // namespace loopdio::cli
