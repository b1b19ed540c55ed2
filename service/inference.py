"""The shared inference stage: one worker thread scores every source's pending audio together.

Each `SourceRunner` hands its next block to `InferenceBatcher.score` and awaits the
scores. Requests that arrive while the worker is busy (or in the same turn of the event
loop) are collected and run as one job: log-mel features per source, then one model call
for all of them (`service.detector.push_many`). An idle worker takes a lone request at
once, so batching adds no latency; it only saves work when several streams are due.

One source's bad block fails only that source's request: when a batched call raises, the
job scores the blocks one by one so that the others still get their scores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.audio.features import StreamingLogMel
from service.detector import StreamingScorer, push_many

log = logging.getLogger(__name__)


@dataclass
class _Request:
    frontend: StreamingLogMel
    scorer: StreamingScorer
    block: np.ndarray  # (samples,) 16 kHz mono float32
    future: asyncio.Future[tuple[np.ndarray, float]]


@dataclass
class BatchStats:
    """Counters for status pages and the streams benchmark."""

    jobs: int = 0
    blocks: int = 0
    largest_batch: int = 0
    fallbacks: int = 0  # batched calls that raised and were re-run one by one
    busy_s: float = 0.0  # worker time spent on features and scores
    started: float = field(default_factory=time.monotonic)

    @property
    def mean_batch(self) -> float:
        return self.blocks / self.jobs if self.jobs else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "jobs": self.jobs,
            "blocks": self.blocks,
            "mean_batch": round(self.mean_batch, 2),
            "largest_batch": self.largest_batch,
            "fallbacks": self.fallbacks,
            "busy_s": round(self.busy_s, 3),
        }


class InferenceBatcher:
    """Batches the feature and model work of several streams onto one executor worker.

    Use from one event loop only; `executor` should have a single worker so that each
    stream's frontend and scorer are only ever touched by one thread at a time.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.stats = BatchStats()
        self._pending: list[_Request] = []
        self._busy = False
        self._kick_scheduled = False

    async def score(
        self, frontend: StreamingLogMel, scorer: StreamingScorer, block: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Scores (k, C) of the frames `block` completes, and this stream's worker seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, float]] = loop.create_future()
        self._pending.append(_Request(frontend, scorer, block, future))
        if not self._kick_scheduled:
            # Deferred by one loop turn: every runner woken in this turn joins the batch.
            self._kick_scheduled = True
            loop.call_soon(self._kick, loop)
        return await future

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._kick_scheduled = False
        if self._busy:
            return  # the running job's completion starts the next one
        batch = [r for r in self._pending if not r.future.done()]  # drop cancelled waiters
        self._pending = []
        if not batch:
            return
        self._busy = True
        job = loop.run_in_executor(self.executor, self._run, batch)
        job.add_done_callback(lambda done: self._finished(loop, batch, done))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Request],
        job: asyncio.Future[list[tuple[np.ndarray, float] | BaseException]],
    ) -> None:
        self._busy = False
        if job.cancelled():
            outcomes: list[tuple[np.ndarray, float] | BaseException] = [
                RuntimeError("inference job cancelled")
            ] * len(batch)
        elif job.exception() is not None:
            outcomes = [job.exception()] * len(batch)  # type: ignore[list-item]
        else:
            outcomes = job.result()
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
        if self._pending and not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick, loop)

    def _run(self, batch: list[_Request]) -> list[tuple[np.ndarray, float] | BaseException]:
        """On the worker thread: features per stream, then one model call for all of them."""
        job_started = time.perf_counter()
        outcomes: list[tuple[np.ndarray, float] | BaseException] = [
            RuntimeError("not scored")
        ] * len(batch)
        feature_s: list[float] = [0.0] * len(batch)
        ready: list[int] = []
        frames: list[np.ndarray] = []
        for i, request in enumerate(batch):
            started = time.perf_counter()
            try:
                frames.append(request.frontend.push(request.block))  # (T, n_mels)
                ready.append(i)
            except Exception as exc:
                outcomes[i] = exc
            feature_s[i] = time.perf_counter() - started
        model_started = time.perf_counter()
        try:
            scored = push_many([(batch[i].scorer, f) for i, f in zip(ready, frames, strict=True)])
        except Exception as exc:
            # push_many advanced no scorer: score each on its own so only the culprit fails.
            self.stats.fallbacks += 1
            log.warning(
                "batched inference of %d streams failed (%s); scoring them one by one",
                len(ready),
                exc,
            )
            scored = []
            for i, f in zip(ready, frames, strict=True):
                try:
                    scored.append(batch[i].scorer.push(f))
                except Exception as one_exc:
                    scored.append(one_exc)  # type: ignore[arg-type]
        model_s = time.perf_counter() - model_started
        total_frames = sum(f.shape[0] for f in frames) or 1
        for i, f, result in zip(ready, frames, scored, strict=True):
            if isinstance(result, BaseException):
                outcomes[i] = result
            else:
                # The shared model call is charged to each stream by its share of the frames.
                outcomes[i] = (result, feature_s[i] + model_s * f.shape[0] / total_frames)
        self.stats.jobs += 1
        self.stats.blocks += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.busy_s += time.perf_counter() - job_started
        return outcomes
