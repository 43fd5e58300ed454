"""CURVE on zmq rooms (docs/protocol.md 4.7; ported from
sdk/transfer/curve_test.go): the key file, the runtime's
$PHASED_CURVE_KEY_FILE, two managers over real tcp sockets with the
cluster's pair and without, clients with other pairs, and the ZAP handler.
Go<->Python over CURVE: sdk/python/curve_test.go."""

import logging
import os
import threading
import time

import pytest
import zmq
from zmq.utils import z85

import phased
from phased.runtime import Runtime, Service
from phased._proto.phasedv1 import phase_pb2
from phased.tensor import Spec
from phased.transfer import (CURVE_KEY_FILE_ENV, CancelledError, CurveKeyError, CurveKeys, Manager, RoomFailedError,
                             curve_from_env, new_curve_keys, read_curve_key_file, write_curve_key_file)
from phased.transfer import curve as C
from phased.transfer import frames as F

from test_runtime import RUN_DIR, Scale, configure, runtime
from test_transfer_manager import Env, eventually, filled, hop, open_room, room_status, same, wait_status

FIX = "every host needs the cluster's CURVE key file, $PHASED_CURVE_KEY_FILE"


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


def key_file(path, text, mode):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # past the umask
    return str(path)


# --- the key file ----------------------------------------------------------------

def test_key_file_round_trip(tmp_path):
    a, b = new_curve_keys(), new_curve_keys()
    assert len(a.public) == len(a.secret) == 40 and a != b
    assert a.secret not in repr(a)
    good = str(tmp_path / "good.key")
    write_curve_key_file(good, a)
    assert os.stat(good).st_mode & 0o777 == 0o600
    assert read_curve_key_file(good) == a
    with pytest.raises(CurveKeyError, match="write CURVE key file: open .*: file exists"):
        write_curve_key_file(good, b)
    with pytest.raises(CurveKeyError, match="the public key is not the secret key's"):
        write_curve_key_file(str(tmp_path / "bad.key"), CurveKeys(a.public, b.secret))
    assert not os.path.exists(tmp_path / "bad.key")


def _key_file_cases():
    a, b = new_curve_keys(), new_curve_keys()
    pair = f"public {a.public}\nsecret {a.secret}\n"
    return a, [
        ("comments and blank lines", f"# cluster key\n\npublic {a.public}\n  secret {a.secret}  \n", 0o600, ""),
        ("crlf", pair.replace("\n", "\r\n"), 0o600, ""),
        ("read only", pair, 0o400, ""),
        ("others may read", pair, 0o644, "mode 0644 lets others read the secret key: chmod 600 it"),
        ("group may read", pair, 0o640, "mode 0640 lets others read the secret key: chmod 600 it"),
        ("others may write", pair, 0o602, "mode 0602 lets others read the secret key"),
        ("third line", pair + f"public {b.public}\n", 0o600,
         "line 3: expected `public KEY` then `secret KEY`, each once"),
        ("unknown word", f"pub {a.public}\n", 0o600, "line 1: expected `public KEY` then `secret KEY`"),
        ("secret first, twice", f"secret {a.secret}\nsecret {a.secret}\n", 0o600, "line 2: expected"),
        ("no secret", f"public {a.public}\n", 0o600, "expected two lines, `public KEY` and `secret KEY`"),
        ("empty", "", 0o600, "expected two lines"),
        ("mismatched pair", f"public {a.public}\nsecret {b.secret}\n", 0o600,
         "the public key is not the secret key's"),
        ("short key", f"public {a.public[:39]}\nsecret {a.secret}\n", 0o600,
         "the public key is not 40 characters of Z85"),
        ("long key", f"public {a.public}\nsecret {a.secret}12345\n", 0o600,
         "the secret key is not 40 characters of Z85"),
        ("not Z85", "public " + '"' * 40 + f"\nsecret {a.secret}\n", 0o600, "the public key is not"),
        ("too large", pair + "#" + "x" * 5000 + "\n", 0o600, "bytes: a key file holds two lines"),
        ("a comment in UTF-8", pair + "# clé\n", 0o600, ""),
    ]


_KEYS, _CASES = _key_file_cases()


@pytest.mark.parametrize("name,text,mode,want", _CASES, ids=[c[0] for c in _CASES])
def test_key_file(tmp_path, name, text, mode, want):
    path = key_file(tmp_path / "k", text, mode)
    if not want:
        assert read_curve_key_file(path) == _KEYS
        return
    with pytest.raises(CurveKeyError) as e:
        read_curve_key_file(path)
    assert str(e.value).startswith(f"CURVE key file {path}: ") and want in str(e.value), str(e.value)


