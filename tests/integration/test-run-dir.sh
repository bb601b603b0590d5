#!/usr/bin/env bash
# The run directory, where root acts on files that others could have put there. loopdio used
# to chmod 0755 whatever directory it was given (a 1777 one lost its sticky bit and stayed
# writable to all), to unlink whatever paths a state file named (a planted one got root to
# delete files anywhere), and to open state, temporary and lock files through symbolic links.
# It also checked only the run directory itself: with another user's symbolic link as a parent,
# root created run/, .lock and state files wherever the link pointed.
# Now: a run directory not owned by root, or writable by group or others, is refused with
# one line and left as it is, and so is one with a symbolic link, a directory of another
# user's, or one writable by group or others on its path (root's sticky ones, like /var/tmp
# that holds these tests, excepted); a state file's paths outside the directory are never
# removed; no symbolic link in the directory is followed; private/ must be root's own 0700
# directory.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit stat mkfifo
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
export LOOPDIO_PLUGIN=$PLUGIN
img=$T/disk.img
truncate -s 16M "$img"
mode() { stat -c %a "$1"; }

# --- directories loopdio must refuse, and leave as they are ------------------------------
# (timeout: on a loopdio that accepts them, serve would run until stopped)
refused() {  # refused DIR MESSAGE-PART
  LOOPDIO_RUN_DIR=$1 expect_error 2 "$1: refusing the run directory: $2" \
    timeout 20 "$LOOPDIO" serve --unix "$T/refused.sock" "$img"
  LOOPDIO_RUN_DIR=$1 expect_error 2 "$1: refusing the run directory: $2" timeout 20 "$LOOPDIO" list
}
mkdir -m 1777 "$T/sticky"
refused "$T/sticky" "writable by others (mode 1777)"
[ "$(mode "$T/sticky")" = 1777 ] || fail "the 1777 directory's mode was changed to $(mode "$T/sticky")"
[ -z "$(ls -A "$T/sticky")" ] || fail "files were made in a refused directory"
mkdir -m 0775 "$T/group"
refused "$T/group" "writable by its group (mode 0775)"
[ "$(mode "$T/group")" = 775 ] || fail "the 0775 directory's mode was changed"
mkdir -m 0755 "$T/theirs"
chown 65534 "$T/theirs"
refused "$T/theirs" "owned by uid 65534, not by root"
mkdir -m 0755 "$T/real"
ln -s "$T/real" "$T/link"
LOOPDIO_RUN_DIR=$T/link expect_error 2 "$T/link: refusing it: a symbolic link" timeout 20 "$LOOPDIO" list
pass "run directories writable by others, not root's, or symbolic links: refused, left as they are"

# --- the directories on its path ----------------------------------------------------------
mkdir -m 0755 "$T/target"
ln -s "$T/target" "$T/userlink"
chown -h 65534 "$T/userlink"
refused "$T/userlink/run" "$T/userlink on its path is a symbolic link"
ln -s "$T/target" "$T/rootlink"
refused "$T/rootlink/run" "$T/rootlink on its path is a symbolic link"
mkdir -m 0755 "$T/target/run"  # an existing run directory behind the link: not used either
refused "$T/userlink/run" "$T/userlink on its path is a symbolic link"
[ "$(ls -A "$T/target")" = run ] && [ -z "$(ls -A "$T/target/run")" ] ||
  fail "files were made through a symbolic link on the run directory's path: $(ls -AR "$T/target")"
mkdir -m 0755 "$T/home" "$T/home/run"
chown 65534 "$T/home"
refused "$T/home/run" "$T/home on its path is owned by uid 65534, not by root"
mkdir -m 1777 "$T/sticky-theirs"
chown 65534 "$T/sticky-theirs"
refused "$T/sticky-theirs/run" "$T/sticky-theirs on its path is owned by uid 65534, not by root"
mkdir -m 0775 "$T/shared" "$T/shared/run"
chmod 0755 "$T/shared/run"
refused "$T/shared/run" "$T/shared on its path is writable by its group (mode 0775)"
for d in "$T/home/run" "$T/shared/run"; do
  [ -z "$(ls -A "$d")" ] || fail "files were made in a refused run directory: $d"
done
mkdir -m 1777 "$T/tmp"  # like /tmp: sticky, root's
LOOPDIO_RUN_DIR=$T/tmp/run serve_until_ready "$T/st.out" "$LOOPDIO" serve --unix "$T/st.sock" "$img"
stop_serve
[ "$(stat -c %U "$T/tmp/run")" = root ] || fail "no run directory made under a sticky directory of root's"
pass "a symbolic link, another user's directory or one others can write on the path: refused"

# --- a directory of root's own: used as it is, created 0755 only when missing -------------
mkdir -m 0700 "$T/private700"
LOOPDIO_RUN_DIR=$T/private700 serve_until_ready "$T/s700.out" "$LOOPDIO" serve --unix "$T/s700.sock" "$img"
[ "$(mode "$T/private700")" = 700 ] || fail "an existing 0700 run directory was changed to $(mode "$T/private700")"
stop_serve
(umask 077 && LOOPDIO_RUN_DIR=$T/new serve_until_ready "$T/new.out" "$LOOPDIO" serve --unix "$T/new.sock" "$img" &&
  stop_serve)
