"""Where a phase's load and run execute: one thread, the process's main
thread under phased.serve.

PyTorch (and most model code) is fastest, and behaves as in a plain
script, on the main thread: there glibc gives it the main malloc arena,
while a worker thread's arena returns freed memory to the kernel and pays
page faults for it again (a tiny DiT measured about 20 % slower on a gRPC
thread than on the main thread). One thread also means that the phase's
code never runs concurrently with itself, as model runners expect: an
instance computes one request at a time, and a pipeline scales with
instances. Transfers, rooms and gRPC stay on their own threads.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable


class Stopped(Exception):
    """The executor stopped before the work could start."""


class Executor:
    """Runs submitted work one item at a time on the thread that calls
    run_forever; inline() runs work on the caller's thread instead."""

    def __init__(self):
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
        self._stopped = threading.Event()

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        if self._stopped.is_set():
            fut.set_exception(Stopped("the instance is shutting down"))
            return fut
        self._q.put((fut, fn, args))
        return fut

    def run_forever(self) -> None:
        """Run work until stop(); what is queued then fails with Stopped."""
        while True:
            fut, fn, args = self._q.get()
            if fut is None:
                break
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
        while True:
            try:
                fut, _, _ = self._q.get_nowait()
            except queue.Empty:
                return
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(Stopped("the instance is shutting down"))

    def stop(self) -> None:
        self._stopped.set()
        self._q.put((None, None, None))


class Inline:
    """Runs work at once on the caller's thread (tests, run_local)."""

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)
        return fut

    def stop(self) -> None:
        pass
