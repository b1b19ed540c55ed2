"""From frame scores to sound events: a small, pure, per-class state machine.

Time comes from frame indices (sample counts), never from the wall clock, so the daemon,
`harken detect` and the evaluation code make exactly the same decisions on the same audio.

Per class, each frame goes through:

1. smoothing: a causal moving average over `smoothing_frames` scores;
2. onset: at least `onset_k` of the last `onset_n` smoothed scores at or above the
   on-threshold (hysteresis high side) start a *candidate*; its start is the first of
   those frames;
3. minimum duration: the candidate is published (``EventStarted``) once it has lasted
   `min_duration_s` without the smoothed score dropping below the off-threshold;
4. release / merge gap: an active event ends (``EventEnded``) once the smoothed score has
   stayed below the off-threshold (hysteresis low side) for `merge_gap_s`; shorter gaps,
   such as the pauses of a T3 alarm or a baby's breath, are merged into the event;
5. cooldown: no new event of the class starts within `cooldown_s` of the previous end;
6. onset look-back: a candidate too short to publish (step 3) is remembered; when the
   next candidate of the class starts within `onset_lookback_s` of its end and becomes
   an event, the event's start is the earlier candidate's. A cry that opens with a short
   sob, then a breath, then crying, starts at the sob: what is decided and when does
   not change, only the onset reported.
7. rise dating: when a candidate starts, its reported onset reaches back over the frames
   just before it whose smoothed score stayed at or above `onset_rise_threshold`, at most
   `onset_rise_s` and never into the class's previous event. A cry's score climbs through
   0.5-0.97 for a second before it reaches a 0.99 on-threshold; the cry began where the
   climb began. Like the look-back it moves the onset reported only.
8. touch dating: when a candidate starts, its reported onset reaches back to the earliest
   frame, at most `onset_touch_s` before it and never into the class's previous event,
   whose smoothed score touched the on-threshold. A cry that comes in bursts with breaths
   between them touches a 0.99 threshold at its first burst and meets the k-of-n rule
   seconds later; no too-short candidate (rule 6) or unbroken climb (rule 7) dates it back.
   The level touched may be set below the on-threshold (`onset_touch_threshold`): under a
   bed a cry's first bursts often reach 0.9-0.98 where the on-threshold is 0.99. Again only
   the onset reported moves.
9. onset advance: the onset the rules above give is reported `onset_advance_s` earlier,
   never into the class's previous event nor before the stream. Under a bed of music or
   speech a cry's opening sobs are masked and the network's score touches its threshold
   only at the full cry, a few tenths of a second after the cry began; a constant advance
   corrects that lag on average (tuned on dev, like the dating above). Only the onset
   reported moves: what is decided, and when, does not.

Across classes, arbitration stops a class from starting while another target class is
active or starting with a smoothed score higher by `arbitration_margin` or more: a smoke
alarm that leaks into the baby-cry score reports one smoke alarm, not both.

Most audio is quiet; frames where every class is idle and no score reaches its
on-threshold are skipped in bulk with numpy, so deciding costs almost nothing there.
Inside an event and its gaps, runs of frames that change nothing but the event's running
sums are taken in bulk too (`_steady_frames`, `_hold`); only frames where something may
happen (a start, an end, a flicker) go through the per-frame state machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class DecisionParams:
    """Decision parameters of one class; defaults come from the model contract."""

    on_threshold: float = 0.5
    off_threshold: float = 0.35
    smoothing_frames: int = 3
    onset_k: int = 3
    onset_n: int = 5
    min_duration_s: float = 0.1
    merge_gap_s: float = 1.0
    cooldown_s: float = 0.0
    #: How far back a published event's onset may reach to a too-short candidate before it.
    onset_lookback_s: float = 0.0
    #: Rise dating (rule 7): how far back, and above which smoothed score, a candidate's
    #: reported onset may reach over the frames just before it. 0 s: off.
    onset_rise_threshold: float = 0.0
    onset_rise_s: float = 0.0
    #: Touch dating (rule 8): how far back a candidate's reported onset may reach to a frame
    #: whose smoothed score touched the on-threshold. 0 s: off.
    onset_touch_s: float = 0.0
    #: The smoothed score a frame must reach to count as touched: the lower of this and the
    #: on-threshold (1.0: the on-threshold itself).
    onset_touch_threshold: float = 1.0
    #: Onset advance (rule 9): how much earlier than its dated onset an event is reported,
    #: the score's usual lag behind the sound's start. 0 s: off.
    onset_advance_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.on_threshold <= 1.0:
            raise ValueError(f"on_threshold must be in (0, 1], got {self.on_threshold}")
        if not 0.0 <= self.off_threshold <= self.on_threshold:
            raise ValueError(
                f"off_threshold must be in [0, on_threshold={self.on_threshold}], got {self.off_threshold}"
            )
        if self.smoothing_frames < 1:
            raise ValueError(f"smoothing_frames must be >= 1, got {self.smoothing_frames}")
        if not 1 <= self.onset_k <= self.onset_n:
            raise ValueError(f"need 1 <= onset_k <= onset_n, got k={self.onset_k} n={self.onset_n}")
        if not 0.0 <= self.onset_rise_threshold <= 1.0:
            raise ValueError(f"onset_rise_threshold must be in [0, 1], got {self.onset_rise_threshold}")
        if not 0.0 < self.onset_touch_threshold <= 1.0:
            raise ValueError(f"onset_touch_threshold must be in (0, 1], got {self.onset_touch_threshold}")
        for name in ("min_duration_s", "merge_gap_s", "cooldown_s", "onset_lookback_s", "onset_rise_s",
                     "onset_touch_s", "onset_advance_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DecisionParams:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decision parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)  # type: ignore[arg-type]

    def with_sensitivity(self, sensitivity: float) -> DecisionParams:
        """Thresholds for a user sensitivity in [0, 1]; 0.5 keeps the tuned thresholds.

        threshold ** (2 * sensitivity): 1.0 makes thresholds their square (more events),
        0.0 makes them 1.0 (only certain frames count); monotonic and stays in (0, 1].
        """
        if not 0.0 <= sensitivity <= 1.0:
            raise ValueError(f"sensitivity must be in [0, 1], got {sensitivity}")
        exponent = 2.0 * sensitivity
        on = self.on_threshold**exponent
        off = min(on, self.off_threshold**exponent) if self.off_threshold > 0 else 0.0
        rise = min(on, self.onset_rise_threshold**exponent) if self.onset_rise_threshold > 0 else 0.0
        touch = self.onset_touch_threshold**exponent
        return replace(self, on_threshold=on, off_threshold=off, onset_rise_threshold=rise, onset_touch_threshold=touch)


@dataclass(frozen=True)
class EventStarted:
    """A class became active. `start_s` is the onset; `detected_s` when the decision fired."""

    class_name: str
    start_s: float
    detected_s: float
    score: float


@dataclass(frozen=True)
class EventEnded:
    """A class became inactive; scores are smoothed scores over the event's frames."""

    class_name: str
    start_s: float
    end_s: float
    detected_s: float
    peak_score: float
    mean_score: float
    #: Number of on/off threshold crossings of the smoothed score inside the event.
    flicker: int = 0


