"""The phase runtime: serves phased.v1.Phase around an author's Phase
(docs/protocol.md section 2). It owns the transfer manager, the thread that
runs the phase's load, and the hub of the Progress streams, and maps rooms
to the Run calls that use them, so that removing a room also stops the
computation waiting on it. It keeps the instance's credits (2.4) and, for
a phase that batches, its Batcher (2.5, phased.batch). The Go twin is
sdk/phase/runtime.go.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import grpc
import numpy as np

from . import batch
from . import progress as prog
from .progress import Released
from concurrent.futures import TimeoutError as FutureTimeout

from .api import Artifact, Cancelled, Config, Context, InvalidArgument, ParamProblem, Phase, Request, reason
from .checkpoint import RunCheckpointer
from .executor import Inline, Stopped
from .tensor import Spec, SpecError, as_array, numpy_dtype, to_torch
from ._proto.phasedv1 import common_pb2, phase_pb2

INSTANCE_ID = re.compile(r"[A-Za-z0-9_.-]{1,48}")
MAX_SOCKET_PATH = 107
LONGEST_SOCKET = "/r-18446744073709551615-18446744073709551615.sock"
BACKENDS = ("shm", "zmq", "cuda")
SENDER, RECEIVER = 1, 2


class NoValidation(Exception):
    """The phase cannot check params before it loads: it does not
    implement validate_params. Answered with gRPC UNIMPLEMENTED."""


class NoCredit(Exception):
    """An OpenRoom as receiver beyond the instance's credits (protocol
    2.4): answered with gRPC RESOURCE_EXHAUSTED, which the supervisor
    takes as "place the request elsewhere or later", not as a failure."""


class Credits:
    """What the instance holds as a receiver (docs/protocol.md 2.4): each
    receiver room with buffers, its input specs and their bytes, bounded
    by max_rooms and max_input_bytes (0: no limit). Not locked itself: the
    runtime calls it under its lock, so that a check and what it takes are
    one step."""

    def __init__(self):
        self.max_rooms = 0
        self.max_bytes = 0
        self._held: Dict[int, tuple] = {}  # room -> (its input specs, their bytes)
        self._bytes = 0

    def take(self, room: int, specs: List[Spec]) -> bool:
        """Hold room's credit for its input buffers, or raise NoCredit
        saying which limit it would pass. False (and nothing changed) when
        room holds credit already: the manager refuses a room id twice.
        Inputs over max_input_bytes on their own never fit: InvalidArgument,
        so that the request fails rather than waits."""
        if room in self._held:
            return False
        n = sum(s.nbytes for s in specs)
        if self.max_bytes and n > self.max_bytes:
            raise InvalidArgument(f"inputs of {n} bytes are more than max_input_bytes {self.max_bytes} on their own: "
                                  "no such request ever fits; raise max_input_bytes")
        if self.max_rooms and len(self._held) >= self.max_rooms:
            raise NoCredit(f"no credit: {len(self._held)} receiver rooms open, max_rooms {self.max_rooms}")
        if self.max_bytes and self._bytes + n > self.max_bytes:
            raise NoCredit(f"no credit: inputs of {n} bytes with {self._bytes} of {self.max_bytes} in use, "
                           f"max_input_bytes {self.max_bytes}")
        self._held[room] = (specs, n)
        self._bytes += n
        return True

    def give(self, room: int) -> None:
        """Give room's credit back (it was removed); a room holding none is
        ignored."""
        held = self._held.pop(room, None)
        if held is not None:
            self._bytes -= held[1]

    def specs(self, room: int) -> Optional[List[Spec]]:
        """The input specs receiver room was opened for; None once removed."""
        held = self._held.get(room)
        return held[0] if held is not None else None

    def left(self):
        """The rooms and bytes the instance can still accept; -1: no limit."""
        rooms = self.max_rooms - len(self._held) if self.max_rooms else -1
        nbytes = self.max_bytes - self._bytes if self.max_bytes else -1
        return rooms, nbytes

    def clear(self) -> None:
        self._held.clear()
        self._bytes = 0


@dataclass(frozen=True)
class RunResult:
    """What a Run did: the last phase's artifact, or what a phase with an
    out room sent (the bytes written into the receiver's buffers, and the
    time from handing them to the transfer manager to the receiver's
    Success)."""

    artifact: Optional[Artifact] = None
    sent_bytes: int = 0
    send_seconds: float = 0.0
    # The out room's sender side has nothing in flight (its send ended in
    # the receiver's shared memory, no frame queued): the supervisor may
    # remove it before the receiver returns.
    out_drained: bool = False
    # The runtime removed that drained sender side itself before
    # answering (protocol 3.5): the supervisor sends it no RemoveRoom.
    # (This runtime leaves every receiver side to the supervisor:
    # in_removed stays false.)
    out_removed: bool = False


@dataclass(frozen=True)
class Metric:
    """One sample of the instance's own figures (StatusResponse.metrics)."""

    name: str
    help: str
    counter: bool
    value: float
    labels: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """What Status reports."""

    rooms: list
    dropped_frames: int
    dropped_progress: int
    metrics: List[Metric]


