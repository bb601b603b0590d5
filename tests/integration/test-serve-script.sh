#!/usr/bin/env bash
# The README's first command, exactly as written, from a fresh clone, with no variable of
# loopdio's in its environment: `scripts/serve.sh` installs what is missing, builds, makes
# build/demo.img, serves it on nbd://localhost (TCP 10809, loopback only) with direct I/O,
# prints where and the export's description, and stops cleanly on Ctrl-C (SIGINT to its
# process group, as a terminal sends it). A second one started while the first serves exits
# non-zero with a one-line reason. It used to give nbdkit -U and -p together, which nbdkit
# refuses ("... cannot be used in this combination"), and exit 0.
source "$(dirname "$0")/lib.sh"
require_root
require git nbdinfo ss mkfs.ext4
: "${LOOPDIO_SOURCE:?run through ctest, or set LOOPDIO_SOURCE to the source tree}"

[ -z "$(ss -ltnH 'sport = :10809')" ] || fail "something already listens on TCP port 10809"
src=$T/loopdio
git clone -q "$LOOPDIO_SOURCE" "$src"  # its committed HEAD
# ctest gives every test LOOPDIO_PLUGIN and others: none of them may reach the command.
clean_env=(env)
for v in $(compgen -e | grep '^LOOPDIO_' || true); do clean_env+=(-u "$v"); done
listeners() { ss -ltnH 'sport = :10809' | awk '{ print $4 }' | sed 's/:[0-9]*$//' | sort; }

# As typed at a terminal: a process group of its own, SIGINT not ignored (job control on).
set -m
(cd "$src" && exec "${clean_env[@]}" scripts/serve.sh) >"$T/serve.out" 2>"$T/serve.err" &
pid=$!
set +m
at_exit "kill -TERM -- -$pid"
for _ in $(seq 1600); do  # building from scratch takes minutes
  grep -q "^serving " "$T/serve.out" && break
  kill -0 $pid 2>/dev/null || { cat "$T/serve.out" "$T/serve.err"; fail "scripts/serve.sh exited"; }
  sleep 0.5
done
grep -q "^serving " "$T/serve.out" || { cat "$T/serve.out" "$T/serve.err"; fail "scripts/serve.sh did not serve"; }
grep -E "^(serve|serving|description): " "$T/serve.out"
grep -qx "serving $src/build/demo.img on nbd://localhost:10809" "$T/serve.out" || fail "where it serves"
grep -q "^description: loopdio: $src/build/demo.img (.*): direct I/O on, alignment [0-9]*.*, engine sync+libaio" \
  "$T/serve.out" || fail "the description printed"
pass "scripts/serve.sh builds a fresh clone, makes the demo image and serves it"

nbdinfo nbd://localhost >"$T/nbdinfo" || fail "nbdinfo nbd://localhost"
grep -q "description: .*direct I/O on" "$T/nbdinfo" || { cat "$T/nbdinfo"; fail "nbdinfo: no direct I/O"; }
grep -q "export-size: 1073741824" "$T/nbdinfo" || fail "nbdinfo: not the 1 GiB demo image"
listeners >"$T/where"
[ -s "$T/where" ] && ! grep -qvE '^(127\.[0-9.]+|\[::1\])$' "$T/where" ||
  { ss -ltn; fail "10809: listeners beyond loopback"; }
pass "nbdinfo nbd://localhost: direct I/O on; TCP 10809 on $(tr '\n' ' ' <"$T/where")only"

rc=0
(cd "$src" && exec "${clean_env[@]}" timeout 600 scripts/serve.sh) >"$T/second.out" 2>"$T/second.err" || rc=$?
cat "$T/second.err"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a second scripts/serve.sh: exit $rc"
[ "$(wc -l <"$T/second.err")" -eq 1 ] || fail "a second scripts/serve.sh: not one line on stderr"
# The image is checked before the port: the first server holds the writer's lock on it.
grep -qx "loopdio: file=$src/build/demo.img: served by another process already (it holds a lock on the file): .*" \
  "$T/second.err" || fail "a second scripts/serve.sh: the reason"
pass "a second scripts/serve.sh: exit $rc, one line"

kill -INT -- -"$pid"
rc=0
wait $pid || rc=$?
[ $rc -eq 0 ] || { cat "$T/serve.err"; fail "scripts/serve.sh after Ctrl-C: exit $rc"; }
[ -z "$(listeners)" ] || fail "10809 still listens after Ctrl-C"
! pgrep -f "$src/build/loopdio.so" >/dev/null || fail "nbdkit outlived Ctrl-C"
[ ! -e "/run/loopdio/serve-$pid.json" ] || fail "its state is left in /run/loopdio"
pass "Ctrl-C: exit 0, nothing left"