def test_key_file_not_there_or_not_a_file(tmp_path):
    with pytest.raises(CurveKeyError, match=f"CURVE key file: open {tmp_path}/nope: no such file or directory") as e:
        read_curve_key_file(str(tmp_path / "nope"))
    assert isinstance(e.value.__cause__, FileNotFoundError)
    with pytest.raises(CurveKeyError, match=f"CURVE key file {tmp_path}: not a regular file"):
        read_curve_key_file(str(tmp_path))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CurveKeyError, match="not a regular file"):  # and no hang
        read_curve_key_file(fifo)
    # Bytes that are not UTF-8: in a comment, as any; in a key, not Z85.
    a = new_curve_keys()
    for name, raw, want in (("comment", f"# \xff\nsecret {a.secret}\npublic {a.public}\n", None),
                            ("key", f"public {a.public[:38]}\xff\xfe\nsecret {a.secret}\n", "the public key is not")):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.write(raw.encode("latin-1"))
        os.chmod(path, 0o600)
        if want is None:
            assert read_curve_key_file(str(path)) == a
        else:
            with pytest.raises(CurveKeyError, match=want):
                read_curve_key_file(str(path))


def test_curve_from_env(tmp_path, monkeypatch):
    a = new_curve_keys()
    monkeypatch.delenv(CURVE_KEY_FILE_ENV, raising=False)
    assert curve_from_env() is None
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, "")
    assert curve_from_env() is None
    good = str(tmp_path / "good.key")
    write_curve_key_file(good, a)
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, good)
    assert curve_from_env() == a
    loose = key_file(tmp_path / "loose.key", f"public {a.public}\nsecret {a.secret}\n", 0o644)
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, loose)
    with pytest.raises(CurveKeyError) as e:
        curve_from_env()
    assert str(e.value).startswith(f"transfer: $PHASED_CURVE_KEY_FILE: CURVE key file {loose}: mode 0644")


def test_z85():
    k = new_curve_keys()
    assert C.z85_decode(k.public) == z85.decode(k.public.encode())
    assert C.z85_decode("abcd") is None and C.z85_decode("abcd~") is None
    assert C.z85_decode("HelloWorld") == bytes.fromhex("864FD26FB559F75B")  # the spec's example
    assert C.z85_decode("#####") is None  # over 2^32


def test_manager_config(env):
    a, b = new_curve_keys(), new_curve_keys()
    with pytest.raises(ValueError, match="transfer: config: Curve: the public key is not the secret key's"):
        Manager("m", env.dir, curve=CurveKeys(a.public, b.secret))
    with pytest.raises(ValueError, match="transfer: config: Curve: want a CurveKeys"):
        Manager("m", env.dir, curve=(a.public, a.secret))
    m = env.manager(curve=a)
    assert m.curve == a and m.refused == 0


# --- the runtime ---------------------------------------------------------------

def test_runtime_reads_the_key_file(tmp_path, monkeypatch):
    """Configure gives the manager the keys of $PHASED_CURVE_KEY_FILE, and
    nothing without it; a bad file fails Configure, naming the file,
    before any manager exists."""
    a = new_curve_keys()
    monkeypatch.delenv(CURVE_KEY_FILE_ENV, raising=False)
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    assert "curve" not in managers[-1].kw
    good = str(tmp_path / "good.key")
    write_curve_key_file(good, a)
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, good)
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    assert managers[-1].kw["curve"] == a

    loose = key_file(tmp_path / "loose.key", f"public {a.public}\nsecret {a.secret}\n", 0o644)
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, loose)
    rt, managers = runtime(Scale(), tmp_path)
    with pytest.raises(CurveKeyError, match=f"CURVE key file {loose}: mode 0644 lets others read the secret key"):
        configure(rt, tmp_path)
    assert managers == []

    # Through the service: Configure fails with the text.
    class Ctx:
        def abort(self, code, details):
            raise RuntimeError((code, details))

    with pytest.raises(RuntimeError) as e:
        Service(rt).Configure(phase_pb2.ConfigureRequest(instance="scale-0", run_dir=RUN_DIR), Ctx())
    code, details = e.value.args[0]
    assert details == (f"transfer: $PHASED_CURVE_KEY_FILE: CURVE key file {loose}: mode 0644 lets others read the "
                       "secret key: chmod 600 it")
    assert managers == []
    # The file fixed, the same instance configures.
    os.chmod(loose, 0o600)
    configure(rt, tmp_path)
    assert managers[-1].kw["curve"] == a


