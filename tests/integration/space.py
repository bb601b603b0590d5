"""Checks of trim, zero, fast zero, block status and cache through a real export, against
what the kernel says about the backing: allocated bytes (st_blocks) and holes
(SEEK_DATA/SEEK_HOLE)."""
import errno
import os
import subprocess

import nbd
import nbdtest

MIB = 1 << 20


def allocated(path):
    """Bytes allocated to a file (du)."""
    return os.stat(path).st_blocks * 512


def holes(path, start, end):
    """[(offset, length, is_hole)] of the file between start and end, from the kernel."""
    out, pos = [], start
    fd = os.open(path, os.O_RDONLY)
    try:
        while pos < end:
            try:
                d = min(os.lseek(fd, pos, os.SEEK_DATA), end)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                d = end
            if d > pos:
                out.append((pos, d - pos, True))
                pos = d
                if pos >= end:
                    break
            h = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
            out.append((pos, h - pos, False))
            pos = h
    finally:
        os.close(fd)
    return out


def export_map(h, size):
    """[(offset, length, is_hole)] as the server reports base:allocation, merged."""
    got = []

    def cb(meta, off, entries, err):
        pos = off
        for i in range(0, len(entries), 2):
            got.append((pos, entries[i], bool(entries[i + 1] & nbd.STATE_HOLE)))
            pos += entries[i]
        return 0

    pos = 0
    while pos < size:
        n = len(got)
        h.block_status(min(size - pos, 1 << 30), pos, cb)
        pos = got[-1][0] + got[-1][1] if len(got) > n else size
    merged = []
    for off, ln, hole in got:
        if merged and merged[-1][2] == hole and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + ln, hole)
        else:
            merged.append((off, ln, hole))
    return merged


def expect_errno(fn, names):
    try:
        fn()
    except nbd.Error as e:
        if e.errno in names:
            return
        raise AssertionError(f"failed with {e.errno}, wanted one of {names}: {e}")
    raise AssertionError(f"succeeded, wanted one of {names}")


def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)  # send the unaligned edges as they are
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h
