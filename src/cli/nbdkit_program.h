// Which nbdkit loopdio runs, and the check that it is one loopdio supports: nbdkit 1.32.4 to
// 1.33.9 abort when a client hangs up with requests queued (fixed in 1.33.10), and Debian
// 12 ships 1.32.5, so anything older than 1.34 is refused before it is started.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace loopdio::cli {

struct NbdkitVersion {
  int major = 0, minor = 0, micro = 0;
};

// The version in `nbdkit --version`'s first line ("nbdkit 1.42.3" with maybe more after it);
// nullopt when there is none.
std::optional<NbdkitVersion> parse_nbdkit_version(std::string_view output);

// The nbdkit to run: $LOOPDIO_NBDKIT if set, else the nbdkit of the installation the plugin
// was built against (<prefix>/sbin/nbdkit, from nbdkit's pkg-config file) when it exists,
// else nbdkit in PATH. Runs `nbdkit --version` and throws loopdio::Error with the reason and
// the way out when it is older than 1.34 or its version cannot be told.
std::string find_nbdkit();

}  // namespace loopdio::cli
