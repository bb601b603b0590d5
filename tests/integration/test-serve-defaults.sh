#!/usr/bin/env bash
# `loopdio serve` exposes no more than asked. It used to listen on every address, writable,
# without TLS, while printing nbd://localhost:PORT. Now: loopback only unless --bind; a
# writable export without TLS on an address other hosts can reach is refused (one line,
# exit 1) unless --insecure-no-tls; read-only or TLS is allowed; the URI printed is the one
# it listens on; -r reaches both nbdkit (-r) and the plugin (readonly=1); --threads and
# --max-connections are passed on; a busy port is one line, exit 2. Listeners seen with ss.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit nbdinfo ss psktool
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN
img=$T/disk.img
truncate -s 16M "$img"

free_port() { $PYTHON -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
# The local addresses listening on TCP port $1, one a line.
listeners() { ss -ltnH "sport = :$1" | awk '{ print $4 }' | sed 's/:[0-9]*$//' | sort; }
nbdkit_args() { tr '\0' ' ' <"/proc/$(pgrep -P "$SERVE_PID" nbdkit)/cmdline"; }

# --- the default: loopback only, and the URI says so -------------------------------------
port=$(free_port)
serve_until_ready "$T/default.out" "$LOOPDIO" serve -p "$port" "$img"
cat "$T/default.out"
listeners "$port" >"$T/where"
[ -s "$T/where" ] || fail "nothing listens on $port"
! grep -qvE '^(127\.[0-9.]+|\[::1\])$' "$T/where" || { cat "$T/where"; fail "listens beyond loopback"; }
grep -qx "serving $img on nbd://localhost:$port" "$T/default.out" || fail "the URI printed"
grep -q "^description: loopdio: $img (.*): direct I/O on, alignment 512.*, engine libaio" "$T/default.out" ||
  fail "serve does not print the export's description"
nbdinfo "nbd://localhost:$port" | grep -q "direct I/O on" || fail "nbdinfo nbd://localhost:$port"
pass "default: $(tr '\n' ' ' <"$T/where")only, nbd://localhost:$port, with the description"

# A second server on the same port: one line, exit 2.
expect_error 2 "cannot listen on localhost:$port: Address already in use" "$LOOPDIO" serve -p "$port" "$img"
stop_serve
pass "a busy port: one line"

# --- beyond loopback: refused when writable without TLS ----------------------------------
port=$(free_port)
for bind in 0.0.0.0 :: '*'; do
  expect_error 1 "serve: --bind $bind is reachable from other hosts, which could write the image without TLS: add --tls-psk or --tls-certificates, or -r, or --insecure-no-tls" \
    timeout 20 "$LOOPDIO" serve -p "$port" --bind "$bind" "$img"
done
ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ sub("/.*", "", $4); print $4; exit }')
if [ -n "$ip" ]; then
  expect_error 1 "serve: --bind $ip is reachable from other hosts" timeout 20 "$LOOPDIO" serve -p "$port" --bind "$ip" "$img"
fi
[ -z "$(listeners "$port")" ] || fail "a refused serve listens"
pass "writable without TLS on 0.0.0.0, ::, * ${ip:+and $ip }: refused"

# Read-only, TLS, or the flag that says it is insecure: allowed, and the URI is the host's.
serve_until_ready "$T/ro.out" "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 -r "$img"
grep -qx "serving $img on nbd://$(hostname):$port (listening on every address)" "$T/ro.out" ||
  { cat "$T/ro.out"; fail "the URI of a wildcard bind"; }
[ "$(listeners "$port")" = 0.0.0.0 ] || fail "--bind 0.0.0.0 does not listen on 0.0.0.0"
args=$(nbdkit_args)
[[ " $args " == *" -r "* && " $args " == *" readonly=1 "* ]] || fail "-r: nbdkit got: $args"
nbdinfo "nbd://127.0.0.1:$port" | grep -q "is_read_only: true" || fail "-r: the export is writable"
stop_serve
psktool -u alice -p "$T/keys.psk" >/dev/null
serve_until_ready "$T/tls.out" "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 --tls-psk "$T/keys.psk" "$img"
grep -q "^serving $img on nbds://" "$T/tls.out" || fail "TLS: the URI"
stop_serve
serve_until_ready "$T/insecure.out" "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 --insecure-no-tls "$img"
stop_serve
pass "0.0.0.0 with -r (nbdkit -r and readonly=1), with TLS, or with --insecure-no-tls: allowed"

# --- loopback addresses other than localhost; threads and connection limit ---------------
serve_until_ready "$T/lo2.out" "$LOOPDIO" serve -p "$port" --bind 127.0.0.2 --threads 4 --max-connections 2 "$img"
grep -qx "serving $img on nbd://127.0.0.2:$port" "$T/lo2.out" || fail "the URI of --bind 127.0.0.2"
[ "$(listeners "$port")" = 127.0.0.2 ] || fail "--bind 127.0.0.2"
args=$(nbdkit_args)
[[ " $args " == *" --threads 4 "* && " $args " == *" max-connections=2 "* ]] || fail "nbdkit got: $args"
stop_serve
expect_error 1 "serve: --threads: expected 1 to 1024" "$LOOPDIO" serve -p "$port" --threads 0 "$img"
expect_error 1 "--max-connections=0" "$LOOPDIO" serve -p "$port" --max-connections 0 "$img"
expect_error 1 "exclude each other" "$LOOPDIO" serve --unix "$T/x.sock" --insecure-no-tls "$img"
pass "127.0.0.2 is loopback; --threads and --max-connections reach nbdkit and the plugin"
