# Sourced by the tests of the loopdio command, after lib.sh.

# expect_error RC "message part" COMMAND...: exactly one line on stderr, "loopdio: ...".
expect_error() {
  local want_rc=$1 want=$2 rc=0
  shift 2
  "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -eq "$want_rc" ] || { cat "$T/err"; fail "$*: exit $rc, expected $want_rc"; }
  [ "$(wc -l <"$T/err")" -eq 1 ] || { cat "$T/err"; fail "$*: not one line on stderr"; }
  grep -q '^loopdio: ' "$T/err" || { cat "$T/err"; fail "$*: message not from loopdio"; }
  grep -qF -- "$want" "$T/err" || { cat "$T/err"; fail "$*: message lacks '$want'"; }
  echo "refused (exit $rc): $(cat "$T/err")"
}

# serve_until_ready OUT COMMAND...: runs COMMAND (a `loopdio serve`, or a shell that execs
# one) in the background, stdout to OUT and stderr to OUT.err, until it prints "serving ";
# sets SERVE_PID. Stopped on exit.
serve_until_ready() {
  local out=$1 i
  shift
  "$@" >"$out" 2>"$out.err" &
  SERVE_PID=$!
  at_exit "kill $SERVE_PID; wait $SERVE_PID"
  for i in $(seq 300); do
    grep -qs '^serving ' "$out" && return 0
    kill -0 $SERVE_PID 2>/dev/null || { cat "$out.err" >&2; fail "$*: exited"; }
    sleep 0.05
  done
  fail "$*: not serving after 15 s"
}

# stop_serve: SIGTERM to the serve started last; it must exit 0.
stop_serve() {
  kill -TERM "$SERVE_PID"
  wait "$SERVE_PID" || fail "serve: exit $? after SIGTERM"
}
