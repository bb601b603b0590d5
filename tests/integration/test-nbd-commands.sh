#!/usr/bin/env bash
# Trim, zero, fast zero, block status and cache on every kind of backing: a file on ext4, a
# file on xfs over a 4K-sector loop device, and loop block devices with 512- and 4096-byte
# sectors. Checks allocation before and after (du), data after zeroing, trim edges left
# alone, extents equal to the file's real holes, and prints nbdinfo --map.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo losetup mkfs.xfs

ext4=$(make_fs ext4 1G)
xfs=$(make_fs xfs4k 1G)
truncate -s 64M "$ext4/file.img" "$xfs/file.img" "$ext4/loop512.img" "$ext4/loop4k.img"
loop512=$(losetup -f --show "$ext4/loop512.img")
at_exit "losetup -d $loop512"
loop4k=$(losetup --sector-size 4096 -f --show "$ext4/loop4k.img")
at_exit "losetup -d $loop4k"

check() {  # check NAME EXPORTED-PATH ALLOCATION-PATH MIN-BLOCK
  local name=$1 path=$2 alloc=$3 min=$4
  start_server -- file="$path" directio=1
  $PYTHON - "$URI" "$path" "$alloc" "$min" <<'PY' || fail "$name"
import sys, nbd, space
from space import MIB
uri, path, alloc_path, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
h = space.connect(uri)
assert h.get_block_size(nbd.SIZE_MINIMUM) == block, h.get_block_size(nbd.SIZE_MINIMUM)
assert h.can_trim() and h.can_zero() and h.can_fast_zero() and h.can_cache()
pat = b"\xab" * (16 * MIB)
h.pwrite(pat, 0)
h.flush()
a0 = space.allocated(alloc_path)
assert a0 >= 16 * MIB, a0

# Trim [1M+100, 5M+100): the aligned interior goes, the edges keep their data.
h.trim(4 * MIB, MIB + 100)
h.flush()
a1 = space.allocated(alloc_path)
assert a1 <= a0 - 4 * MIB + 2 * block + 64 * 1024, (a0, a1)
assert h.pread(block - 100, MIB + 100) == b"\xab" * (block - 100), "trim touched its head edge"
assert h.pread(100, 5 * MIB) == b"\xab" * 100, "trim touched its tail edge"

# Zero without holes (NO_HOLE): reads zero, stays allocated; unaligned edges zeroed exactly.
h.zero(2 * MIB, 6 * MIB + 7, nbd.CMD_FLAG_NO_HOLE)
h.flush()
a2 = space.allocated(alloc_path)
assert a2 >= a1 - 64 * 1024, (a1, a2)
assert h.pread(2 * MIB, 6 * MIB + 7) == bytes(2 * MIB), "zeroed range not zero"
assert h.pread(7, 6 * MIB) == b"\xab" * 7 and h.pread(9, 8 * MIB + 7) == b"\xab" * 9, "zero edges"

# Zero allowing holes: reads zero, and the interior is deallocated.
h.zero(3 * MIB - 8, 9 * MIB + 3)
h.flush()
a3 = space.allocated(alloc_path)
assert a3 <= a2 - 3 * MIB + 2 * block + 64 * 1024, (a2, a3)
assert h.pread(3 * MIB - 8, 9 * MIB + 3) == bytes(3 * MIB - 8)
assert h.pread(3, 9 * MIB) == b"\xab" * 3

# Fast zero is cheap here, so it succeeds.
h.zero(MIB, 13 * MIB, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(MIB, 13 * MIB) == bytes(MIB)
h.cache(4 * MIB, 0)
print(f"allocated: {a0 >> 10} KiB written, {a1 >> 10} after trim, {a2 >> 10} after "
      f"zero (no hole), {a3 >> 10} after zero (hole)")

# Block status: for files, exactly the kernel's holes; block devices are all data.
size = h.get_size()
got = space.export_map(h, size)
if path == alloc_path:
    want = space.holes(path, 0, size)
    assert got == want, f"extents {got}\n!= file holes {want}"
else:
    assert got == [(0, size, False)], got
h.shutdown()
PY
  nbdinfo --map "$URI" | sed 's/^/    /'
  stop_server
  grep -i error "$SERVER_LOG" && fail "$name: server logged errors"
  pass "$name: trim, zero, fast zero, cache, extents"
}

check "ext4 file" "$ext4/file.img" "$ext4/file.img" 512
check "xfs 4K file" "$xfs/file.img" "$xfs/file.img" 4096
check "loop 512" "$loop512" "$ext4/loop512.img" 512
check "loop 4096" "$loop4k" "$ext4/loop4k.img" 4096

# tmpfs punches holes but cannot zero a range: a fast zero without holes fails at once with
# ENOTSUP; a plain one falls back to writing zeroes, and says so once.
tmp=$(make_fs tmpfs 128M)
random_file "$tmp/t.img" $((8 << 20))
start_server -- file="$tmp/t.img"
$PYTHON - "$URI" <<'PY' || fail "tmpfs fast zero"
import sys, nbd, space
h = space.connect(sys.argv[1])
for _ in range(2):
    space.expect_errno(lambda: h.zero(1 << 20, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE),
                       ("ENOTSUP", "EOPNOTSUPP"))
h.zero(1 << 20, 0, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(1 << 20, 0) == bytes(1 << 20)
h.zero(1 << 20, 2 << 20, nbd.CMD_FLAG_FAST_ZERO)  # holes allowed: punching is cheap
assert h.pread(1 << 20, 2 << 20) == bytes(1 << 20)
PY
stop_server
grep -q "zeroing ranges (fallocate ZERO_RANGE) is not supported by the backing: switched off" "$SERVER_LOG" ||
  { cat "$SERVER_LOG"; fail "the ZERO_RANGE fallback was not logged"; }
[ "$(grep -c "switched off" "$SERVER_LOG")" -eq 1 ] || fail "the fallback must be logged once"
pass "tmpfs: fast zero refused with ENOTSUP, slow zero falls back to writing, logged once"
