"""Batching (docs/protocol.md 2.5): the Runs of a phase that overrides
run_batch, once their inputs have arrived, gather into batches that run
one at a time on the runtime's executor, as the Go runtime (sdk/phase)
batches a sdk.BatchPhase.

No thread of its own: a Run that joins when no batch is gathering hands
the executor one drain, which gathers a batch (it holds size Runs, or
wait seconds have passed since its first joined: a timed wait on a
condition that every join and every withdrawal notifies), computes it,
and goes on with the Runs that joined meanwhile until none is left; then
the next join hands the executor a new drain. Under serve the drain runs
on the main thread, as run does; with executor.Inline (tests), on the
thread of the Run that started it, whose call returns once no Run waits.
A drain the executor never runs (it stopped)
fails the Runs left waiting with its error.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from .api import BatchItem, Cancelled, Context, Phase, Request, reason


def batches(phase: Phase) -> bool:
    """Whether phase batches: it overrides run_batch."""
    return type(phase).run_batch is not Phase.run_batch


def check_defaults(phase: Phase) -> None:
    """Refuse a batching phase's max_batch or batch_wait that make no sense."""
    if not batches(phase):
        return
    name = type(phase).__name__
    if isinstance(phase.max_batch, bool) or not isinstance(phase.max_batch, int) or phase.max_batch < 1:
        raise ValueError(f"{name}.max_batch = {phase.max_batch!r}: want an int of at least 1")
    if isinstance(phase.batch_wait, bool) or not isinstance(phase.batch_wait, (int, float)) or \
            not 0 <= phase.batch_wait < 3600:
        raise ValueError(f"{name}.batch_wait = {phase.batch_wait!r}: want seconds, 0 or more (under an hour)")


#: The most Runs one batch may take (the Go runtime's MaxBatch).
MAX_BATCH = 1024


@dataclass(frozen=True)
class Limits:
    """One batch: at most size Runs, gathered for at most wait seconds
    after the first joined."""

    size: int
    wait: float


def limits(phase: Phase, max_size: int, max_wait_ms: int) -> Optional[Limits]:
    """The batches of an instance of phase configured with batch_max_size
    and batch_max_wait_ms: the phase's defaults when max_size is 0, else
    both of the config's; None when it does not batch (a phase without
    run_batch, or a size of 1)."""
    if not batches(phase):
        return None
    if max_size == 0:
        size, wait = phase.max_batch, float(phase.batch_wait)
    else:
        size, wait = max_size, max_wait_ms / 1000.0
    size = min(size, MAX_BATCH)
    return Limits(size, wait) if size > 1 else None


class Job:
    """One Run in a batch: what its computation needs, and the future its
    outcome arrives on (what run would return, or the exception)."""

    def __init__(self, ctx: Context, request: Request, inputs: Dict[str, object], rep):
        self.ctx, self.request, self.inputs, self.rep = ctx, request, inputs, rep
        self.fut: Future = Future()
        self.joined = 0.0


