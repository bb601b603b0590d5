#!/usr/bin/env bash
# The loopdio command with real nbdkit servers: serve on a Unix socket and on TCP, info and
# list (table and JSON) against them, set in both directions while four connections do
# unaligned writes and reads checked against a shadow (no error, no lost write: the image
# equals the shadow at the end), set refused on ramfs with the reason, and the error cases:
# one "loopdio: ..." line, a non-zero exit, and no server or state file left behind.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit nbdinfo setpriv cmp pgrep psktool
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
[ -x "$LOOPDIO" ] || fail "$LOOPDIO is not built"
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN

mnt=$(make_fs ext4 256M)
img=$mnt/disk.img
random_file "$img" $((32 << 20))

# serve_bg NAME ARGS...: `loopdio serve ARGS` in the background until it says it serves;
# sets SERVE_PID (loopdio) and NBDKIT_PID.
serve_bg() {
  local name=$1 i
  shift
  "$LOOPDIO" serve "$@" >"$T/$name.out" 2>"$T/$name.err" &
  SERVE_PID=$!
  at_exit "kill $SERVE_PID; wait $SERVE_PID"
  for i in $(seq 200); do
    grep -qs '^serving ' "$T/$name.out" && break
    kill -0 $SERVE_PID 2>/dev/null || { cat "$T/$name.err"; fail "serve $*: exited"; }
    sleep 0.05
  done
  grep -q '^serving ' "$T/$name.out" || fail "serve $*: not serving after 10 s"
  NBDKIT_PID=$(pgrep -P $SERVE_PID nbdkit) || fail "serve $*: no nbdkit child"
}

# field NAME KEY: one field of `loopdio list --json`, as JSON (true, 512, "libaio").
field() {
  "$LOOPDIO" list --json | $PYTHON -c '
import json, sys
rows = {r["name"]: r for r in json.load(sys.stdin)}
print(json.dumps(rows[sys.argv[1]][sys.argv[2]]))' "$1" "$2"
}

