// Allocation map of a file for NBD block status (base:allocation): data and holes from
// SEEK_DATA/SEEK_HOLE. Holes read as zeroes. A range being written while it is mapped may be
// reported as data, never the other way round once the write is acknowledged.
#pragma once

#include <cstdint>
#include <functional>

namespace loopdio {

// Calls add(offset, length, is_hole) for consecutive extents covering [start, end) of fd,
// stopping after the first when `one` is set. Returns 0 or -errno (or add's non-zero result).
int map_extents(int fd, std::uint64_t start, std::uint64_t end, bool one,
                const std::function<int(std::uint64_t, std::uint64_t, bool)>& add);

}  // namespace loopdio
