"""Micro-batching for the server: requests that arrive together are scored in one forward.

Request handlers (on the event loop) `submit` token sequences and await a future; one worker
thread owns the model. It takes the oldest request, waits up to `max_wait_s` for more until
`max_batch_tokens` tokens are gathered, scores them all with `score_fn` and resolves each
request's future with its own scores. The queue is bounded in texts: past `max_queue_texts`,
`submit` raises `QueueFull` at once (the server answers 503), so memory never grows unbounded.
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


@dataclass
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

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, seqs: Sequence[list[int]], starts: Sequence[int]) -> asyncio.Future:
        """Queue one request's sequences; the future resolves to their scores, in order."""
        loop = asyncio.get_running_loop()
        job = _Job(seqs, starts, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
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
            if not group:
                continue
            seqs = [s for j in group for s in j.seqs]
            starts = [s for j in group for s in j.starts]
            began = time.perf_counter()
            try:
                scores = self.score_fn(seqs, starts)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error; the worker lives on
                for j in group:
                    j.loop.call_soon_threadsafe(_resolve, j.future, None, e)
                continue
            self.stats.busy_s += time.perf_counter() - began
            self.stats.forwards += 1
            self.stats.requests += len(group)
            self.stats.texts += len(seqs)
            offset = 0
            for j in group:
                values = scores[offset : offset + len(j.seqs)]
                offset += len(j.seqs)
                j.loop.call_soon_threadsafe(_resolve, j.future, values, None)


def _resolve(future: asyncio.Future, value: list[float] | None, error: Exception | None) -> None:
    if future.done():  # cancelled by its request's timeout
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
