#!/usr/bin/env bash
# An export is a file, not a name. Two names of one file (hard links) share one export and
# its range locks: connections alternating between the names, writing their own bytes of
# the same 512-byte blocks at once with direct I/O, lose no update (each name with its own
# export and locks lost some in most runs). A writable image is served by one process: a
# second server refuses to start, with the reason (a directory server refuses it to its
# clients); a read-only one may. A name whose file is replaced while a client holds it: a
# symbolic link put in its place is refused, a new file put in its place is what new
# clients get, while the old client keeps its old file.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

ext4=$(make_fs ext4 256M)
d=$ext4/images
mkdir "$d"

# --- Hard links: one export, one set of range locks -----------------------------------
truncate -s 1M "$d/a.img"
ln "$d/a.img" "$d/b.img"
start_server --threads 8 -- dir="$d" directio=1 control="$T/links.ctl"
timeout 120 $PYTHON - "$SOCK" "$T/links.ctl" <<'PY' || fail "hard links"
import sys, nbdtest, exportdir
sock, ctl = sys.argv[1:]
failed = []
# Six connections, alternating between the names, each writing its own byte of every one
# of 16 blocks, 16 rounds at once; 40 runs. With an export per name, the read-modify-write
# of one name's connection overwrote the other name's bytes in most runs.
uris = [exportdir.uri(sock, "a.img"), exportdir.uri(sock, "b.img")]
runs, lost = 40, []
for run in range(runs):
    try:
        nbdtest.lost_update(uris, 1 << 20, 512, 6, 16)
    except AssertionError as e:
        lost.append(f"run {run}: {e}")
if lost:
    failed.append(f"{len(lost)} of {runs} runs lost an update; first {lost[0]}")
else:
    print(f"  {runs} runs of 6 connections x 16 rounds x 16 blocks through two names: nothing lost")
# One export, whichever name opened it: a client through b.img only, and both names show
# it open; `set direct-io off a.img` switches it (it used to look for an export opened as
# a.img, find none, reply ok, and leave the shared one on). Then a client through a.img
# joins the same export: one export with 2 connections under either name.
b = exportdir.connect(sock, "b.img")
exportdir.wait_for("the connections of the runs to close", lambda: sorted(
    (e["name"], e["connections"]) for e in exportdir.open_exports(ctl)) == [("a.img", 1), ("b.img", 1)])
exportdir.control(ctl, "set direct-io off a.img")
dio = {e["name"]: e["dio"] for e in exportdir.open_exports(ctl)}
if dio != {"a.img": False, "b.img": False}:
    failed.append(f"set direct-io off a.img, open through b.img: dio {dio}")
exportdir.control(ctl, "set direct-io on a.img")
a = exportdir.connect(sock, "a.img")
opened = exportdir.open_exports(ctl)
if sorted((e["name"], e["connections"], e["dio"]) for e in opened) != [
        ("a.img", 2, True), ("b.img", 2, True)]:
    failed.append(f"two names of one file: " + "; ".join(
        f"{e['name']}: {e['connections']} connections, dio {e['dio']}" for e in opened))
else:
    print("  a.img and b.img: one open export, 2 connections, switched through either name")
a.shutdown(); b.shutdown()
assert not failed, "\n".join(failed)
PY
stop_server
pass "hard links share one export: no update lost between the names"

# --- Two servers on one writable image -----------------------------------------------
img=$ext4/one.img
truncate -s 4M "$img"
start_server -- file="$img" directio=1
first_sock=$SOCK
# The second writer must refuse to start: it either exits (the test waits for that) or
# creates its socket (and the test fails).
second_sock=$T/second.sock
env ${LOOPDIO_PRELOAD:+LD_PRELOAD="$LOOPDIO_PRELOAD"} \
  nbdkit -f -U "$second_sock" "$PLUGIN" file="$img" directio=1 2>"$T/second.log" &
second=$!
at_exit "kill $second"
wait_until 60 eval '! kill -0 $second 2>/dev/null || [ -S "$second_sock" ]' ||
  fail "the second server neither started nor exited in 60 s"
[ ! -S "$second_sock" ] || fail "a second writable server of $img started"
rc=0
wait $second || rc=$?
[ $rc -ne 0 ] || fail "the second server exited 0"
n=$(grep -c "served by another process already" "$T/second.log" || true)
[ "$n" = 1 ] || { cat "$T/second.log" >&2; fail "the reason is on $n lines, not one"; }
grep -qF "$img: served by another process already" "$T/second.log" ||
  { cat "$T/second.log" >&2; fail "the reason does not name the image"; }
