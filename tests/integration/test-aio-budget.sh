#!/usr/bin/env bash
# The server's AIO is bounded by aio-events= (default 4096 of the host's fs.aio-max-nr): 64
# connections to 64 different exports of a dir= server raise fs.aio-nr by exactly 4096 (64
# contexts of 64 events), a 65th export is served with the sync engine, with a notice naming
# aio-events, and everything is given back when they close. With aio-events=256 the fifth
# export is the one served with the sync engine, and its description says so. Timeline:
# every export opened its own context of 256 events with no bound on the sum, so a client
# opening 65 exports took 16,640 of the host's 65,536 events, and four such clients left
# every other program on the host without AIO.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 256M)
d=$mnt/images
mkdir "$d"
for k in $(seq -w 0 64); do truncate -s 1M "$d/e$k"; done

# budget AIO-EVENTS EXPORTS-WITH-AIO [plugin parameters...]: opens one connection to each of
# EXPORTS-WITH-AIO + 1 exports; all but the last get a libaio context of 64 events, the last
# the sync engine, with a notice.
budget() {
  local events=$1 n=$2
  shift 2
  start_server -- dir="$d" max-connections=128 control="$T/ctl" "$@"
  local aio0
  aio0=$(aio_nr)
  $PYTHON - "$SOCK" "$SERVER_PID" "$T/ctl" "$aio0" "$events" "$n" "$SERVER_LOG" <<'PY' || fail "aio-events=$events"
import json, sys, control_client, hostile
sock, pid, ctl, aio0, events, n, log = sys.argv[1:8]
pid, aio0, events, n = int(pid), int(aio0), int(events), int(n)
DEPTH, RING = 64, 8192  # a context of 64 events maps a ring of two pages

def status():
    return json.loads(control_client.ask(ctl, "status")[0])

handles = []
for k in range(n):
    h = hostile.open_export(sock, f"e{k:02}")
    hostile.write_and_verify(h, k, 1 << 20)
    if "engine sync+libaio" not in h.get_export_description():  # the default: a context each
        raise AssertionError(f"export {k}: {h.get_export_description()}")
    handles.append(h)
rings = hostile.aio_contexts(pid)
st = status()["aio_events"]
print(f"  {n} exports open: {len(rings)} AIO contexts (rings of {sorted(set(rings))} bytes), "
      f"fs.aio-nr +{hostile.aio_nr() - aio0}; the server counts {st}")
if len(rings) != n or set(rings) != {RING}:
    raise AssertionError(f"{len(rings)} AIO contexts, rings of {sorted(set(rings))} bytes: want "
                         f"{n} of {RING} bytes (64 events)")
if st != {"used": n * DEPTH, "total": events}:
    raise AssertionError(f"status aio_events is {st}, want used {n * DEPTH} of {events}")
hostile.expect_aio_rise(pid, aio0, n * DEPTH, f"{n} exports")

last = hostile.open_export(sock, f"e{n:02}")
hostile.write_and_verify(last, n, 1 << 20)
desc = last.get_export_description()
print(f"  export {n + 1}: {desc}")
if "engine sync" not in desc:
    raise AssertionError(f"export {n + 1} is not served with the sync engine: {desc}")
if len(hostile.aio_contexts(pid)) != n:
    raise AssertionError(f"export {n + 1} took an AIO context beyond aio-events={events}")
hostile.expect_aio_rise(pid, aio0, n * DEPTH, f"{n + 1} exports")
notice = [l for l in open(log) if f"aio-events={events}" in l]
if not notice:
    raise AssertionError(f"no notice names aio-events={events}")
print(f"  {notice[0].strip()}")
for h in handles + [last]:
    hostile.write_and_verify(h, 1000, 1 << 20)
    h.shutdown()
PY
  wait_until 10 eval '[ "$(aio_contexts)" -eq 0 ]' || fail "$(aio_contexts) AIO contexts left"
  expect_aio_nr "$aio0" "aio-events=$events, all closed"
  echo "  all closed: AIO contexts $(aio_contexts), fs.aio-nr $(aio_nr) (was $aio0)"
  stop_server
}

budget 4096 64
pass "default aio-events=4096: 64 exports take exactly 4096 events, the 65th is served sync"
budget 256 4 aio-events=256
pass "aio-events=256: 4 exports take 256 events, the 5th is served sync, and says so"
