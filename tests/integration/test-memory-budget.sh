#!/usr/bin/env bash
# The server's memory stays within memory-max (default 2G) whatever clients ask for, and a
# well-behaved client is served throughout. With the default settings, a verifying client
# connects (4-64 KiB unaligned reads and writes against a shadow, one at a time), then the
# other 63 of the 64 connections allowed each keep 16 reads and writes in flight: first of
# 64 MiB (beyond the advertised maximum of 32 MiB: nbdkit allocates them before the plugin
# sees them), then of 32 MiB (within it). The server's peak RSS (VmHWM, sampled and at the
# end) stays at or under memory-max, and every request of the verifying client succeeds and
# reads what it wrote. Once the server has ended the others' connections (it first serves
# what they had sent: seconds on a loaded machine), its RSS is back under twice its idle
# start within 10 s. Timeline: nbdkit gives each worker thread a buffer as large as the
# largest request it was sent and keeps it, and nothing bounded their sum, so a few clients
# sending 64 MiB requests drove the server to tens of GiB.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 2G)
img=$mnt/budget.img
truncate -s 1G "$img"

start_server -- file="$img" control="$T/ctl"
$PYTHON - "$URI" "$SERVER_PID" "$T/ctl" <<'PY' || fail "the storm"
import json, sys, time, nbd, control_client, hostile
uri, pid, ctl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
MIB = 1 << 20

def status():
    """The server's status; a refusal (busy, out of memory under the storm) is printed and
    asked again, for 30 s at most."""
    deadline = time.monotonic() + 30
    while True:
        lines = control_client.ask(ctl, "status")
        reply = json.loads(lines[0]) if lines else {"error": "no reply within 5 s"}
        if reply.get("ok") or time.monotonic() > deadline:
            return reply
        print(f"    status: {reply}")
        time.sleep(0.5)

st = status()
budget, conns = st["memory_max"], st["max_connections"]
print(f"  status: memory_max {budget} ({budget // MIB} MiB), max_connections {conns}")
if budget != 2 << 30 or conns != 64:
    raise AssertionError(f"the defaults are not memory_max 2 GiB, 64 connections: {st}")

verifier = hostile.Verifier(uri, 32 * MIB, seed=7)
verifier.start()
if not verifier.wait_requests(20, 60):
    raise AssertionError(f"the verifying client before the storm: {verifier.failure}")
start = time.monotonic()
sampler = hostile.Sampler(pid)
idle = sampler.read()["VmRSS"]
idle_bounce = status()["bounce"]["resident"]
sampler.start()
# Whole MiBs from 64 MiB on, so that no storm request touches the verifier's 32 MiB.
offsets = [64 * MIB + k * 29 * MIB for k in range(30)]

def storm(size, seconds):
    """The other connections, 16 requests of `size` bytes in flight each, for `seconds` or
    until the server has hung up on all of them; then they leave. Returns when they left."""
    buf = nbd.Buffer(size)  # the one buffer of every request of every connection
    s = hostile.Storm(uri, conns - 1, 16, buf, offsets)
    before = verifier.requests
    s.start()
    t0 = time.monotonic()
    # A server past its budget ends the storm at once: it could take the host's memory.
    while (s.running() and time.monotonic() < t0 + seconds and verifier.failure is None and
           sampler.peak["VmHWM"] * 1024 <= budget):
        time.sleep(0.1)
    s.stop()
    left = time.monotonic()
    print(f"  at {t0 - start:.0f} s: {size // MIB} MiB x 16 in flight x {s.connected} "
          f"connections for {left - t0:.1f} s: {s.summary()}")
    print(f"    peak RSS so far {sampler.peak['VmHWM'] // 1024} MiB; the verifying client was "
          f"served {verifier.requests - before} requests meanwhile")
    if verifier.failure is not None:
        raise AssertionError(f"the verifying client failed during the storm: {verifier.failure}")
    if verifier.requests == before:
        raise AssertionError("the verifying client was not served during the storm")
    if s.connected != conns - 1:
        raise AssertionError(f"only {s.connected} of {conns - 1} storm connections were served")
    return left

def gone(since):
    """Waits (90 s at most) until the server has ended every storm connection."""
    while True:
        st = status()
        if st.get("connections", conns) <= 1 or time.monotonic() > since + 90:
            break
        time.sleep(0.1)
    if st.get("connections", conns) > 1:
        raise AssertionError(f"90 s after the storm left, the server still serves it: {st}")
    print(f"    the server ended the storm's connections {time.monotonic() - since:.1f} s after "
          f"they left; it holds {st['memory'] // MIB} MiB; bounce buffers: {st['bounce']}")

gone(storm(64 * MIB, 10))
gone(storm(32 * MIB, 15))
ended = time.monotonic()
while sampler.read()["VmRSS"] >= 2 * idle and time.monotonic() < ended + 10:
    time.sleep(0.1)
after = sampler.read()["VmRSS"]
back = time.monotonic() - ended
if not verifier.wait_requests(20, 60):
    raise AssertionError(f"the verifying client after the storms: {verifier.failure}")
verifier.stop()
sampler.stop()
peak = sampler.peak
print(f"  peak RSS {peak['VmHWM'] // 1024} MiB (VmHWM; sampled peak of RssAnon "
      f"{peak['RssAnon'] // 1024} MiB) of memory_max {budget // MIB} MiB; RSS idle "
      f"{idle // 1024} MiB, {after // 1024} MiB {back:.1f} s after the server ended the "
      f"storm; the verifying client: {verifier.requests} requests, every one right, the "
      f"slowest {verifier.slowest:.2f} s (at {verifier.slowest_at - start:.0f} s)")
if verifier.failure is not None:
    raise AssertionError(f"the verifying client: {verifier.failure}")
if peak["VmHWM"] * 1024 > budget:
    raise AssertionError(f"peak RSS {peak['VmHWM'] // 1024} MiB is above memory_max")
if after >= 2 * idle:
    raise AssertionError(f"RSS {after // 1024} MiB 10 s after the storm ended, idle was "
                         f"{idle // 1024} MiB (bounce buffers resident now: "
                         f"{status()['bounce']['resident'] // 1024} KiB, at idle: "
                         f"{idle_bounce // 1024} KiB)")
PY
enomem=$(grep -c "Cannot allocate memory" "$SERVER_LOG" || true)
echo "  the server's log: $enomem lines of ENOMEM, $(grep -c "beyond the advertised maximum" "$SERVER_LOG" || true) oversized requests refused"
stop_server
pass "63 connections x 16 x 64 and 32 MiB: peak RSS within memory-max, the verifying client served"
