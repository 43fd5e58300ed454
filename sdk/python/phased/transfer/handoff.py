"""Zero-copy hand-off (docs/protocol.md section 5.6). The Go twin is
sdk/transfer/output.go.

A phase that writes an output into memory from Manager.alloc writes it
into an **output segment** of its own process: a file in the shm dir
named phased-<manager>-out-<slot>, mapped read-write by this manager
alone, holding one tensor from its offset 0. When a send sends that array
through a fast-path shm room whose receiver offers a hand-off table, the
worker does not copy it: it lends the segment to the receiver. It writes
the segment's name, the tensor's offset and the segment's size into the
receiver's hand-off table, marks the segment's slot lent in its lend
table, and ends the room as the fast path does (checksums, done, one
wake-up). The receiver opens the segment read-only, maps it read-only,
marks the slot taken, and receive returns read-only views of it.

The lend table, phased-<manager>-lends-0, holds one little-endian 64-bit
word per slot, which both sides change only with atomic operations:

    0                 free: the segment is the sender's
    token<<32 | 1     lent: written by the sender before done
    token<<32 | 2     taken: the receiver took it (compare-and-swap from lent)

The receiver gives the segment back (taken -> 0) once its room was removed
and no array viewing the lent mapping is left; a room removed after done
whose lends no receive took gives them back from lent. The sender takes a
slot back itself (compare-and-swap to 0) when the receiver's process is
gone, or when the lend was never taken and the receiver's segment was
unlinked (the room was removed before the sender finished). A segment is
reused only once its writer freed it and its slot is 0.

Atomics: Python has none on shared memory, so the words go through
libatomic (GCC's runtime library, __atomic_compare_exchange_8 and its load
and store, sequentially consistent) by ctypes. Where libatomic cannot be
loaded the module falls back to a plain load, compare and store (and plain
8-byte loads and stores, which x86-64 and aarch64 keep whole for aligned
words, as futex.py relies on for progress): the two sides may then race on
a word, a receiver's give-back against a sender's take-back of a dead or
vanished receiver, and a slot could be reused while still read, or stay
lent until release. ATOMIC says which one is in use.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import re
import stat
import struct
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .. import tensor as T
from .frames import ALIGNMENT, HANDOFF_ENTRY, MAX_SEGMENT_SIZE, Buffer, go_quote, valid_segment_name
from .segment import MAP_CACHE_BYTES, MAP_CACHE_SEGMENTS, Segment, _close_map, fd_error_text, size_class

LEND_SLOTS = 1024
LEND_TABLE_SIZE = 8 * LEND_SLOTS
HANDOFF_NAME_MAX = HANDOFF_ENTRY - 24
LEND_LENT = 1
LEND_TAKEN = 2
LEND_STATE = 3  # the state bits of a lend word

_ENTRY = struct.Struct(f"<QQQ{HANDOFF_NAME_MAX}s")
assert _ENTRY.size == HANDOFF_ENTRY
_OWNER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGITS = re.compile(r"[0-9]+")
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


class HandoffError(ValueError):
    """A hand-off entry that cannot be taken; str() is what is wrong."""


# --- atomics ----------------------------------------------------------------------

_SEQ_CST = 5
try:
    _libatomic = ctypes.CDLL("libatomic.so.1")
    _cas = getattr(_libatomic, "__atomic_compare_exchange_8")
    _cas.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
    _cas.restype = ctypes.c_bool
    _load = getattr(_libatomic, "__atomic_load_8")
    _load.argtypes = [ctypes.c_void_p, ctypes.c_int]
    _load.restype = ctypes.c_uint64
    _store = getattr(_libatomic, "__atomic_store_8")
    _store.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
    _store.restype = None
    ATOMIC = True
except (OSError, AttributeError):
    _cas = _load = _store = None
    ATOMIC = False


def cas_u64(addr: int, old: int, new: int) -> bool:
    """Compare-and-swap of the aligned little-endian uint64 at addr: sets it
    to new if it holds old; returns whether it did."""
    if _cas is not None:
        expected = ctypes.c_uint64(old)
        return bool(_cas(addr, ctypes.byref(expected), new, _SEQ_CST, _SEQ_CST))
    w = ctypes.c_uint64.from_address(addr)  # not atomic: see the module's comment
    if w.value != old:
        return False
    w.value = new
    return True


def load_u64(addr: int) -> int:
    if _load is not None:
        return int(_load(addr, _SEQ_CST))
    return ctypes.c_uint64.from_address(addr).value


def store_u64(addr: int, value: int) -> None:
    if _store is not None:
        _store(addr, value, _SEQ_CST)
        return
    ctypes.c_uint64.from_address(addr).value = value


# --- names and entries -------------------------------------------------------------

def output_name(manager: str, slot: int) -> str:
    return f"phased-{manager}-out-{slot}"


def lend_table_name(manager: str) -> str:
    return f"phased-{manager}-lends-0"


def parse_output_name(s: str) -> Tuple[str, int]:
    """(owner, slot) of phased-<owner>-out-<slot>; HandoffError otherwise,
    worded as Go's parseOutputName."""
    rest = s[len("phased-"):] if s.startswith("phased-") else None
    i = rest.rfind("-out-") if rest is not None else -1
    if rest is None or i <= 0:
        raise HandoffError(f"{go_quote(s)} is not an output segment's name (phased-NAME-out-SLOT)")
    owner, digits = rest[:i], rest[i + len("-out-"):]
    if not _DIGITS.fullmatch(digits) or int(digits) >= LEND_SLOTS or not _OWNER.fullmatch(owner):
        raise HandoffError(f"{go_quote(s)} is not an output segment's name (phased-NAME-out-SLOT, SLOT below "
                           f"{LEND_SLOTS})")
    return owner, int(digits)


