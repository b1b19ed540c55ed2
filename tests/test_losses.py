"""Each event-aware loss term on hand-made score sequences."""

from __future__ import annotations

import pytest

from tests.conftest import require_module

torch = require_module("torch", "the [train] extra (torch)")

from models.data import CLASSES  # noqa: E402
from models.losses import (  # noqa: E402
    EventAwareLoss,
    LossConfig,
    cross_trigger_loss,
    frame_bce_loss,
    non_target_loss,
    pool_scores,
    pooled_event_loss,
    smoothness_loss,
)


def logit(p: torch.Tensor | list[float]) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def track(values: list[float], n_classes: int = 1) -> torch.Tensor:
    """(1, T, n_classes) logits with `values` as scores of class 0, others at 0.01."""
    z = logit([0.01] * len(values))[None, :, None].repeat(1, 1, n_classes)
    z[0, :, 0] = logit(values)
    return z


def test_non_target_penalises_scores_outside_events_only() -> None:
    target = torch.zeros(1, 6, 1)
    target[0, 3:, 0] = 1
    weight = torch.ones(1, 6, 1)
    quiet = non_target_loss(track([0.05] * 3 + [0.9] * 3), target, weight)
    false_alarm = non_target_loss(track([0.9] * 3 + [0.9] * 3), target, weight)
    assert false_alarm > 10 * quiet
    # Frames inside an event are not the term's business, whatever their score.
    assert non_target_loss(track([0.05] * 3 + [0.01] * 3), target, weight) == pytest.approx(
        float(quiet), rel=1e-4
    )
    # Frames whose label is unknown (weight 0) do not count.
    unknown = weight.clone()
    unknown[0, :3, 0] = 0
    assert non_target_loss(track([0.9] * 6), target, unknown) == pytest.approx(0.0)


def test_pooling_tolerates_gaps_that_frame_loss_punishes() -> None:
    # A T3-like event: confident half the time, silent in the gaps.
    gappy = [0.95] * 5 + [0.02] * 5
    gappy = gappy * 3
    events = [(0, 0, 0, len(gappy), 1.0)]
    pooled = pooled_event_loss(track(gappy), events)
    target = torch.ones(1, len(gappy), 1)
    frame_wise = frame_bce_loss(track(gappy), target, torch.ones_like(target))
    assert pooled < 0.35 < frame_wise
    # Missing the event entirely is expensive; fully on is nearly free.
    missed = pooled_event_loss(track([0.02] * len(gappy)), events)
    steady = pooled_event_loss(track([0.95] * len(gappy)), events)
    assert steady < pooled < missed
    assert missed > 2.0


@pytest.mark.parametrize("kind", ["genmean", "lse", "topk"])
def test_every_pooling_is_a_probability_between_mean_and_max(kind: str) -> None:
    scores = torch.tensor([0.9, 0.1, 0.8, 0.05, 0.7, 0.02])
    pooled = float(pool_scores(logit(scores), kind))
    assert 0.0 < pooled < 1.0
    assert float(scores.mean()) - 0.05 <= pooled <= float(scores.max()) + 1e-6
    # Vectorised and per-event paths agree.
    vec = pooled_event_loss(logit(scores)[None, :, None], [(0, 0, 0, 6, 1.0)], kind)
    assert float(vec) == pytest.approx(-torch.log(torch.tensor(pooled)).item(), rel=1e-4)


def test_pooled_loss_ignores_frames_outside_the_event_and_weights_events() -> None:
    z = track([0.01] * 5 + [0.9] * 5 + [0.01] * 5)
    inside = pooled_event_loss(z, [(0, 0, 5, 10, 1.0)])
    around = pooled_event_loss(z, [(0, 0, 0, 15, 1.0)])
    assert inside < 0.15 < around
    weak_miss = pooled_event_loss(z, [(0, 0, 5, 10, 1.0), (0, 0, 0, 5, 0.1)])
    strong_miss = pooled_event_loss(z, [(0, 0, 5, 10, 1.0), (0, 0, 0, 5, 1.0)])
    assert weak_miss < strong_miss


def test_flickering_costs_more_than_steady_and_one_clean_onset() -> None:
    steady_on = smoothness_loss(track([0.9] * 20))
    one_onset = smoothness_loss(track([0.05] * 10 + [0.9] * 10))
    flicker = smoothness_loss(track([0.05, 0.9] * 10))
    assert steady_on == pytest.approx(0.0, abs=1e-6)
    assert steady_on < one_onset < flicker
    assert flicker > 10 * one_onset


