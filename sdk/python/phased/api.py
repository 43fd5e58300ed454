"""What a phase author writes against: Phase, Request, Spec, Artifact,
Config, Context, BatchItem, ParamProblem, write_artifact. Nothing here touches sockets, shared
memory or protobuf; phased.runtime does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .tensor import Spec, as_array, numpy_dtype, to_torch

ARTIFACT_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


class InvalidArgument(ValueError):
    """A malformed call: answered with gRPC INVALID_ARGUMENT."""


class Cancelled(Exception):
    """The Run was cancelled: its room was removed, the instance released,
    or the supervisor gave up on the call."""


def reason(exc: BaseException) -> str:
    """What an author's exception becomes in the request's failure reason."""
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = f"KeyError: {exc.args[0]!r}"
    return text or type(exc).__name__


@dataclass(frozen=True)
class Request:
    """One generation request as a phase sees it."""

    id: str
    prompt: str = ""
    seed: int = 0
    steps: int = 0
    artifact_dir: str = ""
    # The supervisor keeps no request journal (nothing of the request
    # survives it): write_artifact need not fsync. False asks for a durable
    # artifact before run returns.
    no_sync: bool = False
    # On a Run of a phase whose config sets checkpoint_every: the file
    # where ctx.checkpoint keeps the Run's state every checkpoint_every
    # steps, and ctx.resume finds it (docs/protocol.md 8.4). "" and 0:
    # no checkpoints. Phases call ctx.resume and ctx.checkpoint; they need
    # not read these.
    checkpoint_path: str = ""
    checkpoint_every: int = 0


@dataclass(frozen=True)
class Artifact:
    """What the last phase of a pipeline produces: a file."""

    path: str
    sha256: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ParamProblem:
    """One thing wrong with a phase's params, as validate_params reports
    it: the param's name ("" for the params as a whole), and what is wrong
    and what is accepted."""

    param: str
    message: str


@dataclass
class Config:
    """What the supervisor's config says about this instance."""

    instance: str
    params: Dict[str, str]
    log: logging.Logger


