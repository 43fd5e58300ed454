"""The phase runtime, the progress hub, logs, artifacts and the plugin
process's handshake. The transfer manager is replaced by a recording fake
here (its own tests are test_transfer_*.py); the Go conformance kit
(sdk/python/conformance_test.go) runs the real thing end to end."""

import atexit
import base64
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from cryptography import x509

import phased
from phased import log as plog
from phased import checkpoint, plugin, progress
from phased.runtime import Runtime, Service, reason
from phased._proto.phasedv1 import phase_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)


class FakeManager:
    """Records what the runtime asks of a transfer manager."""

    def __init__(self, **kw):
        self.kw = kw
        self.calls = []
        self.received = {}
        self.sent = {}
        self.closed = False
        self.block = threading.Event()

    def start(self):
        self.calls.append("start")

    def open_sender(self, room, backend):
        self.calls.append(("sender", room, backend))
        return f"ipc:///run/s-{room}.sock"

    def open_receiver(self, room, backend, specs, peer):
        self.calls.append(("receiver", room, backend, [str(s) for s in specs], peer))

    def receive(self, room, cancel):
        if room in self.received:
            return self.received[room]
        while not cancel.wait(0.01):
            pass
        raise RuntimeError(f"room {room} was removed")

    def send(self, room, outputs, cancel):
        self.sent[room] = outputs
        return sum(np.asarray(a).nbytes for a in outputs.values())

    def drained(self, room):
        return room in self.sent  # as a fast-path send

    def counters(self):
        from phased.transfer import BackendCounters
        return [BackendCounters("shm", sent=len(self.sent), sent_bytes=48, send_seconds=0.5, received=1,
                                received_bytes=24)]

    def remove(self, room):
        self.calls.append(("remove", room))

    def status(self):
        return [], 7

    def close(self):
        self.closed = True


class Scale(phased.Phase):
    name = "scale"
    version = "1.2.3"

    def __init__(self, loading=None, fail=None):
        self.loading = loading
        self.fail = fail
        self.closed = False
        self.params = None

    def configure(self, config):
        if "bad" in config.params:
            raise ValueError(f'scale: params: bad = "{config.params["bad"]}": not a param')
        self.params = config.params

    def inputs(self, request, params):
        return [phased.Spec("x", "float32", [2, 3])]

    def run(self, ctx, request, inputs):
        if self.fail:
            raise self.fail
        for i in range(3):
            ctx.progress(i + 1, 3)
        if request.artifact_dir:
            return phased.write_artifact(request, inputs["x"].tobytes(), ".bin", "application/octet-stream")
        return {"x": inputs["x"] * 2}

    def close(self):
        self.closed = True


class Loading(Scale):
    def load(self, ctx):
        while not self.loading.wait(0.01):
            if ctx.cancelled():
                return
        if self.fail:
            raise self.fail


def runtime(phase, tmp_path):
    managers = []

    def factory(**kw):
        managers.append(FakeManager(**kw))
        return managers[-1]

    rt = Runtime(phase, logging.getLogger("test"), manager_factory=factory)
    return rt, managers


# A run dir short enough for socket paths (pytest's tmp_path may not be);
# the fake manager creates nothing in it.
RUN_DIR = tempfile.mkdtemp(prefix="prt-", dir="/tmp")
atexit.register(os.rmdir, RUN_DIR)


def deliver(rt, manager, room, arrays):
    """Open room as a receiver, whose inputs the fake manager then has."""
    rt.open_room(room, 2, phased.Request("r"), "ipc:///peer", "")
    manager.received[room] = arrays


def configure(rt, tmp_path, instance="scale-0", **kw):
    rt.configure(instance, RUN_DIR, kw.get("params", {}), kw.get("zmq_host", ""),
                 kw.get("peer_timeout_ms", 0), kw.get("device", ""))


