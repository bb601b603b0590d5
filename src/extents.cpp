// The allocation map; see extents.h. lseek on the shared fd moves its file position, which
// loopdio never uses (all transfers are positional), and each call's answer is its own.
#include "loopdio/extents.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace loopdio {

int map_extents(int fd, std::uint64_t start, std::uint64_t end, bool one,
                const std::function<int(std::uint64_t, std::uint64_t, bool)>& add) {
  std::uint64_t pos = start;
  while (pos < end) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0 && errno != ENXIO) return -errno;
    // ENXIO: no data at or after pos (or pos is past the end of the file): a hole.
    std::uint64_t d = data < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(data), end);
    if (d > pos) {
      if (int r = add(pos, d - pos, true)) return r;
      if (one) return 0;
      pos = d;
      if (pos >= end) break;
    }
    off_t hole = ::lseek(fd, static_cast<off_t>(pos), SEEK_HOLE);
    if (hole < 0) return -errno;
    std::uint64_t h = std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
    if (h <= pos) h = end;  // the file shrank under us: report the rest as data
    if (int r = add(pos, h - pos, false)) return r;
    if (one) return 0;
    pos = h;
  }
  return 0;
}

}  // namespace loopdio
