"""Which dev-scene events a model finds on time, hears late or misses, beside the
negatives under them and the clips they come from (model card, fifteenth round).

The dev scenes (`models.data.build_dev`) place each real dev target into a bed of dev
negatives at three event-to-background ratios. `recall_by_ebr` says how loudness loses
events; this probe asks what else does: the kind of background under the event (the
manifest class of the bed clip that covers most of it: `background` or a `confuser_*`
kind) and the clip itself (a clip missed at every EBR is hard in itself, whatever its bed).
Decisions are the model's own (its contract), so the counts match `harken export`'s.

    python -m models.dev_misses --model models/harken.onnx --data ../shared/data \
        [--class baby_cry] [--config models/configs/live-long-small-rule3.yaml] [--reps 3] \
        [--scene-seed 11] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.data import BedPiece, ClipBank, DevItem
from models.tuning import _match
from service.decision import EventEnded

Fate = Literal["on_time", "late", "missed"]

# Coarse families of the manifest's negative kinds (written here, by ear and by name): with
# about a hundred dev cries over some forty kinds, one kind holds a handful of events; a
# family holds enough to compare. A kind not listed is its own family.
FAMILIES: dict[str, tuple[str, ...]] = {
    "voices and music": ("music", "speech", "tv", "laughing", "crowd", "applause", "clapping",
                         "coughing", "sneezing", "clearthroat", "breathing", "snoring"),
    "animals": ("dog", "cat", "cow", "pig", "sheep", "hen", "rooster", "frog", "crow", "birds",
                "chirping_birds", "insects", "crickets"),
    "tones and beeps": ("notification_beeps", "medical_alarm_beeps", "alarm_clock", "clock_alarm",
                        "phone_ring", "doorbell", "siren", "car_horn", "church_bells", "clock_tick"),
    "machines and water": ("dishwasher", "washing_machine", "vacuum_cleaner", "fridge", "blender",
                           "microwave", "oven", "kitchen_hood_fan", "coffee_grinder", "appliances",
                           "boiling_water_kettle", "frying", "water_running", "water_drops",
                           "pouring_water", "toilet_flush", "brushing_teeth", "hand_saw", "chainsaw",
                           "engine", "airplane", "helicopter", "train"),
    "impacts and handling": ("glass_like_impacts", "dishes", "cutlery", "eating_cutlery", "drawer",
                             "cupboard", "door", "door_wood_knock", "door_wood_creaks", "car_door",
                             "keys", "keys_drop", "chopping", "can_opening", "keyboard_typing",
                             "mouse_click", "pageturn", "footsteps", "scratch", "squeeze_bottle",
                             "drinking_sipping", "fireworks", "gunshot"),
    "weather and room": ("background", "rain", "wind", "thunderstorm", "sea_waves", "crackling_fire"),
}
_FAMILY_OF = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}


def family_of(kind: str) -> str:
    """The family of a manifest negative class (`background`, `confuser_dog`, ...)."""
    name = kind.removeprefix("confuser_")
    return _FAMILY_OF.get(name, name)


@dataclass(frozen=True)
class EventFate:
    """One dev-scene event: what became of it and what lay under it."""

    item: str
    clip: str
    ebr: str  # the scene's EBR tag, e.g. "+3"; "alone" for a clip played alone
    onset_s: float
    fate: Fate  # on time (500 ms collar), heard (reported inside it, not on time), missed
    bed_kind: str  # the kind of the bed clip overlapping the event longest

    @property
    def bed_family(self) -> str:
        return family_of(self.bed_kind)


def setting_of(item: DevItem) -> str:
    """Where a dev item plays its events: the scene's EBR from its `:ebrN` name tag ("-3",
    "+3", "+9"), or "alone" for a clip played alone (`alone_items`)."""
    tag = item.name.rpartition(":")[2]
    return tag[3:] if tag.startswith("ebr") else tag


def bed_kind_under(bed: Sequence[BedPiece], onset_s: float, offset_s: float) -> str:
    """The manifest class of the bed piece that overlaps [onset_s, offset_s] longest
    ("none" for a scene without a recorded bed)."""
    overlap: Counter[str] = Counter()
    for piece in bed:
        seconds = min(piece.end_s, offset_s) - max(piece.start_s, onset_s)
        if seconds > 0:
            overlap[piece.kind] += seconds
    return overlap.most_common(1)[0][0] if overlap else "none"


def event_fates(
    dev: Sequence[DevItem], detections: Sequence[Sequence[EventEnded]], class_name: str
) -> list[EventFate]:
    """Every true event of `class_name` in the dev scenes with its fate; matching is the
    event metrics' own (`models.tuning._match`, 500 ms onset collar)."""
    out: list[EventFate] = []
    for item, found in zip(dev, detections, strict=True):
        if item.negative_only:
            continue
        truth = [(on, off) for name, on, off in item.truth if name == class_name]
        if not truth:
            continue
        mine = [d for d in found if d.class_name == class_name]
        pairs, _ = _match(truth, mine)
        matched = {ti for ti, _ in pairs}
        ebr = setting_of(item)
        for ti, (on, off) in enumerate(truth):
            heard = any(d.start_s < off and d.end_s > on for d in mine)
            fate: Fate = "on_time" if ti in matched else "late" if heard else "missed"
            out.append(EventFate(item.name, item.source_clip, ebr, on, fate, bed_kind_under(item.bed, on, off)))
    return out