class Context:
    """Given to load and run: cancellation, progress, the logger, memory
    for outputs (alloc), and checkpoints (resume, checkpoint)."""

    def __init__(self, log: logging.Logger, cancel: Optional[threading.Event] = None,
                 report: Optional[Callable[[int, int], None]] = None, *, allocator=None, arrays: str = "numpy",
                 checkpointer=None):
        self.log = log
        self._cancel = cancel or threading.Event()
        self._report = report
        # The runtime's, for a Run with a next phase: alloc(spec) and
        # written(array, checksum), as a transfer manager has them.
        self._allocator = allocator
        self._arrays = arrays
        # The runtime's, for a Run whose request has a checkpoint:
        # resume(total) and save(step, total, state), as
        # phased.checkpoint.RunCheckpointer has them.
        self._checkpointer = checkpointer

    def cancelled(self) -> bool:
        """True once the work should stop: return or raise promptly."""
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise Cancelled if the work should stop."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")

    def progress(self, done: int, total: int) -> None:
        """Report done of total units of work (e.g. denoising steps). The
        supervisor's hang watchdog needs one report per hang_timeout."""
        if self._report is not None:
            self._report(int(done), int(total))

    def resume(self, total: int) -> Tuple[int, Dict[str, object]]:
        """Where the Run resumes: call it once, before the first step, with
        the Run's total steps; then run steps step+1 … total from state.
        Returns the step after which the request's checkpoint was saved and
        its state, a dict by name of what was given to checkpoint (numpy
        arrays, or torch tensors when the phase's arrays are "torch"; yours
        to change). Returns 0 and {} when there is none: the request's first
        attempt, checkpoints off (the phase's checkpoint_every unset, and in
        run_local), or a checkpoint that does not fit this Run (another
        total, other inputs, a damaged file: logged as a warning, with
        why). For the artifact to be the same bytes as an uninterrupted
        Run's, the steps must be deterministic (docs/protocol.md 8.4)."""
        if self._checkpointer is None:
            return 0, {}
        return self._checkpointer.resume(int(total))

    def checkpoint(self, step: int, total: int, state: Dict[str, object]) -> bool:
        """Save state, the Run's state after step of total steps, as the
        request's checkpoint, so that when this instance dies the request's
        next attempt resumes after step instead of from the start (resume).
        Call it after every step: it saves only when the supervisor asked
        for checkpoints (the phase's checkpoint_every = K), a save is due
        (step a multiple of K, above 0 and below total), and the Run is not
        cancelled; it returns whether it saved. state maps names to numpy
        arrays or torch tensors: everything step+1 reads besides the Run's
        inputs and the request (a DDIM sampler's latent); it is written to a
        file before checkpoint returns. A save that fails is logged as a
        warning and returns False: the Run goes on, and a retry resumes
        from an earlier checkpoint or from the start. Elsewhere (run_local,
        a unit test's Context) it does nothing and returns False."""
        if self._checkpointer is None or self._cancel.is_set():
            return False
        return self._checkpointer.save(int(step), int(total), state)

    def alloc(self, spec, dtype=None, shape=None):
        """Memory for an output of run: a phased.Spec, or its name, dtype and
        shape (ctx.alloc("latent", "float32", [4, 8, 24, 32])). Returns a
        numpy array of that dtype and shape, or a torch tensor viewing it
        when the phase's arrays are "torch". Where the Run's next phase is
        on this host (the shm backend), its bytes are in shared memory and
        the hop lends them to the next phase instead of copying them
        (docs/protocol.md section 5.6); elsewhere (run_local, the last phase
        of a pipeline, another host) it is ordinary memory. Either way it is
        valid until run's outputs have been sent, and its bytes are not
        zeroed: write every one, and do not write it after run returned."""
        if not isinstance(spec, Spec):
            spec = Spec(spec, dtype, shape)
        spec.check()
        if self._allocator is not None:
            arr = self._allocator.alloc(spec)
        else:
            arr = np.zeros(spec.shape, numpy_dtype(spec.dtype))
        return to_torch(arr, spec.dtype) if self._arrays == "torch" else arr

    def written(self, array, checksum: int) -> None:
        """Optional: tells the hop the checksum (phased.checksum of its
        bytes) of an output from alloc that run computed while writing it
        in full, so that the hop does not read it again to hash it. It does
        nothing for ordinary memory."""
        if self._allocator is not None:
            self._allocator.written(as_array(array), checksum)


@dataclass(frozen=True)
class BatchItem:
    """One Run of a batch that run_batch computes: the Run's own Context
    (its cancellation, progress, alloc, resume and checkpoint), its
    request, and its inputs, as run gets them."""

    ctx: Context
    request: Request
    inputs: Dict[str, object]


