"""The zero-copy hand-off (docs/protocol.md section 5.6): its entries,
names and lend words; outputs from alloc lent between two Python managers
in one process; hostile hand-off entries on the receiver (ported from
sdk/transfer/handoff_test.go, with Go's texts); and ctx.alloc in the
runtime and in run_local. The Go<->Python hand-offs are in
sdk/python/handoff_test.go."""

import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest
import zmq

import phased
from phased import tensor as T
from phased._proto.phasedv1 import transfer_pb2
from phased.runtime import Runtime
from phased.tensor import Spec
from phased.transfer import Manager, NotStartedError, ReleasedError, RoomFailedError, TransferError
from phased.transfer import frames as F
from phased.transfer import handoff as H
from phased.transfer import segment as S
from phased.transfer.futex import Ctrl
from phased.transfer.manager import COPY_CHUNK

from test_docs import PROTOCOL, table
from test_transfer_manager import (LOG, SHM, Env, FakeSender, eventually, fake_receiver, fake_segment, filled, hop,
                                   map_segment, open_room, recv_frames, room_status, same, unique, unlink_all,
                                   wait_status)

GO_HANDOFF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "transfer", "handoff_test.go")


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


def mapping_of(addr):
    """(permissions, path) of the mapping of this process holding addr."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[1], (parts[5].strip() if len(parts) == 6 else "")
    return None, None


def inside(arr, seg_data):
    lo = seg_data.ctypes.data
    a = arr.ctypes.data
    return lo <= a and a + arr.nbytes <= lo + seg_data.nbytes


def alloc_filled(m, spec, seed):
    x = m.alloc(spec)
    x[...] = filled(spec, seed)
    return x


# --- units ---------------------------------------------------------------------------------

def test_constants_and_names():
    assert (H.LEND_SLOTS, H.LEND_TABLE_SIZE, H.HANDOFF_ENTRY, H.HANDOFF_NAME_MAX) == (1024, 8192, 128, 104)
    assert H.ATOMIC, "libatomic is not loaded: the lend words fall back to plain loads and stores"
    names = {r[0]: r[2] for r in table(PROTOCOL, "names")}
    assert H.output_name("transformer-0.4242", 9) == names["output segment"]
    assert H.lend_table_name("transformer-0.4242") == names["lend table segment"]
    # 5.6's lend words: free, lent, taken.
    rows = table(PROTOCOL, "lend-word")
    assert [r[0] for r in rows] == ["0", f"token × 2^32 + {H.LEND_LENT}", f"token × 2^32 + {H.LEND_TAKEN}"]
    assert [r[1].split(":")[0] for r in rows] == ["free", "lent", "taken"]


def test_entry_encode_decode():
    """An entry is where 5.6's table says, and reads back."""
    rows = table(PROTOCOL, "handoff-entry")
    fields = {r[2].split(" (")[0]: (int(r[0]), int(r[1])) for r in rows}
    assert sum(w for _, w in fields.values()) == H.HANDOFF_ENTRY
    buf = bytearray(b"\xee" * (64 + 2 * H.HANDOFF_ENTRY))
    name = "phased-transformer-0.4242-out-9"
    H.put_handoff(buf, 64 + H.HANDOFF_ENTRY, 7 << 32 | 1, 128, 4096, name)
    e = buf[64 + H.HANDOFF_ENTRY:]

    def field(label):
        off, width = fields[label]
        return bytes(e[off:off + width])

    assert int.from_bytes(field("the lend word"), "little") == 7 << 32 | 1
    assert int.from_bytes(field("the tensor's offset in the output segment"), "little") == 128
    assert int.from_bytes(field("the output segment's size"), "little") == 4096
    assert field("the output segment's file name, NUL-padded") == name.encode() + bytes(104 - len(name))
    assert bytes(buf[:64 + H.HANDOFF_ENTRY]) == b"\xee" * (64 + H.HANDOFF_ENTRY)  # nothing else written
    assert H.handoff_of(buf, 64, 1) == (7 << 32 | 1, 128, 4096, name)
    assert H.handoff_of(bytes(256), 0, 1) == (0, 0, 0, "")
    with pytest.raises(ValueError, match="longer than 104 bytes"):
        H.put_handoff(buf, 0, 1, 0, 1, "phased-" + "a" * 100)


def test_parse_output_name():
    assert H.parse_output_name("phased-transformer-0.4242-out-9") == ("transformer-0.4242", 9)
    assert H.parse_output_name("phased-a-out-b-out-1023") == ("a-out-b", 1023)
    plain = "is not an output segment's name (phased-NAME-out-SLOT)"
    slot = "is not an output segment's name (phased-NAME-out-SLOT, SLOT below 1024)"
    for bad, want in [("phased-a.1-1-2", plain), ("x-a-out-1", plain), ("phased--out-1", plain),
                      ("phased-out-1", plain), ("../phased-a-out-0", plain), ("phased-a-out-1024", slot),
                      ("phased-a-out-+1", slot), ("phased-a-out-", slot), ("phased-a/b-out-1", slot),
                      ("phased-" + "a" * 65 + "-out-1", slot), ("phased-a-out-1\n", slot)]:
        with pytest.raises(H.HandoffError) as e:
            H.parse_output_name(bad)
        assert str(e.value) == f"{F.go_quote(bad)} {want}", bad


