"""Live snapshots under writes: four connections write, each in a region of its own, while
snapshots are taken one after another; then every snapshot is checked against the writes'
log.

Each connection sends one write at a time and logs it (sequence number, offset, length,
when it was sent, when its reply came); the data is a 16-byte pattern naming the connection
and the sequence number. A snapshot is taken while no request is in flight, so a region of it
must equal the region's first k writes applied in order, for some k: at least every write
acknowledged before the command was sent, and no write sent after its reply came.

  snapshot.py --uri URI --image PATH --size N --snapdir DIR --control SOCKET [--count 10]
              [--cli LOOPDIO TARGET]   (one more snapshot through `loopdio snapshot`)
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time

import nbd

import control_client

CONNECTIONS = 4
MIN_WRITES_BETWEEN = 40  # each connection's writes completed between two snapshots


class Writer(threading.Thread):
    def __init__(self, k, uri, base, size, stop):
        super().__init__(daemon=True)
        self.k, self.uri, self.base, self.size, self.stop = k, uri, base, size, stop
        self.log = []  # (seq, offset in region, length, sent, acked)
        self.done = 0
        self.cv = threading.Condition()
        self.error = None

    def data(self, seq, n):
        pat = struct.pack("<4sIQ", b"SNAP", self.k, seq)
        return (pat * (n // 16 + 1))[:n]

    def run(self):
        try:
            rng = random.Random(1000 + self.k)
            h = nbd.NBD()
            h.set_strict_mode(0)  # unaligned writes go out as they are
            h.connect_uri(self.uri)
            seq = 0
            while not self.stop.is_set():
                seq += 1
                if rng.random() < 0.5:  # aligned: whole 4 KiB blocks
                    n = 4096 * rng.randint(1, 16)
                    off = 4096 * rng.randrange((self.size - n) // 4096 + 1)
                else:  # anywhere, any length: read-modify-write in the server
                    n = rng.randint(1, 20000)
                    off = rng.randrange(self.size - n + 1)
                buf = self.data(seq, n)
                sent = time.monotonic()
                h.pwrite(buf, self.base + off)
                acked = time.monotonic()
                with self.cv:
                    self.log.append((seq, off, n, sent, acked))
                    self.done += 1
                    self.cv.notify_all()
            h.flush()
            h.shutdown()
        except Exception as e:  # reported by the main thread
            self.error = e
            with self.cv:
                self.cv.notify_all()

    def wait_for(self, count):
        with self.cv:
            while self.done < count and self.error is None:
                if not self.cv.wait(timeout=60):
                    raise SystemExit(f"writer {self.k}: no progress in 60 s")
        if self.error:
            raise SystemExit(f"writer {self.k}: {self.error}")


def snapshot_control(control, dest):
    cmd = "snapshot " + json.dumps({"exports": [{"dest": dest}]})
    sent = time.monotonic()
    lines = control_client.ask(control, cmd, timeout=120)
    replied = time.monotonic()
    if not lines:
        raise SystemExit(f"snapshot {dest}: no reply")
    r = json.loads(lines[0])
    if not r.get("ok"):
        raise SystemExit(f"snapshot {dest}: {r}")
    (e,) = r["exports"]
    assert e["dest"] == dest, e
    return sent, replied, e["paused_ms"], e["bytes"]


def snapshot_cli(loopdio, target, dest):
    sent = time.monotonic()
    p = subprocess.run([loopdio, "snapshot", target, dest], capture_output=True, text=True)
    replied = time.monotonic()
    if p.returncode != 0:
        raise SystemExit(f"loopdio snapshot: exit {p.returncode}: {p.stderr.strip()}")
    # "/dest: 64.0 MiB, <export> paused 1.2 ms"
    line = p.stdout.strip()
    print(f"  loopdio snapshot printed: {line}")
    if "\n" in line or not line.startswith(dest + ": ") or not line.endswith(" ms"):
        raise SystemExit(f"loopdio snapshot: unexpected output {line!r}")
    return sent, replied, float(line.split(" paused ")[1][:-3]), os.path.getsize(dest)


def check(writers, snaps, region, image_size):
    """Every snapshot's regions against the writers' logs."""
    for w in writers:
        state = bytearray(region)  # the image starts as zeros
        applied = 0

        def apply(st, entry):
            seq, off, n, _, _ = entry
            st[off:off + n] = w.data(seq, n)

        for i, (dest, sent, replied, _, _) in enumerate(snaps):
            # Writes acknowledged before the command was sent: all of them in the snapshot.
            before = sum(1 for e in w.log if e[4] < sent)
            # Writes sent before the reply came: any first k of them may be.
            upto = sum(1 for e in w.log if e[3] <= replied)
            while applied < before:
                apply(state, w.log[applied])
                applied += 1
            with open(dest, "rb") as f:
                got = os.pread(f.fileno(), region, w.base)
                if os.fstat(f.fileno()).st_size != image_size:
                    raise SystemExit(f"{dest}: size {os.fstat(f.fileno()).st_size}")
            cand, k = bytearray(state), before
            while bytes(cand) != got:
                if k == upto:
                    bad = next(j for j in range(region) if cand[j] != got[j])
                    raise SystemExit(
                        f"snapshot {i + 1} ({dest}), connection {w.k}: no prefix of its writes "
                        f"{before}..{upto} matches; first difference at region offset {bad}: "
                        f"found {bytes(got[bad:bad + 16])!r}, expected {bytes(cand[bad:bad + 16])!r}")
                apply(cand, w.log[k])
                k += 1
            yield i, w.k, before, k, upto


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--snapdir", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--cli", nargs=2, metavar=("LOOPDIO", "TARGET"))
    a = ap.parse_args()

    region = a.size // CONNECTIONS
    stop = threading.Event()
    writers = [Writer(k, a.uri, k * region, region, stop) for k in range(CONNECTIONS)]
    for w in writers:
        w.start()
    takers = [lambda d: snapshot_control(a.control, d)] * a.count
    if a.cli:
        takers.append(lambda d: snapshot_cli(a.cli[0], a.cli[1], d))
    snaps = []
    try:
        for i, take in enumerate(takers):
            # Every connection is writing, with writes before and after the last snapshot.
            marks = [w.done + MIN_WRITES_BETWEEN for w in writers]
            for w, m in zip(writers, marks):
                w.wait_for(m)
            dest = os.path.join(a.snapdir, f"snap{i + 1}.img")
            sent, replied, paused, nbytes = take(dest)
            if nbytes != a.size:
                raise SystemExit(f"{dest}: {nbytes} bytes, the image has {a.size}")
            snaps.append((dest, sent, replied, paused, nbytes))
        for w in writers:
            w.wait_for(w.done + MIN_WRITES_BETWEEN)  # writes after the last one, too
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=60)
    for w in writers:
        if w.error:
            raise SystemExit(f"writer {w.k}: {w.error}")

    # The longest any write waited while a snapshot was under way.
    for i, (dest, sent, replied, paused, _) in enumerate(snaps):
        during = [e[4] - e[3] for w in writers for e in w.log if e[3] < replied and e[4] > sent]
        print(f"snapshot {i + 1}: export paused {paused:.2f} ms; command {1000 * (replied - sent):.1f} ms;"
              f" {len(during)} writes overlapped it, the longest waited {1000 * max(during, default=0):.1f} ms")
    worst = max((e[4] - e[3] for w in writers for e in w.log), default=0)
    print(f"writes: {sum(len(w.log) for w in writers)}, longest of all {1000 * worst:.1f} ms;"
          f" pauses: max {max(s[3] for s in snaps):.2f} ms")

    for i, conn, before, got, upto in check(writers, snaps, region, a.size):
        if conn == 0:
            print(f"snapshot {i + 1}: connection writes acknowledged before {before}, in it "
                  f"{got}, sent before the reply {upto}")

    # The model itself: the image now is every write applied.
    with open(a.image, "rb") as f:
        for w in writers:
            state = bytearray(region)
            for seq, off, n, _, _ in w.log:
                state[off:off + n] = w.data(seq, n)
            if os.pread(f.fileno(), region, w.base) != bytes(state):
                raise SystemExit(f"the image's region {w.k} is not its writes: the test's model is wrong")
    print(f"{len(snaps)} snapshots: each holds every write acknowledged before its command, "
          f"none sent after its reply")


if __name__ == "__main__":
    main()