def test_configure_checks(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    with pytest.raises(phased.InvalidArgument, match="instance id 'a/b' must match"):
        configure(rt, tmp_path, instance="a/b")
    with pytest.raises(phased.InvalidArgument, match='device "cuda": the Python SDK holds'):
        configure(rt, tmp_path, device="cuda")
    with pytest.raises(phased.InvalidArgument, match="device 'tpu'"):
        configure(rt, tmp_path, device="tpu")
    with pytest.raises(phased.InvalidArgument, match="peer_timeout_ms -1 is negative"):
        configure(rt, tmp_path, peer_timeout_ms=-1)
    with pytest.raises(phased.InvalidArgument, match="too long for socket paths"):
        rt.configure("scale-0", "/" + "d" * 60, {}, "", 0, "")
    assert managers == []
    with pytest.raises(ValueError, match='scale: params: bad = "1": not a param'):
        configure(rt, tmp_path, params={"bad": "1"})
    assert managers[-1].closed, "a refused Configure must stop the manager it started"
    configure(rt, tmp_path, params={"k": "v"}, zmq_host="10.0.0.1", peer_timeout_ms=2500)
    m = managers[-1]
    assert m.kw["name"] == f"scale-0.{os.getpid()}"
    assert m.kw["zmq_host"] == "10.0.0.1" and m.kw["peer_timeout"] == 2.5
    with pytest.raises(phased.InvalidArgument, match="instance scale-0 is already configured"):
        configure(rt, tmp_path)
    assert rt.info().name == "scale" and list(rt.info().api_versions) == [1]


def test_defaults(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    assert managers[0].kw["zmq_host"] == "127.0.0.1" and managers[0].kw["peer_timeout"] == 10.0


def test_ready_and_loading(tmp_path):
    gate = threading.Event()
    rt, _ = runtime(Loading(loading=gate), tmp_path)
    with pytest.raises(phased.InvalidArgument, match="not configured"):
        rt.ready(lambda: True)
    configure(rt, tmp_path)
    with pytest.raises(RuntimeError, match="instance scale-0 is still loading; call Ready first"):
        rt.open_room(1, 1, phased.Request("r"), "", "")
    gate.set()
    rt.ready(lambda: True)
    assert rt.open_room(1, 1, phased.Request("r"), "", "") == "ipc:///run/s-1.sock"


def test_load_failure(tmp_path):
    gate = threading.Event()
    gate.set()
    rt, _ = runtime(Loading(loading=gate, fail=OSError("no weights at /w.pt")), tmp_path)
    configure(rt, tmp_path)
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"^loading: no weights at /w.pt$"):
            rt.ready(lambda: True)
    with pytest.raises(RuntimeError, match="failed to load: no weights"):
        rt.run(phased.Request("r"), 0, 1, threading.Event())


def test_release_cancels_loading(tmp_path):
    rt, managers = runtime(Loading(loading=threading.Event()), tmp_path)
    configure(rt, tmp_path)
    assert rt.release(time.monotonic() + 5) == []
    assert managers[0].closed and rt.phase.closed
    with pytest.raises(Exception, match="transfer: manager released"):
        rt.ready(lambda: True)


def test_open_room_errors(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    with pytest.raises(phased.InvalidArgument, match="room id 0 is reserved"):
        rt.open_room(0, 1, phased.Request("r"), "", "")
    with pytest.raises(phased.InvalidArgument, match='room 3: unknown transfer backend "tcp"'):
        rt.open_room(3, 1, phased.Request("r"), "", "tcp")
    with pytest.raises(phased.InvalidArgument, match="room 3: unknown role 7"):
        rt.open_room(3, 7, phased.Request("r"), "", "")
    rt.open_room(4, 2, phased.Request("r"), "ipc:///x", "")
    assert managers[0].calls[-1] == ("receiver", 4, "shm", ["x float32 [2, 3]"], "ipc:///x")

    class BadInputs(Scale):
        def inputs(self, request, params):
            raise KeyError("latent")

    rt2, _ = runtime(BadInputs(), tmp_path)
    configure(rt2, tmp_path)
    with pytest.raises(RuntimeError, match=r"room 5: inputs of request r9: KeyError: 'latent'"):
        rt2.open_room(5, 2, phased.Request("r9"), "ipc:///x", "")


def events(hub):
    s = hub.subscribe()
    out = []
    while True:
        ev = s.next(lambda: True, poll=0.01)
        if ev is None:
            return out
        out.append((ev.stage, ev.done, ev.total, ev.in_room, ev.out_room))


def test_run_middle_phase(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    deliver(rt, managers[0], 5, [x])
    stream = rt.hub.subscribe()
    res = rt.run(phased.Request("r1"), 5, 6, threading.Event())
    assert res.artifact is None and res.sent_bytes == 24 and res.send_seconds >= 0 and res.out_drained
    # The drained sender side went with the Run, not by the supervisor.
    assert res.out_removed and ("remove", 6) in managers[0].calls
    np.testing.assert_array_equal(managers[0].sent[6]["x"], x * 2)
    rt.hub.close()
    got = []
    while (ev := stream.next(lambda: True, poll=0.01)) is not None:
        got.append((ev.request, ev.stage, ev.done, ev.total, ev.in_room, ev.out_room))
    W, C, S, F = progress.WAITING, progress.COMPUTING, progress.SENDING, progress.FINISHED
    assert got == [("r1", W, 0, 0, 5, 6), ("r1", C, 0, 1, 5, 6), ("r1", C, 1, 3, 5, 6), ("r1", C, 2, 3, 5, 6),
                   ("r1", C, 3, 3, 5, 6), ("r1", S, 0, 0, 5, 6), ("r1", F, 0, 0, 5, 6)]


def test_run_last_phase_artifact(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    deliver(rt, managers[0], 5, [x])
    res = rt.run(phased.Request("r2", artifact_dir=str(tmp_path / "out")), 5, 0, threading.Event())
    art = res.artifact
    assert res.sent_bytes == 0 and not res.out_drained and not res.out_removed
    with open(art.path, "rb") as f:
        assert f.read() == x.tobytes()
    assert art.size == 24 and art.path == str(tmp_path / "out" / "r2.bin")


def test_run_errors(tmp_path):
    rt, managers = runtime(Scale(fail=ValueError("the prompt is empty")), tmp_path)
    configure(rt, tmp_path)
    deliver(rt, managers[0], 5, [np.zeros((2, 3), np.float32)])
    with pytest.raises(RuntimeError, match=r"^the prompt is empty$"):
        rt.run(phased.Request("r"), 5, 6, threading.Event())
    rt2, managers2 = runtime(Scale(), tmp_path)
    configure(rt2, tmp_path)
    deliver(rt2, managers2[0], 5, [np.zeros((2, 3), np.float32)])
    with pytest.raises(RuntimeError, match="the last phase of the pipeline returned no artifact"):
        rt2.run(phased.Request("r"), 5, 0, threading.Event())
    # A receive that fails names its room; the Run still ends FINISHED.
    stream = rt2.hub.subscribe()
    cancel = threading.Event()
    threading.Timer(0.05, rt2.remove_room, args=(8,)).start()
    with pytest.raises(RuntimeError, match=r"^receive room 8: room 8 was removed$"):
        rt2.run(phased.Request("r3"), 8, 9, cancel)
    assert ("remove", 8) in managers2[0].calls
    stages = [stream.next(lambda: True, 0.01).stage for _ in range(2)]
    assert stages == [progress.WAITING, progress.FINISHED]


class Stepper(Scale):
    """Adds 1 to x in each of request.steps steps, resuming from and
    saving its checkpoint as a denoiser does."""

    def __init__(self):
        super().__init__()
        self.ran = []  # the steps each Run computed
        self.saved = []  # the steps each Run's checkpoint saved after

    def run(self, ctx, request, inputs):
        step, state = ctx.resume(request.steps)
        x = state["x"] if step else inputs["x"].copy()
        ran, saved = [], []
        for i in range(step, request.steps):
            x = x + 1
            ran.append(i + 1)
            ctx.progress(i + 1, request.steps)
            if ctx.checkpoint(i + 1, request.steps, {"x": x}):
                saved.append(i + 1)
        self.ran.append(ran)
        self.saved.append(saved)
        return {"x": x}


class _GRPCCtx:
    """A gRPC context for Service calls: active, never cancelled."""

    def add_callback(self, fn):
        pass

    def is_active(self):
        return True

    def abort(self, code, details):
        raise AssertionError((code, details))


def run_checkpointed(svc, manager, request_id, x, rooms, path="", every=0, steps=20):
    """A Run of request_id through the Service, its RunRequest as the
    supervisor sends it; the out room's x."""
    deliver(svc.rt, manager, rooms[0], [x])
    req = phase_pb2.Request(id=request_id, steps=steps)
    if path:
        req.checkpoint.CopyFrom(phase_pb2.Checkpoint(path=path, every=every))
    svc.Run(phase_pb2.RunRequest(request=req, in_room=rooms[0], out_room=rooms[1]), _GRPCCtx())
    return manager.sent[rooms[1]]["x"]


def test_run_saves_and_resumes_checkpoints(tmp_path, caplog):
    phase = Stepper()
    rt, managers = runtime(phase, tmp_path)
    svc = Service(rt)
    configure(rt, tmp_path)
    path = str(tmp_path / "ckpt" / "t.ckpt")
    os.mkdir(tmp_path / "ckpt")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # The Progress stream, as the supervisor reads it: open once a Run's
    # latest event is there to read.
    rt.hub.publish("open", progress.Event("open", progress.WAITING))
    stream = svc.Progress(phase_pb2.ProgressRequest(), _GRPCCtx())
    assert next(stream).request == "open"
    rt.hub.publish("open", progress.Event("open", progress.FINISHED))
    # A first attempt: every 5 of 20 steps, saves after 5, 10 and 15.
    first = run_checkpointed(svc, managers[0], "r1", x, (5, 6), path, 5)
    np.testing.assert_array_equal(first, x + 20)
    assert phase.ran[0] == list(range(1, 21)) and phase.saved[0] == [5, 10, 15]
    h, tensors = checkpoint.read(path)
    assert (h.request, h.step, h.total, h.inputs) == ("r1", 15, 20, (phased.checksum(x),))
    assert dict(tensors)["x"].tobytes() == (x + 15).tobytes()
    assert os.listdir(tmp_path / "ckpt") == ["t.ckpt"]
    with open(path, "rb") as f:
        r1_at_15 = f.read()
    units = rt.hub.units
    # The next attempt of the request resumes after step 15: the same bytes.
    again = run_checkpointed(svc, managers[0], "r1", x, (7, 8), path, 5)
    assert again.tobytes() == first.tobytes()
    assert phase.ran[1] == [16, 17, 18, 19, 20] and phase.saved[1] == []
    assert rt.hub.units == units + 5, "the steps resumed are not counted as work done"
    rt.hub.close()
    C, S = progress.COMPUTING, progress.SENDING
    got = [(ev.stage, ev.done, ev.total, ev.resumed) for ev in stream if ev.in_room == 7]
    assert got == [(progress.WAITING, 0, 0, 0), (C, 0, 1, 0)] + \
        [(C, d, 20, 15) for d in range(16, 21)] + [(S, 0, 0, 0), (progress.FINISHED, 0, 0, 0)]
    # Another request, or other inputs, with that file: a warning, and from step 0.
    caplog.set_level(logging.WARNING)
    for request_id, inputs, rooms, why in [("r2", x, (9, 10), "it is request r1's, not r2's"),
                                           ("r1", x + 1, (11, 12), "saved by a Run with other inputs")]:
        with open(path, "wb") as f:
            f.write(r1_at_15)
        caplog.clear()
        out = run_checkpointed(svc, managers[0], request_id, inputs, rooms, path, 5)
        np.testing.assert_array_equal(out, inputs + 20)
        assert phase.ran[-1] == list(range(1, 21))
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and why in warned[0].why and warned[0].request == request_id
        assert warned[0].getMessage() == "not resuming from the checkpoint: starting from step 0"
        assert phase.saved[-1] == [5, 10, 15] and checkpoint.read(path)[0].request == request_id


def test_run_without_checkpoint(tmp_path):
    phase = Stepper()
    rt, managers = runtime(phase, tmp_path)
    svc = Service(rt)
    configure(rt, tmp_path)
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(run_checkpointed(svc, managers[0], "r1", x, (5, 6), steps=20), x + 20)
    assert phase.saved == [[]] and os.listdir(tmp_path) == []
    # A path without every, and every without a path, are no checkpoints.
    run_checkpointed(svc, managers[0], "r1", x, (7, 8), str(tmp_path / "c.ckpt"), 0)
    assert phase.saved[-1] == [] and os.listdir(tmp_path) == []
    from phased.runtime import request_of
    req = request_of(phase_pb2.Request(id="r", checkpoint=phase_pb2.Checkpoint(path="/c/t.ckpt", every=4)))
    assert (req.checkpoint_path, req.checkpoint_every) == ("/c/t.ckpt", 4)
    assert (request_of(phase_pb2.Request(id="r")).checkpoint_path, phased.Request("r").checkpoint_every) == ("", 0)


def test_release_cancels_runs(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    configure(rt, tmp_path)
    errors = []

    def waiting():
        try:
            rt.run(phased.Request("r"), 11, 12, threading.Event())
        except RuntimeError as e:
            errors.append(str(e))

    th = threading.Thread(target=waiting)
    th.start()
    time.sleep(0.1)
    assert rt.release(time.monotonic() + 5) == []
    th.join(5)
    assert errors == ["receive room 11: room 11 was removed"]
    assert managers[0].closed and rt.phase.closed
    with pytest.raises(Exception, match="transfer: manager released"):
        rt.run(phased.Request("r"), 0, 1, threading.Event())
    with pytest.raises(progress.Released):
        rt.hub.subscribe()
    assert rt.release(time.monotonic() + 1) == []  # idempotent


def test_progress_hub_drops_oldest():
    hub = progress.Hub()
    s = hub.subscribe()
    rep = progress.Reporter(hub, "r", 1, 2)
    rep.start_computing()
    for i in range(100):
        rep.report(i, 100)
    assert s.dropped == 101 - progress.BUFFER and hub.dropped == s.dropped
    first = s.next(lambda: True)
    assert (first.stage, first.done) == (progress.COMPUTING, 100 - progress.BUFFER)
    # A stream opened now starts with the latest event of each Run in
    # progress, oldest Run first.
    other = progress.Reporter(hub, "q", 0, 3)
    other.publish(progress.WAITING)
    late = hub.subscribe()
    assert [late.next(lambda: True).request for _ in range(2)] == ["r", "q"]
    rep.publish(progress.FINISHED)
    hub.close()
    assert late.next(lambda: True).stage == progress.FINISHED
    assert late.next(lambda: True) is None


def test_reports_outside_compute_are_ignored():
    hub = progress.Hub()
    s = hub.subscribe()
    rep = progress.Reporter(hub, "r", 0, 0)
    rep.report(1, 2)
    rep.start_computing()
    rep.stop_computing(True)
    hub.close()
    got = []
    while (ev := s.next(lambda: True)) is not None:
        got.append((ev.stage, ev.done, ev.total))
    assert got == [(progress.COMPUTING, 0, 1), (progress.COMPUTING, 1, 1)]


def test_json_logs():
    buf = io.StringIO()
    logger = plog.plugin_logger("t-json", stream=buf, environ={"PHASED_LOG_LEVEL": "warn"})
    logger.info("not shown")
    logger.getChild("transformer-0").warning("slow step", extra={"step": 3, "path": "/x"})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["@level"] == "warn" and rec["@message"] == "slow step"
    assert rec["@module"] == "t-json.transformer-0" and rec["step"] == 3 and rec["path"] == "/x"
    # six fractional digits and an offset, as go-plugin hosts read it
    assert len(rec["@timestamp"]) == len("2026-11-30T12:00:00.123456+00:00")
    assert plog.level_from_env({"PHASED_LOG_LEVEL": "bogus"}) == logging.INFO
    assert plog.level_from_env({"PHASED_LOG_LEVEL": "TRACE"}) == plog.TRACE


def test_write_artifact(tmp_path):
    old = os.umask(0o077)
    try:
        art = phased.write_artifact(phased.Request("a.b-c_1", artifact_dir=str(tmp_path / "o")), b"GIF89a;",
                                    ".gif", "image/gif")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(art.path).st_mode) == 0o600  # 0666 less the umask
    import hashlib
    assert art.sha256 == hashlib.sha256(b"GIF89a;").hexdigest() and art.size == 7
    assert os.listdir(tmp_path / "o") == ["a.b-c_1.gif"]
    for bad in ("", "../x", "a/b", "x" * 201):
        with pytest.raises(ValueError, match="want 1 to 200 bytes"):
            phased.write_artifact(phased.Request(bad, artifact_dir=str(tmp_path)), b"", ".gif", "image/gif")
    with pytest.raises(ValueError, match="no artifact_dir"):
        phased.write_artifact(phased.Request("r"), b"", ".gif", "image/gif")
    with pytest.raises(ValueError, match="artifact extension '/../x'"):
        phased.write_artifact(phased.Request("r", artifact_dir=str(tmp_path)), b"", "/../x", "x")
    # A result is never replaced: the second write of one id fails, the
    # first file keeps its bytes, and no temporary file is left.
    same = phased.write_artifact(phased.Request("a.b-c_1", artifact_dir=str(tmp_path / "o")), b"GIF89a;",
                                 ".gif", "image/gif")
    assert same.path == art.path and same.sha256 == art.sha256
    with pytest.raises(FileExistsError, match="exists already with other bytes; results are never replaced"):
        phased.write_artifact(phased.Request("a.b-c_1", artifact_dir=str(tmp_path / "o")), b"other",
                              ".gif", "image/gif")
    assert open(art.path, "rb").read() == b"GIF89a;"
    assert os.listdir(tmp_path / "o") == ["a.b-c_1.gif"]


def test_request_no_sync(tmp_path, monkeypatch):
    from phased._proto.phasedv1 import phase_pb2
    from phased.runtime import request_of
    msg = phase_pb2.Request(id="r", artifact_dir=str(tmp_path), no_sync=True)
    req = request_of(msg)
    assert req.no_sync and req.artifact_dir == str(tmp_path)
    assert not request_of(phase_pb2.Request(id="r")).no_sync  # the default: durable
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    art = phased.write_artifact(req, b"x", ".bin", "application/octet-stream")
    assert synced == [] and open(art.path, "rb").read() == b"x"
    phased.write_artifact(phased.Request("d", artifact_dir=str(tmp_path)), b"y", ".bin", "application/octet-stream")
    assert len(synced) == 1


def test_reason_texts():
    assert reason(ValueError("bad")) == "bad"
    assert reason(KeyError("x")) == "KeyError: 'x'"
    assert reason(RuntimeError()) == "RuntimeError"


def test_run_local(tmp_path):
    class First(phased.Phase):
        name = "first"

        def run(self, ctx, request, inputs):
            return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "unused": np.zeros(1, np.uint8)}

    class Double(Scale):
        def run(self, ctx, request, inputs):
            ctx.progress(1, 1)
            return {"x": inputs["x"] * 2}

    reports = []
    phases = [First(), Double(), Scale()]
    phased.local.configure_local(phases)
    art = phased.run_local(phases, phased.Request("r", artifact_dir=str(tmp_path)),
                           progress=lambda *a: reports.append(a))
    with open(art.path, "rb") as f:
        assert np.frombuffer(f.read(), np.float32).tolist() == [0, 2, 4, 6, 8, 10]
    assert reports == [("scale", 1, 1), ("scale", 1, 3), ("scale", 2, 3), ("scale", 3, 3)]
    with pytest.raises(RuntimeError, match="returned no artifact"):
        phased.run_local(phases[:2], phased.Request("r"))

    class Wrong(First):
        def run(self, ctx, request, inputs):
            return {"x": np.zeros((3, 2), np.float32)}

    with pytest.raises(RuntimeError, match=r"phase scale: tensor 'x' is float32 \[3, 2\]; want x float32 \[2, 3\]"):
        phased.run_local([Wrong(), Scale()], phased.Request("r"))


def test_handshake_refusals():
    env = dict(os.environ)
    env.pop(plugin.MAGIC_COOKIE_KEY, None)
    code = "import phased\nclass P(phased.Phase):\n    name='p'\nphased.serve(P())\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=SDK, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "This binary is a phased plugin" in r.stderr and r.stdout == ""
    env[plugin.MAGIC_COOKIE_KEY] = plugin.MAGIC_COOKIE_VALUE
    env["PLUGIN_PROTOCOL_VERSIONS"] = "2,3"
    r = subprocess.run([sys.executable, "-c", code], cwd=SDK, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "offered protocol versions ['2', '3']" in r.stderr and r.stdout == ""


def test_server_handshake_line(tmp_path):
    server = plugin.Server([])
    line = server.start({"PLUGIN_UNIX_SOCKET_DIR": str(tmp_path), "PLUGIN_CLIENT_CERT": _client_cert()})
    try:
        core, app, network, path, proto, cert = line.split("|")
        assert (core, app, network, proto) == ("1", "1", "unix", "grpc")
        assert path.startswith(str(tmp_path)) and stat.S_ISSOCK(os.stat(path).st_mode)
        assert "=" not in cert
        der = base64.b64decode(cert + "=" * (-len(cert) % 4))
        c = x509.load_der_x509_certificate(der)
        sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    finally:
        server.shutdown()
        server.wait()
    assert os.listdir(tmp_path) == [], "the socket and its directory must be gone after shutdown"


def _client_cert() -> str:
    _, pem, _ = plugin.make_certificate()
    return pem.decode()


def test_service_maps_errors(tmp_path):
    rt, managers = runtime(Scale(), tmp_path)
    svc = Service(rt)

    class Ctx:
        def abort(self, code, details):
            raise AssertionError((code, details))

    with pytest.raises(AssertionError) as e:
        svc.OpenRoom(phase_pb2.OpenRoomRequest(room=1, role=1), Ctx())
    import grpc
    assert e.value.args[0] == (grpc.StatusCode.INVALID_ARGUMENT, "instance is not configured")
    configure(rt, tmp_path)
    with pytest.raises(AssertionError) as e:
        svc.Run(phase_pb2.RunRequest(request=phase_pb2.Request(id="r"), in_room=4), _RunCtx(rt, 4))
    assert e.value.args[0] == (grpc.StatusCode.UNKNOWN, "receive room 4: room 4 was removed")


class _RunCtx:
    """A gRPC context whose call is cancelled at once."""

    def __init__(self, rt, room):
        self.rt, self.room = rt, room

    def add_callback(self, fn):
        threading.Timer(0.05, fn).start()

    def abort(self, code, details):
        raise AssertionError((code, details))


def test_torch_inputs_view_without_copy():
    torch = pytest.importorskip("torch")
    from phased.tensor import to_torch, as_array, BFLOAT16, FLOAT32

    raw = np.array([16320, 49168, 16448], dtype="<u2")  # 1.5, -2.25, 3.0 as bfloat16
    t = to_torch(raw, BFLOAT16)
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.5, -2.25, 3.0]
    raw[0] = 16256  # 1.0: the tensor views the buffer
    assert t[0].item() == 1.0
    assert as_array(t * 2).tolist() == [16384, 49296, 16576]  # and back, as bytes
    x = np.arange(4, dtype=np.float32)
    assert to_torch(x, FLOAT32).data_ptr() == x.ctypes.data


def test_as_array_keeps_shapes():
    from phased.tensor import as_array

    assert as_array(np.int64(7)).shape == ()
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    got = as_array(strided)
    assert got.shape == (3, 2) and got.flags["C_CONTIGUOUS"] and got.tolist() == strided.tolist()


def test_signals(tmp_path):
    """SIGINT is ignored (a Ctrl-C at the supervisor's terminal must not
    stop a plugin); SIGTERM stops it like the controller's Shutdown: exit 0,
    its socket gone, nothing on stdout but the handshake."""
    import signal

    env = dict(os.environ, PLUGIN_PROTOCOL_VERSIONS="1", PLUGIN_UNIX_SOCKET_DIR=str(tmp_path),
               PLUGIN_CLIENT_CERT=_client_cert(), PYTHONPATH=SDK)
    env[plugin.MAGIC_COOKIE_KEY] = plugin.MAGIC_COOKIE_VALUE
    code = "import phased\nclass P(phased.Phase):\n    name='p'\nphased.serve(P())\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("1|1|unix|"), line
        sock = line.split("|")[3]
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)
        assert os.path.exists(sock)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout.read() == b""
        assert not os.path.exists(sock) and os.listdir(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_executor_runs_one_at_a_time_on_its_thread(tmp_path):
    """Under serve, load and run execute on the main thread, one at a time;
    a Run queued behind another stays WAITING, and one cancelled while
    queued never runs."""
    from phased.executor import Executor

    seen, gate = [], threading.Event()

    class Slow(Scale):
        def run(self, ctx, request, inputs):
            seen.append((request.id, threading.current_thread().name))
            if request.id == "first":
                gate.wait(5)
            return {"x": inputs["x"]}

    ex = Executor()
    worker = threading.Thread(target=ex.run_forever, name="the-main-thread")
    worker.start()
    rt, managers = runtime(Slow(), tmp_path)
    rt._executor = ex
    configure(rt, tmp_path)
    for room in (5, 7, 9):
        deliver(rt, managers[0], room, [np.zeros((2, 3), np.float32)])
    stream = rt.hub.subscribe()
    results = {}

    def go(rid, in_room, cancel):
        try:
            rt.run(phased.Request(rid), in_room, in_room + 1, cancel)
            results[rid] = "ok"
        except Exception as e:  # noqa: BLE001
            results[rid] = str(e)

    cancel_third = threading.Event()
    threads = [threading.Thread(target=go, args=("first", 5, threading.Event())),
               threading.Thread(target=go, args=("second", 7, threading.Event())),
               threading.Thread(target=go, args=("third", 9, cancel_third))]
    threads[0].start()
    while not seen:
        time.sleep(0.01)
    threads[1].start()
    threads[2].start()
    time.sleep(0.2)
    cancel_third.set()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    ex.stop()
    worker.join(5)
    assert results == {"first": "ok", "second": "ok", "third": "cancelled before it started computing"}
    assert seen == [("first", "the-main-thread"), ("second", "the-main-thread")]
    rt.hub.close()
    by_request = {}
    while (ev := stream.next(lambda: True, 0.01)) is not None:
        by_request.setdefault(ev.request, []).append(ev.stage)
    assert by_request["third"] == [progress.WAITING, progress.FINISHED]
    assert by_request["second"][0] == progress.WAITING and progress.COMPUTING in by_request["second"]


def metric_values(metrics):
    return {(m.name, tuple(sorted(m.labels.items()))): m.value for m in metrics}


def test_status_metrics(tmp_path):
    """Status reports the Go runtime's figures under the same names and
    labels: runs by outcome, compute time, steps, drops, and the transfer
    manager's counters per backend."""
    rt, managers = runtime(Scale(), tmp_path)
    with pytest.raises(phased.InvalidArgument, match="not configured"):
        rt.status()
    configure(rt, tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for room in (5, 7):
        deliver(rt, managers[0], room, [x])
        rt.run(phased.Request(f"r{room}"), room, room + 1, threading.Event())
    rt.phase.fail = ValueError("no")
    deliver(rt, managers[0], 9, [x])
    with pytest.raises(RuntimeError):
        rt.run(phased.Request("r9"), 9, 10, threading.Event())
    st = rt.status()
    assert st.dropped_frames == 7 and st.dropped_progress == 0
    got = metric_values(st.metrics)
    assert got[("runs_total", (("outcome", "ok"),))] == 2
    assert got[("runs_total", (("outcome", "failed"),))] == 1
    assert got[("steps_total", ())] == 6, "3 steps reported by each of the two Runs that computed them"
    assert 0 < got[("compute_seconds_total", ())] < 5
    assert got[("transfer_dropped_frames_total", ())] == 7
    assert got[("progress_dropped_total", ())] == 0
    shm = (("backend", "shm"),)
    assert got[("transfer_sent_total", shm)] == 2 and got[("transfer_sent_bytes_total", shm)] == 48
    assert got[("transfer_send_seconds_total", shm)] == 0.5
    assert got[("transfer_received_total", shm)] == 1 and got[("transfer_received_bytes_total", shm)] == 24
    # Without limits, the credit gauges say so.
    assert got[("credit_rooms", ())] == -1 and got[("credit_bytes", ())] == -1
    assert got[("batches_total", ())] == 0 and got[("batched_runs_total", ())] == 0  # it does not batch
    names = {m.name for m in st.metrics}
    assert names == {"runs_total", "compute_seconds_total", "steps_total", "transfer_dropped_frames_total",
                     "progress_dropped_total", "transfer_sent_total", "transfer_sent_bytes_total",
                     "transfer_send_seconds_total", "transfer_received_total", "transfer_received_bytes_total",
                     "credit_rooms", "credit_bytes", "batches_total", "batched_runs_total"}
    gauges = {"credit_rooms", "credit_bytes"}
    assert all(m.counter == (m.name not in gauges) and m.help for m in st.metrics)
    # Over gRPC: the same samples in the StatusResponse.
    resp = Service(rt).Status(phase_pb2.StatusRequest(), None)
    wire = {(m.name, tuple(sorted(m.labels.items()))): m.value for m in resp.metrics}
    assert wire == got and all(m.counter == (m.name not in gauges) for m in resp.metrics)


def test_steps_count_progress_once():
    """A Run that reports done twice, or goes back, adds each unit once."""
    hub = progress.Hub()
    rep = progress.Reporter(hub, "r", 0, 0)
    rep.report(1, 5)  # not computing: ignored
    rep.start_computing()
    for done in (2, 2, 1, 4):
        rep.report(done, 5)
    rep.stop_computing(True)
    assert hub.units == 4


class Checked(Scale):
    KNOWN = ("steps", "width")

    def validate_params(self, params):
        out = []
        for k, v in sorted(params.items()):
            if k not in self.KNOWN:
                out.append((k, f"unknown param; the known params are {', '.join(self.KNOWN)}"))
            elif not v.isdigit():
                out.append(phased.ParamProblem(k, f"{v!r} is not an integer"))
        return out


def test_validate_params(tmp_path):
    import grpc

    class Ctx:
        def abort(self, code, details):
            raise AssertionError((code, details))

    # Before Configure, and without loading: the phase's own answer.
    rt, managers = runtime(Checked(), tmp_path)
    assert rt.validate_params({"steps": "3", "width": "8"}) == []
    assert rt.validate_params({"stpes": "3", "width": "x"}) == [
        phased.ParamProblem("stpes", "unknown param; the known params are steps, width"),
        phased.ParamProblem("width", "'x' is not an integer")]
    assert managers == [], "ValidateParams must not start a transfer manager"
    resp = Service(rt).ValidateParams(phase_pb2.ValidateParamsRequest(params={"width": "x"}), Ctx())
    assert [(p.param, p.message) for p in resp.problems] == [("width", "'x' is not an integer")]

    # A phase without validate_params: UNIMPLEMENTED.
    rt2, _ = runtime(Scale(), tmp_path)
    with pytest.raises(AssertionError) as e:
        Service(rt2).ValidateParams(phase_pb2.ValidateParamsRequest(params={}), Ctx())
    code, details = e.value.args[0]
    assert code == grpc.StatusCode.UNIMPLEMENTED and "does not implement validate_params" in details

    # A ValueError is one problem about the params as a whole; another
    # exception, or an answer of the wrong type, is a failure to check.
    class Raises(Scale):
        def validate_params(self, params):
            if "boom" in params:
                raise OSError("cannot read the model card")
            if "odd" in params:
                return ["just a string"]
            raise ValueError("width and height must both be set")

    rt3, _ = runtime(Raises(), tmp_path)
    assert rt3.validate_params({}) == [phased.ParamProblem("", "width and height must both be set")]
    with pytest.raises(AssertionError) as e:
        Service(rt3).ValidateParams(phase_pb2.ValidateParamsRequest(params={"boom": "1"}), Ctx())
    assert e.value.args[0] == (grpc.StatusCode.UNKNOWN, "cannot read the model card")
    with pytest.raises(TypeError, match="validate_params returned 'just a string'; want phased.ParamProblem"):
        rt3.validate_params({"odd": "1"})