echo "  $(grep "served by another process already" "$T/second.log")"
# A read-only server of the same image starts, and reads what the first one's client wrote
# and flushed.
start_server -r -- file="$img" readonly=1
$PYTHON - "$first_sock" "$SOCK" <<'PY' || fail "the read-only second server"
import random, sys, nbd
first, second = sys.argv[1:]
data = random.Random(1).randbytes(65536)
w = nbd.NBD(); w.connect_unix(first)
w.pwrite(data, 1 << 20); w.flush()
r = nbd.NBD(); r.connect_unix(second)
assert r.is_read_only(), "the second server is writable"
assert r.pread(65536, 1 << 20) == data, "the read-only server does not read what was written"
r.shutdown(); w.shutdown()
PY
# A directory server whose directory holds the image: its export is refused to clients,
# with the same reason.
start_server -- dir="$ext4"
$PYTHON - "$SOCK" <<'PY' || fail "a directory server of the image"
import sys, nbdtest
said = nbdtest.refusal(sys.argv[1], "one.img")
assert "served by another process already" in said, said
print(f"  dir=: one.img refused: {said}")
PY
pass "two writable servers of one image: the second refused with its reason; a read-only one reads"

# --- A name whose file is replaced while a client holds it ---------------------------
start_server -- dir="$d" control="$T/victim.ctl"
timeout 120 $PYTHON - "$SOCK" "$T/victim.ctl" "$d" <<'PY' || fail "a replaced file"
import os, random, sys, nbdtest, exportdir
sock, ctl, d = sys.argv[1:]
victim = os.path.join(d, "victim.img")
rng = random.Random(2)

def make(path, data):
    with open(path, "wb") as f:
        f.write(data)

def on_disk(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)

def replaced_by_link():
    """A symbolic link (to another image of the directory) put in place of the file: a new
    client is refused, with the reason; the client that holds the old file reads it still."""
    old = rng.randbytes(1 << 20)
    make(victim, old)
    make(os.path.join(d, "other.img"), rng.randbytes(1 << 20))
    a = exportdir.connect(sock, "victim.img")
    try:
        pa = rng.randbytes(4096)
        a.pwrite(pa, 0); a.flush()
        os.symlink("other.img", os.path.join(d, ".victim.tmp"))
        os.replace(os.path.join(d, ".victim.tmp"), victim)
        said = nbdtest.refusal(sock, "victim.img")
        assert "symbolic link" in said, said
        assert a.pread(4096, 0) == pa and a.pread(65536, 65536) == old[65536:131072], \
            "A no longer reads its file"
        print(f"  replaced by a symbolic link: a new client refused: {said}")
    finally:
        a.shutdown()
        exportdir.wait_idle(ctl)
        os.unlink(victim)


def deleted_and_created():
    """The file deleted and created again: a new client gets the new file, the old client
    keeps its old one; neither sees the other's writes; status shows the old one as stale."""
    old = rng.randbytes(1 << 20)
    make(victim, old)
    a = exportdir.connect(sock, "victim.img")
    pa = rng.randbytes(4096)
    a.pwrite(pa, 0); a.flush()
    os.unlink(victim)
    new = rng.randbytes(2 << 20)  # another size too
    make(victim, new)
    b = exportdir.connect(sock, "victim.img")
    got = b.pread(65536, 0)
    assert got[:4096] != pa and got != old[:65536], "B reads the old file, A's write included"
    assert got == new[:65536], "B does not read the new file"
    assert b.get_size() == len(new), f"B sees {b.get_size()} bytes, the new file has {len(new)}"
    pb = rng.randbytes(4096)
    b.pwrite(pb, 8192); b.flush()
    assert on_disk(victim, 8192, 4096) == pb, "B's write is not in the new file"
    assert a.get_size() == len(old) and a.pread(4096, 0) == pa, "A no longer reads its own file"
    assert a.pread(4096, 8192) == old[8192:12288], "B's write reached A's old file"
    pa2 = rng.randbytes(4096)
    a.pwrite(pa2, 16384); a.flush()
    assert on_disk(victim, 0, 4096) == new[:4096], "A's write reached the new file"
    assert on_disk(victim, 16384, 4096) == new[16384:20480], "A's later write reached the new file"
    assert b.pread(4096, 16384) == new[16384:20480], "B reads A's write"
    opened = exportdir.open_exports(ctl, "victim.img")
    stale = [e for e in opened if e.get("stale")]
    live = [e for e in opened if not e.get("stale")]
    assert len(stale) == 1 and len(live) == 1, f"status of victim.img: {opened}"
    assert stale[0]["size"] == len(old) and live[0]["size"] == len(new), opened
    assert stale[0]["connections"] == 1 and live[0]["connections"] == 1, opened
    a.shutdown(); b.shutdown()
    print("  deleted and created again: B reads and writes the new file, A its old one;"
          " status: the old export stale, the new one live")


failed = []
for phase in (replaced_by_link, deleted_and_created):
    try:
        phase()
    except AssertionError as e:
        failed.append(f"{phase.__name__}: {e}")
assert not failed, "\n".join(failed)
PY
stop_server
pass "a replaced file: a symbolic link refused; a new file served to new clients, the old kept"
