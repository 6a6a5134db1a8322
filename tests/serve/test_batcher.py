"""DynamicBatcher and ClipCache on their own (no model): batches form within the window and by key, a
failing request does not fail its batch-mates, max_batch 1 is one request a batch; the cache is LRU."""
import asyncio
import threading

import pytest
import torch

from safe.serve.batcher import BatcherFull, DynamicBatcher
from safe.serve.clip_cache import ClipCache


def _serve(payloads_keys, max_batch, max_wait_ms, fail_on=None, max_queued=None):
    seen = []

    def run(payloads):
        seen.append(list(payloads))
        assert threading.current_thread() is not threading.main_thread()  # off the event loop
        if fail_on in payloads:
            raise RuntimeError(f"{fail_on} breaks the batch")
        return [p.upper() for p in payloads]

    async def main():
        b = DynamicBatcher(run, max_batch, max_wait_ms, max_queued=max_queued)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(p, k) for p, k in payloads_keys), return_exceptions=True)
        finally:
            await b.stop()

    return asyncio.run(main()), seen


def test_requests_within_the_window_share_a_batch_grouped_by_key():
    out, seen = _serve([("a", 1), ("b", 2), ("c", 1), ("d", 1)], max_batch=8, max_wait_ms=200)
    assert [r for r, _ in out] == ["A", "B", "C", "D"]
    assert seen == [["a", "c", "d"], ["b"]]
    infos = [i for _, i in out]
    assert [(i.size, i.row) for i in infos] == [(3, 0), (1, 0), (3, 1), (3, 2)] and infos[0].id == infos[2].id


def test_max_batch_caps_a_batch_and_one_means_no_batching():
    _, seen = _serve([(str(i), 0) for i in range(5)], max_batch=2, max_wait_ms=200)
    assert [len(b) for b in seen] == [2, 2, 1]
    _, seen = _serve([(str(i), 0) for i in range(3)], max_batch=1, max_wait_ms=200)
    assert seen == [["0"], ["1"], ["2"]]


def test_a_failing_request_does_not_fail_its_batch_mates():
    out, seen = _serve([("a", 0), ("bad", 0), ("c", 0)], max_batch=8, max_wait_ms=200, fail_on="bad")
    assert out[0][0] == "A" and out[2][0] == "C" and out[0][1].size == 1
    assert isinstance(out[1], RuntimeError) and seen[0] == ["a", "bad", "c"]


def test_max_queued_refuses_at_once_rather_than_queueing():
    out, seen = _serve([(str(i), 0) for i in range(5)], max_batch=8, max_wait_ms=50, max_queued=2)
    assert [r for r, _ in out[:2]] == ["0", "1"] and seen == [["0", "1"]]
    assert all(isinstance(r, BatcherFull) for r in out[2:]), out
    out, _ = _serve([(str(i), 0) for i in range(5)], max_batch=8, max_wait_ms=50)  # unbounded by default
    assert [r for r, _ in out] == ["0", "1", "2", "3", "4"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(lambda p: p, 0)
    with pytest.raises(ValueError, match="max_items"):
        ClipCache(-1)


def test_clip_cache_is_lru_and_counts():
    c = ClipCache(2)
    c.put("a", torch.ones(2))
    c.put("b", torch.zeros(2))
    assert torch.equal(c.get("a"), torch.ones(2))  # a is now the most recent
    c.put("c", torch.full((2,), 3.0))
    assert "b" not in c and "a" in c and "c" in c and len(c) == 2
    assert c.get("b") is None and (c.hits, c.misses) == (1, 1)
    off = ClipCache(0)
    off.put("a", torch.ones(1))
    assert off.get("a") is None and len(off) == 0


@pytest.mark.parametrize("where", ["collecting", "running"])
def test_stop_answers_the_batch_being_collected_or_run(where):
    """stop() fails every request not yet answered, including one waiting for batch-mates inside the
    window and one whose batch is running, and returns without waiting for that batch."""
    release = threading.Event()

    def run(payloads):
        release.wait(5)
        return payloads

    async def main():
        b = DynamicBatcher(run, 4, 2000 if where == "collecting" else 0)
        await b.start()
        job = asyncio.ensure_future(b.submit("x", "k"))
        await asyncio.sleep(0.1)
        t0 = asyncio.get_running_loop().time()
        await b.stop()
        stopped_in = asyncio.get_running_loop().time() - t0
        try:
            return await asyncio.wait_for(job, 1), stopped_in
        except Exception as err:  # noqa: BLE001 - what the request's handler sees
            return err, stopped_in
        finally:
            release.set()

    got, stopped_in = asyncio.run(main())
    assert isinstance(got, RuntimeError) and "shutting down" in str(got)
    assert stopped_in < 1.0