def test_runtime_real_manager(tmp_path, monkeypatch):
    a = new_curve_keys()
    good = str(tmp_path / "good.key")
    write_curve_key_file(good, a)
    monkeypatch.setenv(CURVE_KEY_FILE_ENV, good)
    rt = Runtime(Scale(), logging.getLogger("test"))
    configure(rt, tmp_path)
    try:
        assert rt._mgr.curve == a and rt._mgr._zap is not None
        rt.ready(lambda: True)
        ep = rt.open_room(1, 1, phased.Request("r"), "", "zmq")
        assert ep.startswith("tcp://127.0.0.1:")
    finally:
        assert rt.release(time.monotonic() + 5) == []


# --- two managers ----------------------------------------------------------------

def curve_pair(env, keys=None, **kw):
    keys = keys or new_curve_keys()
    return env.manager(tag="s", curve=keys, **kw), env.manager(tag="r", curve=keys, **kw)


def test_curve_transfer_intact(env):
    """Two managers with the cluster's pair move tensors over zmq rooms byte
    for byte, in 4 MiB data parts (which CURVE makes longer on the wire than
    the receiver's ZMQ_MAXMSGSIZE without its allowance); shm rooms of the
    same managers stay on ipc, without CURVE."""
    snd, rcv = curve_pair(env)
    specs = [Spec("context", "float32", (512, 4096)),  # 8 MiB: two full data parts
             Spec("mask", "uint8", (3, 5, 7)),
             Spec("latent", "float32", (16, 21, 60, 10))]
    outs = {s.name: filled(s, i) for i, s in enumerate(specs)}
    for room in (1, 2):
        open_room(snd, rcv, room, specs, "zmq")
        got = hop(snd, rcv, room, outs)
        assert all(same(g, outs[s.name]) for g, s in zip(got, specs))
        del got
        assert room_status(snd, room).status == F.SUCCESS and room_status(rcv, room).status == F.SUCCESS
        snd.remove(room)
        rcv.remove(room)
    x = filled(Spec("x", "float32", (1000,)), 9)
    ep = open_room(snd, rcv, 3, [Spec("x", "float32", (1000,))], "shm")
    assert ep.startswith("ipc://")
    assert same(hop(snd, rcv, 3, {"x": x})[0], x)
    snd.remove(3)
    rcv.remove(3)
    for m in (snd, rcv):
        assert m.dropped == 0 and m.refused == 0


def test_curve_socket_options(env):
    """Where CURVE is set: the tcp sockets of zmq rooms, servers bound and
    clients connecting, with the allowance on the bound ones' limits; ipc
    sockets never."""
    snd, rcv = curve_pair(env)
    open_room(snd, rcv, 1, [Spec("x", "uint8", (10,))], "zmq")
    open_room(snd, rcv, 2, [Spec("x", "uint8", (10,))], "shm")
    wait_status(snd, 1, F.WAITING_FOR_INPUT)
    wait_status(snd, 2, F.WAITING_FOR_INPUT)

    def opts():
        out = {}
        for m in (snd, rcv):
            for rid, rs in m._socks.items():
                for kind, s in (("pull", rs.pull), ("push", rs.push)):
                    out[(m is snd, rid, kind)] = (s.getsockopt(zmq.MECHANISM), s.getsockopt(zmq.CURVE_SERVER),
                                                  s.getsockopt(zmq.MAXMSGSIZE), s.getsockopt(zmq.ZAP_DOMAIN))
                out[(m is snd, rid, "curve")] = rs.curve
        return out

    o = snd._call(lambda: rcv._call(opts))
    big = C.CURVE_OVERHEAD
    assert o[(True, 1, "pull")] == (zmq.CURVE, 1, F.MAX_FRAME_SIZE + big, b"phased")
    assert o[(False, 1, "pull")] == (zmq.CURVE, 1, F.ZMQ_CHUNK + big, b"phased")
    assert o[(True, 1, "push")][:2] == (zmq.CURVE, 0) and o[(False, 1, "push")][:2] == (zmq.CURVE, 0)
    assert o[(True, 1, "curve")] and o[(False, 1, "curve")]
    for side in (True, False):
        assert o[(side, 2, "pull")] == (zmq.NULL, 0, F.MAX_FRAME_SIZE, b"")
        assert o[(side, 2, "push")][0] == zmq.NULL and not o[(side, 2, "curve")]
    for rid in (1, 2):
        snd.remove(rid)
        rcv.remove(rid)


@pytest.mark.parametrize("case", ["sender with keys, receiver without", "receiver with keys, sender without",
                                  "receiver presents another pair", "receiver of another cluster"])