def segment_owner(segment: str) -> Optional[str]:
    """The manager that made a segment, from its name (Go's SegmentOwner):
    phased-NAME-ROOM-GEN, -free-N, -out-N or -lends-0, read from the right."""
    if not segment.startswith("phased-"):
        return None
    parts = segment[len("phased-"):].rsplit("-", 2)
    if len(parts) != 3 or not _DIGITS.fullmatch(parts[2]):
        return None
    if parts[1] not in ("free", "out", "lends") and not _DIGITS.fullmatch(parts[1]):
        return None
    return parts[0] if _OWNER.fullmatch(parts[0]) else None


def process_pid(manager: str) -> int:
    """The pid in a manager's name <instance>.<pid> (Go's
    SplitProcessName), 0 if it has none."""
    i = manager.rfind(".")
    if i <= 0 or not _DIGITS.fullmatch(manager[i + 1:]):
        return 0
    return int(manager[i + 1:])


def put_handoff(buf, at: int, word: int, offset: int, size: int, name: str) -> None:
    """Writes one hand-off entry at byte at of buf (a writable buffer)."""
    raw = name.encode()
    if len(raw) > HANDOFF_NAME_MAX:
        raise ValueError(f"output segment name {name!r} is longer than {HANDOFF_NAME_MAX} bytes")
    _ENTRY.pack_into(buf, at, word, offset, size, raw)  # struct pads the name with NULs


def handoff_of(buf, at: int, i: int) -> Tuple[int, int, int, str]:
    """Entry i of the hand-off table at byte at of buf: (word, offset,
    size, name)."""
    word, offset, size, raw = _ENTRY.unpack_from(buf, at + HANDOFF_ENTRY * i)
    return word, offset, size, raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def process_alive(pid: int) -> bool:
    """Whether pid exists (a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def peer_unlinked(fd: int) -> bool:
    """Whether the receiver's segment fd refers to was unlinked."""
    if fd < 0:
        return False
    return _unlinked(fd)


