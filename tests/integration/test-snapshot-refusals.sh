#!/usr/bin/env bash
# Snapshots the server must refuse, each with a one-line reason and before pausing anything:
# filesystems that cannot clone (ext4, tmpfs: a reader's requests keep completing, the
# export's status counts no drain, nothing is created at DEST), a DEST that exists (left
# untouched), is a symbolic link, is relative, is in a missing directory or on another
# filesystem; a block device; an export of part of a file (offset=, sizelimit=); bad JSON;
# a clone that fails within the pause (an image smaller than one block, on ext4).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit mkfs.xfs

LOOPDIO=$LOOPDIO_BUILD/loopdio
export LOOPDIO_RUN_DIR=$T/run

# snapshot CONTROL ARGUMENT: the server's one-line reply to "snapshot ARGUMENT".
snapshot() {
  $PYTHON "$TESTS_DIR/control_client.py" "$1" "snapshot $2"
}
# dest_json PATH [NAME]: the command's argument for one export.
dest_json() {
  $PYTHON -c 'import json, sys
e = {"dest": sys.argv[1]}
if len(sys.argv) > 2: e["name"] = sys.argv[2]
print(json.dumps({"exports": [e]}))' "$@"
}
# expect_refusal CONTROL ARGUMENT "message part"...: refused, with every part in the reason.
expect_refusal() {
  local ctl=$1 arg=$2 reply error part
  shift 2
  reply=$(snapshot "$ctl" "$arg")
  [ "$(echo "$reply" | wc -l)" -eq 1 ] || fail "not one reply line: $reply"
  error=$(echo "$reply" | $PYTHON -c 'import json, sys
r = json.load(sys.stdin)
assert r["ok"] is False and "\n" not in r["error"], r
print(r["error"])') || fail "not refused: $reply"
  [[ $error == "snapshot: "* ]] || fail "the refusal does not say what refused: $error"
  for part in "$@"; do
    [[ $error == *"$part"* ]] || fail "the refusal lacks '$part': $error"
  done
  echo "refused: $error"
}
# drains CONTROL: how many times the export has been paused.
drains() {
  $PYTHON "$TESTS_DIR/control_client.py" "$1" status |
    $PYTHON -c 'import json, sys; print(json.load(sys.stdin)["drains"])'
}

# ext4 and tmpfs cannot clone: refused before the export pauses, with a reader running.
for kind in ext4 tmpfs; do
  mnt=$(make_fs $kind 128M)
  img=$mnt/disk.img
  random_file "$img" $((16 << 20))
  ctl=$T/ctl-$kind.sock
  start_server -- file="$img" control="$ctl"
  # The reader counts its reads in a file: the test waits for more after each refusal.
  $PYTHON - "$URI" "$T/reads-$kind" <<'PY' &
import os, sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
n, worst = 0, 0.0
while True:
    t = time.monotonic()
    h.pread(65536, (n * 65536) % (16 << 20))
    worst = max(worst, time.monotonic() - t)
    n += 1
    if n % 50 == 0:
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(f"{n} {worst}\n")
        os.rename(sys.argv[2] + ".tmp", sys.argv[2])
PY
  reader=$!
  at_exit "kill $reader"
  reads() { cut -d' ' -f1 "$T/reads-$kind" 2>/dev/null || echo 0; }
  wait_until 20 eval '[ "$(reads)" -gt 0 ]' || fail "$kind: the reader does not read"
  for dest in "$mnt/snap.img" "$mnt/snap2.img"; do
    before=$(reads)
    expect_refusal "$ctl" "$(dest_json "$dest")" "$img is on $kind, which cannot clone files" \
      "xfs made with reflink=1" "btrfs"
    [ ! -e "$dest" ] || fail "$kind: $dest was left behind"
    wait_until 20 eval '[ "$(reads)" -gt '"$((before + 100))"' ]' || fail "$kind: reads stopped"
  done
  [ "$(drains "$ctl")" -eq 0 ] || fail "$kind: the export was paused for a refused snapshot"
  worst=$(cut -d' ' -f2 "$T/reads-$kind")
  echo "  $kind: $(reads) reads, the slowest $worst s; no drain"
  kill $reader
  stop_server
  pass "$kind: refused with the filesystem named, no pause, nothing created"
done

# The CLI prints the server's reason, on one line.
mnt=$(make_fs ext4 128M)
random_file "$mnt/cli.img" $((4 << 20))
serve_until_ready "$T/serve.out" "$LOOPDIO" serve --unix "$T/cli.sock" "$mnt/cli.img"
expect_error 2 "cannot clone files" "$LOOPDIO" snapshot "$T/cli.sock" "$mnt/cli-snap.img"
[ ! -e "$mnt/cli-snap.img" ] || fail "cli: DEST left behind"
expect_error 1 "expected an export" "$LOOPDIO" snapshot "$T/cli.sock"
stop_serve
pass "loopdio snapshot: the refusal on one line"

# An image smaller than a block cannot be asked with a one-block clone: the clone itself
# fails, within the pause. The export resumes, and nothing is left.
head -c 1000 /dev/urandom >"$mnt/tiny.img"
start_server -- file="$mnt/tiny.img" control="$T/ctl-tiny.sock"
expect_refusal "$T/ctl-tiny.sock" "$(dest_json "$mnt/tiny-snap.img")" "is on ext4, which cannot clone files (FICLONE:"
[ ! -e "$mnt/tiny-snap.img" ] || fail "tiny: DEST left behind"
[ "$(drains "$T/ctl-tiny.sock")" -eq 1 ] || fail "tiny: not one pause"
$PYTHON -c 'import sys, nbd
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1]); h.pwrite(b"x" * 1000, 0); assert h.pread(1000, 0) == b"x" * 1000' "$URI" ||
  fail "tiny: the export does not serve after the failed clone"
