"""The event decision state machine: one test per rule, on hand-made score sequences."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.decision import DecisionParams, EventDecider, EventEnded, EventStarted, decide

HOP = 0.02
PLAIN = DecisionParams(on_threshold=0.5, off_threshold=0.3, smoothing_frames=1, onset_k=1, onset_n=1,
                       min_duration_s=0.0, merge_gap_s=0.0, cooldown_s=0.0)


def scores(*segments: tuple[float, int], classes: int = 1, column: int = 0) -> np.ndarray:
    """Build (frames, classes) scores from (value, n_frames) runs in one column."""
    values = np.concatenate([np.full(n, v) for v, n in segments])
    out = np.zeros((values.size, classes))
    out[:, column] = values
    return out


def run(x: np.ndarray, **changes: float) -> list[EventEnded]:
    params = DecisionParams(**{**PLAIN.to_dict(), **changes})
    return decide(x, ["a"], {"a": params}, HOP)


def test_plain_threshold_gives_one_event_with_times_from_frame_indices() -> None:
    events = run(scores((0.0, 50), (0.9, 25), (0.0, 50)))
    assert len(events) == 1
    assert events[0].start_s == pytest.approx(50 * HOP)
    assert events[0].end_s == pytest.approx(75 * HOP)
    assert events[0].peak_score == pytest.approx(0.9)


def test_hysteresis_keeps_an_event_between_off_and_on_threshold() -> None:
    x = scores((0.0, 10), (0.9, 10), (0.4, 30), (0.1, 10))
    assert [(e.start_s, e.end_s) for e in run(x)] == [(pytest.approx(0.2), pytest.approx(1.0))]
    # Without hysteresis (off == on) the 0.4 stretch ends the event early.
    assert run(x, off_threshold=0.5)[0].end_s == pytest.approx(0.4)


def test_smoothing_removes_a_single_frame_spike() -> None:
    spike = scores((0.0, 20), (1.0, 1), (0.0, 20))
    assert len(run(spike)) == 1
    assert run(spike, smoothing_frames=5) == []


def test_k_of_n_onset_needs_enough_frames_and_dates_the_event_at_the_first() -> None:
    sparse = scores((0.0, 10), (0.9, 1), (0.0, 2), (0.9, 1), (0.0, 20))
    assert run(sparse, onset_k=3, onset_n=5, off_threshold=0.0) == []
    dense = scores((0.0, 10), (0.9, 1), (0.0, 1), (0.9, 1), (0.9, 1), (0.0, 20))
    events = run(dense, onset_k=3, onset_n=5, merge_gap_s=0.1)
    assert len(events) == 1
    assert events[0].start_s == pytest.approx(10 * HOP)  # the first of the k frames
    assert events[0].detected_s == pytest.approx(13 * HOP)  # when the k-th arrived


def test_min_duration_drops_short_bursts_and_delays_the_decision() -> None:
    short = scores((0.0, 10), (0.9, 4), (0.0, 10))
    assert run(short, min_duration_s=0.2) == []
    long = scores((0.0, 10), (0.9, 20), (0.0, 10))
    (event,) = run(long, min_duration_s=0.2)
    assert event.start_s == pytest.approx(10 * HOP)
    assert event.detected_s == pytest.approx(19 * HOP)


def test_merge_gap_joins_the_beeps_of_a_t3_alarm() -> None:
    beep, gap = (0.9, 25), (0.0, 25)  # 0.5 s on, 0.5 s off
    t3 = scores((0.0, 10), beep, gap, beep, gap, beep, (0.0, 100))
    assert len(run(t3)) == 3
    merged = run(t3, merge_gap_s=1.0)
    assert len(merged) == 1
    assert merged[0].end_s == pytest.approx((10 + 125) * HOP)
    assert merged[0].flicker == 4  # four on/off changes inside the merged event


def test_cooldown_suppresses_a_retrigger() -> None:
    x = scores((0.0, 5), (0.9, 10), (0.0, 10), (0.9, 10), (0.0, 100), (0.9, 10), (0.0, 5))
    assert len(run(x)) == 3
    events = run(x, cooldown_s=1.0)
    assert len(events) == 2
    assert events[1].start_s == pytest.approx(135 * HOP)


def test_arbitration_lets_the_louder_class_own_the_sound() -> None:
    x = np.zeros((60, 2))
    x[10:40, 0] = 0.95  # smoke alarm, clearly
    x[10:40, 1] = 0.55  # the same sound leaking into baby cry
    params = {"smoke_alarm": PLAIN, "baby_cry": PLAIN}
    names = ["smoke_alarm", "baby_cry"]
    assert [e.class_name for e in decide(x, names, params, HOP)] == ["smoke_alarm"]
    assert sorted(e.class_name for e in decide(x, names, params, HOP, arbitration_margin=None)) == [
        "baby_cry", "smoke_alarm"]
    # Both confidently present (a baby crying during an alarm): both are reported.
    x[10:40, 1] = 0.9
    assert len(decide(x, names, params, HOP)) == 2


@pytest.mark.parametrize("dating", ["none", "rise", "touch"])
def test_decisions_do_not_depend_on_block_size(dating: str) -> None:
    rng = np.random.default_rng(5)
    x = np.clip(np.repeat(rng.random((60, 2)), 10, axis=0) ** 2, 0, 1)
    params = {
        "a": DecisionParams(0.5, 0.3, 3, 3, 5, 0.1, 0.3, 0.5),
        "b": DecisionParams(0.6, 0.2, 5, 2, 4, 0.0, 1.0, 0.0),
    }
    if dating == "touch":  # runs of 4 frames, 5 of 5 to start: lone runs only touch
        x = np.clip(np.repeat(rng.random((150, 2)), 4, axis=0) ** 2, 0, 1)
        params = {k: replace(p, onset_k=p.onset_n) for k, p in params.items()}
    if dating != "none":  # rise and touch dating read smoothed scores from earlier blocks
        without = decide(x, ["a", "b"], params, HOP)
        dated = {"onset_rise_threshold": 0.1, "onset_rise_s": 0.6} if dating == "rise" else {"onset_touch_s": 0.6}
        params = {k: replace(p, **dated) for k, p in params.items()}
        assert decide(x, ["a", "b"], params, HOP) != without
    whole = decide(x, ["a", "b"], params, HOP)
    for block in (1, 7, 64):
        decider = EventDecider(["a", "b"], params, HOP)
        out = []
        for i in range(0, x.shape[0], block):
            out += decider.update(x[i : i + block])
        out += decider.flush()
        assert [d for d in out if isinstance(d, EventEnded)] == whole
    assert len(whole) > 3


def test_started_precedes_ended_and_flush_closes_open_events() -> None:
    decider = EventDecider(["a"], {"a": PLAIN}, HOP, frame_offset_s=0.016)
    out = decider.update(scores((0.0, 5), (0.9, 10)))
    assert [type(d) for d in out] == [EventStarted]
    assert out[0].start_s == pytest.approx(5 * HOP + 0.016)
    ended = decider.flush()
    assert [type(d) for d in ended] == [EventEnded]
    assert ended[0].end_s == pytest.approx(15 * HOP + 0.016)


def test_a_vetoed_class_does_not_start_and_can_be_ended_on_demand() -> None:
    allowed = {"a": False}
    decider = EventDecider(["a"], {"a": PLAIN}, HOP, is_allowed=lambda name: allowed[name])
    assert decider.update(scores((0.9, 10))) == []
    allowed["a"] = True
    assert [type(d) for d in decider.update(scores((0.0, 5), (0.9, 5)))] == [EventStarted]
    assert [type(d) for d in decider.end_class("a")] == [EventEnded]
    assert not decider.is_active("a")


def test_sensitivity_moves_both_thresholds_monotonically() -> None:
    base = DecisionParams(0.5, 0.3)
    assert base.with_sensitivity(0.5) == base
    more, less = base.with_sensitivity(0.9), base.with_sensitivity(0.1)
    assert more.on_threshold < base.on_threshold < less.on_threshold
    assert more.off_threshold < base.off_threshold < less.off_threshold
    assert more.off_threshold <= more.on_threshold
    # A touch level under the on-threshold moves with it; the default (the on-threshold) stays so.
    touching = replace(base, on_threshold=0.99, onset_touch_threshold=0.9)
    more_touch, less_touch = (touching.with_sensitivity(v).onset_touch_threshold for v in (0.9, 0.1))
    assert more_touch < 0.9 < less_touch
    assert base.with_sensitivity(0.9).onset_touch_threshold == 1.0
    with pytest.raises(ValueError, match="sensitivity"):
        base.with_sensitivity(1.5)


def test_nan_scores_count_as_silence_and_bad_shapes_are_refused() -> None:
    x = scores((0.0, 5), (0.9, 10), (0.0, 5))
    x[7] = np.nan
    assert len(run(x, merge_gap_s=0.1)) == 1
    decider = EventDecider(["a"], {"a": PLAIN}, HOP)
    with pytest.raises(ValueError, match=r"shape \(frames, 1\)"):
        decider.update(np.zeros((4, 2)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"on_threshold": 0.0}, "on_threshold"), ({"off_threshold": 0.6}, "off_threshold"),
     ({"onset_k": 6, "onset_n": 5}, "onset_k"), ({"merge_gap_s": -1}, "merge_gap_s"),
     ({"onset_rise_threshold": 1.5}, "onset_rise_threshold"), ({"onset_rise_s": -0.5}, "onset_rise_s"),
     ({"onset_touch_s": -0.5}, "onset_touch_s"), ({"onset_touch_threshold": 0.0}, "onset_touch_threshold"),
     ({"onset_advance_s": -0.1}, "onset_advance_s")],
)
def test_invalid_parameters_name_the_parameter(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecisionParams(**{**DecisionParams().to_dict(), **changes})
    with pytest.raises(ValueError, match="unknown decision parameter"):
        DecisionParams.from_dict({"threshold": 0.5})


def test_onset_lookback_dates_an_event_at_the_short_burst_before_it() -> None:
    # A 0.2 s sob (too short for the 0.4 s minimum), a 0.6 s breath, then 1 s of crying.
    x = scores((0.0, 50), (0.9, 10), (0.0, 30), (0.9, 50), (0.0, 50))
    plain = run(x, min_duration_s=0.4)
    assert [e.start_s for e in plain] == [pytest.approx(90 * HOP)]
    looked_back = run(x, min_duration_s=0.4, onset_lookback_s=1.0)
    assert [e.start_s for e in looked_back] == [pytest.approx(50 * HOP)]
    # Only the onset moves: the decision fires on the same frame, the event ends at the same one.
    assert looked_back[0].detected_s == plain[0].detected_s
    assert looked_back[0].end_s == plain[0].end_s


def test_onset_lookback_does_not_reach_past_its_window_or_make_events() -> None:
    x = scores((0.0, 50), (0.9, 10), (0.0, 30), (0.9, 50), (0.0, 50))
    # The sob ended 0.6 s before the crying: a 0.4 s look-back does not reach it.
    assert run(x, min_duration_s=0.4, onset_lookback_s=0.4)[0].start_s == pytest.approx(90 * HOP)
    # Short bursts alone never become an event, however far the look-back reaches.
    bursts = scores(*[(0.9, 10), (0.0, 10)] * 8)
    assert run(bursts, min_duration_s=0.4, onset_lookback_s=5.0) == []
    # The first event takes the burst before it; the next event does not reach back to it.
    two = scores((0.9, 5), (0.0, 5), (0.9, 30), (0.0, 5), (0.9, 30), (0.0, 20))
    events = run(two, min_duration_s=0.4, onset_lookback_s=1.0)
    assert [e.start_s for e in events] == [pytest.approx(0.0), pytest.approx(45 * HOP)]


def test_onset_lookback_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="onset_lookback_s"):
        DecisionParams(onset_lookback_s=-1.0)


def test_rise_dating_dates_an_event_where_its_score_began_to_climb() -> None:
    # 1 s of silence, 1 s climbing through 0.6, then 2 s of crying at 1.0 (on-threshold 0.99).
    x = scores((0.0, 50), (0.6, 50), (1.0, 100), (0.0, 50))
    plain = run(x, on_threshold=0.99, off_threshold=0.5)
    assert [e.start_s for e in plain] == [pytest.approx(100 * HOP)]
    risen = run(x, on_threshold=0.99, off_threshold=0.5, onset_rise_threshold=0.5, onset_rise_s=2.0)
    assert [e.start_s for e in risen] == [pytest.approx(50 * HOP)]
    # Only the onset moves: the decision fires on the same frame, the event ends at the same one.
    assert (risen[0].detected_s, risen[0].end_s) == (plain[0].detected_s, plain[0].end_s)
    # The reach bounds it, and a threshold above the climb leaves the onset where it was.
    short = run(x, on_threshold=0.99, off_threshold=0.5, onset_rise_threshold=0.5, onset_rise_s=0.4)
    assert short[0].start_s == pytest.approx(80 * HOP)
    high = run(x, on_threshold=0.99, off_threshold=0.5, onset_rise_threshold=0.7, onset_rise_s=2.0)
    assert high[0].start_s == pytest.approx(100 * HOP)


def test_rise_dating_never_reaches_into_the_previous_event_or_makes_events() -> None:
    # An event, 0.4 s of a score between the thresholds' rise and off levels, a second event.
    x = scores((1.0, 50), (0.45, 20), (1.0, 50), (0.0, 50))
    events = run(x, on_threshold=0.99, off_threshold=0.5, onset_rise_threshold=0.3, onset_rise_s=5.0)
    assert [e.start_s for e in events] == [pytest.approx(0.0), pytest.approx(50 * HOP)]
    assert events[1].start_s >= events[0].end_s
    # A long climb that never reaches the on-threshold reports nothing.
    assert run(scores((0.9, 300)), on_threshold=0.99, onset_rise_threshold=0.3, onset_rise_s=5.0) == []


def test_touch_dating_dates_a_cry_at_the_first_burst_that_touched_the_threshold() -> None:
    # 1 s of silence, a 0.1 s sob at 1.0 (too few frames for 10 of 24), 0.5 s of breath under
    # the off-threshold, then 2 s of crying: the k-of-n rule fires on the crying only.
    x = scores((0.0, 50), (1.0, 5), (0.2, 25), (1.0, 100), (0.0, 50))
    rule = {"on_threshold": 0.99, "off_threshold": 0.5, "onset_k": 10, "onset_n": 24}
    plain = run(x, **rule)
    assert [e.start_s for e in plain] == [pytest.approx(80 * HOP)]
    touched = run(x, **rule, onset_touch_s=1.0)
    assert [e.start_s for e in touched] == [pytest.approx(50 * HOP)]
    # Only the onset moves: the decision fires on the same frame, the event ends at the same one.
    assert (touched[0].detected_s, touched[0].end_s) == (plain[0].detected_s, plain[0].end_s)
    # The reach bounds it: the sob ended 0.5 s before the crying and began 0.6 s before it;
    # the onset is the earliest touch within reach.
    assert run(x, **rule, onset_touch_s=0.4)[0].start_s == pytest.approx(80 * HOP)
    assert run(x, **rule, onset_touch_s=0.58)[0].start_s == pytest.approx(51 * HOP)
    assert run(x, **rule, onset_touch_s=0.6)[0].start_s == pytest.approx(50 * HOP)
    # Neither the look-back (no candidate was made) nor rise dating (the breath breaks the
    # climb) reaches the sob.
    assert run(x, **rule, onset_lookback_s=3.0)[0].start_s == pytest.approx(80 * HOP)
    assert run(x, **rule, onset_rise_threshold=0.5, onset_rise_s=3.0)[0].start_s == pytest.approx(80 * HOP)


def test_touch_dating_at_a_level_under_the_on_threshold_reaches_a_burst_the_bed_held_down() -> None:
    # The first burst reaches 0.95 only (a bed masks it), the crying 1.0 after a breath.
    x = scores((0.0, 50), (0.95, 10), (0.2, 20), (1.0, 100), (0.0, 50))
    rule = {"on_threshold": 0.99, "off_threshold": 0.5, "onset_k": 10, "onset_n": 24, "onset_touch_s": 1.0}
    assert run(x, **rule)[0].start_s == pytest.approx(80 * HOP)  # the burst never touched 0.99
    lower = run(x, **rule, onset_touch_threshold=0.9)
    assert [e.start_s for e in lower] == [pytest.approx(50 * HOP)]
    assert (lower[0].detected_s, lower[0].end_s) == (run(x, **rule)[0].detected_s, run(x, **rule)[0].end_s)
    # A level above the on-threshold is the on-threshold: touch dating as before.
    assert run(x, **{**rule, "on_threshold": 0.9}, onset_touch_threshold=1.0)[0].start_s == pytest.approx(50 * HOP)
    # Bursts at the lower level alone report nothing: it dates events, it does not start them.
    assert run(scores((0.0, 20), (0.95, 200), (0.0, 20)), **rule, onset_touch_threshold=0.5) == []


def test_touch_dating_never_reaches_into_the_previous_event_or_makes_events() -> None:
    x = scores((1.0, 50), (0.0, 40), (1.0, 50), (0.0, 200))
    events = run(x, on_threshold=0.99, off_threshold=0.5, merge_gap_s=0.2, onset_touch_s=5.0)
    assert [e.start_s for e in events] == [pytest.approx(0.0), pytest.approx(90 * HOP)]
    # Touches alone, too short for any event, report nothing however far the reach.
    sobs = scores((0.0, 20), (1.0, 3), (0.0, 20), (1.0, 3), (0.0, 100))
    assert run(sobs, on_threshold=0.99, onset_k=10, onset_n=24, onset_touch_s=5.0) == []


def test_onset_advance_reports_the_dated_onset_earlier_and_moves_nothing_else() -> None:
    # A cry whose score touches the threshold 1 s in (the sobs before it masked by a bed).
    x = scores((0.0, 50), (1.0, 100), (0.0, 50))
    rule = {"on_threshold": 0.99, "off_threshold": 0.5, "onset_k": 10, "onset_n": 24, "merge_gap_s": 0.2}
    plain = run(x, **rule)
    advanced = run(x, **rule, onset_advance_s=0.4)
    assert [e.start_s for e in plain] == [pytest.approx(50 * HOP)]
    assert [e.start_s for e in advanced] == [pytest.approx(30 * HOP)]
    # What is decided, and when, is as without it: the same decision frame, end and score.
    assert [(e.detected_s, e.end_s, e.peak_score) for e in advanced] == [
        (e.detected_s, e.end_s, e.peak_score) for e in plain]
    # It applies after the dating rules: a touch-dated onset moves on from where touch put it.
    sob = scores((0.0, 50), (1.0, 5), (0.2, 25), (1.0, 100), (0.0, 50))
    dated = run(sob, **rule, onset_touch_s=1.0, onset_advance_s=0.4)
    assert [e.start_s for e in dated] == [pytest.approx(30 * HOP)]
    # The started event carries the same onset as the ended one (what the daemon publishes).
    decider = EventDecider(["a"], {"a": DecisionParams(**{**PLAIN.to_dict(), **rule, "onset_advance_s": 0.4})}, HOP)
    started = [d for d in decider.update(x) + decider.flush() if isinstance(d, EventStarted)]
    assert [d.start_s for d in started] == [pytest.approx(30 * HOP)]


def test_onset_advance_never_reaches_before_the_stream_or_into_the_previous_event() -> None:
    rule = {"on_threshold": 0.99, "off_threshold": 0.5, "merge_gap_s": 0.2}
    # An event 0.2 s into the stream, advanced by 1 s: it starts at the stream's first frame.
    early = run(scores((0.0, 10), (1.0, 50), (0.0, 50)), **rule, onset_advance_s=1.0)
    assert [e.start_s for e in early] == [pytest.approx(0.0)]
    # Two events 0.4 s apart: the second starts no earlier than the first ended.
    x = scores((1.0, 50), (0.0, 20), (1.0, 50), (0.0, 200))
    plain = run(x, **rule)
    events = run(x, **rule, onset_advance_s=3.0)
    assert len(events) == len(plain) == 2
    assert events[1].start_s == pytest.approx(plain[0].end_s)
    assert events[1].start_s >= events[0].end_s
    # With a cooldown, not before the cooldown's end either.
    cooled = run(x, **rule, cooldown_s=0.1, onset_advance_s=3.0)
    assert cooled[1].start_s == pytest.approx(plain[0].end_s + 0.1)


class _FrameByFrame(EventDecider):
    """The decider without its bulk path: every non-idle frame goes through `_step`."""

    def _steady_frames(self, first_frame: int, smoothed: np.ndarray, above_on: np.ndarray, look: int = 256) -> int:
        return 0


@pytest.mark.parametrize("seed", range(6))
def test_frames_taken_in_bulk_decide_exactly_as_frame_by_frame(seed: int) -> None:
    """Inside events and their gaps the decider takes runs of frames at once (`_hold`); the
    decisions, their times and scores must be those of stepping every frame, for any
    parameters and any block sizes."""
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    deciding = 0
    for case in range(40):
        frames = int(rng.integers(50, 2500))
        scores = np.zeros((frames, 3))
        for c in range(3):
            for _ in range(int(rng.integers(0, 8))):
                start = int(rng.integers(0, frames))
                scores[start : start + int(rng.integers(1, 400)), c] = rng.uniform(0.3, 1.0)
        scores = np.clip(scores + rng.normal(0, rng.uniform(0, 0.3), scores.shape), 0, 1)
        params = {}
        for name in classes:
            on = float(rng.choice([0.5, 0.7, 0.9, 0.99]))
            n = int(rng.integers(1, 20))
            params[name] = DecisionParams(
                on_threshold=on, off_threshold=on * float(rng.uniform(0.3, 1.0)),
                smoothing_frames=int(rng.integers(1, 8)), onset_k=int(rng.integers(1, n + 1)), onset_n=n,
                min_duration_s=float(rng.choice([0.0, 0.1, 0.5])),
                merge_gap_s=float(rng.choice([0.0, 0.02, 0.05, 0.3, 1.0, 3.0])),
                cooldown_s=float(rng.choice([0.0, 0.5, 2.0])), onset_lookback_s=float(rng.choice([0.0, 3.0])),
                onset_rise_threshold=on * float(rng.uniform(0.2, 0.9)), onset_rise_s=float(rng.choice([0.0, 1.0])),
                onset_touch_s=float(rng.choice([0.0, 2.0])), onset_touch_threshold=float(rng.choice([1.0, 0.6])),
                onset_advance_s=float(rng.choice([0.0, 0.4])),
            )
        blocks = [frames] if case % 3 == 0 else [int(b) for b in rng.integers(1, 200, size=frames)]
        found = []
        for kind in (EventDecider, _FrameByFrame):
            decider = kind(classes, params, hop_s=0.02, arbitration_margin=[None, 0.3][case % 2])
            out, at = [], 0
            for size in blocks:
                if at >= frames:
                    break
                out += decider.update(scores[at : at + size])
                at += size
            found.append(out + decider.flush())
        assert found[0] == found[1], f"case {case}"
        deciding += bool(found[0])
    assert deciding >= 30  # the streams hold events: the comparison is not of empty lists
