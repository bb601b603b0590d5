// The names in a directory, read with getdents64(2) into memory of loopdio's own: opendir's
// DIR comes from malloc, which fails once clients' request buffers fill memory-max, while
// this comes from operator new, which then falls back to the reserve (reserve_heap.h).
#pragma once

#include <string>
#include <vector>

namespace loopdio {

// Every name in the directory `path` (relative to `dirfd`, as openat(2) takes them), "."
// and ".." left out, in the order the filesystem gives them. Reads through a descriptor of
// its own (listings may run at once; a shared one would share its offset). Throws
// loopdio::Error (with errno) on failure, naming `what`.
std::vector<std::string> dir_entries(int dirfd, const char* path, const std::string& what);

}  // namespace loopdio