# column NAME HEADER [FILE]: one column of the `loopdio list` table (or of one saved in FILE).
column() {
  if [ $# -lt 3 ]; then "$LOOPDIO" list; else cat "$3"; fi | awk -v name="$1" -v col="$2" '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
    $1 == name { print $c }'
}


# Nothing of an export left: no state file, no control socket, no server.
nothing_left() {
  [ -z "$(ls -A "$LOOPDIO_RUN_DIR" 2>/dev/null | grep -v '^\.lock$')" ] ||
    { ls -la "$LOOPDIO_RUN_DIR"; fail "$1: files left in the run directory"; }
  ! pgrep -f "control=$LOOPDIO_RUN_DIR/" >/dev/null || fail "$1: a server was left running"
}

# --- serve on a Unix socket; info; list ---------------------------------------------------
sock=$T/unix.sock
uri="nbd+unix:///?socket=$sock"
serve_bg unix --unix "$sock" --direct-io=on "$img"
[ "$(cat /proc/$NBDKIT_PID/comm)" = nbdkit ] || fail "the server is not nbdkit"

"$LOOPDIO" info "$uri" >"$T/info" || fail "info $uri"
grep -q '^size: *33554432 (32.0 MiB)$' "$T/info" || { cat "$T/info"; fail "info: size"; }
grep -q '^block sizes: *minimum 512, preferred 4096, maximum 33554432$' "$T/info" || fail "info: block sizes"
grep -q '^flags: .*flush fua multi-conn' "$T/info" || fail "info: flags"
grep -q "^description: *loopdio: $img .*direct I/O on" "$T/info" || fail "info: description"
"$LOOPDIO" info --json "$uri" | $PYTHON -c '
import json, sys
j = json.load(sys.stdin)
assert j["size"] == 32 << 20 and j["block-minimum"] == 512 and not j["read-only"], j
assert j["can-flush"] and j["can-fua"] and j["can-multi-conn"], j
assert "direct I/O on" in j["description"], j' || fail "info --json"
pass "serve --unix, info"

"$LOOPDIO" list >"$T/list"
head -1 "$T/list" | grep -qE '^NAME +BACK-FILE +OFFSET +SIZELIMIT +RO +DIO +AIO +LOG-SEC +CONNS +PID$' ||
  { cat "$T/list"; fail "list: header"; }
read -r -a row < <(grep "^$sock " "$T/list")
[ "${row[*]}" = "$sock $img 0 0 0 1 sync+libaio 512 ${row[8]} $NBDKIT_PID" ] || { cat "$T/list"; fail "list: row"; }
"$LOOPDIO" list --json | $PYTHON -c '
import json, sys
sock, img, pid = sys.argv[1:]
rows = json.load(sys.stdin)
r = [r for r in rows if r["name"] == sock][0]
want = {"back-file": img, "offset": 0, "sizelimit": 0, "ro": False, "dio": True, "aio": "sync+libaio",
        "log-sec": 512, "pid": int(pid), "kind": "socket"}
for k, v in want.items():
    assert r[k] == v, (k, r[k], v)
assert isinstance(r["conns"], int), r' "$sock" "$img" "$NBDKIT_PID" || fail "list --json"
unix_serve=$SERVE_PID unix_nbdkit=$NBDKIT_PID
pass "list and list --json"

# --- serve on TCP, with every plugin option -----------------------------------------------
port=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve_bg tcp --port "$port" --bind 127.0.0.1 --export-name disk --read-only -o 1M --sizelimit 4M \
  --sector-size 4096 --aio sync "$img"
tcp="nbd://127.0.0.1:$port/disk"
"$LOOPDIO" info --json "$tcp" | $PYTHON -c '
import json, sys
j = json.load(sys.stdin)
assert j["size"] == 4 << 20 and j["block-minimum"] == 4096 and j["read-only"], j
assert "engine sync" in j["description"], j' || fail "info $tcp"
$PYTHON - "$tcp" "$img" <<'PY' || fail "the TCP export does not serve bytes 1M..5M of the image"
import sys, nbdtest
uri, img = sys.argv[1:]
h = nbdtest.connect(uri)
with open(img, "rb") as f:
    f.seek(1 << 20)
    assert h.pread(4 << 20, 0) == f.read(4 << 20)
PY
expect_error 2 "nbd://127.0.0.1:$port/other" "$LOOPDIO" info "nbd://127.0.0.1:$port/other"
[ "$(field "$tcp" ro)" = true ] && [ "$(field "$tcp" offset)" = 1048576 ] &&
  [ "$(field "$tcp" sizelimit)" = 4194304 ] && [ "$(field "$tcp" log-sec)" = 4096 ] &&
  [ "$(field "$tcp" aio)" = '"sync"' ] && [ "$(field "$tcp" dio)" = true ] ||
  { "$LOOPDIO" list --json; fail "list: the TCP export's fields"; }
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve on TCP: exit $? after SIGTERM"
pass "serve on TCP with --export-name, -r, -o, --sizelimit, --sector-size, --aio"

# --- TLS with a pre-shared key: --tls=require is implied --------------------------------
psktool -u alice -p "$T/keys.psk" >/dev/null
tls_img=$mnt/tls.img  # its own image: the Unix socket's server still writes $img
truncate -s 32M "$tls_img"
serve_bg tls --unix "$T/tls.sock" --tls-psk "$T/keys.psk" "$tls_img"
tls_uri="nbds+unix://alice@/?socket=$T/tls.sock&tls-psk-file=$T/keys.psk"
grep -qx "serving $tls_img on nbds+unix:///?socket=$T/tls.sock" "$T/tls.out" || fail "serve --tls-psk: URI"
"$LOOPDIO" info --json "$tls_uri" | $PYTHON -c '
import json, sys
assert json.load(sys.stdin)["tls"]' || fail "info over TLS"
expect_error 2 "server requires TLS" "$LOOPDIO" info "nbd+unix:///?socket=$T/tls.sock"
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve --tls-psk: exit $? after SIGTERM"
pass "serve --tls-psk: TLS required"

# --- set, both ways, under a concurrent load ----------------------------------------------
$PYTHON "$TESTS_DIR/cli_load.py" "$uri" "$T/shadow" "$T/stop" 4 7 >"$T/load.out" 2>&1 &
load=$!
at_exit "touch $T/stop; kill $load"
sleep 0.5
for i in 1 2 3 4 5; do
  "$LOOPDIO" set --direct-io=off "$sock" || fail "set --direct-io=off (round $i)"
  [ "$(column "$sock" DIO)" = 0 ] || fail "list does not show DIO 0 after set off (round $i)"
  [ "$(field "$sock" dio)" = false ] || fail "list --json: dio not false after set off"
  sleep 0.3
  # The export by its URI this time, as the NAME column of a TCP export would show it.
  "$LOOPDIO" set --direct-io=on "$uri" || fail "set --direct-io=on (round $i)"
  [ "$(column "$sock" DIO)" = 1 ] || fail "list does not show DIO 1 after set on (round $i)"
  sleep 0.3
done
kill -0 $load 2>/dev/null || { cat "$T/load.out"; fail "the load stopped during the switches"; }
touch "$T/stop"
wait $load || { cat "$T/load.out"; fail "the load saw an error"; }
cat "$T/load.out"
kill -TERM $unix_serve
wait $unix_serve || fail "serve --unix: exit $? after SIGTERM"
! kill -0 $unix_nbdkit 2>/dev/null || fail "nbdkit outlived serve"
[ ! -e "$sock" ] || fail "the socket is left"
cmp "$img" "$T/shadow" || fail "the image differs from the shadow: a write was lost"
nothing_left "serve after SIGTERM"
pass "set on/off x5 under 4 connections of unaligned I/O: list follows, no lost write"

# --- set refused where direct I/O cannot be ----------------------------------------------
mkdir "$T/ramfs"
mount -t ramfs ramfs "$T/ramfs"
at_exit "umount -l $T/ramfs"
truncate -s 1M "$T/ramfs/disk.img"
serve_bg ramfs --unix "$T/ram.sock" "$T/ramfs/disk.img"
[ "$(field "$T/ram.sock" dio)" = false ] || fail "ramfs: dio should be off"
expect_error 2 "$T/ram.sock: cannot switch direct I/O on: " "$LOOPDIO" set --direct-io=on "$T/ram.sock"
grep -q "ramfs refuses O_DIRECT" "$T/err" || fail "set on ramfs: no reason given"
[ "$(field "$T/ram.sock" dio)" = false ] || fail "ramfs: dio changed by a refused set"
"$LOOPDIO" set --direct-io=off "$T/ram.sock" || fail "set off on ramfs"
pass "set refused on ramfs with the reason"

# --- an export that no longer answers; a server that died -------------------------------
kill -STOP $NBDKIT_PID
rc=0
"$LOOPDIO" list >"$T/list" 2>"$T/err" || rc=$?
kill -CONT $NBDKIT_PID
[ $rc -eq 2 ] || { cat "$T/list" "$T/err"; fail "list with a stopped server: exit $rc"; }
grep -q "^loopdio: $T/ram.sock: .*the export does not answer" "$T/err" || { cat "$T/err"; fail "no answer: message"; }
[ "$(column "$T/ram.sock" DIO "$T/list")" = - ] || fail "a server that does not answer must show DIO -"
{ kill -KILL $SERVE_PID && wait $SERVE_PID; } 2>/dev/null || true  # nbdkit (--exit-with-parent) follows
for i in $(seq 100); do kill -0 $NBDKIT_PID 2>/dev/null || break; sleep 0.05; done
"$LOOPDIO" list >"$T/list" || fail "list with stale state"
! grep -q ram.sock "$T/list" || fail "stale state listed"
nothing_left "list after the server died"
pass "no answer: reported; stale state: removed"

# --- errors ------------------------------------------------------------------------------
expect_error 2 "$T/missing.img: No such file or directory" "$LOOPDIO" serve --unix "$T/m.sock" "$T/missing.img"
nothing_left "serve of a missing image"
expect_error 2 "offset=67108864: at or beyond the end of $img" "$LOOPDIO" serve --unix "$T/m.sock" -o 64M "$img"
nothing_left "serve with a bad offset"
expect_error 1 "--direct-io=maybe: expected" "$LOOPDIO" serve --unix "$T/m.sock" --direct-io=maybe "$img"
expect_error 1 "unrecognised option '--bogus'" "$LOOPDIO" list --bogus
expect_error 1 'unknown command "frob"' "$LOOPDIO" frob
expect_error 2 "$T/none.sock: no export started by loopdio" "$LOOPDIO" set --direct-io=on "$T/none.sock"
expect_error 2 "nbd+unix:///?socket=$T/none.sock: " "$LOOPDIO" info "nbd+unix:///?socket=$T/none.sock"
mkdir -p "$T/nosys" "$T/nodev"
LOOPDIO_SYSFS=$T/nosys LOOPDIO_DEV_DIR=$T/nodev \
  expect_error 2 "the kernel has no NBD client: modprobe nbd" "$LOOPDIO" attach "$img"
nothing_left "attach without the nbd module"
if [ ! -e /sys/module/nbd ] && [ ! -e /dev/nbd0 ]; then  # this kernel truly has none
  expect_error 2 "the kernel has no NBD client: modprobe nbd" "$LOOPDIO" attach --show "$img"
  nothing_left "attach without the nbd module (the real one)"
fi
chmod 755 "$T"
expect_error 2 "attach needs root" setpriv --reuid=65534 --regid=65534 --clear-groups -- "$LOOPDIO" attach "$img"
nothing_left "attach as a user"
pass "errors: one line each, the right exit code, nothing left behind"
