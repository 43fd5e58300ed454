"""Frames on the room sockets: descriptors, status frames and zmq data
headers, and the checks every frame from the network goes through
(docs/protocol.md sections 3.3, 4.2, 4.3, 4.7). Reasons are worded as the Go
reference (sdk/transfer/frame.go) words them; they end up in request
failures.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import tensor as T
from .._proto.phasedv1 import common_pb2, transfer_pb2

# --- constants (protocol section 12) ---------------------------------------

WIRE_VERSION = 1
MAX_FRAME_SIZE = 1 << 20  # ZMQ_MAXMSGSIZE of every PULL socket
MAX_BUFFERS = 4096
MAX_ENDPOINT_LEN = 512
MAX_REASON_LEN = 1024
CTRL_SIZE = 64
ALIGNMENT = 64
MAX_SEGMENT_SIZE = 1 << 44
DATA_MAGIC = 0x31444850  # "PHD1" little-endian
DATA_HEADER_SIZE = 28
ZMQ_CHUNK = 4 << 20  # most bytes in one data part; MAXMSGSIZE of a zmq receiver
CHECKSUM_BLOCK = T.CHECKSUM_BLOCK
CUDA_HANDLE_SIZE = 64
HANDOFF_ENTRY = 128  # one entry of a receiver's hand-off table (5.6)
MAX_USED_IDS = 4096
MAX_SLEEP = 0.1  # longest futex wait of a receiver, seconds

# --- statuses, roles, backends (3.3, 3.4) ------------------------------------

FAILED = common_pb2.TRANSFER_STATUS_FAILED  # 1
BOOTSTRAPPING = common_pb2.TRANSFER_STATUS_BOOTSTRAPPING  # 2
WAITING_FOR_INPUT = common_pb2.TRANSFER_STATUS_WAITING_FOR_INPUT  # 3
TRANSFERRING = common_pb2.TRANSFER_STATUS_TRANSFERRING  # 4
SUCCESS = common_pb2.TRANSFER_STATUS_SUCCESS  # 5

STATUS_NAMES = {FAILED: "Failed", BOOTSTRAPPING: "Bootstrapping", WAITING_FOR_INPUT: "WaitingForInput",
                TRANSFERRING: "Transferring", SUCCESS: "Success"}

SENDER, RECEIVER = 1, 2
ROLE_NAMES = {SENDER: "sender", RECEIVER: "receiver"}

SHM, ZMQ, CUDA = "shm", "zmq", "cuda"
BACKENDS = (SHM, ZMQ, CUDA)

assert (FAILED, BOOTSTRAPPING, WAITING_FOR_INPUT, TRANSFERRING, SUCCESS) == (1, 2, 3, 4, 5)


def status_name(st: int) -> str:
    return STATUS_NAMES.get(st, f"Status({st})")


def terminal(st: int) -> bool:
    return st in (SUCCESS, FAILED)


def can_transition(frm: int, to: int) -> bool:
    """One step forward, or any non-terminal status to Failed (3.3)."""
    if frm not in STATUS_NAMES or to not in STATUS_NAMES or terminal(frm):
        return False
    return to == FAILED or to == frm + 1


def parse_backend(s: str) -> str:
    if s == "":
        return SHM
    if s in BACKENDS:
        return s
    raise ValueError(f"unknown transfer backend {go_quote(s)} (known: shm, zmq, cuda)")


# --- Go-like formatting -------------------------------------------------------

def go_quote(s: str) -> str:
    """s quoted as Go's %q would, for the reasons' sake."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_list(xs: Sequence) -> str:
    return "[" + " ".join(str(x) for x in xs) + "]"


def dtype_str(dtype: int) -> str:
    return T.DTYPES[dtype][0] if dtype in T.DTYPES else f"dtype({dtype})"


def spec_str(name: str, dtype: int, shape: Sequence[int]) -> str:
    """A spec as Go prints it: x:float32[4 4]."""
    return f"{name}:{dtype_str(dtype)}{go_list(shape)}"


