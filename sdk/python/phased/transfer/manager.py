"""The transfer manager of one Python phase process (docs/protocol.md
sections 3-5, 7). The Go twin is sdk/transfer (manager.go, owner.go,
worker.go).

Threads:

- the **socket owner** owns every zmq socket (zmq sockets are not
  thread-safe). It polls the rooms' PULL sockets, their PUSH sockets'
  monitors, with CURVE the ZAP handler's ROUTER (curve.py), and an eventfd;
  other threads hand it work through a command queue and wake it with the
  eventfd. It never blocks on the network.
- the **transfer worker** runs one Send at a time: it copies tensors into
  receiver segments (shm) in 256 KiB blocks, checking between blocks whether
  the room was removed or failed or the Send cancelled, or has the owner
  stream them (zmq). On the shm fast path (a receiver that names a
  checksum table) it ends the hop in the segment, with no status frame.
- the callers' threads (open, send, receive, remove, status, close) wait on
  one condition variable; receive hashes the buffers on the caller's thread.

Everything else is guarded by one lock (self._mu).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import random
import re
import resource
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import ctypes

import numpy as np
import xxhash
import zmq

from .. import tensor as T
from . import frames as F
from . import handoff as H
from . import curve as C
from .curve import CurveKeys
from .frames import (BOOTSTRAPPING, CHECKSUM_BLOCK, FAILED, MAX_BUFFERS, MAX_FRAME_SIZE, MAX_SLEEP,
                     MAX_USED_IDS, RECEIVER, SENDER, SHM, SUCCESS, TRANSFERRING, WAITING_FOR_INPUT, ZMQ, ZMQ_CHUNK,
                     Buffer, Descriptor, Header, go_quote)
from .futex import Ctrl
from .segment import (SHM_DIR, TOO_MANY_FILES, MapCache, Pool, Segment, os_error_text, layout, receiver_socket_name,
                      segment_name, sender_socket_name, shm_layout)

DEFAULT_PEER_TIMEOUT = 10.0
DEFAULT_ZMQ_HOST = "127.0.0.1"
MAX_SOCKET_PATH = 107
ZMQ_WINDOW = 16 << 20  # bytes of a zmq room the owner queues per command
MAX_BURST = 64  # frames read from one socket per poll
# The worker copies this much between two checks for removal and two
# progress reports: four checksum blocks (glibc copies 1 MiB into a shared
# mapping about twice as fast as 256 KiB pieces).
COPY_CHUNK = 4 * CHECKSUM_BLOCK
EMPTY_SUM = xxhash.xxh3_64_intdigest(b"")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LONGEST_SOCKET = receiver_socket_name(2 ** 64 - 1, 2 ** 64 - 1)
# memmove releases the GIL while it copies (ctypes), so that a receiver in
# the same process hashes meanwhile.
_memmove = ctypes.memmove


# --- errors --------------------------------------------------------------------

class TransferError(Exception):
    """A transfer call failed; str() is the reason, worded as the Go SDK's."""


class UnknownRoomError(TransferError):
    """No open room has this id (or it has the other role)."""


class RoomExistsError(TransferError):
    """The id is open or was used before; ids are never reused."""


class RoomRemovedError(TransferError):
    """The room was removed while the call waited on it."""


class RoomFailedError(TransferError):
    """The room is Failed; .reason is why."""

    def __init__(self, room: int, reason: str):
        super().__init__(f"transfer: room failed: room {room}: {reason}")
        self.room, self.reason = room, reason


class ReleasedError(TransferError):
    """The manager was closed."""

    def __init__(self, msg: str = "transfer: manager released"):
        super().__init__(msg)


class NotStartedError(TransferError):
    def __init__(self, msg: str = "transfer: manager not started, call start() first"):
        super().__init__(msg)


class CancelledError(TransferError):
    """The caller's cancel event was set."""


class _OwnerStopped(Exception):
    pass


class _Aborted(Exception):
    pass


def _fd_text(e: BaseException) -> str:
    """An error's text, marked when it comes from the file-descriptor limit."""
    no = getattr(e, "errno", None)
    if no in (errno.EMFILE, errno.ENFILE):
        return f"{TOO_MANY_FILES} ({_err_text(e)})"
    return _err_text(e)


def _err_text(e: BaseException) -> str:
    if isinstance(e, zmq.ZMQError):
        return e.strerror[:1].lower() + e.strerror[1:] if e.strerror else str(e)
    if isinstance(e, OSError) and e.strerror and not e.filename:
        return e.strerror
    return str(e) or type(e).__name__


def go_duration(sec: float) -> str:
    """sec formatted as Go's time.Duration prints it (10s, 250ms, 1m30s)."""
    ns = int(round(sec * 1e9))
    if ns == 0:
        return "0s"

    def trim(x: float, digits: int) -> str:
        s = f"{x:.{digits}f}".rstrip("0").rstrip(".")
        return s

    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return trim(ns / 1e3, 3) + "µs"
    if ns < 1_000_000_000:
        return trim(ns / 1e6, 6) + "ms"
    h, rem = divmod(ns, 3600 * 10 ** 9)
    m, rem = divmod(rem, 60 * 10 ** 9)
    s = trim(rem / 1e9, 9) + "s"
    if h:
        return f"{h}h{m}m{s}"
    if m:
        return f"{m}m{s}"
    return s


# --- rooms ---------------------------------------------------------------------

@dataclass(frozen=True)
class RoomState:
    room: int
    role: int  # 1 sender, 2 receiver
    status: int  # phased.v1.TransferStatus
    reason: str


@dataclass
class BackendCounters:
    """What a manager moved on one backend since start (Go's
    transfer.BackendCounters): sends that succeeded, their bytes and the
    time they took in all (from the call to the receiver's Success
    queued), and receives that returned arrays, with their bytes."""

    backend: str
    sent: int = 0
    sent_bytes: int = 0
    send_seconds: float = 0.0
    received: int = 0
    received_bytes: int = 0


class _Room:
    def __init__(self, rid: int, role: int, backend: str):
        self.id, self.role, self.backend = rid, role, backend
        self.endpoint = ""  # sender: its room socket; receiver: its status socket
        self.abort = False  # set by remove and peer timeouts; the worker checks it between blocks
        self.status = BOOTSTRAPPING
        self.reason = ""
        self.removing = False
        self.gone = False
        # Sender.
        self.desc: Optional[Descriptor] = None
        self.sending = False
        self.busy = False  # the worker holds the room
        self.drained = False  # the send ended in the control block: no frame
        # Receiver.
        self.gen = 0
        self.seg: Optional[Segment] = None
        self.bufs: List[Buffer] = []
        self.final: Optional[List[Header]] = None  # the Success frame's tensors (or the checksum table's)
        self.sums_at = 0  # a shm room's checksum table (the fast path)
        # A fast-path room's hand-off table (5.6); via_done: the control
        # block's done, not a Success frame, ended the hop; lent: the
        # output segments its sender lent it, once a receive took them
        # (took_lent), given back when lent_hold lets go.
        self.handoffs_at = 0
        self.via_done = False
        self.lent: List[H.Taken] = []
        self.took_lent = False
        self.lent_hold: Optional[H.LentHold] = None
        # The control block, not a frame, moved the room to Transferring
        # (_observe_locked): one Transferring frame is then no duplicate.
        self.moved_by_ctrl = False
        self.verifying = False  # a receive is hashing (it owns verifier)
        self.verifier = _Verifier()
        self.sleeping = False  # the verifying receive sleeps on the control block
        self.sender_done = False  # a Success or Failed frame came: the sender writes no more
        self.leases: List[weakref.ref] = []

    @property
    def ctrl(self) -> Optional[Ctrl]:
        return self.seg.ctrl if self.seg is not None else None

    def copying(self) -> bool:
        """Whether the sender may be writing a shm room's buffers: it is
        Transferring, or, on the fast path, where no Transferring frame
        comes, WaitingForInput. Manager._mu is held."""
        return self.ctrl is not None and (self.status == TRANSFERRING
                                          or self.sums_at != 0 and self.status == WAITING_FOR_INPUT)

    def fast_done(self) -> bool:
        """Whether the sender of a fast-path room has finished (the control
        block's done word): it writes nothing more. Manager._mu is held and
        the room is not being removed (its segment is mapped)."""
        return self.sums_at != 0 and self.ctrl is not None and self.ctrl.done()


