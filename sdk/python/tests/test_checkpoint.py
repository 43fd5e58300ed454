"""The checkpoint file (phased.checkpoint, docs/protocol.md 8.4): the same
bytes as the Go package's (sdk/checkpoint/testdata/golden.ckpt, written by
its TestGolden), every bad file refused saying what, check and due as Go
has them, and the Run's checkpointer behind ctx.resume and ctx.checkpoint.
How a Run through the runtime saves and resumes is in test_runtime.py."""

import json
import logging
import os
import struct
import threading
import weakref

import numpy as np
import pytest

import phased
from phased import checkpoint as C
from phased.checkpoint import BadCheckpoint

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "checkpoint", "testdata", "golden.ckpt")
INPUTS = [1, 2**64 - 1]


def golden_state():
    """The state of sdk/checkpoint's golden(): request r000001, step 15 of
    20, inputs [1, 2**64-1]."""
    latent = np.array([0, 1, 2, 3, 4, -0.5], np.float32).reshape(2, 3)
    rng = np.array([7, 2**63 + 5], np.uint64).view(np.int64)
    return [("latent", latent), ("rng", rng)]


def write_golden(path):
    C.write(str(path), "r000001", 15, 20, INPUTS, golden_state())


def test_golden(tmp_path):
    path = tmp_path / "transformer.ckpt"
    write_golden(path)
    with open(GOLDEN, "rb") as f:
        want = f.read()
    assert path.read_bytes() == want, "Python's write differs from Go's testdata/golden.ckpt"
    assert os.listdir(tmp_path) == ["transformer.ckpt"], "a temporary file was left behind"
    assert os.stat(path).st_mode & 0o777 == 0o600
    h, tensors = C.read(GOLDEN)
    assert (h.request, h.step, h.total, h.inputs) == ("r000001", 15, 20, (1, 2**64 - 1))
    assert [(e.name, e.dtype, e.shape) for e in h.tensors] == [("latent", 1, (2, 3)), ("rng", 5, (2,))]
    assert [e.checksum for e in h.tensors] == [phased.checksum(a) for _, a in golden_state()]
    assert [n for n, _ in tensors] == ["latent", "rng"]
    for (_, got), (_, want_arr) in zip(tensors, golden_state()):
        assert got.dtype == want_arr.dtype and got.shape == want_arr.shape
        assert got.tobytes() == want_arr.tobytes()
    assert tensors[1][1].view(np.uint64)[1] == 2**63 + 5
    assert tensors[0][1].flags.writeable, "resumed state is the phase's to change"
    C.check(h, "r000001", 20, INPUTS)


def test_write_replaces_and_keeps_no_directory(tmp_path):
    path = str(tmp_path / "c.ckpt")
    write_golden(path)
    C.write(path, "r000001", 16, 20, INPUTS, golden_state()[:1])
    h, tensors = C.read(path)
    assert h.step == 16 and len(tensors) == 1
    assert os.listdir(tmp_path) == ["c.ckpt"]
    # Into a directory that is gone (the request ended): an error, no file,
    # no directory made.
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        C.write(str(gone / "c.ckpt"), "r000001", 15, 20, INPUTS, golden_state())
    assert not gone.exists()
    with pytest.raises(FileNotFoundError):
        C.read(str(gone / "c.ckpt"))


def test_write_refuses(tmp_path):
    path = str(tmp_path / "c.ckpt")
    for state, err, want in [
        ([("b", np.zeros(2, bool))], phased.SpecError, 'tensor "b": no wire dtype'),
        ([("u", np.zeros(2, np.uint16))], phased.SpecError, 'tensor "u": no wire dtype'),
        ([(3, np.zeros(2, np.float32))], TypeError, "tensor name 3 is not a str"),
        ([(f"t{i}", np.zeros(1, np.float32)) for i in range(65)], ValueError, "65 tensors, at most 64"),
        ([("n" * 70000, np.zeros(1, np.float32))], ValueError, "header of 70"),
    ]:
        with pytest.raises(err, match=want):
            C.write(path, "r", 1, 2, [], state)
    assert os.listdir(tmp_path) == []


def test_write_takes_any_layout(tmp_path):
    """Arrays that are not C-contiguous or little-endian are written as
    their values, little-endian and row-major; a 0-d and an empty one as
    what they are."""
    path = str(tmp_path / "c.ckpt")
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    C.write(path, "r", 1, 2, [], [("t", base.T), ("big", base.astype(">f4")), ("scalar", np.float32(2.5)),
                                  ("none", np.zeros((0, 3), np.int32))])
    _, tensors = C.read(path)
    got = dict(tensors)
    np.testing.assert_array_equal(got["t"], base.T)
    np.testing.assert_array_equal(got["big"], base)
    assert got["scalar"].shape == () and got["scalar"] == 2.5
    assert got["none"].shape == (0, 3) and got["none"].dtype == np.int32