def test_segment_owner_and_pid():
    assert H.segment_owner("phased-transformer-0.4242-42-7") == "transformer-0.4242"
    assert H.segment_owner("phased-a-b.1-free-9") == "a-b.1"
    assert H.segment_owner("phased-a.1-out-3") == "a.1"
    assert H.segment_owner("phased-a.1-lends-0") == "a.1"
    for bad in ("phased-a.1-x-3", "phased-a.1-3", "other-a.1-1-2", "phased-a/b-1-2", "phased-a.1-1-x"):
        assert H.segment_owner(bad) is None, bad
    assert H.process_pid("transformer-0.4242") == 4242
    assert H.process_pid("a.b.77") == 77
    assert [H.process_pid(n) for n in ("transformer-0", ".5", "a.", "a.+5", "a.5x")] == [0] * 5


@pytest.mark.parametrize("atomic", [True, False])
def test_lend_word_cas(monkeypatch, atomic):
    """The lend word's compare-and-swap, load and store, through libatomic
    and through the plain fallback."""
    if not atomic:
        monkeypatch.setattr(H, "_cas", None)
        monkeypatch.setattr(H, "_load", None)
        monkeypatch.setattr(H, "_store", None)
    words = np.zeros(4, dtype="<u8")
    addr = words.ctypes.data + 8
    lent = 7 << 32 | H.LEND_LENT
    H.store_u64(addr, lent)
    assert int(words[1]) == lent and H.load_u64(addr) == lent
    assert not H.cas_u64(addr, 6 << 32 | H.LEND_LENT, 0)  # another lend's word
    assert int(words[1]) == lent
    assert H.cas_u64(addr, lent, lent - H.LEND_LENT + H.LEND_TAKEN)
    assert int(words[1]) == 7 << 32 | 2
    assert not H.cas_u64(addr, lent, 0)  # taken, not lent any more
    assert H.cas_u64(addr, 7 << 32 | 2, 0) and int(words[1]) == 0
    H.store_u64(addr, 2 ** 64 - 1)
    assert H.load_u64(addr) == 2 ** 64 - 1 and H.cas_u64(addr, 2 ** 64 - 1, 1)
    assert [int(w) for w in words] == [0, 1, 0, 0]


def test_outputs_reclaim_dead_receiver():
    """A slot lent to a receiver process that is gone comes back, whether
    the lend was taken or not; one lent to a live process stays lent."""
    outs = H.Outputs(SHM, unique("o"), 1 << 30, 8)
    try:
        spec = Spec("x", "uint8", (5000,))
        dead = subprocess.Popen(["/bin/true"])
        dead.wait()
        a, b, c = outs.alloc(spec), outs.alloc(spec), outs.alloc(spec)
        segs = outs.slots[:3]
        assert [s.addr for s in segs] == [x.ctypes.data for x in (a, b, c)]
        assert os.path.getsize(segs[0].seg.path) == 8192 and segs[0].seg.name == H.output_name(outs.name, 0)
        for s, x, pid, taken in ((segs[0], a, dead.pid, False), (segs[1], b, dead.pid, True),
                                 (segs[2], c, os.getpid(), True)):
            w = outs.next_word()
            outs.lend(s, w, pid, -1)
            if taken:
                H.store_u64(outs.word_addr(s.slot), w + 1)
            outs.free(x)
        assert outs.counts() == (0, 1, 2)
        assert [H.load_u64(outs.word_addr(i)) for i in range(3)] == [0, 0, segs[2].lent.word + 1]
        # The live receiver gives its slot back: it is idle again.
        H.store_u64(outs.word_addr(2), 0)
        assert outs.counts() == (0, 0, 3)
    finally:
        outs.close()
    assert not [f for f in os.listdir(SHM) if f.startswith(f"phased-{outs.name}-")]


