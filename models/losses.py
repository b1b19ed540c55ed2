"""The event-aware loss and the frame-wise baseline.

Scores are per-frame, per-class logits `z` (B, T, C) with sigmoid scores `s`. Labels:

* `target` (B, T, C) in {0, 1}: 1 inside a labelled event of that class;
* `weight` (B, T, C) >= 0: frame-wise weight, 0 where the frame label is unknown
  (weak clips carry a reduced weight);
* `events`: (batch index, class index, first frame, end frame, weight) per labelled event.

The event-aware loss has four switchable, weighted terms (see DESIGN.md):

1. **non-target**: frames outside every event of class c penalise class c's score,
   `-log(1 - s)` (false positives);
2. **event-pooled**: each event's scores are pooled over its frames and `-log(pool)`
   is penalised, so *enough* confident frames across the event suffice;
3. **smoothness**: the mean absolute change of scores between neighbouring frames
   (total variation), so that steady scores cost nothing and flicker costs per change;
4. **cross-trigger**: frames of target class a penalise the score of another target
   class b with weight `cross_matrix[a][b]`, on top of the non-target term.

Pooling (term 2) can be `genmean` (generalised mean of scores with exponent r), `lse`
(log-mean-exp of logits with temperature tau) or `topk` (mean of the top k fraction).
We use the generalised mean by default: the gradient reaches every frame of the event in
proportion to s^(r-1), so confident frames carry the event while pauses (breaths, the
gaps of a T3 alarm) cost little; hard top-k sends gradient only to k frames and
log-mean-exp of logits lets one very confident frame hide a silent rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

EventSpan = tuple[int, int, int, int, float]  # (batch, class, first frame, end frame, weight)


def _neg_log_not(logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(z)), numerically stable."""
    return F.softplus(logits)


