"""Continuous batching of SLM forwards across the requests in flight.

Every request decodes in its own thread (its routing, text release and cloud calls are its own). When it needs
the SLM it submits its pending tokens here and waits; one worker thread runs all rows that are waiting as one
ragged forward (``ragged.RaggedForward``). Rows join and leave between steps: a finished request unregisters,
a new one registers, and a row waiting on the cloud is *away*, so the others do not wait for it. The worker
starts a step as soon as every present row has submitted, or ``gather_s`` after the first one did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .ragged import RowInput, RowOutput
from .threads import adopt_slm_threads


@dataclass
class _Job:
    row: RowInput
    done: threading.Event = field(default_factory=threading.Event)
    output: RowOutput | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher has done; tests and benchmarks read it to prove that requests shared forwards."""

    forwards: int = 0
    rows: int = 0
    max_rows: int = 0


class StepBatcher:
    """Runs the forwards that request threads ask for at the same time as one batch (see module docstring)."""

    def __init__(self, forward: Callable[[Sequence[RowInput]], list[RowOutput]], max_rows: int = 32,
                 gather_s: float = 0.02):
        self._forward = forward
        self.max_rows = max_rows
        self.gather_s = gather_s
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._registered: set[object] = set()
        self._away: set[object] = set()
        self._worker: threading.Thread | None = None

    # -- membership ---------------------------------------------------------------------------------------

    def register(self, member: object) -> None:
        with self._cond:
            self._registered.add(member)

    def unregister(self, member: object) -> None:
        with self._cond:
            self._registered.discard(member)
            self._away.discard(member)
            self._cond.notify_all()

    @contextmanager
    def away(self, member: object) -> Iterator[None]:
        """The member is busy elsewhere (a cloud call): steps go ahead without it meanwhile."""
        with self._cond:
            self._away.add(member)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._away.discard(member)

    # -- forwards -----------------------------------------------------------------------------------------

    def submit(self, row: RowInput) -> RowOutput:
        """Feed one row's new tokens in the next step; blocks until that step has run."""
        job = _Job(row)
        with self._cond:
            self._queue.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="hybrid-llm-slm-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.output is not None
        return job.output

    def _present(self) -> int:
        return max(1, len(self._registered - self._away))

    def _take(self) -> list[_Job]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            deadline = time.monotonic() + self.gather_s
            while len(self._queue) < min(self._present(), self.max_rows):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, self._queue = self._queue[: self.max_rows], self._queue[self.max_rows:]
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            adopt_slm_threads()
            try:
                outputs = self._forward([j.row for j in jobs])
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for j in jobs:
                    j.error = e
                    j.done.set()
                continue
            self.stats.forwards += 1
            self.stats.rows += len(jobs)
            self.stats.max_rows = max(self.stats.max_rows, len(jobs))
            for j, out in zip(jobs, outputs):
                j.output = out
                j.done.set()
