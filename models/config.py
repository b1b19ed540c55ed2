"""Training recipes: the typed config tree read from YAML, and the network it builds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from models import data as D
from models.live_scenes import LiveSceneConfig
from models.losses import LossConfig
from models.net import CompactTCN, FreqConvTCN
from service.audio.features import FeatureParams
from service.decision import DecisionParams

log = logging.getLogger(__name__)

CLASSES = D.CLASSES

DEFAULT_DECISIONS: dict[str, DecisionParams] = {
    # Alarms pause up to 5 s between T4 groups: one alarm, one event.
    "baby_cry": DecisionParams(0.5, 0.3, 5, 5, 8, 0.5, 3.0, 0.0),
    "smoke_alarm": DecisionParams(0.5, 0.3, 3, 3, 5, 0.2, 6.0, 0.0),
    # Breaking glass is short: a few confident frames suffice.
    "glass_break": DecisionParams(0.5, 0.3, 2, 2, 4, 0.04, 1.0, 0.0),
}


# --------------------------------------------------------------------------- config
@dataclass
class NetConfig:
    #: "tcn" (CompactTCN: temporal convolutions over mel bands as channels) or
    #: "freqconv" (FreqConvTCN: a 2-D front end over (mel, time), then the TCN).
    kind: str = "tcn"
    freq_channels: tuple[int, ...] = (12, 24, 32, 32)
    channels: int = 40
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    kernel: int = 3
    lookahead_frames: int = 8
    #: freqconv only: frames (0.02 s each) over which each mel band's background floor is
    #: taken; with it the network reads a second plane, the band's level over that floor
    #: (`models.net.over_floor`), and remembers that much longer. 0: off.
    floor_frames: int = 0
    #: freqconv only: frames over which per-channel energy normalisation (PCEN) smooths each
    #: band's level (time constant half of it); with it the network reads one more plane,
    #: each band's magnitude over that level, root-compressed (`models.net.pcen`), and
    #: remembers that much longer. 0: off.
    pcen_frames: int = 0


@dataclass
class OptConfig:
    steps: int = 6000
    batch: int = 24
    crop_frames: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    threads: int = 2
    #: Live scenes: processes building batches beside training (0: in the training process).
    workers: int = 1
    #: Stop cleanly (checkpoint saved, resumable) after this much wall time.
    max_minutes: float | None = None
    #: Train only these classes' rows of the network's output head, e.g. [glass_break]:
    #: every other weight and normalisation statistic is held exactly, so the other classes'
    #: scores stay those of `--init` (from a `.onnx`, to the rounding of unfolding its
    #: folded normalisation: below 1e-6). None: train everything.
    train_head_rows: list[str] | None = None


@dataclass
class EvalConfig:
    every_steps: int = 500
    patience: int = 4
    #: The tuning objective's false-alarm budget on dev negatives: settings within it rank
    #: first. None: no budget tier, every setting ranks by F1 - fa_cost * FA/h (what the
    #: shipping rule scores; with on-thresholds above 0.99 the budget tier picked settings
    #: that find 6 % of cries).
    fa_per_hour_budget: float | None = 0.5
    #: Where no setting keeps the budget, tuning maximises F1 - fa_cost * FA/h. 0.01: one
    #: false alarm an hour weighs as much as 1 % of event F1 (run C was tuned with 0.002,
    #: which bought +0.02 glass F1 with +4 false alarms an hour).
    fa_cost: float = 0.01
    on_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    min_duration_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: Upper bounds of the tuned minimum duration per class. Dev holds no real T3/T4
    #: alarm (only continuous sounders): a T3 beep lasts 0.5 s and a T4 beep 0.1 s, so
    #: alarm decisions must not wait for longer unbroken sound than that.
    max_min_duration_s: dict[str, float] = field(default_factory=lambda: {"smoke_alarm": 0.3})
    #: Onset windows tuning tries, as (k factor, n factor) of the k-of-n onset rule: (2, 3)
    #: needs twice the confident frames within three times the window (models/tuning.py).
    onset_windows: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 3))
    #: Onset look-backs tuning tries once the rest is chosen (service/decision.py, rule 6):
    #: they move reported onsets only, so they are tuned on the chosen setting.
    onset_lookbacks_s: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)
    #: Rise dating tuning tries after the look-back, as (rise threshold, reach in seconds)
    #: pairs (service/decision.py, rule 7); (0, 0) is off, and the only pair by default,
    #: so recipes written before it tune exactly as they did.
    onset_rises: tuple[tuple[float, float], ...] = ((0.0, 0.0),)
    #: Touch dating tuning tries last, as reaches in seconds (service/decision.py, rule 8);
    #: 0 is off, and the only reach by default, so recipes written before it tune as they did.
    onset_touches_s: tuple[float, ...] = (0.0,)
    #: Touch levels tried with each reach (`onset_touch_threshold`); 1.0 is the on-threshold
    #: itself, and the only level by default, so recipes written before it tune as they did.
    onset_touch_thresholds: tuple[float, ...] = (1.0,)
    #: Onset advances tuning tries after touch dating, in seconds (service/decision.py,
    #: rule 9); 0 is off, and the only advance by default, so recipes written before it
    #: tune as they did.
    onset_advances_s: tuple[float, ...] = (0.0,)
    dev_reps: dict[str, int] = field(
        default_factory=lambda: {"baby_cry": 1, "smoke_alarm": 6, "glass_break": 3}
    )
    #: Median decision latency each class must keep (issue 12: 2 s for cries and
    #: alarms, 0.5 s for glass); tuning ranks slower settings last.
    max_latency_s: dict[str, float] = field(
        default_factory=lambda: {"baby_cry": 2.0, "smoke_alarm": 2.0, "glass_break": 0.5}
    )
    #: False alarms per hour on dev negatives each class must keep: tuning ranks settings
    #: above the ceiling below every setting within it. The smoke alarm's is the shipping
    #: rule's alarm floor (models.tuning.ALARM_FLOOR), so tuning cannot trade it away.
    max_fa_per_hour: dict[str, float] = field(default_factory=lambda: {"smoke_alarm": 1.0})
    #: On-thresholds offered to one class only, beside the grid every class gets, e.g.
    #: {smoke_alarm: [0.995, 0.998]}: the alarm alone above 0.99, where the budget tier
    #: once chose settings that find 6 % of cries (model card, rule 2's fifth round).
    class_on_thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: Touch levels for one class in place of `onset_touch_thresholds`, e.g. {smoke_alarm:
    #: [1.0, 0.9, 0.8]}: an onset change for the alarm alone (model card, thirty-seventh round).
    class_onset_touch_thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: How a run chooses the network it keeps at each evaluation (models.tuning.recipe_selection):
    #: "terms", the quick selection terms over a few on-thresholds; "tuned", the export's own
    #: figure (decisions tuned with the settings above, F1 less 0.05 per false alarm an hour)
    #: for `select_classes`, the classes the network will serve in the shipped shape.
    select: str = "terms"
    select_classes: tuple[str, ...] = CLASSES
    #: With "tuned": fresh draws of the dev scenes (scene seeds) the tuned figure is scored on
    #: too, beside the selection's scenes it is tuned on, each with the shared negatives (rule
    #: 5's way): the figure is the mean over those sets. The selection's scenes read optimistic
    #: (model card, twenty-third round); rule 5's judge draws are refused here.
    select_draws: tuple[int, ...] = ()
    #: Each evaluation judges (and the run may keep) the element-wise mean of the network
    #: states at the last N evaluations, this one included: 1 judges the network as it is.
    #: In run STL11 every average of its evaluations made fewer false cries than the network it
    #: grew from, the four ending at the kept one the most (model card, twenty-sixth round).
    select_average: int = 1


@dataclass
class TrainConfig:
    name: str = "harken-tcn"
    version: str = "1.0.0"
    seed: int = 7
    data: D.SceneConfig = field(default_factory=D.SceneConfig)
    live: LiveSceneConfig = field(default_factory=LiveSceneConfig)
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    opt: OptConfig = field(default_factory=OptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decision: dict[str, DecisionParams] = field(default_factory=lambda: dict(DEFAULT_DECISIONS))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = {k: v.to_dict() for k, v in self.decision.items()}
        return out


def _section(cls: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    raw = dict(raw or {})
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(
            f"config {where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(names)})"
        )
    default = cls()
    for key, value in raw.items():
        if isinstance(getattr(default, key), tuple) and isinstance(value, list):
            raw[key] = tuple(value)
    return cls(**raw)


def load_config(path: str | Path) -> TrainConfig:
    """Read a training recipe (YAML); unknown keys are rejected with their section named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(raw, str(path))