class _Verifier:
    """Hashes a receiver's buffers block by block, in order (section 7)."""

    def __init__(self):
        self.tensor = 0  # the buffer being hashed
        self.off = 0  # bytes of it hashed
        self.pos = 0  # bytes hashed over all buffers
        self.h = 0
        self.sums: List[int] = []
        # The buffers a hand-off stands for (set once the sender is done):
        # their bytes in the segment are not the tensor's.
        self.skip: Optional[List[bool]] = None

    def advance(self, bufs: Sequence[Buffer], mv: memoryview, limit: int, stop: Callable[[], bool]) -> bool:
        """Hashes every whole block (or a buffer's end) below limit, a byte
        count over the buffers in order. Returns False if stop() said so."""
        start = sum(b.length for b in bufs[:self.tensor])
        h3 = xxhash.xxh3_64_intdigest
        while self.tensor < len(bufs):
            b = bufs[self.tensor]
            if self.skip is not None and self.skip[self.tensor] and self.off == 0:
                self.pos += b.length
                self.sums.append(0)
                self.tensor += 1
                start += b.length
                continue
            avail = min(max(limit - start, 0), b.length)
            while self.off < b.length:
                end = min(self.off + CHECKSUM_BLOCK, b.length)
                if end > avail:
                    return True
                if stop():
                    return False
                self.h = h3(mv[b.offset + self.off:b.offset + end], seed=self.h)
                self.pos += end - self.off
                self.off = end
            self.sums.append(self.h if b.length else EMPTY_SUM)
            self.tensor, self.off, self.h = self.tensor + 1, 0, 0
            start += b.length
        return True


class _UsedIDs:
    """The room ids a manager has seen, in bounded memory (3.2): every id
    below low counts as used; the set holds the used ids at or above it."""

    def __init__(self):
        self.low = 0
        self.set = set()

    def check(self, rid: int) -> Optional[str]:
        if rid < self.low:
            return (f"transfer: room id already used: {rid} (room ids are never reused; this manager no longer "
                    f"accepts ids below {self.low})")
        if rid in self.set:
            return f"transfer: room id already used: {rid} (room ids are never reused)"
        return None

    def add(self, rid: int) -> None:
        self.set.add(rid)
        if len(self.set) <= MAX_USED_IDS:
            return
        ids = sorted(self.set)
        half = len(ids) // 2
        self.low = ids[half]
        self.set = set(ids[half:])


class _Socks:
    """The sockets of one room; only the owner thread touches them."""

    def __init__(self, role: int, backend: str, pull, path: str):
        self.role, self.backend, self.pull, self.path = role, backend, pull, path
        self.push = None
        self.mon = None
        self.peer = ""
        self.deadline: Optional[float] = None  # the peer timer, armed while push is disconnected
        # curve: push is a CURVE client (a tcp peer, with keys), whose
        # connection is up once its handshake succeeded, not when TCP
        # connects. handshake says why the last handshake of push failed,
        # for the peer timeout's reason; "" once one succeeds.
        self.curve = False
        self.handshake = ""


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn):
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None


class _Job:
    def __init__(self, r: _Room, outputs, cancel):
        self.r, self.outputs, self.cancel = r, outputs, cancel
        self.taken = False
        self.abandoned = False
        self.done = threading.Event()
        self.error: Optional[BaseException] = None


def _is_set(cancel) -> bool:
    return cancel is not None and cancel.is_set()


# --- the manager ---------------------------------------------------------------