def test_cross_trigger_uses_the_class_by_class_matrix() -> None:
    # Class 0 (baby_cry) is labelled everywhere; class 1 (smoke_alarm) leaks 0.8 into it.
    z = logit(torch.tensor([[0.9, 0.8, 0.01]]).repeat(10, 1))[None]
    target = torch.zeros(1, 10, 3)
    target[0, :, 0] = 1
    weight = torch.ones_like(target)
    zero = torch.zeros(3, 3)
    m1 = torch.zeros(3, 3)
    m1[0, 1] = 1.0
    m2 = m1 * 2
    assert cross_trigger_loss(z, target, weight, zero) == pytest.approx(0.0)
    one = float(cross_trigger_loss(z, target, weight, m1))
    assert one == pytest.approx(-torch.log(torch.tensor(0.2)).item(), rel=1e-3)
    assert float(cross_trigger_loss(z, target, weight, m2)) == pytest.approx(2 * one, rel=1e-5)
    # No cross-trigger when the other class is labelled too (overlapping events).
    both = target.clone()
    both[0, :, 1] = 1
    assert cross_trigger_loss(z, both, weight, m1) == pytest.approx(0.0)


def test_switches_turn_terms_off_and_bce_is_the_baseline() -> None:
    z = track([0.05, 0.9] * 5, n_classes=3)
    target = torch.zeros(1, 10, 3)
    target[0, 4:, 0] = 1
    weight = torch.ones_like(target)
    events = [(0, 0, 4, 10, 1.0)]
    _, parts = EventAwareLoss(LossConfig(), CLASSES)(z, target, weight, events)
    assert set(parts) == {"non_target", "pooled", "smooth", "cross"}
    _, parts = EventAwareLoss(LossConfig(smooth=0.0, cross=0.0), CLASSES)(z, target, weight, events)
    assert set(parts) == {"non_target", "pooled"}
    total, parts = EventAwareLoss(LossConfig(kind="bce"), CLASSES)(z, target, weight, events)
    assert set(parts) == {"bce"} and float(total) > 0
    with pytest.raises(ValueError, match="cross_matrix must be 3x3"):
        EventAwareLoss(LossConfig(cross_matrix=[[0.0]]), CLASSES)
    with pytest.raises(ValueError, match=r"loss\.kind"):
        LossConfig(kind="focal")


