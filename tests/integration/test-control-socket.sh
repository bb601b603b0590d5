#!/usr/bin/env bash
# The control socket (control=PATH) belongs to exactly one live server and is served to
# every client at once:
#  - a relative path is made absolute when the server starts: nbdkit going into the
#    background changes to /, and the server then removed /NAME, a file it never created,
#    when it exited (its own socket stayed behind in the directory it was started from);
#  - a path where another server answers is refused ("in use by" and that server's pid): the
#    second server used to unlink the first one's socket and take the name;
#  - a socket nobody answers on (a server that was killed) is replaced;
#  - a path that is not a socket is refused ("not a socket") and left as it was;
#  - a server that fails to start (its -U socket or TCP port busy) leaves no control socket:
#    it was bound in .get_ready, before nbdkit's own sockets, and never removed;
#  - a client that connects and sends nothing delays nobody (commands were answered one
#    client at a time, waiting 5 s for each one's line), and is dropped after 10 s;
#  - several commands in one write are all answered, in order (only the first one was).
# Every case runs; the failures are listed at the end.
source "$(dirname "$0")/lib.sh"
require nbdkit timeout

truncate -s 8M "$T/c.img" "$T/c2.img"
IMG=$T/c.img
IMG2=$T/c2.img  # for a second server beside the first (one writer per image)
ctl() { $PYTHON "$TESTS_DIR/control_client.py" "$@"; }
# refused WANT... -- nbdkit arguments: nbdkit must fail to start, saying each WANT.
refused() {
  local want=() rc=0
  while [ "$1" != -- ]; do want+=("$1"); shift; done
  shift
  timeout 20 nbdkit "$@" >"$T/refused.out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || { cat "$T/refused.out"; fail "started: $*"; }
  [ $rc -lt 124 ] || { cat "$T/refused.out"; fail "crashed or hung (exit $rc): $*"; }
  local w
  for w in "${want[@]}"; do
    grep -qF -- "$w" "$T/refused.out" || { cat "$T/refused.out"; fail "the message lacks '$w': $*"; }
  done
  echo "  refused: $(head -1 "$T/refused.out")"
}

relative_path_in_background() {
  local name=loopdio-control-test.$$.$RANDOM.sock pid
  echo "planted by test-control-socket" >"/$name"
  at_exit "rm -f /$name"
  mkdir "$T/cwd"
  (cd "$T/cwd" && nbdkit -P "$T/bg.pid" -U "$T/bg.sock" "$PLUGIN" file="$IMG" control="$name") ||
    fail "nbdkit did not start"
  wait_until 10 test -s "$T/bg.pid" || fail "no pid file"
  pid=$(cat "$T/bg.pid")
  at_exit "kill $pid"
  wait_until 10 test -S "$T/cwd/$name" || fail "no control socket in the directory nbdkit started in"
  ctl "$T/cwd/$name" status | grep -q "\"pid\":$pid" || fail "no status from the background server"
  kill "$pid"
  wait_until 10 eval "! kill -0 $pid 2>/dev/null" || fail "the server did not exit"
  [ "$(cat "/$name" 2>/dev/null)" = "planted by test-control-socket" ] ||
    fail "the server removed /$name, a file it never created"
  [ ! -e "$T/cwd/$name" ] || fail "the server left its control socket $T/cwd/$name behind"
  rm -f "/$name"
}

live_socket_refused() {
  local a
  start_server -- file="$IMG" control="$T/live.ctl"
  a=$SERVER_PID
  refused "in use by" "$a" -- -U - "$PLUGIN" file="$IMG2" control="$T/live.ctl" --run true
  ctl "$T/live.ctl" status | grep -q "\"pid\":$a" || fail "the first server lost its control socket"
  stop_server
}

