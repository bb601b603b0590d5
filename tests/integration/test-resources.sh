#!/usr/bin/env bash
# Resources come back: after 300 connections, 30 at a time, the server's fds, threads, AIO
# contexts and fs.aio-nr are where they started (libaio, io_uring). With fs.aio-max-nr too low
# for a new AIO context, a connection falls back (fewer slots, or the sync engine, with a
# notice) and works.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit sysctl

mnt=$(make_fs ext4 64M)
img=$mnt/res.img
truncate -s 16M "$img"

fds() { ls "/proc/$SERVER_PID/fd" | wc -l; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$SERVER_PID/status"; }
contexts() { grep -c '/\[aio\]' "/proc/$SERVER_PID/maps" || true; }
aio_nr() { cat /proc/sys/fs/aio-nr; }
snapshot() { echo "fds $(fds) threads $(threads) aio-contexts $(contexts) fs.aio-nr $(aio_nr)"; }

many_connections() {  # 300 connections, 30 at a time; prints what was in use at the peak
  $PYTHON - "$URI" "$SERVER_PID" <<'PY'
import os, sys, threading, nbd
uri, pid = sys.argv[1], sys.argv[2]
barrier, peak, errors = threading.Barrier(31), [], []
def client(k):
    try:
        h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(uri)
        data = os.urandom(3000)
        h.pwrite(data, k * 4099)
        if h.pread(3000, k * 4099) != data:
            raise AssertionError(f"connection {k}: wrong data")
        h.flush()
        barrier.wait(60)
        barrier.wait(60)
        h.shutdown()
    except Exception as e:
        errors.append(e); barrier.abort()
for batch in range(10):
    ts = [threading.Thread(target=client, args=(batch * 30 + i,)) for i in range(30)]
    for t in ts: t.start()
    barrier.wait(60)  # all 30 connected, each has done its I/O
    peak.append((len(os.listdir(f"/proc/{pid}/fd")), open("/proc/sys/fs/aio-nr").read().strip(),
                 open(f"/proc/{pid}/maps").read().count("/[aio]")))
    barrier.wait(60)
    for t in ts: t.join()
    if errors: raise errors[0]
print(f"  with 30 connections open: fds {peak[-1][0]} aio-contexts {peak[-1][2]} fs.aio-nr {peak[-1][1]}")
PY
}

settle() {  # WANT_FDS: nbdkit closes connections asynchronously
  for _ in $(seq 100); do [ "$(fds)" -le "$1" ] && [ "$(contexts)" -eq 0 ] && return; sleep 0.1; done
}

for engine in libaio io_uring; do
  start_server -- file="$img" aio=$engine
  before=$(snapshot) fds0=$(fds) threads0=$(threads) aio0=$(aio_nr)
  echo "$engine: before: $before"
  many_connections || fail "$engine: 300 connections"
  settle "$fds0"
  echo "$engine: after 300 connections: $(snapshot)"
  [ "$(fds)" -eq "$fds0" ] || { ls -l "/proc/$SERVER_PID/fd"; fail "$engine: fds leaked"; }
  [ "$(contexts)" -eq 0 ] || fail "$engine: AIO contexts leaked"
  [ "$(threads)" -eq "$threads0" ] || fail "$engine: threads leaked"
  # Other processes' contexts (a benchmark next door) move fs.aio-nr too; in CI none run.
  if [ "$aio0" -eq 0 ] || [ "${CI:-}" = true ]; then
    [ "$(aio_nr)" -eq "$aio0" ] || fail "$engine: fs.aio-nr $(aio_nr), was $aio0"
  else
    echo "  (other processes held AIO contexts: only this server's own are compared)"
  fi
  assert_engine "$URI" "$engine"
  stop_server
  pass "$engine: 300 connections, nothing leaked"
done

# fs.aio-max-nr leaves ROOM slots when a connection opens: it must say which engine it got,
# and work. (Tried again when another process freed contexts at that very moment.)
low_limit() {  # ENGINE ROOM WANT_ENGINE
  local old
  start_server -- file="$img" aio="$1"
  old=$(sysctl -n fs.aio-max-nr)
  at_exit "sysctl -qw fs.aio-max-nr=$old"
  for _ in 1 2 3; do
    sysctl -qw fs.aio-max-nr=$(($(aio_nr) + $2))
    $PYTHON -c "$LOW_IO" "$URI" >"$T/low.out" || { sysctl -qw fs.aio-max-nr="$old"; fail "aio=$1, room $2: I/O"; }
    sysctl -qw fs.aio-max-nr="$old"
    grep -q "engine $3," "$T/low.out" && break
  done
  echo "aio=$1, fs.aio-max-nr leaving $2 slots: $(cat "$T/low.out")"
  grep -q "engine $3," "$T/low.out" || fail "aio=$1, room $2: not engine $3"
  stop_server
}
LOW_IO='
import os, sys, nbd
h = nbd.NBD(); h.set_strict_mode(0); h.set_full_info(True); h.connect_uri(sys.argv[1])
print(h.get_export_description())
data = os.urandom(10000)
h.pwrite(data, 777, nbd.CMD_FLAG_FUA)
assert h.pread(10000, 777) == data, "wrong data"
h.shutdown()'

low_limit libaio 0 sync
grep -q "fs.aio-max-nr used up?): connections use the sync engine" "$SERVER_LOG" ||
  fail "the fallback to the sync engine was not logged"
grep "use the sync engine" "$SERVER_LOG" | head -1
low_limit libaio 64 libaio
low_limit io_uring 0 io_uring
pass "fs.aio-max-nr exhausted: logged fallback, I/O works, no crash"