def truncate(s: str, n: int) -> str:
    """s cut to n bytes (on a character boundary) plus "...", if longer."""
    b = s.encode("utf-8", "replace")
    if len(b) <= n:
        return s
    return b[:n].decode("utf-8", "ignore") + "..."


def spec_nbytes(name: str, dtype: int, shape: Sequence[int]) -> int:
    """The byte size of a spec, or ValueError worded as Go's Spec.NumBytes."""
    return T.nbytes(dtype, shape, name)


# --- buffers and descriptors ---------------------------------------------------

@dataclass(frozen=True)
class Buffer:
    """Where one tensor lives in a segment (or a zmq room's private memory)."""
    name: str
    dtype: int
    shape: Tuple[int, ...]
    offset: int
    length: int

    def spec_str(self) -> str:
        return spec_str(self.name, self.dtype, self.shape)


@dataclass
class Descriptor:
    """A validated phased.v1.Descriptor."""
    room: int
    backend: str
    generation: int
    status_endpoint: str
    segment: str
    segment_size: int
    buffers: List[Buffer]
    # Where a shm receiver takes the checksums through the segment (the
    # fast path, section 5.5); 0: through the Success frame.
    checksum_offset: int = 0
    # Where a fast-path receiver offers its hand-off table (5.6); 0: every
    # tensor is copied.
    handoff_offset: int = 0

    @property
    def fast(self) -> bool:
        """Whether the receiver takes the fast path."""
        return self.checksum_offset != 0


@dataclass(frozen=True)
class Header:
    """One TensorHeader of a Success frame."""
    name: str
    dtype: int
    shape: Tuple[int, ...]
    length: int
    xxh3: int


class DescriptorError(ValueError):
    """A descriptor that fails 4.3; str() is the room's reason."""


SEGMENT_NAME_PATTERN = "^phased-[A-Za-z0-9_.-]+$"
_SEGMENT_NAME = re.compile(r"phased-[A-Za-z0-9_.-]+")


def valid_segment_name(name: str) -> bool:
    # fullmatch: Python's $ would accept a trailing newline.
    return len(name) <= 255 and _SEGMENT_NAME.fullmatch(name) is not None


def check_endpoint(ep: str) -> None:
    """The endpoints a peer may ask us to connect to (4.3 rule 1)."""
    n = len(ep.encode("utf-8", "surrogatepass"))
    if n > MAX_ENDPOINT_LEN:
        raise ValueError(f"endpoint is {n} bytes, the limit is {MAX_ENDPOINT_LEN}")
    if "\x00" in ep:
        raise ValueError(f"endpoint {go_quote(ep)} contains a NUL byte")
    for prefix in ("ipc://", "tcp://"):
        if ep.startswith(prefix) and len(ep) > len(prefix):
            return
    raise ValueError(f"endpoint {go_quote(ep)}: want ipc://PATH or tcp://HOST:PORT")


def decode_descriptor(b: bytes, room: int):
    """Decodes a frame from a sender's room socket. Returns (pd, None), or
    (None, why) when the frame is to be dropped (4.5)."""
    try:
        pd = transfer_pb2.Descriptor.FromString(b)
    except Exception:  # noqa: BLE001 - any decode failure drops the frame
        return None, "undecodable descriptor"
    if pd.version != WIRE_VERSION:
        return None, f"descriptor version {pd.version}"
    if pd.room != room:
        return None, f"descriptor names room {pd.room}"
    return pd, None


