"""Cross-request batching: one shared queue, worker threads, model calls under a token budget.

The batcher knows nothing of HTTP. ``submit(items, lengths)`` admits a request's inputs (or raises
OverloadedError when the bounded queue, counted in inputs, is full) and returns a future of its rows.
A scheduling round takes up to ``max_step_inputs`` inputs round-robin from the waiting requests, at most
``max_batch_size`` from one request per turn (each request's inputs longest first), so one long request
cannot starve short ones. The round is then sorted by length and cut into model calls by
``plan_calls``: the cuts that minimize padded tokens plus a fixed cost per call, within
``encode``'s count and token caps. (A round of requests has mixed lengths, unlike ``encode``'s
sorted stream, so padding to the longest is the main loss.) ``parallel_calls`` worker threads each
take the next planned call themselves (planning a new round when the last one's calls have all
started), run it, and hand its rows back to the event loop: a worker never waits for the loop, which
is busy parsing and writing other requests, between two calls (measured: that wait left the workers
idle half the time under 16 connections). Rows of cancelled requests are skipped.

The backend call ``run_batch(items) -> float32 [n, D]`` returns full-width rows: Matryoshka truncation
happens per request afterwards, so requests for different dims share model calls.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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
        run_batch: the backend call, run in the worker threads: items (one model call, longest first)
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
        self._cond = threading.Condition()  # guards the queue state below; workers wait on it
        self._pending: deque[list[tuple[_Request[T], int]]] = deque()  # planned calls not yet started
        self._running = 0  # model calls in progress
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[threading.Thread] = []
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
        """Start the worker threads (call from the event loop that will submit)."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._workers = [
            threading.Thread(target=self._work, name=f"mrl-infer-batcher_{i}", daemon=True)
            for i in range(self._cfg.parallel_calls)
        ]
        for t in self._workers:
            t.start()

    async def stop(self) -> None:
        """Refuse new requests, finish every admitted one, then stop the worker threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        workers, self._workers = self._workers, []
        for t in workers:
            # Joined off the loop: the workers hand their last rows to this loop while it waits.
            await asyncio.to_thread(t.join)
        await asyncio.sleep(0)  # run the last hand-backs, scheduled before the threads ended

    # ------------------------------------------------------------------ submit
    def submit(self, items: Sequence[T], lengths: Sequence[int]) -> asyncio.Future[np.ndarray]:
        """Admit one request's inputs; the future gives float32 ``[len(items), D]`` in input order.

        Raises:
            OverloadedError: the queue is full (``retry_after`` set) or the batcher is stopping.
            ValueError: ``items`` is empty or ``lengths`` does not match it.
        """
        if self._loop is None or self._closing:
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
        future: asyncio.Future[np.ndarray] = self._loop.create_future()
        req = _Request(items, np.asarray(lengths, dtype=np.int64), future)
        with self._cond:
            self._admitted += n
            self._queued += n
            self._active.append(req)
            self._cond.notify()
        future.add_done_callback(lambda _f: self._release(req))
        return future

    async def embed(self, items: Sequence[T], lengths: Sequence[int]) -> np.ndarray:
        """``submit`` and wait; cancelling the caller cancels the request (its rows are skipped)."""
        return await self.submit(items, lengths)

    def _release(self, req: _Request[T]) -> None:
        """Called once, on the loop, when a request's future is done (result, error or cancelled)."""
        with self._cond:
            self._admitted -= len(req.items)
            self._queued -= len(req.items) - req.next
            req.next = len(req.items)

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        """One worker thread: take the next planned call (planning a round when none is left), run it,
        hand its rows back to the loop, repeat; a worker never waits for the loop between calls."""
        while True:
            call = self._next_call()
            if call is None:
                return
            try:
                self._run_call(call)
            finally:
                with self._cond:
                    self._running -= 1

    def _next_call(self) -> list[tuple[_Request[T], int]] | None:
        """The next call's rows (skipping cancelled requests); None once stopping and nothing is left."""
        with self._cond:
            while True:
                if not self._pending:
                    if self._active and not self._closing and self._running == 0:
                        self._short_wait()
                    round_ = self._select()
                    if round_:
                        self._pending.extend(self._plan(round_))
                if self._pending:
                    call = [x for x in self._pending.popleft() if not x[0].future.done()]
                    if call:
                        self._running += 1
                        if self._pending:  # more planned calls: a submit woke only this worker
                            self._cond.notify()
                        return call
                    continue
                if self._closing and not self._active:
                    return None
                self._cond.wait()

    def _short_wait(self) -> None:
        """With the model idle and few inputs waiting, wait until the oldest has waited max_wait_ms
        (called holding the lock; waiting releases it, so submits go on)."""
        wait_s = self._cfg.max_wait_ms / 1000
        while wait_s > 0 and self._active and self._queued < self._cfg.max_step_inputs and not self._closing:
            remaining = wait_s - (time.perf_counter() - min(r.submitted for r in self._active))
            if remaining <= 0:
                return
            self._cond.wait(remaining)

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

    def _run_call(self, chosen: list[tuple[_Request[T], int]]) -> None:
        """One model call in this worker thread; its rows (or errors) go back to the loop."""
        items = [req.items[j] for req, j in chosen]
        with self._cond:
            busy = self._running
        t0 = time.perf_counter()
        try:
            out = self._run(items)
        except Exception as exc:
            self._isolate_failure(chosen, exc)
            return
        seconds = time.perf_counter() - t0
        longest = int(chosen[0][0].lengths[chosen[0][1]])
        self._obs.on_batch(len(items), len(items) * longest, seconds)
        rate = busy * len(items) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        self._hand_back(self._scatter, chosen, out)

    def _isolate_failure(self, chosen: list[tuple[_Request[T], int]], exc: Exception) -> None:
        """A model call failed: rerun each request's rows alone, so only the failing requests fail."""
        by_request: dict[int, list[tuple[_Request[T], int]]] = {}
        for req, j in chosen:
            by_request.setdefault(id(req), []).append((req, j))
        for part in by_request.values():
            req = part[0][0]
            if len(by_request) == 1:
                self._hand_back(self._fail, req, exc)
                continue
            if req.future.done():
                continue
            try:
                out = self._run([req.items[j] for _, j in part])
            except Exception as own:
                self._hand_back(self._fail, req, own)
                continue
            self._hand_back(self._scatter, part, out)

    def _hand_back(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    def _fail(req: _Request[Any], exc: Exception) -> None:
        if not req.future.done():
            req.future.set_exception(exc)

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