def test_curve_key_mismatch(env, case):
    """A receiver whose sender does not share its CURVE setup fails within
    the peer timeout with a reason that says why, and its descriptor never
    reaches the sender, which goes on waiting for it."""
    cluster, other = new_curve_keys(), new_curve_keys()
    closed = "the connection closed during the CURVE handshake ("
    wants, refused = {
        "sender with keys, receiver without": ([f"it uses CURVE and this process has no key: {FIX}"], 0),
        # A sender without CURVE closes the connection once it reads the
        # receiver's greeting; libzmq's client then reads the sender's
        # greeting (a mechanism mismatch) or fails to write first (EPIPE:
        # the closed connection), as its threads run (so does Go's).
        "receiver with keys, sender without": ([f"it has no CURVE key: {FIX}", closed], 0),
        "receiver presents another pair": ([f"it refused this process's CURVE key, ZAP status 400: {FIX}"], 1),
        # It expects another server key: the sender cannot open its hello
        # and closes the connection.
        "receiver of another cluster": ([closed], 0),
    }[case]
    snd_keys = None if case == "receiver with keys, sender without" else cluster
    rcv_keys = {"sender with keys, receiver without": None, "receiver of another cluster": other}.get(case, cluster)
    snd = env.manager(tag="s", curve=snd_keys)
    rcv = env.manager(tag="r", curve=rcv_keys, peer_timeout=0.3)
    if case == "receiver presents another pair":
        rcv._client_keys = other
    x = filled(Spec("x", "uint8", (4096,)), 3)
    start = time.monotonic()
    ep = open_room(snd, rcv, 1, [Spec("x", "uint8", (4096,))], "zmq")
    with pytest.raises(RoomFailedError) as e:
        rcv.receive(1)
    took = time.monotonic() - start
    prefix = f"peer timeout: the handshake with the sender at {ep} failed ("
    assert any(e.value.reason.startswith(prefix + w) for w in wants), e.value.reason
    assert e.value.reason.endswith(f"{FIX}) and no connection came up within 300ms (PeerTimeout)"), e.value.reason
    if e.value.reason.startswith(prefix + closed):
        assert f"), as a peer with another key pair closes it: {FIX})" in e.value.reason
    assert 0.3 <= took < 3.3, took
    # Nothing reached the sender: no descriptor, nothing dropped, and a send
    # has nowhere to write.
    assert room_status(snd, 1).status == F.BOOTSTRAPPING
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(CancelledError, match="waiting for the receiver's descriptor"):
        snd.send(1, {"x": x}, cancel)
    assert snd.dropped == 0 and snd.refused == refused
    snd.remove(1)
    rcv.remove(1)


def test_curve_raw_clients(env):
    """Clients that are not the room's receiver connect to a CURVE sender's
    room socket and send junk. One with its own pair is refused by the ZAP
    handler and one without CURVE by libzmq: neither junk arrives (nothing
    is dropped), and the room still serves its receiver. One with the
    cluster's keys gets through, and its junk is dropped, as without
    CURVE."""
    snd, rcv = curve_pair(env)
    cluster = snd.curve
    ep = snd.open_sender(1, "zmq")

    def junk(keys):
        push = env.socket(zmq.PUSH)
        if keys is not None:
            C.curve_client(push, cluster.public, keys)
        push.connect(ep)
        push.send(b"junk, not a descriptor", zmq.NOBLOCK)  # queued until the connection is up

    junk(new_curve_keys())
    eventually("the ZAP handler to refuse the client", lambda: snd.refused == 1)
    junk(None)
    junk(cluster)
    eventually("the cluster client's junk to be dropped", lambda: snd.dropped == 1)
    assert snd.refused == 1
    assert room_status(snd, 1).status == F.BOOTSTRAPPING
    spec = Spec("x", "uint8", (1 << 20,))
    x = filled(spec, 5)
    rcv.open_receiver(1, "zmq", [spec], ep)
    assert same(hop(snd, rcv, 1, {"x": x})[0], x)
    assert snd.dropped == 1 and snd.refused == 1
    snd.remove(1)
    rcv.remove(1)


# --- the ZAP handler ---------------------------------------------------------------

def _zap_req(version, domain, mechanism, *creds):
    return [version, b"1", domain, b"10.0.0.5", b"", mechanism, *creds]