def request_of(msg) -> Request:
    return Request(id=msg.id, prompt=msg.prompt, seed=msg.seed, steps=msg.steps, artifact_dir=msg.artifact_dir,
                   no_sync=msg.no_sync, checkpoint_path=msg.checkpoint.path, checkpoint_every=msg.checkpoint.every)


class Runtime:
    """The Phase service of one instance; every method may be called from
    any gRPC thread."""

    def __init__(self, phase: Phase, logger: logging.Logger, manager_factory=None, executor=None):
        if not phase.name:
            raise ValueError(f"{type(phase).__name__}.name is empty: set it to NAME of phased-phase-NAME")
        if phase.arrays not in ("numpy", "torch"):
            raise ValueError(f"{type(phase).__name__}.arrays = {phase.arrays!r}: want 'numpy' or 'torch'")
        batch.check_defaults(phase)
        self.phase = phase
        self.log = logger
        self.hub = prog.Hub()
        self._manager_factory = manager_factory
        # Where load and run execute: the main thread under serve().
        self._executor = executor or Inline()
        self._lock = threading.Lock()
        self._mgr = None
        self._instance = ""
        self._params: Dict[str, str] = {}
        self._released = False
        self._runs: Dict[int, threading.Event] = {}  # room -> cancel of the Run using it
        self._credits = Credits()  # the receiver rooms and their input specs
        self._batcher: Optional[batch.Batcher] = None  # set by configure for a phase that batches
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self._loaded: Optional[threading.Event] = None
        self._load_error: Optional[str] = None
        self._cancel_load = threading.Event()
        # What Status reports of the Runs (under _lock): how many succeeded
        # and failed, and the time the phase's run computed, in all.
        self._runs_ok = 0
        self._runs_failed = 0
        self._compute_seconds = 0.0

    # Info, Configure, Ready -------------------------------------------------

    def info(self) -> common_pb2.InfoResponse:
        features = ["batch"] if batch.batches(self.phase) else []
        return common_pb2.InfoResponse(name=self.phase.name, kind="phase", version=self.phase.version,
                                       api_versions=[1], features=features)

    def configure(self, instance: str, run_dir: str, params: Dict[str, str], zmq_host: str,
                  peer_timeout_ms: int, device: str, *, max_rooms: int = 0, max_input_bytes: int = 0,
                  batch_max_size: int = 0, batch_max_wait_ms: int = 0) -> None:
        """ConfigureRequest's fields (docs/protocol.md 2.2, 2.4, 2.5)."""
        if not INSTANCE_ID.fullmatch(instance):
            raise InvalidArgument(f"instance id {instance!r} must match ^[A-Za-z0-9_.-]{{1,48}}$")
        with self._lock:
            if self._mgr is not None:
                raise InvalidArgument(f"instance {self._instance} is already configured")
            if self._released:
                raise Released()
            if device not in ("", "cpu"):
                if device == "cuda":
                    raise InvalidArgument('device "cuda": the Python SDK holds its buffers in host memory only; '
                                          'give this phase device = "cpu"')
                raise InvalidArgument(f'device {device!r}: want "cpu" or "cuda"')
            for field_name, value in (("peer_timeout_ms", peer_timeout_ms), ("max_rooms", max_rooms),
                                      ("max_input_bytes", max_input_bytes), ("batch_max_size", batch_max_size),
                                      ("batch_max_wait_ms", batch_max_wait_ms)):
                if value < 0:
                    raise InvalidArgument(f"{field_name} {value} is negative")
            if batch_max_size > batch.MAX_BATCH:
                raise InvalidArgument(f"batch_max_size {batch_max_size}: want 0 to {batch.MAX_BATCH}")
            if batch_max_size > 1 and not batch.batches(self.phase):
                raise InvalidArgument(f"batch_max_size {batch_max_size}: phase {self.phase.name} does not batch "
                                      "(it does not override run_batch)")
            if len(run_dir) + len(LONGEST_SOCKET) > MAX_SOCKET_PATH:
                raise InvalidArgument(f"run dir {run_dir!r} is too long for socket paths "
                                      f"(at most {MAX_SOCKET_PATH - len(LONGEST_SOCKET)} bytes)")
            log = self.log.getChild(instance)
            # The cluster's CURVE pair, when the supervisor (or `supervisor
            # agent`) gives one: the zmq rooms' tcp sockets use it (4.7). A
            # bad key file fails Configure, naming the file.
            from .transfer.curve import curve_from_env
            curve = curve_from_env()
            mgr = self._new_manager(f"{instance}.{os.getpid()}", run_dir, zmq_host or "127.0.0.1",
                                    (peer_timeout_ms or 10000) / 1000.0, log.getChild("transfer"), curve)
            mgr.start()
            try:
                self.phase.configure(Config(instance=instance, params=dict(params), log=log))
            except BaseException:
                mgr.close()
                raise
            self._mgr, self._instance, self._params = mgr, instance, dict(params)
            self._credits.max_rooms, self._credits.max_bytes = max_rooms, max_input_bytes
            limits = batch.limits(self.phase, batch_max_size, batch_max_wait_ms)
            if limits is not None:
                self._batcher = batch.Batcher(self.phase, limits, self._executor, log, self._computed)
            self._loaded = threading.Event()
            log.info("configured", extra={"run_dir": run_dir, "batch": f"{limits.size} within {limits.wait:g}s"
                                          if limits else "off"})
            if type(self.phase).load is Phase.load:
                self._loaded.set()
                return
            # This thread only waits for the executor, which runs the load.
            threading.Thread(target=lambda: self._executor.submit(self._load, log).exception(),
                             name="phased-load", daemon=True).start()

    def _new_manager(self, name, run_dir, zmq_host, peer_timeout, logger, curve=None):
        # A factory is given curve only when there are keys, so that one
        # written before CURVE goes on working without them.
        kw = {"curve": curve} if curve is not None else {}
        if self._manager_factory is not None:
            return self._manager_factory(name=name, run_dir=run_dir, zmq_host=zmq_host,
                                         peer_timeout=peer_timeout, logger=logger, **kw)
        from .transfer import Manager
        return Manager(name=name, run_dir=run_dir, zmq_host=zmq_host, peer_timeout=peer_timeout, logger=logger, **kw)

    def _load(self, log: logging.Logger) -> None:
        start = time.monotonic()
        try:
            self.phase.load(Context(log, self._cancel_load))
            log.info("loaded", extra={"took": f"{time.monotonic() - start:.3f}s"})
        except BaseException as e:  # noqa: BLE001 - a failed load fails Ready, not the process
            log.error("load failed", extra={"error": reason(e), "traceback": traceback.format_exc()})
            self._load_error = reason(e)
        finally:
            self._loaded.set()

    def ready(self, alive) -> None:
        with self._lock:
            loaded, released = self._loaded, self._released
        if loaded is None:
            if released:
                raise Released()
            raise InvalidArgument("instance is not configured")
        while not loaded.wait(0.2):
            if not alive():
                raise Cancelled("the call ended while the phase was loading")
        with self._lock:
            if self._released:
                raise Released()
        if self._load_error is not None:
            raise RuntimeError(f"loading: {self._load_error}")

    def _ready_locked(self):
        if self._released:
            raise Released()
        if self._mgr is None:
            raise InvalidArgument("instance is not configured")
        if not self._loaded.is_set():
            raise RuntimeError(f"instance {self._instance} is still loading; call Ready first")
        if self._load_error is not None:
            raise RuntimeError(f"instance {self._instance} failed to load: {self._load_error}")
        return self._mgr

    # Rooms ------------------------------------------------------------------

    def open_room(self, room: int, role: int, request: Request, peer_endpoint: str, backend: str) -> str:
        with self._lock:
            mgr = self._ready_locked()
            params = self._params
        if room == 0:
            raise InvalidArgument("room id 0 is reserved")
        backend = backend or "shm"
        if backend not in BACKENDS:
            raise InvalidArgument(f'room {room}: unknown transfer backend "{backend}" (known: shm, zmq, cuda)')
        if role == SENDER:
            return mgr.open_sender(room, backend)
        if role == RECEIVER:
            try:
                specs = self._specs(request, params)
            except Exception as e:  # noqa: BLE001 - the author's error is the reason
                raise RuntimeError(f"room {room}: inputs of request {request.id}: {reason(e)}") from e
            # The credit is taken before the buffers exist, so that two
            # opens at once cannot both pass the last of it.
            with self._lock:
                took = self._credits.take(room, specs)
            try:
                mgr.open_receiver(room, backend, specs, peer_endpoint)
            except BaseException:
                if took:
                    with self._lock:
                        self._credits.give(room)
                raise
            return ""
        raise InvalidArgument(f"room {room}: unknown role {role}")

    def _specs(self, request: Request, params) -> List[Spec]:
        specs = list(self.phase.inputs(request, params) or [])
        for s in specs:
            if not isinstance(s, Spec):
                raise TypeError(f"inputs returned {s!r}, not a phased.Spec")
            s.check()
        return specs

    def remove_room(self, room: int) -> None:
        with self._lock:
            if self._mgr is None:
                raise InvalidArgument("instance is not configured")
            mgr, cancel = self._mgr, self._runs.get(room)
            self._credits.give(room)
        if cancel is not None:
            cancel.set()
        mgr.remove(room)

    def status(self) -> Status:
        with self._lock:
            if self._mgr is None:
                raise InvalidArgument("instance is not configured")
            mgr = self._mgr
        states, dropped = mgr.status()
        return Status(states, dropped, self.hub.dropped, self.metrics(mgr, dropped))

    def metrics(self, mgr, dropped_frames: int) -> List[Metric]:
        """The instance's own figures for the supervisor's /metrics: the
        names, labels and meanings of the Go runtime's (sdk/phase)."""
        with self._lock:
            ok, failed, compute = self._runs_ok, self._runs_failed, self._compute_seconds
            credit_rooms, credit_bytes = self._credits.left()
        batches, batched_runs = self._batcher.counts() if self._batcher is not None else (0, 0)
        runs = "Runs of this instance, by outcome."
        ms = [
            Metric("runs_total", runs, True, ok, {"outcome": "ok"}),
            Metric("runs_total", runs, True, failed, {"outcome": "failed"}),
            Metric("compute_seconds_total", "Time the phase's Run computed, all Runs together.", True, compute),
            Metric("steps_total", "Units of work (denoising steps) the phase reported done.", True, self.hub.units),
            Metric("transfer_dropped_frames_total", "Frames from the network the transfer manager dropped.", True,
                   dropped_frames),
            Metric("progress_dropped_total", "Progress events dropped by streams too slow to read them.", True,
                   self.hub.dropped),
            Metric("credit_rooms", "Receiver rooms the instance can still accept (max_rooms); -1: no limit.", False,
                   credit_rooms),
            Metric("credit_bytes", "Input bytes the instance can still accept (max_input_bytes); -1: no limit.",
                   False, credit_bytes),
            Metric("batches_total", "Batched runs of two Runs or more.", True, batches),
            Metric("batched_runs_total", "Runs computed in batched runs of two or more.", True, batched_runs),
        ]
        for c in mgr.counters():
            b = {"backend": c.backend}
            ms += [
                Metric("transfer_sent_total", "Tensor sets sent into rooms, by backend.", True, c.sent, b),
                Metric("transfer_sent_bytes_total", "Bytes sent into rooms, by backend.", True, c.sent_bytes, b),
                Metric("transfer_send_seconds_total",
                       "Time sends took, from the call to the receiver's Success, by backend.", True,
                       c.send_seconds, b),
                Metric("transfer_received_total", "Tensor sets received from rooms, by backend.", True, c.received,
                       b),
                Metric("transfer_received_bytes_total", "Bytes received from rooms, by backend.", True,
                       c.received_bytes, b),
            ]
        return ms

    # ValidateParams -------------------------------------------------------

    def validate_params(self, params: Dict[str, str]) -> List[ParamProblem]:
        """The phase's validate_params, its answer as ParamProblems; raises
        NoValidation when the phase does not implement it. Needs no
        Configure."""
        if type(self.phase).validate_params is Phase.validate_params:
            raise NoValidation(f"phase {self.phase.name} does not implement validate_params: "
                               "it checks its params only when it is configured")
        try:
            got = self.phase.validate_params(dict(params))
        except ValueError as e:
            return [ParamProblem("", reason(e))]
        problems = []
        for p in got or []:
            if isinstance(p, ParamProblem):
                problems.append(p)
            elif isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p):
                problems.append(ParamProblem(p[0], p[1]))
            else:
                raise TypeError(f"validate_params returned {p!r}; want phased.ParamProblem or (param, message) "
                                "tuples of strings")
        return problems

    # Run --------------------------------------------------------------------

    def run(self, request: Request, in_room: int, out_room: int, cancel: threading.Event) -> RunResult:
        ok = False
        try:
            res = self._tracked_run(request, in_room, out_room, cancel)
            ok = True
            return res
        finally:
            with self._lock:
                if ok:
                    self._runs_ok += 1
                else:
                    self._runs_failed += 1

    def _tracked_run(self, request: Request, in_room: int, out_room: int, cancel: threading.Event) -> RunResult:
        rooms = [r for r in (in_room, out_room) if r]
        with self._lock:
            mgr = self._ready_locked()
            for r in rooms:
                self._runs[r] = cancel
            self._active += 1
        rep = prog.Reporter(self.hub, request.id, in_room, out_room)
        rep.publish(prog.WAITING)
        try:
            return self._run(mgr, rep, request, in_room, out_room, cancel)
        finally:
            rep.publish(prog.FINISHED)
            with self._lock:
                for r in rooms:
                    if self._runs.get(r) is cancel:
                        del self._runs[r]
                self._active -= 1
                self._idle.notify_all()

    def _run(self, mgr, rep, request, in_room, out_room, cancel) -> RunResult:
        inputs: Dict[str, object] = {}
        if in_room:
            try:
                arrays = mgr.receive(in_room, cancel)
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"receive room {in_room}: {reason(e)}") from e
            with self._lock:
                specs = self._credits.specs(in_room)
            if specs is None:  # removed meanwhile
                raise RuntimeError(f"receive room {in_room}: transfer: room removed: room {in_room}")
            if self.phase.arrays == "torch":
                arrays = [to_torch(a, s.dtype) for s, a in zip(specs, arrays)]
            inputs = {s.name: a for s, a in zip(specs, arrays)}
        log = self.log.getChild(self._instance) if self._instance else self.log
        # Outputs the phase writes into ctx.alloc's memory are lent to the
        # next phase, not copied; they go back to the manager once the Run
        # is over (a lent one when the receiver gives it back).
        outs = _RunAllocator(mgr) if out_room and _lends(mgr, out_room) else None
        try:
            return self._compute_and_send(mgr, rep, request, out_room, cancel, log, inputs, outs)
        finally:
            if outs is not None:
                outs.free()

    def _compute_and_send(self, mgr, rep, request, out_room, cancel, log, inputs, outs) -> RunResult:
        ckpt = None
        if request.checkpoint_path and request.checkpoint_every > 0:
            ckpt = RunCheckpointer(request.checkpoint_path, request.checkpoint_every, request.id,
                                   list(inputs.values()), log, rep.resumed_at, self.phase.arrays)
        ctx = Context(log, cancel, rep.report, allocator=outs, arrays=self.phase.arrays, checkpointer=ckpt)

        def compute(inputs):
            # COMPUTING only once the executor runs it: a Run queued behind
            # another stays WAITING, which the hang watchdog does not count.
            rep.start_computing()
            ok = False
            began = time.monotonic()
            try:
                out = self.phase.run(ctx, request, inputs)
                ok = True
                return out
            finally:
                self._computed(time.monotonic() - began)
                rep.stop_computing(ok)

        if self._batcher is not None:
            # It joins the next batch (and stays WAITING until it starts).
            job = batch.Job(ctx, request, inputs, rep)
            fut, withdraw = self._batcher.submit(job), functools.partial(self._batcher.withdraw, job)
        else:
            fut = self._executor.submit(compute, inputs)
            withdraw = fut.cancel
        try:
            out = self._await(fut, cancel, withdraw)
        except (Cancelled, Stopped):
            raise
        except Exception as e:  # noqa: BLE001 - the author's error fails this request only
            log.error("run failed", extra={"request": request.id, "error": reason(e),
                                           "traceback": traceback.format_exc()})
            raise RuntimeError(reason(e)) from None
        finally:
            del inputs
            if ckpt is not None:
                ckpt.close()  # nor does it hold the inputs' memory
        if not out_room:
            if not isinstance(out, Artifact):
                raise RuntimeError("the last phase of the pipeline returned no artifact")
            return RunResult(artifact=out)
        if isinstance(out, Artifact):
            raise RuntimeError(f"send room {out_room}: the phase returned an artifact, but a next phase "
                               "waits for tensors")
        outputs = self._outputs(out)
        rep.publish(prog.SENDING)
        began = time.monotonic()
        try:
            n = mgr.send(out_room, outputs, cancel)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"send room {out_room}: {reason(e)}") from e
        took = time.monotonic() - began
        drained = mgr.drained(out_room)
        removed = False
        if drained:
            # Sender first, as invariant 1 has it: the receiver side is
            # still open, and nothing of this side is in flight.
            try:
                mgr.remove(out_room)
                removed = True
            except Exception as e:  # noqa: BLE001 - the supervisor's RemoveRoom tries again
                log.warning("remove a drained sender side", extra={"room": out_room, "error": reason(e)})
        return RunResult(sent_bytes=int(n), send_seconds=took, out_drained=drained, out_removed=removed)

    def _computed(self, seconds: float) -> None:
        """The phase computed for seconds (a run, or a batch's run_batch)."""
        with self._lock:
            self._compute_seconds += seconds

    @staticmethod
    def _await(fut, cancel: threading.Event, withdraw):
        """fut's result; a Run cancelled before its computation started is
        taken off the executor's queue or out of its batch (withdraw()
        says whether it could be)."""
        while True:
            try:
                return fut.result(timeout=0.05)
            except FutureTimeout:
                if cancel.is_set() and withdraw():
                    raise Cancelled("cancelled before it started computing") from None

    @staticmethod
    def _outputs(out) -> Dict[str, object]:
        if out is None:
            return {}
        if not isinstance(out, dict):
            raise RuntimeError(f"the phase returned {type(out).__name__}; want a dict of tensors by name")
        try:
            return {str(k): as_array(v) for k, v in out.items()}
        except (TypeError, ValueError, SpecError) as e:
            raise RuntimeError(f"the phase's outputs: {e}") from e

    # Release ----------------------------------------------------------------

    def release(self, deadline: float) -> List[str]:
        """Cancel every Run and the load, wait for them until deadline
        (time.monotonic()), end the streams, close the manager and the
        phase. Returns the errors met on the way."""
        with self._lock:
            if self._released:
                return []
            self._released = True
            mgr, loaded = self._mgr, self._loaded
            for cancel in self._runs.values():
                cancel.set()
            self._credits.clear()
            self._cancel_load.set()
            errors = []
            while self._active and time.monotonic() < deadline:
                self._idle.wait(max(0.0, min(0.2, deadline - time.monotonic())))
            if self._active:
                errors.append("release: Run calls still in progress: context deadline exceeded")
        if loaded is not None and not loaded.wait(max(0.0, deadline - time.monotonic())):
            errors.append("release: the phase's Load has not returned: context deadline exceeded")
        self.hub.close()
        if mgr is not None:
            try:
                mgr.close()
            except Exception as e:  # noqa: BLE001
                errors.append(reason(e))
        try:
            self.phase.close()
        except Exception as e:  # noqa: BLE001
            errors.append(f"close: {reason(e)}")
        return errors


