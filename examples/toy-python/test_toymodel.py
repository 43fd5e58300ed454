"""The Python port of the toy model (toymodel.py) against the Go code:
testdata/golden.json holds the SHA-256 of what plugins/model computes for
each case (encode, denoise, decode) and ParseParams' exact errors.
Regenerate it from the repository root after an intended change to the
model with

    go run ./examples/toy-python/golden > examples/toy-python/testdata/golden.json

Run: /usr/bin/python3 -m pytest -q examples/toy-python
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)

import toymodel as tm  # noqa: E402

with open(os.path.join(HERE, "testdata", "golden.json"), encoding="utf-8") as f:
    GOLDEN = json.load(f)

CASES = {c["name"]: c for c in GOLDEN["cases"]}

# model_test.go's goldenSHA256: the demo reference.
DEMO_SHA256 = "ea10f50f99f29bbbd4523a340a8a75ce4e6e9b6ddedae83381b3aadb99d5f8b7"


def sha(a) -> str:
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a, dtype="<f4").tobytes()
    return hashlib.sha256(a).hexdigest()


def bits_stream(seed: int, n: int) -> np.ndarray:
    """golden/main.go's bitsStream: float32s whose bits are the low 32
    bits of mix(seed + (i+1)*φ)."""
    z = tm._mix(tm._golden_multiples(1, n) + tm._U(seed))
    return (z & tm._U(0xFFFFFFFF)).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_go(name):
    c = CASES[name]
    p = tm.Params.parse(c["params"])
    ctx, latent = tm.encode(p, c["prompt"] * c.get("prompt_repeat", 1), c["seed"])
    assert ctx.dtype == np.float32 and ctx.shape == tm.context_shape(p)
    assert latent.dtype == np.float32 and latent.shape == tm.latent_shape(p)
    assert sha(ctx) == c["context_sha256"], "encode: context"
    if c.get("bits_seed"):
        bits = bits_stream(c["bits_seed"], ctx.size + latent.size)
        ctx = bits[:ctx.size].reshape(ctx.shape).copy()
        latent = bits[ctx.size:].reshape(latent.shape).copy()
    assert sha(latent) == c["latent_sha256"], "encode: latent"
    seen = []
    tm.denoise(p, ctx, latent, c["steps"], step=lambda d, t: seen.append((d, t)))
    assert seen == [(i + 1, c["steps"]) for i in range(c["steps"])]
    assert sha(latent) == c["denoised_sha256"], "denoise"
    gif = tm.decode(p, latent)
    assert (len(gif), sha(gif)) == (c["gif_len"], c["gif_sha256"]), "decode"


def test_demo_reference():
    assert CASES["demo"]["gif_sha256"] == DEMO_SHA256
    gif = tm.reference(tm.Params(), "a red fox in the snow", 42, 20)
    assert sha(gif) == DEMO_SHA256


@pytest.mark.parametrize("case", GOLDEN["params"], ids=lambda c: json.dumps(c["params"], ensure_ascii=False))
def test_parse_params(case):
    if not case["error"]:
        p = tm.Params.parse(case["params"])
        for k, v in case["params"].items():
            assert getattr(p, k) == int(v)
        return
    with pytest.raises(tm.ParamError) as e:
        tm.Params.parse(case["params"])
    assert str(e.value) == case["error"]


@pytest.mark.parametrize("case", GOLDEN["params"], ids=lambda c: json.dumps(c["params"], ensure_ascii=False))
def test_param_problems(case):
    """Every problem, as Go's model.ParamProblems reports it: the same
    params, messages and order."""
    assert [list(p) for p in tm.param_problems(case["params"])] == case["problems"]
    assert bool(case["problems"]) == bool(case["error"])


def test_quote():
    assert tm.quote('a"b\\c\n\t\x01\x7f\u00e9\u00a0\u200b\U0001F98A\U000E0001') == \
        '"a\\"b\\\\c\\n\\t\\x01\\x7fé\\u00a0\\u200b🦊\\U000e0001"'


def test_denoise_errors():
    p = tm.Params(frames=2, height=3, width=4)
    ctx, latent = tm.encode(p, "x", 1)
    with pytest.raises(ValueError, match="^steps must be 0 or more: got -1$"):
        tm.denoise(p, ctx, latent, -1)
    with pytest.raises(tm.BadLength, match=r"latent has 95 values, want 96 for latent:float32\[4 2 3 4\]$"):
        tm.denoise(p, ctx, latent.ravel()[:95].copy(), 1)
    with pytest.raises(tm.BadLength, match=r"context has 3 values, want 1024 for context:float32\[16 64\]$"):
        tm.denoise(p, ctx.ravel()[:3], latent, 1)
    with pytest.raises(tm.BadLength):
        tm.decode(p, latent.ravel()[:95])
    with pytest.raises(ValueError, match="C-contiguous"):
        tm.denoise(p, ctx, np.asfortranarray(latent.reshape(8, 12)), 1)


def test_denoise_cancel():
    p = tm.Params()
    ctx, latent = tm.encode(p, "x", 1)
    before = latent.copy()
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3  # the initial check, then channels 0 and 1

    with pytest.raises(tm.Cancelled):
        tm.denoise(p, ctx, latent, 5, cancelled=cancelled)
    assert len(calls) == 4
    assert not np.array_equal(latent[:2], before[:2]) and np.array_equal(latent[2:], before[2:])
    tm.denoise(p, ctx, before, 0)  # steps 0: unchanged
    assert np.array_equal(before, tm.encode(p, "x", 1)[1])


def test_encode_bytes_and_str():
    p = tm.Params()
    a = tm.encode(p, "ça", 3)
    b = tm.encode(p, "ça".encode("utf-8"), 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(tm.encode(p, "", -1)[1], tm.encode(p, "", np.int64(-1))[1])


def test_invalid_params():
    with pytest.raises(tm.ParamError, match='^channels = "2": must be at least 3'):
        tm.encode(tm.Params(channels=2), "", 0)


def test_lzw_edges():
    # Close right after a table reset, and on every width boundary: the
    # decoder of Python's own GIF reader is not at hand, so check the
    # round trip with a small LZW decoder.
    rng = np.random.default_rng(1)
    for data in (b"\x00", b"\x01\x01", bytes(range(256)) * 20, rng.integers(0, 256, 50000, dtype=np.uint8).tobytes(),
                 rng.integers(0, 4, 30000, dtype=np.uint8).tobytes()):
        assert lzw_decode(tm.lzw(data)) == data


def lzw_decode(src: bytes) -> bytes:
    """A plain GIF LZW decoder (LSB, 8-bit literals, early change as Go's
    reader expects)."""
    bits, nbits, pos = 0, 0, 0
    width, clear, eof = 9, 256, 257
    table = [bytes([i]) for i in range(256)] + [b"", b""]
    out = bytearray()
    prev = None
    while True:
        while nbits < width:
            bits |= src[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        nbits -= width
        if code == clear:
            table = table[:258]
            width, prev = 9, None
            continue
        if code == eof:
            return bytes(out)
        if code < len(table):
            entry = table[code]
            if prev is not None:
                table.append(prev + entry[:1])
        else:
            entry = prev + prev[:1]
            table.append(entry)
        out += entry
        prev = entry
        if len(table) >= (1 << width) and width < 12:
            width += 1


def test_denoise_speed():
    """The default params denoise 20 steps well under a second."""
    p = tm.Params()
    ctx, latent = tm.encode(p, "a red fox in the snow", 42)
    t = time.perf_counter()
    tm.denoise(p, ctx, latent, 20)
    assert time.perf_counter() - t < 2.0
