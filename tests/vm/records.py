# Numbered records for test-power-loss.sh. `write` (in the guest) runs writers that write
# records to their own slots of a block device, durably, one after the other, and print
# "REC writer seq" once a write is acknowledged; `check` (on the host) finds every such record.
import hashlib, mmap, os, re, sys

HEADER = re.compile(rb"LOOPDIO-REC w=(\d+) seq=(\d+) slot=(\d+)\n")
# Writes after the last log line that reached the host that may have been cut by the kill
# (lines still queued in the guest's serial driver count too).
SLACK = 8
RING, FRESH = 16, 2048  # slots per writer; the image holds (RING + FRESH) * writers records


def record(size, w, seq, slot):
    head = b"LOOPDIO-REC w=%d seq=%d slot=%d\n" % (w, seq, slot)
    fill = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + fill)[:size]


def slot_of(w, seq, writers):
    """Odd records overwrite a small ring; even ones go to fresh slots, which the image's
    filesystem allocates as they are written (so durability needs its metadata too).
    Neighbouring slots belong to different writers: a block of the backing holds several
    writers' records, and their writes are concurrent read-modify-writes."""
    local = (seq // 2) % RING if seq % 2 else RING + (seq // 2) % FRESH
    return local * writers + w


def writer(dev, size, w, writers, use_fua):
    flags = os.O_WRONLY | os.O_DIRECT | (os.O_DSYNC if use_fua else 0)
    fd = os.open(dev, flags)
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    seq = 0
    while True:
        slot = slot_of(w, seq, writers)
        buf[:] = record(size, w, seq, slot)
        if os.pwrite(fd, buf, slot * size) != size:
            raise OSError(f"short write of record {seq} of writer {w}")
        if not use_fua:
            os.fdatasync(fd)
        os.write(1, b"REC %d %d\n" % (w, seq))
        seq += 1


def write(dev, size, writers):
    """Half the writers use O_DSYNC (FUA), half write then fdatasync (flush)."""
    pids = []
    for w in range(writers):
        pid = os.fork()
        if pid == 0:
            try:
                writer(dev, size, w, writers, w % 2 == 0)
            except Exception as e:
                os.write(1, f"FAIL: writer {w}: {e}\n".encode())
            os._exit(1)
        pids.append(pid)
    os.write(1, b"LOAD STARTED\n")
    os.waitpid(-1, 0)
    return 1  # a writer stopped: the VM should have been killed while they all ran


def logged(console, writers):
    """The last record each writer logged; a writer's records are sequential, so every
    earlier one was acknowledged too (a line mangled on the console is not needed)."""
    last = [-1] * writers
    for line in open(console, "rb"):
        m = re.fullmatch(rb"REC (\d+) (\d+)\r*\n", line)  # a line cut by the kill has no \n
        if m and int(m[1]) < writers:
            last[int(m[1])] = max(last[int(m[1])], int(m[2]))
    return last


def check(image, console, size, writers):
    last = logged(console, writers)
    if min(last) < 0:
        sys.exit(f"a writer logged no record before the kill: {last}")
    bad, torn = [], 0
    with open(image, "rb") as f:
        for w in range(writers):
            latest = {slot_of(w, s, writers): s for s in range(last[w] + 1)}
            in_flight = {slot_of(w, s, writers) for s in range(last[w] + 1, last[w] + 1 + SLACK)}
            for slot, s in sorted(latest.items()):
                f.seek(slot * size)
                data = f.read(size)
                m = HEADER.match(data)
                if m and data == record(size, *map(int, m.groups())):
                    rw, rseq, rslot = map(int, m.groups())
                    if rw == w and rslot == slot and rseq >= s:
                        continue
                elif slot in in_flight:
                    torn += 1  # a later write of this slot was cut by the kill
                    continue
                bad.append(f"writer {w} record {s} (slot {slot}): found {data[:48]!r}")
    if bad:
        print(f"{len(bad)} acknowledged records lost, of {sum(last) + len(last)}:")
        for b in bad[:20]:
            print("  ", b)
        return 1
    print(f"records acknowledged per writer: {[n + 1 for n in last]}, all found (torn in flight: {torn})")
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "write":
        sys.exit(write(args[0], int(args[1]), int(args[2])))
    sys.exit(check(args[0], args[1], int(args[2]), int(args[3])))