def test_outputs_pool_bounds():
    """Idle output segments beyond the pool's bounds are unlinked, the
    least recently freed first; an output beyond the budget is ordinary
    memory, as is one of no bytes."""
    outs = H.Outputs(SHM, unique("o"), 4 << 20, 2)
    try:
        spec = Spec("x", "uint8", (1 << 20,))
        a, b = outs.alloc(spec), outs.alloc(spec)
        addr_b = b.ctypes.data
        outs.free(a)
        outs.free(b)
        # Too big for the idle ones, and two are idle: a, the least
        # recently freed, goes.
        c = outs.alloc(Spec("y", "uint8", (2 << 20,)))
        assert outs.counts() == (1, 0, 1) and outs._find(c) is outs.slots[0] and outs.slots[1].addr == addr_b
        assert outs.slots[0].seg.size == 2 << 20
        files = sorted(f for f in os.listdir(SHM) if f.startswith(f"phased-{outs.name}-"))
        assert files == sorted([H.lend_table_name(outs.name), H.output_name(outs.name, 0),
                                H.output_name(outs.name, 1)])
        big = outs.alloc(Spec("z", "float32", (5 << 18,)))  # 5 MiB: a 6 MiB class, beyond the 4 MiB budget
        assert big.dtype == np.float32 and big.shape == (5 << 18,) and outs._find(big) is None and not big.any()
        empty = outs.alloc(Spec("e", "float32", (0, 3)))
        assert empty.shape == (0, 3) and outs._find(empty) is None
        assert outs.counts() == (1, 0, 1)
        # written: its writer's checksum, for a held array only.
        assert outs.written(c, 5) and outs.slots[0].sum == 5
        assert not outs.written(big, 5)  # ordinary memory: nothing to record
        outs.free(c)
        with pytest.raises(ValueError, match="not an output from Alloc that is still being written"):
            outs.written(c, 5)
    finally:
        outs.close()
    with pytest.raises(RuntimeError):
        outs.alloc(Spec("x", "uint8", (10,)))


def test_verifier_skips_lent_buffers():
    """Buffers a hand-off stands for are not hashed (their bytes in the
    segment are stale); the others are, across them."""
    from phased.transfer.manager import _Verifier

    a, c = bytes(range(256)) * 2000, bytes(7 for _ in range(300000))
    seg = bytearray(2_000_000)
    bufs = [F.Buffer("a", 6, (len(a),), 64, len(a)), F.Buffer("lent", 6, (600000,), 512064, 600000),
            F.Buffer("c", 6, (len(c),), 1112064, len(c))]
    seg[64:64 + len(a)] = a
    seg[1112064:1112064 + len(c)] = c
    v = _Verifier()
    v.skip = [False, True, False]
    calls = []
    assert v.advance(bufs, memoryview(seg), 10 ** 9, lambda: calls.append(1) or False)
    assert v.sums == [T.checksum(a), 0, T.checksum(c)]
    assert v.pos == len(a) + 600000 + len(c)
    assert len(calls) == 2 + 2  # one look per block hashed: a's two, c's two


# --- descriptors (4.3 rules 9, 10) --------------------------------------------------------

def base_descriptor(**kw):
    d = transfer_pb2.Descriptor(version=1, room=7, generation=5, status_endpoint="ipc:///tmp/x/r-7-5.sock",
                                segment="phased-a.1-7-5", segment_size=4096, checksum_offset=192,
                                handoff_offset=256)
    d.buffers.add(name="x", dtype=T.FLOAT32, shape=[16], offset=128, length=64)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


HANDOFF_DESCRIPTORS = [
    ("hand-off table without the fast path", dict(checksum_offset=0),
     "descriptor: hand-off offset 256 without a checksum offset; a hand-off table needs the fast path"),
    ("hand-off table in the control block", dict(handoff_offset=16),
     "descriptor: hand-off offset 16: want a multiple of 8 after the 64-byte control block"),
    ("hand-off table unaligned", dict(handoff_offset=260),
     "descriptor: hand-off offset 260: want a multiple of 8 after the 64-byte control block"),
    ("hand-off table past the end", dict(handoff_offset=4096 - 120),
     "descriptor: hand-off offset 3976 + 128 bytes is out of bounds of the 4096-byte segment"),
    ("hand-off table wraps", dict(handoff_offset=2 ** 64 - 128),
     "descriptor: hand-off offset 18446744073709551488 + 128 bytes is out of bounds of the 4096-byte segment"),
    ("hand-off table over a buffer", dict(handoff_offset=136),
     'descriptor: buffers "x" and "(hand-off table)" overlap'),
    ("hand-off table over the checksum table", dict(handoff_offset=192),
     'descriptor: buffers "(checksum table)" and "(hand-off table)" overlap'),
]


@pytest.mark.parametrize("name,edit,want", HANDOFF_DESCRIPTORS, ids=[c[0] for c in HANDOFF_DESCRIPTORS])
def test_handoff_descriptor_refused(name, edit, want):
    pd, why = F.decode_descriptor(base_descriptor(**edit).SerializeToString(), 7)
    assert why is None
    with pytest.raises(F.DescriptorError) as e:
        F.parse_descriptor(pd)
    assert str(e.value) == want


