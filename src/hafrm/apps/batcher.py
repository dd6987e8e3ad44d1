"""Micro-batching for the server: requests that arrive together are scored in one forward.

Request handlers (on the event loop) `submit` token sequences and await a future; one worker
thread owns the model. It takes the oldest request, waits up to `max_wait_s` for more until
`max_batch_tokens` tokens are gathered, scores them all with `score_fn` and resolves each
request's future with its own scores. The queue is bounded in texts: past `max_queue_texts`,
`submit` raises `QueueFull` at once (the server answers 503), so memory never grows unbounded.
The worker starts with the batcher; `close` fails what is still queued and stops it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ScoreFn = Callable[[list[list[int]], list[int]], list[float]]


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    seqs: Sequence[list[int]]
    starts: Sequence[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(s) for s in self.seqs)


@dataclass(kw_only=True)
class BatcherStats:
    requests: int = 0
    texts: int = 0
    forwards: int = 0  # score_fn calls (each may run several padded batches)
    busy_s: float = 0.0


class Batcher:
    def __init__(
        self,
        score_fn: ScoreFn,
        *,
        max_batch_tokens: int = 16384,
        max_wait_s: float = 0.005,
        max_queue_texts: int = 4096,
        batching: bool = True,
    ):
        self.score_fn = score_fn
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.batching = batching  # False: one request per forward, like a server without batching
        self.stats = BatcherStats()
        self._jobs: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hafrm-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, fail the queued ones, and wait for the forward in progress."""
        with self._cond:
            self._closed = True
            left, self._jobs = list(self._jobs), deque()
            self._queued_texts = 0
            self._cond.notify_all()
        for job in left:
            _send(job, None, QueueFull("the server is shutting down"))
        self._thread.join(timeout)

    def submit(self, seqs: Sequence[list[int]], starts: Sequence[int]) -> asyncio.Future:
        """Queue one request's sequences; the future resolves to their scores, in order."""
        loop = asyncio.get_running_loop()
        job = _Job(seqs, starts, loop.create_future(), loop)
        with self._cond:
            if not self.alive:
                raise QueueFull("the server is shutting down" if self._closed else "the scoring worker has stopped")
            if self._queued_texts + len(seqs) > self.max_queue_texts:
                raise QueueFull(
                    f"the queue holds {self._queued_texts} texts and takes at most {self.max_queue_texts}; retry later"
                )
            self._jobs.append(job)
            self._queued_texts += len(seqs)
            self._cond.notify()
        return job.future

    def _take(self) -> list[_Job] | None:
        """The next group of requests to score together (None once closed)."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            group = [self._jobs.popleft()]
            tokens = group[0].tokens
            deadline = time.monotonic() + self.max_wait_s
            while self.batching and tokens < self.max_batch_tokens:
                if self._jobs:
                    if tokens + self._jobs[0].tokens > self.max_batch_tokens:
                        break
                    group.append(self._jobs.popleft())
                    tokens += group[-1].tokens
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self._queued_texts -= sum(len(j.seqs) for j in group)
        return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            group = [j for j in group if not j.future.cancelled()]  # timed out while queued
            if group:
                self._score(group)

    def _score(self, group: list[_Job]) -> None:
        seqs = [s for j in group for s in j.seqs]
        starts = [s for j in group for s in j.starts]
        began = time.perf_counter()
        try:
            scores = self.score_fn(seqs, starts)
            if len(scores) != len(seqs):
                raise RuntimeError(f"the scorer returned {len(scores)} scores for {len(seqs)} texts")
        except Exception as e:  # every request of the group gets the error; the worker lives on
            for j in group:
                _send(j, None, e)
            return
        self.stats.busy_s += time.perf_counter() - began
        self.stats.forwards += 1
        self.stats.requests += len(group)
        self.stats.texts += len(seqs)
        offset = 0
        for j in group:
            _send(j, scores[offset : offset + len(j.seqs)], None)
            offset += len(j.seqs)


def _send(job: _Job, value: list[float] | None, error: Exception | None) -> None:
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
    except RuntimeError:  # its event loop is closed: nobody is waiting any more
        pass


def _resolve(future: asyncio.Future, value: list[float] | None, error: Exception | None) -> None:
    if future.done():  # cancelled by its request's timeout
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
