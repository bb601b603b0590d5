// The safe encoding of text for terminals and tables lives in the core library
// (loopdio/safe_text.h: export descriptions need it too); the command uses it by these names.
#pragma once

#include "loopdio/safe_text.h"

namespace loopdio::cli {
using loopdio::display_width;
using loopdio::safe_encode;
}  // namespace loopdio::cli