stop_server
pass "a clone refused within the pause: the export resumes, nothing is left"

# On xfs, which can clone: everything wrong with DEST or the export.
mnt=$(make_fs xfs 512M)
img=$mnt/disk.img
random_file "$img" $((8 << 20))
ctl=$T/ctl-xfs.sock
start_server -- file="$img" control="$ctl"

echo precious >"$mnt/exists.img"
expect_refusal "$ctl" "$(dest_json "$mnt/exists.img")" "$mnt/exists.img exists"
[ "$(cat "$mnt/exists.img")" = precious ] || fail "an existing DEST was changed"

ln -s "$mnt/target.img" "$mnt/link.img"
expect_refusal "$ctl" "$(dest_json "$mnt/link.img")" "$mnt/link.img exists"
[ ! -e "$mnt/target.img" ] || fail "a snapshot was made through a symbolic link"

expect_refusal "$ctl" "$(dest_json snap.img)" "DEST must be an absolute path" '"snap.img"'
expect_refusal "$ctl" "$(dest_json "$mnt/")" "DEST must name a new file"
expect_refusal "$ctl" "$(dest_json "$mnt/..")" "DEST must name a new file"
expect_refusal "$ctl" "$(dest_json "$mnt/missing/snap.img")" "DEST's directory $mnt/missing" \
  "No such file or directory"

other=$(make_fs tmpfs 64M)
expect_refusal "$ctl" "$(dest_json "$other/snap.img")" "$other/snap.img is on another filesystem (tmpfs)" \
  "than $img (xfs)"
[ -z "$(ls -A "$other")" ] || fail "another filesystem: something was created"

expect_refusal "$ctl" 'not json' "not valid JSON"
expect_refusal "$ctl" '' "not valid JSON"
expect_refusal "$ctl" '{"exports":[]}' '"exports" must be a non-empty array'
expect_refusal "$ctl" '{"exports":[{"name":"x"}]}' '"dest": missing or not a string'
expect_refusal "$ctl" '{"exports":[{"dest":"/x","mode":1}]}' 'unknown member "mode"'
expect_refusal "$ctl" '{"export":[]}' 'expected {"exports":'
expect_refusal "$ctl" "$(dest_json "$mnt/a.img" some.img)" "serves one image: name no export"
expect_refusal "$ctl" "{\"exports\":[{\"dest\":\"$mnt/a.img\"},{\"dest\":\"$mnt/b.img\"}]}" \
  "this server serves one image: one DEST"
[ "$(drains "$ctl")" -eq 0 ] || fail "xfs: the export was paused for a refused snapshot"
[ "$(ls -A "$mnt" | sort | tr '\n' ' ')" = "disk.img exists.img link.img " ] ||
  fail "refusals left files: $(ls -A "$mnt")"
stop_server
pass "xfs: DEST existing, a symbolic link, relative, a directory, missing, on another filesystem; bad JSON"

# Part of a file, and a block device: a clone copies whole files.
for params in "offset=4096" "sizelimit=$((4 << 20))"; do
  start_server -- file="$img" "$params" control="$T/ctl-part.sock"
  expect_refusal "$T/ctl-part.sock" "$(dest_json "$mnt/part.img")" "serve part of $img" \
    "serve the whole file to snapshot it"
  [ ! -e "$mnt/part.img" ] || fail "$params: DEST left behind"
  stop_server
done
truncate -s 16M "$T/dev.img"
dev=$(losetup -f --show "$T/dev.img")
at_exit "losetup -d $dev"
start_server -- file="$dev" control="$T/ctl-dev.sock"
expect_refusal "$T/ctl-dev.sock" "$(dest_json "$mnt/dev-snap.img")" "$dev is a block device"
[ ! -e "$mnt/dev-snap.img" ] || fail "block device: DEST left behind"
stop_server
pass "offset=, sizelimit= and a block device: refused"
