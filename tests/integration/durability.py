"""What a server crash may lose: several connections write sequence-numbered records, each to
slots of its own region, with FUA or followed by flushes, until the server is killed; the log
says which records were durable. After a restart every slot must hold its last durable record
or a later one (one that was acknowledged, or in flight at the kill)."""
import json
import os
import random
import signal
import struct
import sys
import threading
import time

import nbd

REC = 3001     # bytes per record: slots straddle blocks, so every write is a read-modify-write
SLOTS = 64     # slots per connection
DEPTH = 8      # writes in flight per connection
MAGIC = b"LDR1"
HEAD = struct.Struct("<4sIIQ")  # magic, connection, slot, sequence number


def record(conn, slot, seq):
    body = random.Random((conn << 48) | (slot << 32) | seq).randbytes(REC - HEAD.size)
    return HEAD.pack(MAGIC, conn, slot, seq) + body


def slot_offset(conn, slot):
    return (conn * SLOTS + slot) * REC


class Writer:
    """One connection: random slots of its own, at most one write in flight per slot."""

    def __init__(self, uri, conn, seed):
        self.conn, self.rng = conn, random.Random(seed * 1000 + conn)
        self.h = nbd.NBD()
        self.h.set_strict_mode(0)
        self.h.connect_uri(uri)
        self.hist = {s: [] for s in range(SLOTS)}  # slot -> [[seq, state], ...] in order
        self.inflight = {}                         # cookie -> (kind, payload)
        self.unflushed = []                        # acknowledged, not yet covered by a flush
        self.seq, self.stats = 0, {"acked": 0, "fua": 0, "flushes": 0}
        self.error = None

    def issue(self):
        busy = {p[0] for k, p in self.inflight.values() if k == "w"}
        if self.rng.random() < 0.03 and not any(k == "f" for k, _ in self.inflight.values()):
            cookie = self.h.aio_flush()
            self.inflight[cookie] = ("f", list(self.unflushed))
            self.unflushed.clear()
            return
        slot = self.rng.choice([s for s in range(SLOTS) if s not in busy])
        self.seq += 1
        fua = self.rng.random() < 0.2
        entry = [self.seq, "inflight"]
        self.hist[slot].append(entry)
        buf = nbd.Buffer.from_bytearray(record(self.conn, slot, self.seq))
        cookie = self.h.aio_pwrite(buf, slot_offset(self.conn, slot),
                                   flags=nbd.CMD_FLAG_FUA if fua else 0)
        self.inflight[cookie] = ("w", (slot, entry, fua, buf))

    def retire(self):
        while True:
            cookie = self.h.aio_peek_command_completed()
            if cookie <= 0:
                return
            kind, payload = self.inflight.pop(cookie)
            self.h.aio_command_completed(cookie)  # raises if the command failed
            if kind == "f":
                for entry in payload:
                    entry[1] = "durable"
                self.stats["flushes"] += 1
                continue
            _, entry, fua, _ = payload
            self.stats["acked"] += 1
            if fua:
                entry[1] = "durable"
                self.stats["fua"] += 1
            else:
                entry[1] = "acked"
                self.unflushed.append(entry)

    def run(self):
        try:
            while True:
                while len(self.inflight) < DEPTH:
                    self.issue()
                self.h.poll(1000)
                self.retire()
        except nbd.Error as e:  # the server is gone: what was in flight stays "inflight"
            self.error = e


def load(uri, conns, seed, pid, kill_after, log_path):
    writers = [Writer(uri, c, seed) for c in range(conns)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for t in threads:
        t.start()
    time.sleep(kill_after)
    inflight = sum(len(w.inflight) for w in writers)
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
        if t.is_alive():
            raise SystemExit("a writer did not notice that the server died")
    log = {"conns": conns, "hist": [{str(s): v for s, v in w.hist.items()} for w in writers]}
    with open(log_path, "w") as f:
        json.dump(log, f)
    tot = {k: sum(w.stats[k] for w in writers) for k in writers[0].stats}
    durable = sum(e[1] == "durable" for w in writers for v in w.hist.values() for e in v)
    print(f"{conns} connections: {tot['acked']} writes acknowledged ({tot['fua']} with FUA), "
          f"{tot['flushes']} flushes, {durable} records durable, ~{inflight} in flight at SIGKILL")
    if tot["acked"] < 50 or durable < 10:
        raise SystemExit("too little load before the kill to prove anything")


def check_slot(got, conn, slot, hist):
    """How slot holds up: "durable", "later", "torn" or "empty"; raises ValueError if lost."""
    durable = [e[0] for e in hist if e[1] == "durable"]
    last = max(durable) if durable else 0
    allowed = {e[0]: record(conn, slot, e[0]) for e in hist if e[0] >= last}
    if not durable:
        allowed[0] = bytes(REC)
    for seq, rec in allowed.items():
        if got == rec:
            return "empty" if seq == 0 else "durable" if seq == last else "later"
    if hist and hist[-1][1] == "inflight":
        # The write in flight at the kill may have landed in part: each byte from a candidate.
        cands = list(allowed.values())
        if all(any(c[i] == got[i] for c in cands) for i in range(REC)):
            return "torn"
    magic, c, s, seq = HEAD.unpack(got[:HEAD.size])
    found = f"record {seq} of connection {c} slot {s}" if magic == MAGIC else "no record"
    raise ValueError(f"holds {found}; last durable {last}, allowed {sorted(allowed)}")


def check(uri, log_path):
    log = json.load(open(log_path))
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    seen, bad = {}, []
    for conn, hist in enumerate(log["hist"]):
        region = h.pread(SLOTS * REC, slot_offset(conn, 0))
        for slot in range(SLOTS):
            try:
                kind = check_slot(region[slot * REC:(slot + 1) * REC], conn, slot, hist[str(slot)])
                seen[kind] = seen.get(kind, 0) + 1
            except ValueError as e:
                bad.append(f"connection {conn} slot {slot}: {e}")
    h.shutdown()
    print(f"{log['conns'] * SLOTS} slots: {seen.get('durable', 0)} hold their last durable "
          f"record, {seen.get('later', 0)} a later one, {seen.get('torn', 0)} a write torn by "
          f"the kill, {seen.get('empty', 0)} nothing (never durable); {len(bad)} lost data")
    if bad:
        raise SystemExit("\n".join(bad[:20]))


if __name__ == "__main__":
    if sys.argv[1] == "load":
        _, _, uri, conns, seed, pid, kill_after, log_path = sys.argv
        load(uri, int(conns), int(seed), int(pid), float(kill_after), log_path)
    else:
        check(sys.argv[2], sys.argv[3])