class Batcher:
    """Gathers one instance's Runs into batches and computes them on the
    executor, one batch at a time. account(seconds) gets each batch's
    computing time."""

    def __init__(self, phase: Phase, limits: Limits, executor, log, account: Callable[[float], None]):
        self._phase = phase
        self.limits = limits
        self._executor = executor
        self._log = log
        self._account = account
        self._cond = threading.Condition()
        self._waiting: collections.deque = collections.deque()  # joined, not yet in a batch; oldest first
        self._draining = False  # a drain is queued on the executor or running
        # Status's batches_total and batched_runs_total: the batches of two
        # Runs or more, and the Runs in them (under _cond).
        self._batches = 0
        self._batched_runs = 0

    def submit(self, job: Job) -> Future:
        """Join the next batch; the future gets job's outcome."""
        with self._cond:
            job.joined = time.monotonic()
            self._waiting.append(job)
            self._cond.notify_all()
            if self._draining:
                return job.fut
            self._draining = True
        self._executor.submit(self._drain).add_done_callback(self._drain_ended)
        return job.fut

    def counts(self):
        """The batches of two Runs or more computed so far, and their Runs."""
        with self._cond:
            return self._batches, self._batched_runs

    def withdraw(self, job: Job) -> bool:
        """Take job out of the batch it waits for (its Run was cancelled);
        False when its batch has started already."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            self._cond.notify_all()
        job.fut.cancel()
        return True

    def _drain(self) -> None:
        while True:
            jobs = self._gather()
            if not jobs:
                return
            self._compute(jobs)

    def _gather(self) -> List[Job]:
        """The next batch, once it is full or its wait is over; [] when no
        Run waits (and this drain ends)."""
        size, wait = self.limits.size, self.limits.wait
        with self._cond:
            while True:
                if not self._waiting:
                    self._draining = False
                    return []
                left = self._waiting[0].joined + wait - time.monotonic()
                if len(self._waiting) < size and left > 0:
                    self._cond.wait(left)
                    continue
                jobs = []
                while self._waiting and len(jobs) < size:
                    job = self._waiting.popleft()
                    if job.ctx.cancelled():  # its Run has not withdrawn it yet
                        job.fut.set_exception(Cancelled("cancelled before it started computing"))
                    elif job.fut.set_running_or_notify_cancel():
                        jobs.append(job)
                if jobs:
                    return jobs

    def _compute(self, jobs: List[Job]) -> None:
        """Compute a batch: run for one Run, run_batch for more; every job
        gets its outcome, whatever the phase does."""
        for job in jobs:
            job.rep.start_computing()  # COMPUTING only now: the Runs waited until here
        if len(jobs) > 1:
            with self._cond:
                self._batches += 1
                self._batched_runs += len(jobs)
        began = time.monotonic()
        try:
            results = self._results(jobs)
        finally:
            self._account(time.monotonic() - began)
            for job in jobs:
                job.inputs = None  # the batch no longer holds them
        for job, res in zip(jobs, results):
            failed = isinstance(res, BaseException)
            job.rep.stop_computing(not failed)
            if failed:
                job.fut.set_exception(res)
            else:
                job.fut.set_result(res)

    def _results(self, jobs: List[Job]) -> list:
        """One outcome per job: an output, or an exception."""
        if len(jobs) == 1:  # a batch of one is an ordinary Run
            j = jobs[0]
            try:
                return [self._phase.run(j.ctx, j.request, j.inputs)]
            except BaseException as e:  # noqa: BLE001 - handed to the Run, as the executor does
                return [e]
        n = len(jobs)
        try:
            got = self._phase.run_batch([BatchItem(j.ctx, j.request, j.inputs) for j in jobs])
        except BaseException as e:  # noqa: BLE001 - fails every Run of the batch
            self._log.error("run_batch failed", extra={"requests": [j.request.id for j in jobs],
                                                       "error": reason(e), "traceback": traceback.format_exc()})
            return [_chained(RuntimeError(f"run_batch of {n} requests failed: {reason(e)}"), e) for _ in jobs]
        if not isinstance(got, (list, tuple)):
            why = f"run_batch returned {type(got).__name__}; want a list of {n} results, one per item"
        elif len(got) != n:
            why = f"run_batch returned {len(got)} results for a batch of {n}; want one per item, in order"
        else:
            return list(got)
        self._log.error("run_batch failed", extra={"requests": [j.request.id for j in jobs], "error": why})
        return [RuntimeError(why) for _ in jobs]

    def _drain_ended(self, fut: Future) -> None:
        """A drain the executor did not run (it stopped), or that broke,
        fails the Runs still waiting with its error."""
        err = fut.exception() if not fut.cancelled() else Cancelled("the batch was cancelled")
        if err is None:
            return
        with self._cond:
            jobs = list(self._waiting)
            self._waiting.clear()
            self._draining = False
        for job in jobs:
            if job.fut.set_running_or_notify_cancel():
                job.fut.set_exception(err)


def _chained(err: BaseException, cause: BaseException) -> BaseException:
    err.__cause__ = cause
    return err
