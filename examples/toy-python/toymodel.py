"""A numpy port of phased's built-in text-to-video toy model
(plugins/model: model.go, params.go), bit for bit.

    params = Params.parse({"frames": "3"})       # ParseParams, same errors
    ctx, latent = encode(params, prompt, seed)   # model.Encode
    denoise(params, ctx, latent, steps)          # model.DenoiseEach, in place
    gif = decode(params, latent)                 # model.Decode: GIF bytes
    gif = reference(params, prompt, seed, steps) # model.Reference

Every float32 operation of the Go code is one numpy float32 operation
here, in the same order: numpy rounds each elementwise add, multiply and
divide to float32 as Go does, and nothing is fused into an FMA. The one
reduction (the pooling dot product, summed in four lanes) is an explicit
loop over the reduced axis, vectorised across the others, never np.sum or
np.dot, whose summation order differs. The splitmix64 streams use numpy
uint64 arrays, which wrap around like Go's uint64. decode writes the GIF
as Go's image/gif and compress/lzw do, so the bytes are Go's.

The golden values in testdata/golden.json come from the Go code
(golden/main.go); test_toymodel.py checks this module against them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["Params", "ParamError", "Cancelled", "BadLength", "encode", "denoise", "targets", "decode",
           "reference", "context_shape", "latent_shape", "quote"]

M64 = (1 << 64) - 1

# Salts that separate the pseudo-random streams (model.go).
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
PAD_SALT = 0x5BD1E9955BD1E995  # token key of a position past the prompt's end
TOKEN_SALT = 0x27D4EB2F165667C5  # mixed with each prompt byte
POS_SALT = 0xC2B2AE3D27D4EB4F  # position embeddings
NOISE_SALT = 0x165667B19E3779F9  # the noise latent
POOL_SALT = 0x85EBCA77C2B2AE63  # per-channel pooling signs

_U = np.uint64
_F = np.float32
_GOLDEN = _U(GOLDEN)

# Values per block when a stream is computed in pieces (bounds the uint64
# temporaries).
_BLOCK = 1 << 20


# Params (params.go) ---------------------------------------------------------

MAX_TENSOR_BYTES = 2 << 30
MAX_GIF_SIDE = 65535
MAX_DELAY = 65535
MIN_CHANNELS = 3

# The keys, in the order of the Params fields (params.go paramKeys).
PARAM_KEYS = ("context_len", "context_dim", "channels", "frames", "height", "width", "scale", "delay")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def quote(s: str) -> str:
    """Go's strconv.Quote (fmt's %q) of s: printable runes as they are,
    the rest escaped."""
    out = ['"']
    for ch in s:
        r = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():  # unicode.IsPrint: L, M, N, P, S and U+0020
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif r < 0x20 or r == 0x7F:
            out.append("\\x%02x" % r)
        elif 0xD800 <= r < 0xE000:  # a lone surrogate: not valid UTF-8, as Go's RuneError
            out.append("\\ufffd")
        elif r < 0x10000:
            out.append("\\u%04x" % r)
        else:
            out.append("\\U%08x" % r)
    out.append('"')
    return "".join(out)


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


class ParamError(ValueError):
    """A bad param, formatted as Go's *model.ParamError:
    `key = "value", ...: reason`."""

    def __init__(self, keys, values, reason: str):
        self.keys, self.values, self.reason = list(keys), list(values), reason
        super().__init__(", ".join(f"{k} = {quote(v)}" for k, v in zip(self.keys, self.values)) + ": " + reason)


def _atoi(s: str) -> Optional[int]:
    """strconv.Atoi: an optional sign and ASCII decimal digits, in int64."""
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    n = int(s)
    if not _INT64_MIN <= n <= _INT64_MAX:
        return None
    return n


def _fits(limit: int, *factors: int) -> bool:
    n = 1
    for f in factors:
        if f > limit // n:
            return False
        n *= f
    return True


@dataclass(frozen=True)
class Params:
    """The sizes of the model (model.Params); the defaults are
    DefaultParams."""

    context_len: int = 16
    context_dim: int = 64
    channels: int = 4
    frames: int = 8
    height: int = 24
    width: int = 32
    scale: int = 4
    delay: int = 10

    @classmethod
    def parse(cls, m: Optional[Mapping[str, str]] = None) -> "Params":
        """ParseParams: the defaults overridden by m; keys checked in
        sorted order, the first error (of check) raised as ParamError."""
        p, errors = cls._parse(m)
        if errors:
            raise errors[0]
        return p

    @classmethod
    def check(cls, m: Optional[Mapping[str, str]] = None) -> List[ParamError]:
        """CheckParams: every error of m that parse raises the first of, in
        the same order."""
        return cls._parse(m)[1]

    @classmethod
    def _parse(cls, m) -> Tuple["Params", List[ParamError]]:
        values = {f.name: f.default for f in fields(cls)}
        m = dict(m or {})
        errors = []
        for k in sorted(m, key=lambda k: k.encode("utf-8", "surrogatepass")):
            v = m[k]
            if k not in values:
                near = near_keys(k)
                reason = "unknown param; " + (f"did you mean {_quote_or(near)}? The " if near else "the ")
                errors.append(ParamError([k], [v], reason + "known params are " + ", ".join(sorted(PARAM_KEYS))))
                continue
            n = _atoi(v)
            if n is None:
                errors.append(ParamError([k], [v], "not an integer"))
                continue
            values[k] = n
        p = cls(**values)
        return p, errors + p.problems()

    def _error(self, reason: str, *keys: str) -> ParamError:
        return ParamError(keys, [str(getattr(self, k)) for k in keys], reason)

    def validate(self) -> None:
        """Params.Validate: raise ParamError (the first problem) unless the
        sizes are valid."""
        errors = self.problems()
        if errors:
            raise errors[0]

    def problems(self) -> List[ParamError]:
        """Every error validate could raise, in its order; the sizes are
        checked against the limits only when all are positive."""
        errors = [self._error("must be a positive integer", k) for k in PARAM_KEYS if getattr(self, k) <= 0]
        if errors:
            return errors
        for ok, reason, keys in (
            (self.channels >= MIN_CHANNELS, f"must be at least {MIN_CHANNELS}: the decoder reads channels 0, 1 and "
             "2 as red, green and blue", ("channels",)),
            (self.delay <= MAX_DELAY, f"must be at most {MAX_DELAY} hundredths of a second (GIF stores it in 16 "
             "bits)", ("delay",)),
            (_fits(MAX_GIF_SIDE, self.width, self.scale), f"a decoded frame would be more than {MAX_GIF_SIDE} "
             "pixels wide, the most a GIF holds", ("width", "scale")),
            (_fits(MAX_GIF_SIDE, self.height, self.scale), f"a decoded frame would be more than {MAX_GIF_SIDE} "
             "pixels high, the most a GIF holds", ("height", "scale")),
            (_fits(MAX_TENSOR_BYTES, 4, self.context_len, self.context_dim),
             "the context tensor (context_len × context_dim float32) would exceed 2 GiB",
             ("context_len", "context_dim")),
            (_fits(MAX_TENSOR_BYTES, 4, self.channels, self.frames, self.height, self.width),
             "the latent tensor (channels × frames × height × width float32) would exceed 2 GiB",
             ("channels", "frames", "height", "width")),
            (_fits(MAX_TENSOR_BYTES, self.frames, self.height, self.width, self.scale, self.scale),
             "the decoded frames (frames × height×scale × width×scale bytes) would exceed 2 GiB",
             ("frames", "height", "width", "scale")),
        ):
            if not ok:
                errors.append(self._error(reason, *keys))
        return errors


def param_problems(m: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    """model.ParamProblems: check(m) as (param, message) pairs for a
    phase's validate_params, each about the first of its keys whose value
    m gives (for a limit on several keys, an integer), "" for none."""
    m = dict(m or {})
    out = []
    for e in Params.check(m):
        param = ""
        for k in e.keys:
            if k in m and (len(e.keys) == 1 or _atoi(m[k]) is not None):
                param = k
                break
        out.append((param, str(e)))
    return out


def near_keys(key: str) -> List[str]:
    """nearKeys: the known keys closest to an unknown one, sorted: those at
    the least edit distance, when it is at most 2 and less than half the
    key's length, or else those the key extends or begins."""
    near, best = [], 3
    for k in sorted(PARAM_KEYS):
        d = _edit_distance(key, k)
        if d > 2 or 2 * d >= len(k):
            continue
        if d < best:
            near, best = [], d
        if d == best:
            near.append(k)
    if near:
        return near
    return [k for k in sorted(PARAM_KEYS) if len(key) >= 3 and (key.startswith(k) or k.startswith(key))]


