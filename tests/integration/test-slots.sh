#!/usr/bin/env bash
# No crowd of clients keeps others out. (1) 64 idle connections to export A of a dir= server
# (defaults: max-connections=64, half of them per export) leave room for a client of export
# B, which writes and verifies; those to A beyond the per-export limit are refused with the
# reason, which libnbd and qemu-img show. (2) 500 connections that stall mid-handshake
# (silent, or half an option) under nbdkit --timeout=5: at most max-handshakes=16 hold a slot
# at once, the rest are closed at once, all are gone after the timeout, and the server's
# threads and fds are back where they were. (3) At a descriptor limit of 300, the plugin
# serves fewer connections and says so; a flood of 2000 connects (300 held open) through
# `loopdio serve` grows the log by at most the relay's 20 lines a second, costs the server
# little CPU, and leaves it serving, with the descriptors it had before.
# Timeline: every connection to one export counted against the one global limit, so a client
# holding 64 idle connections to A locked everyone out of B; nothing bounded connections in
# the handshake, so 500 stalled clients held 500 threads until the timeout; and at the fd
# limit nbdkit spun on accept's EMFILE, logging one line per try.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit qemu-img prlimit

mnt=$(make_fs ext4 64M)
d=$mnt/images
mkdir "$d"
truncate -s 16M "$d/A" "$d/B"
threads() { ls "/proc/$SERVER_PID/task" | wc -l; }
log_lines() { wc -l <"$SERVER_LOG"; }

# A client of B connects, writes and verifies (seed $1).
client_of_b() {
  $PYTHON - "$SOCK" "$1" <<'PY'
import sys, hostile, nbdtest
h = nbdtest.connect_or_reason(sys.argv[1], "B")
if isinstance(h, str):
    raise AssertionError(f"the client of B was refused: {h}")
hostile.write_and_verify(h, int(sys.argv[2]), 16 << 20)
h.shutdown()
PY
}

# The threads a server settles at: the same count twice, half a second apart.
settled_threads() {
  local a b=$(threads)
  for _ in $(seq 40); do
    sleep 0.5
    a=$b b=$(threads)
    [ "$a" -ne "$b" ] || break
  done
  echo "$b"
}

echo "1. 64 idle connections to A, then a client of B"
start_server -- dir="$d"
$PYTHON - "$SOCK" 64 32 <<'PY' || fail "64 connections to A"
import subprocess, sys, hostile, nbdtest
sock, n, per_export = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, reasons = [], []
for k in range(n):
    h = nbdtest.connect_or_reason(sock, "A")
    (reasons if isinstance(h, str) else held).append(h)
print(f"  A: {len(held)} served, {len(reasons)} refused")
if len(held) != per_export:
    raise AssertionError(f"A served {len(held)} connections, the per-export limit is {per_export}")
for r in reasons:
    if "max-connections-per-export=32" not in r:
        raise AssertionError(f"refused with an unclear reason: {r!r}")
print(f"  libnbd reads the refusal: {reasons[0]}")
uri = f"nbd+unix:///A?socket={sock}"
q = subprocess.run(["qemu-img", "info", uri], capture_output=True, text=True)
if q.returncode == 0 or f"server reported: {reasons[0]}" not in q.stderr:
    raise AssertionError(f"qemu-img info A: exit {q.returncode}, {q.stderr!r}")
print(f"  qemu-img: {q.stderr.strip().splitlines()[-1]}")
b = nbdtest.connect_or_reason(sock, "B")
if isinstance(b, str):
    raise AssertionError(f"the client of B was refused: {b}")
hostile.write_and_verify(b, 1, 16 << 20)
print("  the client of B connected, wrote and verified")
for k, h in enumerate(held):
    hostile.write_and_verify(h, 100 + k, 16 << 20)
for h in held + [b]:
    h.shutdown()
print(f"  the {len(held)} connections to A still work")
PY
stop_server
pass "64 idle connections to A: 32 served, 32 refused with the reason; B served"

echo "2. 500 connections stalled in the handshake, nbdkit --timeout=5"
start_server --timeout=5 -- dir="$d"
fds0=$(server_fds)
client_of_b 2 || fail "the client of B before the storm"
expect_fds "$fds0" "after one client"
threads0=$(settled_threads)
echo "  before: $threads0 threads, $fds0 fds (after one client came and went)"
$PYTHON - "$SOCK" 500 16 5 <<'PY' || fail "500 stalled connections"
import sys, hostile
sock, n, max_hs, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
conns = hostile.stall(sock, n, deadline=timeout + 60)
greeted = [c for c in conns if c["greeting"] is not None]
refused = [c for c in conns if c["greeting"] is None]
most = hostile.most_at_once(conns)
open_left = [c for c in conns if c["closed"] is None]
print(f"  {len(greeted)} greeted (a handshake slot), at most {most} at once; {len(refused)} "
      f"closed without a greeting; {len(open_left)} left open after {timeout + 60:.0f} s")
