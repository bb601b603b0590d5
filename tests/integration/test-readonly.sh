#!/usr/bin/env bash
# A backing that cannot be opened for writing is served read-only with a message, and
# nbdkit -r works: clients see a read-only export and writes, trims and zeroes fail with
# EPERM/EROFS.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo

mnt=$(make_fs ext4 64M)
random_file "$mnt/ro.img" $((1 << 20))
mount -o remount,ro "$mnt"

nbdkit -U - "$PLUGIN" file="$mnt/ro.img" --run 'nbdinfo --json "$uri"' >"$T/out" 2>"$T/err" ||
  { cat "$T/err"; fail "a read-only backing must be served"; }
grep -q "serving $mnt/ro.img read-only: cannot open for writing: Read-only file system" "$T/err" ||
  { cat "$T/err"; fail "no read-only notice"; }
grep -q '"is_read_only": true' "$T/out" || fail "export not read-only"

start_server -- file="$mnt/ro.img"
$PYTHON - "$URI" "$mnt/ro.img" <<'PY' || fail "read-only export"
import sys, nbd, nbdtest
uri, path = sys.argv[1:]
h = nbdtest.connect(uri)
assert h.is_read_only()
assert h.pread(65536, 4096) == open(path, "rb").read()[4096:4096 + 65536]
h.set_strict_mode(0)  # let the refused requests reach the server
for name, request in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                      ("trim", lambda: h.trim(65536, 0)),
                      ("zero", lambda: h.zero(65536, 0))):
    try:
        request()
        raise AssertionError(name + " accepted")
    except nbd.Error as e:
        assert e.errno in ("EPERM", "EROFS"), (name, e)
assert h.pread(512, 0) == open(path, "rb").read(512)
PY
stop_server

mount -o remount,rw "$mnt"
nbdkit -r -U - "$PLUGIN" file="$mnt/ro.img" --run 'nbdinfo --json "$uri"' >"$T/out" || fail "nbdkit -r"
grep -q '"is_read_only": true' "$T/out" || fail "nbdkit -r: export not read-only"
pass "read-only backing and nbdkit -r"
