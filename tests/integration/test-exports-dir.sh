#!/usr/bin/env bash
# dir=: one server for a directory of images, each an export named by its file name, each
# with its own probe, locks and direct-I/O state. Three images (one on a 4K-native xfs,
# bind-mounted into the directory; one of an odd size) are read, written and verified
# through their own names on both engines; `nbdinfo --list` shows exactly them with their own
# descriptions (from statx before any connection: a listing opens nothing, not even a device
# node), with control characters escaped; a file added while the server runs is served
# from the next connection on; every name that could leave the directory or is not an image
# is refused, each with its own reason, which reaches the client; a name swapped between a
# file and a FIFO while clients connect is either served as the file or refused, never
# opened as the FIFO.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo

ext4=$(make_fs ext4 256M)
xfs=$(make_fs xfs4k 512M)
d=$ext4/images
mkdir "$d" "$d/sub"
random_file "$d/a.img" $((8 << 20))
random_file "$d/odd.img" $(((1 << 20) + 100))
random_file "$xfs/x.img" $((16 << 20))
touch "$d/x4k.img"
mount --bind "$xfs/x.img" "$d/x4k.img"
at_exit "umount -l $d/x4k.img"
random_file "$d/.hidden.img" 65536
ln -s "$d/a.img" "$d/link.img"
ln -s /etc/passwd "$d/passwd"
random_file "$ext4/outside.img" 65536
mkfifo "$d/fifo.img"
$PYTHON -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$d/sock.img"
mknod "$d/null.img" c 1 3
# A loop device node no one has made: opening it would make the kernel create loop200.
[ ! -e /sys/block/loop200 ] || fail "loop200 exists already"
mknod "$d/blk.img" b 7 200
at_exit "losetup -d /dev/loop200"
random_file "$d/$(printf 'esc\033[31m.img')" 4096
random_file "$d/$(printf 'new\nline.img')" 4096
random_file "$d/$(printf 'bad\377.img')" 4096

for engine in libaio io_uring; do
  start_server -- dir="$d" aio=$engine control="$T/ctl-$engine"

  nbdinfo --list --json "$URI" >"$T/list.json" || fail "$engine: nbdinfo --list"
  nbdinfo --list --json "$URI" >/dev/null || fail "$engine: nbdinfo --list, twice"
  $PYTHON - "$T/list.json" <<'PY' || fail "$engine: the list"
import json, sys
exports = {e["export-name"]: e.get("description", "") for e in json.load(open(sys.argv[1]))["exports"]}
assert sorted(exports) == ["a.img", "odd.img", "x4k.img"], sorted(exports)
assert "alignment 4096 (statx)" in exports["x4k.img"] and "xfs file" in exports["x4k.img"], exports
assert "alignment 512 (statx)" in exports["a.img"] and "ext4 file" in exports["a.img"], exports
for name, text in exports.items():
    assert "direct I/O possible" in text and "not open yet" in text, (name, text)
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in text), (name, text)
print("\n".join(f"  {n}: {t}" for n, t in sorted(exports.items())))
PY
  [ ! -e /sys/block/loop200 ] || fail "$engine: listing opened the block device node blk.img"
  # Each name that cannot be an export is reported once, escaped, however often it is listed.
  for why in 'export "esc\x1b[31m.img": a name may not hold control characters' \
             'export "new\x0aline.img": a name may not hold control characters' \
             "blk.img is a block device: a directory's devices are served only with devices=1" \
             'fifo.img is not a regular file' 'export name is not valid UTF-8'; do
    n=$(grep -F "not served: " "$SERVER_LOG" | grep -cF "$why" || true)
    [ "$n" = 1 ] || { cat "$SERVER_LOG"; fail "$engine: '$why' reported $n times, not once"; }
  done
  if LC_ALL=C grep -q $'\033' "$SERVER_LOG"; then fail "$engine: a raw ESC reached the log"; fi
  pass "$engine: listed from statx, no device opened, odd names reported once, escaped"

  $PYTHON - "$SOCK" "$d" "$engine" <<'PY' || fail "$engine: data through each export"
