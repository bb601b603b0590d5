// Live snapshots of a served image by reflink: the control socket's `snapshot` command. The
// export's requests are drained, the image fdatasynced and cloned whole (ioctl FICLONE) to a
// new file in the same filesystem, and the export resumes; the clone is then made durable.
// Everything that can be checked is checked before the export pauses, so that a refusal
// (a block device, part of a file, another filesystem, one that cannot clone) costs the
// clients nothing; on any refusal or failure the new file is removed again.
//
// What a snapshot holds: every write acknowledged before the command was sent, and nothing
// a client sends after the reply (the clone is taken while no request is in flight, and
// requests resume only once it is complete).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "loopdio/json.h"

namespace loopdio {

class Export;

// One export to snapshot: its name (empty with file=) and the new file's absolute path.
struct SnapshotRequest {
  std::string name;
  std::string dest;
};

// Reads the command's argument, {"exports":[{"name":"a.img","dest":"/abs/path"}]} (a path
// that is not UTF-8 as "dest-hex", see json.h). Throws loopdio::Error naming what is wrong.
std::vector<SnapshotRequest> parse_snapshot_request(std::string_view text);

struct SnapshotResult {
  std::string name;
  std::string dest;
  std::uint64_t bytes = 0;
  double paused_ms = 0;  // drain + fdatasync + clone: how long the export's requests waited
  Json json() const;
};

// Snapshots `x` to `dest` (absolute; must not exist). Throws loopdio::Error with a one-line
// reason, leaving nothing at `dest`; the export is running again whenever it returns.
SnapshotResult snapshot_export(Export& x, const std::string& dest);
// Several exports at one instant: each is checked and its file made first, then every
// export is drained (all at once) and cloned, then all resume. All or nothing: on any
// refusal or failure, no DEST is left. Distinct exports and destinations only.
std::vector<SnapshotResult> snapshot_exports(
    const std::vector<std::pair<Export*, std::string>>& exports);

}  // namespace loopdio
