#!/usr/bin/env bash
# Multi-conn is advertised and true: a write acknowledged on connection A (no FUA) is on the
# disk once connection B's flush returns, for buffered and direct I/O and every engine.
# "On the disk" is asked of the kernel, not read back (a read finds the data in a cache
# either way, so the test passed with flush a no-op): the image's filesystem sits on a loop
# device whose backing file is its volatile write cache, and the kernel's page flags count
# the pages of the image and of the blocks under the written bytes (FIBMAP) that are dirty
# or under writeback: each page in the page cache (mincore) is mapped read-only, its frame
# read from /proc/self/pagemap and its flags from /proc/kpageflags, which every kernel since
# 2.6.25 has (cachestat(2) would need 6.5; Debian 12 runs 6.1). Before B's flush they must
# be there (else the write is retried: the kernel wrote them back on its own), after it
# none. The journal commits only every 10 minutes, so nothing but B's flush sends the loop
# device a flush meanwhile. The same check against a server whose fdatasync does nothing
# (tests/tools' nosync.so) must fail.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit
NOSYNC=${LOOPDIO_BUILD:?set LOOPDIO_BUILD to the build directory}/tests/tools/nosync.so
[ -f "$NOSYNC" ] || fail "$NOSYNC is not built (tests/tools/CMakeLists.txt)"

mnt=$(make_fs ext4 256M commit=600)
img=$mnt/mc.img
random_file "$img" $((16 << 20))
sync  # every block of the image allocated and written: FIBMAP maps them all

flush_check() {  # durable|not-durable: runs the check on $URI
  $PYTHON - "$URI" "$img" "$mnt.img" "$1" <<'PY'
import ctypes, errno, fcntl, os, struct, sys, nbd, nbdtest
uri, img, backing, want = sys.argv[1:]
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
KPF_DIRTY, KPF_WRITEBACK = 1 << 4, 1 << 8  # include/uapi/linux/kernel-page-flags.h
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
try:
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    kpageflags = os.open("/proc/kpageflags", os.O_RDONLY)
except FileNotFoundError as e:  # a kernel built without CONFIG_PROC_PAGE_MONITOR
    print(f"{e.filename}: {e.strerror}", file=sys.stderr)
    sys.exit(77)


def u64(fd, index):
    return struct.unpack("Q", os.pread(fd, 8, index * 8))[0]


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unsettled(path, ranges):
    """Pages of path in these byte ranges that are dirty or under writeback."""
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        for off, length in ranges:
            start = off // PAGE * PAGE
            size = -(-(off + length) // PAGE) * PAGE - start
            addr = libc.mmap(None, size, 1, 1, fd, start)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                check(-1, f"mmap {path}")
            try:
                vec = ctypes.create_string_buffer(size // PAGE)
                check(libc.mincore(addr, size, vec), "mincore")
                for i in range(size // PAGE):
                    if not vec.raw[i] & 1:
                        continue  # not in the page cache, so neither dirty nor under writeback
                    va = addr + i * PAGE
                    ctypes.string_at(va, 1)  # a read fault maps the cached page as it is
                    entry = u64(pagemap, va // PAGE)
                    if not entry >> 63:
                        continue  # evicted since: it was clean
                    pfn = entry & ((1 << 55) - 1)
                    assert pfn, "pagemap gives no page frame numbers (needs CAP_SYS_ADMIN)"
                    n += bool(u64(kpageflags, pfn) & (KPF_DIRTY | KPF_WRITEBACK))
            finally:
                libc.munmap(addr, size)
        return n
    finally:
        os.close(fd)


def blocks_under(off, length):
    """Byte ranges of the loop device (= its backing file) holding the image's bytes."""
    fd = os.open(img, os.O_RDONLY)
    try:
        bsz = struct.unpack("i", fcntl.ioctl(fd, 2, b"\0" * 4))[0]  # FIGETBSZ
        out = []
        for block in range(off // bsz, (off + length - 1) // bsz + 1):
            phys = struct.unpack("i", fcntl.ioctl(fd, 1, struct.pack("i", block)))[0]  # FIBMAP
            assert phys, f"block {block} of the image is not allocated"
            out.append((phys * bsz, bsz))
        return out
    finally:
        os.close(fd)


def not_on_disk(off, length):
    return unsettled(img, [(off, length)]) + unsettled(backing, blocks_under(off, length))


a, b = nbdtest.connect(uri, strict=False), nbdtest.connect(uri, strict=False)
assert a.can_multi_conn() and b.can_multi_conn()
tested, lost = 0, []
for i in range(8):
    off = i * MIB + 512 * i + i  # unaligned too: a read-modify-write under direct I/O
    for attempt in range(5):
        data = os.urandom(65536 + i * 512)
        a.pwrite(data, off)      # acknowledged on connection A, never flushed there
        if not_on_disk(off, len(data)):
            break
    else:
        continue                 # the kernel kept writing it back before the flush
    tested += 1
    b.flush()                    # flushed on connection B
    if not_on_disk(off, len(data)):
        lost.append(off)
    with open(img, "rb") as f:
        f.seek(off)
        assert f.read(len(data)) == data, f"write {i} not in the file"
a.shutdown()
b.shutdown()
print(f"  {tested} writes on A not on disk until B flushed; after B's flush, "
      f"{len(lost)} still not on disk")
if tested == 0:
    sys.exit("every write was on disk before the flush: this test cannot tell")
if want == "durable" and lost:
    sys.exit(f"writes at {lost} not on disk after the other connection's flush")
if want == "not-durable" and not lost:
    sys.exit("with fdatasync a no-op every write was still on disk: this test cannot tell")
PY
}

run() {  # durable|not-durable DIRECTIO ENGINE
  local rc=0
  assert_engine "$URI" "$3"
  flush_check "$1" || rc=$?
  [ $rc -ne 77 ] || kernel_lacks "no /proc/kpageflags (CONFIG_PROC_PAGE_MONITOR)"
  [ $rc -eq 0 ] || fail "directio=$2 $3: flush on one connection, the other's write"
  stop_server
}

for dio in 1 0; do
  for engine in $ENGINES; do
    start_server -- file="$img" directio=$dio aio=$engine
    run durable $dio $engine
    pass "directio=$dio $engine: write on one connection, flush on another, data on disk"
  done
done

# The same check must fail when flush does nothing. (Not with a sanitizer preloaded: it may
# interpose fdatasync itself.)
if [ -z "${LOOPDIO_PRELOAD:-}" ]; then
  for dio in 1 0; do
    SERVER_PRELOAD=$NOSYNC start_server -- file="$img" directio=$dio aio=libaio
    run not-durable $dio libaio
    pass "directio=$dio, fdatasync a no-op: the check finds the write not on disk"
  done
fi