def parse_descriptor(pd) -> Descriptor:
    """Validates a decoded descriptor (4.3 rules 1-10); raises DescriptorError."""
    try:
        check_endpoint(pd.status_endpoint)
    except ValueError as e:
        raise DescriptorError(f"descriptor: status {e}") from None
    try:
        backend = parse_backend(pd.backend)
    except ValueError as e:
        raise DescriptorError(f"descriptor: {e}") from None
    name = pd.segment
    handle = len(pd.cuda_ipc_handle)
    if backend != SHM and name != "":
        raise DescriptorError(f"descriptor: a {backend} descriptor names segment {go_quote(name)}; it must name none")
    if backend != CUDA and handle != 0:
        raise DescriptorError(f"descriptor: a {backend} descriptor carries a CUDA IPC handle; only a cuda one may")
    if backend == CUDA and handle != CUDA_HANDLE_SIZE:
        raise DescriptorError(f"descriptor: the CUDA IPC handle is {handle} bytes, want {CUDA_HANDLE_SIZE}")
    if backend == SHM:
        if not valid_segment_name(name):
            raise DescriptorError(f"descriptor: bad segment name {go_quote(name)}: want {SEGMENT_NAME_PATTERN}")
        suffix = f"-{pd.room}-{pd.generation}"
        if not name.endswith(suffix):
            raise DescriptorError(
                f"descriptor: segment {go_quote(name)} is not the segment of room {pd.room} generation "
                f"{pd.generation} (want a name ending in {go_quote(suffix)})")
    size = pd.segment_size
    if size < CTRL_SIZE or size > MAX_SEGMENT_SIZE:
        raise DescriptorError(f"descriptor: segment size {size} is out of range ({CTRL_SIZE}..{MAX_SEGMENT_SIZE})")
    if len(pd.buffers) > MAX_BUFFERS:
        raise DescriptorError(f"descriptor: {len(pd.buffers)} buffers, the limit is {MAX_BUFFERS}")
    bufs: List[Buffer] = []
    names = set()
    for i, pb in enumerate(pd.buffers):
        bname = pb.name
        if bname == "":
            raise DescriptorError(f"descriptor: buffer {i} has no name")
        if bname in names:
            raise DescriptorError(f"descriptor: two buffers are named {go_quote(bname)}")
        names.add(bname)
        shape = tuple(pb.shape)
        try:
            n = spec_nbytes(bname, pb.dtype, shape)
        except ValueError as e:
            raise DescriptorError(f"descriptor: buffer {i} {go_quote(bname)}: {e}") from None
        off, length = pb.offset, pb.length
        if n != length:
            raise DescriptorError(f"descriptor: buffer {i} {go_quote(bname)}: length {length}, but "
                                  f"{spec_str(bname, pb.dtype, shape)} is {n} bytes")
        if backend == SHM and off < CTRL_SIZE:
            raise DescriptorError(f"descriptor: buffer {i} {go_quote(bname)}: offset {off} is inside the "
                                  f"segment's {CTRL_SIZE}-byte control block")
        if off > size or length > size - off:
            raise DescriptorError(f"descriptor: buffer {i} {go_quote(bname)}: offset {off} + length {length} "
                                  f"is out of bounds of the {size}-byte segment")
        bufs.append(Buffer(bname, pb.dtype, shape, off, length))
    overlap = list(bufs)

    def table(what: str, off: int, n: int) -> None:
        """A table in the segment: it shares no byte with a buffer or
        another table."""
        if off < CTRL_SIZE or off % 8 != 0:
            raise DescriptorError(f"descriptor: {what} offset {off}: want a multiple of 8 after the "
                                  f"{CTRL_SIZE}-byte control block")
        if off > size or n > size - off:
            raise DescriptorError(f"descriptor: {what} offset {off} + {n} bytes is out of bounds of the "
                                  f"{size}-byte segment")
        overlap.append(Buffer(f"({what} table)", T.UINT8, (n,), off, n))

    sums_at = pd.checksum_offset
    if sums_at != 0:
        if backend != SHM:
            raise DescriptorError(f"descriptor: a {backend} descriptor carries checksum offset {sums_at}; "
                                  "only a shm one may")
        table("checksum", sums_at, 8 * len(bufs))
    off = pd.handoff_offset
    if off != 0:
        if sums_at == 0:
            raise DescriptorError(f"descriptor: hand-off offset {off} without a checksum offset; a hand-off table "
                                  "needs the fast path")
        table("hand-off", off, HANDOFF_ENTRY * len(bufs))
    check_overlap(overlap)
    return Descriptor(room=pd.room, backend=backend, generation=pd.generation, status_endpoint=pd.status_endpoint,
                      segment=name, segment_size=size, buffers=bufs, checksum_offset=sums_at, handoff_offset=off)


