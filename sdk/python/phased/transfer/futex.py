"""The shm control block and its futex (docs/protocol.md section 5.3).

    offset 0   progress  uint64  bytes copied, over the buffers in order
    offset 8   seq       uint32  futex word, bumped by every publish and by
                                 the receiver's own process to wake its waiter
    offset 12  waiting   uint32  1 while the receiver sleeps on seq
    offset 16  done      uint32  fast path (5.5): 1 once every buffer and
                                 the checksum table are written; the sender
                                 writes nothing after it

Python has no atomic read-modify-write on shared memory. What this module
does instead:

- progress is stored and loaded through an aligned numpy uint64 element,
  which numpy reads and writes with one 8-byte move: atomic on x86-64 and
  aarch64 (both keep aligned 8-byte accesses whole);
- seq is bumped with a plain load and store; a bump lost to a concurrent one
  only costs a wake-up, and the receiver's sleeps end after MAX_SLEEP;
- a publishing sender always calls FUTEX_WAKE (one cheap syscall per
  256 KiB block) instead of loading `waiting` first, so that no store-load
  reordering can lose a wake-up; so does a finishing one;
- done (the fast path) must not be seen before the buffers and the
  checksum table it vouches for: a reused segment holds the last room's
  bytes and table, which agree with each other. On x86-64, which keeps
  stores in order with stores and loads with loads, plain ones do;
  elsewhere fence() stands in for the missing barriers: the sender fences
  before it stores done, the receiver after it loaded done and before it
  reads the table.
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np

FUTEX_WAIT = 0
FUTEX_WAKE = 1
INT32_MAX = 0x7FFFFFFF

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
# x86-64 orders stores with stores and loads with loads (TSO).
_ORDERED = platform.machine().lower() in ("x86_64", "amd64")
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(addr: int, val: int, timeout: float) -> None:
    """FUTEX_WAIT on the shared word at addr while it holds val, at most
    timeout seconds. EAGAIN, EINTR and ETIMEDOUT all mean "look again"; the
    GIL is released meanwhile (ctypes)."""
    if _SYS_FUTEX is None:  # no futex number known: just sleep
        import time
        time.sleep(timeout)
        return
    sec = int(timeout)
    ts = _Timespec(sec, int((timeout - sec) * 1e9))
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAIT),
             ctypes.c_uint32(val & 0xFFFFFFFF), ctypes.byref(ts), ctypes.c_void_p(0), ctypes.c_uint32(0))


def futex_wake(addr: int) -> None:
    if _SYS_FUTEX is None:
        return
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAKE),
             ctypes.c_uint32(INT32_MAX), ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_uint32(0))


_fence_word = ctypes.c_uint32(0)


def fence() -> None:
    """A full memory barrier where the CPU does not keep memory accesses in
    order (not x86-64): a FUTEX_WAKE on a word nobody waits on, since
    Linux's futex_wake orders memory fully (smp_mb) before it looks for
    waiters. Python has no fence instruction of its own."""
    if _ORDERED or _SYS_FUTEX is None:
        return
    futex_wake(ctypes.addressof(_fence_word))


class Ctrl:
    """The control block at the start of a mapped segment (an mmap). It holds
    numpy views of the mapping: call close() before unmapping it."""

    def __init__(self, buf):
        self._p = np.frombuffer(buf, dtype="<u8", count=1, offset=0)
        self._w = np.frombuffer(buf, dtype="<u4", count=3, offset=8)  # seq, waiting, done
        self._seq_addr = self._w.ctypes.data
        assert self._p.ctypes.data % 8 == 0

    def close(self) -> None:
        self._p = self._w = None

    def reset(self) -> None:
        """Zeroes progress, seq, waiting and done (the receiver, before its
        descriptor)."""
        self._p[0] = 0
        self._w[:] = 0

    def progress(self) -> int:
        return int(self._p[0])

    def seq(self) -> int:
        return int(self._w[0])

    def done(self) -> bool:
        """Whether the sender of a fast-path room has finished writing. Once
        it returns True, the buffers and the checksum table may be read."""
        if int(self._w[2]) == 0:
            return False
        fence()  # done before the table and the buffers
        return True

    def _bump(self) -> None:
        self._w[0] = (int(self._w[0]) + 1) & 0xFFFFFFFF

    def publish(self, n: int) -> None:
        """Sender: n bytes are final. Store progress, bump seq, wake."""
        self._p[0] = n
        self._bump()
        futex_wake(self._seq_addr)

    def finish(self, n: int) -> None:
        """Sender, fast path: every buffer and the checksum table are
        written, n bytes in all. Store progress and done, bump seq, wake.
        The sender writes nothing in the segment after it."""
        self._p[0] = n
        fence()  # the buffers and the table before done
        self._w[2] = 1
        self._bump()
        futex_wake(self._seq_addr)

    def wake(self) -> None:
        """Receiver's process: wake its own sleeper (a room change)."""
        w = self._w
        if w is None:
            return
        self._bump()
        if int(w[1]) != 0:
            futex_wake(self._seq_addr)

    def sleep(self, seen: int, timeout: float) -> None:
        """Receiver: wait until seq moves from seen or a wake comes, at most timeout."""
        self._w[1] = 1
        futex_wait(self._seq_addr, seen, timeout)
        self._w[1] = 0


__all__ = ["Ctrl", "fence", "futex_wait", "futex_wake", "FUTEX_WAIT", "FUTEX_WAKE"]
