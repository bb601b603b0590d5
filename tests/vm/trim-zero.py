# Trim and fast zero through a loopdio export, for partition-queue-limits.sh: whether the
# export advertises them (libnbd's can_trim, can_fast_zero) and whether each reaches the
# device (a written pattern reads back as zeroes). One "ok:"/"FAIL:" line per check; exits 1
# when any failed. Usage: trim-zero.py URI TRIM_OFFSET ZERO_OFFSET LENGTH
import sys

import nbd

uri, trim_off, zero_off, length = sys.argv[1], *map(int, sys.argv[2:5])
failed = []


def check(ok, what):
    print(("ok: " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failed.append(what)


h = nbd.NBD()
h.connect_uri(uri)
pattern = (bytes(range(1, 256)) * (length // 255 + 1))[:length]  # no zero byte
zeroes = bytes(length)
for off in trim_off, zero_off:
    h.pwrite(pattern, off)
h.flush()
check(h.pread(length, trim_off) == pattern and h.pread(length, zero_off) == pattern,
      "the pattern reads back")

check(h.can_trim(), f"can_trim: {str(h.can_trim()).lower()}")
if h.can_trim():
    h.trim(length, trim_off)
    h.flush()
    check(h.pread(length, trim_off) == zeroes, f"trim of {length} bytes at {trim_off} reads back as zeroes")

check(h.can_fast_zero(), f"can_fast_zero: {str(h.can_fast_zero()).lower()}")
if h.can_fast_zero():
    try:
        h.zero(length, zero_off, nbd.CMD_FLAG_FAST_ZERO)
        check(h.pread(length, zero_off) == zeroes, f"fast zero of {length} bytes at {zero_off} reads back as zeroes")
    except nbd.Error as e:
        check(False, f"fast zero of {length} bytes at {zero_off}: {e.string} (errno {e.errnum})")
try:
    h.shutdown()
except nbd.Error as e:  # the server is gone
    check(False, f"shutdown: {e.string}")
sys.exit(1 if failed else 0)
