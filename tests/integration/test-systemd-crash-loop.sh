#!/usr/bin/env bash
# A client that keeps crashing the server must not end the export, and a conf that cannot
# work must not loop. The failure: with 5 starts a minute allowed and a restart after 2 s, the
# 5th crash within a minute made the 6th start "repeated too quickly"; systemd failed the
# socket with the service (service-start-limit-hit) and closed it, and nothing listened until
# an admin came. Here, under a booted systemd (systemd-nspawn, the units as built): nbdkit is
# killed 12 times (SIGKILL, SIGABRT, SIGSEGV), and each time the client reconnects and reads
# back everything written; then a missing image, and a conf removed while the socket listens
# (which Restart=on-abnormal would retry once a second forever), are tried at most
# StartLimitBurst times, after which the socket has failed; fixed, the export serves again.
source "$(dirname "$0")/lib.sh"
require_root
require systemd-nspawn nbdkit

: "${LOOPDIO_BUILD:?run through ctest}"
SRC=${LOOPDIO_SOURCE:-$(cd "$TESTS_DIR/../.." && pwd)}
service=$LOOPDIO_BUILD/systemd/loopdio@.service
burst=$(sed -n 's/^StartLimitBurst=//p' "$service")
mnt=$(make_fs ext4 64M)  # the container's /var/lib/loopdio
truncate -s 16M "$mnt/vm1.img"
mkdir "$T/etc" "$T/out"
printf 'IMAGE=/var/lib/loopdio/vm1.img\nPLUGIN=/opt/loopdio.so\n' >"$T/etc/vm1.conf"
printf 'IMAGE=/var/lib/loopdio/missing.img\nPLUGIN=/opt/loopdio.so\n' >"$T/etc/broken.conf"
cp "$T/etc/vm1.conf" "$T/etc/gone.conf"
cat >"$T/check.service" <<EOF
[Unit]
After=loopdio@vm1.socket loopdio@broken.socket loopdio@gone.socket
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 -u /check/check.py $burst
StandardOutput=file:/check/out/result
StandardError=inherit
EOF
cat >"$T/check.py" <<'PY'
import os, random, signal, subprocess, sys, time, nbd
burst = int(sys.argv[1])
signal.alarm(90)
def show(unit, prop):
    return subprocess.run(["systemctl", "show", "-P", prop, unit], capture_output=True,
                          text=True, check=True).stdout.strip()
def connect(name):
    h = nbd.NBD()
    h.connect_unix(f"/run/loopdio/{name}.sock")
    return h
def wait_for(what, cond, seconds=15):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)

# Each round writes a pattern of its own and flushes it, crashes nbdkit, reconnects (the
# connection waits in the socket's queue until the restarted nbdkit takes it) and reads back
# every pattern written so far.
MiB = 1 << 20
written = {}
h = connect("vm1")
for i, sig in enumerate([signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV] * 4):
    written[i * MiB] = random.Random(i).randbytes(MiB)
    h.pwrite(written[i * MiB], i * MiB)
    h.flush()
    pid = int(show("loopdio@vm1.service", "MainPID"))
    os.kill(pid, sig)
    t0 = time.monotonic()
    try:
        h = connect("vm1")
        for off, data in written.items():
            assert h.pread(len(data), off) == data, f"crash {i + 1}: pattern at {off}"
    except nbd.Error as e:
        raise AssertionError(f"crash {i + 1} ({sig.name}): {e}; socket "
                             f"{show('loopdio@vm1.socket', 'ActiveState')} "
                             f"({show('loopdio@vm1.socket', 'Result')})")
    assert show("loopdio@vm1.socket", "ActiveState") == "active"
    assert int(show("loopdio@vm1.service", "MainPID")) not in (0, pid)
    print(f"crash {i + 1} ({sig.name}): served again after {time.monotonic() - t0:.1f} s")
