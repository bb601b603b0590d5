#!/usr/bin/env bash
# loopdio attach, detach and list for devices, on a kernel without the nbd module: the
# sysfs and /dev that loopdio reads are replaced by directories (LOOPDIO_SYSFS,
# LOOPDIO_DEV_DIR) and nbd-client by a stand-in (LOOPDIO_NBD_CLIENT) that records its
# arguments and, like the kernel, holds N connections to the server until `-d`. Everything
# else is real: nbdkit, the plugin, the private socket, the control socket and the state.
# The VM test drives the same commands with the real nbd module.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit nbdinfo mkfs.xfs losetup pgrep cmp stat
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
[ -x "$LOOPDIO" ] || fail "$LOOPDIO is not built"
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN
export LOOPDIO_SYSFS=$T/sys LOOPDIO_DEV_DIR=$T/dev LOOPDIO_NBD_CLIENT=$T/nbd-client
export STANDIN_LOG=$T/nbd-client.log STANDIN_HOLDER=$T/holder.py PYTHON

mkdir -p "$T/sys/module/nbd" "$T/dev"
for i in 0 1 2 3; do
  mkdir -p "$T/sys/block/nbd$i"
  echo 0 >"$T/sys/block/nbd$i/size"
  : >"$T/dev/nbd$i"
done
echo 1 >"$T/sys/block/nbd0/pid"  # nbd0 is taken by somebody else
echo 2048 >"$T/sys/block/nbd0/size"

cat >"$T/holder.py" <<'PY'
# The kernel's side of an attached device: N connections to the server, until SIGTERM.
import signal, sys, nbd
sock, n = sys.argv[1], int(sys.argv[2])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
handles = []
for _ in range(n):
    h = nbd.NBD()
    h.connect_unix(sock)
    handles.append(h)
print("ready", flush=True)
signal.sigwait({signal.SIGTERM})
for h in handles:
    h.flush()
    h.shutdown()
PY
cat >"$T/nbd-client" <<'SH'
#!/usr/bin/env bash
# A stand-in for nbd-client 3.24: `-unix SOCKET DEVICE -b N -C N [-readonly]` and `-d DEVICE`.
set -eu
echo "$*" >>"$STANDIN_LOG"
sys=$LOOPDIO_SYSFS/block
if [ "$1" = -d ]; then
  n=$(basename "$2")
  if [ -f "$sys/$n/pid" ]; then
    pid=$(cat "$sys/$n/pid")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  fi
  rm -f "$sys/$n/pid"
  echo 0 >"$sys/$n/size"
  exit 0
fi
[ "$1" = -unix ] || { echo "Error: unexpected arguments: $*"; exit 1; }
sock=$2 dev=$3 conns=1
shift 3
while [ $# -gt 0 ]; do
  case $1 in
    -b) shift 2 ;;
    -C) conns=$2; shift 2 ;;
    -readonly) shift ;;
    *) echo "Error: unknown option $1"; exit 1 ;;
  esac
done
echo "Warning: the oldstyle protocol is no longer supported."
if [ -n "${STANDIN_FAIL:-}" ]; then
  echo "Error: Failed to setup device, check dmesg"
  echo "Exiting."
  exit 1
fi
n=$(basename "$dev")
sleep "${STANDIN_SLEEP:-0}"
size=$(nbdinfo --size "nbd+unix:///?socket=$sock")
"$PYTHON" "$STANDIN_HOLDER" "$sock" "$conns" >"$sys/$n/holder.out" 2>&1 &
holder=$!
until grep -qs ready "$sys/$n/holder.out"; do kill -0 $holder; sleep 0.02; done
echo $holder >"$sys/$n/pid"
echo $((size / 512)) >"$sys/$n/size"
SH
chmod +x "$T/nbd-client"
at_exit "for p in $T/sys/block/*/pid; do kill \$(cat \$p); done"
# A test that fails half-way leaves attached servers: stop them, by the pids in the state.
at_exit "for f in $T/run/*.json; do kill \$(sed -n 's/.*\"pid\":\([0-9]*\).*/\1/p' \$f); done"


