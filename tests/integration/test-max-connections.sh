#!/usr/bin/env bash
# max-connections=N: N connections work; connection N+1 is refused at the handshake, the
# server saying why (max-connections); the N keep working; once one of them closes, a new
# connection is accepted (nbdkit closes connections asynchronously: retried for 10 s). With
# N=4, and with the default of 64. Every connection writes its own block and reads it back.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 64M)
img=$mnt/max.img
truncate -s 16M "$img"

limit() {  # N [plugin parameters...]
  local n=$1
  shift
  start_server -- file="$img" "$@"
  $PYTHON - "$URI" "$n" <<'PY' || fail "max-connections $n"
import os, sys, time, nbd, nbdtest
uri, n = sys.argv[1], int(sys.argv[2])
def check(h, k):
    data = os.urandom(700) + k.to_bytes(4, "little")
    h.pwrite(data, k * 5000 + 3)
    if h.pread(len(data), k * 5000 + 3) != data:
        raise AssertionError(f"connection {k}: wrong data")
handles = [nbdtest.connect(uri, strict=False) for _ in range(n)]
for k, h in enumerate(handles):
    check(h, k)
try:
    nbdtest.connect(uri)
    raise AssertionError(f"connection {n + 1} was accepted")
except nbd.Error as e:
    print(f"  connection {n + 1} refused: {e}")
for k, h in enumerate(handles):
    check(h, k)
handles.pop(0).shutdown()
deadline = time.monotonic() + 10
while True:
    try:
        h = nbdtest.connect(uri, strict=False)
        break
    except nbd.Error:
        if time.monotonic() > deadline:
            raise AssertionError(f"no new connection within 10 s of one of the {n} closing")
        time.sleep(0.1)
handles.insert(0, h)
for k, h in enumerate(handles):
    check(h, k)
print(f"  one closed: a new connection is accepted; all {n} work")
for h in handles:
    h.shutdown()
PY
  stop_server
  grep -q "max-connections" "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "the refusal does not name max-connections"; }
  echo "  the server said: $(grep -m1 max-connections "$SERVER_LOG")"
}

limit 4 max-connections=4
pass "max-connections=4: the 5th refused, the 4 served, a new one accepted after one closed"
limit 64
pass "default: the 65th connection refused, 64 served"
