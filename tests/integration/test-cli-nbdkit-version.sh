#!/usr/bin/env bash
# serve and attach refuse an nbdkit older than 1.34 (1.32.4 to 1.33.9 abort when a client
# hangs up with requests queued; Debian 12 ships 1.32.5) with the reason and the way out,
# before running it for anything but --version. A stand-in `nbdkit` reports the version;
# LOOPDIO_NBDKIT points loopdio at it, as it would at any other installation. Without
# LOOPDIO_NBDKIT, loopdio runs the nbdkit the plugin was built against, even when an older
# one comes first in PATH.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN
img=$T/disk.img
truncate -s 16M "$img"

mkdir "$T/bin"
standin() {  # standin VERSION-LINE: $T/bin/nbdkit prints it for --version, else notes it ran
  cat >"$T/bin/nbdkit" <<SH
#!/bin/sh
if [ "\$1" = --version ]; then echo "$1"; exit 0; fi
touch "$T/ran"
echo "nbdkit: stand-in, not a server" >&2
exit 1
SH
  chmod +x "$T/bin/nbdkit"
  rm -f "$T/ran"
}
way_out="install nbdkit 1.34 or later (scripts/nbdkit.sh builds one)"

# The fake device for attach (no nbd module needed: nothing gets that far).
mkdir -p "$T/sys/module/nbd" "$T/sys/block/nbd0" "$T/dev"
echo 0 >"$T/sys/block/nbd0/size"
: >"$T/dev/nbd0"
attach_env=(env LOOPDIO_SYSFS="$T/sys" LOOPDIO_DEV_DIR="$T/dev" LOOPDIO_NBD_CLIENT=/bin/false)

standin "nbdkit 1.32.5"
msg="nbdkit 1.32.5 ($T/bin/nbdkit) is not supported: nbdkit 1.32.4 to 1.33.9 abort when a client hangs up with requests queued; $way_out"
# (timeout: a loopdio that ignored LOOPDIO_NBDKIT would serve until stopped)
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "$msg" timeout 20 "$LOOPDIO" serve --unix "$T/s.sock" "$img"
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "$msg" timeout 20 "${attach_env[@]}" "$LOOPDIO" attach "$img"
[ ! -e "$T/ran" ] || fail "the unsupported nbdkit was run for more than --version"
[ -z "$(ls -A "$T/run" 2>/dev/null | grep -v '^\.lock$')" ] || fail "state left by a refused start"
standin "nbdkit 1.33.9"
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "nbdkit 1.33.9 ($T/bin/nbdkit) is not supported" \
  timeout 20 "$LOOPDIO" serve --unix "$T/s.sock" "$img"
standin "nbdkit 1.30.0"
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "nbdkit 1.30.0 ($T/bin/nbdkit) is not supported: too old for loopdio; $way_out" \
  timeout 20 "$LOOPDIO" serve --unix "$T/s.sock" "$img"
standin "not nbdkit at all"
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "cannot tell the version of nbdkit ($T/bin/nbdkit)" \
  timeout 20 "$LOOPDIO" serve --unix "$T/s.sock" "$img"
pass "nbdkit older than 1.34: refused with the reason and the way out, never started"

standin "nbdkit 1.34.0"
LOOPDIO_NBDKIT=$T/bin/nbdkit expect_error 2 "loopdio: stand-in, not a server" \
  timeout 20 "$LOOPDIO" serve --unix "$T/s.sock" "$img"
[ -e "$T/ran" ] || fail "nbdkit 1.34.0 was not accepted"
pass "nbdkit 1.34.0: accepted"

# An older nbdkit first in PATH: the one the plugin was built against is run.
standin "nbdkit 1.32.5"
PATH=$T/bin:$PATH serve_until_ready "$T/serve.out" "$LOOPDIO" serve --unix "$T/s.sock" "$img"
[ ! -e "$T/ran" ] || fail "the nbdkit in PATH was run, not the one the plugin was built against"
nbdkit_pid=$(pgrep -P "$SERVE_PID" nbdkit) || fail "serve has no nbdkit child"
echo "serving with $(readlink "/proc/$nbdkit_pid/exe")"
stop_serve
pass "without LOOPDIO_NBDKIT: the build's nbdkit, not an older one in PATH"
