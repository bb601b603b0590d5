"""Requests against an export whose backing (faultyfs) fails chosen byte ranges with EIO: each
request that touches a bad range must fail with EIO, every other one must succeed with the
right data, while a second connection reads elsewhere all along. Prints the number of EIO
replies; writes the expected image."""
import errno
import os
import sys
import threading

import nbd

MIB = 1 << 20


class Run:
    def __init__(self, uri, faults_path, orig):
        self.uri, self.faults_path = uri, faults_path
        self.h = self.connect()
        self.a = self.h.get_block_size(nbd.SIZE_MINIMUM)
        self.shadow = bytearray(open(orig, "rb").read())
        self.eio = 0

    def connect(self):
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri(self.uri)
        return h

    def set_faults(self, *lines):
        with open(self.faults_path + ".new", "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(self.faults_path + ".new", self.faults_path)

    def eio_(self, what, f):
        try:
            f()
        except nbd.Error as e:
            if e.errnum != errno.EIO:
                raise SystemExit(f"{what}: {e.errno} ({e.string}), want EIO")
            self.eio += 1
            return
        raise SystemExit(f"{what}: succeeded, want EIO")

    def read_eio(self, n, off):
        self.eio_(f"read {n}@{off}", lambda: self.h.pread(n, off))

    def write_eio(self, n, off, flags=0):
        self.eio_(f"write {n}@{off}", lambda: self.h.pwrite(os.urandom(n), off, flags))

    def read_ok(self, n, off):
        if self.h.pread(n, off) != self.shadow[off:off + n]:
            raise SystemExit(f"read {n}@{off}: wrong data")

    def write_ok(self, n, off, flags=0, verify=True):
        data = os.urandom(n)
        self.h.pwrite(data, off, flags)
        self.shadow[off:off + n] = data
        if verify:
            self.read_ok(n, off)


def bystander(uri, shadow, stop, errors):
    """Reads of good ranges on a second connection, the whole time."""
    try:
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri(uri)
        n = 0
        while not stop.is_set():
            off = 6 * MIB + (n * 12345) % (MIB - 65536)  # nobody writes there
            if h.pread(65536, off) != shadow[off:off + 65536]:
                raise AssertionError(f"bystander: read 65536@{off}: wrong data")
            n += 1
        h.shutdown()
        print(f"a second connection read 64 KiB {n} times meanwhile, all correct")
    except Exception as e:
        errors.append(e)


def main(uri, faults_path, orig, expected):
    r = Run(uri, faults_path, orig)
    a = r.a
    f1, f2, f3 = MIB + 4096, 3 * MIB + a, 5 * MIB       # rw, read-only, write-only bad ranges
    r.set_faults(f"rw {f1} 4096", f"read {f2} {a}", f"write {f3} 1024")
    stop, errors = threading.Event(), []
    t = threading.Thread(target=bystander, args=(uri, bytes(r.shadow), stop, errors))
    t.start()
    # A range bad for reads and writes: anything touching it fails, its neighbours work.
    for n, off in [(4096, f1), (1, f1 + 2000), (1010, f1 - 1000), (2 * MIB, f1 - MIB)]:
        r.read_eio(n, off)
    for n, off in [(a, f1 - a), (5000, f1 - 5000), (a, f1 + 4096), (3000, f1 + 4096)]:
        r.read_ok(n, off)
    r.write_eio(4096, f1)
    r.write_eio(1, f1 + 10)
    r.write_eio(300, f1 + 4000, nbd.CMD_FLAG_FUA)
    r.write_ok(100, f1 - 100)
    r.write_ok(100, f1 + 4096, nbd.CMD_FLAG_FUA)
    if r.h.can_zero():  # zeroes are writes: EIO in the bad range, zeroes next to it
        r.eio_(f"zero 4096@{f1}", lambda: r.h.zero(4096, f1))
        r.eio_(f"zero 100@{f1 + 50}", lambda: r.h.zero(100, f1 + 50, nbd.CMD_FLAG_NO_HOLE))
        r.h.zero(2 * a, f1 - 2 * a)
        r.shadow[f1 - 2 * a:f1] = bytes(2 * a)
        r.read_ok(2 * a + 100, f1 - 2 * a - 100)
    # Bad for reads only (a pending sector): a whole-block write works, a partial one needs
    # the block read first and fails.
    r.read_eio(a, f2)
    r.write_ok(a, f2, verify=False)
    r.read_eio(10, f2 + 5)
    r.write_eio(10, f2 + 5)
    # Bad for writes only.
    r.read_ok(1024, f3)
    r.write_eio(1024, f3)
    r.write_eio(10, f3 + 3, nbd.CMD_FLAG_FUA)
    r.write_ok(50, f3 + 1024)
    # A failing fsync: flushes and FUA writes fail, plain writes work.
    r.set_faults("fsync")
    r.eio_("flush", r.h.flush)
    same = bytes(r.shadow[7 * MIB:7 * MIB + 4096])  # written, perhaps, but not durable
    r.eio_("FUA write", lambda: r.h.pwrite(same, 7 * MIB, nbd.CMD_FLAG_FUA))
    r.write_ok(4096, 7 * MIB + 8192)
    # The disk recovers: everything works, and failed writes changed nothing.
    r.set_faults()
    r.h.flush()
    stop.set()
    t.join()
    if errors:
        raise errors[0]
    r.read_ok(4096, f1)
    r.read_ok(2 * a, f2)
    r.read_ok(1024, f3)
    h = r.connect()
    for off in range(0, len(r.shadow), MIB):
        if h.pread(MIB, off) != r.shadow[off:off + MIB]:
            raise SystemExit(f"a new connection reads wrong data in the MiB at {off}")
    h.pwrite(b"after" * 100, 2 * MIB + 7, nbd.CMD_FLAG_FUA)
    r.shadow[2 * MIB + 7:2 * MIB + 507] = b"after" * 100
    h.shutdown()
    r.h.shutdown()
    open(expected, "wb").write(r.shadow)
    print(f"alignment {a}: bad ranges rw 4096@{f1}, read {a}@{f2}, write 1024@{f3}, then fsync")
    print(f"EIO replies: {r.eio}")


if __name__ == "__main__":
    main(*sys.argv[1:])
