#!/usr/bin/env bash
# A directory of exports seen as a whole: listings, the control socket's flush, and a
# direct-I/O switch. Listings that run at once each get every name exactly once (they once
# shared one directory offset, and one of two concurrent listings came back short or
# empty), and a listing opens no image (it once opened every one to describe it). `flush`
# syncs every open export, whatever its name leads to now (it once walked the names on
# disk and skipped a renamed or deleted file that clients still wrote). `set direct-io off`
# racing with an export's first connection leaves direct I/O off (the switch once looked
# for an open export, found none, and stored the setting after the connection had opened
# it with the old one).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit strace

ext4=$(make_fs ext4 256M)
d=$ext4/images
mkdir "$d"
for i in $(seq -w 1 40); do truncate -s 1M "$d/img$i.img"; done

# --- Concurrent listings; a listing opens nothing ------------------------------------
start_server -- dir="$d" control="$T/list.ctl"
timeout 120 $PYTHON - "$SOCK" "$d" "$SERVER_PID" "$T/list.strace" <<'PY' || fail "listings"
import os, re, sys, exportdir
sock, d, pid, out = sys.argv[1:]
want = sorted(os.listdir(d))
assert len(want) == 40, want
failed = []
# Two threads, 2000 listings each, all at once, each on a connection of its own.
bad, first = exportdir.check_listings(sock, want, 2, 2000)
if bad:
    failed.append(f"{bad} of 4000 concurrent listings were not the 40 names; the first held "
                  f"{len(first)} names, {len(set(first))} of them different")
else:
    print("  4000 listings by 2 threads at once: each exactly the 40 names")
# A few listings under strace: the directory is read (getdents64, which shows the listing
# threads are traced), no image is opened.
with exportdir.Strace(int(pid), "openat,getdents64", out) as trace:
    bad, first = exportdir.check_listings(sock, want, 1, 5)
    assert not bad, first
read = [l for l in trace.lines if "getdents64(" in l]
opened = [l for l in trace.lines if re.search(r'openat\(.*"[^"]*\.img"', l)]
assert read, f"strace saw no listing read the directory: {trace.lines[:20]}"
if opened:
    failed.append(f"5 listings opened an image {len(opened)} times, first: {opened[0]}")
else:
    print(f"  5 listings read the directory ({len(read)} getdents64) and opened no image")
assert not failed, "\n".join(failed)
PY
stop_server
pass "concurrent listings each complete; a listing opens no image"

# --- flush syncs every open export, renamed and deleted ones too ---------------------
start_server -- dir="$d" control="$T/flush.ctl"
timeout 120 $PYTHON - "$SOCK" "$d" "$SERVER_PID" "$T/flush.ctl" "$T/flush.strace" <<'PY' || fail "flush"
import os, re, sys, exportdir
sock, d, pid, ctl, out = sys.argv[1:]
pid = int(pid)
img = lambda name: os.path.join(d, name)
clients = {name: exportdir.connect(sock, name) for name in ("img01.img", "img02.img", "img03.img")}
for h in clients.values():
    h.pwrite(b"x" * 4096, 0)  # dirty, not flushed
# img01.img is renamed (its new name is listed, and served to nobody), img02.img deleted;
# img03.img stays as it was.
os.rename(img("img01.img"), img("renamed.img"))
os.unlink(img("img02.img"))
fds = {"renamed": exportdir.fds_of(pid, img("renamed.img")),
       "deleted": exportdir.fds_of(pid, img("img02.img") + " (deleted)"),
       "unchanged": exportdir.fds_of(pid, img("img03.img"))}
assert all(len(v) == 1 for v in fds.values()), f"the server's fds of the three files: {fds}"
with exportdir.Strace(pid, "fdatasync", out) as trace:
    reply = exportdir.control(ctl, "flush")
synced = {int(m.group(1)) for m in (re.search(r"fdatasync\((\d+)\)\s*= 0", l)
                                    for l in trace.lines) if m}
