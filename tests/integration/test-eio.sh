#!/usr/bin/env bash
# A failing disk: faultyfs (tests/tools) passes an image through FUSE, failing chosen byte
# ranges with EIO. Exactly the requests touching a bad range get EIO, each logged by the
# server; neighbours, other connections and later requests work (faults.py). Every engine,
# under FUSE's page-cache and direct_io modes.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo mountpoint
FAULTYFS=${LOOPDIO_BUILD:?set LOOPDIO_BUILD to the build directory}/tests/tools/faultyfs
[ -x "$FAULTYFS" ] || fail "$FAULTYFS is not built (tests/tools/CMakeLists.txt)"
grep -qw fuse /proc/filesystems || modprobe fuse 2>/dev/null || true
grep -qw fuse /proc/filesystems || kernel_lacks "no FUSE in this kernel (/proc/filesystems)"
[ -c /dev/fuse ] || skip "no /dev/fuse, though the kernel has FUSE"

disk=$(make_fs ext4 64M)
random_file "$T/orig.img" $((8 << 20))

mount_faultyfs() {  # MODE-OPTION: mounts $disk/disk.img on $T/fuse; sets FUSE_PID
  mkdir -p "$T/fuse"
  : >"$T/faults"
  "$FAULTYFS" "$@" --log --faults "$T/faults" "$disk/disk.img" "$T/fuse" \
    2>"$T/faultyfs.log" &
  FUSE_PID=$!
  at_exit "umount -l $T/fuse; kill $FUSE_PID"
  for _ in $(seq 100); do [ -f "$T/fuse/disk.img" ] && return 0; sleep 0.05; done
  cat "$T/faultyfs.log" >&2
  fail "faultyfs did not mount"
}

unmount_faultyfs() {  # a ring's files are released after its process exits: retry
  for _ in $(seq 100); do umount "$T/fuse" 2>/dev/null && break; sleep 0.05; done
  mountpoint -q "$T/fuse" && fail "$T/fuse stays busy"
  wait "$FUSE_PID" || fail "faultyfs exited with $?"
}

for mode in page-cache direct-io; do
  for engine in $ENGINES; do
    cp "$T/orig.img" "$disk/disk.img"
    opts=()
    [ $mode = direct-io ] && opts=(--direct-io)
    mount_faultyfs "${opts[@]}"
    start_server -- file="$T/fuse/disk.img" aio="$engine"
    assert_engine "$URI" "$engine"
    echo "faultyfs $mode, $engine: $(nbdinfo "$URI" | grep description: | sed 's/.*description: //')"
    $PYTHON -m faults "$URI" "$T/faults" "$T/orig.img" "$T/expected.img" >"$T/faults.out" ||
      { cat "$T/faults.out"; fail "$mode/$engine"; }
    cat "$T/faults.out"
    stop_server
    want=$(sed -n 's/^EIO replies: //p' "$T/faults.out")
    got=$(grep -c "error: .*Input/output error" "$SERVER_LOG" || true)
    [ "$got" = "$want" ] || { cat "$SERVER_LOG"; fail "$mode/$engine: $got errors logged, $want EIO replies"; }
    echo "  the server logged $got errors, one for each; faultyfs injected $(grep -c injected "$T/faultyfs.log")"
    unmount_faultyfs
    cmp "$disk/disk.img" "$T/expected.img" || fail "$mode/$engine: the image is not what was written"
    pass "$mode/$engine: EIO for exactly the bad ranges, everything else served"
  done
done