Decision = EventStarted | EventEnded

_IDLE, _PENDING, _ACTIVE = 0, 1, 2


@dataclass
class _ClassState:
    params: DecisionParams
    phase: int = _IDLE
    start_frame: int = 0
    #: The onset reported: start_frame, or an earlier dropped candidate's (onset look-back).
    report_start_frame: int = 0
    #: First and last frame of the latest too-short candidate (-1: none to look back to).
    dropped_start_frame: int = -1
    dropped_end_frame: int = -1
    detected_frame: int = 0
    last_above_off_frame: int = 0
    cooldown_until_frame: int = -1
    score_sum: float = 0.0
    score_peak: float = 0.0
    n_frames: int = 0
    #: score_sum and n_frames as of the last frame above the off-threshold.
    sum_until_last_above: float = 0.0
    frames_until_last_above: int = 0
    flicker: int = 0
    was_above_off: bool = True
    gates: list[str] = field(default_factory=list)

    @property
    def onset_floor_frame(self) -> int:
        """The earliest frame a reported onset may reach: after the class's previous event
        and its cooldown, and not before the stream (rules 7-9)."""
        return max(self.cooldown_until_frame, 0)


class EventDecider:
    """Per-class event state machines over a stream of frame scores.

    `update(scores)` takes scores of consecutive frames, shape (frames, classes), and
    returns the decisions they cause, in time order. `flush()` ends open events at the
    end of a stream. `hop_s` and `frame_offset_s` turn frame indices into audio time.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        params: Mapping[str, DecisionParams],
        hop_s: float,
        frame_offset_s: float = 0.0,
        arbitration_margin: float | None = 0.3,
        is_allowed: Callable[[str], bool] | None = None,
    ) -> None:
        missing = [name for name in class_names if name not in params]
        if missing:
            raise ValueError(f"no decision parameters for class(es): {', '.join(missing)}")
        self.class_names = list(class_names)
        self.hop_s = hop_s
        self.frame_offset_s = frame_offset_s
        self.arbitration_margin = arbitration_margin
        #: Asked before an event starts: lets controls (disabled, snoozed) veto it.
        self.is_allowed = is_allowed or (lambda _name: True)
        self._states = [_ClassState(params[name]) for name in class_names]
        self._max_smooth = max(s.params.smoothing_frames for s in self._states)
        self._keep_smoothed = self._smoothed_history_needed()
        n_classes = len(class_names)
        # Tails of the previous block so that smoothing and k-of-n span block boundaries.
        self._raw_tail = np.zeros((0, n_classes), dtype=np.float64)
        self._smooth_tail = np.zeros((0, n_classes), dtype=np.float64)
        #: Smoothed scores of the block being decided, with the kept tail before it (rule 7).
        self._history = self._smooth_tail
        self.frames_seen = 0

    # ----------------------------------------------------------------- parameters
    def set_params(self, class_name: str, params: DecisionParams) -> None:
        """Change a class's parameters live (e.g. sensitivity from MQTT or the API)."""
        state = self._states[self.class_names.index(class_name)]
        state.params = params
        self._max_smooth = max(s.params.smoothing_frames for s in self._states)
        self._keep_smoothed = self._smoothed_history_needed()

    def _smoothed_history_needed(self) -> int:
        """Smoothed frames kept across blocks: k-of-n windows, rise and touch dating reach back."""
        return max(
            max(
                s.params.onset_n - 1
                + round(max(s.params.onset_rise_s, s.params.onset_touch_s) / self.hop_s),
                0,
            )
            for s in self._states
        )

    def params(self, class_name: str) -> DecisionParams:
        return self._states[self.class_names.index(class_name)].params

    def is_active(self, class_name: str) -> bool:
        return self._states[self.class_names.index(class_name)].phase == _ACTIVE

    def time_of(self, frame: int) -> float:
        return self.frame_offset_s + frame * self.hop_s

    # ----------------------------------------------------------------- smoothing
    def _smooth(self, raw: np.ndarray) -> np.ndarray:
        """Causal moving average per class, continuing across blocks. (frames, classes)."""
        history = np.concatenate([self._raw_tail, raw])
        n_hist = self._raw_tail.shape[0]
        smoothed = np.empty_like(raw)
        cumsum = np.concatenate([np.zeros((1, raw.shape[1])), np.cumsum(history, axis=0)])
        ends = np.arange(n_hist + 1, n_hist + raw.shape[0] + 1)  # exclusive end in history
        for c, state in enumerate(self._states):
            starts = np.maximum(0, ends - state.params.smoothing_frames)
            smoothed[:, c] = (cumsum[ends, c] - cumsum[starts, c]) / (ends - starts)
        keep = max(self._max_smooth - 1, 0)
        self._raw_tail = history[-keep:] if keep else history[:0]
        return smoothed

    # ----------------------------------------------------------------- main entry
    def update(self, scores: np.ndarray) -> list[Decision]:
        """Consume scores of the next frames, shape (frames, classes); return decisions."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.class_names):
            raise ValueError(
                f"scores must have shape (frames, {len(self.class_names)}), got {scores.shape}"
            )
        n = scores.shape[0]
        if n == 0:
            return []
        smoothed = self._smooth(np.nan_to_num(scores, nan=0.0, posinf=1.0, neginf=0.0))
        on = np.array([s.params.on_threshold for s in self._states])
        with_tail = np.concatenate([self._smooth_tail, smoothed])
        n_tail = self._smooth_tail.shape[0]
        above_on = with_tail >= on  # (tail + frames, classes)
        any_above_on = np.flatnonzero(above_on[n_tail:].any(axis=1))
        self._history = with_tail
        decisions: list[Decision] = []
        i = 0
        while i < n:
            if all(s.phase == _IDLE for s in self._states):
                # Jump straight to the next frame that could start something.
                nxt = np.searchsorted(any_above_on, i)
                if nxt == any_above_on.shape[0]:
                    break
                i = int(any_above_on[nxt])
            else:
                steady = self._steady_frames(self.frames_seen + i, with_tail[n_tail + i :], above_on[n_tail + i :])
                if steady:
                    self._hold(self.frames_seen + i, with_tail[n_tail + i : n_tail + i + steady])
                    i += steady
                    continue
            self._step(self.frames_seen + i, with_tail[n_tail + i], above_on, n_tail + i, decisions)
            i += 1
        self.frames_seen += n
        keep = self._keep_smoothed
        self._smooth_tail = with_tail[-keep:] if keep else with_tail[:0]
        return decisions

    def _steady_frames(self, first_frame: int, smoothed: np.ndarray, above_on: np.ndarray, look: int = 256) -> int:
        """How many of the next frames change nothing but the running sums of active events:
        every active class stays on its side of its off-threshold (so it does not flicker),
        and one below it does not reach the end of its merge gap; no idle class reaches its
        on-threshold and no class is pending. Inside an event and in its gaps most frames
        are such; `_hold` takes them in bulk, exactly as `_step` would one by one."""
        if any(s.phase == _PENDING for s in self._states):
            return 0
        active = [c for c, s in enumerate(self._states) if s.phase == _ACTIVE]
        idle = [c for c, s in enumerate(self._states) if s.phase == _IDLE]
        off = np.array([self._states[c].params.off_threshold for c in active])
        side = np.array([self._states[c].was_above_off for c in active])
        limit = smoothed.shape[0]
        for c in active:
            state = self._states[c]
            if not state.was_above_off:  # the frame that would end the event is stepped
                limit = min(limit, self._gap_end_frame(state) - first_frame)
        count = 0
        while count < limit:
            window = slice(count, min(count + look, limit))
            same_side = ((smoothed[window, active] >= off) == side).all(axis=1)
            quiet = same_side & ~above_on[window, idle].any(axis=1)
            if quiet.all():
                count += quiet.shape[0]
                continue
            return count + int(np.argmin(quiet))
        return count

    def _gap_closed(self, state: _ClassState, frame: int) -> bool:
        """Whether an active event's merge gap is over at `frame`: it then ends."""
        return (frame - state.last_above_off_frame) * self.hop_s >= max(state.params.merge_gap_s, self.hop_s)

    def _gap_end_frame(self, state: _ClassState) -> int:
        """The first frame at which an active event below its off-threshold ends."""
        frame = state.last_above_off_frame + max(1, int(state.params.merge_gap_s / self.hop_s) - 1)
        while not self._gap_closed(state, frame):
            frame += 1
        return frame

    def _hold(self, first_frame: int, smoothed: np.ndarray) -> None:
        """Frames that `_steady_frames` vouched for: what `_step` would do one by one."""
        last = first_frame + smoothed.shape[0] - 1
        for c, state in enumerate(self._states):
            if state.phase != _ACTIVE:
                continue
            scores = smoothed[:, c]
            # np.cumsum adds in order, so the sum is the very float the frame loop makes.
            state.score_sum = float(np.cumsum(np.concatenate([[state.score_sum], scores]))[-1])
            state.score_peak = max(state.score_peak, float(scores.max()))
            state.n_frames += scores.shape[0]
            if state.was_above_off:
                state.last_above_off_frame = last
                state.sum_until_last_above = state.score_sum
                state.frames_until_last_above = state.n_frames

    def _step(
        self,
        frame: int,
        smoothed: np.ndarray,
        above_on: np.ndarray,
        row: int,
        out: list[Decision],
    ) -> None:
        """Advance every class by one frame. `row` indexes `above_on` for k-of-n windows."""
        wants_start: list[int] = []
        for c, state in enumerate(self._states):
            p = state.params
            score = float(smoothed[c])
            above_off = score >= p.off_threshold
            if state.phase == _IDLE:
                if frame < state.cooldown_until_frame or not above_on[row, c]:
                    continue
                window = above_on[max(0, row - p.onset_n + 1) : row + 1, c]
                if int(window.sum()) >= p.onset_k:
                    first = int(np.argmax(window))  # first above-on frame in the window
                    state.start_frame = frame - (window.shape[0] - 1 - first)
                    lookback = round(p.onset_lookback_s / self.hop_s)
                    reaches_back = (
                        lookback > 0
                        and state.dropped_end_frame >= 0
                        and state.start_frame - state.dropped_end_frame <= lookback
                    )
                    start_row = row - (frame - state.start_frame)
                    state.report_start_frame = self._advanced(state, min(
                        state.dropped_start_frame if reaches_back else state.start_frame,
                        self._rise_start(state, c, start_row),
                        self._touch_start(state, c, start_row),
                    ))
                    state.phase = _PENDING
                    state.score_sum, state.score_peak, state.n_frames = 0.0, 0.0, 0
                    state.flicker, state.was_above_off = 0, True
                    state.last_above_off_frame = frame
            if state.phase == _IDLE:
                continue
            state.n_frames += 1
            state.score_sum += score
            state.score_peak = max(state.score_peak, score)
            if above_off != state.was_above_off:
                state.flicker += 1
                state.was_above_off = above_off
            if above_off:
                state.last_above_off_frame = frame
                state.sum_until_last_above = state.score_sum
                state.frames_until_last_above = state.n_frames
            if state.phase == _PENDING:
                if not above_off:
                    state.phase = _IDLE  # too short: a click, not an event
                    # ...or the first sob of a cry: the next candidate may reach back to it.
                    state.dropped_start_frame = state.report_start_frame
                    state.dropped_end_frame = frame - 1
                elif (frame - state.start_frame + 1) * self.hop_s >= p.min_duration_s:
                    wants_start.append(c)
            elif state.phase == _ACTIVE and self._gap_closed(state, frame):
                self._end(c, frame, out)
        for c in wants_start:
            self._maybe_start(c, frame, smoothed, wants_start, out)

    def _rise_start(self, state: _ClassState, c: int, start_row: int) -> int:
        """Rule 7: the first of the frames just before a candidate's start (row `start_row`
        of the history) whose smoothed score stayed at or above the rise threshold, at most
        `onset_rise_s` back and not before the class's previous event ended."""
        p = state.params
        reach = min(round(p.onset_rise_s / self.hop_s), start_row)
        start_frame = state.start_frame
        if reach <= 0:
            return start_frame
        before = self._history[start_row - reach : start_row, c]
        below = np.flatnonzero(before < p.onset_rise_threshold)
        risen = reach if below.size == 0 else reach - 1 - int(below[-1])
        return max(start_frame - risen, state.onset_floor_frame)

    def _touch_start(self, state: _ClassState, c: int, start_row: int) -> int:
        """Rule 8: the earliest of the frames just before a candidate's start (row `start_row`
        of the history) whose smoothed score reached the touch level (the on-threshold, or
        `onset_touch_threshold` where lower), at most `onset_touch_s` back and not before the
        class's previous event ended."""
        p = state.params
        start_frame = state.start_frame
        # Frames of the previous event (and its cooldown) touched the threshold too: they
        # are out of reach, not clamped to its end.
        reach = min(
            round(p.onset_touch_s / self.hop_s), start_row, start_frame - state.onset_floor_frame
        )
        if reach <= 0:
            return start_frame
        level = min(p.on_threshold, p.onset_touch_threshold)
        touched = np.flatnonzero(self._history[start_row - reach : start_row, c] >= level)
        return start_frame if touched.size == 0 else start_frame - (reach - int(touched[0]))

    def _advanced(self, state: _ClassState, dated_frame: int) -> int:
        """Rule 9: `dated_frame` moved `onset_advance_s` earlier, not before the class's
        previous event ended (nor its cooldown) and not before the stream's first frame."""
        advance = round(state.params.onset_advance_s / self.hop_s)
        floor = state.onset_floor_frame
        if advance <= 0 or dated_frame <= floor:
            return dated_frame
        return max(dated_frame - advance, floor)

    def _maybe_start(
        self, c: int, frame: int, smoothed: np.ndarray, starting: list[int], out: list[Decision]
    ) -> None:
        state = self._states[c]
        name = self.class_names[c]
        if self.arbitration_margin is not None:
            for other, other_state in enumerate(self._states):
                if other == c:
                    continue
                rival = other_state.phase == _ACTIVE or other in starting
                if rival and smoothed[other] - smoothed[c] >= self.arbitration_margin:
                    state.phase = _IDLE  # the louder class owns this sound
                    return
        if not self.is_allowed(name):
            state.phase = _IDLE
            return
        state.phase = _ACTIVE
        state.detected_frame = frame
        state.dropped_start_frame = state.dropped_end_frame = -1
        out.append(
            EventStarted(
                class_name=name,
                start_s=round(self.time_of(state.report_start_frame), 4),
                detected_s=round(self.time_of(frame), 4),
                score=round(float(smoothed[c]), 4),
            )
        )

    def _end(self, c: int, frame: int, out: list[Decision]) -> None:
        state = self._states[c]
        p = state.params
        # The event ends after its last frame above the off-threshold.
        end_frame = state.last_above_off_frame + 1
        out.append(
            EventEnded(
                class_name=self.class_names[c],
                start_s=round(self.time_of(state.report_start_frame), 4),
                end_s=round(self.time_of(end_frame), 4),
                detected_s=round(self.time_of(state.detected_frame), 4),
                peak_score=round(state.score_peak, 4),
                # Frames of the trailing gap are left out of the mean.
                mean_score=round(state.sum_until_last_above / max(state.frames_until_last_above, 1), 4),
                flicker=max(0, state.flicker - 1),
            )
        )
        state.phase = _IDLE
        state.cooldown_until_frame = end_frame + round(p.cooldown_s / self.hop_s)

    def end_class(self, class_name: str) -> list[Decision]:
        """End an open event of one class now (e.g. the class was disabled)."""
        c = self.class_names.index(class_name)
        out: list[Decision] = []
        state = self._states[c]
        if state.phase == _ACTIVE:
            self._end(c, self.frames_seen, out)
        elif state.phase == _PENDING:
            state.phase = _IDLE
        return out

    def flush(self) -> list[Decision]:
        """End every open event at the end of the stream; pending candidates are dropped."""
        out: list[Decision] = []
        for c, state in enumerate(self._states):
            if state.phase == _ACTIVE:
                state.last_above_off_frame = min(state.last_above_off_frame, self.frames_seen - 1)
                self._end(c, self.frames_seen, out)
            state.phase = _IDLE
        return out


def decide(
    scores: np.ndarray,
    class_names: Sequence[str],
    params: Mapping[str, DecisionParams],
    hop_s: float,
    frame_offset_s: float = 0.0,
    arbitration_margin: float | None = 0.3,
) -> list[EventEnded]:
    """Events of a whole score matrix (frames, classes), as the daemon would publish them."""
    decider = EventDecider(class_names, params, hop_s, frame_offset_s, arbitration_margin)
    decisions = decider.update(scores) + decider.flush()
    return [d for d in decisions if isinstance(d, EventEnded)]
