#!/usr/bin/env bash
# The systemd units as systemd would run them: `systemd-analyze verify` and `security` on the
# instance loopdio@test (the service as the build made it), then the service's own ExecStart,
# expanded from a conf made from the shipped example, socket-activated on a Unix socket and TCP,
# serving a pattern (plain, then TLS) with the supported nbdkit the unit names; then an
# instance on xfs with a control socket, snapshotted live by `loopdio snapshot --control`.
source "$(dirname "$0")/lib.sh"
require_root
require systemd-analyze systemd-socket-activate nbdkit psktool cmp dpkg

: "${LOOPDIO_BUILD:?run through ctest}"
SRC=${LOOPDIO_SOURCE:-$(cd "$TESTS_DIR/../.." && pwd)}
NAME="test"
mkdir "$T/units" "$T/etc"
# The only change to the units: the conf directory, so that the test needs no /etc/loopdio.
for u in "$SRC/systemd/loopdio@.socket" "$LOOPDIO_BUILD/systemd/loopdio@.service"; do
  sed "s#/etc/loopdio/#$T/etc/#g" "$u" >"$T/units/${u##*/}"
done
template=$T/units/loopdio@.service
unit=$T/units/loopdio@$NAME.service  # an instance: systemd loads the template next to it

systemd-analyze verify "$T/units/loopdio@$NAME.socket" "$unit" >"$T/verify.out" 2>&1 ||
  { cat "$T/verify.out"; fail "systemd-analyze verify"; }
[ ! -s "$T/verify.out" ] || { cat "$T/verify.out"; fail "systemd-analyze verify warns"; }
pass "systemd-analyze verify loopdio@$NAME.socket loopdio@$NAME.service: no warnings"

# Exposure 0.0 (locked down) to 10.0 (no sandbox), in tenths for --threshold.
systemd-analyze security --offline=yes --threshold=10 "$unit" >"$T/security.out" 2>&1 ||
  { grep -E '✗|Overall' "$T/security.out"; fail "the sandbox got weaker (exposure above 1.0)"; }
pass "systemd-analyze security: $(grep -o 'exposure level.*' "$T/security.out")"

# ExecStart starts the nbdkit of the build by its absolute path, and that one is supported:
# 1.32.4 to 1.33.9 abort when a client hangs up with requests queued.
nbdkit=$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "$template")
version=$("$nbdkit" --version | awk '$1 == "nbdkit" { print $2 }') || fail "$nbdkit does not run"
dpkg --compare-versions "$version" ge 1.34 || fail "ExecStart: $nbdkit is nbdkit $version (< 1.34)"
pass "ExecStart runs $nbdkit, nbdkit $version"

# unit_argv CONF: the service's ExecStart as systemd expands it from Environment= and the conf
# (EnvironmentFile=): $T/argv gets the words, $T/env the environment, NUL-separated.
unit_argv() {
  $PYTHON - "$template" "$1" "$NAME" "$T/argv" "$T/env" <<'PY' || fail "cannot expand ExecStart"
import re, shlex, sys
unit, conf, instance, argv_out, env_out = sys.argv[1:]
keys = {}
for line in open(unit):
    k, _, v = line.strip().partition("=")
    keys.setdefault(k, []).append(v.replace("%i", instance).replace("%%", "%"))
env = dict(w.split("=", 1) for w in shlex.split(keys["Environment"][0]))
assert keys["EnvironmentFile"] == [conf], keys["EnvironmentFile"]
for line in open(conf):
    line = line.strip()
    if line and line[0] not in "#;":
        k, v = line.split("=", 1)
        env[k] = " ".join(shlex.split(v))  # quotes, as systemd strips them
words = []
for w in shlex.split(keys["ExecStart"][0].lstrip("-@:+!")):
    if re.fullmatch(r"\$\w+", w):        # $VAR: the value split at whitespace
        words += env.get(w[1:], "").split()
    else:                                # ${VAR}: the value, in this one word
        words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), w))
open(argv_out, "w").write("\0".join(words))
open(env_out, "w").write("\0".join(f"{k}={v}" for k, v in env.items()))
PY
}

# activate CONF: what the socket unit and systemd do: listen, and on the first connection
# start the service's ExecStart with LISTEN_FDS and only the unit's environment.
activate() {
  local argv env e setenv=()
  unit_argv "$1"
  mapfile -d '' argv <"$T/argv"
  mapfile -d '' env <"$T/env"
  for e in "${env[@]}" ${LOOPDIO_PRELOAD:+LD_PRELOAD="$LOOPDIO_PRELOAD"}; do setenv+=(-E "$e"); done
  PORT=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  SOCK=$T/$NAME.sock
  rm -f "$SOCK"
  systemd-socket-activate -l "$SOCK" -l "127.0.0.1:$PORT" "${setenv[@]}" -- "${argv[@]}" \
    2>"$T/activate.log" &
  SD_PID=$!
  at_exit "kill $SD_PID"
  for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
  [ -S "$SOCK" ] || { cat "$T/activate.log"; fail "systemd-socket-activate did not listen"; }
  NBDKIT=${argv[0]}
  [ "$(readlink "/proc/$SD_PID/exe")" != "$NBDKIT" ] || fail "nbdkit started before any client"
  echo "ExecStart: ${argv[*]}"
}