def test_torch_state(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "c.ckpt")
    x = torch.tensor([[1.5, -2.25], [3.0, 0.0]], dtype=torch.bfloat16)
    y = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    C.write(path, "r", 3, 4, [], [("x", x), ("y", y)])
    h, tensors = C.read(path)
    assert [e.dtype for e in h.tensors] == [3, 1]  # bfloat16, float32
    rc = C.RunCheckpointer(path, 1, "r", [], logging.getLogger("test"), arrays="torch")
    step, state = rc.resume(4)
    assert step == 3 and state["x"].dtype == torch.bfloat16 and torch.equal(state["x"], x)
    assert torch.equal(state["y"], y)


# TestReadBad's cases (sdk/checkpoint/checkpoint_test.go), with what
# Python says, and a few more.
def bad_files():
    with open(GOLDEN, "rb") as f:
        b = f.read()
    n = struct.unpack("<I", b[8:12])[0]
    head = b[12:12 + n].decode()

    def with_head(s):
        s = s.encode() if isinstance(s, str) else s
        return C.MAGIC + struct.pack("<I", len(s)) + s + b[12 + n:]

    flip = bytearray(b)
    flip[-1] ^= 1
    return [
        ("empty", b"", "shorter than the magic"),
        ("magic", b"PHDCKPT2" + b[8:], "no PHDCKPT1 magic"),
        ("header length", C.MAGIC + b"\xff\xff\xff\x7f" + b[12:], "header length 2147483647 (want 2 to 65536"),
        ("header length 1", C.MAGIC + b"\x01\x00\x00\x00" + b[12:], "header length 1 "),
        ("truncated", b[:-1], "282 bytes, but its header describes 283"),
        ("longer", b + b"\0", "284 bytes, but its header describes 283"),
        ("checksum", bytes(flip), 'tensor "rng": checksum'),
        ("not json", with_head("x" * n), "header: not JSON: Expecting value"),
        ("unknown key", with_head(head.replace('"step"', '"stop"', 1)), 'unknown field "stop"'),
        ("missing key", with_head(head.replace('"inputs":[1,18446744073709551615],', "", 1)), 'no "inputs"'),
        ("step", with_head(head.replace('"step":15', '"step":20', 1)), "step 20 of 20: want 0 < step < total"),
        ("negative step", with_head(head.replace('"step":15', '"step":-1', 1)), "step -1 of 20"),
        ("dtype", with_head(head.replace('"dtype":1', '"dtype":99', 1)), "unknown dtype 99"),
        ("shape", with_head(head.replace('"shape":[2,3]', '"shape":[-2,3]', 1)), "negative dimension -2"),
        ("huge shape", with_head(head.replace('"shape":[2,3]', '"shape":[1099511627776,1099511627776]', 1)),
         "exceeds 1099511627776 bytes"),
        ("checksum overflow", with_head(head.replace("18446744073709551615", "18446744073709551616", 1)),
         "header: inputs[1] 18446744073709551616 is out of range"),
        ("trailing", with_head(head + "{}"), "data after the JSON object"),
        # Python's own: what Go's typed decoding refuses.
        ("float step", with_head(head.replace('"step":15', '"step":15.0', 1)), "step is 15.0, not an integer"),
        ("bool total", with_head(head.replace('"total":20', '"total":true', 1)), "total is true, not an integer"),
        ("request", with_head(head.replace('"r000001"', "1", 1)), "request is 1, not a string"),
        ("inputs", with_head(head.replace("[1,18446744073709551615]", "{}", 1)), "inputs is not a JSON array"),
        ("tensor key", with_head(head.replace('"dtype":1,', "", 1)), 'tensors[0]: no "dtype"'),
        ("not an object", with_head("[" + head + "]"), "the header is not a JSON object"),
        ("not utf-8", with_head(b"\xff" * n), "header: not UTF-8"),
        ("too many", with_head(json.dumps({"request": "r", "step": 1, "total": 2, "inputs": [],
                                           "tensors": [{"name": "t", "dtype": 1, "shape": [0], "checksum": 0}] * 65},
                                          separators=(",", ":"))), "65 tensors, at most 64"),
    ]


@pytest.mark.parametrize("name,data,want", bad_files(), ids=[c[0] for c in bad_files()])
def test_read_bad(tmp_path, name, data, want):
    p = tmp_path / "c.ckpt"
    p.write_bytes(data)
    with pytest.raises(BadCheckpoint) as e:
        C.read(str(p))
    assert want in str(e.value) and str(p) in str(e.value)


def test_read_not_a_file(tmp_path):
    with pytest.raises(BadCheckpoint, match="is not a regular file"):
        C.read(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadCheckpoint, match="is not a regular file"):  # and does not block
        C.read(str(fifo))