def test_handoff_descriptor_accepted():
    d = F.parse_descriptor(base_descriptor())
    assert (d.checksum_offset, d.handoff_offset) == (192, 256)
    assert F.parse_descriptor(base_descriptor(handoff_offset=4096 - 128)).handoff_offset == 3968  # ends at the end
    assert F.parse_descriptor(base_descriptor(handoff_offset=200)).handoff_offset == 200  # touches the sums
    assert F.parse_descriptor(base_descriptor(handoff_offset=0)).handoff_offset == 0
    b = F.encode_descriptor("shm", 7, 5, "ipc:///tmp/r.sock", "phased-a.1-7-5", 4096,
                            [F.Buffer("x", T.FLOAT32, (16,), 64, 64)], 128, 192)
    d = F.parse_descriptor(F.decode_descriptor(b, 7)[0])
    assert (d.checksum_offset, d.handoff_offset) == (128, 192)
    # No buffers: an empty table anywhere after the control block.
    empty = base_descriptor()
    del empty.buffers[:]
    assert F.parse_descriptor(empty).handoff_offset == 256


def test_hostile_descriptors_with_handoff_tables(env):
    """A sender refuses a descriptor that breaks a hand-off rule: the room
    fails with the reason, and nothing is written or lent."""
    snd = env.manager(tag="s")
    made = []
    x = snd.alloc(Spec("x", "float32", (16,)))
    x[:] = np.arange(16)
    try:
        for i, (name, edit, want) in enumerate(HANDOFF_DESCRIPTORS):
            room = 10 + i
            ep = snd.open_sender(room, "shm")
            push = env.socket(zmq.PUSH)
            push.connect(ep)
            seg = f"phased-{snd.name}fake-{room}-5"
            made.append(fake_segment(seg, 4096))
            d = base_descriptor(room=room, segment=seg, status_endpoint=f"ipc://{env.dir}/nobody.sock", **edit)
            push.send(d.SerializeToString())
            with pytest.raises(RoomFailedError) as e:
                snd.send(room, {"x": x})
            assert e.value.reason == want, name
            with open(made[-1], "rb") as f:
                assert f.read() == bytes(4096), f"{name}: the fake segment was written"
            snd.remove(room)
        assert snd._outputs.counts() == (1, 0, 0)
    finally:
        snd.free(x)
        unlink_all(made)
        if os.path.exists(os.path.join(env.dir, "nobody.sock")):
            os.unlink(os.path.join(env.dir, "nobody.sock"))


# --- two Python managers ------------------------------------------------------------------

def test_handoff_between_python_managers(env):
    """Two outputs from alloc and an ordinary array through one shm room:
    the outputs are lent (the receiver's arrays are read-only views of the
    sender's segments, not in its own segment), the other is copied, all
    arrive intact; once both sides removed the room and the arrays are
    gone, the segments are back and serve the next alloc."""
    snd, rcv = env.pair()
    big = Spec("latent", "uint8", (3 * F.CHECKSUM_BLOCK + 5,))
    small = Spec("context", "float32", (16, 64))
    plain = Spec("meta", "uint8", (32,))
    want = [alloc_filled(snd, small, 1), alloc_filled(snd, big, 2), filled(plain, 3)]
    snd.written(want[0], T.checksum(want[0]))
    specs = [small, big, plain]
    open_room(snd, rcv, 1, specs)
    wait_status(snd, 1, F.WAITING_FOR_INPUT)
    r = rcv._rooms[1]
    assert snd._rooms[1].desc.handoff_offset == r.handoffs_at == S.shm_layout(specs)[2] != 0
    got = hop(snd, rcv, 1, {s.name: w for s, w in zip(specs, want)})
    assert all(same(g, w) for g, w in zip(got, want))
    own = r.seg.data
    for i, lent in enumerate([True, True, False]):
        assert inside(got[i], own) != lent, specs[i].name
        assert got[i].flags.writeable != lent, specs[i].name
    perms, path = mapping_of(got[1].ctypes.data)
    assert perms == "r--s" and os.path.basename(path).startswith(f"phased-{snd.name}-out-")
    with pytest.raises(ValueError):
        got[1][0] = 1
    with pytest.raises(ValueError):
        got[1].flags.writeable = True
    assert snd._outputs.counts() == (0, 2, 0)
    assert room_status(snd, 1).status == room_status(rcv, 1).status == F.SUCCESS

    # The sender frees and removes first; the receiver's arrays still
    # hold the lend after its room is removed, and their bytes.
    addrs = [want[0].ctypes.data, want[1].ctypes.data]
    snd.free(want[0])
    snd.free(want[1])
    snd.remove(1)
    rcv.remove(1)
    assert snd._outputs.counts() == (0, 2, 0)
    assert same(got[1], want[1])
    del got
    assert snd._outputs.counts() == (0, 0, 2)
    again = snd.alloc(big)
    assert again.ctypes.data == addrs[1], "the next alloc of the same size did not reuse the segment given back"
    again[0] = 1  # writable again
    snd.free(again)
    assert rcv._peers.mapped() == 3  # the two segments and their lend table, kept while the files exist