# nothing_of nbdN: no state, socket, log or server of that device is left.
nothing_of() {
  ! ls "$LOOPDIO_RUN_DIR/$1".* >/dev/null 2>&1 || { ls -la "$LOOPDIO_RUN_DIR"; fail "files of $1 left"; }
  ! pgrep -f "control=$LOOPDIO_RUN_DIR/$1.ctl" >/dev/null || fail "a server of $1 left running"
}

# gone PID: the process has exited (a zombie of whoever adopted it counts as gone).
gone() { ! grep -qv '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

# row DEVICE: the device's object of `loopdio list --json`, as Python literals one a line.
row() {
  "$LOOPDIO" list --json | $PYTHON -c '
import json, sys
for r in json.load(sys.stdin):
    if r["name"] == sys.argv[1]:
        for k, v in r.items(): print(f"{k}={v}")' "$1"
}

mnt=$(make_fs xfs4k 512M)  # 4096-byte sectors: the device must get -b 4096
img=$mnt/disk.img
random_file "$img" $((16 << 20))

# --- attach: first free device, minimum block size, connections, private socket ----------
dev=$("$LOOPDIO" attach --show -C 2 "$img") || fail "attach"
[ "$dev" = "$T/dev/nbd1" ] || fail "attach took $dev, not the first free device $T/dev/nbd1"
grep -qx -- "-unix $T/run/private/nbd1.sock $T/dev/nbd1 -b 4096 -C 2" "$STANDIN_LOG" ||
  { cat "$STANDIN_LOG"; fail "nbd-client was not run as expected"; }
[ "$(stat -c %a "$T/run/private")" = 700 ] || fail "the device's socket is not root's only"
row "$dev" >"$T/row"
for kv in "kind=device" "back-file=$img" "log-sec=4096" "dio=True" "conns=2" "ro=False" "aio=sync+libaio"; do
  grep -qx -- "$kv" "$T/row" || { cat "$T/row"; fail "list --json: no $kv"; }
done
pid=$(sed -n 's/^pid=//p' "$T/row")
[ "$(cat /proc/$pid/comm)" = nbdkit ] || fail "PID $pid is not nbdkit"
[ "$(ps -o sid= -p "$pid")" != "$(ps -o sid= -p $$)" ] || fail "the server is not in a session of its own"
"$LOOPDIO" list | grep -qE "^$dev +$img +0 +0 +0 +1 +sync\+libaio +4096 +2 +$pid\$" || { "$LOOPDIO" list; fail "list"; }
pass "attach --show -C 2: $dev, -b 4096, listed"

# What the kernel would write, through the device's socket, unaligned; then set both ways.
$PYTHON - "nbd+unix:///?socket=$T/run/private/nbd1.sock" "$img" "$T/shadow" <<'PY' || fail "I/O through the device's server"
import sys, nbdtest
uri, img, out = sys.argv[1:]
shadow = bytearray(open(img, "rb").read())
nbdtest.random_io(uri, len(shadow), 400, 11, shadow, connections=2)
open(out, "wb").write(shadow)
PY
"$LOOPDIO" set --direct-io=off nbd1 || fail "set off by name"
[ "$(row "$dev" | sed -n 's/^dio=//p')" = False ] || fail "dio after set off"
"$LOOPDIO" set --direct-io=on "$dev" || fail "set on by device"
[ "$(row "$dev" | sed -n 's/^dio=//p')" = True ] || fail "dio after set on"

# --- a second device, read-only, with options ------------------------------------------
img2=$mnt/disk2.img
random_file "$img2" $((4 << 20))
dev2=$("$LOOPDIO" attach --show -r --aio sync -o 1M --sizelimit 2M "$img2") || fail "attach -r"
[ "$dev2" = "$T/dev/nbd2" ] || fail "second attach took $dev2"
grep -qx -- "-unix $T/run/private/nbd2.sock $T/dev/nbd2 -b 4096 -C 1 -readonly" "$STANDIN_LOG" || fail "-readonly"
row "$dev2" >"$T/row"
for kv in "ro=True" "aio=sync" "offset=1048576" "sizelimit=2097152"; do
  grep -qx -- "$kv" "$T/row" || { cat "$T/row"; fail "list --json (read-only device): no $kv"; }
done
pass "attach -r --aio sync -o --sizelimit"

# --- refusals leave nothing behind ----------------------------------------------------------
expect_error 2 "$T/dev/nbd0 is busy: connected by nbd-client pid 1" "$LOOPDIO" attach "$img" "$T/dev/nbd0"
nothing_of nbd0
expect_error 2 "$T/dev/nbd1 is still attached to $img" "$LOOPDIO" attach "$img" nbd1
expect_error 2 "$T/dev/nbd9: no such NBD device" "$LOOPDIO" attach "$img" nbd9
nothing_of nbd9
expect_error 1 "/dev/sda: not an NBD device" "$LOOPDIO" attach "$img" /dev/sda
expect_error 2 "$T/missing.img: No such file or directory" "$LOOPDIO" attach "$T/missing.img"
nothing_of nbd3
img3=$mnt/disk3.img  # its own image: nbd1's server writes $img, and an image has one writer
random_file "$img3" $((4 << 20))
STANDIN_FAIL=1 expect_error 2 "nbd-client could not connect $T/dev/nbd3: Failed to setup device, check dmesg" \
  "$LOOPDIO" attach "$img3"
nothing_of nbd3
expect_error 2 "offset=16777216: at or beyond the end of $img" "$LOOPDIO" attach -o 16M "$img"
nothing_of nbd3
expect_error 2 "$T/dev/nbd0 was not attached by loopdio" "$LOOPDIO" detach "$T/dev/nbd0"
expect_error 1 "give a DEVICE or --all" "$LOOPDIO" detach
# SIGTERM while nbd-client runs: it finishes, then loopdio undoes everything.
: >"$STANDIN_LOG"
STANDIN_SLEEP=2 "$LOOPDIO" attach "$img3" 2>"$T/err" &
attach=$!
for i in $(seq 100); do grep -qs nbd3 "$STANDIN_LOG" && break; sleep 0.05; done
kill -TERM $attach
rc=0
wait $attach || rc=$?
[ $rc -eq 2 ] && grep -q "^loopdio: interrupted by Terminated: undone" "$T/err" || { cat "$T/err"; fail "SIGTERM: exit $rc"; }
grep -qx -- "-d $T/dev/nbd3" "$STANDIN_LOG" || fail "SIGTERM after nbd-client: the device was not disconnected"
nothing_of nbd3
pass "busy, missing, failing nbd-client, SIGTERM: refused or undone, nothing left"

# --- detach: flush, disconnect, stop; the image holds every write ---------------------------
"$LOOPDIO" detach "$dev" || fail "detach $dev"
grep -qx -- "-d $T/dev/nbd1" "$STANDIN_LOG" || fail "detach did not run nbd-client -d"
gone "$pid" || fail "the server outlived detach"
nothing_of nbd1
cmp "$img" "$T/shadow" || fail "the image differs from what was written through the device"
pass "detach: disconnected, server stopped, no write lost"

# --- a server that died: the state is swept by list -------------------------------------
pid2=$(row "$dev2" | sed -n 's/^pid=//p')
kill -KILL "$pid2"
for i in $(seq 100); do gone "$pid2" && break; sleep 0.05; done
"$LOOPDIO" list >"$T/list" 2>"$T/err" || fail "list with a dead server"
grep -qF "loopdio: $dev2: its server (pid $pid2) is gone" "$T/err" || { cat "$T/err"; fail "no notice"; }
! grep -q "$dev2" "$T/list" || fail "a dead export is listed"
nothing_of nbd2
"$T/nbd-client" -d "$dev2"
pass "stale state removed by list"

# --- detach --all ---------------------------------------------------------------------------
a=$("$LOOPDIO" attach --show "$img") && b=$("$LOOPDIO" attach --show "$img2") || fail "attach two"
[ "$a $b" = "$T/dev/nbd1 $T/dev/nbd2" ] || fail "attach two: $a $b"
"$LOOPDIO" detach --all || fail "detach --all"
nothing_of nbd1
nothing_of nbd2
[ -z "$("$LOOPDIO" list)" ] || fail "list not empty after detach --all"
pass "detach --all"