def _lends(mgr, room: int) -> bool:
    """Whether a Run's out room can lend ctx.alloc's memory: a shm room
    (the other backends copy, so ordinary memory serves them)."""
    backend = getattr(mgr, "room_backend", None)
    try:
        return backend is None or backend(room) == "shm"
    except Exception:  # noqa: BLE001 - removed meanwhile: the send will say so
        return False


class _RunAllocator:
    """ctx.alloc's memory for one Run with a next phase: output segments of
    the transfer manager, all given back when the Run ends."""

    def __init__(self, mgr):
        self._mgr = mgr
        self._mu = threading.Lock()
        self._held: list = []

    def alloc(self, spec: Spec):
        alloc = getattr(self._mgr, "alloc", None)
        if alloc is None:  # a manager without output memory
            return np.zeros(spec.shape, numpy_dtype(spec.dtype))
        arr = alloc(spec)
        with self._mu:
            self._held.append(arr)
        return arr

    def written(self, arr, checksum: int) -> None:
        written = getattr(self._mgr, "written", None)
        if written is not None:
            written(arr, checksum)

    def free(self) -> None:
        with self._mu:
            held, self._held = self._held, []
        for arr in held:
            self._mgr.free(arr)


# The gRPC service -------------------------------------------------------------

def _code(exc: BaseException):
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NoValidation):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(exc, NoCredit):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNKNOWN


class Service:
    """phased.v1.Phase over a Runtime: protobuf in, protobuf out, errors as
    the status codes of docs/protocol.md 2.3."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def _call(self, context, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - every error becomes a status
            if not isinstance(e, (InvalidArgument, Released, Cancelled, RuntimeError, NoValidation, NoCredit)):
                self.rt.log.debug("call failed", extra={"error": reason(e)})
            context.abort(_code(e), reason(e))

    def Info(self, request, context):
        return self.rt.info()

    def Configure(self, request, context):
        def do():
            self.rt.configure(request.instance, request.run_dir, dict(request.params), request.zmq_host,
                              request.peer_timeout_ms, request.device, max_rooms=request.max_rooms,
                              max_input_bytes=request.max_input_bytes, batch_max_size=request.batch_max_size,
                              batch_max_wait_ms=request.batch_max_wait_ms)
            return phase_pb2.ConfigureResponse()
        return self._call(context, do)

    def Ready(self, request, context):
        def do():
            self.rt.ready(context.is_active)
            return phase_pb2.ReadyResponse()
        return self._call(context, do)

    def OpenRoom(self, request, context):
        def do():
            ep = self.rt.open_room(request.room, request.role, request_of(request.request),
                                   request.peer_endpoint, request.backend)
            return phase_pb2.OpenRoomResponse(endpoint=ep)
        return self._call(context, do)

    def Run(self, request, context):
        cancel = threading.Event()
        context.add_callback(cancel.set)

        def do():
            in_room = request.in_room if request.HasField("in_room") else 0
            out_room = request.out_room if request.HasField("out_room") else 0
            res = self.rt.run(request_of(request.request), in_room, out_room, cancel)
            resp = phase_pb2.RunResponse(sent_bytes=res.sent_bytes, send_nanos=int(res.send_seconds * 1e9),
                                         out_drained=res.out_drained, out_removed=res.out_removed)
            art = res.artifact
            if art is not None:
                resp.artifact.CopyFrom(phase_pb2.Artifact(path=art.path, sha256=art.sha256, size=art.size,
                                                          media_type=art.media_type))
            return resp
        return self._call(context, do)

    def RemoveRoom(self, request, context):
        def do():
            self.rt.remove_room(request.room)
            return phase_pb2.RemoveRoomResponse()
        return self._call(context, do)

    def Status(self, request, context):
        def do():
            st = self.rt.status()
            return phase_pb2.StatusResponse(
                rooms=[phase_pb2.RoomState(room=s.room, role=s.role, status=s.status, reason=s.reason)
                       for s in st.rooms],
                dropped_frames=st.dropped_frames, dropped_progress=st.dropped_progress,
                metrics=[phase_pb2.Metric(name=m.name, help=m.help, counter=m.counter, labels=m.labels,
                                          value=float(m.value)) for m in st.metrics])
        return self._call(context, do)

    def ValidateParams(self, request, context):
        def do():
            problems = self.rt.validate_params(dict(request.params))
            return phase_pb2.ValidateParamsResponse(
                problems=[phase_pb2.ParamProblem(param=p.param, message=p.message) for p in problems])
        return self._call(context, do)

    def Release(self, request, context):
        def do():
            remaining = context.time_remaining()
            budget = 10.0 if remaining is None else max(0.0, remaining - 0.2)
            errors = self.rt.release(time.monotonic() + budget)
            if errors:
                raise RuntimeError("\n".join(errors))
            return phase_pb2.ReleaseResponse()
        return self._call(context, do)

    def Progress(self, request, context):
        try:
            stream = self.rt.hub.subscribe()
        except prog.Released as e:
            context.abort(grpc.StatusCode.UNKNOWN, str(e))
        try:
            while True:
                ev = stream.next(context.is_active)
                if ev is None:
                    return
                yield phase_pb2.ProgressEvent(request=ev.request, stage=ev.stage, done=ev.done, total=ev.total,
                                              in_room=ev.in_room, out_room=ev.out_room, resumed=ev.resumed)
        finally:
            stream.close()


def handler(service: Service):
    """The generic gRPC handler of phased.v1.Phase."""
    P = phase_pb2
    C = common_pb2

    def unary(fn, req, resp):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                   response_serializer=resp.SerializeToString)

    return grpc.method_handlers_generic_handler("phased.v1.Phase", {
        "Info": unary(service.Info, C.InfoRequest, C.InfoResponse),
        "Configure": unary(service.Configure, P.ConfigureRequest, P.ConfigureResponse),
        "Ready": unary(service.Ready, P.ReadyRequest, P.ReadyResponse),
        "OpenRoom": unary(service.OpenRoom, P.OpenRoomRequest, P.OpenRoomResponse),
        "Run": unary(service.Run, P.RunRequest, P.RunResponse),
        "RemoveRoom": unary(service.RemoveRoom, P.RemoveRoomRequest, P.RemoveRoomResponse),
        "Status": unary(service.Status, P.StatusRequest, P.StatusResponse),
        "Release": unary(service.Release, P.ReleaseRequest, P.ReleaseResponse),
        "ValidateParams": unary(service.ValidateParams, P.ValidateParamsRequest, P.ValidateParamsResponse),
        "Progress": grpc.unary_stream_rpc_method_handler(
            service.Progress, request_deserializer=P.ProgressRequest.FromString,
            response_serializer=P.ProgressEvent.SerializeToString),
    })