class Manager:
    """The transfer manager of one phase process. All methods are safe to
    call from any thread."""

    def __init__(self, name: str, run_dir: str, zmq_host: str = DEFAULT_ZMQ_HOST,
                 peer_timeout: float = DEFAULT_PEER_TIMEOUT, logger: Optional[logging.Logger] = None, *,
                 shm_dir: str = SHM_DIR, pool_segments: int = 32, pool_bytes: int = 1 << 30,
                 max_sockets: int = 0, verify_handoffs: bool = False, curve: Optional[CurveKeys] = None):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"transfer: config: Name {go_quote(str(name))} must match ^[A-Za-z0-9_.-]{{1,64}}$")
        if not run_dir:
            raise ValueError("transfer: config: Dir is empty: set it to the run directory for room sockets")
        run_dir = os.path.abspath(run_dir)
        if not os.path.isdir(run_dir):
            raise ValueError(f"transfer: config: Dir {go_quote(run_dir)} is not a directory")
        longest = os.path.join(run_dir, _LONGEST_SOCKET)
        if len(longest.encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"transfer: config: Dir {go_quote(run_dir)} is too long: socket path {go_quote(longest)} "
                             f"is {len(longest.encode())} bytes, the unix socket limit is {MAX_SOCKET_PATH}; use a "
                             f"run directory of at most {MAX_SOCKET_PATH - len(_LONGEST_SOCKET) - 1} bytes")
        if not os.path.isdir(shm_dir):
            raise ValueError(f"transfer: config: ShmDir {go_quote(shm_dir)} is not a directory")
        if peer_timeout is None or peer_timeout == 0:
            peer_timeout = DEFAULT_PEER_TIMEOUT
        if peer_timeout < 0:
            raise ValueError(f"transfer: config: PeerTimeout {go_duration(-peer_timeout)} is negative")
        zmq_host = zmq_host or DEFAULT_ZMQ_HOST
        if any(c in zmq_host for c in "/*") or (":" in zmq_host and not zmq_host.startswith("[")):
            raise ValueError(f"transfer: config: ZMQHost {go_quote(zmq_host)}: expected a host name or IP address, "
                             "e.g. 127.0.0.1, 10.0.0.5 or [::1]")
        if curve is not None:
            # curve: the cluster's CURVE pair (curve.curve_from_env): the
            # tcp sockets of zmq rooms are CURVE sockets (protocol 4.7).
            if not isinstance(curve, CurveKeys):
                raise ValueError(f"transfer: config: Curve: want a CurveKeys, not {type(curve).__name__}")
            try:
                curve.check()
            except ValueError as e:
                raise ValueError(f"transfer: config: Curve: {e}") from None
        self.name, self.run_dir, self.shm_dir, self.zmq_host = name, run_dir, os.path.abspath(shm_dir), zmq_host
        self.curve = curve
        # The CURVE pair connecting sockets present: curve; a test sets
        # another before start.
        self._client_keys = curve
        self._refused = 0  # clients the ZAP handler refused (refused); the owner counts
        self.peer_timeout = float(peer_timeout)
        self.log = logger or logging.getLogger("phased.transfer")
        self._max_sockets = max_sockets
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._state = "new"
        self._rooms: Dict[int, _Room] = {}
        self._ids = _UsedIDs()
        self._dropped = 0
        self._counters: Dict[str, BackendCounters] = {}  # by backend, under _mu
        # Generations start at a random 63-bit point, so that two runs
        # sharing a run dir never make the same socket or segment name.
        self._gen_mu = threading.Lock()
        self._next_gen = random.getrandbits(63)
        if pool_segments <= 0 or pool_bytes <= 0:
            pool_segments = pool_bytes = 0
        self._pool = Pool(self.shm_dir, name, self._new_gen, pool_segments, pool_bytes)
        self._pool_on = pool_segments > 0
        # The sender's output segments (alloc) and lend table, within the
        # pool's bounds; the receiver's mappings of segments lent to it.
        # verify_handoffs: a receiver hashes lent tensors too (5.6).
        self._outputs = H.Outputs(self.shm_dir, name, pool_bytes, pool_segments)
        self._peers = H.PeerMaps()
        self.verify_handoffs = bool(verify_handoffs)
        # Set by start.
        self._zctx: Optional[zmq.Context] = None
        self._wake_fd = -1
        self._wake_mu = threading.Lock()
        self._cmds: collections.deque = collections.deque()
        self._owner: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._owner_done = threading.Event()
        self._jobs: collections.deque = collections.deque()
        self._jobs_cv = threading.Condition(threading.Lock())
        self._quit = False
        self._maps = MapCache()
        # Tests only: called by the worker after each chunk it copied, and
        # before it marks the segments of a send lent.
        self._after_chunk: Optional[Callable[[int], None]] = None
        self._before_lend: Optional[Callable[[], None]] = None
        # Owner-thread state.
        self._socks: Dict[int, _Socks] = {}
        self._by_sock: Dict[object, tuple] = {}
        self._poller: Optional[zmq.Poller] = None
        self._zap = None  # the ZAP handler's ROUTER, with curve
        self._zap_key = curve.public_bytes if curve is not None else b""
        self._timed: set = set()
        self._mon_seq = 0

    def _new_gen(self) -> int:
        with self._gen_mu:
            self._next_gen = (self._next_gen + 1) & (2 ** 64 - 1)
            return self._next_gen

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Creates the zmq context and starts the socket owner and the
        transfer worker. It may be called once."""
        with self._mu:
            if self._state == "started":
                raise TransferError("transfer: manager already started")
            if self._state == "released":
                raise ReleasedError()
            zctx = zmq.Context()
            zap = None
            try:
                zctx.set(zmq.MAX_SOCKETS, self._socket_limit())
                if self.curve is not None:
                    zap = self._new_zap(zctx)
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            except BaseException as e:
                if zap is not None:
                    zap.close(0)
                zctx.term()
                raise TransferError(f"transfer: start: {_err_text(e)}") from e
            self._zctx = zctx
            self._poller = zmq.Poller()
            self._poller.register(self._wake_fd, zmq.POLLIN)
            if zap is not None:
                # The owner thread takes it over with the room sockets.
                self._zap = zap
                self._poller.register(zap, zmq.POLLIN)
            self._owner = threading.Thread(target=self._owner_run, name=f"phased-transfer-owner-{self.name}",
                                           daemon=True)
            self._worker = threading.Thread(target=self._work, name=f"phased-transfer-worker-{self.name}",
                                            daemon=True)
            self._owner.start()
            self._worker.start()
            self._state = "started"
        self.log.debug("transfer manager started", extra={"manager": self.name, "dir": self.run_dir,
                                                           "curve": self.curve is not None})

    @staticmethod
    def _new_zap(zctx):
        """The ZAP handler's ROUTER socket, bound in zctx before any room
        socket exists there (curve.py)."""
        s = zctx.socket(zmq.ROUTER)
        try:
            s.setsockopt(zmq.LINGER, 0)
            s.bind(C.ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            s.close(0)
            raise TransferError(f"ZAP handler: bind {C.ZAP_ENDPOINT}: {_err_text(e)}") from None
        return s

    @property
    def refused(self) -> int:
        """How many clients the ZAP handler refused since start: CURVE
        clients that presented another key than curve's (and requests it
        could not read). A client without CURVE is turned away by libzmq
        before the handler is asked, and not counted; its connection is
        closed all the same."""
        return self._refused

    def _socket_limit(self) -> int:
        if self._max_sockets > 0:
            return self._max_sockets
        try:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (OSError, ValueError):
            return 1023
        if soft == resource.RLIM_INFINITY:
            return 65535
        if soft < 1024:
            return 1023
        return min(soft, 65535)

    def close(self) -> None:
        """Release: refuses new rooms, removes every room (upstream order does
        not matter here: by id), stops the worker and the owner, terminates
        the zmq context. Leaves no thread, socket file or segment. Idempotent."""
        with self._mu:
            state = self._state
            self._state = "released"
            ids = sorted(self._rooms)
        if state != "started":
            self._pool.close()
            self._outputs.close()
            self._peers.close()
            return
        errs = []
        for rid in ids:
            try:
                self.remove(rid)
            except Exception as e:  # noqa: BLE001 - go on with the rest
                errs.append(str(e))
        with self._jobs_cv:
            self._quit = True
            self._jobs_cv.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._pool.close()
        # The worker lends no more: every output segment can go. A receiver
        # (or a phase) that maps one keeps its bytes until it lets go.
        self._outputs.close()
        self._peers.close()
        try:
            self._post(None, stop=True)
        except _OwnerStopped:
            pass
        if self._owner is not None and self._owner is not threading.current_thread():
            self._owner.join()
        with self._wake_mu:
            fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)
        if self._zctx is not None:
            self._zctx.term()
            self._zctx = None
        self.log.debug("transfer manager released", extra={"rooms_removed": len(ids), "dropped_frames": self._dropped})
        if errs:
            raise TransferError("transfer: release: " + "; ".join(errs))

    release = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- opening rooms ---------------------------------------------------

    def _check_backend(self, rid: int, backend: str, what: str) -> str:
        if backend == "":
            backend = SHM
        if backend == "cuda":
            raise TransferError(f"transfer: open {what} room {rid}: the cuda backend is not supported by the "
                                "Python SDK")
        if backend not in (SHM, ZMQ):
            raise TransferError(f"transfer: open {what} room {rid}: unknown backend {go_quote(str(backend))}")
        if rid == 0:
            raise TransferError("transfer: room id 0 is reserved")
        if not isinstance(rid, int) or rid < 0 or rid >= 2 ** 64:
            raise TransferError(f"transfer: room id {rid!r} is not a uint64")
        return backend

    def _check_open_locked(self, rid: int) -> None:
        if self._state == "new":
            raise NotStartedError()
        if self._state == "released":
            raise ReleasedError()
        msg = self._ids.check(rid)
        if msg:
            raise RoomExistsError(msg)

    def _add_room(self, r: _Room) -> None:
        with self._mu:
            self._check_open_locked(r.id)
            self._ids.add(r.id)
            self._rooms[r.id] = r

    def _spend_id(self, rid: int) -> None:
        """An open that failed before its room existed: the id stays used (3.2)."""
        with self._mu:
            if self._state == "started" and self._ids.check(rid) is None:
                self._ids.add(rid)

    def open_sender(self, room: int, backend: str = SHM) -> str:
        """Binds the sender side's room socket and returns its endpoint. The
        room is Bootstrapping until the receiver's descriptor arrives."""
        backend = self._check_backend(room, backend, "sender")
        r = _Room(room, SENDER, backend)
        if backend == SHM:
            r.endpoint = "ipc://" + os.path.join(self.run_dir, sender_socket_name(room))
        else:
            r.endpoint = f"tcp://{self.zmq_host}:*"
        self._add_room(r)
        try:
            self._call(lambda: self._o_open_sender(r))
        except BaseException as e:
            self._undo_open(room, e, f"transfer: open sender room {room}")
        with self._mu:
            ep = r.endpoint
        self.log.debug("room opened", extra={"room": room, "role": "sender", "backend": backend, "endpoint": ep})
        return ep

    def open_receiver(self, room: int, backend: str, specs: Sequence[T.Spec], peer_endpoint: str) -> None:
        """Lays out the buffers, creates the segment (shm) or private memory
        (zmq), binds the status socket, connects to the sender and sends the
        descriptor. If it fails, what it opened is removed and the id stays
        used."""
        backend = self._check_backend(room, backend, "receiver")
        pre = f"transfer: open receiver room {room}"
        try:
            try:
                F.check_endpoint(peer_endpoint)
            except ValueError as e:
                raise TransferError(f"{pre}: sender {e}") from None
            specs = list(specs)
            seen = set()
            for i, s in enumerate(specs):
                if not s.name:
                    raise TransferError(f"{pre}: input {i} has no name")
                if s.name in seen:
                    raise TransferError(f"{pre}: input {go_quote(s.name)} is declared twice")
                seen.add(s.name)
            if len(specs) > MAX_BUFFERS:
                raise TransferError(f"{pre}: {len(specs)} inputs, the limit is {MAX_BUFFERS}")
            try:
                if backend == SHM:
                    bufs, sums_at, handoffs_at, need = shm_layout(specs)
                else:
                    (bufs, need), sums_at, handoffs_at = layout(specs, 0), 0, 0
            except ValueError as e:
                raise TransferError(f"{pre}: {e}") from None
            with self._mu:
                self._check_open_locked(room)  # again in _add_room; this spares the segment
        except (RoomExistsError, NotStartedError, ReleasedError):
            raise
        except TransferError:
            self._spend_id(room)
            raise
        gen = self._new_gen()
        r = _Room(room, RECEIVER, backend)
        r.gen, r.bufs, r.sums_at, r.handoffs_at = gen, bufs, sums_at, handoffs_at if H.ATOMIC else 0
        seg_name = ""
        try:
            if backend == SHM:
                r.endpoint = "ipc://" + os.path.join(self.run_dir, receiver_socket_name(room, gen))
                seg_name = segment_name(self.name, room, gen)
                seg, reused = self._pool.get(seg_name, need)
                seg.ctrl.reset()  # a pooled segment holds the last room's progress and done,
                # and its hand-off entries, which a sender that lends nothing
                # does not overwrite.
                seg.data[handoffs_at:need] = 0
            else:
                r.endpoint = f"tcp://{self.zmq_host}:*"
                seg, reused = Segment.private(need), False
        except Exception as e:  # noqa: BLE001
            self._spend_id(room)
            raise TransferError(f"{pre}: {_fd_text(e)}") from e
        r.seg = seg
        try:
            self._add_room(r)
        except BaseException:
            seg.destroy()
            raise

        # Without atomic operations on shared memory (no libatomic) the
        # lend words could race: offer no hand-off table, take copies.
        offered = handoffs_at if H.ATOMIC else 0

        def frame(status_endpoint: str) -> bytes:
            return F.encode_descriptor(backend, room, gen, status_endpoint, seg_name, seg.size, bufs, sums_at,
                                       offered)

        try:
            self._call(lambda: self._o_open_receiver(r, peer_endpoint, frame))
        except BaseException as e:
            self._undo_open(room, e, pre)
        self.log.debug("room opened", extra={"room": room, "role": "receiver", "generation": gen,
                                             "segment": seg_name, "bytes": seg.size, "reused": reused})

    # --- status ----------------------------------------------------------

    def _undo_open(self, room: int, e: BaseException, what: str) -> None:
        """Remove what a failed open made and raise its error, a
        TransferError as it is, anything else as "what: error"."""
        try:
            self.remove(room)
        except Exception:  # noqa: BLE001 - the open's error is the one to report
            pass
        if isinstance(e, TransferError):
            raise e
        raise TransferError(f"{what}: {_fd_text(e)}") from e

    def _room_locked(self, rid: int, role: int) -> _Room:
        r = self._rooms.get(rid)
        if self._state == "new":
            raise NotStartedError()
        if r is None and self._state == "released":
            raise ReleasedError()
        if r is None:
            raise UnknownRoomError(f"transfer: unknown room {rid}")
        if r.role != role:
            raise UnknownRoomError(f"transfer: unknown room {rid}: it is a {F.ROLE_NAMES[r.role]} room")
        return r

    @staticmethod
    def _room_err(r: _Room) -> Optional[TransferError]:
        if r.removing:
            return RoomRemovedError(f"transfer: room removed: room {r.id}")
        if r.status == FAILED:
            return RoomFailedError(r.id, r.reason)
        return None

    def _notify_locked(self, r: Optional[_Room]) -> None:
        self._cond.notify_all()
        if r is not None and r.sleeping and r.ctrl is not None:
            r.ctrl.wake()

    def _set_status_locked(self, r: _Room, to: int, reason: str = "") -> bool:
        if not F.can_transition(r.status, to):
            return False
        r.status = to
        if to == FAILED:
            r.reason = reason
        self.log.debug("room status", extra={"room": r.id, "role": F.ROLE_NAMES[r.role],
                                             "status": F.status_name(to), "reason": r.reason})
        self._notify_locked(r)
        return True

    def _wait_locked(self, cancel) -> None:
        self._cond.wait(0.05 if cancel is not None else 1.0)

    def _observe_locked(self, r: _Room) -> bool:
        """Looks at a fast-path receiver room's control block once: moves the
        room to Transferring once its sender has written there, since no
        Transferring frame will say so, and returns whether the sender is
        done. Acting on that one look of done, a caller never holds a done
        room that is still WaitingForInput (which nothing would finish)."""
        if r.sums_at == 0 or r.removing or r.ctrl is None:
            return False
        done = r.ctrl.done()
        if r.status == WAITING_FOR_INPUT and (done or r.ctrl.progress() != 0):
            r.moved_by_ctrl = self._set_status_locked(r, TRANSFERRING)
        return done

    def status(self):
        """(rooms sorted by id as RoomState, dropped frames)."""
        with self._mu:
            states = []
            for r in self._rooms.values():
                self._observe_locked(r)
                states.append(RoomState(r.id, r.role, r.status, r.reason))
            dropped = self._dropped
        states.sort(key=lambda s: s.room)
        return states, dropped

    def drained(self, room: int) -> bool:
        """Whether room is a sender side whose send succeeded on the fast
        path (protocol 5.5): it ended in the receiver's control block and
        sent no frame, so nothing of it can still be queued on a socket and
        removing the side now loses nothing its receiver waits for. False
        for an unknown room and every other case."""
        with self._mu:
            r = self._rooms.get(room)
            return r is not None and r.drained

    def room_backend(self, room: int) -> str:
        """The backend of an open room; UnknownRoomError otherwise."""
        with self._mu:
            r = self._rooms.get(room)
            if r is None:
                raise UnknownRoomError(f"transfer: unknown room {room}")
            return r.backend

    def room_status(self, room: int) -> RoomState:
        with self._mu:
            r = self._rooms.get(room)
            if r is None:
                raise UnknownRoomError(f"transfer: unknown room {room}")
            self._observe_locked(r)
            return RoomState(r.id, r.role, r.status, r.reason)

    @property
    def dropped(self) -> int:
        with self._mu:
            return self._dropped

    def counters(self) -> List[BackendCounters]:
        """What the manager moved since start, per backend used, in the
        order of the backends' names (copies)."""
        with self._mu:
            return [dataclasses.replace(self._counters[b]) for b in sorted(self._counters)]

    def _counter_locked(self, backend: str) -> BackendCounters:
        c = self._counters.get(backend)
        if c is None:
            c = self._counters[backend] = BackendCounters(backend)
        return c

    def _drop(self, rid: int, why: str) -> None:
        with self._mu:
            self._dropped += 1
        self.log.debug("frame dropped", extra={"room": rid, "why": why})

    # --- receive ---------------------------------------------------------

    def receive(self, room: int, cancel: Optional[threading.Event] = None) -> List[np.ndarray]:
        """Waits until the room's Success frame arrived (or, on the fast
        path, the control block's done), verifies every tensor (spec,
        length, checksum) and returns numpy views of the buffers, in spec
        order, valid until the room is removed (and as long as they are
        referenced: the mapping goes with the last of them).
        Raises TransferError when the room fails or is removed or cancel is
        set. It may be called again after success."""
        with self._mu:
            r = self._room_locked(room, RECEIVER)
            while True:
                err = self._room_err(r)
                if err is not None:
                    raise err
                if r.status == SUCCESS:
                    arrays = self._lease_locked(r)
                    c = self._counter_locked(r.backend)
                    c.received += 1
                    c.received_bytes += sum(b.length for b in r.bufs)
                    return arrays
                if not r.verifying and (r.final is not None or (r.copying() and not _is_set(cancel))):
                    self._verify_locked(r, cancel)
                    continue
                if _is_set(cancel):
                    raise CancelledError(f"transfer: receive room {room}: cancelled")
                self._wait_locked(cancel)

    def _verify_locked(self, r: _Room, cancel) -> None:
        """Hashes the buffers with the lock released: while the sender copies,
        the blocks it reports done, sleeping on the control block between;
        once the Success frame is in, or the control block's done (then
        the checksum table stands for the frame), the rest; then moves the
        room to Success or Failed. Returns early on failure, removal or
        cancel."""
        r.verifying = True
        bufs = r.bufs
        total = sum(b.length for b in bufs)
        v, ctrl = r.verifier, r.ctrl
        mv = memoryview(r.seg.data)
        stop = lambda: r.removing  # noqa: E731
        err = None
        finished = False
        try:
            while r.final is None and r.copying() and not r.removing and not _is_set(cancel):
                seen = ctrl.seq()
                if self._observe_locked(r):
                    r.final = F.sums_of(bufs, mv[r.sums_at:])
                    r.sender_done = r.via_done = True
                    break
                limit = min(ctrl.progress(), total)
                if limit > v.pos:
                    hashed = v.pos
                    self._mu.release()
                    try:
                        v.advance(bufs, mv, limit, stop)
                    finally:
                        self._mu.acquire()
                    if v.pos > hashed:
                        continue
                    # progress stops inside a block (the SDKs publish
                    # whole blocks): sleep until the sender goes on.
                r.sleeping = True
                self._mu.release()
                try:
                    ctrl.sleep(seen, MAX_SLEEP)
                finally:
                    self._mu.acquire()
                    r.sleeping = False
            final = r.final
            lent: List[H.Taken] = []
            if final is not None and r.status == TRANSFERRING and not r.removing:
                via_done = r.via_done
                self._mu.release()
                try:
                    F.check_headers(bufs, final)
                    if r.handoffs_at != 0 and via_done:
                        # done makes the hand-off entries final: take what
                        # was lent, and hash only the other buffers.
                        lent = H.take_handoffs(self._peers, self.shm_dir, bufs, r.seg.mm, r.handoffs_at)
                        if lent:
                            v.skip = [False] * len(bufs)
                            for t in lent:
                                v.skip[t.buf] = True
                    if v.advance(bufs, mv, total, stop):
                        finished = True
                        for t in lent:
                            v.sums[t.buf] = final[t.buf].xxh3
                            if self.verify_handoffs:
                                view = t.view()
                                try:
                                    v.sums[t.buf] = T.checksum(view)
                                finally:
                                    view.release()
                        for i, b in enumerate(bufs):
                            if v.sums[i] != final[i].xxh3:
                                err = F.checksum_mismatch(i, b, v.sums[i], final[i].xxh3)
                                break
                except ValueError as e:
                    finished, err = True, str(e)
                finally:
                    if lent and (err is not None or not finished):
                        H.give_back(self._peers, lent)
                        lent = []
                    self._mu.acquire()
                if finished and err is None and via_done:
                    r.lent, r.took_lent = lent, True
                    if lent:
                        r.lent_hold = H.LentHold(self._peers, lent)
        finally:
            mv.release()
            r.verifying = False
        if not finished:
            self._notify_locked(r)
        elif err is not None:
            self._set_status_locked(r, FAILED, err)
        elif not self._set_status_locked(r, SUCCESS):
            self._notify_locked(r)

    def _lease_locked(self, r: _Room) -> List[np.ndarray]:
        seg = r.seg
        if seg is None or seg.data is None:
            raise RoomRemovedError(f"transfer: room removed: room {r.id}")
        if seg.mm is not None:
            # A root per lease: the arrays (and anything made from them)
            # keep it alive; remove() pools the segment only once every
            # root is gone.
            root = np.frombuffer(seg.mm, dtype=np.uint8)
            r.leases.append(weakref.ref(root))
        else:
            root = seg.data
        out = []
        for b in r.bufs:
            a = root[b.offset:b.offset + b.length].view(T.numpy_dtype(b.dtype)).reshape(b.shape)
            out.append(a)
        # Tensors lent to the room are views of their sender's output
        # segment, mapped read-only (so are the arrays). A root per lease
        # and segment holds the room's hand-off: the segments go back once
        # the room is removed and every root is gone.
        for t in r.lent:
            lroot = np.frombuffer(t.seg.mm, dtype=np.uint8)
            r.lent_hold.acquire()
            weakref.finalize(lroot, r.lent_hold.release)
            b = r.bufs[t.buf]
            out[t.buf] = lroot[t.offset:t.offset + t.length].view(T.numpy_dtype(b.dtype)).reshape(b.shape)
        return out

    # --- send ------------------------------------------------------------

    def send(self, room: int, outputs: Dict[str, object], cancel: Optional[threading.Event] = None) -> int:
        """Waits for the receiver's descriptor, then the transfer worker picks
        the outputs the receiver asks for (by name), checks them, sends
        Transferring, writes the bytes and sends Success with their checksums
        (on the fast path, a shm receiver that names a checksum table, no
        frame: the checksums go into the table, then the control block's
        done). Returns once Success is queued or done set, the bytes written
        into the receiver's buffers (those of the inputs it declared);
        raises TransferError otherwise (a failure also fails the room and
        tells the receiver). Outputs must stay unchanged until it returns."""
        start = time.monotonic()
        with self._mu:
            r = self._room_locked(room, SENDER)
            if r.sending:
                raise TransferError(f"transfer: send room {room}: send was already called for this room")
            r.sending = True
            while r.status == BOOTSTRAPPING and not r.removing:
                if _is_set(cancel):
                    r.sending = False
                    raise CancelledError(f"transfer: send room {room}: waiting for the receiver's descriptor: "
                                         "cancelled")
                self._wait_locked(cancel)
            err = self._room_err(r)
            if err is not None:
                raise err
        job = _Job(r, outputs, cancel)
        with self._jobs_cv:
            if self._quit:
                raise ReleasedError()
            self._jobs.append(job)
            self._jobs_cv.notify()
        while not job.done.wait(0.05):
            if _is_set(cancel) or self._quit:
                with self._mu:
                    if not job.taken:
                        job.abandoned = True
                        r.sending = False
                        if self._quit:
                            raise ReleasedError()
                        raise CancelledError(f"transfer: send room {room}: waiting for the transfer worker: "
                                             "cancelled")
        if job.error is not None:
            raise job.error
        with self._mu:
            n = sum(b.length for b in r.desc.buffers) if r.desc is not None else 0
            c = self._counter_locked(r.backend)
            c.sent += 1
            c.sent_bytes += n
            c.send_seconds += time.monotonic() - start
        return n

    # --- output memory (5.6) --------------------------------------------

    def alloc(self, spec: T.Spec) -> np.ndarray:
        """An array for spec (its dtype and shape, C order) whose bytes lie
        in a shared-memory output segment of this manager, for a phase to
        write an output into: sent through a fast-path shm room (both
        processes on this host), it is lent to the receiver instead of
        copied (docs/protocol.md section 5.6). Its bytes are not zeroed:
        write every one. Free it when done, after the send that sends it
        has returned; close unmaps every output. A spec of no bytes, or one
        beyond the pool's budget (pool_bytes, pool_segments), gets ordinary
        memory, which send copies. bfloat16 arrays are <u2, as received
        ones."""
        with self._mu:
            if self._state == "new":
                raise NotStartedError()
            if self._state == "released":
                raise ReleasedError()
        try:
            return self._outputs.alloc(spec)
        except RuntimeError:
            raise ReleasedError() from None
        except (ValueError, OSError) as e:
            raise TransferError(f"transfer: alloc {spec}: {_err_text(e)}") from None

    def written(self, arr, checksum: int) -> None:
        """Records checksum, the checksum (section 7, tensor.checksum) the
        writer computed while it wrote arr in full, an array from alloc, so
        that send lends it without reading it again; without it, send
        hashes it once. Ordinary memory is ignored; an array from alloc
        that was freed or lent already raises TransferError."""
        try:
            self._outputs.written(arr, checksum)
        except ValueError as e:
            raise TransferError(str(e)) from None

    def free(self, arr) -> None:
        """Gives back an array from alloc: its segment serves a later alloc
        once the receiver it was lent to, if any, has given it back. Other
        arrays are ignored."""
        self._outputs.free(arr)

    # --- remove ----------------------------------------------------------

    def remove(self, room: int) -> None:
        """Removes a room: a non-terminal status becomes Failed "removed",
        waiting calls raise, the worker lets go (between blocks), the owner
        closes the sockets and deletes their files, and the segment is
        unlinked (or pooled). Returns only then. Idempotent; an unknown id
        is marked used."""
        with self._mu:
            r = self._rooms.get(room)
            if r is None:
                if self._ids.check(room) is None:
                    self._ids.add(room)
                return
            if r.removing:
                while not r.gone:
                    self._cond.wait(1.0)
                return
            r.removing = True
            r.abort = True
            self._set_status_locked(r, FAILED, "removed")
            self._notify_locked(r)
            while r.busy or r.verifying:  # bounded: both check between 256 KiB blocks
                self._cond.wait(1.0)
        errs = []
        try:
            self._call(lambda: self._o_close_room(room))
        except _OwnerStopped:
            pass  # a stopped owner has closed every socket
        except Exception as e:  # noqa: BLE001
            errs.append(str(e))
        if r.seg is not None:
            try:
                self._retire(r)
            except Exception as e:  # noqa: BLE001
                errs.append(str(e))
        with self._mu:
            self._rooms.pop(room, None)
            r.gone = True
            self._cond.notify_all()
        self.log.debug("room removed", extra={"room": room, "role": F.ROLE_NAMES[r.role]})
        if errs:
            raise TransferError(f"transfer: remove room {room}: " + "; ".join(errs))

    def _retire(self, r: _Room) -> None:
        """Lets go of a receiver's segment: into the pool if the sender is
        done with it and no lease is alive, otherwise unlinked (and unmapped
        with the last view)."""
        seg, r.seg = r.seg, None
        if seg.path is None:
            seg.unmap()
            return
        with self._mu:
            # The owner has closed the status socket, so sender_done is
            # final; a fast-path sender that set done writes nothing more
            # either (read while the segment is still mapped).
            done = r.sums_at != 0 and seg.ctrl is not None and seg.ctrl.done()
            recyclable = r.sender_done or done
            untaken = done and r.handoffs_at != 0 and not r.took_lent
            hold, r.lent_hold, r.lent = r.lent_hold, None, []
        if untaken:
            H.give_back_untaken(self._peers, self.shm_dir, r.bufs, seg.mm, r.handoffs_at)
        leased = any(w() is not None for w in r.leases)
        r.leases = []
        try:
            if recyclable and not leased and self._pool_on:
                self._pool.put(seg)
            else:
                seg.destroy()
        finally:
            if hold is not None:
                hold.release()  # the room's part: the leases' arrays may hold it longer
            self._peers.sweep()

    # --- the socket owner: plumbing --------------------------------------

    def _wake(self) -> None:
        with self._wake_mu:
            if self._wake_fd >= 0:
                try:
                    os.eventfd_write(self._wake_fd, 1)
                except BlockingIOError:
                    pass

    def _post(self, fn, stop: bool = False) -> Optional[_Call]:
        if self._owner_done.is_set():
            raise _OwnerStopped()
        c = _Call(None if stop else fn)
        self._cmds.append(c)
        self._wake()
        return c

    def _await(self, c: _Call):
        while not c.done.wait(0.5):
            if self._owner_done.is_set() and not c.done.is_set():
                raise _OwnerStopped()
        if c.error is not None:
            raise c.error
        return c.result

    def _call(self, fn):
        """Runs fn on the socket owner and returns its result."""
        if self._state == "new":
            raise NotStartedError()
        return self._await(self._post(fn))

    def _owner_run(self) -> None:
        try:
            while True:
                timeout = None
                if self._timed:
                    nearest = min(self._socks[i].deadline for i in self._timed)
                    timeout = max(0, int((nearest - time.monotonic()) * 1000) + 1)
                try:
                    ready = self._poller.poll(timeout)
                except zmq.ZMQError as e:
                    if e.errno == errno.EINTR:
                        continue
                    self.log.error("socket owner stopped: poll failed", extra={"error": str(e)})
                    return
                woken = False
                for s, _ in ready:
                    if s == self._wake_fd:
                        woken = True
                        continue
                    if s is self._zap:
                        self._o_drain_zap()
                        continue
                    ref = self._by_sock.get(s)
                    if ref is None:
                        continue  # closed meanwhile
                    if ref[1]:
                        self._o_drain_monitor(ref[0], s)
                    else:
                        self._o_drain(ref[0], s)
                if self._timed:
                    self._o_check_timers()
                if woken and self._o_run_commands():
                    return
        finally:
            self._o_close_all()
            self._owner_done.set()
            while self._cmds:  # answer what raced in
                c = self._cmds.popleft()
                c.error = _OwnerStopped()
                c.done.set()

    def _o_run_commands(self) -> bool:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        while self._cmds:
            c = self._cmds.popleft()
            if c.fn is None:
                c.done.set()
                return True
            try:
                c.result = c.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                c.error = e
            c.done.set()
        return False

    def _o_socket(self, typ: int):
        s = self._zctx.socket(typ)
        s.setsockopt(zmq.LINGER, 0)
        if typ == zmq.PULL:
            s.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_SIZE)
        return s

    def _o_curve(self, endpoint: str) -> bool:
        """Whether a socket of endpoint is a CURVE socket: with keys, tcp."""
        return self.curve is not None and endpoint.startswith("tcp://")

    def _o_live(self, r: _Room) -> bool:
        with self._mu:
            return self._rooms.get(r.id) is r and not r.removing

    def _o_bind(self, r: _Room):
        s = self._o_socket(zmq.PULL)
        try:
            limit = MAX_FRAME_SIZE  # _o_socket's
            if r.backend == ZMQ and r.role == RECEIVER:
                limit = ZMQ_CHUNK
            if self._o_curve(r.endpoint):
                C.curve_server(s, self.curve)
                limit += C.CURVE_OVERHEAD
            if limit != MAX_FRAME_SIZE:
                s.setsockopt(zmq.MAXMSGSIZE, limit)
            s.bind(r.endpoint)
            if r.endpoint.startswith("tcp://"):
                ep = s.getsockopt(zmq.LAST_ENDPOINT).decode()
                with self._mu:
                    r.endpoint = ep
        except zmq.ZMQError as e:
            s.close(0)
            raise TransferError(f"transfer: open {F.ROLE_NAMES[r.role]} room {r.id}: bind {r.endpoint}: "
                                f"{_fd_text(e)}") from None
        return s

    def _o_register(self, rid: int, rs: _Socks) -> None:
        self._socks[rid] = rs
        self._o_watch(rs.pull, rid, False)

    def _o_watch(self, s, rid: int, monitor: bool) -> None:
        self._poller.register(s, zmq.POLLIN)
        self._by_sock[s] = (rid, monitor)

    def _o_unwatch(self, s) -> None:
        if self._by_sock.pop(s, None) is not None:
            self._poller.unregister(s)

    def _o_connect(self, rid: int, rs: _Socks, endpoint: str) -> None:
        """A PUSH to endpoint and the PAIR that receives its monitor's
        connect and disconnect events, registered with the room (closed by
        _o_close_room on any failure)."""
        s = self._o_socket(zmq.PUSH)
        events = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        try:
            if rs.backend == ZMQ and rs.role == SENDER:
                s.setsockopt(zmq.SNDHWM, 0)  # a send queues all its data
            if endpoint.startswith("tcp://"):
                # A failed handshake says why in the peer timeout's reason:
                # CURVE on one end only, or another key.
                events |= C.HANDSHAKE_FAILED
                if self.curve is not None:
                    C.curve_client(s, self.curve.public, self._client_keys)
                    rs.curve = True
                    events |= zmq.EVENT_HANDSHAKE_SUCCEEDED
            self._mon_seq += 1
            addr = f"inproc://phased-transfer-monitor-{id(self)}-{self._mon_seq}"
            s.monitor(addr, events)
        except zmq.ZMQError:
            s.close(0)
            raise
        try:
            mon = self._o_socket(zmq.PAIR)
        except zmq.ZMQError:
            s.disable_monitor()
            s.close(0)
            raise
        try:
            mon.connect(addr)
        except zmq.ZMQError:
            s.disable_monitor()
            mon.close(0)
            s.close(0)
            raise
        rs.push, rs.mon, rs.peer = s, mon, endpoint
        self._o_watch(mon, rid, True)
        s.connect(endpoint)

    def _o_open_sender(self, r: _Room) -> None:
        if not self._o_live(r):
            raise RoomRemovedError(f"transfer: room removed: room {r.id}")
        pull = self._o_bind(r)
        self._o_register(r.id, _Socks(SENDER, r.backend, pull, _socket_path(r.endpoint)))

    def _o_open_receiver(self, r: _Room, sender: str, frame) -> None:
        if not self._o_live(r):
            raise RoomRemovedError(f"transfer: room removed: room {r.id}")
        pull = self._o_bind(r)
        rs = _Socks(RECEIVER, r.backend, pull, _socket_path(r.endpoint))
        self._o_register(r.id, rs)
        self._o_connect(r.id, rs, sender)
        try:
            rs.push.send(frame(r.endpoint), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise TransferError(f"transfer: open receiver room {r.id}: send descriptor to {sender}: "
                                f"{_err_text(e)}") from None
        with self._mu:
            self._set_status_locked(r, WAITING_FOR_INPUT)

    def _o_send(self, rid: int, frame: bytes) -> None:
        rs = self._socks.get(rid)
        if rs is None or rs.push is None:
            raise TransferError(f"room {rid} has no status connection")
        try:
            rs.push.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise TransferError(f"send status frame: {_err_text(e)}") from None

    def _o_stream(self, rid: int, gen: int, parts) -> None:
        rs = self._socks.get(rid)
        if rs is None or rs.push is None:
            raise TransferError(f"room {rid} has no connection to its receiver")
        for off, b in parts:
            try:
                rs.push.send(F.encode_data_header(rid, gen, off), zmq.SNDMORE | zmq.NOBLOCK)
                rs.push.send(b, zmq.NOBLOCK, copy=True)
            except zmq.ZMQError as e:
                raise TransferError(f"send data: {_err_text(e)}") from None

    def _o_close_room(self, rid: int) -> None:
        """Closes a room's sockets and deletes its socket file."""
        rs = self._socks.pop(rid, None)
        if rs is None:
            return
        self._timed.discard(rid)
        errs = []
        self._o_unwatch(rs.pull)
        rs.pull.close(0)
        if rs.push is not None:
            if rs.mon is not None:
                # Stop the monitor first: libzmq's I/O thread sends events to
                # it with a blocking send.
                try:
                    rs.push.disable_monitor()
                except zmq.ZMQError as e:
                    errs.append(f"stop monitor: {_err_text(e)}")
            rs.push.close(0)
        if rs.mon is not None:
            self._o_unwatch(rs.mon)
            rs.mon.close(0)
        if rs.path:
            try:
                os.unlink(rs.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                errs.append(f"remove socket file: {os_error_text(e)}")
        if errs:
            raise TransferError("; ".join(errs))

    def _o_close_all(self) -> None:
        for rid in list(self._socks):
            try:
                self._o_close_room(rid)
            except Exception as e:  # noqa: BLE001
                self.log.error("close room sockets", extra={"room": rid, "error": str(e)})
        if self._zap is not None:  # last: no CURVE server socket is left to ask it
            zap, self._zap = self._zap, None
            try:
                self._poller.unregister(zap)
            except KeyError:
                pass
            zap.close(0)

    # --- the socket owner: the ZAP handler (curve.py) ---------------------

    def _o_drain_zap(self) -> None:
        """Answers up to MAX_BURST ZAP requests (zmq_poll is level-triggered:
        the rest wait for the next poll). A request without the envelope
        that libzmq puts before it has no one to answer and is dropped."""
        for _ in range(MAX_BURST):
            try:
                parts = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                self.log.error("receive a ZAP request", extra={"error": str(e)})
                return
            reply, code, why, address = C.zap_reply(parts, self._zap_key)
            if code != 200:
                self._o_refuse(code, why, address)
            if reply is None:
                continue
            try:
                self._zap.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError as e:
                self.log.debug("answer a ZAP request", extra={"error": str(e)})

    def _o_refuse(self, code: int, why: str, address: str) -> None:
        """Counts a refused (400) or unreadable (500) ZAP request, and logs
        it at debug, less and less often: a peer that knocks again and
        again does not fill the log."""
        self._refused += 1
        n = self._refused
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
            self.log.debug("CURVE client refused", extra={"status": code, "reason": why, "address": address,
                                                          "refused_so_far": n})

    # --- the socket owner: frames ----------------------------------------

    def _o_drain(self, rid: int, s) -> None:
        rs = self._socks.get(rid)
        if rs is None:
            return
        for _ in range(MAX_BURST):
            try:
                b = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                self.log.error("receive", extra={"room": rid, "error": str(e)})
                return
            more = s.getsockopt(zmq.RCVMORE)
            if more and rs.role == RECEIVER:
                self._o_handle_data(rid, s, b)
            elif more:
                self._o_discard(s)
                self._drop(rid, "a message of several parts on a room socket")
            elif rs.role == SENDER:
                self._o_handle_descriptor(rid, b)
            else:
                self._o_handle_status(rid, b)

    @staticmethod
    def _o_discard(s) -> None:
        while s.getsockopt(zmq.RCVMORE):
            try:
                s.recv(zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                return

    def _o_handle_descriptor(self, rid: int, b: bytes) -> None:
        pd, why = F.decode_descriptor(b, rid)
        if pd is None:
            self._drop(rid, why)
            return
        with self._mu:
            r = self._rooms.get(rid)
            expected = r is not None and not r.removing and r.status == BOOTSTRAPPING
        if not expected:
            self._drop(rid, "unexpected descriptor (duplicate, or the room is closing)")
            return
        d, verr = None, None
        try:
            d = F.parse_descriptor(pd)
        except F.DescriptorError as e:
            verr = str(e)
        rs = self._socks[rid]
        try:
            F.check_endpoint(pd.status_endpoint)
            endpoint_ok = True
        except ValueError:
            endpoint_ok = False
        if endpoint_ok:
            try:
                self._o_connect(rid, rs, pd.status_endpoint)
            except zmq.ZMQError as e:
                if verr is None:
                    verr = f"descriptor: status endpoint: {_fd_text(e)}"
        with self._mu:
            if verr is None:
                r.desc = d
                self._set_status_locked(r, WAITING_FOR_INPUT)
            else:
                self._set_status_locked(r, FAILED, verr)
        if verr is not None and rs.push is not None:
            # Tell the receiver why, so that its receive fails now.
            try:
                self._o_send(rid, F.encode_status(rid, pd.generation, FAILED, verr))
            except Exception as e:  # noqa: BLE001
                self.log.warning("sync Failed to the receiver", extra={"room": rid, "error": str(e)})

    def _o_handle_status(self, rid: int, b: bytes) -> None:
        f, why = F.decode_status(b, rid)
        if f is None:
            self._drop(rid, why)
            return
        st = f.status
        drop = None
        with self._mu:
            r = self._rooms.get(rid)
            if r is None or r.removing:
                drop = "status frame for a room that is closing"
            elif f.generation != r.gen:
                drop = f"status frame of generation {f.generation}, the room has {r.gen}"
            elif st == TRANSFERRING and F.can_transition(r.status, TRANSFERRING):
                self._set_status_locked(r, TRANSFERRING)
            elif st == TRANSFERRING and r.status == TRANSFERRING and r.moved_by_ctrl:
                # The control block told first (a sender that publishes
                # progress but sends frames): this frame is not a duplicate,
                # the next one is.
                r.moved_by_ctrl = False
            elif st == SUCCESS and r.status == TRANSFERRING and r.final is None:
                # Success only records the tensors; receive moves the room to
                # Success once it has verified them.
                r.final = F.headers_from_proto(f.tensors)
                r.sender_done = True
                self._notify_locked(r)
            elif st == FAILED and F.can_transition(r.status, FAILED):
                r.sender_done = True
                self._set_status_locked(r, FAILED, F.peer_failed_reason(f.reason))
            else:
                drop = f"status frame {F.status_name(st)} while the room is {F.status_name(r.status)}"
        if drop is not None:
            self._drop(rid, drop)

    def _o_handle_data(self, rid: int, s, head: bytes) -> None:
        """A zmq room's data message whose header was read: the second part
        goes into the buffer holding the header's offset, and must fit."""
        h = F.parse_data_header(head)
        why, dst, r = None, None, None
        with self._mu:
            r = self._rooms.get(rid)
            if h is None:
                why = "a message of several parts that is not data"
            elif h[0] != rid:
                why = f"data for room {h[0]}"
            elif r is None or r.removing:
                why = "data for a room that is closing"
            elif r.backend != ZMQ:
                why = "data on a shm room"
            elif h[1] != r.gen:
                why = f"data of generation {h[1]}, the room has {r.gen}"
            elif r.status != TRANSFERRING:
                why = f"data while the room is {F.status_name(r.status)}"
            elif r.final is not None or r.verifying or r.sender_done:
                why = "data after the sender's Success"
            else:
                dst = F.locate_data(r.bufs, h[2])
                if dst is None:
                    why = f"data at offset {h[2]}, in no buffer"
        if dst is None:
            self._o_discard(s)
            self._drop(rid, why)
            return
        # The room stays open while the owner is here (remove closes its
        # sockets through the owner first), so its memory stays.
        fail = None
        try:
            part = s.recv(zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as e:
            part, fail = None, f"receive data: {_err_text(e)}"
        if part is not None:
            buf = part.buffer
            n, (start, end) = len(buf), dst
            if n > end - start:
                fail = (f"a data message of {n} bytes at offset {start} overflows its buffer "
                        f"({end - start} bytes left)")
            elif n:
                r.seg.data[start:start + n] = np.frombuffer(buf, dtype=np.uint8)
        if fail is None and s.getsockopt(zmq.RCVMORE):
            fail = "a data message of more than two parts"
        self._o_discard(s)
        if fail is not None:
            with self._mu:
                r = self._rooms.get(rid)
                if r is not None:
                    self._set_status_locked(r, FAILED, fail)

    # --- the socket owner: peers -----------------------------------------

    def _o_drain_monitor(self, rid: int, s) -> None:
        rs = self._socks.get(rid)
        for _ in range(MAX_BURST):
            try:
                parts = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                self.log.error("receive monitor event", extra={"room": rid, "error": str(e)})
                return
            if rs is None or len(parts) < 1 or len(parts[0]) < 2:
                continue
            event = int.from_bytes(parts[0][:2], "little")
            value = int.from_bytes(parts[0][2:6], "little")
            if event & C.HANDSHAKE_FAILED:
                # A disconnect follows, and libzmq may try again: said once.
                why = C.handshake_failure(event, value, rs.curve)
                if why != rs.handshake:
                    rs.handshake = why
                    self.log.debug("handshake failed", extra={"room": rid, "peer": rs.peer, "why": why})
                continue
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                rs.handshake = ""
                event = zmq.EVENT_CONNECTED
            elif event == zmq.EVENT_CONNECTED and rs.curve:
                continue  # TCP is up, CURVE is not yet
            if event == zmq.EVENT_CONNECTED:
                rs.deadline = None
                self._timed.discard(rid)
            elif event == zmq.EVENT_DISCONNECTED and rs.deadline is None and self._needs_peer(rid):
                self.log.debug("peer disconnected", extra={"room": rid, "peer": rs.peer})
                rs.deadline = time.monotonic() + self.peer_timeout
                self._timed.add(rid)

    def _needs_peer(self, rid: int) -> bool:
        with self._mu:
            r = self._rooms.get(rid)
            return (r is not None and not r.removing and not F.terminal(r.status) and r.final is None
                    and not r.fast_done())

    def _o_check_timers(self) -> None:
        now = time.monotonic()
        for rid in [i for i in self._timed if self._socks[i].deadline <= now]:
            rs = self._socks[rid]
            rs.deadline = None
            self._timed.discard(rid)
            with self._mu:
                r = self._rooms.get(rid)
                if r is None or r.removing or F.terminal(r.status) or r.final is not None or r.fast_done():
                    continue
                peer = "sender" if rs.role == RECEIVER else "receiver"
                reason = (f"peer timeout: the {peer} at {rs.peer} disconnected and did not come back within "
                          f"{go_duration(self.peer_timeout)} (PeerTimeout)")
                if rs.handshake:
                    reason = (f"peer timeout: the handshake with the {peer} at {rs.peer} failed ({rs.handshake}) "
                              f"and no connection came up within {go_duration(self.peer_timeout)} (PeerTimeout)")
                r.abort = True  # a copy into a vanished receiver stops between blocks
                self._set_status_locked(r, FAILED, reason)

    # --- the transfer worker ---------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                with self._jobs_cv:
                    while not self._jobs and not self._quit:
                        self._jobs_cv.wait()
                    if not self._jobs:
                        return
                    job = self._jobs.popleft()
                with self._mu:
                    if job.abandoned:
                        continue
                    job.taken = True
                try:
                    self._transfer(job)
                except BaseException as e:  # noqa: BLE001 - never let the worker die
                    self.log.error("transfer worker", extra={"room": job.r.id, "error": repr(e)})
                    job.error = job.error or TransferError(f"transfer: send room {job.r.id}: {e}")
                finally:
                    job.done.set()
        finally:
            # Answer what is left, then let go of the receivers' segments.
            with self._jobs_cv:
                left, self._jobs = list(self._jobs), collections.deque()
            for job in left:
                job.error = ReleasedError()
                job.done.set()
            self._maps.close()

    def _transfer(self, job: _Job) -> None:
        r = job.r
        with self._mu:
            err = self._room_err(r)
            if err is not None:
                job.error = err
                return
            r.busy = True
            d = r.desc
        hs, reason = None, None
        try:
            if d.backend != r.backend:
                reason = f"the receiver's descriptor is for the {d.backend} backend, the room is {r.backend}"
            elif r.backend == ZMQ:
                hs = self._stream_in(job, d)
            else:
                hs = self._copy_in(job, d)
        except _Aborted:
            reason = "aborted: the room is being removed"
        except (ValueError, TransferError, OSError) as e:
            reason = str(e) if not isinstance(e, OSError) else _err_text(e)
        except Exception as e:  # noqa: BLE001
            reason = f"{type(e).__name__}: {e}"
        job.error = self._finish(job, d, hs, reason)

    def _finish(self, job: _Job, d: Descriptor, hs, reason: Optional[str]) -> Optional[TransferError]:
        """Syncs Success (or Failed with the reason), sets the room's status,
        lets go of the room; returns the send's error. On the fast path the
        control block told the receiver already: no Success frame."""
        r = job.r
        try:
            if reason is None and not d.fast:
                try:
                    self._call(lambda: self._o_send(r.id, F.encode_status(r.id, d.generation, SUCCESS, "", hs)))
                except (TransferError, _OwnerStopped) as e:
                    reason = f"sync Success: {str(e) or 'the socket owner has stopped'}"
            with self._mu:
                if r.removing:
                    return RoomRemovedError(f"transfer: room removed: room {r.id}")
                if r.status == FAILED:  # failed meanwhile (its peer vanished)
                    return RoomFailedError(r.id, r.reason)
                if reason is None:
                    self._set_status_locked(r, SUCCESS)
                    r.drained = d.fast
                    return None
                self._set_status_locked(r, FAILED, reason)
            try:
                self._call(lambda: self._o_send(r.id, F.encode_status(r.id, d.generation, FAILED, reason)))
            except Exception as e:  # noqa: BLE001
                self.log.warning("sync Failed to the receiver", extra={"room": r.id, "error": str(e)})
            return RoomFailedError(r.id, reason)
        finally:
            with self._mu:
                r.busy = False
                self._notify_locked(r)

    def _to_transferring(self, r: _Room) -> None:
        """Moves a sender room to Transferring, unless it is being removed
        or has failed (_Aborted)."""
        with self._mu:
            ok = not r.removing and self._set_status_locked(r, TRANSFERRING)
        if not ok:
            raise _Aborted()

    def _post_transferring(self, r: _Room, d: Descriptor) -> _Call:
        """Moves the room to Transferring and hands the frame to the owner
        without waiting; _await the result before Success."""
        self._to_transferring(r)
        frame = F.encode_status(r.id, d.generation, TRANSFERRING)
        try:
            return self._post(lambda: self._o_send(r.id, frame))
        except _OwnerStopped:
            raise TransferError("sync Transferring: the socket owner has stopped") from None

    def _await_transferring(self, c: _Call) -> None:
        try:
            self._await(c)
        except _OwnerStopped:
            raise TransferError("sync Transferring: the socket owner has stopped") from None
        except TransferError as e:
            raise TransferError(f"sync Transferring: {e}") from None

    def _check_stop(self, job: _Job) -> None:
        if job.r.abort:
            raise _Aborted()
        if _is_set(job.cancel):
            raise TransferError("send cancelled")

    def _copy_in(self, job: _Job, d: Descriptor) -> List[Header]:
        """Maps the receiver's segment, syncs Transferring, copies each tensor
        into its buffer one checksum block at a time (hashing the block while
        it is in the cache, publishing progress in the control block), and
        returns the headers for Success. On the fast path (the descriptor
        names a checksum table, 5.5) no frame is sent: the checksums go into
        the table and the control block's done ends the hop. Outputs from
        alloc are lent, not copied, where the receiver offers a hand-off
        table (5.6)."""
        r = job.r
        tensors = F.select_tensors(job.outputs, d.buffers)
        mm, fd, done = self._maps.get(self.shm_dir, d.segment, d.segment_size)
        ctrl = Ctrl(mm)
        dst = np.frombuffer(mm, dtype=np.uint8)
        dst_addr = dst.ctypes.data
        try:
            # The receiver learns the progress from the control block. On
            # the fast path it learns the end there too; else the owner
            # sends Transferring while the worker copies, and it must have
            # gone out before Success.
            if d.fast:
                self._to_transferring(r)
                sent = None
            else:
                sent = self._post_transferring(r, d)
            # Their entries are written first; the copied tensors then
            # report no progress (a quiet control block), so that the
            # receiver hashes nothing before done tells it which buffers
            # are lent.
            lendable = self._outputs.lendable(tensors) if d.handoff_offset and H.ATOMIC else None
            quiet = lendable is not None
            lent_hs: Dict[int, Header] = {}
            words: Dict[int, int] = {}
            if lendable is not None:
                self._check_stop(job)
                if os.fstat(fd).st_size < d.segment_size or d.segment_size > len(mm):
                    raise TransferError("send: hand-off table: the receiver's segment was truncated")
                for i, s in enumerate(lendable):
                    if s is None:
                        continue
                    b = d.buffers[i]
                    words[i] = self._outputs.next_word()
                    lent_hs[i] = Header(b.name, b.dtype, b.shape, b.length, self._outputs.checksum(s, tensors[i]))
                    H.put_handoff(mm, d.handoff_offset + F.HANDOFF_ENTRY * i, words[i], 0, s.seg.size, s.seg.name)
            hs = []
            copied = 0
            h3 = xxhash.xxh3_64_intdigest
            for i, (arr, b) in enumerate(zip(tensors, d.buffers)):
                if i in lent_hs:
                    copied += b.length
                    hs.append(lent_hs[i])
                    continue
                src = F.as_bytes(arr)
                n, base = b.length, b.offset
                # On the fast path the last bytes' progress and wake-up are finish's.
                hold = d.fast and i == len(tensors) - 1
                if len(src) != n or base + n > d.segment_size or d.segment_size > len(mm):
                    raise TransferError(f"send: tensor {i} {go_quote(b.name)}: out of bounds")  # cannot happen
                src_addr = arr.ctypes.data
                h = 0
                try:
                    for off in range(0, n, COPY_CHUNK):
                        self._check_stop(job)
                        # A receiver that shrinks its segment would make the
                        # copy fault (SIGBUS): look before every chunk.
                        if os.fstat(fd).st_size < d.segment_size:
                            raise TransferError("the receiver's segment was truncated")
                        end = min(off + COPY_CHUNK, n)
                        # In bounds: the descriptor's buffers lie in the
                        # segment (4.3), and src holds exactly n bytes.
                        _memmove(dst_addr + base + off, src_addr + off, end - off)
                        # Hash the chunk's checksum blocks while they are in the cache.
                        for k in range(off, end, CHECKSUM_BLOCK):
                            h = h3(src[k:min(k + CHECKSUM_BLOCK, end)], seed=h)
                        if not quiet and not (hold and end == n):
                            ctrl.publish(copied + end)
                        if self._after_chunk is not None:
                            self._after_chunk(r.id)
                except (TransferError, _Aborted) as e:
                    if isinstance(e, _Aborted):
                        raise
                    raise TransferError(f"send: tensor {i} {go_quote(b.name)}: {e}") from None
                if n == 0:
                    h = EMPTY_SUM
                    if not hold and not quiet:
                        ctrl.publish(copied)
                copied += n
                hs.append(Header(b.name, b.dtype, b.shape, n, h))
            if d.fast:
                self._put_sums(job, d, mm, fd, hs)
                if lent_hs:
                    if self._before_lend is not None:
                        self._before_lend()
                    self._lend(lendable, words, d, fd)
                ctrl.finish(copied)
            else:
                self._await_transferring(sent)
            return hs
        finally:
            ctrl.close()
            del dst
            done()

    def _lend(self, segs, words: Dict[int, int], d: Descriptor, fd: int) -> None:
        """Marks the segments lent to the room's receiver, before done makes
        the hand-off entries visible. Each lend keeps a duplicate of fd,
        the receiver's segment, so that the sender sees it unlinked, and
        the receiver's pid from its segment's name."""
        owner = H.segment_owner(d.segment)
        pid = H.process_pid(owner) if owner else 0
        for i, s in enumerate(segs):
            if s is None:
                continue
            try:
                peer = os.dup(fd)  # close-on-exec, as Python's descriptors are
            except OSError:
                peer = -1  # the sender then relies on the receiver's process
            self._outputs.lend(s, words[i], pid, peer)

    def _put_sums(self, job: _Job, d: Descriptor, mm, fd: int, hs: Sequence[Header]) -> None:
        """Writes the fast path's checksum table: one little-endian uint64
        per buffer, in descriptor order, at the descriptor's offset (in
        the segment: 4.3 rule 8)."""
        self._check_stop(job)
        if os.fstat(fd).st_size < d.segment_size:
            raise TransferError("send: checksum table: the receiver's segment was truncated")
        struct.pack_into(f"<{len(hs)}Q", mm, d.checksum_offset, *(h.xxh3 for h in hs))

    def _stream_in(self, job: _Job, d: Descriptor) -> List[Header]:
        """zmq: checksums the tensors, syncs Transferring, and has the owner
        stream them to the receiver, one window per command, on the same
        connection, so that they arrive between Transferring and Success."""
        r = job.r
        tensors = F.select_tensors(job.outputs, d.buffers)
        hs = []
        for arr, b in zip(tensors, d.buffers):
            self._check_stop(job)
            hs.append(Header(b.name, b.dtype, b.shape, b.length, T.checksum(F.as_bytes(arr))))
        self._await_transferring(self._post_transferring(r, d))
        window, queued = [], 0

        def flush():
            nonlocal window, queued
            self._check_stop(job)
            parts, window, queued = window, [], 0
            try:
                self._call(lambda: self._o_stream(r.id, d.generation, parts))
            except _OwnerStopped:
                raise TransferError("the socket owner has stopped") from None

        for arr, b in zip(tensors, d.buffers):
            src = F.as_bytes(arr)
            for off in range(0, len(src), ZMQ_CHUNK):
                end = min(off + ZMQ_CHUNK, len(src))
                window.append((b.offset + off, src[off:end]))
                queued += end - off
                if queued >= ZMQ_WINDOW:
                    flush()
        flush()
        return hs


def _socket_path(endpoint: str) -> str:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
