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
