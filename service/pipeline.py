"""Orchestration only: source -> features -> detector -> decisions -> dispatcher.

`analyse_file` is the offline path (`harken detect`, evaluation, the benchmark);
`SourceRunner` is the live path of the daemon. Both use the same feature, scoring and
decision objects, so they make the same decisions on the same audio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from service.audio.features import StreamingLogMel, level_dbfs
from service.audio.sources import TARGET_RATE, AudioSource, SourceError, iter_file
from service.controls import ClassControl, ClassControls
from service.decision import DecisionParams, EventDecider, EventEnded, EventStarted
from service.detector import Detector
from service.events import EventMessage, EventRecord, StreamClock, new_event_id, utc_now
from service.inference import InferenceBatcher
from service.sinks.dispatcher import Dispatcher, LiveUpdate

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
LIVE_INTERVAL_S = 0.1
MAX_CLIP_S = 60.0


def new_decider(
    detector: Detector,
    params: Mapping[str, DecisionParams] | None = None,
    arbitration_margin: float | None = 0.3,
    frame_offset: int = 0,
    is_allowed: Callable[[str], bool] | None = None,
) -> EventDecider:
    """An EventDecider timed by the model's frames (time = centre of each frame)."""
    features = detector.contract.features
    return EventDecider(
        detector.class_names,
        params or detector.contract.decision,
        hop_s=features.hop_s,
        frame_offset_s=float(features.frame_center_s(frame_offset)),
        arbitration_margin=arbitration_margin,
        is_allowed=is_allowed,
    )


@dataclass(frozen=True)
class FileAnalysis:
    path: Path
    duration_s: float
    events: list[EventEnded]
    scores: np.ndarray  # (frames, classes), empty unless asked for


def analyse_blocks(
    blocks: Iterable[np.ndarray],
    detector: Detector,
    params: Mapping[str, DecisionParams] | None = None,
    arbitration_margin: float | None = 0.3,
    keep_scores: bool = False,
) -> tuple[float, list[EventEnded], np.ndarray]:
    """Run the streaming pipeline over blocks of 16 kHz mono audio, as fast as possible."""
    frontend = StreamingLogMel(detector.contract.features)
    scorer = detector.stream()
    decider = new_decider(detector, params, arbitration_margin)
    events: list[EventEnded] = []
    kept: list[np.ndarray] = []
    n_samples = 0
    for block in blocks:
        n_samples += block.shape[0]
        scores = scorer.push(frontend.push(block))
        if keep_scores:
            kept.append(scores)
        events += [d for d in decider.update(scores) if isinstance(d, EventEnded)]
    tail = scorer.flush()
    if keep_scores:
        kept.append(tail)
    events += [d for d in decider.update(tail) + decider.flush() if isinstance(d, EventEnded)]
    all_scores = np.concatenate(kept) if kept else np.zeros((0, len(detector.class_names)), np.float32)
    return n_samples / TARGET_RATE, events, all_scores


#: Seconds of audio a file is read in when analysed offline: large blocks, so features and
#: ONNX run vectorised over many frames at once.
FILE_BLOCK_S = 60.0


def analyse_file(
    path: str | Path,
    detector: Detector,
    params: Mapping[str, DecisionParams] | None = None,
    arbitration_margin: float | None = 0.3,
    keep_scores: bool = False,
) -> FileAnalysis:
    """Events of one audio file; raises SourceError with a clear message for bad files."""
    duration, events, scores = analyse_blocks(
        iter_file(path, block_s=FILE_BLOCK_S), detector, params, arbitration_margin, keep_scores
    )
    return FileAnalysis(Path(path), duration, events, scores)


class AudioRing:
    """The last `capacity_s` seconds of a stream, addressed by absolute sample index."""

    def __init__(self, capacity_s: float) -> None:
        self.capacity = int(capacity_s * TARGET_RATE)
        self._buffer = np.zeros(self.capacity, dtype=np.float32)
        self.total = 0  # samples written since the stream started

    def write(self, block: np.ndarray) -> None:
        block = block[-self.capacity :]
        n = block.shape[0]
        start = self.total % self.capacity
        first = min(n, self.capacity - start)
        self._buffer[start : start + first] = block[:first]
        self._buffer[: n - first] = block[first:]
        self.total += n

    def since(self, sample: int) -> np.ndarray:
        """Samples from absolute index `sample` (clamped to what is kept) to now."""
        sample = max(sample, self.total - self.capacity, 0)
        n = self.total - sample
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        idx = (np.arange(sample, self.total)) % self.capacity
        return self._buffer[idx]


@dataclass
class _OpenEvent:
    record: EventRecord
    clip: list[np.ndarray]
    clip_samples: int
    clip_start_sample: int = 0
    clip_until_sample: int | None = None
    peak_level: float = -120.0


