#!/usr/bin/env bash
# A snapshot placed in a served directory (dir=) is an export like any other, and a writable
# one: writes to the clone leave the origin as it was, and writes to the origin leave the
# clone. Snapshots through `loopdio snapshot` with the export's URI (a connection open), and
# through the control socket of an export no client has open. Two exports snapshotted
# together are of one instant, under writes that alternate between them; `--all` takes
# every export of the directory; refusals leave nothing.
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
# Several exports at one instant. One connection writes sequence numbers to vm1, then (once
# acknowledged) the same number to vm2, and so on: at any instant vm1 holds vm2's number or
# the next one. Every snapshot of the two together must too.
mkdir "$mnt/group"
$PYTHON - "$sock" "$ctl" "$mnt/group" <<'PY' || fail "snapshots of two exports at one instant"
import json, struct, sys, threading, nbd
import control_client
sock, ctl, out = sys.argv[1:]
def conn(name):
    h = nbd.NBD(); h.set_export_name(name); h.connect_unix(sock)
    return h
h1, h2 = conn("vm1.img"), conn("vm2.img")
cv, done, stop = threading.Condition(), [0], threading.Event()
def writer():
    n = 0
    while not stop.is_set():
        n += 1
        block = struct.pack("<Q", n) * 512
        h1.pwrite(block, 1 << 20)
        h2.pwrite(block, 1 << 20)
        with cv:
            done[0] = n
            cv.notify_all()
t = threading.Thread(target=writer)
t.start()
results = []
try:
    for i in range(10):
        with cv:
            mark = done[0] + 20
            cv.wait_for(lambda: done[0] >= mark, timeout=60)
        dests = [f"{out}/g{i}-vm1.img", f"{out}/g{i}-vm2.img"]
        cmd = {"exports": [{"name": "vm1.img", "dest": dests[0]}, {"name": "vm2.img", "dest": dests[1]}]}
        (line,) = control_client.ask(ctl, "snapshot " + json.dumps(cmd), timeout=60)
        r = json.loads(line)
        assert r["ok"] and [e["dest"] for e in r["exports"]] == dests, r
        results.append((dests, [e["paused_ms"] for e in r["exports"]]))
finally:
    stop.set()
    t.join()
between = 0
for dests, paused in results:
    s1, s2 = (struct.unpack("<Q", open(d, "rb").read()[1 << 20:(1 << 20) + 8])[0] for d in dests)
    assert s1 in (s2, s2 + 1), f"{dests}: vm1 at {s1}, vm2 at {s2}: not one instant"
    between += s1 == s2 + 1
    print(f"  vm1 {s1}, vm2 {s2}; paused {paused[0]:.1f} and {paused[1]:.1f} ms")
print(f"10 snapshots of vm1 and vm2 together, each of one instant ({between} between a pair of writes)")
PY

# Refused before anything: one export twice, one DEST twice.
for arg in "{\"exports\":[{\"name\":\"vm1.img\",\"dest\":\"$d/x.img\"},{\"name\":\"vm1.img\",\"dest\":\"$d/y.img\"}]}" \
           "{\"exports\":[{\"name\":\"vm1.img\",\"dest\":\"$d/x.img\"},{\"name\":\"vm2.img\",\"dest\":\"$d/x.img\"}]}"; do
  reply=$($PYTHON "$TESTS_DIR/control_client.py" "$ctl" "snapshot $arg")
  echo "$reply" | grep -qE '^\{"ok":false,"error":"snapshot: .*(name it once|is DEST twice)' || fail "snapshot $arg: $reply"
  echo "refused: $reply"
done
[ ! -e "$d/x.img" ] && [ ! -e "$d/y.img" ] || fail "a refused snapshot left a file"

# --all: every export of the directory, each to DESTDIR/NAME.
mkdir "$mnt/all"
"$LOOPDIO" snapshot --all "$mnt/all" "$sock" >"$T/all.out" || fail "loopdio snapshot --all"
cat "$T/all.out"
[ "$(wc -l <"$T/all.out")" -eq 4 ] || fail "--all: not one line per export"
for n in vm1.img vm1-snap.img vm2.img vm2-snap.img; do
  grep -qF "$mnt/all/$n: 8.0 MiB, $(uri $n) paused " "$T/all.out" || fail "--all: no line for $n"
  cmp "$d/$n" "$mnt/all/$n" || fail "--all: $n differs"
done
expect_error 1 "--all takes the server" "$LOOPDIO" snapshot --all "$mnt/all" "$(uri vm1.img)"
expect_error 2 "exists" "$LOOPDIO" snapshot --all "$mnt/all" "$sock"
expect_error 1 "serves a directory: name one of its exports" "$LOOPDIO" snapshot "$sock" "$d/x.img"
# A VM's disks by their URIs, each with its DEST: one command, one instant.
"$LOOPDIO" snapshot "$(uri vm1.img)" "$mnt/pair-vm1.img" "$(uri vm2.img)" "$mnt/pair-vm2.img" \
  >"$T/pair.out" || fail "loopdio snapshot URI DEST URI DEST"
cat "$T/pair.out"
[ "$(wc -l <"$T/pair.out")" -eq 2 ] || fail "pairs: not one line per export"
for n in vm1 vm2; do
  grep -qF "$mnt/pair-$n.img: 8.0 MiB, $(uri $n.img) paused " "$T/pair.out" || fail "pairs: no line for $n"
  cmp "$d/$n.img" "$mnt/pair-$n.img" || fail "pairs: $n differs"
done
expect_error 1 "has no DEST" "$LOOPDIO" snapshot "$(uri vm1.img)" "$mnt/x.img" "$(uri vm2.img)"
[ ! -e "$mnt/x.img" ] || fail "a refused snapshot left a file"
stop_serve
pass "snapshots in a served directory are exports of their own, independent of their origin"

# A server loopdio did not start (nbdkit with control=, as a systemd instance runs it):
# named by its control socket.
start_server -- dir="$d" control="$T/plain.ctl"
"$LOOPDIO" snapshot --control "$T/plain.ctl" --export vm2.img "$mnt/plain-vm2.img" \
  >"$T/plain.out" || fail "loopdio snapshot --control --export"
cat "$T/plain.out"
grep -qF "$mnt/plain-vm2.img: 8.0 MiB, $T/plain.ctl (vm2.img) paused " "$T/plain.out" ||
  fail "--control: not the line expected"
cmp "$d/vm2.img" "$mnt/plain-vm2.img" || fail "--control: the snapshot differs from vm2.img"
mkdir "$mnt/plain-all"
"$LOOPDIO" snapshot --control "$T/plain.ctl" --all "$mnt/plain-all" >"$T/plain-all.out" ||
  fail "loopdio snapshot --control --all"
[ "$(wc -l <"$T/plain-all.out")" -eq 4 ] || { cat "$T/plain-all.out"; fail "--control --all: not one line per export"; }
expect_error 1 "serves a directory: name one of its exports with --export" \
  "$LOOPDIO" snapshot --control "$T/plain.ctl" "$mnt/x.img"
expect_error 1 "--export goes with --control" "$LOOPDIO" snapshot --export vm2.img "$sock" "$mnt/x.img"
[ ! -e "$mnt/x.img" ] || fail "a refused snapshot left a file"
stop_server
pass "a server loopdio did not start: loopdio snapshot --control SOCKET [--export NAME | --all]"
