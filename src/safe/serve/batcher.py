"""Dynamic batching: requests arriving within a short window share one batch.

The first request waiting opens a batch; requests with the same generation settings (``key``) that
arrive within ``max_wait_ms`` of it, or that were already queued, join it up to ``max_batch``; then
the batch runs on one worker thread (the model runs one batch at a time; the event loop keeps
accepting requests meanwhile, so under load the next batch fills while this one runs). Requests with
other settings wait for a batch of their own, in arrival order. ``max_batch=1`` turns batching off.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    payload: Any
    key: Hashable
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchInfo:
    """Where a request ran: the batch's sequence number, its size, the request's row, and the time the
    request waited for the batch to start."""

    id: int
    size: int
    row: int
    queue_seconds: float


class DynamicBatcher:
    """``await submit(payload, key) -> (result, BatchInfo)``; ``run(payloads) -> results`` (same order)
    is called with up to ``max_batch`` payloads sharing one key.

    Guarantees: every submitted request gets its own result or exception; a batch whose ``run`` raises
    is retried one request at a time, so one bad request cannot fail the others; batches run one at a
    time, in the order their first request arrived; :meth:`stop` fails every request not yet answered
    (queued, being collected into a batch, or in the batch running) and returns without waiting for
    that batch to finish."""

    def __init__(self, run: Callable[[list], list], max_batch: int = 8, max_wait_ms: float = 5.0) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._held: list[_Job] = []
        self._current: list[_Job] = []  # the batch being collected or run: stop() must answer it too
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safe-batch")
        self._ids = itertools.count()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="safe-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        pending = self._current + self._held + ([] if self._queue is None else [
            self._queue.get_nowait() for _ in range(self._queue.qsize())])
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        # Not wait=True: that would block the event loop until a running generate ends.
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, payload: Any, key: Hashable) -> tuple[Any, BatchInfo]:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        job = _Job(payload, key, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    # ----------------------------------------------------------------------------------------------
    def _take_held(self, key: Hashable, room: int) -> list[_Job]:
        took = [j for j in self._held if j.key == key][:room]
        self._held = [j for j in self._held if j not in took]
        return took

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        if not self._held:
            self._held.append(await self._queue.get())
        first = self._held[0]
        batch = self._current = self._take_held(first.key, self.max_batch)
        deadline = first.queued_at + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            (batch if job.key == first.key else self._held).append(job)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = self._current = [j for j in batch if not j.future.done()]  # a client that went away
            if not batch:
                continue
            bid, started = next(self._ids), time.perf_counter()
            payloads = [j.payload for j in batch]
            try:
                results = await loop.run_in_executor(self._pool, self.run, payloads)
                outcome, alone = [(r, None) for r in results], False
            except Exception:  # noqa: BLE001 - isolate the failing request: rerun each alone
                outcome, alone = [], True
                for p in payloads:
                    try:
                        outcome.append(((await loop.run_in_executor(self._pool, self.run, [p]))[0], None))
                    except Exception as err:  # noqa: BLE001 - handed to that request's handler
                        outcome.append((None, err))
            for row, (job, (result, err)) in enumerate(zip(batch, outcome)):
                if job.future.done():
                    continue
                if err is not None:
                    job.future.set_exception(err)
                else:
                    size, at = (1, 0) if alone else (len(batch), row)
                    job.future.set_result((result, BatchInfo(bid, size, at, started - job.queued_at)))
            self._current = []


__all__ = ["BatchInfo", "DynamicBatcher"]