def test_handoff_quiet_and_entries(env):
    """The sender's side of a lend, seen by a fake receiver: the entry, the
    checksum table, a lent word, done, and no progress before done (so the
    receiver never hashes a lent buffer's stale bytes); the other output is
    copied intact. A receiver without a hand-off table gets every output
    copied."""
    snd = env.manager(tag="s")
    lent_spec = Spec("x", "float32", (16,))
    x = alloc_filled(snd, lent_spec, 5)
    y = filled(Spec("y", "uint8", (COPY_CHUNK + 5,)), 4)  # two chunks
    size = 2 * COPY_CHUNK
    sums_at = S.align_up(128 + y.nbytes)
    handoffs_at = sums_at + 64
    made = []
    try:
        for room, table_at in ((1, 0), (2, handoffs_at)):
            status = fake_receiver(env, snd, room, size, y.nbytes, made, checksum_offset=sums_at,
                                   handoff_offset=table_at)
            assert snd.send(room, {"y": y, "x": x}) == 64 + y.nbytes
            with open(made[-1], "rb") as f:
                data = f.read()
            progress, seq, _, done = struct.unpack_from("<QIII", data)
            assert (progress, done) == (64 + y.nbytes, 1)
            assert list(struct.unpack_from("<2Q", data, sums_at)) == [T.checksum(x), T.checksum(y)]
            assert data[128:128 + y.nbytes] == y.tobytes()
            assert recv_frames(status, 0.1) == []
            if table_at == 0:
                assert data[64:128] == x.tobytes() and seq > 1
                assert snd._outputs.counts() == (1, 0, 0)  # held, not lent
                continue
            assert seq == 1, "progress published before done while lending"
            assert data[64:128] == bytes(64), "a lent output was copied"
            w, off, seg_size, name = H.handoff_of(data, table_at, 0)
            assert H.handoff_of(data, table_at, 1) == (0, 0, 0, "")
            s = snd._outputs.slots[0]
            assert (w & 0xFFFFFFFF, off, seg_size, name) == (H.LEND_LENT, 0, s.seg.size, s.seg.name)
            assert H.load_u64(snd._outputs.word_addr(0)) == w
            assert snd._outputs.counts() == (0, 1, 0)
        snd.free(x)
        for room in (1, 2):
            snd.remove(room)
        # Nobody takes room 2's lend: the sender takes it back once the
        # receiver's segment is unlinked.
        assert snd._outputs.counts() == (0, 1, 0)
        unlink_all(made)
        assert snd._outputs.counts() == (0, 0, 1)
    finally:
        unlink_all(made)


def test_handoff_untaken(env):
    """A room removed after its sender lent but before any receive took
    the segment gives it back; so does one whose receiver side was removed
    before the sender lent (the sender sees the receiver's segment
    unlinked)."""
    snd, rcv = env.pair()
    s = Spec("latent", "uint8", (4096,))
    out = alloc_filled(snd, s, 1)
    open_room(snd, rcv, 1, [s])
    snd.send(1, {"latent": out})
    snd.free(out)
    assert snd._outputs.counts() == (0, 1, 0)
    snd.remove(1)
    rcv.remove(1)
    assert snd._outputs.counts() == (0, 0, 1)

    out = alloc_filled(snd, s, 2)
    open_room(snd, rcv, 2, [s])
    wait_status(snd, 2, F.WAITING_FOR_INPUT)
    reached, gate = threading.Event(), threading.Event()
    snd._before_lend = lambda: (reached.set(), gate.wait())
    t = threading.Thread(target=_send, args=(snd, 2, {"latent": out}))
    t.start()
    assert reached.wait(10), "the sender did not reach its lend"
    rcv.remove(2)
    gate.set()
    t.join(10)
    assert not t.is_alive()
    snd.free(out)
    eventually("the sender to take back a lend into an unlinked segment",
               lambda: snd._outputs.counts() == (0, 0, 1))
    snd.remove(2)


def _send(m, room, outputs):
    try:
        m.send(room, outputs)
    except TransferError as e:
        return e
    return None


@pytest.mark.parametrize("verify", [False, True])
def test_verify_handoffs(env, verify):
    """The receiver trusts the writer's checksum of a lent tensor unless
    verify_handoffs, which catches bytes changed after the writer hashed
    them; either way the segment comes back."""
    snd = env.manager(tag="s")
    rcv = env.manager(tag="r", verify_handoffs=verify)
    s = Spec("latent", "uint8", (F.CHECKSUM_BLOCK + 3,))
    out = alloc_filled(snd, s, 4)
    snd.written(out, T.checksum(out))
    out[7] ^= 1  # a writer that writes after it hashed
    open_room(snd, rcv, 1, [s])
    if verify:
        with pytest.raises(RoomFailedError) as e:
            hop(snd, rcv, 1, {"latent": out})
        assert e.value.reason.startswith('verify: tensor 0 "latent": checksum mismatch: buffer has ')
    else:
        got = hop(snd, rcv, 1, {"latent": out})
        assert same(got[0], out)
        del got
    snd.free(out)
    snd.remove(1)
    rcv.remove(1)
    assert snd._outputs.counts() == (0, 0, 1)