stale_socket_replaced() {
  $PYTHON -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$T/stale.ctl"
  [ -S "$T/stale.ctl" ] || fail "could not make a stale socket"
  start_server -- file="$IMG" control="$T/stale.ctl"
  ctl "$T/stale.ctl" status | grep -q "\"pid\":$SERVER_PID" || fail "no status on the replaced socket"
  stop_server
  [ ! -e "$T/stale.ctl" ] || fail "the server left its control socket behind"
}

not_a_socket_refused() {
  echo "not a socket, keep me" >"$T/file.ctl"
  refused "not a socket" -- -U - "$PLUGIN" file="$IMG" control="$T/file.ctl" --run true
  [ "$(cat "$T/file.ctl")" = "not a socket, keep me" ] || fail "the file was changed"
}

failed_start_leaves_nothing() {
  local port holder
  start_server -- file="$IMG"
  refused "Address already in use" -- -f -U "$SOCK" "$PLUGIN" file="$IMG2" control="$T/fail-unix.ctl"
  [ ! -e "$T/fail-unix.ctl" ] || fail "-U busy: the failed server left its control socket"
  stop_server
  # A port taken by a listener of our own (any free port, never 10809).
  $PYTHON -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(60)' >"$T/port" &
  holder=$!
  at_exit "kill $holder"
  wait_until 10 test -s "$T/port" || fail "no port"
  port=$(cat "$T/port")
  refused "Address already in use" -- -f -i 127.0.0.1 -p "$port" "$PLUGIN" file="$IMG" control="$T/fail-tcp.ctl"
  [ ! -e "$T/fail-tcp.ctl" ] || fail "port busy: the failed server left its control socket"
  kill "$holder"
}

idle_clients_delay_nobody() {
  start_server -- file="$IMG" control="$T/busy.ctl"
  $PYTHON - "$T/busy.ctl" "$SERVER_PID" <<'PY' || fail "idle clients"
import sys, time
from control_client import connect, read_lines
path, pid = sys.argv[1], sys.argv[2]
idle = [connect(path) for _ in range(3)]  # connected, never send a thing
t0 = time.monotonic()
busy = connect(path)
busy.sendall(b"status\n")
reply = read_lines(busy, 1, timeout=15)
took = time.monotonic() - t0
print(f"  status with 3 idle clients connected: answered in {took:.3f} s")
assert reply and f'"pid":{pid}' in reply[0], f"no status reply: {reply}"
assert took < 1.5, f"3 idle clients delayed another's status by {took:.1f} s"
# Idle clients are dropped after 10 s, not before.
for s in idle:
    s.settimeout(20)
    try:
        assert s.recv(1) == b"", "an idle client got data"
    except ConnectionResetError:
        pass
dropped = time.monotonic() - t0
print(f"  idle clients dropped after {dropped:.1f} s")
assert 9 <= dropped <= 15, f"idle clients dropped after {dropped:.1f} s, not about 10 s"
PY
  stop_server
}

commands_in_one_write() {
  start_server -- file="$IMG" control="$T/batch.ctl"
  ctl "$T/batch.ctl" status status flush >"$T/replies" || fail "no replies"
  cut -c1-60 "$T/replies" | sed 's/^/  reply: /'
  [ "$(wc -l <"$T/replies")" -eq 3 ] || fail "$(wc -l <"$T/replies") replies to 3 commands in one write"
  sed -n 1,2p "$T/replies" | grep -c "\"pid\":$SERVER_PID" | grep -qx 2 || fail "the first two replies are not status"
  [ "$(sed -n 3p "$T/replies")" = '{"ok":true}' ] || fail "the third reply is not flush's"
  stop_server
}

failed=()
for case in relative_path_in_background live_socket_refused stale_socket_replaced \
  not_a_socket_refused failed_start_leaves_nothing idle_clients_delay_nobody commands_in_one_write; do
  echo "== $case"
  ($case) &  # a subshell of its own, errexit on: the next case starts afresh
  if wait $!; then pass "$case"; else failed+=("$case"); fi
done
[ ${#failed[@]} -eq 0 ] || fail "${failed[*]}"