import os, random, sys, nbd
sock, d, engine = sys.argv[1:]
for name in ("a.img", "odd.img", "x4k.img"):
    path = os.path.join(d, name)
    shadow = bytearray(open(path, "rb").read())
    h = nbd.NBD(); h.set_strict_mode(0); h.set_full_info(True); h.set_export_name(name)
    h.connect_unix(sock)
    assert h.get_size() == len(shadow), (name, h.get_size(), len(shadow))
    assert f"engine {engine}," in h.get_export_description(), h.get_export_description()
    rng = random.Random(name)
    for _ in range(200):
        off = rng.randrange(len(shadow)); n = rng.randint(1, min(len(shadow) - off, 70000))
        if rng.random() < 0.5:
            data = rng.randbytes(n); h.pwrite(data, off); shadow[off:off + n] = data
        else:
            assert h.pread(n, off) == bytes(shadow[off:off + n]), (name, off, n)
    h.flush(); h.shutdown()
    assert open(path, "rb").read() == bytes(shadow), f"{name}: the file differs"
    print(f"  {name}: 200 unaligned requests verified, {len(shadow)} bytes on disk right")
PY

  # Listed again, the exports opened are described by their probe now.
  nbdinfo --list --json "$URI" | grep -q '"description": "loopdio: [^"]*x4k.img (xfs file, 16.0 MiB): direct I/O on' ||
    fail "$engine: x4k.img's probed description is not listed"

  # Refused, each with its reason, as the client receives it.
  $PYTHON - "$SOCK" <<'PY' || fail "$engine: refusals"
import sys, nbdtest
sock = sys.argv[1]
cases = {
    "": "no export name given",
    "../outside.img": "names starting with '.' are not served",
    "sub/../a.img": "a name may not hold '/'",
    "/etc/passwd": "a name may not hold '/'",
    "..": "names starting with '.' are not served",
    ".": "names starting with '.' are not served",
    ".hidden.img": "names starting with '.' are not served",
    "link.img": "is not a regular file (a symbolic link: never followed)",
    "passwd": "is not a regular file (a symbolic link: never followed)",
    "sub": "is not a regular file",
    "missing.img": "No such file or directory",
    "fifo.img": "is not a regular file",
    "sock.img": "is not a regular file",
    "null.img": "is not a regular file",
    "blk.img": "is a block device: a directory's devices are served only with devices=1",
    "esc\x1b[31m.img": "a name may not hold control characters",
}
for name, why in cases.items():
    said = nbdtest.refusal(sock, name)
    assert why in said, (name, why, said)
    assert "\x1b" not in said, (name, said)
    print(f"  {name!r}: {said}")
PY
  [ ! -e /sys/block/loop200 ] || fail "$engine: a refused blk.img was opened"
  pass "$engine: 16 names refused, each with its own reason"

  # A name swapped between an image and a FIFO while clients connect: each connection gets
  # the image (and reads it right) or a refusal; none hangs on the FIFO, none is served it.
  random_file "$ext4/swap.img" 65536  # the same filesystem: a hard link each round
  touch "$T/swapping"
  (while [ -e "$T/swapping" ]; do
     ln -f "$ext4/swap.img" "$d/.swap.tmp" && mv -f "$d/.swap.tmp" "$d/swap.img"
     mkfifo "$d/.swap.tmp" && mv -f "$d/.swap.tmp" "$d/swap.img"
   done) &
  swapper=$!
  at_exit "rm -f $T/swapping"
  timeout 120 $PYTHON - "$SOCK" "$ext4/swap.img" <<'PY' || { rm "$T/swapping"; fail "$engine: the swap race"; }
import sys, nbd
sock, img = sys.argv[1:]
want = open(img, "rb").read(4096)
served = refused = 0
for _ in range(200):
    h = nbd.NBD(); h.set_export_name("swap.img")
    try:
        h.connect_unix(sock)
    except nbd.Error:
        refused += 1
        continue
    assert h.get_size() == 65536 and h.pread(4096, 0) == want
    h.shutdown()
    served += 1
print(f"  swap.img: {served} connections served the image, {refused} refused")
PY
  rm "$T/swapping"
  wait $swapper
  rm -f "$d/swap.img" "$d/.swap.tmp"

  # A file added while the server runs is served from the next connection on.
  random_file "$d/new.img" $((2 << 20))
  nbdinfo --list --json "$URI" | grep -q '"export-name": "new.img"' || fail "$engine: new.img not listed"
  $PYTHON - "$SOCK" "$d/new.img" <<'PY' || fail "$engine: new.img not served"
import sys, nbd
h = nbd.NBD(); h.set_export_name("new.img"); h.connect_unix(sys.argv[1])
assert h.pread(4096, 8192) == open(sys.argv[2], "rb").read()[8192:12288]
h.shutdown()
PY
  rm "$d/new.img"
  stop_server
  pass "$engine: three exports by name, each verified; a file added while running is served"
done
