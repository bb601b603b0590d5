#!/usr/bin/env bash
# An image larger than the filesystem under it: writes past the free space fail with ENOSPC
# (aligned, unaligned, FUA), earlier data stays intact, this and a second connection keep
# working, and once space is freed the writes succeed. ext4 with every engine and buffered;
# xfs on a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup fallocate df

check_enospc() {  # URI: fill until ENOSPC, then check everything else still works
  $PYTHON - "$1" "$2" <<'PY'
import errno, os, sys, nbd
uri, ballast = sys.argv[1:]
def connect():
    h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(uri); return h
def expect_enospc(what, f):
    try:
        f()
    except nbd.Error as e:
        if e.errnum != errno.ENOSPC:
            raise SystemExit(f"{what}: {e.errno} ({e.string}), want ENOSPC")
        return
    raise SystemExit(f"{what}: succeeded on a full filesystem")
h = connect()
early = os.urandom(3 << 20)
h.pwrite(early, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"early-unaligned" * 70, 5 << 20 | 77)
h.flush()
chunk, off = os.urandom(1 << 20), 16 << 20
for step in (1 << 20, 65536, 4096):  # down to the last free block
    while True:
        if off + step > h.get_size() - (16 << 20):
            raise SystemExit("the whole image was written: the filesystem never filled")
        try:
            h.pwrite(chunk[:step], off + 123)  # unaligned: head and tail blocks are read first
        except nbd.Error as e:
            if e.errnum != errno.ENOSPC:
                raise SystemExit(f"filling: {e.errno} ({e.string}) at {off}, want ENOSPC")
            break
        off += step
full = off
print(f"  ENOSPC after {(full - (16 << 20)) / 2**20:.2f} MiB of writes")
far = h.get_size() - (8 << 20)
expect_enospc("aligned 64 KiB write", lambda: h.pwrite(chunk[:65536], far))
expect_enospc("unaligned 1000-byte write", lambda: h.pwrite(chunk[:1000], far + 4097))
expect_enospc("FUA write", lambda: h.pwrite(chunk[:8192], far + 65536, nbd.CMD_FLAG_FUA))
if h.pread(len(early), 4096) != early:
    raise SystemExit("data written before the filesystem filled up changed")
h.pwrite(b"overwrite" * 100, 4096 + 1000)  # in place: needs no new space
h.flush()
h2 = connect()
if h2.pread(900, 4096 + 1000) != b"overwrite" * 100 or h2.pread(1050, 5 << 20 | 77) != b"early-unaligned" * 70:
    raise SystemExit("a second connection reads wrong data")
os.unlink(ballast)
os.sync()
h.pwrite(chunk, full + 123)
h2.pwrite(chunk[:1000], far + 4097, nbd.CMD_FLAG_FUA)
if h2.pread(len(chunk), full + 123) != chunk or h.pread(1000, far + 4097) != chunk[:1000]:
    raise SystemExit("writes after freeing space read back wrong")
h.flush()
h.shutdown(); h2.shutdown()
PY
}

run() {  # FS ENGINE DIRECTIO
  local fs=$1 engine=$2 directio=$3 mnt img
  mnt=$(make_fs "$fs" "$([ "$fs" = xfs4k ] && echo 320M || echo 64M)")
  img=$mnt/big.img
  truncate -s 1G "$img"
  fallocate -l 8M "$mnt/ballast"
  start_server -- file="$img" aio="$engine" directio="$directio"
  assert_engine "$URI" "$engine"
  echo "$fs/$engine/directio=$directio: $(df -h --output=size,avail "$mnt" | tail -1 | xargs) free under a 1 GiB image"
  check_enospc "$URI" "$mnt/ballast" || fail "$fs/$engine/directio=$directio"
  stop_server
  grep -q "No space left on device" "$SERVER_LOG" || fail "$fs/$engine: ENOSPC not logged"
  pass "$fs/$engine/directio=$directio: ENOSPC to the client, earlier data intact, still serving"
}

for engine in $ENGINES; do run ext4 "$engine" 1; done
run ext4 libaio 0
run xfs4k io_uring 1