h.shutdown()
restarts = int(show("loopdio@vm1.service", "NRestarts"))
assert restarts == len(written), f"NRestarts={restarts}"
print(f"{restarts} crashes, {restarts} restarts; every pattern read back")

# A conf that cannot work is not restarted, but the client still waiting makes the socket
# start it again at once, until the start limit ends it, socket and all: a missing image
# (nbdkit exits 1), and a conf removed while the socket listens (systemd cannot start it).
def bounded(name, unit_log, needle):
    h = nbd.NBD()
    try:
        h.aio_connect_unix(f"/run/loopdio/{name}.sock")
        deadline = time.monotonic() + 10
        while h.aio_is_connecting():
            assert time.monotonic() < deadline, f"{name}: neither served nor refused in 10 s"
            h.poll(100)
        assert not h.aio_is_ready(), f"{name}: served"
        print(f"{name}: connection dead")
    except nbd.Error as e:
        print(f"{name}: {e}")
    wait_for(f"{name}: socket failing", lambda: show(f"loopdio@{name}.socket", "ActiveState") == "failed")
    result = show(f"loopdio@{name}.socket", "Result")
    assert result == "service-start-limit-hit", f"{name} socket: {result}"
    def attempts():
        out = subprocess.run(["journalctl", "-q", "-o", "cat", unit_log], capture_output=True,
                             text=True, check=True).stdout
        return out.count(needle)
    n = attempts()
    time.sleep(3)
    assert attempts() == n and 1 < n <= burst, f"{name}: {n} attempts, then {attempts()}"
    assert not os.path.exists(f"/run/loopdio/{name}.sock")
    print(f"{name}: {n} attempts, then socket and service failed ({burst} starts allowed)")
bounded("broken", "--identifier=loopdio@broken", "missing.img: No such file or directory")
os.unlink("/etc/loopdio/gone.conf")
bounded("gone", "--unit=loopdio@gone.service", "Failed to load environment files")

# The documented way back: fix the conf (here: the image), reset-failed, start the socket.
open("/var/lib/loopdio/missing.img", "wb").truncate(16 * MiB)
subprocess.run(["systemctl", "reset-failed", "loopdio@broken.service", "loopdio@broken.socket"],
               check=True)
subprocess.run(["systemctl", "start", "loopdio@broken.socket"], check=True)
h = connect("broken")
data = random.Random(99).randbytes(MiB)
h.pwrite(data, 0)
assert h.pread(MiB, 0) == data
h.shutdown()
print("all checks passed")
PY

machine=loopdio-test-$$
at_exit "rm -rf /run/systemd/nspawn/propagate/$machine"
SECONDS=0
timeout 180 systemd-nspawn --directory=/ --volatile=yes --register=no --keep-unit \
  --private-network --machine="$machine" --console=pipe \
  --bind-ro="$SRC/systemd/loopdio@.socket:/etc/systemd/system/loopdio@.socket" \
  --bind-ro="$service:/etc/systemd/system/loopdio@.service" \
  --bind-ro="$T/check.service:/etc/systemd/system/loopdio-check.service" \
  --bind-ro="$PLUGIN:/opt/loopdio.so" --bind="$T/etc:/etc/loopdio" \
  --bind="$mnt:/var/lib/loopdio" --bind-ro="$T/check.py:/check/check.py" --bind="$T/out:/check/out" \
  --boot -- systemd.wants=loopdio@vm1.socket systemd.wants=loopdio@broken.socket \
  systemd.wants=loopdio@gone.socket systemd.wants=loopdio-check.service >"$T/console.log" 2>&1 ||
  { tail -30 "$T/console.log"; fail "systemd-nspawn"; }
cat "$T/out/result" 2>/dev/null || true
grep -q 'all checks passed' "$T/out/result" 2>/dev/null ||
  { tail -30 "$T/console.log"; fail "the check inside the container failed"; }
pass "12 crashes of nbdkit, each restarted with the socket still listening, patterns intact;" \
  "a missing image and a removed conf tried at most $burst times, then the socket failed (${SECONDS}s)"
