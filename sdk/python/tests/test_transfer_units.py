"""Units of the transfer manager: frames and their checks (docs/protocol.md
4.2-4.7), layout and segments (5.1-5.4), the status machine (3.3), the
checksum (7) and the constants (12)."""

import errno
import os
import stat
import threading
import time

import numpy as np
import pytest
import xxhash

from phased import tensor as T
from phased._proto.phasedv1 import transfer_pb2
from phased.transfer import frames as F
from phased.transfer import segment as S
from phased.transfer.futex import Ctrl, fence, futex_wait, futex_wake
from phased.transfer.manager import _UsedIDs, _Verifier, go_duration

SHM = "/dev/shm"


def uniq(tag: str) -> str:
    uniq.n += 1
    return f"u{os.getpid()}-{tag}{uniq.n}"


uniq.n = 0


# --- constants and statuses ------------------------------------------------

def test_constants():
    assert F.WIRE_VERSION == 1
    assert F.MAX_FRAME_SIZE == 1048576
    assert F.MAX_BUFFERS == 4096
    assert F.MAX_ENDPOINT_LEN == 512
    assert F.MAX_REASON_LEN == 1024
    assert F.CTRL_SIZE == 64 and F.ALIGNMENT == 64
    assert F.MAX_SEGMENT_SIZE == 17592186044416
    assert F.DATA_MAGIC == 0x31444850 and F.DATA_HEADER_SIZE == 28
    assert F.ZMQ_CHUNK == 4194304
    assert F.CHECKSUM_BLOCK == 262144
    assert T.MAX_BYTES == 1099511627776
    assert F.CUDA_HANDLE_SIZE == 64
    assert F.MAX_USED_IDS == 4096
    assert F.MAX_SLEEP == 0.1
    assert S.DEFAULT_POOL_SEGMENTS == 32 and S.DEFAULT_POOL_BYTES == 1073741824
    assert (F.FAILED, F.BOOTSTRAPPING, F.WAITING_FOR_INPUT, F.TRANSFERRING, F.SUCCESS) == (1, 2, 3, 4, 5)


LEGAL = {(2, 3), (2, 1), (3, 4), (3, 1), (4, 5), (4, 1)}


