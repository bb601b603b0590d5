#!/usr/bin/env bash
# `loopdio serve` exposes no more than asked. It used to listen on every address, writable,
# without TLS, while printing nbd://localhost:PORT. Now: loopback only unless --bind; a
# writable export without TLS on an address other hosts can reach is refused (one line,
# exit 1) unless --insecure-no-tls; read-only or TLS is allowed; the URI printed is the one
# it listens on; -r reaches both nbdkit (-r) and the plugin (readonly=1); --threads and
# --max-connections are passed on; a busy port is one line, exit 2. Listeners seen with ss.
# It also accepted, without a word, -r or --insecure-no-tls beyond loopback (anyone who
# reaches the port reads, or writes, the image) and TLS keys that every local user could
# read. Now each of the first prints one warning line at start, and the keys are refused
# unless they are their owner's alone (owner root or the user serving, mode 0600 or less).
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
grep -q "^description: loopdio: $img (.*): direct I/O on, alignment 512.*, engine sync+libaio" "$T/default.out" ||
  fail "serve does not print the export's description"
nbdinfo "nbd://localhost:$port" | grep -q "direct I/O on" || fail "nbdinfo nbd://localhost:$port"
! grep -q warning "$T/default.out.err" || { cat "$T/default.out.err"; fail "a warning on loopback"; }
pass "default: $(tr '\n' ' ' <"$T/where")only, nbd://localhost:$port, with the description, no warning"

# A second server on the same port (of another image: one writer per image): one line, exit 2.
truncate -s 16M "$T/other.img"
expect_error 2 "cannot listen on localhost:$port: Address already in use" "$LOOPDIO" serve -p "$port" "$T/other.img"
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
chmod 0600 "$T/keys.psk"
serve_until_ready "$T/tls.out" "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 --tls-psk "$T/keys.psk" "$img"
grep -q "^serving $img on nbds://" "$T/tls.out" || fail "TLS: the URI"
stop_serve
serve_until_ready "$T/insecure.out" "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 --insecure-no-tls "$img"
stop_serve
serve_until_ready "$T/insecure6.out" "$LOOPDIO" serve -p "$port" --bind :: --insecure-no-tls "$img"
stop_serve
pass "0.0.0.0 with -r (nbdkit -r and readonly=1), with TLS, or with --insecure-no-tls: allowed"

# ... but never silently: one warning line each at start (none with TLS).
warned() {  # warned OUT LINE: LINE is on OUT.err exactly once
  [ "$(grep -cxF -- "$2" "$1.err")" = 1 ] || { cat "$1.err"; fail "$1: no warning '$2'"; }
}
warned "$T/ro.out" "loopdio: warning: serve: --bind 0.0.0.0 without TLS: anyone who reaches port $port can read the image (-r only keeps them from writing it)"
warned "$T/insecure.out" "loopdio: warning: serve: --bind 0.0.0.0 without TLS: anyone who reaches port $port can read and overwrite the image (--insecure-no-tls)"
warned "$T/insecure6.out" "loopdio: warning: serve: --bind :: without TLS: anyone who reaches port $port can read and overwrite the image (--insecure-no-tls)"
! grep -q warning "$T/tls.out.err" || { cat "$T/tls.out.err"; fail "a warning with TLS"; }
pass "-r and --insecure-no-tls beyond loopback: one warning line each"

# --- TLS keys others may read or change: refused, as ssh refuses such a private key ------
for m in 0644 0640 0604 0620; do
  chmod "$m" "$T/keys.psk"
  case $m in
    0644|0604) why="readable by others" ;;
    0640) why="readable by its group" ;;
    0620) why="writable by its group" ;;
  esac
  expect_error 2 "serve: --tls-psk $T/keys.psk: refusing the keys: $why (mode $m): the keys must be the owner's alone: chmod 600 $T/keys.psk" \
    timeout 20 "$LOOPDIO" serve -p "$port" --bind 0.0.0.0 --tls-psk "$T/keys.psk" "$img"
done
chmod 0600 "$T/keys.psk"
chown 65534 "$T/keys.psk"
expect_error 2 "serve: --tls-psk $T/keys.psk: refusing the keys: owned by uid 65534, who could change the keys: chown root $T/keys.psk" \
  timeout 20 "$LOOPDIO" serve -p "$port" --tls-psk "$T/keys.psk" "$img"
chown 0 "$T/keys.psk"
[ -z "$(listeners "$port")" ] || fail "a serve with refused keys listens"
pass "TLS keys readable or writable by group or others, or another user's: refused"

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
