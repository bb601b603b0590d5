#!/usr/bin/env bash
# Paths are bytes: an image and a socket whose names hold a newline, a tab and the byte 0xff
# (not UTF-8). `list --json` must stay valid JSON, with the exact bytes in "<key>-hex"; the
# table must keep one line per export, with such bytes written as \xHH like `losetup -l`;
# the state file must give the exact path back (set finds the export by it).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit
LOOPDIO=${LOOPDIO_BUILD:?run through ctest, or set LOOPDIO_BUILD to the build directory}/loopdio
export LOOPDIO_RUN_DIR=$T/run LOOPDIO_PLUGIN=$PLUGIN

mnt=$(make_fs ext4 128M)
odd=$'a\nb\tc\xff'
img="$mnt/$odd.img"
truncate -s 16M "$img"
truncate -s 16M "$mnt/plain.img"
sock_a=$T/a.sock          # the odd image on a plain socket
sock_b="$T/$odd.sock"     # a plain image on an odd socket

serve_until_ready "$T/a.out" "$LOOPDIO" serve --unix "$sock_a" "$img"
serve_until_ready "$T/b.out" "$LOOPDIO" serve --unix "$sock_b" "$mnt/plain.img"

"$LOOPDIO" list --json >"$T/list.json" || { cat -A "$T/list.json"; fail "list --json: exit $?"; }
$PYTHON - "$T/list.json" "$img" "$sock_a" "$sock_b" "$mnt/plain.img" <<'PY' || { cat -A "$T/list.json"; fail "list --json"; }
import json, os, sys
path, img, sock_a, sock_b, plain = (os.fsencode(a) for a in sys.argv[1:])
with open(path, encoding="utf-8", errors="strict") as f:
    rows = json.load(f)                          # strict: valid UTF-8, valid JSON
def exact(r, key):
    return bytes.fromhex(r[key + "-hex"]) if key + "-hex" in r else os.fsencode(r[key])
by_name = {exact(r, "name"): r for r in rows}
assert set(by_name) == {sock_a, sock_b}, by_name.keys()
a, b = by_name[sock_a], by_name[sock_b]
assert exact(a, "back-file") == img, a
assert a["back-file"].endswith("a\nb\tc\ufffd.img"), a["back-file"]   # readable, lossy
assert "back-file-hex" not in b and b["back-file"] == plain.decode(), b
assert "name-hex" in b and b["name"].endswith("a\nb\tc\ufffd.sock"), b
assert a["dio"] is True and b["dio"] is True, rows   # both answered
PY
pass "list --json: valid JSON, exact bytes under <key>-hex"

"$LOOPDIO" list >"$T/list.txt" || fail "list: exit $?"
cat "$T/list.txt"
[ "$(wc -l <"$T/list.txt")" -eq 3 ] || { cat -A "$T/list.txt"; fail "list: not one line per export"; }
$PYTHON - "$T/list.txt" <<'PY' || { cat -A "$T/list.txt"; fail "list: raw control characters or bytes"; }
import sys
data = open(sys.argv[1], "rb").read()
text = data.decode("utf-8")                      # valid UTF-8 throughout
bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0]
assert not bad, bad
PY
# row NAME BACK-FILE: the table has that row (columns are padded with spaces).
row() {  # (awk -v would undo the backslashes: the values go through the environment)
  N=$1 F=$2 awk '$1 == ENVIRON["N"] && $2 == ENVIRON["F"] { found = 1 } END { exit !found }' "$T/list.txt"
}
row "$sock_a" "$mnt/a\\x0ab\\x09c\\xff.img" || fail "list: the odd image is not shown as \\xHH"
row "$T/a\\x0ab\\x09c\\xff.sock" "$mnt/plain.img" || fail "list: the odd socket is not shown as \\xHH"
pass "list: one line per export, control characters and invalid bytes as \\xHH"

# The state files keep the exact bytes: the export is found by its odd socket path.
"$LOOPDIO" set --direct-io=off "$sock_b" || fail "set by an odd socket path"
"$LOOPDIO" list --json | $PYTHON -c '
import json, sys
rows = json.load(sys.stdin)
assert sorted(r["dio"] for r in rows) == [False, True], rows' || fail "set did not reach the export"
"$LOOPDIO" info --json "nbd+unix:///?socket=$sock_a" | $PYTHON -c '
import json, os, sys
j = json.load(sys.stdin)
# The server escapes the path in the description it sends: text, one line, no raw bytes.
assert "a\\x0ab\\x09c\\xff.img" in j["description"] and "description-hex" not in j, j' \
  || fail "info --json"
pass "state files round-trip odd paths; info --json stays valid"

grep -qxF "serving $mnt/a\\x0ab\\x09c\\xff.img on nbd+unix:///?socket=$sock_a" "$T/a.out" ||
  { cat -A "$T/a.out"; fail "serve: the odd path is not escaped on its one line"; }
pass "serve: the odd path on one line, as \\xHH"