def tally(fates: Sequence[EventFate], key: str) -> dict[str, dict[str, int]]:
    """Counts of each fate grouped by an `EventFate` attribute (`bed_kind`, `bed_family`,
    `ebr`, `clip`)."""
    out: dict[str, dict[str, int]] = {}
    for f in fates:
        row = out.setdefault(str(getattr(f, key)), {"events": 0, "on_time": 0, "late": 0, "missed": 0})
        row["events"] += 1
        row[f.fate] += 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["events"], kv[0])))


def clips_by_pattern(fates: Sequence[EventFate]) -> dict[str, int]:
    """How many clips are found on time at every EBR they were played at, at some, or at none;
    and how many are not even heard at any: the clip's share of the misses."""
    per_clip: dict[str, list[Fate]] = {}
    for f in fates:
        per_clip.setdefault(f.clip, []).append(f.fate)
    return {
        "clips": len(per_clip),
        "on_time_at_every_ebr": sum(all(x == "on_time" for x in v) for v in per_clip.values()),
        "on_time_at_some": sum(any(x == "on_time" for x in v) and not all(x == "on_time" for x in v)
                               for v in per_clip.values()),
        "on_time_at_none": sum(all(x != "on_time" for x in v) for v in per_clip.values()),
        "missed_at_every_ebr": sum(all(x == "missed" for x in v) for v in per_clip.values()),
    }


def kinds_under_half(fates: Sequence[EventFate], on_time: Sequence[bool] | None = None,
                     min_events: int = 5) -> list[str]:
    """Bed kinds (with at least `min_events` events) whose on-time share is under half that
    of all other events: the card's reading. `on_time` overrides the fates' own (a shuffle)."""
    hits = np.array([f.fate == "on_time" for f in fates] if on_time is None else on_time, dtype=bool)
    kinds = np.array([f.bed_kind for f in fates])
    out = []
    for kind in sorted(set(kinds.tolist())):
        mine = kinds == kind
        if mine.sum() >= min_events and (~mine).any() and hits[mine].mean() < hits[~mine].mean() / 2:
            out.append(kind)
    return out


def chance_of_as_many(fates: Sequence[EventFate], shuffles: int = 2000, seed: int = 0) -> float:
    """How often fates shuffled over the same events flag at least as many kinds as the
    real ones do: with forty kinds of a few events each, some fall under half by chance."""
    flagged = len(kinds_under_half(fates))
    hits = np.array([f.fate == "on_time" for f in fates], dtype=bool)
    rng = np.random.default_rng(seed)
    as_many = sum(len(kinds_under_half(fates, rng.permutation(hits))) >= flagged for _ in range(shuffles))
    return as_many / shuffles


def _table(title: str, rows: dict[str, dict[str, int]]) -> str:
    lines = [f"{title:<32} events  on time  late  missed  on-time share"]
    for name, r in rows.items():
        share = r["on_time"] / r["events"] if r["events"] else 0.0
        counts = f"{r['events']:>6}  {r['on_time']:>7}  {r['late']:>4}  {r['missed']:>6}"
        lines.append(f"{name:<32} {counts}  {share:>13.2f}")
    return "\n".join(lines)


def dev_scene_fates(model: Path, data_dir: Path, config: Path, class_name: str, reps: int | None = None,
                    scene_seed: int | None = None) -> tuple[list[EventFate], list[EventFate]]:
    """Build the dev scenes as the training recipe does, score them with the model and run
    the model's own decisions; the same for each dev clip of the class played alone.
    `reps` plays each clip of the class that many times (at the EBRs in turn) instead of
    the recipe's `eval.dev_reps`, and `scene_seed` draws other beds and levels for the same
    recordings: other scenes than the selection's, for the probe only (the selection's
    scenes are the ones decisions and models were chosen on, so they read optimistic)."""
    from models.config import load_config
    from models.data import build_dev, read_clips, select
    from models.tuning import run_decisions
    from service.audio.features import FeatureParams
    from service.detector import Detector

    cfg = load_config(config)
    detector = Detector.load(model)
    if class_name not in detector.class_names:
        raise SystemExit(f"{model}: no class {class_name!r} (it has {', '.join(detector.class_names)})")
    bank = ClipBank(select(read_clips(data_dir), "dev", cfg.data.licences))
    dev_reps = dict(cfg.eval.dev_reps) | ({class_name: reps} if reps else {})
    seed = cfg.data.seed + 1 if scene_seed is None else scene_seed
    dev = [it for it in build_dev(bank, seed=seed, params=FeatureParams(), reps=dev_reps)
           if not it.negative_only]
    alone = alone_items(bank, class_name)
    fates = []
    for items in (dev, alone):
        scores = [detector.scores(item.features) for item in items]
        detections = run_decisions(scores, detector.contract.decision, detector.class_names)
        fates.append(event_fates(items, detections, class_name))
    return fates[0], fates[1]


