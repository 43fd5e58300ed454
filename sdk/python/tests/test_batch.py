"""Credits (docs/protocol.md 2.4) and batching (2.5) in the phase runtime,
driven as the supervisor drives it (Configure, OpenRoom, Run, RemoveRoom,
Status), with test_runtime's recording transfer manager. Batches run on a
real executor on a thread of the test's, as under serve on the main
thread; nothing here asserts a duration."""

import contextlib
import logging
import threading
import time

import grpc
import numpy as np
import pytest

import phased
from phased import progress
from phased._proto.phasedv1 import phase_pb2
from phased.batch import Limits
from phased.executor import Executor
from phased.runtime import NoCredit, Runtime, Service

from test_runtime import RUN_DIR, FakeManager, Scale, metric_values, runtime

SENDER, RECEIVER = 1, 2


class _Ctx:
    """A gRPC context whose abort raises its code and details."""

    def abort(self, code, details):
        raise AssertionError((code, details))


def configure(rt, **kw):
    rt.configure("scale-0", RUN_DIR, {}, "", 0, "", **kw)


def credit(rt):
    got = metric_values(rt.status().metrics)
    return got[("credit_rooms", ())], got[("credit_bytes", ())]


def open_receiver(svc, room, request_id="r"):
    svc.OpenRoom(phase_pb2.OpenRoomRequest(room=room, role=RECEIVER, request=phase_pb2.Request(id=request_id),
                                           peer_endpoint="ipc:///peer"), _Ctx())


def refusal(svc, room):
    with pytest.raises(AssertionError) as e:
        open_receiver(svc, room)
    return e.value.args[0]


def receivers(manager):
    return [c[1] for c in manager.calls if c[0] == "receiver"]


# --- credits ------------------------------------------------------------------------------

def test_credit_rooms():
    """max_rooms counts receiver rooms: one more is refused with
    RESOURCE_EXHAUSTED, opening nothing and spending no id; a sender side
    takes none; a removed room gives its credit back."""
    rt, managers = runtime(Scale(), None)
    svc = Service(rt)
    svc.Configure(phase_pb2.ConfigureRequest(instance="scale-0", run_dir=RUN_DIR, max_rooms=2), _Ctx())
    m = managers[0]
    assert credit(rt) == (2, -1)
    open_receiver(svc, 1)
    svc.OpenRoom(phase_pb2.OpenRoomRequest(room=2, role=SENDER), _Ctx())  # senders hold no buffers of inputs
    open_receiver(svc, 3)
    assert credit(rt) == (0, -1)
    assert refusal(svc, 4) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "no credit: 2 receiver rooms open, max_rooms 2")
    assert receivers(m) == [1, 3], "a refused open must open nothing"
    assert credit(rt) == (0, -1)
    svc.RemoveRoom(phase_pb2.RemoveRoomRequest(room=1), _Ctx())
    assert credit(rt) == (1, -1)
    open_receiver(svc, 4)  # the refused id was not spent
    assert receivers(m) == [1, 3, 4] and credit(rt) == (0, -1)
    # Removing a sender side, or a room twice, gives back nothing more.
    rt.remove_room(2)
    rt.remove_room(1)
    assert credit(rt) == (0, -1)


def test_credit_bytes():
    """max_input_bytes counts the bytes of the receivers' input specs
    (Scale's: float32 [2, 3], 24 bytes)."""
    rt, managers = runtime(Scale(), None)
    configure(rt, max_input_bytes=60)
    svc = Service(rt)
    assert credit(rt) == (-1, 60)
    open_receiver(svc, 5)
    open_receiver(svc, 6)
    assert credit(rt) == (-1, 12)
    assert refusal(svc, 7) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "no credit: inputs of 24 bytes with 48 of 60 in use, max_input_bytes 60")
    assert receivers(managers[0]) == [5, 6] and credit(rt) == (-1, 12)
    rt.remove_room(5)
    assert credit(rt) == (-1, 36)
    open_receiver(svc, 7)
    assert credit(rt) == (-1, 12)
    # A request whose inputs alone pass the limit can never be taken: it is
    # invalid (the request fails), not a want of credit (it would wait).
    rt2, _ = runtime(Scale(), None)
    configure(rt2, max_input_bytes=20)
    with pytest.raises(phased.InvalidArgument, match="^inputs of 24 bytes are more than max_input_bytes 20 on their own: "
                       "no such request ever fits; raise max_input_bytes$"):
        rt2.open_room(1, RECEIVER, phased.Request("r"), "ipc:///peer", "")
    assert credit(rt2) == (-1, 20)


