#!/usr/bin/env bash
# Regression: the control socket vanished when nbdkit forked into the background.
# Timeline: the plugin binds control=PATH in .get_ready; nbdkit forks; the parent exits and
# runs the plugin's cleanup, which unlinked PATH while the child was still listening on it,
# so `loopdio list` and `loopdio set` could no longer reach a backgrounded server. Only the
# process that serves the socket may remove it.
source "$(dirname "$0")/lib.sh"
require nbdkit

truncate -s 8M "$T/bg.img"
nbdkit -P "$T/pid" -U "$T/nbd.sock" "$PLUGIN" file="$T/bg.img" control="$T/ctl" ||
  fail "nbdkit did not start"
pid=$(cat "$T/pid")
at_exit "kill $pid"
sleep 0.3
[ -S "$T/ctl" ] || fail "the control socket is gone after nbdkit forked"
reply=$($PYTHON -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"status\n")
print(s.recv(65536).decode().strip())' "$T/ctl")
echo "$reply" | grep -q "\"pid\":$pid" || fail "status from the background server: $reply"
kill "$pid"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
[ ! -e "$T/ctl" ] || fail "the serving process left its control socket behind"
pass "the control socket lives exactly as long as the server that serves it"