def config_from_dict(raw: Mapping[str, Any], where: str = "config") -> TrainConfig:
    allowed = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown section(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    decisions = dict(DEFAULT_DECISIONS)
    for name, values in (raw.get("decision") or {}).items():
        if name not in CLASSES:
            raise ValueError(
                f"{where}: decision.{name}: unknown class (classes: {', '.join(CLASSES)})"
            )
        decisions[name] = DecisionParams.from_dict({**decisions[name].to_dict(), **values})
    cfg = TrainConfig(
        name=str(raw.get("name", "harken-tcn")),
        version=str(raw.get("version", "1.0.0")),
        seed=int(raw.get("seed", 7)),
        data=_section(D.SceneConfig, raw.get("data"), f"{where}: data"),
        live=_section(LiveSceneConfig, raw.get("live"), f"{where}: live"),
        net=_section(NetConfig, raw.get("net"), f"{where}: net"),
        loss=_section(LossConfig, raw.get("loss"), f"{where}: loss"),
        opt=_section(OptConfig, raw.get("opt"), f"{where}: opt"),
        eval=_section(EvalConfig, raw.get("eval"), f"{where}: eval"),
        decision=decisions,
    )
    if cfg.eval.select not in ("terms", "tuned"):
        raise ValueError(f"{where}: eval.select must be 'terms' or 'tuned', got {cfg.eval.select!r}")
    unknown_classes = [c for c in cfg.eval.select_classes if c not in CLASSES]
    if unknown_classes or not cfg.eval.select_classes:
        raise ValueError(
            f"{where}: eval.select_classes must name one or more of {', '.join(CLASSES)}, "
            f"got {list(cfg.eval.select_classes)}"
        )
    unknown_classes = [c for c in cfg.eval.class_onset_touch_thresholds if c not in CLASSES]
    if unknown_classes:
        raise ValueError(f"{where}: eval.class_onset_touch_thresholds.{unknown_classes[0]}: unknown class "
                         f"(classes: {', '.join(CLASSES)})")
    levels = {"eval.onset_touch_thresholds": cfg.eval.onset_touch_thresholds} | {
        f"eval.class_onset_touch_thresholds.{c}": v for c, v in cfg.eval.class_onset_touch_thresholds.items()}
    for key, values in levels.items():
        if not values or not all(0.0 < float(v) <= 1.0 for v in values):
            raise ValueError(f"{where}: {key} must list touch levels in (0, 1], got {list(values)}")
    if not all(float(v) >= 0.0 for v in cfg.eval.onset_advances_s):
        raise ValueError(f"{where}: eval.onset_advances_s must be seconds >= 0, got {list(cfg.eval.onset_advances_s)}")
    if cfg.eval.select_average < 1:
        raise ValueError(f"{where}: eval.select_average must be 1 or more evaluations, got {cfg.eval.select_average}")
    if cfg.data.voiced_onset_classes and not (cfg.live.enabled and cfg.loss.kind == "event" and cfg.loss.onset > 0):
        raise ValueError(
            f"{where}: data.voiced_onset_classes {list(cfg.data.voiced_onset_classes)} moves the onset term's "
            "window, so it needs live.enabled, loss.kind: event and loss.onset above 0"
        )
    if cfg.eval.select_draws:
        from models.tuning import SCENE_DRAW_SEEDS

        draws = list(cfg.eval.select_draws)
        if cfg.eval.select != "tuned" or not cfg.live.enabled:
            raise ValueError(f"{where}: eval.select_draws {draws} needs eval.select: tuned and live.enabled "
                             "(fresh draws are live dev scenes scored by the tuned figure)")
        reserved = sorted({*draws} & {*SCENE_DRAW_SEEDS, cfg.data.seed + 1})
        if reserved or len(set(draws)) != len(draws):
            raise ValueError(
                f"{where}: eval.select_draws {draws} must be distinct fresh scene seeds, not the selection's "
                f"scenes (seed {cfg.data.seed + 1}) nor rule 5's judge draws {list(SCENE_DRAW_SEEDS)}"
                + (f" (got {reserved})" if reserved else "")
            )
    return cfg


# --------------------------------------------------------------------------- data
def build_net(cfg: TrainConfig, params: FeatureParams) -> CompactTCN | FreqConvTCN:
    net: CompactTCN | FreqConvTCN
    if cfg.net.kind == "freqconv":
        net = FreqConvTCN(
            n_mels=params.n_mels,
            n_classes=len(CLASSES),
            freq_channels=tuple(cfg.net.freq_channels),
            channels=cfg.net.channels,
            dilations=tuple(cfg.net.dilations),
            kernel=cfg.net.kernel,
            floor_frames=cfg.net.floor_frames,
            pcen_frames=cfg.net.pcen_frames,
        )
    elif cfg.net.kind == "tcn":
        for plane in ("floor_frames", "pcen_frames"):
            if getattr(cfg.net, plane):
                raise ValueError(f"net.{plane} needs net.kind 'freqconv'")
        net = CompactTCN(
            n_mels=params.n_mels,
            n_classes=len(CLASSES),
            channels=cfg.net.channels,
            dilations=tuple(cfg.net.dilations),
            kernel=cfg.net.kernel,
        )
    else:
        raise ValueError(f"net.kind must be 'tcn' or 'freqconv', got {cfg.net.kind!r}")
    if not 0 <= cfg.net.lookahead_frames <= min(10, net.receptive_field):
        raise ValueError(
            f"net.lookahead_frames must be 0..10 (200 ms), got {cfg.net.lookahead_frames}"
        )
    return net