def test_alloc_memory_that_is_copied(env):
    """Outputs from alloc are copied where they cannot be lent: on the zmq
    backend, beyond the pool's budget, and empty ones."""
    snd = env.manager(tag="s", pool_bytes=64 << 10)
    rcv = env.manager(tag="r")
    s = Spec("latent", "float32", (64, 64))  # 16 KiB
    big = Spec("big", "uint8", (128 << 10,))  # beyond the budget
    e = Spec("e", "int64", (0,))
    out, huge, empty = alloc_filled(snd, s, 1), alloc_filled(snd, big, 2), snd.alloc(e)
    assert snd._outputs._find(huge) is None and empty.shape == (0,)
    snd.written(huge, 1)  # ordinary memory: ignored
    open_room(snd, rcv, 1, [s], "zmq")
    got = hop(snd, rcv, 1, {"latent": out})
    assert same(got[0], out) and got[0].flags.writeable
    del got
    open_room(snd, rcv, 2, [big, e])
    got = hop(snd, rcv, 2, {"big": huge, "e": empty})
    assert same(got[0], huge) and got[0].flags.writeable and got[1].shape == (0,)
    del got
    assert snd._outputs.counts() == (1, 0, 0)
    snd.free(out)
    with pytest.raises(TransferError, match="written: the tensor is not an output from Alloc"):
        snd.written(out, 1)
    for room in (1, 2):
        snd.remove(room)
        rcv.remove(room)


def test_alloc_states(env):
    m = Manager(unique("n"), env.dir, logger=LOG)
    with pytest.raises(NotStartedError):
        m.alloc(Spec("x", "uint8", (8,)))
    m.close()
    with pytest.raises(ReleasedError):
        m.alloc(Spec("x", "uint8", (8,)))
    m = env.manager()
    with pytest.raises(TransferError, match=r"transfer: alloc x uint8 \[-1\]: bad tensor spec"):
        m.alloc(Spec("x", "uint8", (-1,)))
    kept = m.alloc(Spec("x", "uint8", (8,)))
    m.close()  # unlinks the output segment; the array keeps its mapping
    kept[:] = 3
    assert int(kept.sum()) == 24
    with pytest.raises(ReleasedError):
        m.alloc(Spec("x", "uint8", (8,)))


# --- hostile hand-off entries -------------------------------------------------------------

def hostile_handoff_cases(owner, seg_name, seg_size, receiver, link):
    """(name, word, offset, size, segment, text) of hand-off entries a
    receiver refuses, as in Go's TestHostileHandoffs (the same names and
    texts: test_hostile_handoff_texts_are_gos)."""
    lent = 1 << 32 | H.LEND_LENT
    return [
        ("not lent", 5 << 32, 0, seg_size, seg_name, "is not a lent one"),
        ("no output name", lent, 0, seg_size, f"phased-{receiver}-1-2", "is not an output segment's name"),
        ("a path", lent, 0, seg_size, f"../phased-{owner}-out-0", "is not an output segment's name"),
        ("slot too high", lent, 0, seg_size, f"phased-{owner}-out-4096", "SLOT below 1024"),
        ("past the end", lent, seg_size - 64, seg_size, seg_name, "out of bounds"),
        ("unaligned", lent, 8, seg_size, seg_name, "out of bounds"),
        ("wrong size", lent, 0, seg_size * 2, seg_name, "the hand-off says"),
        ("a symlink", lent, 0, seg_size, link, "too many levels of symbolic links"),
        ("missing", lent, 0, seg_size, f"phased-{owner}-out-9", "no such file"),
        ("not the lent word", lent, 0, seg_size, seg_name, "took segment"),
    ]


