"""Cross-request batching: one asyncio queue, one worker thread, model calls under a token budget.

The batcher knows nothing of HTTP. ``submit(items, lengths)`` admits a request's inputs (or raises
OverloadedError when the bounded queue, counted in inputs, is full) and returns a future of its rows.
A scheduling round takes up to ``max_step_inputs`` inputs round-robin from the waiting requests, at most
``max_batch_size`` from one request per turn (each request's inputs longest first), so one long request
cannot starve short ones. The round is then sorted by length and cut into model calls by
``plan_calls``: the cuts that minimize padded tokens plus a fixed cost per call, within
``encode``'s count and token caps. (A round of requests has mixed lengths, unlike ``encode``'s
sorted stream, so padding to the longest is the main loss.) Up to ``parallel_calls`` model calls
run at once, each in a worker thread of its own; a new round is planned as soon as a worker is
free and the last round's calls have all started. Rows of cancelled requests are skipped.

The backend call ``run_batch(items) -> float32 [n, D]`` returns full-width rows: Matryoshka truncation
happens per request afterwards, so requests for different dims share model calls.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from mrl_infer.errors import OverloadedError
from mrl_infer.server._config import BatchConfig

T = TypeVar("T")


def plan_calls(
    sorted_lengths: Sequence[int], max_rows: int, budget: int, call_tokens: int
) -> list[tuple[int, int]]:
    """[start, stop) model calls over longest-first lengths, minimizing the estimated cost
    ``sum(call_tokens + rows * longest)`` (a call costs as much as ``call_tokens`` padded tokens),
    with at most ``max_rows`` rows and ``budget`` padded tokens per call (one row always fits).

    Dynamic programming over the cut points: O(n * max_rows), under 1 ms for a 128-input round.
    """
    n = len(sorted_lengths)
    lengths = [max(int(x), 1) for x in sorted_lengths]
    best = [0.0] + [math.inf] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for i in range(n):  # a call starting at i is padded to lengths[i]
        if best[i] == math.inf:
            continue
        width = lengths[i]
        rows = max(1, min(max_rows, budget // width))
        for j in range(i + 1, min(n, i + rows) + 1):
            c = best[i] + call_tokens + (j - i) * width
            if c < best[j]:
                best[j], cut[j] = c, i
    ranges = []
    j = n
    while j > 0:
        ranges.append((cut[j], j))
        j = cut[j]
    return ranges[::-1]


class BatchObserver(Protocol):
    """Receives the batcher's measurements (the server's Prometheus metrics implement it)."""

    def on_batch(self, texts: int, tokens: int, seconds: float) -> None: ...

    def on_queued(self, seconds: float) -> None: ...


class _NoObserver:
    def on_batch(self, texts: int, tokens: int, seconds: float) -> None:
        pass

    def on_queued(self, seconds: float) -> None:
        pass


class _Request(Generic[T]):
    """One submitted request: its inputs, hand-out position and output rows."""

    __slots__ = ("done", "future", "items", "lengths", "next", "order", "out", "submitted")

    def __init__(self, items: Sequence[T], lengths: np.ndarray, future: asyncio.Future[np.ndarray]) -> None:
        self.items = items
        self.lengths = lengths
        self.order = np.argsort(-lengths, kind="stable")  # longest first, as encode sorts
        self.next = 0  # inputs of ``order`` already handed to a round
        self.done = 0  # rows filled in ``out``
        self.out: np.ndarray | None = None
        self.future = future
        self.submitted = time.perf_counter()


class Batcher(Generic[T]):
    """Batches inputs of concurrent requests into model calls; see the module docstring.

    Args:
        run_batch: the backend call, run in the worker thread: items (one model call, longest first)
            -> float32 ``[len(items), D]``.
        config: batching settings (token budget, round size, wait, queue bound).
        observer: receives per-call and per-request timings (default: none).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], np.ndarray],
        config: BatchConfig,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run_batch
        self._cfg = config
        self._obs: BatchObserver = observer or _NoObserver()
        self._active: deque[_Request[T]] = deque()
        self._admitted = 0  # inputs of unfinished requests
        self._queued = 0  # inputs not yet handed to a round
        self._rate = 0.0  # inputs/s, moving average, for Retry-After
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # ------------------------------------------------------------------ state
    @property
    def admitted(self) -> int:
        """Inputs admitted and not yet finished (what ``max_queue`` bounds)."""
        return self._admitted

    @property
    def queued(self) -> int:
        """Inputs waiting for a model call."""
        return self._queued

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue's drain time at the recent rate, 1-60."""
        if self._rate <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._admitted / self._rate))))

    def would_overflow(self, n: int) -> bool:
        """True if admitting ``n`` more inputs would exceed ``max_queue``."""
        return self._admitted + n > self._cfg.max_queue

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker (call from the event loop that will submit)."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=self._cfg.parallel_calls, thread_name_prefix="mrl-infer-batcher"
        )
        self._task = asyncio.create_task(self._loop(), name="mrl-infer-batcher")

    async def stop(self) -> None:
        """Refuse new requests, finish every admitted one, then stop the worker thread."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ submit
    def submit(self, items: Sequence[T], lengths: Sequence[int]) -> asyncio.Future[np.ndarray]:
        """Admit one request's inputs; the future gives float32 ``[len(items), D]`` in input order.

        Raises:
            OverloadedError: the queue is full (``retry_after`` set) or the batcher is stopping.
            ValueError: ``items`` is empty or ``lengths`` does not match it.
        """
        if self._wake is None or self._closing:
            raise OverloadedError("the server is shutting down or not started", retry_after=1)
        n = len(items)
        if n == 0 or len(lengths) != n:
            raise ValueError(
                f"submit needs one length per item and at least one item, got {n}/{len(lengths)}"
            )
        if self.would_overflow(n):
            raise OverloadedError(
                f"the queue is full ({self._admitted} of {self._cfg.max_queue} inputs admitted, this "
                f"request has {n}); retry later",
                retry_after=self.retry_after(),
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        req = _Request(items, np.asarray(lengths, dtype=np.int64), future)
        self._admitted += n
        self._queued += n
        future.add_done_callback(lambda _f: self._release(req))
        self._active.append(req)
        self._wake.set()
        return future

    async def embed(self, items: Sequence[T], lengths: Sequence[int]) -> np.ndarray:
        """``submit`` and wait; cancelling the caller cancels the request (its rows are skipped)."""
        return await self.submit(items, lengths)

    def _release(self, req: _Request[T]) -> None:
        """Called once when a request's future is done (result, error or cancelled)."""
        self._admitted -= len(req.items)
        self._queued -= len(req.items) - req.next
        req.next = len(req.items)

    # ------------------------------------------------------------------ worker
    async def _loop(self) -> None:
        """Keep up to ``parallel_calls`` model calls in flight; plan a new round when a slot is free and
        the last round's calls have all started, so new requests join the next call that starts."""
        assert self._wake is not None
        slots = self._cfg.parallel_calls
        inflight: set[asyncio.Task[None]] = set()
        pending: deque[list[tuple[_Request[T], int]]] = deque()  # planned calls not yet started
        while True:
            self._wake.clear()  # before looking at the queue: a submit from now on sets it again
            while len(inflight) < slots:
                if not pending:
                    if not inflight and self._active:
                        await self._short_wait()
                    round_ = self._select()
                    if not round_:
                        break
                    pending.extend(self._plan(round_))
                call = [x for x in pending.popleft() if not x[0].future.done()]
                if call:
                    inflight.add(asyncio.create_task(self._call(call, len(inflight) + 1)))
            if not inflight:
                if self._closing and not self._active and not pending:
                    return
                await self._wake.wait()
                continue
            waits: set[asyncio.Future[Any]] = set(inflight)
            wake = None
            if len(inflight) < slots:  # a free slot: new requests may start a call at once
                wake = asyncio.ensure_future(self._wake.wait())
                waits.add(wake)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if wake is not None and not wake.done():
                wake.cancel()
            inflight.difference_update(done)  # type: ignore[arg-type]

    async def _short_wait(self) -> None:
        """With the model idle and few inputs waiting, wait until the oldest has waited max_wait_ms."""
        if self._cfg.max_wait_ms <= 0 or self._queued >= self._cfg.max_step_inputs or self._closing:
            return
        oldest = min(r.submitted for r in self._active)
        remaining = self._cfg.max_wait_ms / 1000 - (time.perf_counter() - oldest)
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _select(self) -> list[tuple[_Request[T], int]]:
        """One round: inputs taken round-robin, at most max_batch_size per request per turn."""
        cap = self._cfg.max_step_inputs
        round_: list[tuple[_Request[T], int]] = []
        now = time.perf_counter()
        while self._active and len(round_) < cap:
            req = self._active.popleft()
            if req.future.done():
                continue
            if req.next == 0:
                self._obs.on_queued(now - req.submitted)
            take = min(self._cfg.max_batch_size, len(req.items) - req.next, cap - len(round_))
            round_.extend((req, int(j)) for j in req.order[req.next : req.next + take])
            req.next += take
            self._queued -= take
            if req.next < len(req.items):
                self._active.append(req)
        return round_

    def _plan(self, round_: list[tuple[_Request[T], int]]) -> list[list[tuple[_Request[T], int]]]:
        """The round sorted longest first and cut into model calls by ``plan_calls``."""
        lengths = np.array([req.lengths[j] for req, j in round_], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        cfg = self._cfg
        cuts = plan_calls(lengths[order], cfg.max_batch_size, cfg.token_budget, cfg.call_tokens)
        return [[round_[k] for k in order[start:stop]] for start, stop in cuts]

    async def _call(self, chosen: list[tuple[_Request[T], int]], busy: int) -> None:
        """One model call in the worker threads (``busy``: calls in flight with it); scatter its rows."""
        loop = asyncio.get_running_loop()
        items = [req.items[j] for req, j in chosen]
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self._run, items)
        except Exception as exc:
            await self._isolate_failure(chosen, exc)
            return
        seconds = time.perf_counter() - t0
        longest = int(chosen[0][0].lengths[chosen[0][1]])
        self._obs.on_batch(len(items), len(items) * longest, seconds)
        rate = busy * len(items) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        self._scatter(chosen, out)

    async def _isolate_failure(self, chosen: list[tuple[_Request[T], int]], exc: Exception) -> None:
        """A model call failed: rerun each request's rows alone, so only the failing requests fail."""
        by_request: dict[int, list[tuple[_Request[T], int]]] = {}
        for req, j in chosen:
            by_request.setdefault(id(req), []).append((req, j))
        loop = asyncio.get_running_loop()
        for part in by_request.values():
            req = part[0][0]
            if req.future.done():
                continue
            if len(by_request) == 1:
                req.future.set_exception(exc)
                continue
            try:
                out = await loop.run_in_executor(self._executor, self._run, [req.items[j] for _, j in part])
            except Exception as own:
                if not req.future.done():
                    req.future.set_exception(own)
                continue
            self._scatter(part, out)

    @staticmethod
    def _scatter(chosen: list[tuple[_Request[Any], int]], out: np.ndarray) -> None:
        """Route each row of a model call back to its request; finish requests that are complete."""
        for k, (req, j) in enumerate(chosen):
            if req.future.done():
                continue
            if req.out is None:
                req.out = np.empty((len(req.items), out.shape[1]), dtype=np.float32)
            req.out[j] = out[k]
            req.done += 1
            if req.done == len(req.items):
                req.future.set_result(req.out)
