"""Checkpoints: a denoising phase's state after some step of one request,
kept in a file outside the process that wrote it, so that a Run of the
request's next attempt, on any instance, resumes from it
(docs/protocol.md section 8.4). The Go twin of the file is
sdk/checkpoint/checkpoint.go; of RunCheckpointer, sdk/phase/checkpoint.go.

The file is 8 bytes of magic (b"PHDCKPT1"), a little-endian uint32
header length H, H bytes of JSON header, then each tensor's bytes back to
back. write replaces a file atomically (a temporary file in the same
directory, renamed over it); read trusts nothing in it.

Phase authors do not use this module: they call ctx.resume and
ctx.checkpoint, and the runtime gives each Run's Context a
RunCheckpointer when the supervisor asked for checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .tensor import BFLOAT16, SpecError, as_array, checksum, dtype_number, nbytes, numpy_dtype, to_torch

#: Opens every checkpoint file.
MAGIC = b"PHDCKPT1"
#: The largest header read accepts, in bytes.
MAX_HEADER = 64 << 10
#: The most tensors one checkpoint holds.
MAX_TENSORS = 64

_PREFIX = len(MAGIC) + 4  # the magic and the header length
_KEYS = ("request", "step", "total", "inputs", "tensors")
_TENSOR_KEYS = ("name", "dtype", "shape", "checksum")
_U64 = 1 << 64
_I64 = 1 << 63


class BadCheckpoint(ValueError):
    """A file that is not a checkpoint this Run may resume from:
    malformed, truncated, of another request, of other inputs, or
    corrupt. Its message says which."""


@dataclass(frozen=True)
class TensorEntry:
    """One saved tensor's spec and checksum."""

    name: str
    dtype: int
    shape: Tuple[int, ...]
    checksum: int


@dataclass(frozen=True)
class Header:
    """What a checkpoint says about itself."""

    request: str  # the request id
    step: int  # the steps done when it was saved, 0 < step < total
    total: int  # the Run's steps in all
    # The checksums (phased.checksum) of the Run's inputs, in order: a
    # retry whose inputs differ does not resume.
    inputs: Tuple[int, ...]
    tensors: Tuple[TensorEntry, ...]