def test_hostile_handoffs(env):
    """A sender that writes bad hand-off entries: each fails the room with a
    reason naming the tensor and what is wrong, takes nothing, and leaves
    the lend word alone."""
    rcv = env.manager(tag="r")
    fake = FakeSender(env, rcv)
    s = Spec("x", "uint8", (4096,))
    owner = unique("evil")
    outs = H.Outputs(SHM, owner, 1 << 30, 8)
    link = os.path.join(SHM, H.output_name(owner, 7))
    try:
        x = outs.alloc(s)
        x[:] = filled(s, 5)
        seg = outs.slots[0].seg
        os.symlink(seg.path, link)
        sum_ = T.checksum(x)
        cases = hostile_handoff_cases(owner, seg.name, seg.size, rcv.name, os.path.basename(link))
        exact = {
            "not lent": 'hand-off: tensor 0 "x": the entry\'s word 0x500000000 is not a lent one',
            "unaligned": f'hand-off: tensor 0 "x": offset 8 + length 4096 is out of bounds of the {seg.size}-byte '
                         f'segment {seg.name} (or not 64-byte aligned)',
            "wrong size": f'hand-off: tensor 0 "x": segment {seg.path} is {seg.size} bytes, the hand-off says '
                          f'{2 * seg.size}',
            "missing": f'hand-off: tensor 0 "x": open segment {SHM}/{H.output_name(owner, 9)}: no such file or '
                       'directory',
            "not the lent word": f'hand-off: tensor 0 "x": the sender took segment {seg.name} back (its lend word '
                                 'is no longer 0x100000001)',
        }
        for i, (name, word, off, size, segment, want) in enumerate(cases):
            room = i + 1
            d, _ = fake.open(room, [s])
            assert d.handoff_offset != 0, "the receiver offers no hand-off table"
            mm = map_segment(d)
            H.store_u64(outs.word_addr(0), 2 << 32 | H.LEND_LENT)  # lent, but not with the entry's word
            H.put_handoff(mm, d.handoff_offset, word, off, size, segment)
            struct.pack_into("<Q", mm, d.checksum_offset, sum_)
            c = Ctrl(mm)
            c.finish(4096)
            c.close()
            mm.close()
            with pytest.raises(RoomFailedError) as e:
                rcv.receive(room)
            reason = e.value.reason
            assert reason.startswith('hand-off: tensor 0 "x": ') and want in reason, (name, reason)
            if name in exact:
                assert reason == exact[name], name
            assert room_status(rcv, room).status == F.FAILED
            assert H.load_u64(outs.word_addr(0)) == 2 << 32 | H.LEND_LENT, f"{name}: the lend word was changed"
            rcv.remove(room)
            assert H.load_u64(outs.word_addr(0)) == 2 << 32 | H.LEND_LENT, f"{name}: remove changed the lend word"
        # A good entry with the lent word is taken, and given back at remove.
        room = len(cases) + 1
        d, _ = fake.open(room, [s])
        mm = map_segment(d)
        H.put_handoff(mm, d.handoff_offset, 2 << 32 | H.LEND_LENT, 0, seg.size, seg.name)
        struct.pack_into("<Q", mm, d.checksum_offset, sum_)
        c = Ctrl(mm)
        c.finish(4096)
        c.close()
        mm.close()
        got = rcv.receive(room)
        assert same(got[0], x) and not got[0].flags.writeable
        assert H.load_u64(outs.word_addr(0)) == 2 << 32 | H.LEND_TAKEN
        del got
        rcv.remove(room)
        assert H.load_u64(outs.word_addr(0)) == 0
    finally:
        unlink_all([link])
        outs.close()
        fake.close()
    # Nothing holds a reference: once the sender's files are gone, no
    # mapping is left.
    assert rcv._peers.mapped() == 0


def test_hostile_handoff_texts_are_gos():
    """The hostile entries are Go's, by name and expected text."""
    if not os.path.exists(GO_HANDOFF):
        pytest.skip("the Go SDK's tests are not beside this one")
    with open(GO_HANDOFF) as f:
        text = f.read()
    body = text[text.index("func TestHostileHandoffs"):]
    go = dict(re.findall(r'^\s*\{"([^"]+)",.*"([^"]*)"\},\s*$', body, re.M))
    ours = {c[0]: c[5] for c in hostile_handoff_cases("o", "s", 4096, "r", "l")}
    assert go == ours


def test_handoff_receiver_removed_with_lease_then_sender_closes(env):
    """A receiver's array outlives its room and the sender's release: the
    bytes stay, and the mapping goes with the array."""
    snd, rcv = env.pair()
    s = Spec("latent", "uint8", (8192,))
    out = alloc_filled(snd, s, 9)
    want = np.array(out)
    open_room(snd, rcv, 1, [s])
    got = hop(snd, rcv, 1, {"latent": out})
    snd.free(out)
    del out
    snd.remove(1)
    rcv.remove(1)
    snd.close()
    assert same(got[0], want)
    assert mapping_of(got[0].ctypes.data)[1].endswith("(deleted)")
    del got
    assert rcv._peers.mapped() == 0


# --- the runtime and run_local ---------------------------------------------------------------

class Writer(phased.Phase):
    """Writes "latent" into ctx.alloc's memory and "context" into its own."""

    name = "writer"

    def __init__(self, arrays="numpy", fail=False):
        self.arrays, self.fail = arrays, fail

    def run(self, ctx, request, inputs):
        out = ctx.alloc("latent", "float32", [4, 1024])
        if self.arrays == "torch":
            import torch
            out.copy_(torch.arange(4096, dtype=torch.float32).reshape(4, 1024))
        else:
            out[...] = np.arange(4096, dtype=np.float32).reshape(4, 1024)
            ctx.written(out, phased.checksum(out))
        if self.fail:
            raise ValueError("boom")
        return {"latent": out, "context": np.arange(100, dtype=np.uint8)}


