#!/usr/bin/env bash
# A snapshot placed in a served directory (dir=) is an export like any other, and a writable
# one: writes to the clone leave the origin as it was, and writes to the origin leave the
# clone. Snapshots through `loopdio snapshot` with the export's URI (a connection open), and
# through the control socket of an export no client has open.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit mkfs.xfs nbdinfo

LOOPDIO=$LOOPDIO_BUILD/loopdio
export LOOPDIO_RUN_DIR=$T/run
mnt=$(make_fs xfs 512M)
d=$mnt/vms
mkdir "$d"
random_file "$d/vm1.img" $((8 << 20))
random_file "$d/vm2.img" $((8 << 20))
cp "$d/vm2.img" "$T/vm2.orig"
sock=$T/dir.sock
serve_until_ready "$T/serve.out" "$LOOPDIO" serve --unix "$sock" "$d"
ctl=$(ls "$LOOPDIO_RUN_DIR"/*.ctl)
uri() { echo "nbd+unix:///$1?socket=$sock"; }

mkfifo "$T/snapped"
# vm1 written through a connection that stays open while the CLI snapshots it.
$PYTHON - "$sock" "$T" <<'PY' &
import os, sys, nbd
sock, t = sys.argv[1:]
def conn(name):
    h = nbd.NBD(); h.set_strict_mode(0); h.set_export_name(name); h.connect_unix(sock)
    return h
h = conn("vm1.img")
h.pwrite(b"A" * 8192, 0)
h.pwrite(b"a" * 100, 10001)               # unaligned
open(t + "/written", "w").close()
# The snapshot is taken now; then both are written, each where the other must not change.
open(t + "/snapped").read()               # a FIFO: blocks until the snapshot is taken
c = conn("vm1-snap.img")
assert c.pread(8192, 0) == b"A" * 8192 and c.pread(100, 10001) == b"a" * 100, "the clone lacks a write"
c.pwrite(b"C" * 4096, 4096)               # into the clone
h.pwrite(b"O" * 4096, 65536)              # into the origin
c.flush(); h.flush()
assert h.pread(4096, 4096) == b"A" * 4096, "a write to the clone reached the origin"
assert c.pread(4096, 65536) != b"O" * 4096, "a write to the origin reached the clone"
open(t + "/checked", "w").close()
PY
client=$!
at_exit "kill $client"
wait_until 20 test -e "$T/written" || fail "the writes did not happen"
"$LOOPDIO" snapshot "$(uri vm1.img)" "$d/vm1-snap.img" >"$T/snap.out" || fail "loopdio snapshot vm1"
cat "$T/snap.out"
[[ $(cat "$T/snap.out") == "$d/vm1-snap.img: 8.0 MiB, $(uri vm1.img) paused "*" ms" ]] ||
  fail "loopdio snapshot: output"
echo go >"$T/snapped"
wait "$client" || fail "clone and origin are not independent"

# Listed, and described, as an export of its own.
nbdinfo --list "nbd+unix://?socket=$sock" | grep -q 'export="vm1-snap.img"' || fail "the clone is not listed"

# An export no connection has open: the control socket opens it for the snapshot.
reply=$($PYTHON "$TESTS_DIR/control_client.py" "$ctl" \
  "snapshot {\"exports\":[{\"name\":\"vm2.img\",\"dest\":\"$d/vm2-snap.img\"}]}")
echo "$reply" | grep -q '^{"ok":true,"exports":\[{"name":"vm2.img","dest":"'"$d"'/vm2-snap.img","bytes":8388608,"paused_ms":' ||
  fail "snapshot of an export not open: $reply"
cmp "$d/vm2-snap.img" "$T/vm2.orig" || fail "vm2's snapshot differs"
$PYTHON - "$sock" <<'PY' || fail "vm2's clone: writes"
import sys, nbd
h = nbd.NBD(); h.set_export_name("vm2-snap.img"); h.connect_unix(sys.argv[1])
h.pwrite(b"Z" * 4096, 0); h.flush(); h.shutdown()
PY
cmp "$d/vm2.img" "$T/vm2.orig" || fail "a write to vm2's clone changed vm2"
# Which export: named, and one that is there.
for arg in "{\"exports\":[{\"dest\":\"$d/x.img\"}]}" "{\"exports\":[{\"name\":\"nope.img\",\"dest\":\"$d/x.img\"}]}"; do
  reply=$($PYTHON "$TESTS_DIR/control_client.py" "$ctl" "snapshot $arg")
  echo "$reply" | grep -q '^{"ok":false,"error":"snapshot: ' || fail "snapshot $arg: $reply"
  echo "refused: $reply"
done
[ ! -e "$d/x.img" ] || fail "a refused snapshot left $d/x.img"
expect_error 1 "serves a directory: name one of its exports" "$LOOPDIO" snapshot "$sock" "$d/x.img"
stop_serve
pass "snapshots in a served directory are exports of their own, independent of their origin"