if open_left:
    raise AssertionError(f"{len(open_left)} stalled connections were never dropped")
if not greeted:
    raise AssertionError("no connection was greeted")
if most > max_hs:
    raise AssertionError(f"{most} stalled connections held a handshake slot at once; "
                         f"max-handshakes is {max_hs}")
late = max(c["closed"] - c["connected"] for c in refused) if refused else 0
print(f"  refused ones closed within {late:.2f} s of connecting; greeted ones held "
      f"{min(c['closed'] - c['greeting'] for c in greeted):.1f} to "
      f"{max(c['closed'] - c['greeting'] for c in greeted):.1f} s")
if late >= timeout:
    raise AssertionError(f"a connection without a slot was held {late:.1f} s, not closed at once")
PY
expect_fds "$fds0" "after the stalled connections"
wait_until 10 eval '[ "$(threads)" -le '"$threads0"' ]' ||
  fail "the server has $(threads) threads, was $threads0"
echo "  after: $(threads) threads, $(server_fds) fds"
client_of_b 3 || fail "the client of B after the storm"
grep -q "max-handshakes=16" "$SERVER_LOG" || fail "no refusal names max-handshakes"
stop_server
pass "500 stalled handshakes: at most 16 held at once, the rest closed at once, nothing left"

echo "3. at a descriptor limit of 300: a flood of 2000 connects, 300 held open"
# As users run it: `loopdio serve` (the units run it too), whose relay passes at most 20 of
# nbdkit's lines a second and counts the rest (nbdkit itself logs each client that hangs
# up mid-handshake).
source "$TESTS_DIR/cli_lib.sh"
LOOPDIO=${LOOPDIO_BUILD:?run through ctest}/loopdio
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN
SOCK=$T/flood.sock
serve_until_ready "$T/flood.out" prlimit --nofile=300:300 "$LOOPDIO" serve --timeout=5 --unix "$SOCK" "$d"
SERVER_PID=$(pgrep -P "$SERVE_PID" nbdkit)
SERVER_LOG=$T/flood.out.err
wait_until 10 grep -q "serving at most" "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "no notice of fewer connections"; }
grep -q "the descriptor limit (300) leaves room for" "$SERVER_LOG" ||
  { cat "$SERVER_LOG"; fail "the notice does not name the descriptor limit"; }
sed 's/^/  notice: /' "$SERVER_LOG"
fds0=$(server_fds)
client_of_b 4 || fail "the client of B before the flood"
expect_fds "$fds0" "after one client"
# Checked after the rest, so that one run shows all of what the flood did.
flood_ok=true
$PYTHON - "$SOCK" "$SERVER_PID" "$SERVER_LOG" <<'PY' || flood_ok=false
import os, sys, hostile
sock, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The relay's bound (20 lines a second, and a line saying how many it left out), and CPU.
SECONDS, MAX_LINES_PER_S, MAX_BYTES_PER_S, MAX_CPU = 10, 22, 3000, 1.0
def log_size():
    with open(log, "rb") as f:
        data = f.read()
    return data.count(b"\n"), len(data)
lines0, bytes0 = log_size()
cpu0 = hostile.proc_numbers(pid)["cpu"]
took, failed = hostile.flood(sock, 2000, 300, SECONDS)
cpu = hostile.proc_numbers(pid)["cpu"] - cpu0
lines1, bytes1 = log_size()
lines, nbytes = lines1 - lines0, bytes1 - bytes0
print(f"  2000 connects in {took:.2f} s ({failed or 'none'} failed), 300 held to {SECONDS} s: the "
      f"server used {cpu:.2f} s of CPU; its log grew by {lines} lines, {nbytes} bytes")
with open(log, "rb") as f:
    f.seek(bytes0)
    kinds = {}
    for line in f.read().decode(errors="replace").splitlines():
        kind = line.split("]", 1)[-1].lstrip(": ")
        kinds[kind] = kinds.get(kind, 0) + 1
for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
    print(f"    {count:6} x {kind}")
errors = []
if lines > MAX_LINES_PER_S * SECONDS or nbytes > MAX_BYTES_PER_S * SECONDS:
    errors.append(f"the log grew by {lines} lines, {nbytes} bytes in {SECONDS} s: more than "
                  f"{MAX_LINES_PER_S} lines and {MAX_BYTES_PER_S} bytes a second")
if cpu > MAX_CPU:
    errors.append(f"the server used {cpu:.2f} s of CPU in {SECONDS} s of flood (at most {MAX_CPU})")
if errors:
    raise AssertionError("; ".join(errors))
PY
echo "  after: $(server_fds) fds (before: $fds0)"
client_of_b 5 || fail "the client of B after the flood"
expect_fds "$fds0" "after the flood"
$flood_ok || fail "the flood: see above"
stop_serve
pass "at the fd limit: fewer connections, told; a flood costs few log lines and little CPU"