class SourceRunner:
    """Runs one source through the pipeline, with retries and backoff for live sources."""

    def __init__(
        self,
        source: AudioSource,
        detector: Detector,
        dispatcher: Dispatcher,
        executor: Executor,
        base_params: Mapping[str, DecisionParams],
        controls: ClassControls,
        arbitration_margin: float | None = 0.3,
        clip_pre_s: float = 2.0,
        clip_post_s: float = 3.0,
        clips_dir: Path | None = None,
        on_clip: Callable[[str, str], None] | None = None,
        batcher: InferenceBatcher | None = None,
    ) -> None:
        self.source = source
        self.detector = detector
        self.dispatcher = dispatcher
        self.executor = executor
        self.base_params = dict(base_params)
        self.controls = controls
        self.arbitration_margin = arbitration_margin
        self.clip_pre_s, self.clip_post_s = clip_pre_s, clip_post_s
        self.clips_dir = clips_dir
        self.on_clip = on_clip
        self.batcher = batcher  # shared by every runner of the daemon: one batched model call
        self.status = source.status
        self.latest_scores: dict[str, float] = dict.fromkeys(detector.class_names, 0.0)
        self.latest_level = -120.0
        self.audio_s = 0.0  # audio seconds processed over all restarts
        self.inference_s = 0.0
        self.events_started = 0
        self._stopping = False
        self._open: dict[str, _OpenEvent] = {}
        self._last_live = 0.0
        self._ring = AudioRing(clip_pre_s + 15.0)
        self._reset(0)
        controls.subscribe(self._on_control)

    # ----------------------------------------------------------------- state
    def _params(self, control: ClassControl) -> DecisionParams:
        return self.base_params[control.name].with_sensitivity(control.sensitivity)

    def _reset(self, frame_offset: int) -> None:
        self.frontend = StreamingLogMel(self.detector.contract.features)
        self.scorer = self.detector.stream()
        params = {c: self._params(self.controls.get(c)) for c in self.detector.class_names}
        self.decider = new_decider(self.detector, params, self.arbitration_margin, frame_offset, self.controls.allows)
        self._frame_offset = frame_offset
        self._stream_start_s = frame_offset * self.detector.contract.features.hop_s
        self.clock = StreamClock(utc_now() - _seconds(self._stream_start_s))

    def _on_control(self, control: ClassControl) -> None:
        if control.name not in self.detector.class_names:
            return
        self.decider.set_params(control.name, self._params(control))
        if not control.allows_events():
            decisions = self.decider.end_class(control.name)
            if decisions:
                asyncio.get_running_loop().create_task(self._apply(decisions))

    # ----------------------------------------------------------------- running
    async def run(self) -> None:
        backoff = 1.0
        while not self._stopping:
            try:
                async for block in self.source.blocks():
                    if self._stopping:
                        break
                    if self.status.state != "running":
                        self.status.set("running")
                        log.info("source %s running (%s)", self.source.name, self.source.url)
                    await self._process(block)
                    backoff = 1.0
                await self._end_stream()
                if not self._stopping:
                    self.status.set("ended")
                    log.info("source %s ended after %.1f s of audio", self.source.name, self.audio_s)
                return
            except Exception as exc:
                if not isinstance(exc, SourceError):
                    # A bug or a library failure must not end a live source silently with a
                    # stale "running" status: say so, then treat it like a stream that broke.
                    log.exception("source %s failed unexpectedly", self.source.name)
                    exc = SourceError(f"unexpected error: {type(exc).__name__}: {exc}", retryable=True)
                await self._end_stream()
                if not exc.retryable or not self.source.retryable:
                    self.status.set("stopped", str(exc))
                    log.error("source %s stopped: %s", self.source.name, exc)
                    return
                self.status.set("degraded", str(exc))
                self.status.restarts += 1
                log.warning("source %s: %s; retrying in %.0f s", self.source.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except asyncio.CancelledError:
                await self._end_stream()
                raise

    def stop(self) -> None:
        self._stopping = True

    def _infer(self, block: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        scores = self.scorer.push(self.frontend.push(block))
        self.inference_s += time.perf_counter() - started
        return scores

    async def _process(self, block: np.ndarray) -> None:
        if self.batcher is not None:
            scores, seconds = await self.batcher.score(self.frontend, self.scorer, block)
            self.inference_s += seconds
        else:
            scores = await asyncio.get_running_loop().run_in_executor(self.executor, self._infer, block)
        self._ring.write(block)
        self.audio_s += block.shape[0] / TARGET_RATE
        self.latest_level = level_dbfs(block)
        if scores.shape[0]:
            peaks = scores.max(axis=0)
            self.latest_scores = {c: round(float(v), 4) for c, v in zip(self.detector.class_names, peaks, strict=True)}
        for open_event in self._open.values():
            open_event.peak_level = max(open_event.peak_level, self.latest_level)
        self._feed_clips(block)
        await self._apply(self.decider.update(scores))
        if self.audio_s - self._last_live >= LIVE_INTERVAL_S:
            self._last_live = self.audio_s
            self.dispatcher.live(LiveUpdate(
                source=self.source.name, audio_s=round(self.audio_s, 3), scores=self.latest_scores,
                level_dbfs=round(self.latest_level, 1),
                active={c: self.decider.is_active(c) for c in self.detector.class_names},
            ))

    async def _end_stream(self) -> None:
        """Close the stream's open events; the next stream starts where this one stopped."""
        try:
            tail = await asyncio.get_running_loop().run_in_executor(self.executor, self.scorer.flush)
        except Exception:
            tail = np.zeros((0, len(self.detector.class_names)), np.float32)
        await self._apply(self.decider.update(tail) + self.decider.flush())
        for open_event in list(self._open.values()):
            open_event.clip_until_sample = self._ring.total
        self._feed_clips(np.zeros(0, np.float32))
        # A restarted stream continues the time axis where the ring stands (within one hop).
        self._reset(round(self._ring.total / self.detector.contract.features.hop_samples))

    async def _apply(self, decisions: list) -> None:  # list[Decision]
        for decision in decisions:
            if isinstance(decision, EventStarted):
                await self._started(decision)
            elif isinstance(decision, EventEnded):
                await self._ended(decision)

    async def _started(self, d: EventStarted) -> None:
        record = EventRecord(
            id=new_event_id(), source=self.source.name, class_name=d.class_name,
            start_s=d.start_s, detected_s=d.detected_s, started_at=self.clock.at(d.start_s),
            detected_at=self.clock.at(d.detected_s), score=d.score,
            model_version=self.detector.contract.model_version, level_dbfs=round(self.latest_level, 1),
        )
        # Decision times and ring indices share one axis: samples since the runner started.
        pre_from = int((d.start_s - self.clip_pre_s) * TARGET_RATE)
        pre_roll = self._ring.since(pre_from)
        self._open[d.class_name] = _OpenEvent(
            record, [pre_roll], pre_roll.shape[0], clip_start_sample=self._ring.total - pre_roll.shape[0]
        )
        self.events_started += 1
        log.info("%s: %s started at %.2f s (score %.2f)", self.source.name, d.class_name, d.start_s, d.score)
        await self.dispatcher.publish(EventMessage("start", record))

    async def _ended(self, d: EventEnded) -> None:
        open_event = self._open.get(d.class_name)
        if open_event is None:
            return
        record = open_event.record.ended(
            end_s=d.end_s, ended_at=self.clock.at(d.end_s), peak_score=d.peak_score,
            mean_score=d.mean_score, flicker=d.flicker, level_dbfs=round(open_event.peak_level, 1),
        )
        open_event.record = record
        open_event.clip_until_sample = int((d.end_s + self.clip_post_s) * TARGET_RATE)
        log.info("%s: %s ended at %.2f s (%.1f s, peak %.2f)", self.source.name, d.class_name, d.end_s,
                 record.duration_s or 0.0, d.peak_score)
        await self.dispatcher.publish(EventMessage("end", record))
        self._feed_clips(np.zeros(0, np.float32))

    def _feed_clips(self, block: np.ndarray) -> None:
        """Append audio to open clips; write those that have their post-roll or hit the limit."""
        for name, open_event in list(self._open.items()):
            if block.size and open_event.clip_samples < MAX_CLIP_S * TARGET_RATE:
                open_event.clip.append(block)
                open_event.clip_samples += block.shape[0]
            done = open_event.clip_until_sample is not None and self._ring.total >= open_event.clip_until_sample
            if done or (open_event.clip_until_sample is not None and self._stopping):
                del self._open[name]
                self._write_clip(open_event)

    def _write_clip(self, open_event: _OpenEvent) -> None:
        if self.clips_dir is None:
            return
        import soundfile as sf

        # The end is decided merge_gap_s after the sound stops; keep only clip_post_s of that.
        wanted = int(MAX_CLIP_S * TARGET_RATE)
        if open_event.clip_until_sample is not None:
            wanted = min(wanted, max(0, open_event.clip_until_sample - open_event.clip_start_sample))
        audio = np.concatenate(open_event.clip)[:wanted]
        path = self.clips_dir / f"{open_event.record.id}.wav"
        try:
            self.clips_dir.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), audio, TARGET_RATE, subtype="PCM_16")
        except (OSError, RuntimeError) as exc:
            log.error("clip of event %s not written to %s (disk full?): %s", open_event.record.id, path, exc)
            return
        if self.on_clip is not None:
            try:
                self.on_clip(open_event.record.id, path.name)
            except Exception as exc:  # e.g. StoreError on a full disk: the source must go on
                log.error("clip of event %s written but not recorded: %s", open_event.record.id, exc)

    def flush_clips(self) -> None:
        """On shutdown: write every clip that is still collecting audio."""
        for name, open_event in list(self._open.items()):
            if open_event.clip_until_sample is not None:
                del self._open[name]
                self._write_clip(open_event)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