def test_class_weights_scale_each_class_part_and_renormalise_nothing() -> None:
    """A class weighted 0 drops out of every class-wise term; the classes kept have
    exactly the parts the unweighted loss gives them (a member trained for cries alone)."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 40, 3, generator=gen) * 2
    target = torch.zeros(2, 40, 3)
    target[0, 5:20, 0] = 1  # a cry
    target[1, 10:30, 1] = 1  # an alarm
    target[1, 30:35, 2] = 1  # a glass break
    weight = torch.ones_like(target)
    events = [(0, 0, 5, 20, 1.0), (1, 1, 10, 30, 1.0), (1, 2, 30, 35, 1.0)]
    cfg = dict(onset=1.0, onset_frames=4)
    full = EventAwareLoss(LossConfig(**cfg), CLASSES)
    cries = EventAwareLoss(LossConfig(**cfg, class_weights={"smoke_alarm": 0.0, "glass_break": 0.0}), CLASSES)
    _, full_parts = full(z, target, weight, events)
    _, cry_parts = cries(z, target, weight, events)
    # The cry's own part of each term, computed by hand from the unweighted functions.
    only_cry = torch.tensor([1.0, 0.0, 0.0])
    denominator_nt = ((target < 0.5) & (weight > 0)).sum()
    cry_non_target = (torch.nn.functional.softplus(z[..., 0]) * (target[..., 0] < 0.5)).sum() / denominator_nt
    assert cry_parts["non_target"] == pytest.approx(LossConfig().non_target * float(cry_non_target), rel=1e-5)
    assert cry_parts["pooled"] == pytest.approx(
        float(pooled_event_loss(z, events[:1])) / 3.0, rel=1e-5
    )  # one event of three, the denominator still the three events' weights
    assert cry_parts["smooth"] == pytest.approx(
        LossConfig().smooth * float(smoothness_loss(z[..., :1])) / 3.0, rel=1e-5
    )
    assert cry_parts["cross"] == pytest.approx(
        float(cross_trigger_loss(z, target, weight, full.matrix, only_cry)), rel=1e-6
    )
    for name in full_parts:
        assert cry_parts[name] < full_parts[name]
    # Gradients reach only the cry's scores.
    z_grad = z.clone().requires_grad_(True)
    total, _ = cries(z_grad, target, weight, events)
    total.backward()
    assert float(z_grad.grad[..., 1:].abs().max()) == 0.0
    assert float(z_grad.grad[..., 0].abs().max()) > 0.0
    # Weights of 1 are the plain loss.
    ones = EventAwareLoss(LossConfig(**cfg, class_weights={"baby_cry": 1.0}), CLASSES)
    assert float(ones(z, target, weight, events)[0]) == pytest.approx(float(full(z, target, weight, events)[0]))
    with pytest.raises(ValueError, match=r"unknown classes \['dog'\]"):
        EventAwareLoss(LossConfig(class_weights={"dog": 1.0}), CLASSES)
    with pytest.raises(ValueError, match="leave no class to learn"):
        EventAwareLoss(LossConfig(class_weights={name: 0.0 for name in CLASSES}), CLASSES)
    with pytest.raises(ValueError, match=r"class_weights must be >= 0"):
        LossConfig(class_weights={"baby_cry": -1.0})


def test_geometric_pooling_asks_every_frame_of_the_opening_to_be_confident() -> None:
    # A cry that opens with sobs the network answers weakly, then the long confident cry.
    late = [0.05] * 6 + [0.95] * 6
    steady = [0.9] * 12
    events = [(0, 0, 0, 12, 1.0)]
    gen = {kind: float(pooled_event_loss(track(late), events, kind)) for kind in ("genmean", "geomean")}
    # The generalised mean (r = 3) is content with half the frames confident; the
    # geometric mean costs the weak opening nearly as much as frame-wise cross-entropy.
    assert gen["genmean"] < 0.5 < 1.0 < gen["geomean"]
    target = torch.ones(1, 12, 1)
    assert gen["geomean"] == pytest.approx(
        float(frame_bce_loss(track(late), target, torch.ones_like(target))), rel=1e-4
    )
    assert float(pooled_event_loss(track(steady), events, "geomean")) < 0.15
    # Its gradient reaches the weak frames, where the generalised mean's hardly does.
    for kind, weak_share in (("genmean", 0.1), ("geomean", 0.5)):
        z = track(late).requires_grad_(True)
        pooled_event_loss(z, events, kind).backward()
        grad = z.grad[0, :, 0].abs()
        share = float(grad[:6].sum() / grad.sum())
        assert (share < weak_share) if kind == "genmean" else (share > weak_share)
    # Vectorised and per-event paths agree; the pooled value is the scores' geometric mean.
    scores = torch.tensor([0.9, 0.1, 0.8, 0.05, 0.7, 0.02])
    pooled = float(pool_scores(logit(scores), "geomean"))
    assert pooled == pytest.approx(float(torch.exp(torch.log(scores).mean())), rel=1e-4)
    vec = pooled_event_loss(logit(scores)[None, :, None], [(0, 0, 0, 6, 1.0)], "geomean")
    assert float(vec) == pytest.approx(-torch.log(torch.tensor(pooled)).item(), rel=1e-4)


def test_the_onset_term_pools_its_own_way_when_asked() -> None:
    z = track([0.05] * 6 + [0.95] * 14)
    target = torch.zeros(1, 20, 1)
    target[0, :, 0] = 1
    weight = torch.ones_like(target)
    events = [(0, 0, 0, 20, 1.0)]
    names = CLASSES[:1]
    base = dict(non_target=0.0, smooth=0.0, cross=0.0, cross_matrix=[[0.0]], onset=1.0, onset_frames=12)
    _, same = EventAwareLoss(LossConfig(**base), names)(z, target, weight, events)
    _, geo = EventAwareLoss(LossConfig(**base, onset_pooling="geomean"), names)(z, target, weight, events)
    _, plain = EventAwareLoss(LossConfig(**base, onset_pooling_r=1.0), names)(z, target, weight, events)
    heads = [(0, 0, 0, 12, 1.0)]
    assert same["onset"] == pytest.approx(float(pooled_event_loss(z, heads, "genmean", 3.0)), rel=1e-5)
    assert geo["onset"] == pytest.approx(float(pooled_event_loss(z, heads, "geomean")), rel=1e-5)
    assert plain["onset"] == pytest.approx(float(pooled_event_loss(z, heads, "genmean", 1.0)), rel=1e-5)
    assert same["onset"] < plain["onset"] < geo["onset"]
    # The pooled term (the whole event) keeps its own pooling.
    assert same["pooled"] == geo["pooled"] == plain["pooled"]
    for bad, match in (
        (dict(onset_pooling="median"), r"loss.onset_pooling must be one of genmean, lse, topk, geomean, got 'median'"),
        (dict(onset_pooling_r=0.0), r"loss.onset_pooling_r must be > 0, got 0.0"),
        (dict(onset_frames=0), r"loss.onset_frames must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=match):
            LossConfig(**bad)
