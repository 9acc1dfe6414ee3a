"""Large buffers go back to the operating system when they are freed.

A round at d = 10^6 moves 4 MB vectors through the web and worker processes (masked inputs,
the running sum, the model). glibc serves a freed 4 MB block to the next request from its
heap (its mmap threshold rises to the largest block freed, up to 32 MB), and with one heap
arena per thread of a 32-thread web worker the process keeps every block it ever held: its
resident memory grew with the number of partners that posted at once, and stayed there.
A fixed 1 MiB threshold maps every larger block on its own and unmaps it when freed, so
resident memory follows what is in use (bench/rounds.py, issue #19).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER_BYTES = 1 << 20


def release_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
