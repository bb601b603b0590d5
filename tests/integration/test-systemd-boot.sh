#!/usr/bin/env bash
# The units under a real systemd: systemd-nspawn boots this machine's /usr on a throwaway root
# with the units as built, a TLS export on its Unix socket and TCP, and a block device, each with
# its documented drop-in, and a directory of VM images as one service (SERVE=dir). From
# inside: patterns through each, a live direct-I/O switch on the control socket, and the
# sandbox in force (no capabilities, seccomp, a network of its own).
source "$(dirname "$0")/lib.sh"
require_root
require systemd-nspawn losetup psktool nbdkit nbdinfo

: "${LOOPDIO_BUILD:?run through ctest}"
SRC=${LOOPDIO_SOURCE:-$(cd "$TESTS_DIR/../.." && pwd)}
mnt=$(make_fs ext4 128M)  # the container's /var/lib/loopdio
truncate -s 32M "$mnt/vm1.img"
mkdir "$mnt/vms"
truncate -s 16M "$mnt/vms/a.img" "$mnt/vms/b.img"
truncate -s 32M "$T/blk.img"
dev=$(losetup -f --show "$T/blk.img")
at_exit "losetup -d $dev"
# The engine the plugin picks outside the sandbox: the sandbox must not make it fall back.
engine=$(nbdkit -U - "$PLUGIN" file="$mnt/vm1.img" directio=1 aio=io_uring --run 'nbdinfo "$uri"' |
  grep -o 'engine [a-z_]*') || fail "nbdkit outside the container"

mkdir "$T/etc" "$T/out" "$T/units" "$T/units/loopdio@vm1.socket.d" "$T/units/loopdio@blk.service.d"
psktool -u vm1 -p "$T/etc/vm1.psk" >/dev/null
cat >"$T/etc/vm1.conf" <<EOF
IMAGE=/var/lib/loopdio/vm1.img
PLUGIN=/opt/loopdio.so
PLUGIN_ARGS=directio=1 aio=io_uring control=/run/loopdio/vm1/control
NBDKIT_ARGS=--tls=require --tls-psk=/etc/loopdio/vm1.psk
EOF
printf 'IMAGE=%s\nPLUGIN=/opt/loopdio.so\n' "$dev" >"$T/etc/blk.conf"
printf 'SERVE=dir\nIMAGE=/var/lib/loopdio/vms\nPLUGIN=/opt/loopdio.so\n' >"$T/etc/vms.conf"
printf '[Socket]\nListenStream=10809\n' >"$T/units/loopdio@vm1.socket.d/tcp.conf"
printf '[Service]\nPrivateDevices=no\nDeviceAllow=%s rw\n' "$dev" >"$T/units/loopdio@blk.service.d/blockdev.conf"
cat >"$T/units/loopdio-check.service" <<EOF
[Unit]
After=loopdio@vm1.socket loopdio@blk.socket loopdio@vms.socket
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /check/check.py "$engine" $dev
StandardOutput=file:/check/out/result
StandardError=inherit
EOF
cat >"$T/check.py" <<'PY'
import json, os, random, signal, socket, subprocess, sys, nbd
engine, dev = sys.argv[1:]
signal.alarm(60)
def connect(how, tls=True):
    h = nbd.NBD()
    h.set_full_info(True)
    h.set_tls(nbd.TLS_REQUIRE if tls else nbd.TLS_DISABLE)
    if tls:
        h.set_tls_psk_file("/etc/loopdio/vm1.psk")
        h.set_tls_username("vm1")
    if how == "tcp":
        h.connect_tcp("127.0.0.1", "10809")
    else:
        h.connect_unix(f"/run/loopdio/{how}.sock")
    return h
def pattern(h, seed):
    data = random.Random(seed).randbytes(1 << 20)
    h.pwrite(data, 1 << 20)
    h.flush()
    assert h.pread(len(data), 1 << 20) == data, seed
    h.shutdown()