missed = [what for what, (fd,) in fds.items() if fd not in synced]
assert not missed, (f"flush replied {reply} and synced fds {sorted(synced)}; "
                    f"not the {' and '.join(missed)} file's ({fds})")
print(f"  flush: {reply}; fdatasync of the renamed, deleted and unchanged files' fds {fds}")
for h in clients.values():
    h.shutdown()
PY
stop_server
mv "$d/renamed.img" "$d/img01.img"
truncate -s 1M "$d/img02.img"
pass "flush syncs every open export: renamed, deleted, unchanged"

# --- set direct-io off racing with the first connection ------------------------------
start_server -- dir="$d" directio=1 control="$T/dio.ctl"
timeout 120 $PYTHON - "$SOCK" "$T/dio.ctl" <<'PY' || fail "set direct-io racing with an opening"
import sys, threading, nbd, exportdir, nbdtest
sock, ctl = sys.argv[1:]
name, rounds, wrong = "img05.img", 50, []
for r in range(rounds):
    exportdir.wait_closed(ctl, name)
    exportdir.control(ctl, f"set direct-io on {name}")
    barrier = threading.Barrier(2)

    def switch():
        barrier.wait()
        reply = exportdir.control(ctl, f"set direct-io off {name}")
        assert reply["dio"] is False, reply

    # The client has negotiated up to its last option (the export's opening) before both
    # go: the switch and the opening reach the server at about the same moment.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_export_name(name)
    h.connect_unix(sock)

    def first_connection():
        barrier.wait()
        h.opt_go()

    nbdtest.run_threads(lambda k: (switch, first_connection)[k](), 2)
    opened = exportdir.open_exports(ctl, name)
    assert len(opened) == 1, opened
    if opened[0]["dio"] is not False:
        wrong.append(f"round {r}: {opened[0]['dio']} ({opened[0]['dio_reason']})")
    h.shutdown()
assert not wrong, f"{len(wrong)} of {rounds} rounds left direct I/O on: {wrong[:3]}"
print(f"  {rounds} rounds of set direct-io off racing with the first connection: off every time")
PY
# The same race, its interleaving forced: the switch is held at its openat of the image
# (strace delays it 4 s on the server's threads that exist before the connection, so not on
# the connection's), and only then does the first connection open the export. The switch
# once stored its setting after such an opening, which had opened with the old one.
timeout 120 $PYTHON - "$SOCK" "$T/dio.ctl" "$SERVER_PID" "$T/dio.strace" <<'PY' || fail "set direct-io held while the first connection opens"
import sys, threading, nbd, exportdir
sock, ctl, pid, out = sys.argv[1:]
name, rounds, wrong = "img05.img", 2, []
for r in range(rounds):
    exportdir.wait_closed(ctl, name)
    exportdir.control(ctl, f"set direct-io on {name}")
    replies = []
    switch = threading.Thread(target=lambda: replies.append(
        exportdir.control(ctl, f"set direct-io off {name}")))
    with exportdir.HeldOpenat(int(pid), 4.0, out) as held:
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.set_export_name(name)
        h.connect_unix(sock)  # its thread starts now: not traced
        switch.start()
        held.wait(name)
        h.opt_go()
        exercised = switch.is_alive()
        switch.join()
    assert exercised, "the connection took longer than the switch was held: nothing shown"
    assert replies and replies[0]["dio"] is False, replies
    opened = exportdir.open_exports(ctl, name)
    assert len(opened) == 1, opened
    if opened[0]["dio"] is not False:
        wrong.append(f"round {r}: {opened[0]['dio']}")
    h.shutdown()
assert not wrong, f"{len(wrong)} of {rounds} rounds left direct I/O on: {wrong}"
print(f"  {rounds} rounds, the switch held while the first connection opened: off every time")
PY
stop_server
pass "set direct-io off racing with the first connection: off every time"
