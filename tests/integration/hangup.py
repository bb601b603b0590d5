"""Clients that vanish with requests in flight, while another connection keeps writing and
verifying a pattern (test-hangup.sh).

  hangup.py run URI SERVER_PID SEED CLIENTS   the whole scenario; exits non-zero on failure
  hangup.py client URI SEED HOW               one client (run by `run` as its own process)

A client connects, queues 64 reads and writes without waiting (aligned and unaligned, from
one byte to 1 MiB, in the part of the export before the verifier's region), waits until the
first reply shows the server is working on them, and vanishes with the rest in flight:
  rst       close with SO_LINGER 0 (the server gets a reset), then exit
  shutdown  shutdown(SHUT_WR) (the server reads EOF while it still owes replies), read
            for 0.2 s, then exit
  exit      exit without closing anything (the kernel closes the socket)
  kill      SIGKILLed by `run` once it is ready, still sending and reading
  kill-early  SIGKILLed by `run` right after queueing, before any reply
Meanwhile the verifier writes unaligned random data into its own region on its own
connection, reads every write back, and re-reads the whole region now and then.
"""
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import nbd

MIB = 1 << 20
VERIFY_REGION = 8 * MIB   # at the end of the export: the verifier's own bytes
HOWS = ["rst", "kill", "shutdown", "kill-early", "exit", "kill"]


def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)  # send unaligned requests exactly as given
    h.connect_uri(uri)
    return h


def queue_requests(h, rng, limit, block):
    """Queues 64 reads and writes in [0, limit) without waiting; returns their buffers,
    which must live as long as the requests."""
    bufs = []
    for i in range(64):
        if i % 2:  # aligned to the export's minimum block size
            n = rng.choice((1, 2, 8, 64, 256)) * block
            off = rng.randrange(0, (limit - n) // block) * block
        else:
            n = rng.choice((1, 511, 4097, 70001, rng.randint(1, MIB)))
            off = rng.randrange(0, limit - n)
        if rng.random() < 0.5:
            b = nbd.Buffer.from_bytearray(bytearray(rng.randbytes(n)))
            h.aio_pwrite(b, off)
        else:
            b = nbd.Buffer(n)
            h.aio_pread(b, off)
        bufs.append(b)
    return bufs


def client(uri, seed, how):
    rng = random.Random(seed)
    h = connect(uri)
    limit = h.get_size() - VERIFY_REGION
    bufs = queue_requests(h, rng, limit, h.get_block_size(nbd.SIZE_MINIMUM))
    if how == "kill-early":
        print("ready", flush=True)
        while True:
            h.poll(1000)
    deadline = time.monotonic() + 30
    while h.aio_peek_command_completed() <= 0:  # the first reply: the server is at work
        if time.monotonic() > deadline:
            raise SystemExit("no reply to 64 queued requests within 30 s")
        h.poll(100)
    fd = h.aio_get_fd()
    if how == "kill":
        print("ready", flush=True)
        while True:
            h.poll(1000)
    s = socket.socket(fileno=os.dup(fd))  # the same connection: options apply to it
    if how == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        os.close(fd)
    elif how == "shutdown":
        # The server reads EOF while it still owes replies; read some of them, then go.
        s.shutdown(socket.SHUT_WR)
        s.settimeout(0.2)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    print(f"vanishing ({how}) with {h.aio_in_flight()} requests in flight", flush=True)
    os._exit(0)  # no libnbd cleanup: nothing is said to the server


class Verifier(threading.Thread):
    """Its own connection, writing and checking a pattern until told to stop."""

    def __init__(self, uri, seed):
        super().__init__()
        self.h = connect(uri)
        self.base = self.h.get_size() - VERIFY_REGION
        self.shadow = bytearray(self.h.pread(VERIFY_REGION, self.base))
        self.rng = random.Random(seed)
        self.stop, self.error, self.writes, self.checked = threading.Event(), None, 0, 0

    def check(self, off, n):
        got = self.h.pread(n, self.base + off)
        if got != bytes(self.shadow[off:off + n]):
            bad = next(i for i in range(n) if got[i] != self.shadow[off + i])
            raise AssertionError(f"verifier: {n} bytes at {self.base + off} differ from what "
                                 f"was written, first at byte {self.base + off + bad}")
        self.checked += n

    def round(self):
        n = self.rng.choice((1, 100, 4095, 4096, 65537, self.rng.randint(1, 2 * MIB)))
        off = self.rng.randrange(0, VERIFY_REGION - n)
        data = self.rng.randbytes(n)
        self.h.pwrite(data, self.base + off, nbd.CMD_FLAG_FUA if self.rng.random() < 0.1 else 0)
        self.shadow[off:off + n] = data
        self.writes += 1
        self.check(max(0, off - 1000), min(VERIFY_REGION, off + n + 1000) - max(0, off - 1000))
        if self.writes % 50 == 0:
            self.check(0, VERIFY_REGION)

    def run(self):
        try:
            while not self.stop.is_set() or self.writes < 100:
                self.round()
            self.check(0, VERIFY_REGION)
            self.h.flush()
            self.h.shutdown()
        except Exception as e:  # reported by run()
            self.error = e


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def run(uri, server_pid, seed, clients):
    verifier = Verifier(uri, seed)
    verifier.start()
    for k in range(clients):
        how = HOWS[k % len(HOWS)]
        p = subprocess.Popen([sys.executable, __file__, "client", uri, str(seed * 100 + k), how],
                             stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([p.stdout], [], [], 60)
        line = p.stdout.readline().strip() if ready else "(nothing within 60 s)"
        if how.startswith("kill"):
            if line != "ready":
                p.kill()
                raise SystemExit(f"client {k} ({how}): {line or 'exited'}")
            p.send_signal(signal.SIGKILL)
        rc = p.wait(60)
        want = -signal.SIGKILL if how.startswith("kill") else 0
        if rc != want:
            raise SystemExit(f"client {k} ({how}) exited with {rc}: {line}")
        print(f"  client {k:2}: {line if not how.startswith('kill') else how + ' with requests in flight'}")
        if not alive(server_pid):
            raise SystemExit(f"the server died after client {k} ({how}) vanished")
        if verifier.error:
            break
    verifier.stop.set()
    verifier.join(120)
    if verifier.is_alive():
        raise SystemExit("the verifier is stuck")
    if verifier.error:
        raise SystemExit(str(verifier.error))
    print(f"  verifier: {verifier.writes} writes, {verifier.checked / MIB:.0f} MiB read back "
          "and verified, all right")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