def _unlinked(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


# --- the sender's output segments --------------------------------------------------

class _Lend:
    __slots__ = ("word", "pid", "peer")

    def __init__(self, word: int, pid: int, peer: int):
        self.word, self.pid, self.peer = word, pid, peer


class OutSeg:
    """One output segment of a sender; fields below seg are guarded by
    Outputs' lock."""

    __slots__ = ("seg", "slot", "addr", "held", "sum", "sum_len", "summed", "lent", "freed")

    def __init__(self, seg: Segment, slot: int):
        self.seg, self.slot = seg, slot
        self.addr = _address(seg.data)
        self.held = False  # alloc handed it out and free has not taken it back
        # The writer's checksum (written) of its first sum_len bytes.
        self.sum, self.sum_len, self.summed = 0, 0, False
        self.lent: Optional[_Lend] = None  # lent to a receiver until the slot is 0 again
        self.freed = 0


class Outputs:
    """A sender's pool of output segments and its lend table, within the
    manager's pool bounds (idle segments beyond them are unlinked, the
    least recently freed first)."""

    def __init__(self, shm_dir: str, name: str, max_bytes: int, max_segs: int):
        self.shm_dir, self.name = shm_dir, name
        self.max_bytes, self.max_segs = max_bytes, max_segs
        self._mu = threading.Lock()
        self.table: Optional[Segment] = None  # created with the first segment
        self._words: Optional[np.ndarray] = None
        self._table_addr = 0
        self.slots: List[Optional[OutSeg]] = []
        self._by_addr = {}
        self._tick = 0
        self._token = 0
        self._closed = False

    def word_addr(self, slot: int) -> int:
        return self._table_addr + 8 * slot

    def alloc(self, spec: T.Spec) -> np.ndarray:
        """An array for spec in an output segment: a free one of its size
        class, or a new one. Its bytes are whatever the segment held. A spec
        of no bytes, or no slot or budget left, gets ordinary memory (it is
        copied when sent). Raises ValueError for a bad spec, OSError when a
        segment cannot be made, RuntimeError once closed."""
        need = spec.nbytes
        dtype = T.numpy_dtype(spec.dtype)
        if need == 0:
            return np.zeros(spec.shape, dtype)
        with self._mu:
            if self._closed:
                raise RuntimeError("released")
            self._reclaim_locked()
            cls = size_class(need)
            best = None
            for s in self.slots:
                if (s is not None and not s.held and s.lent is None and need <= s.seg.size <= 2 * cls
                        and (best is None or s.seg.size < best.seg.size)):
                    best = s
            if best is None:
                best = self._create_locked(cls)
                if best is None:
                    return np.zeros(spec.shape, dtype)
            best.held, best.summed = True, False
            raw = best.seg.data[:need]
        return raw.view(dtype).reshape(spec.shape)

    def _create_locked(self, size: int) -> Optional[OutSeg]:
        if self.table is None:
            try:
                t = Segment.create(self.shm_dir, lend_table_name(self.name), LEND_TABLE_SIZE, ctrl=False)
            except OSError as e:
                raise OSError(e.errno, f"create the lend table: {e.strerror}") from None
            self.table, self.slots = t, [None] * LEND_SLOTS
            self._words = np.frombuffer(t.mm, dtype="<u8")
            self._table_addr = self._words.ctypes.data
            assert self._table_addr % 8 == 0
        if self.max_bytes > 0 and size > self.max_bytes:
            return None
        while True:
            idle, n = self._idle_locked()
            if not idle or (len(idle) < self.max_segs and n + size <= self.max_bytes):
                break
            self._destroy_locked(min(idle, key=lambda s: s.freed))
        slot = next((i for i, s in enumerate(self.slots) if s is None), -1)
        if slot < 0:
            return None
        try:
            seg = Segment.create(self.shm_dir, output_name(self.name, slot), size, ctrl=False)
        except OSError as e:
            raise OSError(e.errno, f"create an output segment: {e.strerror}") from None
        s = OutSeg(seg, slot)
        self.slots[slot] = s
        self._by_addr[s.addr] = s
        return s

    def _idle_locked(self):
        idle = [s for s in self.slots if s is not None and not s.held and s.lent is None]
        return idle, sum(s.seg.size for s in idle)

    def _destroy_locked(self, s: OutSeg) -> None:
        self.slots[s.slot] = None
        self._by_addr.pop(s.addr, None)
        s.seg.destroy()  # the phase may still hold arrays: the mapping goes with the last

    def _reclaim_locked(self) -> None:
        """Takes back the slots the receivers gave back, and those of
        receivers that never will (see the module's comment)."""
        for s in self.slots:
            if s is None or s.lent is None:
                continue
            lend = s.lent
            addr = self.word_addr(s.slot)
            cur = load_u64(addr)
            if cur == 0:
                pass
            elif cur == lend.word and peer_unlinked(lend.peer):
                if not cas_u64(addr, cur, 0):
                    continue
            elif cur in (lend.word, lend.word + 1) and lend.pid > 0 and not process_alive(lend.pid):
                if not cas_u64(addr, cur, 0):
                    continue
            else:
                continue
            if lend.peer >= 0:
                os.close(lend.peer)
            s.lent = None
            if not s.held:
                self._tick += 1
                s.freed = self._tick

    def _find(self, arr) -> Optional[OutSeg]:
        if not isinstance(arr, np.ndarray) or arr.nbytes == 0:
            return None
        s = self._by_addr.get(_address(arr))
        if s is None or arr.nbytes > s.seg.size or not arr.flags.c_contiguous:
            return None
        return s

    def free(self, arr) -> None:
        """Gives back an array from alloc: its segment is reused once the
        receiver it was lent to, if any, gave it back. Other memory is
        ignored."""
        with self._mu:
            s = self._find(arr)
            if s is None or not s.held:
                return
            s.held = False
            if s.lent is None:
                self._tick += 1
                s.freed = self._tick

    def written(self, arr, checksum: int) -> bool:
        """Records the writer's checksum of an array from alloc. Returns
        False for memory that is not an output segment; raises ValueError
        for one that was freed or lent."""
        with self._mu:
            s = self._find(arr)
            if s is None:
                return False
            if not s.held or s.lent is not None:
                raise ValueError("transfer: written: the tensor is not an output from Alloc that is still being "
                                 "written")
            s.sum, s.summed = int(checksum) & 0xFFFFFFFFFFFFFFFF, True
            s.sum_len = arr.nbytes
            return True

    def lendable(self, arrays: Sequence[np.ndarray]) -> Optional[List[Optional[OutSeg]]]:
        """Per array, its output segment when it can be lent: an array from
        alloc still held, not lent, starting at its segment's start. The
        same segment is lent once. None when none can."""
        out = None
        with self._mu:
            for i, arr in enumerate(arrays):
                s = self._find(arr)
                if s is None or not s.held or s.lent is not None or (out is not None and s in out):
                    continue
                if out is None:
                    out = [None] * len(arrays)
                out[i] = s
        return out

    def checksum(self, s: OutSeg, arr: np.ndarray) -> int:
        """The writer's checksum, or the array hashed once."""
        with self._mu:
            summed, value = s.summed and s.sum_len == arr.nbytes, s.sum
        if summed:
            return value
        return T.checksum(arr.reshape(-1).view(np.uint8))

    def next_word(self) -> int:
        with self._mu:
            self._token = (self._token + 1) & 0xFFFFFFFF
            return self._token << 32 | LEND_LENT

    def lend(self, s: OutSeg, word: int, pid: int, peer: int) -> None:
        """Marks s lent with word (before the receiver can see done); peer
        (a dup of the receiver's segment, or -1) becomes the lend's."""
        with self._mu:
            store_u64(self.word_addr(s.slot), word)
            s.lent = _Lend(word, pid, peer)

    def counts(self) -> Tuple[int, int, int]:
        """(held, lent, idle) segments, after taking back what came back."""
        with self._mu:
            if self._closed:
                return 0, 0, 0
            self._reclaim_locked()
            held = lent = idle = 0
            for s in self.slots:
                if s is None:
                    continue
                if s.lent is not None:
                    lent += 1
                elif s.held:
                    held += 1
                else:
                    idle += 1
            return held, lent, idle

    def close(self) -> None:
        """Unlinks every output segment and the lend table. A receiver that
        maps one keeps its bytes until it lets go; so does a phase that
        still holds an array."""
        with self._mu:
            self._closed = True
            for s in self.slots:
                if s is None:
                    continue
                if s.lent is not None and s.lent.peer >= 0:
                    os.close(s.lent.peer)
                    s.lent.peer = -1
                self._destroy_locked(s)
            if self.table is not None:
                self._words, self._table_addr = None, 0
                self.table.destroy()
                self.table = None


# --- the receiver's side -----------------------------------------------------------

class PeerMap:
    """A receiver's mapping of a sender's output segment (read-only) or
    lend table (read-write)."""

    __slots__ = ("dev", "ino", "size", "writable", "fd", "mm", "words", "addr", "refs")

    def __init__(self, st, size, writable, fd, mm):
        self.dev, self.ino, self.size, self.writable, self.fd, self.mm = st.st_dev, st.st_ino, size, writable, fd, mm
        self.words = np.frombuffer(mm, dtype="<u8") if writable else None
        self.addr = self.words.ctypes.data if writable else 0
        self.refs = 1

    def close(self) -> None:
        self.words, self.addr = None, 0
        mm, self.mm = self.mm, None
        _close_map(mm)  # arrays still viewing it keep it until they go
        os.close(self.fd)


class PeerMaps:
    """A receiver's mappings of its senders' output segments and lend
    tables, shared by its rooms and kept while referenced, or, within
    bounds, while their file exists (a sender reuses its segments).

    put may be called from a finalizer (the last array of a lease going,
    on any thread, maybe one inside this class): it only queues the
    reference to drop, and drops the queue if the lock is free."""

    def __init__(self, max_segs: int = MAP_CACHE_SEGMENTS, max_bytes: int = MAP_CACHE_BYTES):
        self.max_segs, self.max_bytes = max_segs, max_bytes
        self._mu = threading.Lock()
        self._entries: List[PeerMap] = []
        self._bytes = 0
        self._closed = False
        self._puts: collections.deque = collections.deque()

    def get(self, shm_dir: str, name: str, size: int, writable: bool) -> PeerMap:
        """Maps shm_dir/name (read-only, or read-write for a lend table) and
        takes a reference. The file must be a regular file, no symbolic link
        followed, of exactly size bytes. HandoffError, worded as Go's."""
        if not valid_segment_name(name):
            raise HandoffError(f"bad segment name {go_quote(name)}")
        if size == 0 or size > MAX_SEGMENT_SIZE:
            raise HandoffError(f"segment {name}: size {size} is out of range")
        path = os.path.join(shm_dir, name)
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise HandoffError(f"open segment {path}: {fd_error_text(e)}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise HandoffError(f"segment {path} is not a regular file")
            if st.st_size != size:
                raise HandoffError(f"segment {path} is {st.st_size} bytes, the hand-off says {size}")
            with self._mu:
                self._drain_locked()
                for e in self._entries:
                    if e.dev == st.st_dev and e.ino == st.st_ino and e.size == size and e.writable == writable:
                        e.refs += 1
                        os.close(fd)
                        return e
            try:
                if writable:
                    mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
                else:
                    # ACCESS_READ: PROT_READ, and a buffer that says it is
                    # read-only, so that numpy's arrays of it are.
                    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                    try:
                        mm.madvise(_MADV_POPULATE_READ)  # what MAP_POPULATE does; Linux 5.14
                    except (OSError, ValueError, AttributeError):
                        pass
            except OSError as e:
                raise HandoffError(f"map segment {path}: {fd_error_text(e)}") from None
        except BaseException:
            os.close(fd)
            raise
        e = PeerMap(st, size, writable, fd, mm)
        with self._mu:
            self._entries.append(e)
            self._bytes += size
        return e

    def put(self, e: PeerMap) -> None:
        """Drops a reference. An entry nobody references goes at once if its
        file was unlinked or the maps are closed; others are unmapped while
        the maps exceed their bounds."""
        self._puts.append(e)
        if self._mu.acquire(blocking=False):
            try:
                self._drain_locked()
            finally:
                self._mu.release()

    def sweep(self) -> None:
        """Unmaps every unreferenced mapping whose file was unlinked (all of
        them once closed)."""
        with self._mu:
            self._drain_locked()
            for e in [e for e in self._entries if e.refs <= 0 and (self._closed or _unlinked(e.fd))]:
                self._drop_locked(e)

    def _drain_locked(self) -> None:
        """Drops the references put queued, looking only at those entries,
        then unmaps unreferenced ones while over the bounds."""
        while self._puts:
            e = self._puts.popleft()
            e.refs -= 1
            if e.refs <= 0 and (self._closed or _unlinked(e.fd)):
                self._drop_locked(e)
        for e in list(self._entries):
            if len(self._entries) <= self.max_segs and self._bytes <= self.max_bytes:
                break
            if e.refs <= 0:
                self._drop_locked(e)

    def _drop_locked(self, e: PeerMap) -> None:
        if e not in self._entries:
            return
        self._entries.remove(e)
        self._bytes -= e.size
        e.close()

    def close(self) -> None:
        """Unmaps every unreferenced mapping now and the others when their
        last reference goes."""
        with self._mu:
            self._closed = True
        self.sweep()

    def mapped(self) -> int:
        """How many segments are mapped (after a sweep; for tests)."""
        self.sweep()
        with self._mu:
            return len(self._entries)


class Taken:
    """One output segment a receiver room took for buffer buf."""

    __slots__ = ("buf", "offset", "length", "seg", "table", "slot", "word")

    def __init__(self, buf, offset, length, seg, table, slot, word):
        self.buf, self.offset, self.length = buf, offset, length
        self.seg, self.table, self.slot, self.word = seg, table, slot, word

    def view(self) -> memoryview:
        """The tensor's bytes in the read-only mapping (release it after use)."""
        return memoryview(self.seg.mm)[self.offset:self.offset + self.length]


def _take_one(peers: PeerMaps, shm_dir: str, b: Buffer, w: int, off: int, size: int, name: str) -> Taken:
    if w & LEND_STATE != LEND_LENT:
        raise HandoffError(f"the entry's word {w:#x} is not a lent one")
    owner, slot = parse_output_name(name)
    if off % ALIGNMENT != 0 or off > size or b.length > size - off:
        raise HandoffError(f"offset {off} + length {b.length} is out of bounds of the {size}-byte segment {name} "
                           f"(or not {ALIGNMENT}-byte aligned)")
    seg = peers.get(shm_dir, name, size, False)
    try:
        table = peers.get(shm_dir, lend_table_name(owner), LEND_TABLE_SIZE, True)
    except BaseException:
        peers.put(seg)
        raise
    taken = w - LEND_LENT + LEND_TAKEN
    if not cas_u64(table.addr + 8 * slot, w, taken):
        peers.put(seg)
        peers.put(table)
        raise HandoffError(f"the sender took segment {name} back (its lend word is no longer {w:#x})")
    return Taken(0, off, b.length, seg, table, slot, taken)


def take_handoffs(peers: PeerMaps, shm_dir: str, bufs: Sequence[Buffer], buf, at: int) -> List[Taken]:
    """Reads a fast-path room's hand-off table (at byte at of buf, the
    room's segment) once its sender is done, and takes every segment lent
    there: opens and maps each read-only, checks it, and marks its slot
    taken. On an error it gives back what it took and raises HandoffError
    naming the tensor."""
    out: List[Taken] = []
    try:
        for i, b in enumerate(bufs):
            w, off, size, name = handoff_of(buf, at, i)
            if w == 0:
                continue
            try:
                t = _take_one(peers, shm_dir, b, w, off, size, name)
            except HandoffError as e:
                raise HandoffError(f"hand-off: tensor {i} {go_quote(b.name)}: {e}") from None
            except OSError as e:  # an unexpected one (fstat, mmap): the room fails all the same
                raise HandoffError(f"hand-off: tensor {i} {go_quote(b.name)}: {fd_error_text(e)}") from None
            t.buf = i
            out.append(t)
    except BaseException:
        give_back(peers, out)
        raise
    return out


def give_back(peers: PeerMaps, taken: Sequence[Taken]) -> None:
    """Gives taken segments back to their sender (taken -> 0). Safe in a
    finalizer."""
    for t in taken:
        if t.table.addr:
            cas_u64(t.table.addr + 8 * t.slot, t.word, 0)
        peers.put(t.seg)
        peers.put(t.table)


def give_back_untaken(peers: PeerMaps, shm_dir: str, bufs: Sequence[Buffer], buf, at: int) -> None:
    """Gives back the segments lent to a room that no receive took (the
    room is being removed after its sender set done): lent -> 0."""
    for i in range(len(bufs)):
        w, _, _, name = handoff_of(buf, at, i)
        if w == 0 or w & LEND_STATE != LEND_LENT:
            continue
        try:
            owner, slot = parse_output_name(name)
            table = peers.get(shm_dir, lend_table_name(owner), LEND_TABLE_SIZE, True)
        except HandoffError:
            continue  # the sender takes it back when it sees the room's segment gone
        cas_u64(table.addr + 8 * slot, w, 0)
        peers.put(table)


class LentHold:
    """What keeps a receiver room's taken segments from going back: the
    room until it is removed, and every array root of its leases (a
    weakref.finalize releases each). The last release gives them back.
    The lock is reentrant: a finalizer may run on a thread inside it."""

    def __init__(self, peers: PeerMaps, taken: Sequence[Taken]):
        self._peers, self._taken = peers, list(taken)
        self._mu = threading.RLock()
        self._n = 1

    def acquire(self) -> None:
        with self._mu:
            self._n += 1

    def release(self) -> None:
        with self._mu:
            self._n -= 1
            last = self._n == 0
            taken, self._taken = (self._taken, []) if last else ([], self._taken)
        if last:
            give_back(self._peers, taken)


__all__ = ["ATOMIC", "HANDOFF_ENTRY", "LEND_SLOTS", "LEND_TABLE_SIZE", "LEND_LENT", "LEND_TAKEN", "HandoffError",
           "Outputs", "OutSeg", "PeerMaps", "Taken", "LentHold", "cas_u64", "load_u64", "store_u64", "output_name",
           "lend_table_name", "parse_output_name", "segment_owner", "process_pid", "put_handoff", "handoff_of",
           "take_handoffs", "give_back", "give_back_untaken", "process_alive", "peer_unlinked"]