def _host(name, value) -> Tuple[int, np.ndarray]:
    """value (a numpy array, or a torch tensor, copied to the host if it
    is on a GPU) as its wire dtype and a C-contiguous little-endian array."""
    if not isinstance(name, str):
        raise TypeError(f"checkpoint: tensor name {name!r} is not a str")
    bf16 = str(getattr(value, "dtype", "")) == "torch.bfloat16"
    arr = as_array(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    try:
        dtype = BFLOAT16 if bf16 else dtype_number(arr.dtype)
    except SpecError as e:
        raise SpecError(f"checkpoint: tensor {_q(name)}: {e}") from None
    return dtype, arr


def _json(obj) -> bytes:
    """obj as Go's json.Marshal writes it: no spaces, UTF-8, and <, >, &,
    U+2028 and U+2029 escaped (outside strings none of them can occur)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                   ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return text.encode("utf-8")


def write(path: str, request: str, step: int, total: int, inputs: Sequence[int],
          state: Sequence[Tuple[str, object]]) -> None:
    """Save state, (name, array) pairs (numpy arrays or torch tensors), as
    the checkpoint at path, after step of total steps of request, whose
    Run's inputs have the checksums inputs: a temporary file
    ".NAME.<random>" in path's directory (which must exist: it is not
    made), created exclusively with mode 0600, then renamed over path. It
    does not fsync: the file has to outlive a process, not the machine.
    Raises OSError (FileNotFoundError for a directory that is gone),
    ValueError (SpecError for a dtype without a wire number) or
    TypeError; on error no file is left behind."""
    state = list(state)
    if len(state) > MAX_TENSORS:
        raise ValueError(f"checkpoint: {len(state)} tensors, at most {MAX_TENSORS}")
    arrays = [_host(name, value) for name, value in state]
    head = _json({
        "request": str(request),
        "step": int(step),
        "total": int(total),
        "inputs": [int(c) for c in inputs],
        "tensors": [{"name": name, "dtype": dtype, "shape": [int(d) for d in arr.shape],
                     "checksum": checksum(_bytes(arr))} for (name, _), (dtype, arr) in zip(state, arrays)],
    })
    if len(head) > MAX_HEADER:
        raise ValueError(f"checkpoint: header of {len(head)} bytes, at most {MAX_HEADER}")
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(head)) + head)
            for _, arr in arrays:
                f.write(_bytes(arr))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _q(name: str) -> str:
    """name quoted as Go's %q quotes it, as the Go SDK's messages do."""
    from .transfer.frames import go_quote  # frames imports phased.tensor
    return go_quote(name)


def _bytes(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _create_temp(path: str) -> Tuple[int, str]:
    """Creates ".NAME.<random>" next to path exclusively, mode 0600."""
    d, name = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(d, f".{name}.{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"checkpoint: no free temporary name for {name} in {d or '.'}")


def read(path: str) -> Tuple[Header, List[Tuple[str, np.ndarray]]]:
    """The checkpoint at path: its header and its tensors, (name, array)
    in the order they were written (bfloat16 as uint16 arrays of its
    bytes; the header says the dtype). A missing file raises
    FileNotFoundError; anything else wrong with it (its size, its magic,
    its header, a tensor's spec or checksum) raises BadCheckpoint saying
    what. It checks the file against nothing else: see check."""
    # O_NONBLOCK: a FIFO put there must not block the Run (a regular
    # file ignores it).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadCheckpoint(f"{path} is not a regular file")
    size = st.st_size
    with os.fdopen(fd, "rb") as f:
        prefix = f.read(_PREFIX)
        if len(prefix) < _PREFIX:
            raise BadCheckpoint(f"{path}: {size} bytes, shorter than the magic and header length")
        if prefix[:len(MAGIC)] != MAGIC:
            raise BadCheckpoint(f"{path}: no {MAGIC.decode()} magic")
        (n,) = struct.unpack("<I", prefix[len(MAGIC):])
        if n < 2 or n > MAX_HEADER or _PREFIX + n > size:
            raise BadCheckpoint(f"{path}: header length {n} (want 2 to {MAX_HEADER}, within the file's "
                                f"{size} bytes)")
        head = f.read(n)
        if len(head) != n:
            raise BadCheckpoint(f"{path}: the file ended inside the header")
        try:
            h = _parse_header(head)
        except BadCheckpoint as e:
            raise BadCheckpoint(f"{path}: header: {e}") from None
        want = _PREFIX + n
        for e in h.tensors:
            try:
                want += nbytes(e.dtype, e.shape, e.name)
            except SpecError as err:
                raise BadCheckpoint(f"{path}: {err}") from None
            if want > size:
                break
        if want != size:
            raise BadCheckpoint(f"{path}: {size} bytes, but its header describes {want}")
        out = []
        for e in h.tensors:
            arr = np.empty(e.shape, numpy_dtype(e.dtype))
            if f.readinto(_bytes(arr)) != arr.nbytes:
                raise BadCheckpoint(f"{path}: tensor {_q(e.name)}: the file ended inside it")
            got = checksum(_bytes(arr))
            if got != e.checksum:
                raise BadCheckpoint(f"{path}: tensor {_q(e.name)}: checksum {got:#018x}, its header says "
                                    f"{e.checksum:#018x}")
            out.append((e.name, arr))
        return h, out


def _int(v, what: str, lo: int, hi: int) -> int:
    """v if it is a JSON integer in [lo, hi)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadCheckpoint(f"{what} is {json.dumps(v)}, not an integer")
    if not lo <= v < hi:
        raise BadCheckpoint(f"{what} {v} is out of range ({lo} to {hi - 1})")
    return v


def _object(v, keys: Sequence[str], what: str) -> dict:
    """v if it is a JSON object with exactly keys."""
    if not isinstance(v, dict):
        raise BadCheckpoint(f"{what} is not a JSON object")
    for k in v:
        if k not in keys:
            raise BadCheckpoint(f"{what}: unknown field {json.dumps(k)}")
    for k in keys:
        if k not in v:
            raise BadCheckpoint(f"{what}: no {json.dumps(k)}")
    return v


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise BadCheckpoint(f"{what} is not a JSON array")
    return v


def _parse_header(b: bytes) -> Header:
    """A header, which must be one JSON object with exactly the keys
    request, step, total, inputs and tensors (each tensor: name, dtype,
    shape, checksum), at most MAX_TENSORS tensors, and 0 < step < total."""
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadCheckpoint(f"not UTF-8: {e}") from None
    dec = json.JSONDecoder()
    try:
        obj, end = dec.raw_decode(text.lstrip(" \t\r\n"))
    except json.JSONDecodeError as e:
        raise BadCheckpoint(f"not JSON: {e}") from None
    if text.lstrip(" \t\r\n")[end:].strip(" \t\r\n"):
        raise BadCheckpoint("data after the JSON object")
    obj = _object(obj, _KEYS, "the header")
    if not isinstance(obj["request"], str):
        raise BadCheckpoint(f"request is {json.dumps(obj['request'])}, not a string")
    step = _int(obj["step"], "step", -_I64, _I64)
    total = _int(obj["total"], "total", -_I64, _I64)
    inputs = tuple(_int(c, f"inputs[{i}]", 0, _U64) for i, c in enumerate(_list(obj["inputs"], "inputs")))
    entries = _list(obj["tensors"], "tensors")
    if len(entries) > MAX_TENSORS:
        raise BadCheckpoint(f"{len(entries)} tensors, at most {MAX_TENSORS}")
    tensors = []
    for i, e in enumerate(entries):
        what = f"tensors[{i}]"
        e = _object(e, _TENSOR_KEYS, what)
        if not isinstance(e["name"], str):
            raise BadCheckpoint(f"{what}: name is {json.dumps(e['name'])}, not a string")
        tensors.append(TensorEntry(
            name=e["name"], dtype=_int(e["dtype"], f"{what}: dtype", 0, 1 << 32),
            shape=tuple(_int(d, f"{what}: shape[{j}]", -_I64, _I64)
                        for j, d in enumerate(_list(e["shape"], f"{what}: shape"))),
            checksum=_int(e["checksum"], f"{what}: checksum", 0, _U64)))
    if step <= 0 or step >= total:
        raise BadCheckpoint(f"step {step} of {total}: want 0 < step < total")
    return Header(request=obj["request"], step=step, total=total, inputs=inputs, tensors=tuple(tensors))


def _hex(sums: Sequence[int]) -> str:
    return "[" + " ".join(f"{c:x}" for c in sums) + "]"


def check(header: Header, request: str, total: int, inputs: Sequence[int]) -> None:
    """Raises BadCheckpoint saying why header, read from a file, is not a
    checkpoint a Run of request with total steps and inputs whose
    checksums are inputs may resume from; returns when it is."""
    if header.request != request:
        raise BadCheckpoint(f"it is request {header.request}'s, not {request}'s")
    if header.total != total:
        raise BadCheckpoint(f"it was saved by a Run of {header.total} steps, not {total}")
    if list(header.inputs) != [int(c) for c in inputs]:
        raise BadCheckpoint(f"it was saved by a Run with other inputs (checksums {_hex(header.inputs)}, "
                            f"not {_hex(inputs)})")


def due(step: int, total: int, every: int) -> bool:
    """Whether a save is due after step of total steps, saving every
    `every` steps: step is a multiple of every, above 0 and below total."""
    return every > 0 and 0 < step < total and step % every == 0


class RunCheckpointer:
    """The checkpoints of one Run whose request has a checkpoint: it saves
    to and resumes from the file the supervisor named, for this request
    and these inputs only. The runtime makes one per Run and gives it to
    the Run's Context; ctx.resume and ctx.checkpoint call it.

    inputs are the Run's input tensors in order (hashed once, the first
    time they are needed, then dropped); resumed(step, total) is told when
    the Run resumes (the progress reporter's resumed_at); arrays is the
    phase's: "torch" makes resume return torch tensors."""

    def __init__(self, path: str, every: int, request: str, inputs: Sequence[object], log: logging.Logger,
                 resumed: Optional[Callable[[int, int], None]] = None, arrays: str = "numpy"):
        self.path, self.every, self.request = path, int(every), request
        self._in: Optional[List[object]] = list(inputs)
        self._sums: Optional[List[int]] = None
        self._closed = False
        self._mu = threading.Lock()
        self._log = log
        self._resumed = resumed
        self._arrays = arrays

    def input_sums(self) -> List[int]:
        """The checksums of the Run's inputs, in order, made once."""
        with self._mu:
            if self._sums is None:
                if self._in is None:
                    raise ValueError("checkpoint: the phase's run has returned")
                self._sums = [checksum(_bytes(as_array(a))) for a in self._in]
                self._in = None  # the inputs' memory is not held for this
            return self._sums

    def close(self) -> None:
        """The phase's run has returned: drop the inputs (a lent input
        goes back to its sender when its last array goes), and save and
        resume nothing more."""
        with self._mu:
            self._in = None
            self._closed = True

    def save(self, step: int, total: int, state: Mapping[str, object]) -> bool:
        """Saves state when a save is due after step of total; whether it
        saved. A failed save is logged as a warning: the Run goes on."""
        if not due(step, total, self.every) or self._closed:
            return False
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"checkpoint: state is {type(state).__name__}; want a dict of tensors by name")
            write(self.path, self.request, step, total, self.input_sums(), list(state.items()))
        except (OSError, ValueError, TypeError) as e:
            self._log.warning("checkpoint not saved: the Run goes on", extra={
                "request": self.request, "step": step, "total": total, "error": str(e) or type(e).__name__})
            return False
        self._log.debug("checkpoint saved", extra={"request": self.request, "step": step, "total": total})
        return True

    def resume(self, total: int) -> Tuple[int, Dict[str, object]]:
        """The step and state to resume the Run from; 0 and {} when there
        is none (no file yet) or the file does not fit this Run (logged as
        a warning, with why)."""
        if self._closed:
            return 0, {}
        try:
            h, tensors = read(self.path)
            check(h, self.request, int(total), self.input_sums())
        except FileNotFoundError:
            return 0, {}  # the request's first attempt, or one before any save
        except (OSError, ValueError) as e:  # BadCheckpoint among them
            self._log.warning("not resuming from the checkpoint: starting from step 0",
                              extra={"request": self.request, "why": str(e) or type(e).__name__})
            return 0, {}
        self._log.info("resuming from the checkpoint", extra={"request": self.request, "step": h.step,
                                                               "total": int(total)})
        if self._resumed is not None:
            self._resumed(h.step, int(total))
        if self._arrays == "torch":
            return h.step, {name: to_torch(arr, e.dtype) for e, (name, arr) in zip(h.tensors, tensors)}
        return h.step, dict(tensors)
