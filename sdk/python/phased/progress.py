"""Progress of Run calls, and the streams that carry it (docs/protocol.md
section 8).

Events are a latest-value signal: each stream holds at most 64 events and
drops the oldest for a slow reader; publishing never blocks a Run.
"""

from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import dataclass

WAITING, COMPUTING, SENDING, FINISHED = 1, 2, 3, 4  # phased.v1.ProgressStage
BUFFER = 64


@dataclass(frozen=True)
class Event:
    request: str
    stage: int
    done: int = 0
    total: int = 0
    in_room: int = 0
    out_room: int = 0
    # COMPUTING only: the step the Run resumed at from the request's
    # checkpoint (section 8.4), 0 when it began at the start.
    resumed: int = 0


class Released(Exception):
    """The instance was released: no stream may open, no call be served."""

    def __init__(self, msg: str = "transfer: manager released"):
        super().__init__(msg)


class Stream:
    """One reader's bounded queue of events."""

    def __init__(self, hub: "Hub"):
        self._hub = hub
        self._events = collections.deque()
        self._cond = threading.Condition(hub._lock)
        self.ended = False
        self.dropped = 0

    def _offer(self, ev: Event) -> None:  # with the hub's lock held
        if len(self._events) >= BUFFER:
            self._events.popleft()
            self.dropped += 1
            self._hub.dropped += 1
        self._events.append(ev)
        self._cond.notify()

    def next(self, alive, poll: float = 0.2):
        """The next event, or None once the hub is closed (after the events
        it holds) or alive() turns false."""
        with self._cond:
            while not self._events:
                if self.ended or not alive():
                    return None
                self._cond.wait(poll)
            return self._events.popleft()

    def close(self) -> None:
        with self._hub._lock:
            self._hub._streams.discard(self)


class Hub:
    """Every Progress stream of an instance, and the latest event of each
    Run in progress (what a new stream gets first)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._streams: set = set()
        self._latest: dict = {}  # run key -> (seq, Event)
        self._seq = itertools.count(1)
        self._closed = False
        self.dropped = 0
        self.units = 0  # units of work reported done, all Runs together

    def add_units(self, n: int) -> None:
        with self._lock:
            self.units += n

    def publish(self, run, ev: Event) -> None:
        with self._lock:
            if self._closed:
                return
            if ev.stage == FINISHED:
                self._latest.pop(run, None)
            elif run in self._latest:
                self._latest[run] = (self._latest[run][0], ev)
            else:
                self._latest[run] = (next(self._seq), ev)
            for s in self._streams:
                s._offer(ev)

    def subscribe(self) -> Stream:
        with self._lock:
            if self._closed:
                raise Released()
            s = Stream(self)
            for _, ev in sorted(self._latest.values(), key=lambda x: x[0]):
                s._offer(ev)
            self._streams.add(s)
            return s

    def close(self) -> None:
        """End every stream once it has delivered what it holds."""
        with self._lock:
            self._closed = True
            for s in self._streams:
                s.ended = True
                s._cond.notify_all()


class Reporter:
    """The progress of one Run: WAITING, COMPUTING done/total, SENDING,
    FINISHED, as the Go runtime sends them (section 8.2)."""

    def __init__(self, hub: Hub, request: str, in_room: int, out_room: int):
        self._hub = hub
        self._request, self._in, self._out = request, in_room, out_room
        self._lock = threading.Lock()
        self._computing = False
        self._reported = False
        self._done = 0  # the last done reported
        self._resumed = 0  # the step the Run resumed at (ctx.resume), 0 if none
        # The step of the checkpoint ctx.resume returned, until the phase's
        # next report says whether it resumed there (a report past it) or
        # started over.
        self._offered = 0

    def publish(self, stage: int, done: int = 0, total: int = 0) -> None:
        resumed = self._resumed if stage == COMPUTING else 0
        self._hub.publish(self, Event(self._request, stage, done, total, self._in, self._out, resumed))

    def resumed_at(self, step: int, total: int) -> None:
        """ctx.resume gave the Run the checkpoint of step (of total): the
        phase's next report says whether it resumed there. If past step,
        that COMPUTING event and every later one carry resumed = step, and
        the steps up to it count as done, not as work done now."""
        with self._lock:
            self._offered = int(step)

    def start_computing(self) -> None:
        with self._lock:
            self._computing = True
            self.publish(COMPUTING, 0, 1)

    def stop_computing(self, ok: bool) -> None:
        with self._lock:
            self._computing = False
            if ok and not self._reported:
                self.publish(COMPUTING, 1, 1)

    def report(self, done: int, total: int) -> None:
        with self._lock:
            if not self._computing:
                return
            self._reported = True
            if self._offered:
                if done > self._offered:
                    self._resumed, self._done = self._offered, max(self._done, self._offered)
                self._offered = 0
            if done > self._done:
                self._hub.add_units(int(done) - self._done)
                self._done = int(done)
            self.publish(COMPUTING, int(done), int(total))
