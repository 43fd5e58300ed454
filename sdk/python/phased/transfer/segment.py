"""Shared-memory segments (docs/protocol.md sections 5.1, 5.2, 5.4): the
receiver's layout, its segments and their pool, the zmq receiver's private
buffers, and the sender's cache of mapped receiver segments.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .frames import ALIGNMENT, CTRL_SIZE, HANDOFF_ENTRY, MAX_SEGMENT_SIZE, Buffer, spec_nbytes, valid_segment_name
from .futex import Ctrl

SHM_DIR = "/dev/shm"
DEFAULT_POOL_SEGMENTS = 32
DEFAULT_POOL_BYTES = 1 << 30
PAGE_SIZE = 4 << 10
HUGE_CLASS = 2 << 20
MAP_CACHE_SEGMENTS = 64
MAP_CACHE_BYTES = 4 << 30

_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
_PROT = mmap.PROT_READ | mmap.PROT_WRITE


TOO_MANY_FILES = "too many open files: raise the file-descriptor limit (ulimit -n)"


def os_error_text(e: OSError) -> str:
    """An OSError as Go prints a syscall error: "no such file or directory"."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def fd_error_text(e: OSError) -> str:
    """os_error_text, marked when it comes from the file-descriptor limit."""
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return f"{TOO_MANY_FILES} ({os_error_text(e)})"
    return os_error_text(e)