@pytest.mark.parametrize("request_id,total,inputs,want", [
    ("r2", 20, [3], "it is request r1's, not r2's"),
    ("r1", 10, [3], "it was saved by a Run of 20 steps, not 10"),
    ("r1", 20, [4], "with other inputs (checksums [3], not [4])"),
    ("r1", 20, [], "with other inputs (checksums [3], not [])"),
])
def test_check(request_id, total, inputs, want):
    h = C.Header(request="r1", step=5, total=20, inputs=(3,), tensors=())
    with pytest.raises(BadCheckpoint) as e:
        C.check(h, request_id, total, inputs)
    assert want in str(e.value)
    C.check(h, "r1", 20, [3])


def test_due():
    assert [s for s in range(21) if C.due(s, 20, 5)] == [5, 10, 15]
    assert [s for s in range(5) if C.due(s, 4, 1)] == [1, 2, 3]
    assert not (C.due(5, 20, 0) or C.due(0, 20, 1) or C.due(20, 20, 1) or C.due(5, 20, -5))


# --- the Run's checkpointer, and the Context calls --------------------------------------------------------


def test_context_without_checkpointer():
    ctx = phased.Context(logging.getLogger("test"))
    assert ctx.resume(20) == (0, {})
    assert ctx.checkpoint(5, 20, {"x": np.zeros(2, np.float32)}) is False


def test_run_checkpointer(tmp_path, caplog):
    log = logging.getLogger("test")
    path = str(tmp_path / "c.ckpt")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    resumed = []
    rc = C.RunCheckpointer(path, 2, "r1", [x], log, lambda s, t: resumed.append((s, t)))
    assert rc.resume(6) == (0, {}) and not caplog.records, "no file: step 0, no warning"
    assert rc.input_sums() == [phased.checksum(x)]
    ctx = phased.Context(log, checkpointer=rc)
    assert [ctx.checkpoint(s, 6, {"x": x + s}) for s in range(7)] == [False, False, True, False, True, False,
                                                                       False]
    step, state = ctx.resume(6)
    assert step == 4 and list(state) == ["x"] and np.array_equal(state["x"], x + 4)
    assert resumed == [(4, 6)]
    # A Run of other steps, another request or other inputs does not resume.
    caplog.set_level(logging.WARNING)
    for other, want in [(C.RunCheckpointer(path, 2, "r1", [x], log), "saved by a Run of 6 steps, not 8"),
                        (C.RunCheckpointer(path, 2, "r2", [x], log), "it is request r1's, not r2's"),
                        (C.RunCheckpointer(path, 2, "r1", [x + 1], log), "with other inputs")]:
        caplog.clear()
        assert other.resume(8 if "8" in want else 6) == (0, {})
        [rec] = caplog.records
        assert rec.levelno == logging.WARNING and want in rec.why and rec.request == other.request
    # Cancelled: no save.
    cancel = threading.Event()
    cancel.set()
    assert not phased.Context(log, cancel, checkpointer=rc).checkpoint(2, 6, {"x": x})
    assert C.read(path)[0].step == 4
    # A save that fails is a warning and False; the Run goes on.
    caplog.clear()
    gone = C.RunCheckpointer(str(tmp_path / "gone" / "c.ckpt"), 1, "r1", [x], log)
    assert phased.Context(log, checkpointer=gone).checkpoint(1, 6, {"x": x}) is False
    assert phased.Context(log, checkpointer=rc).checkpoint(2, 6, [x]) is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
    assert "No such file" in caplog.records[0].error and "want a dict" in caplog.records[1].error
    assert not (tmp_path / "gone").exists()


def test_damaged_file_is_a_warning(tmp_path, caplog):
    path = tmp_path / "c.ckpt"
    write_golden(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    rc = C.RunCheckpointer(str(path), 5, "r000001", [], logging.getLogger("test"))
    assert rc.resume(20) == (0, {})
    assert 'tensor "rng": checksum' in caplog.records[0].why


def test_closed_checkpointer_holds_no_inputs(tmp_path):
    """Once the phase's run returned (the runtime closes its checkpointer),
    the inputs' memory is not held (a lent input goes back when its last
    array goes), and nothing is saved or resumed."""
    x = np.ones(4, np.float32)
    ref = weakref.ref(x)
    path = str(tmp_path / "c.ckpt")
    rc = C.RunCheckpointer(path, 1, "r1", [x], logging.getLogger("test"))
    assert rc.save(1, 3, {"x": x})
    del x
    assert ref() is None, "hashed once, the inputs are dropped"
    y = np.ones(4, np.float32)
    ref = weakref.ref(y)
    rc = C.RunCheckpointer(path, 1, "r1", [y], logging.getLogger("test"))
    del y
    rc.close()
    assert ref() is None
    assert rc.save(2, 3, {"x": np.zeros(4, np.float32)}) is False and rc.resume(3) == (0, {})
    assert C.read(path)[0].step == 1