def _edit_distance(a: str, b: str) -> int:
    """editDistance: optimal string alignment, in code points."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _quote_or(words: List[str]) -> str:
    q = [quote(w) for w in words]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def context_shape(p: Params) -> Tuple[int, int]:
    """The shape of the context tensor (model.ContextSpec), float32."""
    return (p.context_len, p.context_dim)


def latent_shape(p: Params) -> Tuple[int, int, int, int]:
    """The shape of the latent tensor (model.LatentSpec), float32."""
    return (p.channels, p.frames, p.height, p.width)


def _spec(name: str, shape) -> str:
    return f"{name}:float32[{' '.join(str(d) for d in shape)}]"


class BadLength(ValueError):
    """A tensor whose number of values does not match the params
    (model.ErrBadLength)."""


class Cancelled(Exception):
    """denoise stopped because its cancelled callback said so."""


# splitmix64 -------------------------------------------------------------------


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function over a uint64 array (wrapping)."""
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


_UNIT = _F(1.0 / (1 << 23))


def _unit(z: np.ndarray) -> np.ndarray:
    """The top 24 bits of z as float32 in [-1, 1), exactly."""
    return ((z >> _U(40)).astype(np.int32) - (1 << 23)).astype(np.float32) * _UNIT


def _golden_multiples(start: int, n: int) -> np.ndarray:
    """uint64(i)*φ for i in [start, start+n), wrapping."""
    return np.arange(start, start + n, dtype=np.uint64) * _GOLDEN


