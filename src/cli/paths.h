// Where loopdio finds things: its run directory (state files, sockets), the nbdkit plugin,
// the programs it runs, and the kernel's view of NBD devices. Each can be overridden from
// the environment (LOOPDIO_RUN_DIR, LOOPDIO_PLUGIN, LOOPDIO_NBD_CLIENT, LOOPDIO_SYSFS,
// LOOPDIO_DEV_DIR), which the integration tests use to run without the nbd module.
#pragma once

#include <string>

namespace loopdio::cli {

std::string run_dir();    // /run/loopdio
std::string sysfs_dir();  // /sys
std::string dev_dir();    // /dev

// The plugin to give nbdkit: $LOOPDIO_PLUGIN, else loopdio.so next to this program (a
// build tree), else the installed nbdkit-loopdio-plugin.so. Throws loopdio::Error listing
// the places it looked.
std::string find_plugin();

// A program by name: the environment override if set, else the first match in PATH, else
// the first of the usual sbin/bin directories that has it. Throws loopdio::Error with
// `install_hint` ("apt-get install nbd-client") when it is nowhere.
std::string find_program(const std::string& name, const char* env_override,
                         const std::string& install_hint);

// `path` made absolute against the current directory, without resolving symlinks.
std::string absolute_path(const std::string& path);

// Throws loopdio::Error("<what> needs root") unless the effective user is root.
void require_root(const std::string& what);

}  // namespace loopdio::cli