def check_overlap(bufs: Sequence[Buffer]) -> None:
    """No two non-empty buffers share a byte (4.3 rule 10). An empty one
    shares none, wherever it lies."""
    by_offset = sorted((b for b in bufs if b.length), key=lambda b: b.offset)
    for prev, cur in zip(by_offset, by_offset[1:]):
        if prev.offset + prev.length > cur.offset:
            raise DescriptorError(f"descriptor: buffers {go_quote(prev.name)} and {go_quote(cur.name)} overlap")


def encode_descriptor(backend: str, room: int, gen: int, status_endpoint: str, segment: str, size: int,
                      bufs: Sequence[Buffer], checksum_offset: int = 0, handoff_offset: int = 0) -> bytes:
    pd = transfer_pb2.Descriptor(version=WIRE_VERSION, room=room, generation=gen, status_endpoint=status_endpoint,
                                 segment=segment, segment_size=size, backend=backend,
                                 checksum_offset=checksum_offset, handoff_offset=handoff_offset)
    for b in bufs:
        pd.buffers.add(name=b.name, dtype=b.dtype, shape=list(b.shape), offset=b.offset, length=b.length)
    return pd.SerializeToString()


# --- status frames -------------------------------------------------------------

def encode_status(room: int, gen: int, status: int, reason: str = "", headers: Sequence[Header] = ()) -> bytes:
    f = transfer_pb2.StatusFrame(version=WIRE_VERSION, room=room, generation=gen, status=status, reason=reason)
    for h in headers:
        f.tensors.add(name=h.name, dtype=h.dtype, shape=list(h.shape), length=h.length, xxh3=h.xxh3)
    return f.SerializeToString()


def decode_status(b: bytes, room: int):
    """Decodes a frame from a receiver's status socket: (frame, None), or
    (None, why) to drop it."""
    try:
        f = transfer_pb2.StatusFrame.FromString(b)
    except Exception:  # noqa: BLE001
        return None, "undecodable status frame"
    if f.version != WIRE_VERSION:
        return None, f"status frame version {f.version}"
    if f.room != room:
        return None, f"status frame names room {f.room}"
    return f, None


def headers_from_proto(tensors) -> List[Header]:
    return [Header(t.name, t.dtype, tuple(t.shape), t.length, t.xxh3) for t in tensors]


def check_headers(bufs: Sequence[Buffer], hs: Sequence[Header]) -> None:
    """A Success frame's tensors against the room's buffers: number, specs,
    lengths (4.4 step 5). Raises ValueError with the room's reason."""
    if len(hs) != len(bufs):
        raise ValueError(f"verify: the sender reported {len(hs)} tensors, {len(bufs)} expected")
    for i, (b, h) in enumerate(zip(bufs, hs)):
        if h.name != b.name or h.dtype != b.dtype or tuple(h.shape) != tuple(b.shape):
            raise ValueError(f"verify: tensor {i} {go_quote(b.name)}: the sender wrote "
                             f"{spec_str(h.name, h.dtype, h.shape)}, expected {b.spec_str()}")
        if h.length != b.length:
            raise ValueError(f"verify: tensor {i} {go_quote(b.name)}: the sender wrote {h.length} bytes, "
                             f"expected {b.length}")


def sums_of(bufs: Sequence[Buffer], table) -> List[Header]:
    """The fast path's checksum table (8 bytes per buffer, little-endian,
    in order), read once: the headers a Success frame would carry, the
    specs and lengths being the buffers' own (5.5)."""
    sums = struct.unpack_from(f"<{len(bufs)}Q", table)
    return [Header(b.name, b.dtype, b.shape, b.length, s) for b, s in zip(bufs, sums)]


