"""The shm control block and its futex (docs/protocol.md section 5.3).

    offset 0   progress  uint64  bytes copied, over the buffers in order
    offset 8   seq       uint32  futex word, bumped by every publish and by
                                 the receiver's own process to wake its waiter
    offset 12  waiting   uint32  1 while the receiver sleeps on seq

Python has no atomic read-modify-write on shared memory. What this module
does instead:

- progress is stored and loaded through an aligned numpy uint64 element,
  which numpy reads and writes with one 8-byte move: atomic on x86-64 and
  aarch64 (both keep aligned 8-byte accesses whole);
- seq is bumped with a plain load and store; a bump lost to a concurrent one
  only costs a wake-up, and the receiver's sleeps end after MAX_SLEEP;
- a publishing sender always calls FUTEX_WAKE (one cheap syscall per
  256 KiB block) instead of loading `waiting` first, so that no store-load
  reordering can lose a wake-up.
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np

FUTEX_WAIT = 0
FUTEX_WAKE = 1
INT32_MAX = 0x7FFFFFFF

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
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


class Ctrl:
    """The control block at the start of a mapped segment (an mmap). It holds
    numpy views of the mapping: call close() before unmapping it."""

    def __init__(self, buf):
        self._p = np.frombuffer(buf, dtype="<u8", count=1, offset=0)
        self._w = np.frombuffer(buf, dtype="<u4", count=2, offset=8)  # seq, waiting
        self._seq_addr = self._w.ctypes.data
        assert self._p.ctypes.data % 8 == 0

    def close(self) -> None:
        self._p = self._w = None

    def reset(self) -> None:
        """Zeroes progress, seq and waiting (the receiver, before its descriptor)."""
        self._p[0] = 0
        self._w[0] = 0
        self._w[1] = 0

    def progress(self) -> int:
        return int(self._p[0])

    def seq(self) -> int:
        return int(self._w[0])

    def _bump(self) -> None:
        self._w[0] = (int(self._w[0]) + 1) & 0xFFFFFFFF

    def publish(self, n: int) -> None:
        """Sender: n bytes are final. Store progress, bump seq, wake."""
        self._p[0] = n
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


__all__ = ["Ctrl", "futex_wait", "futex_wake", "FUTEX_WAIT", "FUTEX_WAKE"]