# Encode -------------------------------------------------------------------------


def encode(p: Params, prompt, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """model.Encode: the context float32[context_len, context_dim] for
    prompt (a str, taken as its UTF-8 bytes, or bytes) and the noise latent
    float32[channels, frames, height, width] for seed (an int64)."""
    p.validate()
    L, D = p.context_len, p.context_dim
    data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
    n = len(data)

    # Token keys: key_l = mix(...mix(mix(tokenSalt ^ b[l]) ^ b[l+L])...).
    keys = np.full(L, PAD_SALT, dtype=np.uint64)
    if n:
        b = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
        k = np.full(min(n, L), TOKEN_SALT, dtype=np.uint64)
        for start in range(0, n, L):
            chunk = b[start:start + L]
            c = len(chunk)
            k[:c] = _mix(k[:c] ^ chunk)
        keys[:len(k)] = k
    pos = _mix(_golden_multiples(0, L) + _U(POS_SALT))

    ctx = np.empty((L, D), dtype=np.float32)
    dg = _golden_multiples(0, D)
    rows = max(1, _BLOCK // D)
    c75, c25 = _F(0.75), _F(0.25)
    for l0 in range(0, L, rows):
        l1 = min(L, l0 + rows)
        e = _unit(_mix(keys[l0:l1, None] + dg[None, :]))
        q = _unit(_mix(pos[l0:l1, None] + dg[None, :]))
        ctx[l0:l1] = (c75 * e) + (c25 * q)

    total = p.channels * p.frames * p.height * p.width
    latent = np.empty(total, dtype=np.float32)
    s = _U((int(seed) & M64) ^ NOISE_SALT)
    for i0 in range(0, total, _BLOCK):
        i1 = min(total, i0 + _BLOCK)
        latent[i0:i1] = _unit(_mix(_golden_multiples(i0 + 1, i1 - i0) + s))
    return ctx, latent.reshape(latent_shape(p))


# Denoise ------------------------------------------------------------------------


def _check_lengths(p: Params, cond: Optional[np.ndarray], latent: np.ndarray) -> None:
    if cond is not None and cond.size != p.context_len * p.context_dim:
        raise BadLength(f"tensor length does not match the params: context has {cond.size} values, want "
                        f"{p.context_len * p.context_dim} for {_spec('context', context_shape(p))}")
    n = p.channels * p.frames * p.height * p.width
    if latent.size != n:
        raise BadLength(f"tensor length does not match the params: latent has {latent.size} values, want {n} "
                        f"for {_spec('latent', latent_shape(p))}")


def _float32(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype != np.float32:
        raise TypeError(f"{what} is {a.dtype}, want float32")
    return a


def targets(p: Params, cond: np.ndarray) -> np.ndarray:
    """The values Denoise moves the latent toward, float32[channels,
    frames, height, width] (model.go targets)."""
    L, D = p.context_len, p.context_dim
    C, F, H, W = latent_shape(p)
    cond = np.ascontiguousarray(_float32(np.asarray(cond), "context")).reshape(L, D)
    norm = _F(1 / math.sqrt(D))

    # sign[c][d] = -1 where mix(mix(poolSalt + c*φ) + d*φ) is odd, else 1.
    seeds = _mix(_golden_multiples(0, C) + _U(POOL_SALT))
    odd = (_mix(seeds[:, None] + _golden_multiples(0, D)[None, :]) & _U(1)).astype(bool)
    sign = np.where(odd, _F(-1), _F(1)).astype(np.float32)

    # dot: four lanes (d mod 4), each summed in order of d, then
    # (lane0+lane1)+(lane2+lane3). lanes[c, l, j] is lane j of pool[c][l].
    lanes = np.zeros((C, L, 4), dtype=np.float32)
    prod = np.empty((C, L, 4), dtype=np.float32)
    with np.errstate(all="ignore"):
        for d0 in range(0, D - D % 4, 4):
            np.multiply(cond[None, :, d0:d0 + 4], sign[:, None, d0:d0 + 4], out=prod)
            lanes += prod
        for d in range(D - D % 4, D):
            lanes[:, :, d % 4] += cond[None, :, d] * sign[:, d, None]
    with np.errstate(all="ignore"):
        pool = ((lanes[:, :, 0] + lanes[:, :, 1]) + (lanes[:, :, 2] + lanes[:, :, 3])) * norm  # (C, L)

    cs = np.arange(C)[:, None, None]
    fs = np.arange(F)[None, :, None]
    ia = (np.arange(H)[None, None, :] * L // H + fs) % L  # (1, F, H)
    ib = (np.arange(W)[None, None, :] * L // W + 2 * fs + cs) % L  # (C, F, W)
    a = pool[cs, ia][:, :, :, None]  # (C, F, H, 1)
    b = pool[cs, ib][:, :, None, :]  # (C, F, 1, W)
    with np.errstate(all="ignore"):  # Go computes through overflow and NaN silently
        return (a + b) + (a * b)


def denoise(p: Params, cond: np.ndarray, latent: np.ndarray, steps: int,
            step: Optional[Callable[[int, int], None]] = None,
            cancelled: Optional[Callable[[], bool]] = None) -> None:
    """model.DenoiseEach: steps refinement steps over latent (a writable,
    C-contiguous float32 array of the latent's size), in place,
    conditioned on cond. step(done, total) is called after each step;
    cancelled() is asked before each channel of each step (and before the
    targets), and when it returns True, Cancelled is raised with the latent
    partly refined."""
    p.validate()
    if steps < 0:
        raise ValueError(f"steps must be 0 or more: got {steps}")
    cond = np.asarray(cond)
    _check_lengths(p, cond, latent)
    _float32(latent, "latent")
    if not latent.flags.c_contiguous or not latent.flags.writeable:
        raise ValueError("latent must be a writable C-contiguous array (denoise works in place)")
    if cancelled is not None and cancelled():
        raise Cancelled("cancelled")
    if steps == 0:
        return
    C = p.channels
    target = targets(p, cond).reshape(C, -1)
    x = latent.reshape(C, -1)
    diff = np.empty(x.shape[1], dtype=np.float32)
    clamp = np.empty(x.shape[1], dtype=np.float32)
    one, eighth, minus_one = _F(1), _F(0.125), _F(-1)
    for i in range(steps):
        a = one / _F(steps - i + 1)
        k = a * eighth
        for c in range(C):
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled")
            xs = x[c]
            # x = (x + float32(a*(t-x))) + float32(k*min(max(x, -1), 1)),
            # through overflow and NaN as silently as Go.
            with np.errstate(all="ignore"):
                np.subtract(target[c], xs, out=diff)
                np.multiply(a, diff, out=diff)
                np.maximum(xs, minus_one, out=clamp)
                np.minimum(clamp, one, out=clamp)
                np.multiply(k, clamp, out=clamp)
                xs += diff
                xs += clamp
        if step is not None:
            step(i + 1, steps)


# Decode -------------------------------------------------------------------------


def _palette() -> bytes:
    """The 6×6×6 cube (index 36r+6g+b), then 40 grays round(k*255/41)."""
    out = bytearray()
    for r in range(6):
        for g in range(6):
            for b in range(6):
                out += bytes((r * 51, g * 51, b * 51))
    for k in range(1, 41):
        v = (k * 255 + 20) // 41
        out += bytes((v, v, v))
    return bytes(out)


PALETTE = _palette()


def _level(x: np.ndarray) -> np.ndarray:
    """level: 127.5 + 127.5*y/(1+|y|) with y = 2x, truncated; NaN is 0."""
    with np.errstate(all="ignore"):
        y = x * _F(2)
        v = (_F(127.5) * (y / (_F(1) + np.abs(y)))) + _F(127.5)
        v = np.where(v >= 0, np.minimum(v, _F(255)), _F(0))
    return v.astype(np.uint8)


def _nearest(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The palette index nearest to each (r, g, b), the lowest on a tie."""
    r, g, b = r.astype(np.int32), g.astype(np.int32), b.astype(np.int32)
    ri, gi, bi = (r + 25) // 51, (g + 25) // 51, (b + 25) // 51
    best = ri * 36 + gi * 6 + bi
    dist = (r - ri * 51) ** 2 + (g - gi * 51) ** 2 + (b - bi * 51) ** 2
    for k in range(1, 41):
        v = (k * 255 + 20) // 41
        d = (r - v) ** 2 + (g - v) ** 2 + (b - v) ** 2
        closer = d < dist
        best = np.where(closer, 215 + k, best)
        dist = np.where(closer, d, dist)
    return best.astype(np.uint8)


def decode(p: Params, latent: np.ndarray) -> bytes:
    """model.Decode: latent as an animated GIF, byte for byte Go's."""
    p.validate()
    latent = np.asarray(latent)
    _check_lengths(p, None, latent)
    C, F, H, W = latent_shape(p)
    S = p.scale
    lat = _float32(latent, "latent").reshape(C, F, H, W)
    idx = _nearest(_level(lat[0]), _level(lat[1]), _level(lat[2]))  # (F, H, W)
    return gif(idx, S, p.delay)


def gif(idx: np.ndarray, scale: int, delay: int) -> bytes:
    """The GIF that image/gif.EncodeAll writes for frames of palette
    indices idx[frame, y, x] upsampled by scale, the global palette
    PALETTE, delay per frame and LoopCount 0."""
    F, H, W = idx.shape
    w, h = W * scale, H * scale
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", w, h, 0x80 | 7, 0, 0)  # global color table of 2^(7+1) colours
    out += PALETTE
    if F > 1:  # animation info only for more than one frame
        out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00"
    for f in range(F):
        if delay > 0:
            out += b"\x21\xf9\x04\x00" + struct.pack("<H", delay) + b"\x00\x00"
        out += b"\x2c" + struct.pack("<HHHH", 0, 0, w, h) + b"\x00"  # the global color table
        out.append(8)  # LZW minimum code size
        pix = np.repeat(np.repeat(idx[f], scale, axis=0), scale, axis=1)
        data = lzw(pix.tobytes())
        for i in range(0, len(data), 255):
            chunk = data[i:i + 255]
            out.append(len(chunk))
            out += chunk
        out.append(0)
    out.append(0x3B)
    return bytes(out)


def lzw(data: bytes) -> bytes:
    """compress/lzw's Writer (LSB order, 8-bit literals) over data, then
    Close: the same codes, table resets and bits."""
    out = bytearray()
    append = out.append
    clear, eof, max_code = 256, 257, 4095
    table: Dict[int, int] = {}
    get = table.get
    bits, nbits, width = clear, 9, 9  # the clear code, written first
    hi, overflow = eof, 512
    if not data:
        # Write of nothing writes nothing; Close then writes clear and eof.
        code = None
    else:
        code = data[0]
    it = iter(data)
    next(it, None)
    for x in it:
        key = (code << 8) | x
        t = get(key)
        if t is not None:
            code = t
            continue
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        code = x
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == max_code:
            bits |= clear << nbits
            nbits += width
            while nbits >= 8:
                append(bits & 0xFF)
                bits >>= 8
                nbits -= 8
            width, hi, overflow = 9, eof, 512
            table.clear()
            continue
        table[key] = hi
    # Close: the pending code (and the table growth it counts), then eof.
    tail = []
    if code is not None:
        tail.append((code, width))
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == max_code:
            tail.append((clear, width))
            width = 9
    tail.append((eof, width))
    for c, cw in tail:
        bits |= c << nbits
        nbits += cw
        while nbits >= 8:
            append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits > 0:
        append(bits & 0xFF)
    return bytes(out)


def reference(p: Params, prompt, seed: int, steps: int) -> bytes:
    """model.Reference: encode, denoise and decode in one process."""
    p.validate()
    if steps < 0:
        raise ValueError(f"steps must be 0 or more: got {steps}")
    cond, latent = encode(p, prompt, seed)
    denoise(p, cond, latent, steps)
    return decode(p, latent)