class Phase:
    """A phase: subclass it, set name, and implement inputs and run.

    Lifecycle: configure (once), load (in the background; no request
    arrives before it has returned), then inputs and run, concurrently
    for many requests, then close at release. run (and run_batch) execute
    on one thread, one call at a time.

    A phase that overrides run_batch batches (docs/protocol.md 2.5): its
    Info lists the feature "batch", and the runtime gathers the Runs whose
    inputs have arrived into batches of at most max_batch, waiting up to
    batch_wait seconds after the first for more, one batch at a time. A
    batch of one calls run, so run must still work alone. The config's
    batch { max_size, max_wait } overrides both; max_size 1 turns
    batching off.
    """

    #: NAME of the executable phased-phase-NAME; Info reports it.
    name: str = ""
    #: the phase's own version, shown by `supervisor plugins`.
    version: str = "0.0.0"
    #: how inputs arrive: "numpy" arrays or "torch" tensors, both viewing
    #: the received bytes without a copy.
    arrays: str = "numpy"
    #: a batching phase's defaults: the most Runs in one batch, and how
    #: long (seconds) the runtime waits for more once the first is ready.
    #: Read only when run_batch is overridden.
    max_batch: int = 8
    batch_wait: float = 0.01

    def configure(self, config: Config) -> None:
        """Check and keep the params; raise ValueError to refuse them."""

    def validate_params(self, params: Dict[str, str]) -> List[ParamProblem]:
        """Optional: check params as configure would, without loading
        anything or keeping state, so that `supervisor validate` reports a
        typo before any model loads. It may be called on an instance that
        is never configured. Return every problem found, none when the
        params are valid: ParamProblem or (param, message) tuples; a
        ValueError raised is one problem about the params as a whole. A
        phase that does not override it cannot check its params before
        it loads (the supervisor then checks them at start)."""
        raise NotImplementedError

    def load(self, ctx: Context) -> None:
        """Load what takes long (model weights). Runs in a thread of its
        own after configure; the instance is Ready once it returns."""

    def inputs(self, request: Request, params: Dict[str, str]) -> List[Spec]:
        """The tensors this phase receives for request, in order; none for
        the first phase of a pipeline."""
        return []

    def run(self, ctx: Context, request: Request, inputs):
        """Compute: inputs maps each declared input's name to its tensor.
        Return a dict of output tensors by name (numpy arrays or CPU torch
        tensors), or, from the last phase, an Artifact."""
        raise NotImplementedError(f"phase {self.name or type(self).__name__} does not implement run")

    def run_batch(self, items: List[BatchItem]) -> list:
        """Optional: compute several Runs together (one batched model
        forward). items are BatchItems, two or more; return a list of as
        many results, in order, each what run would return for that item
        (its outputs, or an Artifact) or an Exception instance, which fails
        that item's Run only. An exception raised, or a list of another
        length, fails every Run of the batch. Each item's ctx is its own
        Run's: report its progress, checkpoint it and heed its cancellation
        (ctx.cancelled()) per item; a cancelled item may be left out of the
        work and given Cancelled. A phase that does not override it never
        batches."""
        raise NotImplementedError(f"phase {self.name or type(self).__name__} does not implement run_batch")

    def close(self) -> None:
        """Free what the phase holds, at release."""


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for
    a moment, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def write_artifact(request: Request, data: bytes, ext: str, media_type: str) -> Artifact:
    """Write data to <artifact_dir>/<id><ext> as the built-in decoder does:
    a temporary file in the same directory, fsync, then a hard link to its
    name, which fails with FileExistsError when a file with other bytes
    has that name (a result is never replaced; the same bytes are this
    request's own, from an attempt that died after writing, and stand);
    mode 0666 less the umask, as cp makes files. The file is fsynced
    unless request.no_sync (the supervisor keeps no journal)."""
    if not ARTIFACT_ID.fullmatch(request.id or ""):
        raise ValueError(f"request id {request.id!r}: want 1 to 200 bytes of [A-Za-z0-9_.-]")
    if not request.artifact_dir:
        raise ValueError(f"request {request.id}: no artifact_dir")
    if ext and not re.fullmatch(r"\.[A-Za-z0-9]{1,16}", ext):
        raise ValueError(f"artifact extension {ext!r}: want a dot and 1 to 16 letters or digits")
    os.makedirs(request.artifact_dir, mode=0o755, exist_ok=True)
    path = os.path.abspath(os.path.join(request.artifact_dir, request.id + ext))
    fd, tmp = tempfile.mkstemp(prefix="." + request.id + ".", dir=request.artifact_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if not request.no_sync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            # The same bytes: this request's own, from an attempt that died
            # before it could report it (ids are unique). They stand.
            if not _same_bytes(path, data):
                raise FileExistsError(
                    f"artifact {path} exists already with other bytes; results are never replaced: "
                    "move it away, or write to another artifact_dir") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return Artifact(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), media_type=media_type)