def alone_items(bank: ClipBank, class_name: str, pre_s: float = 3.0, post_s: float = 3.0,
                noise_dbfs: float = -60.0, excerpt_s: float = 15.0, seed: int = 0) -> list[DevItem]:
    """Each dev clip of `class_name` played alone (`models.onset_probe.played_alone`): its
    first `excerpt_s` seconds at its own level between `pre_s` and `post_s` of quiet noise;
    its spans are the truth."""
    from models.data import SAMPLE_RATE
    from models.onset_probe import played_alone
    from service.audio.features import LogMel

    logmel = LogMel()
    rng = np.random.default_rng(seed)
    items: list[DevItem] = []
    for audio, spans, _weak, clip in bank.targets[class_name]:
        sig = audio[: int(excerpt_s * SAMPLE_RATE)]
        truth = [(class_name, round(pre_s + a, 3), round(pre_s + min(b, excerpt_s), 3))
                 for a, b in spans if a < excerpt_s and min(b, excerpt_s) - a >= 0.1]
        if not truth:
            continue
        signal = played_alone(sig, rng, pre_s, post_s, noise_dbfs)
        items.append(DevItem(f"{class_name}:{clip.path.name}:alone", logmel.frames(signal), truth,
                             signal.shape[0] / SAMPLE_RATE, False, clip.path.name))
    return items


def scene_losses(in_scenes: Sequence[EventFate], alone: Sequence[EventFate]) -> dict[str, int]:
    """Events whose clip is found on time alone, and how many of those the scenes lose (not
    on time there): what the backgrounds take, as against what the clip never gives."""
    found_alone = {f.clip for f in alone if f.fate == "on_time"}
    scene_events = [f for f in in_scenes if f.clip in found_alone]
    return {
        "clips_on_time_alone": len(found_alone),
        "of_clips": len({f.clip for f in alone}),
        "their_scene_events": len(scene_events),
        "lost_in_scenes": sum(f.fate != "on_time" for f in scene_events),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.dev_misses", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a harken .onnx with its decisions")
    parser.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv)")
    parser.add_argument("--class", dest="class_name", default="baby_cry")
    parser.add_argument("--config", type=Path, default=Path("models/configs/live-long-small-rule3.yaml"),
                        help="the recipe whose dev scenes to build (data seed, repetitions, licences)")
    parser.add_argument("--reps", type=int, help="play each clip of the class this many times, at the EBRs in "
                        "turn (other scenes than the selection's; default: the recipe's eval.dev_reps)")
    parser.add_argument("--scene-seed", type=int, help="draw the dev scenes with this seed (other beds and levels "
                        "for the same recordings; default: the recipe's, data.seed + 1, the selection's scenes)")
    parser.add_argument("--json", type=Path, help="write every event's fate here")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be 1 or more, not {args.reps}")
    fates, alone = dev_scene_fates(args.model, args.data, args.config, args.class_name, args.reps, args.scene_seed)
    by_ebr = tally(fates, "ebr")
    by_ebr["all"] = {k: sum(row[k] for row in by_ebr.values()) for k in ("events", "on_time", "late", "missed")}
    print(_table(f"{args.class_name} by EBR", by_ebr))
    print()
    print(_table("by the background family under it", tally(fates, "bed_family")))
    print()
    print(_table("by the background kind under it", tally(fates, "bed_kind")))
    print()
    flagged = kinds_under_half(fates)
    print(f"kinds under half the others' on-time share (5 events or more): {', '.join(flagged) or 'none'}; "
          f"shuffled fates flag as many {chance_of_as_many(fates):.2f} of the time")
    print("clips (played at several EBRs where the recipe repeats them):", clips_by_pattern(fates))
    print(_table("each dev clip played alone", tally(alone, "ebr")))
    print("found alone, lost in the scenes:", scene_losses(fates, alone))
    if args.json:
        args.json.write_text(json.dumps({"scenes": [asdict(f) for f in fates],
                                         "alone": [asdict(f) for f in alone]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