mnt=$(make_fs ext4 64M)
img=$mnt/$NAME.img
truncate -s 16M "$img"
psktool -u "$NAME" -p "$T/etc/$NAME.psk" >/dev/null

# serve ROUND [TLS]: clients through both sockets; with TLS, a client without it is refused.
serve() {
  local round=$1 psk=${2:-}
  $PYTHON - "$SOCK" "$PORT" "$img" "$psk" "$NAME" "$round" "$T/pattern" <<'PY' || fail "$round: clients"
import random, sys, nbd
sock, port, img, psk, user, rnd, pattern_out = sys.argv[1:]
def handle(tls):
    h = nbd.NBD()
    h.set_full_info(True)
    if tls:
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(psk)
        h.set_tls_username(user)
    else:
        h.set_tls(nbd.TLS_DISABLE)
    return h
if psk:
    h = handle(False)
    try:
        h.connect_unix(sock)
        raise AssertionError("a client without TLS was served")
    except nbd.Error as e:
        assert "requires TLS" in str(e), e
        print(f"{rnd}: refused without TLS: {e}")
h = handle(psk)
h.connect_unix(sock)
assert h.get_tls_negotiated() == bool(psk)
desc = h.get_export_description()
print(f"{rnd}: {desc}")
assert desc.startswith(f"loopdio: {img} (ext4 file") and "direct I/O on" in desc, desc
data = random.Random(rnd).randbytes((1 << 20) + 1536)
h.pwrite(data, 69632)
h.flush()
assert h.pread(len(data), 69632) == data, "read back through the Unix socket"
h.shutdown()
h = handle(psk)
h.connect_tcp("127.0.0.1", port)
assert h.pread(len(data), 69632) == data, "read back through TCP"
h.shutdown()
open(pattern_out, "wb").write(data)
PY
  [ "$(readlink "/proc/$SD_PID/exe")" = "$NBDKIT" ] || fail "$round: not $NBDKIT"
  kill "$SD_PID"
  wait "$SD_PID" || fail "$round: nbdkit exited with $?"
  cmp -n "$(stat -c %s "$T/pattern")" -i 0:69632 "$T/pattern" "$img" || fail "$round: image"
  if grep -i error "$T/activate.log"; then fail "$round: nbdkit logged errors"; fi
}

# The example conf as shipped, with only IMAGE and PLUGIN set.
sed -e "s#^IMAGE=.*#IMAGE=$img#" -e "s#^\#PLUGIN=.*#PLUGIN=$PLUGIN#" \
  "$SRC/systemd/example.conf" >"$T/etc/$NAME.conf"
activate "$T/etc/$NAME.conf"
serve plain
pass "socket-activated ExecStart of the example conf: pattern through Unix socket and TCP"

# The remote recipe: TLS with a PSK, several words in each of NBDKIT_ARGS and PLUGIN_ARGS.
cat >"$T/etc/$NAME.conf" <<EOF
IMAGE=$img
PLUGIN=$PLUGIN
PLUGIN_ARGS=directio=1 aio=io_uring
NBDKIT_ARGS="--tls=require --tls-psk=$T/etc/$NAME.psk --threads=8"
EOF
activate "$T/etc/$NAME.conf"
serve tls "$T/etc/$NAME.psk"
pass "socket-activated ExecStart with TLS: refused without TLS, pattern with the PSK"

# A live snapshot of an instance: the image on xfs (reflink), the conf's control socket,
# `loopdio snapshot --control` while the instance serves (as for /run/loopdio/NAME/control).
xmnt=$(make_fs xfs 512M)
ximg=$xmnt/$NAME.img
truncate -s 16M "$ximg"
cat >"$T/etc/$NAME.conf" <<EOF2
IMAGE=$ximg
PLUGIN=$PLUGIN
PLUGIN_ARGS=control=$T/$NAME.control
EOF2
activate "$T/etc/$NAME.conf"
$PYTHON - "$SOCK" "$T/written" <<'PY' || fail "snapshot: the client before it"
import os, sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
data = os.urandom((1 << 20) + 1536)
h.pwrite(data, 4096 * 3 + 512)  # acknowledged before the snapshot: in it
open(sys.argv[2], "wb").write(data)
PY
"$LOOPDIO_BUILD/loopdio" snapshot --control "$T/$NAME.control" "$xmnt/snap.img" ||
  fail "loopdio snapshot --control $T/$NAME.control"
cmp -n "$(stat -c %s "$T/written")" -i 0:$((4096 * 3 + 512)) "$T/written" "$xmnt/snap.img" ||
  fail "the snapshot lacks a write acknowledged before it"
cmp "$ximg" "$xmnt/snap.img" || fail "the idle instance's snapshot differs from its image"
kill "$SD_PID"
wait "$SD_PID" || fail "snapshot: nbdkit exited with $?"
pass "loopdio snapshot --control of a socket-activated instance: every acknowledged write in it"