@pytest.mark.parametrize("arrays,fail", [("numpy", False), ("torch", False), ("numpy", True)])
def test_runtime_lends_alloc_outputs(arrays, fail):
    """An output a phase writes into ctx.alloc's memory reaches the next
    phase as a read-only mapping of the instance's output segment, not a
    copy; the Run gives it back to the manager (held no more), and release
    removes the segment. A failed Run gives it back too."""
    if arrays == "torch":
        pytest.importorskip("torch")
    run_dir = tempfile.mkdtemp(prefix="prh-", dir="/tmp")
    rt = Runtime(Writer(arrays, fail), LOG)
    peer = Manager(unique("p"), run_dir, logger=LOG)
    peer.start()
    try:
        rt.configure("w-0", run_dir, {}, "", 0, "")
        rt.ready(lambda: True)
        specs = [Spec("latent", "float32", [4, 1024]), Spec("context", "uint8", [100])]
        ep = rt.open_room(1, 1, phased.Request("a"), "", "shm")
        peer.open_receiver(1, "shm", specs, ep)
        if fail:
            with pytest.raises(RuntimeError, match="^boom$"):
                rt.run(phased.Request("a1"), 0, 1, threading.Event())
            assert rt._mgr._outputs.counts() == (0, 0, 1)  # given back
        else:
            res = rt.run(phased.Request("a1"), 0, 1, threading.Event())
            assert res.sent_bytes == 4096 * 4 + 100
            assert res.out_drained  # the fast path: no frame left queued
            got = peer.receive(1)
            assert got[0].tolist() == np.arange(4096, dtype=np.float32).reshape(4, 1024).tolist()
            assert not got[0].flags.writeable and got[1].flags.writeable
            perms, path = mapping_of(got[0].ctypes.data)
            assert perms == "r--s" and os.path.basename(path).startswith(f"phased-w-0.{os.getpid()}-out-")
            assert rt._mgr._outputs.counts() == (0, 1, 0)  # freed by the Run, lent to the peer
            del got
        rt.remove_room(1)
        peer.remove(1)
        assert rt._mgr._outputs.counts() == (0, 0, 1)
    finally:
        errors = rt.release(time.monotonic() + 5)
        peer.close()
        left = [f for f in os.listdir(SHM) if f.startswith(f"phased-w-0.{os.getpid()}-")]
        files = os.listdir(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert errors == [] and left == [] and files == []


def test_alloc_without_a_next_phase(tmp_path):
    """run_local, and a Context without an allocator: ordinary zeroed
    memory, a torch tensor for a torch phase; written does nothing."""
    ctx = phased.Context(logging.getLogger("t"))
    x = ctx.alloc(Spec("x", "int64", [2, 3]))
    assert x.dtype == np.int64 and x.shape == (2, 3) and not x.any() and x.flags.writeable
    ctx.written(x, 1)
    with pytest.raises(T.SpecError):
        ctx.alloc("x", "float32", [-1])

    class First(Writer):
        name = "first"

    class Last(phased.Phase):
        name = "last"

        def inputs(self, request, params):
            return [Spec("latent", "float32", [4, 1024])]

        def run(self, ctx, request, inputs):
            return phased.write_artifact(request, np.asarray(inputs["latent"]).tobytes(), ".bin",
                                         "application/octet-stream")

    for arrays in ("numpy", "torch"):
        if arrays == "torch":
            pytest.importorskip("torch")
        phases = [First(arrays), Last()]
        phased.local.configure_local(phases)
        art = phased.run_local(phases, phased.Request(f"r{arrays}", artifact_dir=str(tmp_path)))
        with open(art.path, "rb") as f:
            assert np.frombuffer(f.read(), np.float32).tolist() == list(range(4096))


def test_no_handoff_without_atomics(env, monkeypatch):
    """Without atomic operations on shared memory (no libatomic) the lend
    words could race: a receiver offers no hand-off table and a sender
    lends nothing; the outputs are copied, intact."""
    monkeypatch.setattr(H, "ATOMIC", False)
    snd, rcv = env.pair()
    big = Spec("latent", "uint8", (F.CHECKSUM_BLOCK + 5,))
    want = alloc_filled(snd, big, 7)
    open_room(snd, rcv, 1, [big])
    wait_status(snd, 1, F.WAITING_FOR_INPUT)
    assert snd._rooms[1].desc.handoff_offset == 0
    got = hop(snd, rcv, 1, {"latent": want})
    assert same(got[0], want)
    assert inside(got[0], rcv._rooms[1].seg.data), "the output was not copied into the receiver's segment"
    assert snd._outputs.counts()[1] == 0
    del got
    snd.free(want)
    snd.remove(1)
    rcv.remove(1)