[ "$(mode "$T/new")" = 755 ] || fail "a missing run directory was created with mode $(mode "$T/new")"
pass "an existing run directory keeps its mode; a missing one is made 0755"

# --- planted state files naming paths outside the directory ------------------------------
export LOOPDIO_RUN_DIR=$T/run
mkdir -m 0755 "$T/run"
mksock() { $PYTHON -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$1"; }
mksock "$T/victim.ctl"
mksock "$T/victim.sock"
echo precious >"$T/victim.log"
echo precious >"$T/victim.json"
state() {  # state NAME CONTROL LOG SOCKET: a state file of a server that is gone
  printf '{"name":"%s","kind":"socket","device":"","socket":"%s","uri":"nbd+unix:///?socket=%s","control":"%s","log":"%s","pid":999999,"owner":0,"image":"%s"}\n' \
    "$1" "$4" "$4" "$2" "$3" "$img"
}
state evil "$T/victim.ctl" "$T/victim.log" "$T/victim.sock" >"$T/run/evil.json"
state ../victim "$T/run/x.ctl" "" "$T/victim.sock" >"$T/run/climb.json"
state dead "$T/run/dead.ctl" "$T/run/../victim.log" "$T/victim.sock" >"$T/run/dead.json"
state gone "$T/run/gone.ctl" "" "$T/victim.sock" >"$T/run/gone.json"
timeout 20 "$LOOPDIO" list >"$T/list" 2>"$T/list.err" || { cat "$T/list.err"; fail "list failed"; }
cat "$T/list.err"
[ -S "$T/victim.ctl" ] && [ -S "$T/victim.sock" ] || fail "a socket outside the run directory was removed"
[ "$(cat "$T/victim.log")" = precious ] || fail "a log outside the run directory was removed"
[ "$(cat "$T/victim.json")" = precious ] || fail "a state name with ../ removed a file outside"
[ ! -e "$T/run/gone.json" ] || fail "the stale state of a server that is gone was kept"
grep -q "evil.json: its control socket is not $T/run/evil.ctl" "$T/list.err" ||
  fail "a state file naming a control socket outside was not reported"
pass "planted state files: nothing outside the run directory removed"

# --- symbolic links and odd files named like loopdio's own -------------------------------
rm -f "$T/run"/*.json
mkfifo "$T/fifo"
ln -s "$T/fifo" "$T/run/fifo.json"                        # would block a reader forever
head -c 1M /dev/zero | tr '\0' ' ' >"$T/run/huge.json"    # bounded reads
timeout 20 "$LOOPDIO" list --json >"$T/list" 2>"$T/list.err" ||
  { cat "$T/list.err"; fail "list with a symlinked FIFO state file failed (or hung)"; }
grep -q "fifo.json: a symbolic link: not read" "$T/list.err" || { cat "$T/list.err"; fail "symlinked state: no warning"; }
grep -q "huge.json: larger than" "$T/list.err" || { cat "$T/list.err"; fail "huge state file: no warning"; }
rm -f "$T/run"/*.json

rm -f "$T/run/.lock"
ln -s "$T/lock-target" "$T/run/.lock"
expect_error 2 "$T/run/.lock: a symbolic link" timeout 20 "$LOOPDIO" list
[ ! -e "$T/lock-target" ] || fail "the lock file was created through a symbolic link"
rm "$T/run/.lock"

# The temporary state file of `serve` (pid known in advance: the shell execs loopdio).
echo precious >"$T/victim.tmp"
serve_until_ready "$T/tmp.out" bash -c 'ln -s "$1" "$2/serve-$$.json.tmp"; exec "$3" serve --unix "$4" "$5"' \
  _ "$T/victim.tmp" "$T/run" "$LOOPDIO" "$T/tmp.sock" "$img"
[ "$(cat "$T/victim.tmp")" = precious ] || fail "the state was written through a planted symbolic link"
"$LOOPDIO" list | grep -q "^$T/tmp.sock " || fail "serve's export is not listed"
stop_serve
pass "symbolic links named like state, lock and temporary files: not followed"

# --- attach's private/ -------------------------------------------------------------------
mkdir -p "$T/sys/module/nbd" "$T/sys/block/nbd0" "$T/dev"
echo 0 >"$T/sys/block/nbd0/size"
: >"$T/dev/nbd0"
export LOOPDIO_SYSFS=$T/sys LOOPDIO_DEV_DIR=$T/dev LOOPDIO_NBD_CLIENT=/bin/false
mkdir -m 0755 "$T/run/private"
expect_error 2 "$T/run/private: refusing it: expected a directory of uid 0 with mode 0700, found uid 0 mode 0755" \
  timeout 60 "$LOOPDIO" attach "$img"
[ "$(mode "$T/run/private")" = 755 ] || fail "attach changed private/'s mode"
rmdir "$T/run/private"
ln -s "$T/real" "$T/run/private"
expect_error 2 "$T/run/private: refusing it: a symbolic link" timeout 60 "$LOOPDIO" attach "$img"
rm "$T/run/private"
pass "attach: a private/ that is not root's 0700 directory is refused, never chmod-ed"