def test_credit_of_a_failed_open_and_after_release():
    """An open the transfer manager refuses gives its credit back; a
    release leaves every credit free; the limits are checked as given."""

    class Refusing(FakeManager):
        def open_receiver(self, room, backend, specs, peer):
            if room == 9:
                raise RuntimeError("transfer: room id already used: 9 (room ids are never reused)")
            super().open_receiver(room, backend, specs, peer)

    rt = Runtime(Scale(), logging.getLogger("test"), manager_factory=Refusing)
    configure(rt, max_rooms=1)
    with pytest.raises(RuntimeError, match="room id already used: 9"):
        rt.open_room(9, RECEIVER, phased.Request("r"), "ipc:///peer", "")
    assert credit(rt) == (1, -1)
    rt.open_room(10, RECEIVER, phased.Request("r"), "ipc:///peer", "")
    assert credit(rt) == (0, -1)
    rt.release(time.monotonic() + 5)
    assert credit(rt) == (1, -1)
    rt2, _ = runtime(Scale(), None)
    for field in ("max_rooms", "max_input_bytes", "batch_max_size", "batch_max_wait_ms"):
        with pytest.raises(phased.InvalidArgument, match=f"^{field} -1 is negative$"):
            configure(rt2, **{field: -1})


def test_credit_is_taken_atomically():
    """Opens racing for the last credits: exactly max_rooms of them pass."""
    rt, managers = runtime(Scale(), None)
    configure(rt, max_rooms=3)
    start = threading.Barrier(12)
    outcomes = []

    def open_one(room):
        start.wait(5)
        try:
            rt.open_room(room, RECEIVER, phased.Request("r"), "ipc:///peer", "")
            outcomes.append("ok")
        except NoCredit:
            outcomes.append("refused")

    threads = [threading.Thread(target=open_one, args=(room,)) for room in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 9
    assert len(receivers(managers[0])) == 3 and credit(rt) == (0, -1)


# --- batching -----------------------------------------------------------------------------

class Batched(Scale):
    """Records what it computed: ("run", [id]) or ("batch", [ids]). Each
    Run's x plus its seed goes out; a prompt "fail" fails that item."""

    max_batch = 3
    batch_wait = 0.02

    def __init__(self, whole=None):
        super().__init__()
        self.calls = []
        self.whole = whole  # what run_batch does instead, if set

    def run(self, ctx, request, inputs):
        self.calls.append(("run", [request.id]))
        for i in range(3):
            ctx.progress(i + 1, 3)
        return {"x": inputs["x"] + float(request.seed)}

    def run_batch(self, items):
        self.calls.append(("batch", [it.request.id for it in items]))
        if self.whole is not None:
            return self.whole(items)
        for i in range(3):
            for it in items:
                it.ctx.progress(i + 1, 3)
        return [ValueError(f"{it.request.id}: the prompt says fail") if it.request.prompt == "fail"
                else {"x": it.inputs["x"] + float(it.request.seed)} for it in items]


@contextlib.contextmanager
def executor_thread(rt):
    """rt's executor, run on a thread of the test's until the end."""
    ex = rt._executor
    worker = threading.Thread(target=ex.run_forever, name="executor")
    worker.start()
    try:
        yield
    finally:
        ex.stop()
        worker.join(5)


def until(what, fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Runs:
    """Run calls on threads of their own: Run i has in room 10i+1, out
    room 10i+2, seed i, and x = i."""

    def __init__(self, rt, manager):
        self.rt, self.m = rt, manager
        self.threads, self.results, self.cancels = {}, {}, {}

    def start(self, rid, i, prompt="", join=True):
        x = np.full((2, 3), i, np.float32)
        self.rt.open_room(10 * i + 1, RECEIVER, phased.Request(rid), "ipc:///peer", "")
        self.m.received[10 * i + 1] = [x]
        self.cancels[rid] = cancel = threading.Event()
        before = self.waiting()

        def go():
            try:
                self.rt.run(phased.Request(rid, prompt=prompt, seed=i), 10 * i + 1, 10 * i + 2, cancel)
                self.results[rid] = "ok"
            except Exception as e:  # noqa: BLE001
                self.results[rid] = str(e)

        self.threads[rid] = t = threading.Thread(target=go, name=rid)
        t.start()
        if join:  # in the batch's order: wait until it has joined
            until(f"{rid} to join", lambda: self.waiting() == before + 1)

    def waiting(self):
        return len(self.rt._batcher._waiting)

    def wait(self, *rids):
        for rid in rids or list(self.threads):
            self.threads[rid].join(10)
            assert not self.threads[rid].is_alive(), f"Run {rid} did not return"
        return self.results

    def sent(self, i):
        return self.m.sent[10 * i + 2]["x"]


def batching(phase=None, **kw):
    rt, managers = runtime(phase or Batched(), None)
    rt._executor = Executor()
    configure(rt, **kw)
    return rt, managers[0], Runs(rt, managers[0])


def by_request(stream):
    got = {}
    while (ev := stream.next(lambda: True, 0.01)) is not None:
        got.setdefault(ev.request, []).append((ev.stage, ev.done, ev.total))
    return got


def test_runs_batch_up_to_max_size():
    """Seven Runs that arrive together compute as batches of 3, 3 and 1
    (a batch of one calls run), in the order they joined; each Run's
    outputs go to its own out room; every Run's progress is WAITING until
    its batch starts, COMPUTING from then, its own reports, SENDING."""
    rt, m, runs = batching()
    stream = rt.hub.subscribe()
    ids = [f"r{i}" for i in range(7)]
    for i, rid in enumerate(ids):
        runs.start(rid, i)  # the executor is not running yet: they all wait
    with executor_thread(rt):
        assert runs.wait() == {rid: "ok" for rid in ids}
    assert rt.phase.calls == [("batch", ids[:3]), ("batch", ids[3:6]), ("run", ids[6:])]
    for i in range(7):
        np.testing.assert_array_equal(runs.sent(i), np.full((2, 3), 2 * i, np.float32))
    rt.hub.close()
    got = by_request(stream)
    W, C, S, F = progress.WAITING, progress.COMPUTING, progress.SENDING, progress.FINISHED
    for rid in ids:
        assert got[rid] == [(W, 0, 0), (C, 0, 1), (C, 1, 3), (C, 2, 3), (C, 3, 3), (S, 0, 0), (F, 0, 0)], rid
    st = metric_values(rt.status().metrics)
    assert st[("runs_total", (("outcome", "ok"),))] == 7 and st[("steps_total", ())] == 21
    assert st[("compute_seconds_total", ())] > 0
    assert st[("batches_total", ())] == 2 and st[("batched_runs_total", ())] == 6, "the batch of one is a Run"


def test_a_batch_starts_computing_together():
    """Every Run of a batch turns COMPUTING when the batch starts, before
    the phase reports any step of it."""
    rt, m, runs = batching()
    events = []
    rt.hub.publish = lambda run, ev, publish=rt.hub.publish: (events.append((ev.request, ev.stage, ev.done)),
                                                               publish(run, ev))
    for i, rid in enumerate(["a", "b", "c"]):
        runs.start(rid, i)
    with executor_thread(rt):
        runs.wait()
    computing = [e for e in events if e[1] == progress.COMPUTING]
    assert sorted(computing[:3]) == [("a", progress.COMPUTING, 0), ("b", progress.COMPUTING, 0),
                                     ("c", progress.COMPUTING, 0)]
    assert computing[3] == ("a", progress.COMPUTING, 1)


def test_a_waiting_run_waits_for_more():
    """A Run that joins alone waits for others (up to batch_max_wait_ms);
    the batch starts once it is full: the config's batch_max_size and
    wait override the phase's defaults. A lone Run starts alone once its
    wait is over."""
    rt, m, runs = batching(batch_max_size=2, batch_max_wait_ms=60_000)
    assert rt._batcher.limits == Limits(2, 60.0)
    with executor_thread(rt):
        runs.start("first", 1)
        until("the drain to gather", lambda: rt._batcher._draining)
        runs.start("second", 2, join=False)
        assert runs.wait() == {"first": "ok", "second": "ok"}
    assert rt.phase.calls == [("batch", ["first", "second"])]

    rt, m, runs = batching()  # the phase's defaults: 3 within 0.02 s
    assert rt._batcher.limits == Limits(3, 0.02)
    stream = rt.hub.subscribe()
    with executor_thread(rt):
        began = time.monotonic()
        runs.start("alone", 1, join=False)
        assert runs.wait() == {"alone": "ok"}
        took = time.monotonic() - began
    assert rt.phase.calls == [("run", ["alone"])]
    rt.hub.close()
    assert [s for s, _, _ in by_request(stream)["alone"]][:2] == [progress.WAITING, progress.COMPUTING]
    print(f"a lone Run with batch_wait 0.02 s returned after {took * 1000:.1f} ms")


def test_a_cancelled_run_leaves_its_batch():
    """A Run cancelled (its room removed) while it waits for its batch
    leaves it: it fails as cancelled, never computes, and the others of
    the batch complete."""
    rt, m, runs = batching()
    stream = rt.hub.subscribe()
    for i, rid in enumerate(["a", "b", "c"]):
        runs.start(rid, i)
    rt.remove_room(11)  # b's in room
    assert runs.wait("b") == {"b": "cancelled before it started computing"}
    assert runs.waiting() == 2
    with executor_thread(rt):
        assert runs.wait() == {"a": "ok", "b": "cancelled before it started computing", "c": "ok"}
    assert rt.phase.calls == [("batch", ["a", "c"])]
    assert 12 not in m.sent
    rt.hub.close()
    assert [s for s, _, _ in by_request(stream)["b"]] == [progress.WAITING, progress.FINISHED]


def test_batch_errors():
    """An item's exception fails its Run only; a raised exception, or a
    result of another length, fails every Run of the batch, saying why."""
    rt, m, runs = batching()
    for i, (rid, prompt) in enumerate([("good", ""), ("bad", "fail"), ("fine", "")]):
        runs.start(rid, i, prompt=prompt)
    with executor_thread(rt):
        assert runs.wait() == {"good": "ok", "bad": "bad: the prompt says fail", "fine": "ok"}
    assert sorted(m.sent) == [2, 22]
    st = metric_values(rt.status().metrics)
    assert st[("runs_total", (("outcome", "ok"),))] == 2 and st[("runs_total", (("outcome", "failed"),))] == 1

    def boom(items):
        raise MemoryError("out of memory in the DiT")

    for whole, why in [(boom, "run_batch of 2 requests failed: out of memory in the DiT"),
                       (lambda items: [{}], "run_batch returned 1 results for a batch of 2; want one per item, "
                                        "in order"),
                       (lambda items: None, "run_batch returned NoneType; want a list of 2 results, one per item")]:
        rt, m, runs = batching(Batched(whole), batch_max_size=2, batch_max_wait_ms=5000)
        runs.start("p", 1)
        runs.start("q", 2)
        with executor_thread(rt):
            assert runs.wait() == {"p": why, "q": why}
        assert m.sent == {}


def test_batching_off_and_info():
    """Info lists "batch" for a phase with run_batch only; batch_max_size 1
    turns batching off (every Run calls run, one at a time)."""
    assert list(Service(runtime(Batched(), None)[0]).Info(None, None).features) == ["batch"]
    assert list(runtime(Scale(), None)[0].info().features) == []
    rt, m, _ = batching(batch_max_size=1)
    assert rt._batcher is None
    rt2, _ = runtime(Scale(), None)
    with pytest.raises(phased.InvalidArgument,
                       match=r"^batch_max_size 4: phase scale does not batch \(it does not override run_batch\)$"):
        configure(rt2, batch_max_size=4)
    configure(rt2, batch_max_size=1)  # off, as it is anyway
    assert rt2._batcher is None
    with pytest.raises(phased.InvalidArgument, match="^batch_max_size 1025: want 0 to 1024$"):
        configure(runtime(Batched(), None)[0], batch_max_size=1025)
    with executor_thread(rt):
        threads = []
        for i in range(3):
            rt.open_room(10 * i + 1, RECEIVER, phased.Request("r"), "ipc:///peer", "")
            m.received[10 * i + 1] = [np.zeros((2, 3), np.float32)]
            threads.append(threading.Thread(target=rt.run, args=(phased.Request(f"r{i}"), 10 * i + 1, 10 * i + 2,
                                                                  threading.Event())))
            threads[-1].start()
        for t in threads:
            t.join(5)
    assert sorted(rt.phase.calls) == [("run", ["r0"]), ("run", ["r1"]), ("run", ["r2"])]


def test_phase_defaults_are_checked():
    class Huge(Batched):
        max_batch = 0

    class Never(Batched):
        batch_wait = -1

    with pytest.raises(ValueError, match=r"Huge.max_batch = 0: want an int of at least 1"):
        runtime(Huge(), None)
    with pytest.raises(ValueError, match=r"Never.batch_wait = -1: want seconds"):
        runtime(Never(), None)


def test_a_stopped_executor_fails_the_waiting_runs():
    """Runs that join after the executor stopped (the instance shutting
    down) fail instead of waiting for a batch that never runs."""
    rt, m, runs = batching()
    rt._executor.stop()
    runs.start("late", 1, join=False)
    assert runs.wait() == {"late": "the instance is shutting down"}
    assert not rt._batcher._draining and runs.waiting() == 0