def align_up(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def layout(specs: Sequence, base: int) -> Tuple[List[Buffer], int]:
    """One buffer per spec from base (64 in a segment, after its control
    block; 0 in a zmq room's memory), each 64-byte aligned. Returns the
    buffers and the bytes needed (at least 64)."""
    bufs = []
    off = base
    for s in specs:
        n = spec_nbytes(s.name, s.dtype, s.shape)
        bufs.append(Buffer(s.name, s.dtype, tuple(s.shape), off, n))
        off = align_up(off + n)
        if off > MAX_SEGMENT_SIZE:
            raise ValueError(f"inputs need more than {MAX_SEGMENT_SIZE} bytes")
    return bufs, max(off, ALIGNMENT)


def shm_layout(specs: Sequence) -> Tuple[List[Buffer], int, int, int]:
    """A shm room's layout: the control block, the buffers, after them the
    fast path's checksum table (8 bytes per buffer), and after that, 64-byte
    aligned, the hand-off table (HANDOFF_ENTRY bytes per buffer, 5.6)
    (5.2). Returns the buffers, the checksum table's offset, the hand-off
    table's offset and the bytes the segment needs."""
    bufs, sums_at = layout(specs, CTRL_SIZE)
    handoffs_at = align_up(sums_at + 8 * len(bufs))
    need = handoffs_at + HANDOFF_ENTRY * len(bufs)
    if need > MAX_SEGMENT_SIZE:
        raise ValueError(f"inputs need more than {MAX_SEGMENT_SIZE} bytes")
    return bufs, sums_at, handoffs_at, need


def size_class(n: int) -> int:
    """A power of two from 4 KiB up to 2 MiB, then a multiple of 2 MiB."""
    if n <= PAGE_SIZE:
        return PAGE_SIZE
    if n <= HUGE_CLASS:
        return 1 << (n - 1).bit_length()
    return (n + HUGE_CLASS - 1) & ~(HUGE_CLASS - 1)


def segment_name(manager: str, room: int, gen: int) -> str:
    return f"phased-{manager}-{room}-{gen}"


def sender_socket_name(room: int) -> str:
    return f"s-{room}.sock"


def receiver_socket_name(room: int, gen: int) -> str:
    return f"r-{room}-{gen}.sock"


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(old: str, new: str) -> None:
    """renameat2(RENAME_NOREPLACE): never replaces an existing file."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(ctypes.c_int(_AT_FDCWD), os.fsencode(old), ctypes.c_int(_AT_FDCWD), os.fsencode(new),
          ctypes.c_uint(_RENAME_NOREPLACE)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _close_map(mm) -> None:
    """Unmaps mm unless views of it are still alive (a Receive's arrays):
    then the mapping goes when the last of them does."""
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:
        pass


class Segment:
    """A receiver's shared-memory segment, mapped MAP_SHARED for its life;
    or, with path None, a zmq room's private memory."""

    def __init__(self, name: str, path: Optional[str], size: int, mm, data: np.ndarray, ctrl: bool = True):
        self.name, self.path, self.size = name, path, size
        self.mm = mm
        self.data = data  # uint8 view of the whole segment
        self.ctrl: Optional[Ctrl] = Ctrl(mm) if mm is not None and ctrl else None

    @classmethod
    def create(cls, shm_dir: str, name: str, size: int, ctrl: bool = True) -> "Segment":
        """Creates, sizes and maps a segment (5.1). ctrl: it starts with a
        control block (a room's; not an output segment or a lend table)."""
        path = os.path.join(shm_dir, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise OSError(e.errno, f"create segment {path}: {os_error_text(e)}") from None
        try:
            try:
                os.ftruncate(fd, size)
            except OSError as e:
                raise OSError(e.errno, f"size segment {path} to {size} bytes: {os_error_text(e)}") from None
            # Reserve the pages now, so that a full /dev/shm fails here and
            # not with SIGBUS in the sender.
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise OSError(e.errno, f"allocate segment {path} ({size} bytes): {os_error_text(e)}") from None
            try:
                mm = mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=_PROT)
            except OSError as e:
                raise OSError(e.errno, f"map segment {path}: {os_error_text(e)}") from None
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        os.close(fd)
        return cls(name, path, size, mm, np.frombuffer(mm, dtype=np.uint8), ctrl)

    @classmethod
    def private(cls, size: int) -> "Segment":
        """size bytes of zeroed private memory, 64-byte aligned."""
        raw = np.zeros(size + ALIGNMENT, dtype=np.uint8)
        off = (-raw.ctypes.data) % ALIGNMENT
        return cls("", None, size, None, raw[off:off + size])

    def rename(self, name: str) -> None:
        path = os.path.join(os.path.dirname(self.path), name)
        try:
            rename_noreplace(self.path, path)
        except OSError as e:
            raise OSError(e.errno, f"rename segment {self.path} to {name}: {os_error_text(e)}") from None
        self.name, self.path = name, path

    def unlink(self) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def unmap(self) -> None:
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        self.data = None
        mm, self.mm = self.mm, None
        _close_map(mm)

    def destroy(self) -> None:
        try:
            self.unlink()
        finally:
            self.unmap()


class Pool:
    """A receiver's idle segments, kept mapped for the next rooms (5.1):
    named phased-<manager>-free-<n>, at most max_segs of max_bytes in all,
    the least recently freed unlinked first."""

    def __init__(self, shm_dir: str, manager: str, next_id, max_segs: int = DEFAULT_POOL_SEGMENTS,
                 max_bytes: int = DEFAULT_POOL_BYTES):
        self.shm_dir, self.prefix, self.next_id = shm_dir, f"phased-{manager}-", next_id
        self.max_segs, self.max_bytes = max_segs, max_bytes
        self._mu = threading.Lock()
        self._free: List[Segment] = []
        self._bytes = 0
        self._closed = False

    def get(self, name: str, need: int) -> Tuple[Segment, bool]:
        """A segment of at least need bytes named name, and whether it was reused."""
        cls = size_class(need)
        seg = None
        with self._mu:
            best = -1
            if not self._closed:
                for i, s in enumerate(self._free):
                    if need <= s.size <= 2 * cls and (best < 0 or s.size < self._free[best].size):
                        best = i
            if best >= 0:
                seg = self._free.pop(best)
                self._bytes -= seg.size
        if seg is not None:
            try:
                seg.rename(name)
                return seg, True
            except OSError:
                seg.destroy()
        return Segment.create(self.shm_dir, name, cls), False

    def put(self, seg: Segment) -> None:
        """Takes a retired segment (no view of it left) back."""
        try:
            seg.rename(f"{self.prefix}free-{self.next_id()}")
        except OSError:
            seg.destroy()
            raise
        evict = []
        with self._mu:
            if self._closed or seg.size > self.max_bytes or self.max_segs <= 0:
                evict.append(seg)
            else:
                self._free.append(seg)
                self._bytes += seg.size
                while len(self._free) > self.max_segs or self._bytes > self.max_bytes:
                    old = self._free.pop(0)
                    self._bytes -= old.size
                    evict.append(old)
        for s in evict:
            s.destroy()

    def close(self) -> None:
        with self._mu:
            free, self._free, self._bytes, self._closed = self._free, [], 0, True
        for s in free:
            s.destroy()

    def idle(self) -> Tuple[int, int]:
        with self._mu:
            return len(self._free), self._bytes


def open_peer_segment(shm_dir: str, name: str, size: int) -> Tuple[int, os.stat_result]:
    """Opens, read-write, the segment a descriptor names: no symbolic link
    followed, a regular file of exactly size bytes (5.4). Returns (fd, stat)."""
    if not valid_segment_name(name):
        raise ValueError(f"bad segment name {name!r}")
    path = os.path.join(shm_dir, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"open segment {path}: {os_error_text(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"segment {path} is not a regular file")
        if st.st_size != size:
            raise OSError(errno.EINVAL, f"segment {path} is {st.st_size} bytes, the descriptor says {size}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class _Mapping:
    __slots__ = ("dev", "ino", "size", "fd", "mm", "last_use")

    def __init__(self, dev, ino, size, fd, mm, last_use):
        self.dev, self.ino, self.size, self.fd, self.mm, self.last_use = dev, ino, size, fd, mm, last_use

    def close(self) -> None:
        mm, self.mm = self.mm, None
        _close_map(mm)
        os.close(self.fd)


class MapCache:
    """The transfer worker's mappings of receiver segments, keyed by the
    file's device and inode, so that a segment the receiver reuses (renamed)
    is mapped once. Every lookup still opens the name with O_NOFOLLOW and
    checks type and size. An entry goes when its file is unlinked, when the
    same file shows another size, on eviction and on close. Only the worker
    thread uses it."""

    def __init__(self, max_segs: int = MAP_CACHE_SEGMENTS, max_bytes: int = MAP_CACHE_BYTES):
        self.max_segs, self.max_bytes = max_segs, max_bytes
        self._entries: List[_Mapping] = []
        self._bytes = 0
        self._tick = 0

    def get(self, shm_dir: str, name: str, size: int):
        """Returns (mmap, fd, done): fd is the open file (for size checks
        between blocks), done() lets go of them."""
        self.sweep()
        fd, st = open_peer_segment(shm_dir, name, size)
        for i, e in enumerate(self._entries):
            if e.dev != st.st_dev or e.ino != st.st_ino:
                continue
            if e.size == size:
                os.close(fd)
                self._tick += 1
                e.last_use = self._tick
                return e.mm, e.fd, lambda: None
            self._drop(i)
            break
        try:
            mm = mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=_PROT)
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, f"map segment {name}: {os_error_text(e)}") from None
        if size > self.max_bytes or self.max_segs <= 0:
            m = _Mapping(st.st_dev, st.st_ino, size, fd, mm, 0)
            return mm, fd, m.close
        self._tick += 1
        m = _Mapping(st.st_dev, st.st_ino, size, fd, mm, self._tick)
        self._entries.append(m)
        self._bytes += size
        while len(self._entries) > self.max_segs or self._bytes > self.max_bytes:
            oldest = min(range(len(self._entries)), key=lambda j: self._entries[j].last_use)
            if self._entries[oldest] is m:
                break
            self._drop(oldest)
        return mm, fd, lambda: None

    def _drop(self, i: int) -> None:
        e = self._entries.pop(i)
        self._bytes -= e.size
        e.close()

    def sweep(self) -> None:
        """Drops the mappings of files that were unlinked."""
        i = 0
        while i < len(self._entries):
            try:
                gone = os.fstat(self._entries[i].fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                self._drop(i)
                continue
            i += 1

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        while self._entries:
            self._drop(len(self._entries) - 1)


def sweep_segments(shm_dir: str, manager: str) -> int:
    """Removes the segments a manager named manager left in shm_dir (for a
    process that died without closing): its rooms', its pool's, its output
    segments and its lend table (5.1, 5.6). Returns how many it removed."""
    n = 0
    prefix = f"phased-{manager}-"
    for entry in os.scandir(shm_dir):
        rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else None
        if rest is None or not entry.is_file(follow_symlinks=False):
            continue
        parts = rest.split("-")
        if len(parts) == 2 and parts[1].isdigit() and (parts[0].isdigit() or parts[0] in ("free", "out", "lends")):
            try:
                os.unlink(entry.path)
                n += 1
            except FileNotFoundError:
                pass
    return n


__all__ = ["CTRL_SIZE", "Segment", "Pool", "MapCache", "layout", "shm_layout", "size_class", "segment_name",
           "open_peer_segment", "sweep_segments", "SHM_DIR"]