try:
    connect("vm1", tls=False)
    raise AssertionError("vm1 served a client without TLS")
except nbd.Error as e:
    assert "requires TLS" in str(e), e
h = connect("vm1")
desc = h.get_export_description()
assert f"direct I/O on, alignment 512 (statx), {engine}," in desc, desc
pattern(h, 1)
def control(line):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/loopdio/vm1/control")
    s.sendall(line.encode() + b"\n")
    return json.loads(s.makefile().readline())
assert control("status")["dio"] is True
r = control("set direct-io off")
assert r["ok"] and r["dio"] is False, r
pattern(connect("tcp"), 2)
r = control("set direct-io on")
assert r["ok"] and r["dio"] is True, r
h = connect("blk", tls=False)
desc = h.get_export_description()
assert desc.startswith(f"loopdio: {dev} (block device") and not h.is_read_only(), desc
pattern(h, 3)
for name, seed in (("a.img", 4), ("b.img", 5)):
    h = nbd.NBD(); h.set_full_info(True); h.set_export_name(name)
    h.connect_unix("/run/loopdio/vms.sock")
    assert f"/var/lib/loopdio/vms/{name} (ext4 file" in h.get_export_description(), name
    pattern(h, seed)
listing = subprocess.run(["nbdinfo", "--list", "--json", "nbd+unix:///?socket=/run/loopdio/vms.sock"],
                         capture_output=True, text=True, check=True).stdout
assert sorted(e["export-name"] for e in json.loads(listing)["exports"]) == ["a.img", "b.img"], listing
for unit in ("loopdio@vm1.service", "loopdio@blk.service", "loopdio@vms.service"):
    pid = subprocess.run(["systemctl", "show", "-P", "MainPID", unit], capture_output=True,
                         text=True, check=True).stdout.strip()
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/1/ns/net"), "network"
print("all checks passed")
PY

machine=loopdio-test-$$
at_exit "rm -rf /run/systemd/nspawn/propagate/$machine"
binds=(--bind-ro="$SRC/systemd/loopdio@.socket:/etc/systemd/system/loopdio@.socket"
  --bind-ro="$LOOPDIO_BUILD/systemd/loopdio@.service:/etc/systemd/system/loopdio@.service"
  --bind-ro="$PLUGIN:/opt/loopdio.so" --bind-ro="$T/etc:/etc/loopdio" --bind="$mnt:/var/lib/loopdio"
  --bind-ro="$T/check.py:/check/check.py" --bind="$T/out:/check/out" --bind="$dev")
for u in "$T"/units/*; do binds+=(--bind-ro="$u:/etc/systemd/system/${u##*/}"); done
SECONDS=0
timeout 180 systemd-nspawn --directory=/ --volatile=yes --register=no --keep-unit --private-network \
  --machine="$machine" --console=pipe "${binds[@]}" --boot -- \
  systemd.wants=loopdio@vm1.socket systemd.wants=loopdio@blk.socket systemd.wants=loopdio@vms.socket \
  systemd.wants=loopdio-check.service \
  >"$T/console.log" 2>&1 || { tail -30 "$T/console.log"; fail "systemd-nspawn"; }
grep -q 'all checks passed' "$T/out/result" 2>/dev/null ||
  { cat "$T/out/result" "$T/console.log"; fail "the check inside the container failed"; }
$PYTHON - "$mnt/vm1.img" "$dev" "$mnt/vms/a.img" "$mnt/vms/b.img" <<'PY' ||
  fail "the patterns written inside are not in the images"
import random, sys
for path, seed in zip(sys.argv[1:], (2, 3, 4, 5)):
    with open(path, "rb") as f:
        f.seek(1 << 20)
        assert f.read(1 << 20) == random.Random(seed).randbytes(1 << 20), path
PY
pass "booted with the units (${SECONDS}s): TLS on the Unix socket and TCP, a block device, a directory of images, $engine, control socket, no capabilities, seccomp, no network"
