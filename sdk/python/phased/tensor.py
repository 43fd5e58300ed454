"""Tensors as they cross a hop: dtypes, specs, sizes and the checksum.

docs/protocol.md sections 6 and 7. A tensor is a name, a dtype, a shape and
its bytes (little-endian, row-major). The checksum is XXH3-64 chained over
256 KiB blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import xxhash

# Wire dtype numbers (TensorHeader.dtype). They never change.
FLOAT32 = 1
FLOAT16 = 2
BFLOAT16 = 3
INT32 = 4
INT64 = 5
UINT8 = 6

# number -> (name, bytes per element, numpy dtype). bfloat16 has no numpy
# type of its own: its bytes move as little-endian uint16.
DTYPES = {
    FLOAT32: ("float32", 4, np.dtype("<f4")),
    FLOAT16: ("float16", 2, np.dtype("<f2")),
    BFLOAT16: ("bfloat16", 2, np.dtype("<u2")),
    INT32: ("int32", 4, np.dtype("<i4")),
    INT64: ("int64", 8, np.dtype("<i8")),
    UINT8: ("uint8", 1, np.dtype("u1")),
}

_BY_NAME = {name: number for number, (name, _, _) in DTYPES.items()}
_BY_NUMPY = {np.dtype("<f4"): FLOAT32, np.dtype("<f2"): FLOAT16, np.dtype("<i4"): INT32,
             np.dtype("<i8"): INT64, np.dtype("u1"): UINT8}

MAX_BYTES = 1 << 40  # largest tensor, tensor.MaxBytes
CHECKSUM_BLOCK = 256 * 1024


class SpecError(ValueError):
    """A dtype, shape or size that the protocol refuses."""


def dtype_number(dtype) -> int:
    """The wire number of dtype: a number, a name ("float32") or a numpy dtype."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) not in DTYPES:
            raise SpecError(f"unknown dtype {int(dtype)}")
        return int(dtype)
    if isinstance(dtype, str) and dtype in _BY_NAME:
        return _BY_NAME[dtype]
    try:
        nd = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == "=" else np.dtype(dtype)
    except TypeError:
        raise SpecError(f"unknown dtype {dtype!r}") from None
    if nd in _BY_NUMPY:
        return _BY_NUMPY[nd]
    raise SpecError(f"no wire dtype for {dtype!r} (float32, float16, bfloat16, int32, int64, uint8)")


def dtype_name(number: int) -> str:
    return DTYPES[number][0] if number in DTYPES else f"dtype({number})"


def numpy_dtype(number: int) -> np.dtype:
    if number not in DTYPES:
        raise SpecError(f"unknown dtype {number}")
    return DTYPES[number][2]


def nbytes(dtype: int, shape: Sequence[int], name: str = "") -> int:
    """The byte size of a tensor, checked step by step against MAX_BYTES;
    SpecError worded as the Go SDK's Spec.NumBytes."""
    from .transfer.frames import go_quote  # frames imports this module

    what = f"bad tensor spec: tensor {go_quote(name)}"
    if dtype not in DTYPES:
        raise SpecError(f"{what}: unknown dtype {dtype}")
    n = DTYPES[dtype][1]
    for d in shape:
        d = int(d)
        if d < 0:
            raise SpecError(f"{what}: negative dimension {d}")
        if d != 0 and n > MAX_BYTES // d:
            dims = " ".join(str(int(x)) for x in shape)
            raise SpecError(f"{what}: shape [{dims}] exceeds {MAX_BYTES} bytes")
        n *= d
    return n


@dataclass(frozen=True)
class Spec:
    """What a phase expects of one input tensor: its name, dtype and shape."""

    name: str
    dtype: int
    shape: Tuple[int, ...]

    def __init__(self, name: str, dtype, shape: Sequence[int]):
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "dtype", dtype_number(dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    def check(self) -> None:
        if not self.name:
            raise SpecError("a tensor needs a name")
        nbytes(self.dtype, self.shape, self.name)

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape, self.name)

    def __str__(self) -> str:
        return f"{self.name} {dtype_name(self.dtype)} {list(self.shape)}"


def checksum(data) -> int:
    """XXH3-64 chained over 256 KiB blocks (protocol section 7)."""
    mv = memoryview(data).cast("B")
    if len(mv) == 0:
        return xxhash.xxh3_64_intdigest(b"")
    h = 0
    for off in range(0, len(mv), CHECKSUM_BLOCK):
        h = xxhash.xxh3_64_intdigest(mv[off:off + CHECKSUM_BLOCK], seed=h)
    return h


def checksum_blocks(data, start_hash: int, start: int, end: int) -> int:
    """Continue a chain over data[start:end]; start is a block boundary."""
    mv = memoryview(data).cast("B")
    h = start_hash
    for off in range(start, end, CHECKSUM_BLOCK):
        h = xxhash.xxh3_64_intdigest(mv[off:min(off + CHECKSUM_BLOCK, end)], seed=h)
    return h


def as_array(value) -> np.ndarray:
    """A C-contiguous numpy view of value (numpy array or CPU torch tensor), no copy
    when it is contiguous already."""
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor
        t = value.detach()
        if getattr(t, "is_cuda", False):
            t = t.cpu()
        if t.dtype.__class__.__name__ == "dtype" and str(t.dtype) == "torch.bfloat16":
            import torch  # only when torch tensors are in use
            t = t.contiguous().view(torch.int16)
            return np.ascontiguousarray(t.numpy()).view("<u2")
        arr = t.contiguous().numpy()
    else:
        arr = np.asarray(value)
    # ascontiguousarray makes a 0-d array 1-d: keep the shape.
    return np.ascontiguousarray(arr).reshape(arr.shape)


def to_torch(arr: np.ndarray, dtype: int):
    """A torch tensor viewing arr (no copy); bfloat16 bytes (a uint16
    array) become a torch.bfloat16 tensor. torch has no read-only tensors:
    one made from a read-only array (an input the previous phase lent,
    docs/protocol.md section 5.6) must not be written, a write faults."""
    import torch
    if not arr.flags.writeable:
        _quiet_readonly_warning()
    if dtype == BFLOAT16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


_QUIET = []


def _quiet_readonly_warning() -> None:
    """torch warns, once per process, that a tensor from a read-only array
    is writable; the phase's inputs are documented as such. Ignore that
    warning only."""
    if not _QUIET:
        import warnings
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        _QUIET.append(True)