def test_zap_verdict():
    keys = new_curve_keys()
    key, other = keys.public_bytes, new_curve_keys().public_bytes
    assert len(key) == 32
    cases = [
        (_zap_req(b"1.0", b"phased", b"CURVE", key), 200, "OK"),
        (_zap_req(b"1.0", b"phased", b"CURVE", other), 400, "not the cluster's CURVE key"),
        (_zap_req(b"1.0", b"global", b"CURVE", key), 400, 'ZAP domain "global"'),
        (_zap_req(b"1.0", b"phased", b"NULL"), 400, 'mechanism "NULL": only CURVE is allowed'),
        (_zap_req(b"1.0", b"phased", b"PLAIN", b"admin", b"secret"), 400, 'mechanism "PLAIN"'),
        (_zap_req(b"2.0", b"phased", b"CURVE", key), 500, 'ZAP version "2.0"'),
        (_zap_req(b"1.0", b"phased", b"CURVE"), 500, "CURVE credentials that are not one 32-byte key"),
        (_zap_req(b"1.0", b"phased", b"CURVE", key, key), 500, "CURVE credentials"),
        (_zap_req(b"1.0", b"phased", b"CURVE", key[:31]), 500, "CURVE credentials"),
        (_zap_req(b"1.0", b"phased", b"CURVE")[:5], 500, "a ZAP request of 5 frames"),
        ([], 500, "a ZAP request of 0 frames"),
    ]
    for req, code, text in cases:
        got = C.zap_verdict(req, key)
        assert got[0] == code and text in got[1], (req, got)


def test_zap_handler_malformed(env):
    """Requests to a manager's ZAP handler over inproc in its own context, as
    libzmq sends them, malformed ones among them: each gets its answer (or,
    without an envelope, none), the handler counts what it refused, and the
    manager goes on serving CURVE rooms."""
    snd, rcv = curve_pair(env)
    key = snd.curve.public_bytes
    req = snd._zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(C.ZAP_ENDPOINT)
    dealer = snd._zctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(C.ZAP_ENDPOINT)
    try:
        for frames, code, rid in [
            ([b"junk"], b"500", b""),
            ([b"1.0", b"7"], b"500", b"7"),
            ([b"1.0", b"8", b"phased", b"127.0.0.1", b"", b"CURVE", key, b"extra"], b"500", b"8"),
            ([b"0.9", b"9", b"phased", b"127.0.0.1", b"", b"CURVE", key], b"500", b"9"),
            ([b"1.0", b"10", b"phased", b"127.0.0.1", b"", b"NULL"], b"400", b"10"),
            ([b"1.0", b"11", b"phased", b"127.0.0.1", b"", b"CURVE", b"k" * 32], b"400", b"11"),
            ([b"1.0", b"12", b"phased", b"127.0.0.1", b"", b"CURVE", key], b"200", b"12"),
        ]:
            req.send_multipart(frames)
            reply = req.recv_multipart()
            assert len(reply) == 6 and reply[:3] == [b"1.0", rid, code], (frames, reply)
        assert snd.refused == 6
        # Without the envelope (a DEALER adds no empty delimiter): no one to
        # answer; counted and dropped.
        dealer.send_multipart([b"1.0", b"13", b"phased", b"127.0.0.1", b"", b"CURVE", key])
        eventually("the request without an envelope to be counted", lambda: snd.refused == 7)
    finally:
        req.close(0)
        dealer.close(0)
    spec = Spec("x", "uint8", (1000,))
    x = filled(spec, 1)
    open_room(snd, rcv, 1, [spec], "zmq")
    assert same(hop(snd, rcv, 1, {"x": x})[0], x)
    snd.remove(1)
    rcv.remove(1)


def test_curve_rooms_no_growth(env):
    """Opening, using and removing CURVE zmq rooms leaves no file descriptor
    behind (and, by env, no thread or file)."""
    snd, rcv = curve_pair(env)
    spec = Spec("x", "uint8", (4096,))
    x = filled(spec, 1)
    room = [0]

    def run(n):
        for _ in range(n):
            room[0] += 1
            open_room(snd, rcv, room[0], [spec], "zmq")
            assert same(hop(snd, rcv, room[0], {"x": x})[0], x)
            snd.remove(room[0])
            rcv.remove(room[0])

    def fds():
        return len(os.listdir("/proc/self/fd"))

    run(10)
    last = [-1]

    def settled():
        n, last[0] = last[0], fds()
        return n == last[0]

    eventually("libzmq to close the warm-up's sockets", lambda: time.sleep(0.05) or settled())
    before = fds()
    run(60)
    eventually("file descriptors back to the baseline", lambda: fds() <= before)
    assert snd.dropped == rcv.dropped == 0 and snd.refused == rcv.refused == 0