@pytest.mark.parametrize("frm", [0, 1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("to", [0, 1, 2, 3, 4, 5, 6])
def test_transitions(frm, to):
    assert F.can_transition(frm, to) == ((frm, to) in LEGAL)


def test_status_names():
    assert [F.status_name(s) for s in range(1, 6)] == ["Failed", "Bootstrapping", "WaitingForInput",
                                                       "Transferring", "Success"]
    assert F.status_name(9) == "Status(9)"
    assert F.terminal(1) and F.terminal(5) and not F.terminal(4)


# --- checksum (7) ----------------------------------------------------------------

CHECKSUMS = [
    (b"", 0x2d06800538d394c2),
    (b"abc", 0x78af5f94892f3950),
    (bytes(i % 251 for i in range(262144)), 0x19e33139f5534930),
    (bytes(i % 251 for i in range(300000)), 0xf4ff46a8f85bf793),
    (bytes(i % 251 for i in range(600000)), 0x6d41be04d1a12e87),
]


@pytest.mark.parametrize("data,want", CHECKSUMS, ids=lambda x: str(len(x)) if isinstance(x, bytes) else hex(x))
def test_checksum_worked_values(data, want):
    assert T.checksum(data) == want
    # The receiver's verifier, fed in arbitrary progress steps, agrees.
    b = F.Buffer("x", T.UINT8, (len(data),), 64, len(data))
    seg = memoryview(bytes(64) + data)
    v = _Verifier()
    for limit in (1, 262143, 262144, 300000, len(data)):
        assert v.advance([b], seg, min(limit, len(data)), lambda: False)
    assert v.sums == [want] and v.pos == len(data)


def test_checksum_first_block_chain():
    data = bytes(i % 251 for i in range(300000))
    first = xxhash.xxh3_64_intdigest(data[:262144])
    assert first == 0x19e33139f5534930
    assert xxhash.xxh3_64_intdigest(data[262144:], seed=first) == 0xf4ff46a8f85bf793


def test_verifier_several_buffers_and_stop():
    a, b = bytes(range(256)) * 2000, b""
    c = bytes(7 for _ in range(600000))
    seg = bytearray(2_000_000)
    bufs = [F.Buffer("a", 6, (len(a),), 64, len(a)), F.Buffer("b", 6, (0,), 512064, 0),
            F.Buffer("c", 6, (len(c),), 512064, len(c))]
    seg[64:64 + len(a)] = a
    seg[512064:512064 + len(c)] = c
    v = _Verifier()
    # Only whole blocks below the limit are hashed.
    v.advance(bufs, memoryview(seg), 262143, lambda: False)
    assert v.pos == 0
    v.advance(bufs, memoryview(seg), 262144 + 10, lambda: False)
    assert v.pos == 262144
    assert not v.advance(bufs, memoryview(seg), 10 ** 9, lambda: True)  # stopped
    assert v.advance(bufs, memoryview(seg), 10 ** 9, lambda: False)
    assert v.sums == [T.checksum(a), T.checksum(b), T.checksum(c)]


# --- data headers (4.7) --------------------------------------------------------------

def test_data_header_example():
    want = bytes.fromhex("50 48 44 31 2a 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00")
    assert F.encode_data_header(42, 7, 4096) == want
    assert F.parse_data_header(want) == (42, 7, 4096)
    assert F.parse_data_header(want[:27]) is None
    assert F.parse_data_header(want + b"\0") is None
    assert F.parse_data_header(b"XHD1" + want[4:]) is None


def test_locate_data():
    bufs = [F.Buffer("a", 6, (100,), 0, 100), F.Buffer("e", 6, (0,), 128, 0), F.Buffer("b", 6, (10,), 128, 10)]
    assert F.locate_data(bufs, 0) == (0, 100)
    assert F.locate_data(bufs, 99) == (99, 100)
    assert F.locate_data(bufs, 100) is None  # padding
    assert F.locate_data(bufs, 128) == (128, 138)
    assert F.locate_data(bufs, 138) is None
    assert F.locate_data(bufs, 1 << 40) is None
    assert F.locate_data([F.Buffer("e", 6, (0,), 0, 0)], 0) is None


# --- descriptors (4.3) ---------------------------------------------------------------

def base_descriptor(**kw):
    d = transfer_pb2.Descriptor(version=1, room=7, generation=5, status_endpoint="ipc:///tmp/x/r-7-5.sock",
                                segment="phased-a.1-7-5", segment_size=4096)
    d.buffers.add(name="x", dtype=T.FLOAT32, shape=[16], offset=128, length=64)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_descriptor_valid_and_roundtrip():
    bufs = [F.Buffer("x", T.FLOAT32, (16,), 64, 64), F.Buffer("y", T.UINT8, (3, 0), 128, 0),
            F.Buffer("z", T.INT64, (), 128, 8)]
    b = F.encode_descriptor("", 9, 11, "ipc:///tmp/r.sock", "phased-a.1-9-11", 4096, bufs)
    pd, why = F.decode_descriptor(b, 9)
    assert why is None
    d = F.parse_descriptor(pd)
    assert d.backend == "shm" and d.generation == 11 and d.segment_size == 4096 and d.buffers == bufs
    zb = F.encode_descriptor("zmq", 9, 11, "tcp://127.0.0.1:5", "", 64, [])
    assert F.parse_descriptor(F.decode_descriptor(zb, 9)[0]).backend == "zmq"
    assert F.parse_descriptor(pd).checksum_offset == 0
    fb = F.encode_descriptor("shm", 9, 11, "ipc:///tmp/r.sock", "phased-a.1-9-11", 4096, bufs, 192)
    fpd, _ = F.decode_descriptor(fb, 9)
    assert fpd.checksum_offset == 192
    d = F.parse_descriptor(fpd)
    assert d.fast and d.checksum_offset == 192 and d.buffers == bufs


def test_descriptor_dropped():
    assert F.decode_descriptor(b"\xff\xff\xffnot a protobuf", 7) == (None, "undecodable descriptor")
    assert F.decode_descriptor(base_descriptor(version=2).SerializeToString(), 7)[1] == "descriptor version 2"
    assert F.decode_descriptor(base_descriptor(room=8).SerializeToString(), 7)[1] == "descriptor names room 8"


def _edit(fn):
    d = base_descriptor()
    fn(d)
    return d


def _add(d, **kw):
    d.buffers.add(**kw)


def _set_buf(**kw):
    def fn(d):
        for k, v in kw.items():
            setattr(d.buffers[0], k, v)
    return fn


DESCRIPTOR_CASES = [
    # rule 1: the status endpoint
    ("endpoint too long", lambda d: setattr(d, "status_endpoint", "ipc://" + "x" * 507),
     "descriptor: status endpoint is 513 bytes, the limit is 512"),
    ("endpoint NUL", lambda d: setattr(d, "status_endpoint", "ipc://a\x00b"),
     'descriptor: status endpoint "ipc://a\\x00b" contains a NUL byte'),
    ("endpoint inproc", lambda d: setattr(d, "status_endpoint", "inproc://phased-transfer-wake"),
     'descriptor: status endpoint "inproc://phased-transfer-wake": want ipc://PATH or tcp://HOST:PORT'),
    ("endpoint empty path", lambda d: setattr(d, "status_endpoint", "ipc://"),
     'descriptor: status endpoint "ipc://": want ipc://PATH or tcp://HOST:PORT'),
    # rule 2: the backend
    ("unknown backend", lambda d: setattr(d, "backend", "rdma"),
     'descriptor: unknown transfer backend "rdma" (known: shm, zmq, cuda)'),
    # rule 3: segment and handle by backend
    ("zmq names a segment", lambda d: setattr(d, "backend", "zmq"),
     'descriptor: a zmq descriptor names segment "phased-a.1-7-5"; it must name none'),
    ("shm carries a handle", lambda d: setattr(d, "cuda_ipc_handle", b"h" * 64),
     "descriptor: a shm descriptor carries a CUDA IPC handle; only a cuda one may"),
    ("cuda handle size", lambda d: (setattr(d, "backend", "cuda"), setattr(d, "segment", ""),
                                    setattr(d, "cuda_ipc_handle", b"h" * 10)),
     "descriptor: the CUDA IPC handle is 10 bytes, want 64"),
    # rule 4: the segment name
    ("path traversal", lambda d: setattr(d, "segment", "../etc/passwd"),
     'descriptor: bad segment name "../etc/passwd": want ^phased-[A-Za-z0-9_.-]+$'),
    ("slash in segment name", lambda d: setattr(d, "segment", "phased-x/../y-7-5"),
     'bad segment name "phased-x/../y-7-5"'),
    ("trailing newline", lambda d: setattr(d, "segment", "phased-a.1-7-5\n"),
     'bad segment name "phased-a.1-7-5\\n"'),
    ("segment name too long", lambda d: setattr(d, "segment", "phased-" + "a" * 245 + "-7-5"),
     "bad segment name"),
    ("another room's segment", lambda d: setattr(d, "segment", "phased-a.1-1-5"),
     'descriptor: segment "phased-a.1-1-5" is not the segment of room 7 generation 5 '
     '(want a name ending in "-7-5")'),
    ("another generation's segment", lambda d: setattr(d, "segment", "phased-a.1-7-55"),
     "is not the segment of room 7 generation 5"),
    # rule 5: the size
    ("zero segment size", lambda d: setattr(d, "segment_size", 0),
     "descriptor: segment size 0 is out of range (64..17592186044416)"),
    ("oversized segment", lambda d: setattr(d, "segment_size", (1 << 44) + 1),
     "descriptor: segment size 17592186044417 is out of range"),
    # rule 6: the buffer count
    ("too many buffers", lambda d: [d.buffers.add(name=f"b{i}", dtype=6, shape=[0], offset=64) for i in range(4096)],
     "descriptor: 4097 buffers, the limit is 4096"),
    # rule 7: each buffer
    ("no name", _set_buf(name=""), "descriptor: buffer 0 has no name"),
    ("two buffers with one name", lambda d: _add(d, name="x", dtype=1, shape=[16], offset=256, length=64),
     'descriptor: two buffers are named "x"'),
    ("unknown dtype", _set_buf(dtype=99),
     'descriptor: buffer 0 "x": bad tensor spec: tensor "x": unknown dtype 99'),
    ("negative dimension", lambda d: (d.buffers[0].shape.__setitem__(0, -1)),
     'descriptor: buffer 0 "x": bad tensor spec: tensor "x": negative dimension -1'),
    ("huge shape", lambda d: (d.buffers[0].shape.extend([1 << 30, 1 << 30])),
     'bad tensor spec: tensor "x": shape [16 1073741824 1073741824] exceeds 1099511627776 bytes'),
    ("length does not match shape", _set_buf(length=128),
     'descriptor: buffer 0 "x": length 128, but x:float32[16] is 64 bytes'),
    ("buffer over the control block", _set_buf(offset=32),
     'descriptor: buffer 0 "x": offset 32 is inside the segment\'s 64-byte control block'),
    ("offset out of bounds", _set_buf(offset=4090),
     'descriptor: buffer 0 "x": offset 4090 + length 64 is out of bounds of the 4096-byte segment'),
    ("offset overflows", _set_buf(offset=2 ** 64 - 8), "is out of bounds of the 4096-byte segment"),
    # rule 8: the checksum table (the fast path, 5.5)
    ("checksum table in the control block", lambda d: setattr(d, "checksum_offset", 8),
     "descriptor: checksum offset 8: want a multiple of 8 after the 64-byte control block"),
    ("checksum table unaligned", lambda d: setattr(d, "checksum_offset", 260),
     "descriptor: checksum offset 260: want a multiple of 8 after the 64-byte control block"),
    ("checksum table out of bounds", lambda d: setattr(d, "checksum_offset", 4096),
     "descriptor: checksum offset 4096 + 8 bytes is out of bounds of the 4096-byte segment"),
    ("checksum table past the end", lambda d: (_add(d, name="y", dtype=6, shape=[8], offset=256, length=8),
                                               setattr(d, "checksum_offset", 4088)),
     "descriptor: checksum offset 4088 + 16 bytes is out of bounds of the 4096-byte segment"),
    ("checksum table wraps", lambda d: setattr(d, "checksum_offset", 2 ** 64 - 8),
     "descriptor: checksum offset 18446744073709551608 + 8 bytes is out of bounds of the 4096-byte segment"),
    ("zmq carries a checksum table", lambda d: (setattr(d, "backend", "zmq"), setattr(d, "segment", ""),
                                                setattr(d, "checksum_offset", 256)),
     "descriptor: a zmq descriptor carries checksum offset 256; only a shm one may"),
    # rule 9: overlaps, the checksum table's included
    ("overlapping buffers", lambda d: _add(d, name="y", dtype=6, shape=[64], offset=160, length=64),
     'descriptor: buffers "x" and "y" overlap'),
    ("checksum table over a buffer", lambda d: setattr(d, "checksum_offset", 184),
     'descriptor: buffers "x" and "(checksum table)" overlap'),
    ("buffer over the checksum table", lambda d: (_add(d, name="y", dtype=6, shape=[8], offset=256, length=8),
                                                  setattr(d, "checksum_offset", 120)),
     'descriptor: buffers "(checksum table)" and "x" overlap'),
]


@pytest.mark.parametrize("name,edit,want", DESCRIPTOR_CASES, ids=[c[0] for c in DESCRIPTOR_CASES])
def test_descriptor_refused(name, edit, want):
    d = _edit(edit)
    pd, why = F.decode_descriptor(d.SerializeToString(), 7)
    assert why is None
    with pytest.raises(F.DescriptorError) as e:
        F.parse_descriptor(pd)
    assert want in str(e.value)
    assert str(e.value).startswith("descriptor: ")


def test_descriptor_edge_cases_accepted():
    # zmq buffers may start at 0; empty buffers share offsets; unaligned offsets are fine.
    d = base_descriptor(backend="zmq", segment="")
    d.buffers[0].offset = 0
    d.buffers.add(name="e", dtype=6, shape=[0], offset=64, length=0)
    d.buffers.add(name="y", dtype=6, shape=[3], offset=64, length=3)
    d.buffers.add(name="z", dtype=6, shape=[1], offset=67, length=1)
    assert [b.name for b in F.parse_descriptor(d).buffers] == ["x", "e", "y", "z"]
    # A buffer may end exactly at the segment's end; tcp endpoints pass.
    d = base_descriptor(status_endpoint="tcp://10.0.0.1:5555")
    d.buffers[0].offset = 4096 - 64
    assert F.parse_descriptor(d).buffers[0].offset == 4032
    # An empty buffer shares no byte, wherever it lies (as in Go's check).
    d = base_descriptor()
    d.buffers.add(name="e", dtype=6, shape=[0], offset=150, length=0)
    assert [b.name for b in F.parse_descriptor(d).buffers] == ["x", "e"]
    # The checksum table may touch a buffer and end at the segment's end;
    # without one the receiver takes frames.
    for off in (192, 4088, 64):
        d = F.parse_descriptor(base_descriptor(checksum_offset=off))
        assert d.checksum_offset == off and d.fast
    assert not F.parse_descriptor(base_descriptor()).fast


def test_check_endpoint():
    F.check_endpoint("ipc:///x")
    F.check_endpoint("tcp://h:1")
    for bad in ("", "ipc://", "tcp://", "udp://x", "inproc://x", "ipc://" + "a" * 507):
        with pytest.raises(ValueError):
            F.check_endpoint(bad)


# --- status frames and Success checks -------------------------------------------------

def test_status_frames():
    hs = [F.Header("a", T.FLOAT32, (2, 3), 24, 0xDEADBEEFCAFEF00D)]
    b = F.encode_status(3, 4, F.SUCCESS, "", hs)
    f, why = F.decode_status(b, 3)
    assert why is None and f.status == F.SUCCESS and f.generation == 4
    assert F.headers_from_proto(f.tensors) == hs
    assert F.decode_status(b, 4)[1] == "status frame names room 3"
    assert F.decode_status(b"garbage", 3) == (None, "undecodable status frame")
    bad = transfer_pb2.StatusFrame(version=0, room=3).SerializeToString()
    assert F.decode_status(bad, 3)[1] == "status frame version 0"


def test_check_headers():
    bufs = [F.Buffer("a", T.FLOAT32, (8,), 64, 32), F.Buffer("b", T.UINT8, (100,), 128, 100)]
    good = [F.Header("a", T.FLOAT32, (8,), 32, 1), F.Header("b", T.UINT8, (100,), 100, 2)]
    F.check_headers(bufs, good)
    cases = [
        (good[:1], "verify: the sender reported 1 tensors, 2 expected"),
        ([F.Header("c", T.FLOAT32, (8,), 32, 1), good[1]],
         'verify: tensor 0 "a": the sender wrote c:float32[8], expected a:float32[8]'),
        ([good[0], F.Header("b", T.UINT8, (100,), 1 << 40, 2)],
         'verify: tensor 1 "b": the sender wrote 1099511627776 bytes, expected 100'),
        ([good[0], F.Header("b", 77, (10, 10), 100, 2)],
         'verify: tensor 1 "b": the sender wrote b:dtype(77)[10 10], expected b:uint8[100]'),
    ]
    for hs, want in cases:
        with pytest.raises(ValueError, match=None) as e:
            F.check_headers(bufs, hs)
        assert str(e.value) == want
    # The fast path's table stands for a Success frame's tensors.
    table = (1).to_bytes(8, "little") + (0xFFFFFFFFFFFFFFFE).to_bytes(8, "little") + b"rest"
    assert F.sums_of(bufs, table) == [F.Header("a", T.FLOAT32, (8,), 32, 1),
                                      F.Header("b", T.UINT8, (100,), 100, 0xFFFFFFFFFFFFFFFE)]
    F.check_headers(bufs, F.sums_of(bufs, table))
    assert F.sums_of([], b"") == []
    assert F.checksum_mismatch(1, bufs[1], 0x5d1f, 0x0b3a) == \
        'verify: tensor 1 "b": checksum mismatch: buffer has 0000000000005d1f, the sender reported 0000000000000b3a'


def test_reasons_are_cut():
    assert F.peer_failed_reason("") == "sender: no reason given"
    assert F.peer_failed_reason("boom") == "sender: boom"
    long = "é" * 600  # 1200 bytes
    got = F.peer_failed_reason(long)
    assert got == "sender: " + "é" * 512 + "..."
    assert F.truncate("x" * 1025, 1024) == "x" * 1024 + "..."


def test_select_tensors():
    bufs = [F.Buffer("x", T.FLOAT32, (2, 2), 64, 16), F.Buffer("h", T.BFLOAT16, (3,), 128, 6)]
    x = np.ones((2, 2), np.float32)
    h = np.arange(3, dtype="<u2")
    got = F.select_tensors({"extra": np.zeros(1), "h": h, "x": x}, bufs)
    assert got[0] is x and got[1] is h
    cases = [
        ({"x": x, "z": h}, 'send: the receiver asks for tensor "h"; the sender has ["x" "z"]'),
        ({"x": np.ones((4,), np.float32), "h": h},
         "send: tensor 0 x:float32[4] does not match the receiver's buffer x:float32[2 2]"),
        ({"x": np.ones((2, 2), np.int32), "h": h},
         "send: tensor 0 x:int32[2 2] does not match the receiver's buffer x:float32[2 2]"),
        ({"x": np.ones((2, 2), np.float64), "h": h}, 'send: tensor 0 "x" has numpy dtype float64'),
        ({"x": x, "h": np.ones(3, np.float16)},
         "send: tensor 1 h:float16[3] does not match the receiver's buffer h:bfloat16[3]"),
    ]
    for outputs, want in cases:
        with pytest.raises(ValueError) as e:
            F.select_tensors(outputs, bufs)
        assert want in str(e.value)
    # Non-contiguous outputs are made contiguous (one copy).
    xt = np.ones((2, 2), np.float32).T
    assert F.select_tensors({"x": xt, "h": h}, bufs)[0].flags.c_contiguous


def test_go_formatting():
    assert F.go_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert F.spec_str("x", 1, ()) == "x:float32[]"
    assert go_duration(10) == "10s"
    assert go_duration(0.3) == "300ms"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(90) == "1m30s"
    assert go_duration(3600) == "1h0m0s"


# --- layout and names (5.1, 5.2) -------------------------------------------------------

def test_layout_example():
    specs = [T.Spec("context", "float32", (16, 64)), T.Spec("latent", "float32", (4, 8, 24, 32))]
    bufs, need = S.layout(specs, 64)
    assert [(b.name, b.offset, b.length) for b in bufs] == [("context", 64, 4096), ("latent", 4160, 98304)]
    assert need == 102464
    assert S.size_class(need) == 131072
    # A shm room puts the fast path's checksum table after the buffers,
    # and the hand-off table after it, 64-byte aligned.
    bufs2, sums_at, handoffs_at, need = S.shm_layout(specs)
    assert bufs2 == bufs and (sums_at, handoffs_at, need) == (102464, 102528, 102784)
    assert S.size_class(need) == 131072


def test_shm_layout_rules():
    specs = [T.Spec("a", "uint8", (3,)), T.Spec("e", "uint8", (0,))]
    bufs, sums_at, handoffs_at, need = S.shm_layout(specs)
    assert [(b.offset, b.length) for b in bufs] == [(64, 3), (128, 0)]
    assert (sums_at, handoffs_at, need) == (128, 192, 192 + 2 * 128)
    assert S.shm_layout([]) == ([], 64, 64, 64)
    # The tables count towards the limit: these buffers end 64 bytes
    # before it, their tables past it.
    big = [T.Spec(f"t{i}", "uint8", (1 << 40,)) for i in range(15)] + [T.Spec("last", "uint8", ((1 << 40) - 128,))]
    assert S.layout(big, 64)[1] == S.MAX_SEGMENT_SIZE - 64
    with pytest.raises(ValueError, match=f"inputs need more than {S.MAX_SEGMENT_SIZE} bytes"):
        S.shm_layout(big)


def test_layout_rules():
    specs = [T.Spec("a", "uint8", (3,)), T.Spec("e", "uint8", (0,)), T.Spec("b", "int64", ()),
             T.Spec("f", "uint8", (0, 5))]
    bufs, need = S.layout(specs, 64)
    assert [(b.offset, b.length) for b in bufs] == [(64, 3), (128, 0), (128, 8), (192, 0)]
    assert need == 192
    assert S.layout([], 64) == ([], 64)
    assert S.layout([], 0) == ([], 64)  # at least 64
    assert S.layout([T.Spec("a", "uint8", (3,))], 0)[0][0].offset == 0
    with pytest.raises(ValueError, match="exceeds"):
        S.layout([T.Spec("a", "uint8", (1 << 41,))], 64)


def test_size_classes():
    assert [S.size_class(n) for n in (1, 4096, 4097, 65536, 65537, 2 << 20, (2 << 20) + 1, 5 << 20)] == \
        [4096, 4096, 8192, 65536, 131072, 2 << 20, 4 << 20, 6 << 20]


def test_names():
    assert S.segment_name("transformer-0.4242", 42, 7) == "phased-transformer-0.4242-42-7"
    assert S.sender_socket_name(42) == "s-42.sock"
    assert S.receiver_socket_name(42, 7) == "r-42-7.sock"


# --- segments (5.1, 5.4) ---------------------------------------------------------------------

def test_segment_create_and_open():
    name = f"phased-{uniq('seg')}.1-3-4"
    seg = S.Segment.create(SHM, name, 8192)
    try:
        st = os.stat(seg.path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 8192
        with pytest.raises(OSError) as e:  # O_EXCL
            S.Segment.create(SHM, name, 8192)
        assert e.value.errno == errno.EEXIST
        seg.ctrl.reset()
        fd, st2 = S.open_peer_segment(SHM, name, 8192)
        os.close(fd)
        assert st2.st_ino == st.st_ino
        with pytest.raises(OSError, match=r"is 8192 bytes, the descriptor says 4096"):
            S.open_peer_segment(SHM, name, 4096)
        with pytest.raises(OSError, match="no such file or directory"):
            S.open_peer_segment(SHM, name + "0", 8192)
        with pytest.raises(ValueError, match="bad segment name"):
            S.open_peer_segment(SHM, "../" + name, 8192)
        link = f"phased-{uniq('link')}.1-3-4"
        os.symlink(seg.path, os.path.join(SHM, link))
        try:
            with pytest.raises(OSError, match="too many levels of symbolic links"):
                S.open_peer_segment(SHM, link, 8192)
        finally:
            os.unlink(os.path.join(SHM, link))
        fifo = f"phased-{uniq('fifo')}.1-3-4"
        os.mkfifo(os.path.join(SHM, fifo), 0o600)
        try:
            with pytest.raises(OSError, match="is not a regular file"):
                S.open_peer_segment(SHM, fifo, 8192)
        finally:
            os.unlink(os.path.join(SHM, fifo))
    finally:
        seg.destroy()
    assert not os.path.exists(os.path.join(SHM, name))


def test_segment_views_outlive_destroy():
    seg = S.Segment.create(SHM, f"phased-{uniq('v')}.1-1-1", 4096)
    view = np.frombuffer(seg.mm, np.uint8)[64:128]
    view[:] = 9
    seg.destroy()  # the file goes; the mapping stays while view does
    assert not os.path.exists(seg.path if seg.path else "/nonexistent")
    assert int(view.sum()) == 9 * 64


def test_pool():
    mgr = uniq("pool") + ".1"
    gens = iter(range(100, 200))
    pool = S.Pool(SHM, mgr, lambda: next(gens), max_segs=2, max_bytes=1 << 20)
    try:
        a, reused = pool.get(S.segment_name(mgr, 1, 1), 10000)
        assert not reused and a.size == 16384
        pool.put(a)
        assert os.path.exists(os.path.join(SHM, f"phased-{mgr}-free-100"))
        assert pool.idle() == (1, 16384)
        # A 16 KiB segment is more than twice the 4 KiB class of 100 bytes: a new one.
        b, reused = pool.get(S.segment_name(mgr, 2, 2), 100)
        assert not reused and b.size == 4096
        c, reused = pool.get(S.segment_name(mgr, 3, 3), 9000)
        assert reused and c is a and c.name == f"phased-{mgr}-3-3" and os.path.exists(c.path)
        for s in (b, c):
            pool.put(s)
        big, _ = pool.get(S.segment_name(mgr, 4, 4), 900 << 10)  # 1 MiB class: evicts to fit 1 MiB
        pool.put(big)
        left = sorted(f for f in os.listdir(SHM) if f.startswith(f"phased-{mgr}-"))
        assert pool.idle()[0] <= 2 and pool.idle()[1] <= 1 << 20 and len(left) == pool.idle()[0]
    finally:
        pool.close()
        left = S.sweep_segments(SHM, mgr)  # what an assertion above left out of the pool
    assert left == 0


def test_map_cache():
    name = f"phased-{uniq('mc')}.1-1-1"
    seg = S.Segment.create(SHM, name, 4096)
    cache = S.MapCache()
    try:
        mm1, _, done = cache.get(SHM, name, 4096)
        done()
        mm2, _, done = cache.get(SHM, name, 4096)
        done()
        assert mm1 is mm2 and len(cache) == 1
        seg.rename(f"phased-{uniq('mc')}.1-2-2")  # pooled and reused: the same file
        mm3, _, done = cache.get(SHM, seg.name, 4096)
        done()
        assert mm3 is mm1
        seg.unlink()
        cache.sweep()
        assert len(cache) == 0
    finally:
        cache.close()
        seg.destroy()


def test_sweep_segments():
    mgr = uniq("sw") + ".77"
    keep = f"phased-{mgr}x-1-1"
    names = [f"phased-{mgr}-1-2", f"phased-{mgr}-free-3", keep, f"phased-{mgr}-a-1"]
    for n in names:
        open(os.path.join(SHM, n), "w").close()
    try:
        assert S.sweep_segments(SHM, mgr) == 2
        assert sorted(f for f in os.listdir(SHM) if mgr in f) == sorted([keep, f"phased-{mgr}-a-1"])
    finally:
        for n in names:
            try:
                os.unlink(os.path.join(SHM, n))
            except FileNotFoundError:
                pass


# --- the control block (5.3) ------------------------------------------------------------

def test_ctrl_and_futex():
    buf = bytearray(64)
    c = Ctrl(buf)
    c.publish(12345)
    assert c.progress() == 12345 and c.seq() == 1
    assert int.from_bytes(buf[0:8], "little") == 12345 and int.from_bytes(buf[8:12], "little") == 1
    c.reset()
    assert bytes(buf[:16]) == bytes(16)
    # done, at offset 16: set by the sender's finish (with progress and a
    # wake-up), zeroed by reset, which leaves the reserved bytes alone.
    assert not c.done()
    c.finish(777)
    assert c.done() and c.progress() == 777 and c.seq() == 1
    assert int.from_bytes(buf[16:20], "little") == 1 and int.from_bytes(buf[0:8], "little") == 777
    buf[20:64] = b"\xff" * 44
    c.reset()
    assert bytes(buf[:20]) == bytes(20) and not c.done() and bytes(buf[20:]) == b"\xff" * 44
    buf[20:64] = bytes(44)
    fence()  # a barrier, or nothing on x86-64
    # A sleep ends at its timeout, or at once when seq moved.
    t = time.monotonic()
    c.sleep(0, 0.05)
    assert 0.03 < time.monotonic() - t < 1
    t = time.monotonic()
    c.sleep(99, 5)  # seq is 0, not 99: EAGAIN
    assert time.monotonic() - t < 1
    # A wake from another thread ends a long sleep.
    threading.Timer(0.05, c.wake).start()
    t = time.monotonic()
    c.sleep(c.seq(), 5)
    assert time.monotonic() - t < 2
    assert int.from_bytes(buf[12:16], "little") == 0
    c.close()
    futex_wake(np.zeros(1, np.uint32).ctypes.data)  # harmless with no waiter
    w = np.zeros(1, np.uint32)
    futex_wait(w.ctypes.data, 1, 0.01)  # value differs: returns at once


# --- used ids (3.2) ------------------------------------------------------------------------

def test_used_ids_fold():
    u = _UsedIDs()
    for i in range(1, 4097):
        assert u.check(i) is None
        u.add(i)
    assert u.check(5) == "transfer: room id already used: 5 (room ids are never reused)"
    u.add(5000)  # 4097 entries: the lower half folds into the mark
    assert u.low == 2049 and len(u.set) == 2049
    assert "no longer accepts ids below 2049" in u.check(100)
    assert u.check(4999) is None
