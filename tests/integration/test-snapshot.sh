#!/usr/bin/env bash
# Live snapshots by reflink under writes, on xfs (512-byte sectors), xfs4k (4K-native) and
# btrfs (unless the kernel lacks it, which is printed):
# four connections write aligned and unaligned blocks, each in a region of its own, while 20
# snapshots are taken one after another through the control socket (and, on xfs4k, one more
# through `loopdio snapshot`); each must hold every write acknowledged before its command was
# sent and none sent after its reply (snapshot.py checks that against the writes' log), and
# the pauses are printed. With the writers gone, one more snapshot is identical to the image
# (qemu-img compare). The same, five times each, with aio=io_uring and with aio=sync and
# buffered I/O. Then a 16 GiB sparse image with 2 GiB written is snapshotted in
# under a second, end to end.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit mkfs.xfs xfs_info mkfs.btrfs qemu-img

LOOPDIO=$LOOPDIO_BUILD/loopdio
export LOOPDIO_RUN_DIR=$T/run
size=$((64 << 20))

kinds="xfs xfs4k btrfs"
if ! grep -qw btrfs /proc/filesystems && ! modprobe -q btrfs 2>/dev/null; then
  echo "SKIP btrfs (kernel): this kernel has no btrfs; xfs and xfs4k only"
  kinds="xfs xfs4k"
fi
for kind in $kinds; do
  mnt=$(make_fs $kind 1G)
  [ $kind = btrfs ] || xfs_info "$mnt" | grep -q 'reflink=1' ||
    fail "$kind: mkfs.xfs made no reflink=1 filesystem"
  img=$mnt/disk.img
  truncate -s $size "$img"
  mkdir "$mnt/snaps"
  if [ $kind != xfs4k ]; then
    # The plugin run directly by nbdkit, file= and control=.
    start_server -- file="$img" control="$T/ctl-$kind.sock"
    $PYTHON "$TESTS_DIR/snapshot.py" --uri "$URI" --image "$img" --size $size \
      --snapdir "$mnt/snaps" --control "$T/ctl-$kind.sock" --count 20 ||
      { cat "$SERVER_LOG"; fail "$kind: snapshots under writes"; }
    grep -q "snapshot of $img to $mnt/snaps/snap1.img: 64.0 MiB, the export paused" "$SERVER_LOG" ||
      { cat "$SERVER_LOG"; fail "$kind: no notice in the server's log"; }
    grep -o 'snap[0-9]*.img: .*' "$SERVER_LOG"  # where each pause went
    # With the writers gone, a snapshot is the image: qemu-img compare finds them identical.
    $PYTHON - "$T/ctl-$kind.sock" "$mnt/snaps/idle.img" <<'PY' || fail "$kind: idle snapshot"
import json, sys, control_client
cmd = "snapshot " + json.dumps({"exports": [{"dest": sys.argv[2]}]})
reply = json.loads(control_client.ask(sys.argv[1], cmd, timeout=120)[0])
if not reply.get("ok"):
    raise AssertionError(reply)
PY
    qemu-img compare -q -f raw -F raw "$img" "$mnt/snaps/idle.img" ||
      fail "$kind: qemu-img compare: a snapshot of an idle export differs from the image"
    stop_server
  else
    # Through `loopdio serve`, so that `loopdio snapshot` finds the export by its socket.
    sock=$T/serve-$kind.sock
    serve_until_ready "$T/serve-$kind.out" "$LOOPDIO" serve --unix "$sock" "$img"
    ctl=$(ls "$LOOPDIO_RUN_DIR"/*.ctl)
    $PYTHON "$TESTS_DIR/snapshot.py" --uri "nbd+unix:///?socket=$sock" --image "$img" \
      --size $size --snapdir "$mnt/snaps" --control "$ctl" --count 20 --cli "$LOOPDIO" "$sock" ||
      { cat "$T/serve-$kind.out.err"; fail "$kind: snapshots under writes"; }
    stop_serve
  fi
  # A snapshot is a file of its own: it stays when the image changes or goes.
  cmp -s "$mnt/snaps/snap1.img" "$mnt/snaps/snap2.img" && fail "$kind: two snapshots under writes are equal"
  pass "$kind: 20 snapshots under 4 writing connections, each exactly a point in their writes"
done

# The other engines, and buffered I/O (writes wait in the page cache until fdatasync): five
# snapshots each, on the xfs above.
for params in "aio=io_uring" "aio=sync directio=0"; do
  img=$mnt/disk-${params%% *}.img
  truncate -s $size "$img"
  rm -f "$mnt"/snaps/*
  start_server -- file="$img" $params control="$T/ctl-other.sock"
  in_use=$($PYTHON "$TESTS_DIR/control_client.py" "$T/ctl-other.sock" status |
    $PYTHON -c 'import json, sys; r = json.load(sys.stdin); print(r["aio_in_use"], "dio", r["dio"])')
  $PYTHON "$TESTS_DIR/snapshot.py" --uri "$URI" --image "$img" --size $size \
    --snapdir "$mnt/snaps" --control "$T/ctl-other.sock" --count 5 ||
    { cat "$SERVER_LOG"; fail "$params: snapshots under writes"; }
  stop_server
  pass "$params ($in_use): 5 snapshots under writes, each exactly a point in them"
done

# 16 GiB, sparse, 2 GiB written in 1 MiB pieces all over it (2048 extents): a clone shares
# extents and copies none, so the time does not grow with the data.
mnt=$(make_fs xfs 24G)
big=$mnt/big.img
truncate -s 16G "$big"
$PYTHON - "$big" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
piece = os.urandom(1 << 20)
for i in range(2048):
    os.pwrite(fd, piece, i * (8 << 20))
os.fsync(fd)
os.close(fd)
PY
start_server -- file="$big" control="$T/ctl-big.sock"
$PYTHON - "$T/ctl-big.sock" "$mnt/big-snap.img" <<'PY' || { cat "$SERVER_LOG"; fail "16 GiB snapshot"; }
import json, sys, time
import control_client
ctl, dest = sys.argv[1:]
t0 = time.monotonic()
(line,) = control_client.ask(ctl, "snapshot " + json.dumps({"exports": [{"dest": dest}]}), timeout=60)
took = time.monotonic() - t0
r = json.loads(line)
assert r["ok"], r
e = r["exports"][0]
print(f"16 GiB image, 2 GiB written: snapshot in {1000 * took:.0f} ms end to end, "
      f"the export paused {e['paused_ms']:.1f} ms")
assert e["bytes"] == 16 << 30, e
assert took < 1.0, f"took {took:.2f} s"
PY
[ "$(stat -c %s "$mnt/big-snap.img")" -eq $((16 << 30)) ] || fail "16 GiB snapshot: size"
# The same data where it was written, and holes where it was not (no bytes were copied).
cmp -n $((64 << 20)) "$big" "$mnt/big-snap.img" || fail "16 GiB snapshot: data"
used=$(du -k "$mnt/big-snap.img" | cut -f1)
[ "$used" -le $((2200 << 10)) ] || fail "16 GiB snapshot: ${used} KiB allocated"
stop_server
pass "16 GiB sparse image with 2 GiB written: snapshot in under a second"
