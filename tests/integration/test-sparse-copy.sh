#!/usr/bin/env bash
# Sparse files stay sparse: a sparse image copied out through loopdio with nbdcopy and with
# qemu-img convert gives a sparse destination (allocated sizes compared with du), and
# qemu-img map sees the same holes.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdcopy qemu-img

mnt=$(make_fs ext4 1G)
src=$mnt/sparse.img
truncate -s 256M "$src"
for off in 0 37 100 201; do
  dd if=/dev/urandom of="$src" bs=1M count=3 seek=$off conv=notrunc status=none
done
src_kib=$(du -k "$src" | cut -f1)

start_server -- file="$src" directio=1
qemu-img map -f raw --output=json "$URI" >"$T/map.json"
$PYTHON - "$T/map.json" <<'PY' || fail "qemu-img map"
import json, sys
data = sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"])
assert data == 12 << 20, f"qemu-img map reports {data} bytes of data, want 12 MiB"
PY
nbdcopy -- "$URI" "$mnt/out-nbdcopy.img" || fail "nbdcopy"
qemu-img convert -f raw -O raw "$URI" "$mnt/out-qemu.img" || fail "qemu-img convert"
stop_server

for out in out-nbdcopy out-qemu; do
  cmp "$src" "$mnt/$out.img" || fail "$out: contents differ"
  kib=$(du -k "$mnt/$out.img" | cut -f1)
  echo "$out: $kib KiB allocated (source: $src_kib KiB, apparent 262144 KiB)"
  [ "$kib" -le $((src_kib + 1024)) ] || fail "$out is not sparse: $kib KiB allocated"
done
pass "copies out through loopdio stay sparse"