def checksum_mismatch(i: int, b: Buffer, got: int, want: int) -> str:
    return (f"verify: tensor {i} {go_quote(b.name)}: checksum mismatch: buffer has {got:016x}, "
            f"the sender reported {want:016x}")


def peer_failed_reason(reason: str) -> str:
    return "sender: " + (truncate(reason, MAX_REASON_LEN) or "no reason given")


# --- zmq data headers (4.7) ------------------------------------------------------

_DATA = struct.Struct("<IQQQ")
assert _DATA.size == DATA_HEADER_SIZE


def encode_data_header(room: int, gen: int, offset: int) -> bytes:
    return _DATA.pack(DATA_MAGIC, room, gen, offset)


def parse_data_header(b) -> Optional[Tuple[int, int, int]]:
    """(room, generation, offset) of a data header, or None for anything else."""
    if len(b) != DATA_HEADER_SIZE:
        return None
    magic, room, gen, off = _DATA.unpack(b)
    if magic != DATA_MAGIC:
        return None
    return room, gen, off


def locate_data(bufs: Sequence[Buffer], offset: int) -> Optional[Tuple[int, int]]:
    """Where a data part at offset may go: (offset, end of its buffer), or
    None when no non-empty buffer holds offset. bufs are in offset order."""
    for b in reversed(bufs):
        if b.length and b.offset <= offset:
            if offset - b.offset < b.length:
                return offset, b.offset + b.length
            return None
    return None


# --- the sender's choice of tensors (4.3, last paragraph) -----------------------

def _wire_dtype_of(arr: np.ndarray, want: int) -> Optional[int]:
    """The wire dtype of an array; bfloat16 buffers take 2-byte arrays of
    their bits (<u2, <i2) or an ml_dtypes bfloat16."""
    dt = arr.dtype
    if want == T.BFLOAT16 and (dt.name == "bfloat16" or (dt.kind in "ui" and dt.itemsize == 2
                                                         and dt.byteorder in "<=|")):
        return T.BFLOAT16
    try:
        return T.dtype_number(dt)
    except T.SpecError:
        return None


def _as_array(value) -> np.ndarray:
    """A C-contiguous array of value, no copy when it is one already. (Unlike
    np.ascontiguousarray, which tensor.as_array uses, it keeps 0-d shapes.)"""
    if isinstance(value, np.ndarray):
        return value if value.flags.c_contiguous else np.ascontiguousarray(value).reshape(value.shape)
    arr = T.as_array(value)
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        arr = arr.reshape(tuple(shape))
    return arr


def select_tensors(outputs: Dict[str, object], bufs: Sequence[Buffer]) -> List[np.ndarray]:
    """For each buffer in order, the output of the same name, checked against
    it; raises ValueError with the room's reason."""
    out = []
    for i, b in enumerate(bufs):
        if b.name not in outputs:
            have = "[" + " ".join(go_quote(str(k)) for k in outputs) + "]"
            raise ValueError(f"send: the receiver asks for tensor {go_quote(b.name)}; the sender has {have}")
        arr = _as_array(outputs[b.name])
        dt = _wire_dtype_of(arr, b.dtype)
        if dt is None:
            raise ValueError(f"send: tensor {i} {go_quote(b.name)} has numpy dtype {arr.dtype}, which no wire "
                             f"dtype matches; the receiver's buffer is {b.spec_str()}")
        if dt != b.dtype or tuple(arr.shape) != tuple(b.shape):
            raise ValueError(f"send: tensor {i} {spec_str(b.name, dt, arr.shape)} does not match the receiver's "
                             f"buffer {b.spec_str()}")
        if arr.nbytes != b.length:
            raise ValueError(f"send: tensor {i} {go_quote(b.name)} has {arr.nbytes} bytes, the receiver's buffer "
                             f"holds {b.length}")
        out.append(arr)
    return out


def as_bytes(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat memoryview, no copy."""
    return memoryview(arr.reshape(-1).view(np.uint8))