def _per_class(values: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """`values` (..., C) scaled by each class's weight; unchanged when there are none."""
    return values if class_weights is None else values * class_weights.to(values.dtype)


def non_target_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean -log(1 - s) over frames that are known not to belong to the class
    (`class_weights` scales each class's part; the mean's denominator stays)."""
    mask = (target < 0.5).to(logits.dtype) * (weight > 0).to(logits.dtype)
    return _per_class(_neg_log_not(logits) * mask, class_weights).sum() / mask.sum().clamp_min(1.0)


#: How an event's frame scores become one probability. genmean: (mean s^r)^(1/r), near the
#: maximum for large r, so a few confident frames go far; lse: a soft maximum of the
#: logits; topk: the mean of the top k_frac of frames; geomean: exp(mean log s), the
#: geometric mean, which every frame must be confident to satisfy (its loss is the frames'
#: mean -log s, frame-wise cross-entropy over the event).
POOLINGS = ("genmean", "lse", "topk", "geomean")


def pool_scores(
    logits: torch.Tensor,
    kind: str = "genmean",
    r: float = 3.0,
    tau: float = 1.0,
    k_frac: float = 0.3,
) -> torch.Tensor:
    """Pool one event's logits (frames,) into a probability in (0, 1)."""
    if kind == "genmean":
        # log of (mean s^r)^(1/r), computed in log space for stability.
        log_s = F.logsigmoid(logits)
        n = torch.tensor(float(logits.shape[0]), dtype=logits.dtype)
        return torch.exp((torch.logsumexp(r * log_s, dim=0) - torch.log(n)) / r)
    if kind == "lse":
        n = torch.tensor(float(logits.shape[0]), dtype=logits.dtype)
        return torch.sigmoid(tau * (torch.logsumexp(logits / tau, dim=0) - torch.log(n)))
    if kind == "topk":
        k = max(1, round(k_frac * logits.shape[0]))
        return torch.sigmoid(logits).topk(k).values.mean()
    if kind == "geomean":
        return torch.exp(F.logsigmoid(logits).mean())
    raise ValueError(f"unknown pooling {kind!r}: use {', '.join(POOLINGS)}")


def pooled_event_loss(
    logits: torch.Tensor,
    events: Sequence[EventSpan],
    kind: str = "genmean",
    r: float = 3.0,
    tau: float = 1.0,
    k_frac: float = 0.3,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean of -log(pooled score) over labelled events.

    `class_weights` (C,) scales each event's part by its class's weight and keeps the
    denominator (the events' own weights), so a class weighted 0 drops out and the others
    keep exactly the part they had."""
    if not events:
        return logits.sum() * 0.0
    w_t = torch.tensor([ev[4] for ev in events], dtype=logits.dtype)
    denominator = w_t.sum().clamp_min(1e-6)
    if class_weights is not None:
        w_t = w_t * class_weights.to(logits.dtype)[torch.tensor([ev[1] for ev in events])]
    if kind == "topk":  # variable k per event: a loop, used only when asked for
        losses = [
            -torch.log(pool_scores(logits[b, f:e, c], kind, r, tau, k_frac).clamp_min(1e-6))
            for b, c, f, e, _ in events
        ]
        return (torch.stack(losses) * w_t).sum() / denominator
    # Vectorised over events: gather each event's class track and mask its frames.
    idx = torch.tensor([(b, c) for b, c, _, _, _ in events], dtype=torch.long)
    tracks = logits[idx[:, 0], :, idx[:, 1]]  # (E, T)
    frames = torch.arange(logits.shape[1])
    first = torch.tensor([ev[2] for ev in events])[:, None]
    end = torch.tensor([ev[3] for ev in events])[:, None]
    inside = (frames[None, :] >= first) & (frames[None, :] < end)  # (E, T)
    n_inside = inside.sum(dim=1).clamp_min(1).to(logits.dtype)
    log_n = torch.log(n_inside)
    neg_inf = torch.finfo(logits.dtype).min
    if kind == "genmean":
        log_pool = (
            torch.logsumexp((r * F.logsigmoid(tracks)).masked_fill(~inside, neg_inf), dim=1) - log_n
        ) / r
        nll = -log_pool.clamp_max(0.0)
    elif kind == "lse":
        pooled_logit = tau * (
            torch.logsumexp((tracks / tau).masked_fill(~inside, neg_inf), dim=1) - log_n
        )
        nll = F.softplus(-pooled_logit)  # -log(sigmoid(pooled_logit))
    elif kind == "geomean":
        nll = -(F.logsigmoid(tracks) * inside.to(logits.dtype)).sum(dim=1) / n_inside
    else:
        raise ValueError(f"unknown pooling {kind!r}: use {', '.join(POOLINGS)}")
    return (nll.clamp_max(-np.log(1e-6)) * w_t).sum() / denominator


def smoothness_loss(logits: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute score change between neighbouring frames (total variation)."""
    if logits.shape[1] < 2:
        return logits.sum() * 0.0
    s = torch.sigmoid(logits)
    return _per_class((s[:, 1:] - s[:, :-1]).abs(), class_weights).mean()


def cross_trigger_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    matrix: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frames of class a penalise class b's score by matrix[a, b] * -log(1 - s_b).

    Only frames where class b is not itself labelled count (overlapping events are fine).
    Normalised by the number of target frames, so it does not grow with event count.
    """
    tgt = target * (weight > 0).to(target.dtype)  # (B, T, C): labelled frames of each class
    # Per frame and class b: sum over a of tgt[a] * matrix[a, b].
    per_b = torch.einsum("bta,ac->btc", tgt, matrix.to(logits.dtype))
    per_b = per_b * (target < 0.5).to(logits.dtype)
    n = tgt.amax(dim=2).sum().clamp_min(1.0)
    return _per_class(per_b * _neg_log_not(logits), class_weights).sum() / n


def frame_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frame-wise binary cross-entropy (the baseline), weighted and masked by `weight`."""
    raw = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return _per_class(raw * weight, class_weights).sum() / (weight > 0).to(logits.dtype).sum().clamp_min(1.0)


@dataclass
class LossConfig:
    """The `loss:` section of a training config."""

    kind: str = "event"  # event | bce
    non_target: float = 2.0
    pooled: float = 1.0
    smooth: float = 0.5
    cross: float = 1.0
    #: Onset term: the first `onset_frames` of each event whose start is in the crop are
    #: pooled like term 2, so that events are decided near their labelled start (the
    #: pooled term alone lets the confident frames drift later into a cry).
    onset: float = 0.0
    onset_frames: int = 20
    #: The onset term's own pooling (None: `pooling` and `pooling_r`, as term 2). A cry's
    #: opening sobs are answered late when a few confident frames satisfy the generalised
    #: mean; "geomean" asks every frame of the opening to be confident (thirty-first round).
    onset_pooling: str | None = None
    onset_pooling_r: float | None = None
    #: Teacher term (models/teacher.py): a training-only head on the temporal features
    #: learns YAMNet's scores of the background; needs `harken train --teacher`.
    teacher: float = 0.0
    #: What the teacher head learns: "scores" (YAMNet's AudioSet class scores present in
    #: the negatives, binary cross-entropy) or "embedding" (its 1024-d embedding reduced to
    #: the `teacher_dims` leading principal components of the negatives, each standardised,
    #: mean squared error): a denser description of what the background is.
    teacher_kind: str = "scores"
    teacher_dims: int = 64
    #: The backgrounds whose teacher rows the head learns: "negatives" (plain stretches of
    #: the Debian negatives pool) and "confusers" (beds laid from the household confuser
    #: clips, where the false cries come from; their rows are scored per clip and laid as
    #: the clips are, `teacher.ClipTeacher`). Mixed beds, quiet rooms and beds with a mined
    #: window never carry the teacher.
    teacher_beds: list[str] = field(default_factory=lambda: ["negatives"])
    #: Weight of each confuser-bed frame in the teacher term beside 1 for a pool frame (the
    #: term stays a weighted mean). The confuser clips' embedding rows lie outside the pool's
    #: spread (mean square 2.99 in its standardised components against 1.0, forty-third
    #: round), so at 1 each confuser frame pulls about three times as hard as a pool frame.
    teacher_confuser_weight: float = 1.0
    #: Fine-tuning with `--init` and a teacher term: the teacher head is not in the exported
    #: model the run starts from, so a fresh head would first pull the trained network
    #: towards a random projection. With N > 0 the head is fitted to the starting network
    #: first, by ridge regression over N batches of training scenes, and the term then
    #: holds the network near what it knew (fourteenth round); the fit weighs each frame as
    #: the term does (`teacher_confuser_weight`). 0: a random head, as before.
    teacher_head_fit_batches: int = 0
    #: Distillation term: binary cross-entropy of the network's own logits against a
    #: harken model's scores of the same scenes (an ensemble distilled into one network of
    #: the ensemble's members' size); needs `harken train --distil-from MODEL.onnx`.
    distil: float = 0.0
    #: The classes whose scores the distillation term learns (None: all). [smoke_alarm]:
    #: keep an ensemble's alarm while the labels and mined windows move the rest.
    distil_classes: list[str] | None = None
    #: Weight of the frames the distilled model scores above 0.5 (its positives), beside 1
    #: for every other frame. Alarm frames are a few percent of the scenes, so a plain mean
    #: keeps the elder's silence on music and not its confidence on a real bell (run S3D:
    #: median 0.92 on a fire-alarm bell, under the 0.99 threshold); 1.0: a plain mean.
    distil_positive: float = 1.0
    #: Per-class weight of every class-wise part of the loss (non-target, pooled, onset,
    #: smoothness, cross-trigger by the penalised class, bce), by class name; classes not
    #: named keep 1. {smoke_alarm: 0, glass_break: 0}: a member trained for cries alone,
    #: whose cry parts are exactly those of the full loss (no renormalisation), for a join
    #: that takes only its cries (`harken export --member-weights`).
    class_weights: dict[str, float] | None = None
    pooling: str = "genmean"
    pooling_r: float = 3.0
    pooling_tau: float = 1.0
    pooling_k_frac: float = 0.3
    #: cross_matrix[a][b]: extra weight when class a's frames raise class b's score.
    cross_matrix: list[list[float]] = field(
        default_factory=lambda: [[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    )

    def __post_init__(self) -> None:
        if self.kind not in ("event", "bce"):
            raise ValueError(f"loss.kind must be 'event' or 'bce', got {self.kind!r}")
        for name in ("pooling", "onset_pooling"):
            kind = getattr(self, name)
            if kind is not None and kind not in POOLINGS:
                raise ValueError(f"loss.{name} must be one of {', '.join(POOLINGS)}, got {kind!r}")
        for name in ("pooling_r", "onset_pooling_r"):
            r = getattr(self, name)
            if r is not None and not r > 0:
                raise ValueError(f"loss.{name} must be > 0, got {r}")
        if self.onset_frames < 1:
            raise ValueError(f"loss.onset_frames must be >= 1, got {self.onset_frames}")
        if self.teacher_kind not in ("scores", "embedding"):
            raise ValueError(f"loss.teacher_kind must be 'scores' or 'embedding', got {self.teacher_kind!r}")
        if self.teacher_dims < 1:
            raise ValueError(f"loss.teacher_dims must be >= 1, got {self.teacher_dims}")
        unknown_beds = sorted(set(self.teacher_beds) - {"negatives", "confusers"})
        if unknown_beds or not self.teacher_beds:
            raise ValueError(f"loss.teacher_beds: a list of 'negatives' and 'confusers', got {self.teacher_beds}")
        if not self.teacher_confuser_weight > 0:
            raise ValueError(f"loss.teacher_confuser_weight must be > 0, got {self.teacher_confuser_weight}")
        if self.teacher_head_fit_batches < 0:
            raise ValueError(f"loss.teacher_head_fit_batches must be >= 0, got {self.teacher_head_fit_batches}")
        for name in ("non_target", "pooled", "smooth", "cross", "onset", "teacher", "distil"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.class_weights is not None:
            negative = {name: w for name, w in self.class_weights.items() if not w >= 0}
            if negative:
                raise ValueError(f"loss.class_weights must be >= 0, got {negative}")
        if self.distil_positive < 1.0:
            raise ValueError(
                f"loss.distil_positive must be >= 1 (a weight beside 1 for other frames), got {self.distil_positive}"
            )


class EventAwareLoss:
    """The configured loss; returns the total and its named parts (for logging)."""

    def __init__(self, cfg: LossConfig, class_names: Sequence[str]) -> None:
        self.cfg = cfg
        n_classes = len(class_names)
        matrix = torch.tensor(cfg.cross_matrix, dtype=torch.float32)
        if matrix.shape != (n_classes, n_classes):
            raise ValueError(
                f"loss.cross_matrix must be {n_classes}x{n_classes}, got {tuple(matrix.shape)}"
            )
        self.matrix = matrix
        self.class_weights: torch.Tensor | None = None
        if cfg.class_weights is not None:
            unknown = sorted(set(cfg.class_weights) - set(class_names))
            if unknown:
                raise ValueError(f"loss.class_weights names unknown classes {unknown} (classes: {list(class_names)})")
            self.class_weights = torch.tensor([float(cfg.class_weights.get(name, 1.0)) for name in class_names])
            if not bool((self.class_weights > 0).any()):
                raise ValueError(f"loss.class_weights leave no class to learn: {cfg.class_weights}")

    def __call__(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        events: Sequence[EventSpan],
        onset_events: Sequence[EventSpan] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`onset_events`: the events whose labelled start lies inside the crop (default:
        all of `events`); only they feed the onset term."""
        cfg, cw = self.cfg, self.class_weights
        if cfg.kind == "bce":
            loss = frame_bce_loss(logits, target, weight, cw)
            return loss, {"bce": float(loss.detach())}
        parts: dict[str, torch.Tensor] = {}
        if cfg.non_target > 0:
            parts["non_target"] = cfg.non_target * non_target_loss(logits, target, weight, cw)
        if cfg.pooled > 0:
            parts["pooled"] = cfg.pooled * pooled_event_loss(
                logits, events, cfg.pooling, cfg.pooling_r, cfg.pooling_tau, cfg.pooling_k_frac, cw
            )
        if cfg.onset > 0:
            heads = [
                (b, c, f, min(e, f + cfg.onset_frames), w)
                for b, c, f, e, w in (events if onset_events is None else onset_events)
            ]
            parts["onset"] = cfg.onset * pooled_event_loss(
                logits,
                heads,
                cfg.onset_pooling or cfg.pooling,
                cfg.pooling_r if cfg.onset_pooling_r is None else cfg.onset_pooling_r,
                cfg.pooling_tau,
                cfg.pooling_k_frac,
                cw,
            )
        if cfg.smooth > 0:
            parts["smooth"] = cfg.smooth * smoothness_loss(logits, cw)
        if cfg.cross > 0:
            parts["cross"] = cfg.cross * cross_trigger_loss(logits, target, weight, self.matrix, cw)
        total = sum(parts.values(), logits.sum() * 0.0)
        return total, {k: float(v.detach()) for k, v in parts.items()}


def teacher_loss(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a teacher head's logits (B, T, K) against the teacher's
    scores (B, T, K), over the frames where `mask` (B, T) says the teacher's scores hold
    (a float mask weighs each frame: the weighted mean)."""
    m = mask.to(logits.dtype)[..., None]
    bce = F.binary_cross_entropy_with_logits(logits, teacher, reduction="none")
    return (bce * m).sum() / (m.sum() * logits.shape[-1]).clamp_min(1.0)


def teacher_embedding_loss(pred: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a teacher head's output (B, T, K) against the teacher's
    standardised embedding components (B, T, K), over the frames `mask` (B, T) marks (a
    float mask weighs each frame: the weighted mean)."""
    m = mask.to(pred.dtype)[..., None]
    return (((pred - teacher) ** 2) * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


def distil_loss(
    logits: torch.Tensor,
    scores: torch.Tensor,
    classes: Sequence[int] | None = None,
    positive_weight: float = 1.0,
) -> torch.Tensor:
    """Binary cross-entropy of the network's logits (B, T, C) against another harken
    model's scores (B, T, C) of the same frames, over every frame and the class indices
    `classes` (None: all). Frames the other model scores above 0.5 weigh `positive_weight`,
    the others 1; the sum is divided by the number of terms, so every other frame keeps
    the weight a plain mean gives it."""
    if classes is not None:
        index = torch.as_tensor(list(classes), dtype=torch.long)
        logits, scores = logits.index_select(-1, index), scores.index_select(-1, index)
    bce = F.binary_cross_entropy_with_logits(logits, scores, reduction="none")
    if positive_weight != 1.0:
        bce = bce * torch.where(scores > 0.5, positive_weight, 1.0)
    return bce.mean()
