#!/usr/bin/env bash
# Unaligned reads and writes through a real nbdkit, on ext4, on xfs over a 4K-sector loop
# device and on tmpfs, with every engine: qemu-io patterns, then random unaligned requests
# from libnbd checked against a shadow copy, and the image file compared at the end. The
# advertised minimum block size must be the backing's direct-I/O alignment.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdsh qemu-io mkfs.xfs losetup

for fs in ext4 xfs4k tmpfs; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/disk.img
  random_file "$img" $((4 << 20))
  for engine in $ENGINES; do
    start_server -- file="$img" aio=$engine
    desc=$(nbdinfo --json "$URI" | $PYTHON -c 'import json,sys; e=json.load(sys.stdin)["exports"][0]; print(e["description"]); print(e["block_size_minimum"])')
    echo "$fs/$engine: $desc"
    min=$(echo "$desc" | tail -1)
    case $fs in
      xfs4k) [ "$min" = 4096 ] || fail "$fs: minimum block size $min, want 4096" ;;
      ext4) [ "$min" = 512 ] || fail "$fs: minimum block size $min, want 512" ;;
    esac
    case $fs in
      ext4 | xfs4k) echo "$desc" | grep -q "direct I/O on" || fail "$fs: direct I/O is not on" ;;
    esac
    assert_engine "$URI" "$engine"

    qemu-io -f raw "$URI" \
      -c "write -P 0x5a 1 1000" -c "read -P 0x5a 1 1000" \
      -c "write -P 0xa5 4095 2" -c "read -P 0xa5 4095 2" -c "read -P 0x5a 1 1000" \
      -c "write -P 0x11 8191 70001" -c "read -P 0x11 8191 70001" \
      -c "write -z 100 5000" -c "read -P 0 100 5000" >"$T/qemu-io.out" || fail "qemu-io"
    grep -q "Pattern verification failed" "$T/qemu-io.out" && fail "$fs/$engine: qemu-io pattern"

    cp "$img" "$T/shadow"
    $PYTHON - "$URI" "$T/shadow" "$img" <<'PY' || fail "$fs/$engine: random unaligned I/O"
import sys, nbdtest
uri, shadow_path, img = sys.argv[1:]
shadow = bytearray(open(shadow_path, "rb").read())
n = nbdtest.random_io(uri, len(shadow), 1500, 42, shadow, connections=3)
open(shadow_path, "wb").write(shadow)
PY
    stop_server
    cmp "$img" "$T/shadow" || fail "$fs/$engine: the image file differs from the shadow copy"
    [ "$(stat -c %s "$img")" = $((4 << 20)) ] || fail "$fs/$engine: the image changed size"
    grep -i "error" "$SERVER_LOG" && fail "$fs/$engine: server logged errors"
    pass "$fs/$engine"
  done
done
