#!/usr/bin/env bash
# dir=: one server for a directory of images, each an export named by its file name, each
# with its own probe, locks and direct-I/O state. Three images (one on a 4K-native xfs,
# bind-mounted into the directory; one of an odd size) are read, written and verified
# through their own names on both engines; `nbdinfo --list` shows exactly them with their own
# descriptions; a file added while the server runs is served from the next connection on;
# names that could leave the directory or are not images are refused.
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

for engine in libaio io_uring; do
  start_server -- dir="$d" aio=$engine control="$T/ctl-$engine"

  nbdinfo --list --json "$URI" >"$T/list.json" || fail "$engine: nbdinfo --list"
  $PYTHON - "$T/list.json" <<'PY' || fail "$engine: the list"
import json, sys
exports = {e["export-name"]: e.get("description", "") for e in json.load(open(sys.argv[1]))["exports"]}
assert sorted(exports) == ["a.img", "odd.img", "x4k.img"], sorted(exports)
assert "alignment 4096 (statx)" in exports["x4k.img"] and "xfs file" in exports["x4k.img"], exports
assert "alignment 512 (statx)" in exports["a.img"] and "ext4 file" in exports["a.img"], exports
for name, text in exports.items():
    assert "direct I/O on" in text, (name, text)
print("\n".join(f"  {n}: {t}" for n, t in sorted(exports.items())))
PY

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

  # Refused: no name, names leaving the directory, symlinks (followed nowhere), hidden
  # files, a directory, a missing file.
  for name in "" "../outside.img" "sub/../a.img" ".." "." "link.img" "passwd" ".hidden.img" \
              "sub" "missing.img" "/etc/passwd"; do
    $PYTHON - "$SOCK" "$name" 2>/dev/null <<'PY' && fail "$engine: export '$name' was served"
import sys, nbd
h = nbd.NBD(); h.set_export_name(sys.argv[2])
h.connect_unix(sys.argv[1])
PY
  done
  grep -q "no export name given" "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "no reason for the empty name"; }
  grep -q 'file=.*/link.img: is a symbolic link' "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "symlink reason"; }
  pass "$engine: refused '', ../outside.img, .., ., symlinks, .hidden.img, sub, missing.img"

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
