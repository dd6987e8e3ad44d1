"""The server's micro-batcher with a stand-in scorer: grouping, the queue bound, errors, timeouts."""

import asyncio
import threading

import pytest

from hafrm.apps.batcher import Batcher, QueueFull


class GatedScorer:
    """Scores a sequence as its length; blocks each call until released, recording the groups."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, seqs, starts):
        self.calls.append(len(seqs))
        self.entered.set()
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("model exploded")
        return [float(len(s)) for s in seqs]


def test_requests_waiting_together_share_one_forward():
    async def main():
        scorer = GatedScorer()
        b = Batcher(scorer, max_batch_tokens=1000, max_wait_s=0.0)
        first = b.submit([[1, 2, 3]], [0])
        await asyncio.to_thread(scorer.entered.wait, 5)  # the worker is busy with the first request
        rest = [b.submit([[1] * n, [1] * (n + 1)], [0, 0]) for n in range(1, 6)]
        assert b.queued_texts == 10
        scorer.release.set()
        results = await asyncio.gather(first, *rest)
        b.close()
        return scorer.calls, results, b.stats

    calls, results, stats = asyncio.run(main())
    assert calls == [1, 10]  # the five waiting requests went through in one forward
    assert results[0] == [3.0] and results[3] == [3.0, 4.0]  # each request gets its own scores, in order
    assert (stats.requests, stats.texts, stats.forwards) == (6, 11, 2)


def test_token_budget_and_no_batching_split_the_queue():
    async def run(**kw):
        scorer = GatedScorer()
        b = Batcher(scorer, max_wait_s=0.0, **kw)
        first = b.submit([[0] * 4], [0])
        await asyncio.to_thread(scorer.entered.wait, 5)
        rest = [b.submit([[0] * 4], [0]) for _ in range(4)]
        scorer.release.set()
        await asyncio.gather(first, *rest)
        b.close()
        return scorer.calls

    assert asyncio.run(run(max_batch_tokens=8)) == [1, 2, 2]  # 4 + 4 tokens fit, a third would not
    assert asyncio.run(run(max_batch_tokens=1000, batching=False)) == [1, 1, 1, 1, 1]


def test_a_full_queue_refuses_at_once_and_memory_stays_bounded():
    async def main():
        scorer = GatedScorer()
        b = Batcher(scorer, max_queue_texts=3, max_wait_s=0.0)
        busy = b.submit([[1]], [0])
        await asyncio.to_thread(scorer.entered.wait, 5)
        waiting = b.submit([[1], [2]], [0, 0])
        with pytest.raises(QueueFull, match="at most 3"):
            b.submit([[1], [2]], [0, 0])
        ok = b.submit([[1]], [0])  # exactly full is fine
        scorer.release.set()
        out = await asyncio.gather(busy, waiting, ok)
        b.close()
        return out

    assert asyncio.run(main()) == [[1.0], [1.0, 1.0], [1.0]]


def test_a_scorer_error_reaches_every_waiting_request_and_the_worker_lives_on():
    async def main():
        scorer = GatedScorer(fail=True)
        b = Batcher(scorer, max_wait_s=0.0)
        scorer.release.set()
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit([[1]], [0])
        scorer.fail = False
        value = await b.submit([[1, 2]], [0])
        b.close()
        return value

    assert asyncio.run(main()) == [2.0]


def test_a_request_that_timed_out_while_queued_is_not_scored():
    async def main():
        scorer = GatedScorer()
        b = Batcher(scorer, max_wait_s=0.0)
        busy = b.submit([[1]], [0])
        await asyncio.to_thread(scorer.entered.wait, 5)
        late = b.submit([[1, 2, 3]], [0])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late, 0.05)
        scorer.release.set()
        await busy
        after = await b.submit([[1, 2]], [0])
        b.close()
        return scorer.calls, after

    calls, after = asyncio.run(main())
    assert calls == [1, 1] and after == [2.0]  # the timed-out request never reached the model


def test_close_fails_what_is_queued_and_refuses_more():
    async def main():
        scorer = GatedScorer()
        b = Batcher(scorer, max_wait_s=0.0)
        busy = b.submit([[1]], [0])
        await asyncio.to_thread(scorer.entered.wait, 5)
        queued = b.submit([[1, 2]], [0])
        closing = asyncio.create_task(asyncio.to_thread(b.close))
        await asyncio.sleep(0.1)
        with pytest.raises(QueueFull, match="shutting down"):
            await queued
        with pytest.raises(QueueFull, match="shutting down"):
            b.submit([[1]], [0])
        scorer.release.set()
        await closing
        return await busy

    assert asyncio.run(main()) == [1.0]  # the forward in progress still finishes
