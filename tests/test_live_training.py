"""Scenes made on the fly, the negatives pool, codecs, the 2-D network, the onset term,
live training (resumable) and hard-negative mining, on tiny generated data (no ../shared)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import require_module

torch = require_module("torch", "the [train] extra (torch)")
require_module("av", "the [train] extra (av, for codec augmentation)")

import onnx  # noqa: E402

from models import (  # noqa: E402
    augment,
    export,
    synth,
)
from models import data as D  # noqa: E402
from models.config import TrainConfig, build_net  # noqa: E402
from models.data import CLASSES  # noqa: E402
from models.live_scenes import LiveSceneConfig, LiveSceneMaker  # noqa: E402
from models.losses import EventAwareLoss, LossConfig  # noqa: E402
from models.negatives import NegativeChunk, NegativePool  # noqa: E402
from models.net import FreqConvTCN  # noqa: E402
from models.trainer import averaged_network  # noqa: E402
from service import cli  # noqa: E402
from service.audio.features import FeatureParams, LogMel  # noqa: E402
from service.detector import Detector, pad_stream  # noqa: E402
from tests.negatives_data import make_negatives  # noqa: E402
from tests.test_train import make_dataset  # noqa: E402

LIVE_CONFIG = """
name: tiny-live
seed: 3
data: {n_rirs: 2, seed: 5}
live: {enabled: true, codec_prob: 0.3, gap_prob: 0.3, stream_start_prob: 0.3}
net: {kind: freqconv, freq_channels: [4, 8], channels: 8, dilations: [1, 2], kernel: 3, lookahead_frames: 2}
loss: {onset: 1.0, onset_frames: 10}
opt: {steps: 8, batch: 3, crop_frames: 120, threads: 1, workers: 0}
eval:
  {every_steps: 4, patience: 5, on_thresholds: [0.5, 0.7],
   dev_reps: {baby_cry: 1, smoke_alarm: 1, glass_break: 1}}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("live")
    return {"root": root, "data": make_dataset(root / "data"), "negatives": make_negatives(root / "neg")}


def test_negative_pool_is_cached_and_sliced(tiny: dict[str, Path], tmp_path: Path) -> None:
    pool = NegativePool.load(tiny["negatives"], "train", tmp_path)
    assert pool.audio.dtype == np.int16 and len(pool.chunks) == 3
    assert pool.hours == pytest.approx(60 / 3600, rel=1e-3)
    assert set(pool.hours_by_kind()) == {"confuser_music", "confuser_speech"}
    again = NegativePool.load(tiny["negatives"], "train", tmp_path)
    assert isinstance(again.audio, np.memmap)  # the second load maps the cache
    np.testing.assert_array_equal(np.asarray(again.audio), np.asarray(pool.audio))
    excerpt = pool.excerpt(16000, np.random.default_rng(0))
    assert excerpt.shape == (16000,) and excerpt.dtype == np.float32 and np.abs(excerpt).max() <= 1.0


def test_negative_pool_samples_are_float_at_full_scale_one() -> None:
    chunks = [NegativeChunk("a.flac", "confuser_music", "pkg", "GPL", 0, 4)]
    pool = NegativePool(np.array([-32768, -16384, 0, 32767], dtype=np.int16), chunks)
    samples = pool.samples(1, 10)  # a stop past the end is cut, as slicing does
    assert samples.dtype == np.float32
    np.testing.assert_array_equal(samples, np.array([-0.5, 0.0, 32767 / 32768], dtype=np.float32))
    assert pool.samples(0, 1)[0] == -1.0


def test_two_runs_building_one_negatives_cache_at_once_both_get_it(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training run and an export started together both decode the negatives into one
    cache. Here the second build runs whole while the first is between writing its array
    and moving it into place, the moment that once made both fail."""
    import models.negatives as negatives_module

    real_save = np.save
    inner: list[NegativePool] = []
    builds: list[Path] = []

    def save_then_let_another_run_build(file: Path, array: np.ndarray) -> None:
        real_save(file, array)
        builds.append(Path(file))
        if len(builds) == 1:  # the first build pauses here; the second runs whole
            inner.append(NegativePool.load(tiny["negatives"], "train", tmp_path))

    monkeypatch.setattr(negatives_module.np, "save", save_then_let_another_run_build)
    outer = NegativePool.load(tiny["negatives"], "train", tmp_path)
    monkeypatch.undo()
    assert len(builds) == 2 and builds[0] != builds[1]  # each build wrote a file of its own
    np.testing.assert_array_equal(np.asarray(outer.audio), np.asarray(inner[0].audio))
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []  # no leftovers
    again = NegativePool.load(tiny["negatives"], "train", tmp_path)
    np.testing.assert_array_equal(np.asarray(again.audio), np.asarray(outer.audio))


def test_negative_beds_can_weigh_a_kind_more_than_its_hours() -> None:
    """`live.negative_kind_weights`: a kind with a tenth of the pool's hours, weighted 9x,
    starts about half the excerpts; unweighted, about a tenth; unknown kinds and weights
    that are not positive are refused by name."""
    second = 16000
    chunks = [NegativeChunk("m.flac", "confuser_music", "debian:m", "GPL", 0, 90 * second),
              NegativeChunk("e.flac", "confuser_effects", "debian:e", "GPL", 90 * second, 10 * second)]
    pool = NegativePool(np.zeros(100 * second, dtype=np.int16), chunks)

    def effects_share(chunk_p: np.ndarray | None) -> float:
        rng = np.random.default_rng(0)
        starts = [pool.excerpt_at(2 * second, rng, chunk_p)[1] for _ in range(2000)]
        assert all(0 <= s <= 98 * second for s in starts)  # a whole excerpt always fits
        return float(np.mean(np.asarray(starts) >= 90 * second))

    assert effects_share(None) == pytest.approx(0.1, abs=0.03)
    weighted = pool.chunk_probabilities({"confuser_effects": 9.0})
    np.testing.assert_allclose(weighted, [0.5, 0.5])
    assert effects_share(weighted) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match=r"kinds this pool lacks: \['confuser_games'\]"):
        pool.chunk_probabilities({"confuser_games": 2.0})
    with pytest.raises(ValueError, match=r"must be above 0, got \{'confuser_music': 0.0\}"):
        pool.chunk_probabilities({"confuser_music": 0.0})


def test_live_beds_follow_the_kind_weights(maker: LiveSceneMaker) -> None:
    """A live maker with `negative_kind_weights` draws its plain negative beds from the
    weighted kind (speech here, a third of the tiny pool's hours) nearly always."""
    pool = maker.negatives
    assert pool is not None
    speech = [(c.start, c.start + c.length) for c in pool.chunks if c.kind == "confuser_speech"]
    live = LiveSceneConfig(enabled=True, bed={"negatives": 1.0}, negative_kind_weights={"confuser_speech": 200.0})
    weighted = LiveSceneMaker(maker.bank, pool, maker.scene_cfg, live, crop_frames=200, receptive_field=20,
                              lookahead=4)
    rng = np.random.default_rng(2)
    starts = [weighted._bed(rng)[2].pool_start for _ in range(200)]
    in_speech = [any(a <= s < b for a, b in speech) for s in starts if s is not None]
    assert len(in_speech) == 200 and np.mean(in_speech) > 0.95
    with pytest.raises(ValueError, match="kinds this pool lacks"):
        LiveSceneMaker(maker.bank, pool, maker.scene_cfg,
                       LiveSceneConfig(enabled=True, negative_kind_weights={"effects": 2.0}),
                       crop_frames=200, receptive_field=20, lookahead=4)


def _live_maker(maker: LiveSceneMaker, **live: Any) -> LiveSceneMaker:
    """`maker`'s bank and pool with the live settings `live` asks for."""
    assert maker.negatives is not None
    return LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, LiveSceneConfig(enabled=True, **live),
                          crop_frames=200, receptive_field=20, lookahead=4)


def _negative_beds(maker: LiveSceneMaker, **extra: Any) -> LiveSceneMaker:
    """`maker`'s bank and pool, every bed a plain stretch of the negatives, `extra` asked."""
    return _live_maker(maker, bed={"negatives": 1.0}, **extra)


def _assert_off_draws_nothing(maker: LiveSceneMaker, seed: int, **off: Any) -> LiveSceneMaker:
    """A switch at 0 keeps the beds, and the random stream after them, of a recipe without
    it (recipes written before it make the same scenes); returns the plain maker."""
    plain, switched_off = _negative_beds(maker), _negative_beds(maker, **off)
    rng_plain, rng_off = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(5):
        np.testing.assert_array_equal(plain._bed(rng_plain)[0], switched_off._bed(rng_off)[0])
    assert rng_plain.random() == rng_off.random()
    return plain


def test_live_beds_carry_procedural_effects_only_when_asked(maker: LiveSceneMaker) -> None:
    """`live.procedural_effects_prob`: at 0 the beds and the random stream after them are
    those of a recipe without it; at 1 every bed is the same bed with effects added at the
    asked level over it, and the teacher is told it never heard them."""
    plain = _assert_off_draws_nothing(maker, 5, procedural_effects_prob=0.0)
    on = _negative_beds(maker, procedural_effects_prob=1.0, procedural_effects_count=(1, 1),
                        procedural_effects_db=(10.0, 10.0))
    ratios = []
    for seed in range(20):
        bed, _, _ = plain._bed(np.random.default_rng(seed))
        with_effects, kind, origin = on._bed(np.random.default_rng(seed))
        added = with_effects - bed
        assert kind == "negatives" and origin.pool_start is None and np.abs(added).max() > 0
        ratios.append(D._active_rms(added[np.abs(added) > 0]) / D._active_rms(bed))
    assert 2.0 < float(np.median(ratios)) < 5.0  # 10 dB is 3.16 times the bed's level
    with pytest.raises(ValueError, match=r"live\.procedural_effects_prob"):
        LiveSceneConfig(procedural_effects_prob=1.5)
    with pytest.raises(ValueError, match=r"live\.procedural_effects_count"):
        LiveSceneConfig(procedural_effects_count=(0, 2))
    with pytest.raises(ValueError, match=r"live\.procedural_effects_db"):
        LiveSceneConfig(procedural_effects_db=(10.0, -10.0))


def test_live_beds_start_late_only_when_asked(maker: LiveSceneMaker) -> None:
    """`live.late_start_prob`: at 0 the beds and the random stream after them are those of a
    recipe without it; at 1 each bed is a steady floor at the asked level under the bed's
    until a point in the crop's middle, then the same bed."""
    plain = _assert_off_draws_nothing(maker, 6, late_start_prob=0.0)
    late = _negative_beds(maker, late_start_prob=1.0, late_start_floor_db=(-40.0, -40.0))
    starts = []
    for seed in range(20):
        bed, _, _ = plain._bed(np.random.default_rng(seed))
        started, kind, origin = late._bed(np.random.default_rng(seed))
        assert kind == "negatives" and origin.pool_start is None and started.shape == bed.shape
        moved = np.flatnonzero(np.abs(started - bed) > 0.02 * np.abs(bed).max())
        start = int(moved.max()) if moved.size else 0  # the bed is itself (and a faint floor) after it
        assert 0.1 * bed.shape[0] - 1 <= start <= 0.9 * bed.shape[0] + 0.05 * 16000
        quiet = started[: int(0.1 * bed.shape[0])]
        assert D._active_rms(quiet) / D._active_rms(bed) == pytest.approx(10 ** (-40 / 20), rel=0.5)
        starts.append(start / bed.shape[0])
    assert np.ptp(starts) > 0.3  # the start moves from crop to crop
    with pytest.raises(ValueError, match=r"live\.late_start_prob"):
        LiveSceneConfig(late_start_prob=-0.1)
    with pytest.raises(ValueError, match=r"live\.late_start_floor_db"):
        LiveSceneConfig(late_start_floor_db=(-20.0, 5.0))


def test_negative_pool_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"NEGATIVES\.csv"):
        NegativePool.load(tmp_path, "train")


@pytest.mark.parametrize("codec", sorted(augment.CODECS))
def test_codec_roundtrip_keeps_length_and_alignment(codec: str) -> None:
    rng = np.random.default_rng(0)
    audio = np.zeros(32000, np.float32)
    audio[16000:16800] = 0.5 * rng.standard_normal(800)  # a burst at 1.0 s
    out = augment.codec_roundtrip(audio, codec, 32)
    assert out.shape == audio.shape and out.dtype == np.float32
    lags = range(-400, 401, 4)
    best = max(lags, key=lambda lag: float(np.dot(np.roll(out, -lag), audio)))
    assert abs(best) <= 80  # within 5 ms: labels stay where the sound is
    assert np.abs(out[:14000]).max() < 0.05  # nothing smeared far before the burst


def test_codec_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        augment.codec_roundtrip(np.zeros(1600, np.float32), "flac2000", 32)


def test_mel_eq_flat_is_identity_and_phone_band_cuts_lows() -> None:
    feats = LogMel().frames(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    centres = np.linspace(60, 7800, 64)

    class Flat:
        def uniform(self, lo: float, hi: float, n: int | None = None) -> np.ndarray | float:
            return np.zeros(n) if n else 0.0

        def random(self) -> float:
            return 1.0  # never the phone band

    np.testing.assert_allclose(augment.mel_eq(feats, centres, Flat()), feats, atol=1e-4)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    phone = augment.mel_eq(feats, centres, rng, phone_prob=1.0)
    assert (phone[:, 0] < feats[:, 0] - 5).all()  # 60 Hz is outside every phone band


def test_freq_mask_flattens_whole_bands_to_their_median_and_leaves_the_rest() -> None:
    rng = np.random.default_rng(4)
    feats = rng.normal(-6.0, 2.0, (120, 64)).astype(np.float32)
    masked = augment.freq_mask(feats, np.random.default_rng(1), masks=2, max_bands=8)
    changed = np.flatnonzero((masked != feats).any(axis=0))
    assert 1 <= changed.size <= 16
    for band in changed:  # a masked band holds one value, its median over the frames
        assert np.unique(masked[:, band]).size == 1
        assert masked[0, band] == pytest.approx(float(np.median(feats[:, band])))
    untouched = np.setdiff1d(np.arange(64), changed)
    np.testing.assert_array_equal(masked[:, untouched], feats[:, untouched])
    assert not np.shares_memory(masked, feats)


def test_frequency_masking_in_scenes_flattens_bands_and_changes_nothing_else(maker: LiveSceneMaker) -> None:
    """`live.freq_mask_prob` 1: the scene the same generator makes without masking, with one
    to eight whole bands flattened; its labels, weights and every other band are untouched
    (the mask is drawn after the scene is made). Bad settings are refused by name."""
    from dataclasses import replace

    masking = LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg,
                             replace(maker.cfg, freq_mask_prob=1.0, freq_masks=1, freq_mask_bands=8),
                             crop_frames=200, receptive_field=20, lookahead=4)
    plain, masked = maker.make(np.random.default_rng(7)), masking.make(np.random.default_rng(7))
    changed = [b for b in range(64) if not np.array_equal(masked.features[:, b], plain.features[:, b])]
    assert 1 <= len(changed) <= 8 and changed == list(range(changed[0], changed[-1] + 1))
    for band in changed:
        assert np.unique(masked.features[:, band]).size == 1
    others = [b for b in range(64) if b not in changed]
    np.testing.assert_array_equal(masked.features[:, others], plain.features[:, others])
    np.testing.assert_array_equal(masked.target, plain.target)
    np.testing.assert_array_equal(masked.weight, plain.weight)
    for bad in ({"freq_mask_prob": 1.5}, {"freq_masks": 0}, {"freq_mask_bands": 0}):
        with pytest.raises(ValueError, match="freq_mask"):
            LiveSceneConfig(enabled=True, **bad)  # type: ignore[arg-type]


def test_silence_gap_and_level() -> None:
    rng = np.random.default_rng(0)
    audio = np.full(48000, 0.1, np.float32)
    out, (a, b) = augment.silence_gap(audio, rng)
    assert 0 <= a < b <= 48000 and np.abs(out[a:b]).max() < 1e-3 and out[:a].min() == pytest.approx(0.1)
    loud = augment.set_level(audio, -1.0, overdrive_db=6.0)
    assert np.abs(loud).max() == pytest.approx(1.0)  # driven past full scale, clipped
    quiet = augment.set_level(audio, -40.0)
    assert np.abs(quiet).max() == pytest.approx(0.01, rel=1e-3)


@pytest.fixture(scope="module")
def maker(tiny: dict[str, Path]) -> LiveSceneMaker:
    bank = D.ClipBank(D.select(D.read_clips(tiny["data"]), "train"))
    pool = NegativePool.load(tiny["negatives"], "train", tiny["root"] / "cache")
    live = LiveSceneConfig(enabled=True, events_per_scene=(0.0, 0.0, 1.0, 0.0), gap_prob=0.0, stream_start_prob=0.0)
    return LiveSceneMaker(bank, pool, D.SceneConfig(n_rirs=2), live, crop_frames=200, receptive_field=20, lookahead=4)


def test_live_scenes_are_seeded_and_aligned(maker: LiveSceneMaker) -> None:
    a = maker.make(np.random.default_rng(7))
    b = maker.make(np.random.default_rng(7))
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (220, 64) and a.target.shape == (200, 3) and a.weight.shape == (200, 3)
    c = maker.make(np.random.default_rng(8))
    assert not np.array_equal(a.features, c.features)  # a new scene for every generator
    for scene in (a, c):
        for cls, first, end, _ in scene.events:
            assert 0 <= first < end <= 200
            assert scene.target[first:end, cls].sum() >= 3
        for onset in scene.onsets:
            assert onset in scene.events


def test_live_scene_edges_label_gaps_negative_and_pad_stream_starts(maker: LiveSceneMaker) -> None:
    edge = LiveSceneMaker(
        maker.bank, maker.negatives, maker.scene_cfg,
        LiveSceneConfig(enabled=True, events_per_scene=(0.0, 0.0, 0.0, 1.0), gap_prob=1.0, stream_start_prob=1.0,
                        codec_prob=0.0),
        crop_frames=200, receptive_field=20, lookahead=4,
    )
    rng = np.random.default_rng(11)
    for _ in range(6):
        scene = edge.make(rng)
        context = 16
        first = scene.features[context : context + 1]
        np.testing.assert_array_equal(scene.features[:context], np.repeat(first, context, 0))
        # Frames whose log-mel is at the digital-silence floor carry no target.
        floor = LogMel().silence_frame
        silent = np.all(np.abs(scene.features[context : context + 200] - floor) < 1e-3, axis=1)
        assert not scene.target[silent].any()


def _freqconv_with_running_stats(
    seed: int, freq_channels: tuple[int, ...] = (4, 8, 8), dilations: tuple[int, ...] = (1, 2, 4),
    floor_frames: int = 0,
    pcen_frames: int = 0,
) -> FreqConvTCN:
    torch.manual_seed(seed)
    net = FreqConvTCN(
        freq_channels=freq_channels, channels=12, dilations=dilations,
        floor_frames=floor_frames, pcen_frames=pcen_frames,
    ).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize(
    "variant",
    [
        "one", "one-floor", "one-pcen", "one-floor-pcen", "pair", "pair-own-stats", "pair-mixed-sizes",
        "pair-longer-memory", "pair-floor", "pair-pcen",
    ],
)
def test_freqconv_network_streams_like_one_pass_after_export(tmp_path: Path, variant: str) -> None:
    """One exported network, or two joined as one (`ensemble_onnx`: the mean of their
    logits), streams in the daemon exactly as it scores in one pass. Members of one shape
    become one network (models/joined.py), with their own feature statistics if they
    differ; members of different shapes run side by side, and a member with a shorter
    memory (receptive field) is aligned with the longer one on the same input frames. A
    network reading each band over its floor (`floor_frames`) remembers that much longer
    and streams alike, alone or beside a plain one; so does one reading each band's energy
    normalisation (`pcen_frames`), alone, with the floor plane too, or beside a plain one."""
    from models.export import ensemble_onnx, export_onnx
    from models.unfold import read_member
    from service.decision import DecisionParams

    members = 1 if variant.startswith("one") else 2
    sizes = [(4, 8, 8), (8, 8, 8) if variant == "pair-mixed-sizes" else (4, 8, 8)]
    dilations = [(1, 2, 4), (1, 2, 4, 8) if variant == "pair-longer-memory" else (1, 2, 4)]
    floors = [12 if variant.startswith("one-floor") else 0, 12 if variant == "pair-floor" else 0]
    pcens = [20 if variant in ("one-pcen", "one-floor-pcen") else 0, 20 if variant == "pair-pcen" else 0]
    nets = [
        _freqconv_with_running_stats(seed, sizes[seed], dilations[seed], floors[seed], pcens[seed])
        for seed in range(members)
    ]
    if variant == "pair-own-stats":
        with torch.no_grad():
            nets[1].feature_mean.uniform_(-0.5, 0.5)
            nets[1].feature_std.uniform_(0.5, 2.0)
    for net in nets:
        if net.pcen_frames:  # statistics of its own plane, as training sets them
            scene = LogMel().frames(synth.background(4.0, np.random.default_rng(5)))
            net.set_pcen_statistics(torch.from_numpy(scene)[None])
    extra = max(4 + 11 if floors[0] else 0, 19 if pcens[0] else 0)  # the longer of the planes' memories
    assert nets[0].receptive_field == 2 * 3 + 2 * 7 + extra
    assert nets[0].macs_per_frame() > 0
    decisions = {c: DecisionParams() for c in D.CLASSES}
    paths = [tmp_path / f"fc{i}.onnx" for i in range(members)]
    for i, (net, path) in enumerate(zip(nets, paths, strict=True)):
        export_onnx(net, path, D.CLASSES, 3, decisions, "fc", f"0.0.{i}", {"parameters": 100, "macs_per_frame": 7})
    path = paths[0]
    if members > 1:
        model, contract = ensemble_onnx(paths)
        assert contract.model_name == "fc-x2" and contract.training["ensemble"] == ["fc 0.0.0", "fc 0.0.1"]
        assert contract.training["parameters"] == 200 and contract.training["macs_per_frame"] == 14
        # Joined (models/joined.py): one convolution per layer for both members, not one
        # each; members of different shapes keep a branch each.
        convs = sum(n.op_type == "Conv" for n in model.graph.node)
        one = sum(n.op_type == "Conv" for n in onnx.load(str(paths[0])).graph.node)
        own = sum(sum(n.op_type == "Conv" for n in onnx.load(str(p)).graph.node) for p in paths)
        side_by_side = ("pair-mixed-sizes", "pair-longer-memory", "pair-floor", "pair-pcen")
        assert convs == (own if variant in side_by_side else one)
        assert contract.receptive_field_frames == max(net.receptive_field for net in nets)
        path = tmp_path / "pair.onnx"
        onnx.save(model, str(path))
    if any(floors) or any(pcens):  # its extra input plane is not a shape the join or --init reads back
        with pytest.raises(ValueError, match="extra input plane"):
            read_member(paths[next(i for i in range(members) if floors[i] or pcens[i])])
    detector = Detector.load(path)
    feats = LogMel().frames(synth.background(6.0, np.random.default_rng(2)).astype(np.float32) * 0.1)
    whole = detector.scores(feats)
    field = max(net.receptive_field for net in nets)
    before = np.repeat(feats[:1], field - 3, 0)
    x = torch.from_numpy(np.concatenate([before, feats, np.repeat(feats[-1:], 3, 0)]))[None]
    with torch.no_grad():
        mean_logit = torch.stack([net(x)[:, field - net.receptive_field :] for net in nets]).mean(dim=0)
    np.testing.assert_allclose(whole, torch.sigmoid(mean_logit)[0].numpy(), atol=1e-5)
    for chunk in (1, 7, 64):
        scorer = detector.stream()
        parts = [scorer.push(feats[i : i + chunk]) for i in range(0, feats.shape[0], chunk)]
        parts.append(scorer.flush())
        np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)


def test_over_floor_reads_an_event_alike_over_any_steady_bed() -> None:
    """Each band over its own floor: a steady bed reads near 0 whatever its level, an
    event over it reads its height over the bed, and the plane is the same when every
    level moves by the same amount (a louder room, a nearer microphone)."""
    from models.net import FLOOR_SMOOTH_FRAMES, floor_shrink, over_floor

    rng = np.random.default_rng(0)
    bed = rng.normal(0.0, 0.1, (1, 4, 300)).astype(np.float32)
    bed[:, :2, 200:240] += 3.0  # an event in the low bands, 0.8 s long
    x = torch.from_numpy(bed)
    plane = over_floor(x, 50)
    assert plane.shape == (1, 4, 300 - floor_shrink(50)) and floor_shrink(50) == FLOOR_SMOOTH_FRAMES - 1 + 49
    start = 300 - plane.shape[-1]
    event = plane[0, :2, 200 - start + 5 : 240 - start].numpy()
    assert 2.5 < event.mean() < 3.5  # the event's height over its bed
    assert abs(plane[0, 2:].numpy().mean()) < 0.3 and plane[0, :2, : 200 - start].abs().mean() < 0.3
    np.testing.assert_allclose(over_floor(x + 5.0, 50).numpy(), plane.numpy(), atol=1e-5)
    assert floor_shrink(0) == 0
    with pytest.raises(ValueError, match="floor_frames"):
        FreqConvTCN(floor_frames=1)


def test_pcen_reads_a_steady_bed_alike_at_any_level_and_an_event_over_it() -> None:
    """Per-channel energy normalisation: a steady bed reads about the same small value at
    any level (within PCEN's gain exponent, 0.98: a bed 20 dB louder moves it by a few per
    cent), an event rising over the bed reads far above it at its onset and less as it is
    held (the smoothed level catches up: an automatic gain), and the plane's statistics
    from a sample put it in unit units per band."""
    from models.net import PCEN_BIAS, PCEN_ROOT, pcen, pcen_weights

    weights = pcen_weights(50)
    assert weights.shape == (50,) and abs(float(weights.sum()) - 1.0) < 1e-6
    assert weights[-1] > weights[0]  # the newest frame weighs most
    rng = np.random.default_rng(0)
    bed = rng.normal(-8.0, 0.3, (1, 4, 300)).astype(np.float32)  # log power, steady
    bed[:, :2, 200:240] += 6.0  # an event in the low bands, 0.8 s long, about 26 dB over the bed
    kernel = weights.expand(4, 1, 50).clone()
    plane = pcen(torch.from_numpy(bed), kernel)
    assert plane.shape == (1, 4, 251)
    steady = plane[0, 2:].numpy()
    near_unity = (1.0 + PCEN_BIAS) ** PCEN_ROOT - PCEN_BIAS**PCEN_ROOT  # a band at its own level
    assert abs(float(np.median(steady)) - near_unity) < 0.15
    louder = pcen(torch.from_numpy(bed + np.log(100.0).astype(np.float32)), kernel)[0, 2:].numpy()
    assert np.allclose(np.median(louder), np.median(steady), rtol=0.1)
    onset, held = plane[0, :2, 200 - 49].numpy(), plane[0, :2, 238 - 49].numpy()
    assert onset.min() > 5 * near_unity  # the event's first frame, far over its bed
    assert (held < onset / 4).all()  # 0.76 s on, a held sound has raised its own level
    net = FreqConvTCN(n_mels=4, freq_channels=(4, 8), channels=8, dilations=(1, 2), pcen_frames=50)
    net.set_pcen_statistics(torch.from_numpy(bed).transpose(1, 2))
    normalised = net.pcen_plane(torch.from_numpy(bed).transpose(1, 2))[0].numpy()
    np.testing.assert_allclose(normalised.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=1), 1.0, atol=1e-2)
    with pytest.raises(ValueError, match="pcen_frames"):
        FreqConvTCN(pcen_frames=1)


def test_a_floor_plane_needs_the_freqconv_network() -> None:
    from models.config import TrainConfig, build_net

    cfg = TrainConfig()
    cfg.net.kind, cfg.net.floor_frames = "tcn", 100
    with pytest.raises(ValueError, match="floor_frames needs net"):
        build_net(cfg, FeatureParams())
    cfg.net.kind = "freqconv"
    assert build_net(cfg, FeatureParams()).receptive_field == 2 * 4 + 2 * 31 + 4 + 99
    cfg.net.kind, cfg.net.floor_frames, cfg.net.pcen_frames = "tcn", 0, 100
    with pytest.raises(ValueError, match="pcen_frames needs net"):
        build_net(cfg, FeatureParams())
    cfg.net.kind = "freqconv"
    assert build_net(cfg, FeatureParams()).receptive_field == 2 * 4 + 2 * 31 + 99


@pytest.mark.parametrize("second", [(4, 8, 8), (8, 8, 8)], ids=["joined", "side-by-side"])
def test_an_ensemble_can_take_a_class_from_one_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: tuple[int, ...]
) -> None:
    """`harken export ... --ensemble B.onnx --member-weights smoke_alarm=1,0`: the alarm's
    logit is the first model's alone and the other classes keep the mean of both, whether
    the members are joined into one network or run side by side; the contract says so, and
    weights that name no class, miss a model or do not add up are refused by name."""
    from models.export import ensemble_onnx, export_onnx
    from service.decision import DecisionParams

    nets = [_freqconv_with_running_stats(10), _freqconv_with_running_stats(11, second)]
    decisions = {c: DecisionParams() for c in D.CLASSES}
    paths = [tmp_path / f"m{i}.onnx" for i in range(2)]
    for i, (net, path) in enumerate(zip(nets, paths, strict=True)):
        export_onnx(net, path, D.CLASSES, 3, decisions, "fc", f"0.0.{i}", {"parameters": 100, "macs_per_frame": 7})
    model, contract = ensemble_onnx(paths, {"smoke_alarm": [1.0, 0.0]})
    assert contract.training["member_weights"] == {"smoke_alarm": [1.0, 0.0]}
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    one = sum(n.op_type == "Conv" for n in onnx.load(str(paths[0])).graph.node)
    assert convs == (one if second == (4, 8, 8) else 2 * one)
    pair = tmp_path / "pair.onnx"
    onnx.save(model, str(pair))
    feats = LogMel().frames(synth.background(4.0, np.random.default_rng(3)).astype(np.float32) * 0.1)
    scores = Detector.load(pair).scores(feats)
    field = nets[0].receptive_field
    x = torch.from_numpy(pad_stream(feats, field - 3, 3))[None]
    with torch.no_grad():
        logits = [net(x)[0].numpy() for net in nets]
    alarm = D.CLASSES.index("smoke_alarm")
    weights = np.full((2, len(D.CLASSES)), 0.5)
    weights[:, alarm] = (1.0, 0.0)
    expected = 1.0 / (1.0 + np.exp(-(weights[0] * logits[0] + weights[1] * logits[1])))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(scores[:, alarm], Detector.load(paths[0]).scores(feats)[:, alarm], atol=1e-5)
    assert not np.allclose(scores[:, 0], Detector.load(paths[0]).scores(feats)[:, 0], atol=1e-3)
    for weights_given, reason in [
        ({"smoke_alarms": [1.0, 0.0]}, "no class 'smoke_alarms'"),
        ({"smoke_alarm": [1.0]}, "1 given for 2 members"),
        ({"smoke_alarm": [0.7, 0.7]}, "together 1"),
        ({"smoke_alarm": [1.5, -0.5]}, "each at least 0"),
    ]:
        with pytest.raises(ValueError, match=reason):
            ensemble_onnx(paths, weights_given)
    # The command line: CLASS=W,W with --ensemble; the same refusals as clear errors.
    out = ["--out", str(tmp_path / "x.onnx")]
    assert cli.main(["export", "--checkpoint", str(paths[0]), "--member-weights", "smoke_alarm=1,0", *out]) != 0
    assert "give --ensemble MORE.onnx too" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(paths[0]), "--ensemble", str(paths[1]),
                     "--member-weights", "smoke_alarm:1,0", *out]) != 0
    assert "write CLASS=W,W" in capsys.readouterr().err


def test_onset_term_wants_confident_first_frames() -> None:
    cfg = LossConfig(non_target=0, pooled=0, smooth=0, cross=0, onset=1.0, onset_frames=10)
    loss = EventAwareLoss(cfg, CLASSES)
    late = torch.full((1, 60, 3), -6.0)
    late[0, 30:50, 0] = 6.0  # confident, but 20 frames after the labelled start
    early = torch.full((1, 60, 3), -6.0)
    early[0, 10:50, 0] = 6.0
    target = torch.zeros(1, 60, 3)
    target[0, 10:50, 0] = 1
    weight = torch.ones(1, 60, 3)
    events = [(0, 0, 10, 50, 1.0)]
    late_loss, parts = loss(late, target, weight, events)
    early_loss, _ = loss(early, target, weight, events)
    assert set(parts) == {"onset"}
    assert float(early_loss) < 0.01 < 1.0 < float(late_loss)
    # An event whose start lies before the crop gives no onset term.
    none, _ = loss(late, target, weight, events, onset_events=[])
    assert float(none) == 0.0


def test_an_exported_network_unfolds_into_a_trainable_one(tmp_path: Path) -> None:
    """`harken train --init MODEL.onnx` (models/unfold.py): the folded weights go back into
    a network whose batch norms are unfolded around the statistics of a sample. In
    evaluation it scores as the exported model; in training, on that sample, the norms
    pass what they get unchanged (so fine-tuning starts from the model, not a disturbed
    copy); a side-by-side member is picked by index; a different shape is refused by name."""
    from models.config import load_config
    from models.export import ensemble_onnx, export_onnx, write_member
    from models.unfold import read_member, unfold_into
    from service.decision import DecisionParams

    decisions = {c: DecisionParams() for c in D.CLASSES}
    original = _freqconv_with_running_stats(5)
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        original.feature_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "fc.onnx"
    export_onnx(original, path, D.CLASSES, 3, decisions, "fc", "0.0.0", {"parameters": 100, "macs_per_frame": 7})
    rng = np.random.default_rng(4)
    sample = torch.from_numpy(np.stack([
        LogMel().frames(synth.background(1.0, rng).astype(np.float32) * 0.1) for _ in range(6)
    ]))
    fresh = FreqConvTCN(freq_channels=(4, 8, 8), channels=12, dilations=(1, 2, 4))
    unfold_into(fresh, read_member(path), sample)
    with torch.no_grad():
        expected = original.eval()(sample)
        torch.testing.assert_close(fresh.eval()(sample), expected, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(fresh.train()(sample), expected, atol=2e-4, rtol=1e-3)
    assert not torch.allclose(fresh.stem_norm.running_var, torch.ones_like(fresh.stem_norm.running_var))
    # Members of mixed shapes stay side by side in an ensemble; --init-member picks one.
    other = _freqconv_with_running_stats(6, (8, 8, 8))
    other_path = tmp_path / "fc-wide.onnx"
    export_onnx(other, other_path, D.CLASSES, 3, decisions, "fc", "0.0.1", {"parameters": 100, "macs_per_frame": 7})
    pair, _ = ensemble_onnx([path, other_path])
    pair_path = tmp_path / "pair.onnx"
    onnx.save(pair, str(pair_path))
    wide = FreqConvTCN(freq_channels=(8, 8, 8), channels=12, dilations=(1, 2, 4))
    unfold_into(wide, read_member(pair_path, 1), sample)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(sample), other(sample), atol=2e-5, rtol=1e-4)
    # `harken export --member 1`: the same member written as a model of its own, scoring as it did.
    member_path = tmp_path / "member1.onnx"
    recipe = tmp_path / "wide.yaml"
    recipe.write_text("net: {kind: freqconv, freq_channels: [8, 8, 8], channels: 12, dilations: [1, 2, 4], "
                      "lookahead_frames: 3}\n")
    assert cli.main(["export", "--checkpoint", str(pair_path), "--member", "1", "--config", str(recipe),
                     "--out", str(member_path)]) == 0
    member = Detector.load(member_path)
    assert member.contract.model_name == "fc-x2-member1" and member.contract.training["member"] == 1
    assert member.contract.training["parameters"] == sum(p.numel() for p in other.parameters())
    assert member.contract.training["macs_per_frame"] == other.macs_per_frame()
    # A pair's member joined with more networks is named for its recipe and the count.
    assert [export.family_name(n) for n in ("fc-x2-member1", "fc-x2", "fc", "fc-x10-member0-x3")] == ["fc"] * 4
    frames = sample[0].numpy()
    with torch.no_grad():
        padded = torch.from_numpy(pad_stream(frames, other.receptive_field - 3, 3))
        direct = torch.sigmoid(other.eval()(padded[None]))[0].numpy()
    np.testing.assert_allclose(member.scores(frames), direct, atol=1e-4)
    assert cli.main(["export", "--checkpoint", str(pair_path), "--member", "1", "--out", str(member_path)]) != 0
    with pytest.raises(ValueError, match="no member 2"):
        write_member(pair_path, 2, load_config(recipe), member_path)
    with pytest.raises(ValueError, match="--init-member"):
        read_member(pair_path)
    with pytest.raises(ValueError, match="no member 2"):
        read_member(pair_path, 2)
    joined, _ = ensemble_onnx([path, path])  # one shape: one joined network, no members to read
    onnx.save(joined, str(pair_path))
    with pytest.raises(ValueError, match="joined into one network"):
        read_member(pair_path)
    with pytest.raises(ValueError, match=r"layer stem: .*use the recipe the model was trained with"):
        unfold_into(FreqConvTCN(freq_channels=(8, 8, 8), channels=12, dilations=(1, 2, 4)), read_member(path), sample)


@pytest.mark.parametrize("alarm_weights", [None, [0.8, 0.2]], ids=["mean", "weighted"])
def test_a_joined_member_comes_back_with_the_other_members_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alarm_weights: list[float] | None
) -> None:
    """`harken export --checkpoint JOINED.onnx --member 0`: a joined network keeps each
    member's layers as slices but only the (weighted) sum of their head biases. Its
    contract records each member's (since the tenth round), so member 0 comes back exactly
    and scores as the network it was; from a file without the record (2.4.0) it comes back
    when member 1's own model is given (`--other-members`), and a wrong or missing other
    member is refused by name."""
    from dataclasses import replace

    from models.export import ensemble_onnx, export_onnx, write_contract
    from service.decision import DecisionParams

    nets = [_freqconv_with_running_stats(20), _freqconv_with_running_stats(21)]
    with torch.no_grad():
        nets[0].head.bias.uniform_(-2.0, 2.0)  # biases far apart: a wrong split would show
    decisions = {c: DecisionParams() for c in D.CLASSES}
    paths = [tmp_path / f"m{i}.onnx" for i in range(2)]
    for i, (net, path) in enumerate(zip(nets, paths, strict=True)):
        export_onnx(net, path, D.CLASSES, 3, decisions, "fc", f"0.0.{i}", {"parameters": 100, "macs_per_frame": 7})
    joined, contract = ensemble_onnx(paths, {"smoke_alarm": alarm_weights} if alarm_weights else None)
    assert joined.graph.name == "harken-joined"
    joined_path = tmp_path / "joined.onnx"
    onnx.save(joined, str(joined_path))
    unrecorded = onnx.load(str(joined_path))  # as files joined before the tenth round
    members = [{k: v for k, v in m.items() if k != "head_bias"} for m in contract.training["members"]]
    write_contract(unrecorded, replace(contract, training={**contract.training, "members": members}))
    unrecorded_path = tmp_path / "unrecorded.onnx"
    onnx.save(unrecorded, str(unrecorded_path))
    recipe = tmp_path / "fc.yaml"
    recipe.write_text("net: {kind: freqconv, freq_channels: [4, 8, 8], channels: 12, dilations: [1, 2, 4], "
                      "lookahead_frames: 3}\n")
    out = tmp_path / "member0.onnx"
    feats = LogMel().frames(synth.background(3.0, np.random.default_rng(5)).astype(np.float32) * 0.1)
    expected = Detector.load(paths[0]).scores(feats)
    for source, others in [(joined_path, []), (unrecorded_path, ["--other-members", str(paths[1])])]:
        assert cli.main(["export", "--checkpoint", str(source), "--member", "0", "--config", str(recipe),
                         "--out", str(out), *others]) == 0
        np.testing.assert_allclose(Detector.load(out).scores(feats), expected, atol=1e-5)
    command = ["export", "--checkpoint", str(unrecorded_path), "--member", "0", "--config", str(recipe),
               "--out", str(out)]
    capsys.readouterr()
    for others, reason in [([], "needs the other 1 member"), ([paths[0]], "is not the joined network's member 1")]:
        assert cli.main([*command, *(["--other-members", *map(str, others)] if others else [])]) != 0
        assert reason in capsys.readouterr().err


def _exported_freqconv_and_sample(
    tmp_path: Path, seed: int, sample_seed: int
) -> tuple[FreqConvTCN, Path, torch.Tensor]:
    """A small FreqConvTCN, its exported `.onnx`, and six 1-s background log-mels to score."""
    from models.export import export_onnx
    from service.decision import DecisionParams

    original = _freqconv_with_running_stats(seed)
    path = tmp_path / "fc.onnx"
    export_onnx(original, path, D.CLASSES, 3, {c: DecisionParams() for c in D.CLASSES}, "fc", "0.0.0",
                {"parameters": 100, "macs_per_frame": 7})
    rng = np.random.default_rng(sample_seed)
    sample = torch.from_numpy(np.stack([
        LogMel().frames(synth.background(1.0, rng).astype(np.float32) * 0.1) for _ in range(6)
    ]))
    return original, path, sample


def test_a_network_grows_a_longer_memory_from_exported_or_saved_weights(tmp_path: Path) -> None:
    """`harken train --init ... --init-grow` (models/unfold.py): a recipe with one more
    dilated block than the weights takes the weights for the blocks they have; the new last
    block starts near the identity, so the grown network scores almost as the one it grew
    from (its receptive field longer by the new block's reach, into the past), and the new
    block learns (it has a gradient). A recipe that does not grow is refused by name."""
    from models.unfold import NEW_BLOCK_SCALE, grown_state, read_member, unfold_into

    original, path, sample = _exported_freqconv_and_sample(tmp_path, 8, 5)
    reach = 2 * 8  # the new block's kernel 3 at dilation 8: 16 more frames of the past
    with torch.no_grad():
        expected = original.eval()(sample)[:, reach:]
    for source in ("onnx", "checkpoint"):
        grown = FreqConvTCN(freq_channels=(4, 8, 8), channels=12, dilations=(1, 2, 4, 8))
        assert grown.receptive_field == original.receptive_field + reach
        if source == "onnx":
            unfold_into(grown, read_member(path), sample, grow=True)
        else:
            grown.load_state_dict(grown_state(grown, original.state_dict(), sample))
        assert torch.allclose(grown.blocks[3].norm.weight, torch.full((12,), NEW_BLOCK_SCALE))
        with torch.no_grad():
            scores = grown.eval()(sample)
        assert scores.shape == expected.shape
        difference = float((scores - expected).abs().max())
        assert 0.0 < difference < 0.05 * float(expected.abs().max()), (source, difference)
        grown.train()
        grown(sample).square().mean().backward()
        assert grown.blocks[3].conv.weight.grad is not None
        assert float(grown.blocks[3].conv.weight.grad.abs().sum()) > 0.0
        assert float(grown.blocks[3].norm.weight.grad.abs().sum()) > 0.0
    same = FreqConvTCN(freq_channels=(4, 8, 8), channels=12, dilations=(1, 2, 4))
    with pytest.raises(ValueError, match="growing needs fewer"):
        grown_state(same, original.state_dict(), sample)
    with pytest.raises(ValueError, match="3 temporal blocks, the recipe's network 2 and 2"):
        unfold_into(FreqConvTCN(freq_channels=(4, 8, 8), channels=12, dilations=(1, 2)), read_member(path),
                    sample, grow=True)


def test_a_network_gains_the_floor_plane_from_exported_or_saved_weights(tmp_path: Path) -> None:
    """`harken train --init ...` with a recipe that reads each band over its floor
    (`net.floor_frames`) and weights without that plane (models/unfold.py `add_floor_plane`):
    the stem's weights for the new plane start at zero, so the network scores exactly as the
    one it came from (from the floor's first frame on), and the plane learns (its weights
    have a gradient). Weights that already have two planes, or a stem of other channels,
    are not reshaped."""
    from models.net import floor_shrink
    from models.unfold import add_floor_plane, read_member, state_with_floor_plane, unfold_into

    original, path, sample = _exported_freqconv_and_sample(tmp_path, 9, 6)
    floor = 12
    with torch.no_grad():
        expected = original.eval()(sample)[:, floor_shrink(floor):]
    for source in ("onnx", "checkpoint"):
        gained = FreqConvTCN(freq_channels=(4, 8, 8), channels=12, dilations=(1, 2, 4), floor_frames=floor)
        if source == "onnx":
            unfold_into(gained, read_member(path), sample)
        else:
            gained.load_state_dict(state_with_floor_plane(gained, original.state_dict()))
        assert float(gained.stem.weight[:, 1].abs().max()) == 0.0
        with torch.no_grad():
            scores = gained.eval()(sample)
        assert scores.shape == expected.shape
        np.testing.assert_allclose(scores.numpy(), expected.numpy(), atol=1e-4, err_msg=source)
        gained.train()
        gained(sample).square().mean().backward()
        assert gained.stem.weight.grad is not None
        assert float(gained.stem.weight.grad[:, 1].abs().sum()) > 0.0, source
    two_planes = torch.ones((4, 2, 3, 3))
    assert add_floor_plane(gained, two_planes) is two_planes
    plain = _freqconv_with_running_stats(9)
    assert state_with_floor_plane(plain, original.state_dict())["stem.weight"].shape == (4, 1, 3, 3)


def test_live_training_resumes_exports_and_mines(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny["root"]
    config = root / "live.yaml"
    config.write_text(LIVE_CONFIG)
    base = ["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(root / "cache")]
    # One run of 8 steps, and one stopped after 4 steps then resumed: the same weights.
    assert cli.main([*base, "--out", str(root / "whole")]) == 0
    half = root.joinpath("half")
    assert cli.main([*base, "--out", str(half), "--max-minutes", "0"]) == 0
    first = torch.load(half / "last.pt", weights_only=False)["state"]["step"]
    assert first == 4  # stopped at the first evaluation after the deadline
    assert cli.main([*base, "--out", str(half)]) == 0
    whole = torch.load(root / "whole" / "last.pt", weights_only=False)
    resumed = torch.load(half / "last.pt", weights_only=False)
    assert resumed["state"]["step"] == whole["state"]["step"] == 8
    for name, value in whole["net"].items():
        torch.testing.assert_close(resumed["net"][name], value, msg=name)
    report = json.loads((root / "whole" / "report.json").read_text())
    assert report["data"]["dev_negatives_hours"] == pytest.approx(40 / 3600, abs=1e-3)
    assert report["dev_tuned"]["negative_hours"] > 0
    onnx_path = root / "live.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "whole" / "best.pt"), "--out", str(onnx_path),
                     "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
                     "--cache", str(root / "cache")]) == 0
    dev_report = json.loads(onnx_path.with_suffix(".dev.json").read_text())
    assert dev_report["procedural_alarms"]["scenes"] == 36
    assert dev_report["dev_tuned"]["negative_hours"] > 0
    detector = Detector.load(onnx_path)
    assert detector.contract.model_name == "tiny-live"
    # A model .onnx is re-tuned without its checkpoint: ONNX Runtime scores, the recipe's
    # dev set and rules, so the same decisions; the network and its name stay, the contract says so.
    retuned = root / "retuned.onnx"
    retune = ["export", "--checkpoint", str(onnx_path), "--out", str(retuned), "--config", str(config),
              "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]), "--cache", str(root / "cache")]
    assert cli.main([*retune, "--version", "9.9.9"]) == 0
    again = Detector.load(retuned).contract
    assert again.model_version == "9.9.9"
    assert dict(again.decision) == dict(detector.contract.decision)
    assert again.training["retuned_with"] == str(config)
    assert again.training["steps"] == detector.contract.training["steps"]
    assert json.loads(retuned.with_suffix(".dev.json").read_text())["dev_tuned"] == dev_report["dev_tuned"]
    assert cli.main([*retune[:5], "--data", str(tiny["data"])]) != 0  # no --config: one clear error
    # The network at every evaluation is kept; --weights exports one or the average of several.
    evals = sorted((root / "whole" / "evals").glob("step-*.pt"))
    assert [p.name for p in evals] == ["step-4.pt", "step-8.pt"]
    averaged = root / "averaged.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "whole" / "best.pt"), "--out", str(averaged),
                     "--weights", *map(str, evals), "--data", str(tiny["data"]), "--cache", str(root / "cache")]) == 0
    assert Detector.load(averaged).contract.training["weights"] == ["step-4.pt", "step-8.pt"]
    assert cli.main(["export", "--checkpoint", str(root / "whole" / "best.pt"), "--out", str(averaged),
                     "--weights", str(evals[0])]) != 0
    mined = root / "hard.json"
    assert cli.main(["mine", "--checkpoint", str(root / "whole" / "best.pt"), "--negatives", str(tiny["negatives"]),
                     "--out", str(mined), "--cache", str(root / "cache")]) == 0
    result = json.loads(mined.read_text())
    assert result["negative_hours"] == pytest.approx(60 / 3600, abs=1e-3)
    assert set(result["fa_per_hour"]) == set(D.CLASSES)
    assert all(len(w) == 2 and w[1] > 0 for w in result["windows"])
    # Each window carries the class it was reported as (live.hard_negative_class_weight reads it).
    assert len(result["window_classes"]) == len(result["windows"])
    assert set(result["window_classes"]) <= set(D.CLASSES)
    # The exported model mines the same windows (ONNX Runtime scores, the contract's decisions).
    mined_onnx = root / "hard-onnx.json"
    assert cli.main(["mine", "--checkpoint", str(onnx_path), "--negatives", str(tiny["negatives"]),
                     "--out", str(mined_onnx), "--threshold", "0.3", "--cache", str(root / "cache"),
                     "--data", str(tiny["data"])]) == 0
    assert cli.main(["mine", "--checkpoint", str(root / "whole" / "best.pt"), "--negatives", str(tiny["negatives"]),
                     "--out", str(mined), "--threshold", "0.3", "--cache", str(root / "cache")]) == 0
    by_onnx, by_torch = json.loads(mined_onnx.read_text()), json.loads(mined.read_text())
    assert by_onnx["negative_hours"] == by_torch["negative_hours"]
    assert len(by_onnx["windows"]) == len(by_torch["windows"])
    # --data: the household confusers of the data's train split are scored too, clip by clip.
    assert by_onnx["confuser_hours"] > 0 and set(by_onnx["confuser_fa_per_hour"]) == set(D.CLASSES)
    assert by_onnx["confusers"]
    assert all((tiny["data"] / name).is_file() and n > 0 for name, n in by_onnx["confusers"].items())
    assert "confusers" not in by_torch
    # --classes: one class's reports only, as windows and per confuser clip; an unknown class is named.
    one_class = root / "hard-cry.json"
    assert cli.main(["mine", "--checkpoint", str(onnx_path), "--negatives", str(tiny["negatives"]),
                     "--out", str(one_class), "--threshold", "0.3", "--cache", str(root / "cache"),
                     "--data", str(tiny["data"]), "--classes", "baby_cry"]) == 0
    by_cry = json.loads(one_class.read_text())
    assert by_cry["mined_classes"] == ["baby_cry"] and by_cry["fa_per_hour"] == by_onnx["fa_per_hour"]
    assert by_cry["window_classes"] == [c for c in by_onnx["window_classes"] if c == "baby_cry"]
    assert set(by_cry["confusers"]) <= set(by_onnx["confusers"])
    capsys.readouterr()
    assert cli.main(["mine", "--checkpoint", str(onnx_path), "--negatives", str(tiny["negatives"]),
                     "--out", str(one_class), "--cache", str(root / "cache"), "--classes", "doorbell"]) != 0
    assert "--classes: unknown class(es) ['doorbell']" in capsys.readouterr().err
    # A fine-tuning round with the mined windows starts from the checkpoint.
    assert cli.main([*base, "--out", str(root / "round2"), "--init", str(root / "whole" / "best.pt"),
                     "--hard-negatives", str(mined_onnx), str(mined), "--steps", "4", "--seed", "11"]) == 0
    round2 = json.loads((root / "round2" / "report.json").read_text())["data"]
    # Two mining runs are joined, a window both found kept once.
    assert round2["hard_negative_files"] == ["hard-onnx.json", "hard.json"]
    capsys.readouterr()
    assert cli.main([*base, "--out", str(root / "round2-missing"), "--hard-negatives", str(mined),
                     str(root / "missing.json"), "--steps", "4"]) != 0
    assert f"--hard-negatives {root / 'missing.json'} not found" in capsys.readouterr().err
    # --seed: another seed of the same recipe, recorded with the run.
    assert torch.load(root / "round2" / "best.pt", weights_only=False)["config"]["seed"] == 11
    assert torch.load(root / "whole" / "best.pt", weights_only=False)["config"]["seed"] == 3
    assert round2["hard_negative_windows"] == len({tuple(w) for w in by_onnx["windows"] + by_torch["windows"]})
    assert round2["hard_confuser_clips"] == len(by_onnx["confusers"])
    # --init-grow: a recipe with one more dilated block starts from the exported model.
    grown_recipe = root / "grown.yaml"
    grown_recipe.write_text(LIVE_CONFIG.replace("dilations: [1, 2]", "dilations: [1, 2, 4]"))
    grow = ["train", "--config", str(grown_recipe), *base[3:], "--steps", "4"]
    assert cli.main([*grow, "--out", str(root / "grown"), "--init", str(onnx_path), "--init-grow"]) == 0
    assert torch.load(root / "grown" / "best.pt", weights_only=False)["config"]["net"]["dilations"] == (1, 2, 4)
    assert cli.main([*grow, "--out", str(root / "grown-bare"), "--init-grow"]) != 0  # nothing to grow from
    assert cli.main([*grow, "--out", str(root / "grown-not"), "--init", str(onnx_path)]) != 0  # shape refused
    # Two runs of one recipe, exported, join as one network (--ensemble), tuned for it.
    other, pair = root / "round2.onnx", root / "pair.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "round2" / "best.pt"), "--out", str(other)]) == 0
    # A run's resume file is not an export: a clear error, not a traceback.
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(root / "round2" / "last.pt"), "--out", str(other)]) != 0
    assert "not an exportable checkpoint (a run's resume file, last.pt?)" in capsys.readouterr().err
    assert cli.main([*retune[:5], "--out", str(pair), "--ensemble", str(other)]) != 0  # no --data: clear error
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other)]) == 0
    joined = Detector.load(pair).contract
    assert joined.model_name == "tiny-live-x2"
    assert joined.training["ensemble"] == ["tiny-live 1.0.0", "tiny-live 1.0.0"]
    assert joined.training["parameters"] == 2 * report["parameters"]
    assert [m["seed"] for m in joined.training["members"]] == [3, 11] and "seed" not in joined.training
    assert joined.training["licences"] == "all" and "non-commercial" in joined.training["weights_licence"]
    assert "shipping" in json.loads(pair.with_suffix(".dev.json").read_text())
    assert "score_cv" not in json.loads(pair.with_suffix(".dev.json").read_text())["shipping"]
    # --cross-validate scores the tuning itself: tuned on one half of dev, scored on the other.
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--cross-validate"]) == 0
    shipping = json.loads(pair.with_suffix(".dev.json").read_text())["shipping"]
    assert len(shipping["folds"]) == 2 and shipping["score_cv"] == pytest.approx(sum(shipping["folds"]) / 2, abs=1e-4)
    # Rule 5: the same decisions scored on fresh draws of the dev scenes (other beds and levels
    # for the same recordings), with the shared negatives counted in each draw.
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "11", "12"]) == 0
    drawn = json.loads(pair.with_suffix(".dev.json").read_text())
    shipping = drawn["shipping"]
    assert [d["seed"] for d in shipping["draws"]] == [11, 12]
    assert shipping["score_draws"] == pytest.approx(sum(d["score"] for d in shipping["draws"]) / 2, abs=1e-4)
    selection_events = sum(m["tp"] + m["fn"] for m in drawn["dev_tuned"]["per_class"].values())
    assert all(sum(d["events"].values()) == selection_events for d in shipping["draws"])
    assert drawn["dev_tuned"]["per_class"]["baby_cry"]["fa_per_hour"] == pytest.approx(
        shipping["draws"][0]["fa_per_hour"]["baby_cry"], abs=1.0)  # same negatives hours, nearly the same count
    # python -m models.pick_export reads what the export wrote: the mean over named draws.
    from models import pick_export

    picked = root / "picked.json"
    assert pick_export.main([str(pair.with_suffix(".dev.json")), "--pick-draws", "11", "--judge-draws", "12",
                             "--json", str(picked)]) == 0
    figures = json.loads(picked.read_text())["figures"]["pair"]
    assert figures["pick"]["score"] == shipping["draws"][0]["score"]
    assert figures["judge"]["score"] == shipping["draws"][1]["score"]
    assert figures["selection"] == shipping["score"]
    with pytest.raises(SystemExit):
        pick_export.main([str(pair.with_suffix(".dev.json")), "--pick-draws", "13"])  # not scored: clear error
    # --tune-draws: the decisions tuned on more draws of scenes; a scored draw cannot be one of them.
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "11",
                     "--tune-draws", "7"]) == 0
    assert json.loads(pair.with_suffix(".dev.json").read_text())["shipping"]["tuned_on_draws"] == [7]
    # ... with the shared negatives counted with each tuning draw, as rule 5 scores a draw.
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "11",
                     "--tune-draws", "7", "--tune-draws-shared", "each"]) == 0
    assert json.loads(pair.with_suffix(".dev.json").read_text())["shipping"]["tuned_shared"] == "each draw"
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--tune-draws-shared", "each"]) != 0
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "7",
                     "--tune-draws", "7"]) != 0
    # --tune-onset-draws: the onset-only parameters tuned on more draws, nothing else moved.
    tuned_before = json.loads(pair.with_suffix(".dev.json").read_text())["tuned_decisions"]
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "11",
                     "--tune-draws", "7", "--tune-onset-draws", "8"]) == 0
    onset_tuned = json.loads(pair.with_suffix(".dev.json").read_text())
    assert onset_tuned["shipping"]["onset_tuned_on_draws"] == [8]
    onset_only = {"onset_lookback_s", "onset_rise_threshold", "onset_rise_s", "onset_touch_s",
                  "onset_touch_threshold", "onset_advance_s"}
    for c, params in onset_tuned["tuned_decisions"].items():
        assert {k: v for k, v in params.items() if k not in onset_only} == {
            k: v for k, v in tuned_before[c].items() if k not in onset_only}
    assert cli.main([*retune, "--out", str(pair), "--ensemble", str(other), "--scene-draws", "8",
                     "--tune-onset-draws", "8"]) != 0


def test_mined_confusers_weigh_more_in_confuser_beds(maker: LiveSceneMaker) -> None:
    rng = np.random.default_rng(0)
    up, down = np.full(8000, 0.2, np.float32), np.full(8000, -0.2, np.float32)
    only_up = D.negative_bed([up, down], 48000, rng, np.array([1.0, 0.0]))
    assert only_up.min() >= 0 and only_up.max() > 0
    both = D.negative_bed([up, down], 48000, np.random.default_rng(0))
    assert both.min() < 0 < both.max()
    n = len(maker.bank.negatives)
    cfg = LiveSceneConfig(enabled=True, hard_confuser_weight=4.0)
    mined = LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, cfg, 120, 10, 2,
                           confuser_reports=[3] + [0] * (n - 1))
    assert mined.confuser_weights is not None
    assert mined.confuser_weights[0] == pytest.approx(13 / (13 + n - 1))
    with pytest.raises(ValueError, match="confuser_reports has 1 entries"):
        LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, cfg, 120, 10, 2, confuser_reports=[1])


def test_mined_windows_of_a_weighted_class_are_drawn_more_often(maker: LiveSceneMaker) -> None:
    """`live.hard_negative_class_weight`: the windows a class was reported on (`harken mine`
    records it per window) are drawn that many times as often as the rest."""
    windows = [(0, 16000), (16000, 16000), (32000, 16000), (48000, 16000)]
    classes = ["baby_cry", "baby_cry", "baby_cry", "smoke_alarm"]
    cfg = LiveSceneConfig(enabled=True, hard_negative_prob=1.0, hard_negative_class_weight={"smoke_alarm": 9.0})
    weighted = LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, cfg, 120, 10, 2,
                              hard_negatives=windows, hard_negative_classes=classes)
    assert weighted.hard_weights is not None
    np.testing.assert_allclose(weighted.hard_weights, [1 / 12, 1 / 12, 1 / 12, 9 / 12])
    # Without the option the draws stay uniform (and the random stream as before).
    plain = LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, LiveSceneConfig(enabled=True), 120, 10, 2,
                           hard_negatives=windows, hard_negative_classes=classes)
    assert plain.hard_weights is None
    with pytest.raises(ValueError, match="mine again"):  # windows mined before classes were recorded
        LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, cfg, 120, 10, 2, hard_negatives=windows)
    unknown = LiveSceneConfig(enabled=True, hard_negative_class_weight={"doorbell": 2.0})
    with pytest.raises(ValueError, match="unknown class"):
        LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, unknown, 120, 10, 2,
                       hard_negatives=windows, hard_negative_classes=classes)


def test_mine_without_checkpoint_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mine", "--checkpoint", str(tmp_path / "nope.pt"), "--negatives", str(tmp_path),
                     "--out", str(tmp_path / "x.json")]) != 0
    assert "nope.pt not found" in capsys.readouterr().err


def test_feature_params_unchanged() -> None:
    # The live recipe keeps the feature contract: old and new models load in the same daemon.
    assert FeatureParams().version == "logmel-v1"


def test_class_levels_place_one_class_over_louder_beds_and_leave_the_rest(maker: LiveSceneMaker) -> None:
    """`live.class_levels`: glass events at their own EBR and level floor (here far under
    the bed); the generator draws the same numbers, so scenes without glass are unchanged."""
    base = dict(enabled=True, events_per_scene=(0.0, 1.0, 0.0, 0.0), level="absolute", bed={"negatives": 1.0},
                codec_prob=0.0, gap_prob=0.0, stream_start_prob=0.0, overdrive_prob=0.0)
    quiet_glass = {"glass_break": {"ebr_db": [-30.0, -30.0], "event_min_dbfs": [-90.0, -90.0]}}
    makers = [LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, LiveSceneConfig(**base, **extra),
                             crop_frames=200, receptive_field=20, lookahead=4)
              for extra in ({}, {"class_levels": quiet_glass})]
    seen = set()
    for seed in range(40):
        plain, quieter = (m.make(np.random.default_rng(seed)) for m in makers)
        assert plain.events == quieter.events
        if not plain.events:
            continue
        cls, first, end, _w = plain.events[0]
        seen.add(D.CLASSES[cls])
        if D.CLASSES[cls] == "glass_break":
            rows = slice(first + 16, end + 16)  # output frame i is input row i + context
            assert quieter.features[rows].mean() < plain.features[rows].mean() - 0.5
        else:
            np.testing.assert_array_equal(plain.features, quieter.features)
    assert "glass_break" in seen and len(seen) >= 2
    with pytest.raises(ValueError, match="class_levels: unknown class 'glas'"):
        LiveSceneConfig(class_levels={"glas": {"ebr_db": (0.0, 1.0)}})
    with pytest.raises(ValueError, match=r"class_levels\.glass_break: unknown key"):
        LiveSceneConfig(class_levels={"glass_break": {"ebr": (0.0, 1.0)}})
    with pytest.raises(ValueError, match=r"a \[low, high\] pair"):
        LiveSceneConfig(class_levels={"glass_break": {"ebr_db": (5.0, 1.0)}})


def test_absolute_levels_make_quiet_rooms_without_events_too(maker: LiveSceneMaker) -> None:
    """With `level: absolute` the level of a scene does not tell whether an event is in it
    (with peak scaling an event-free quiet room was scaled up: quiet meant "event")."""
    cfg = LiveSceneConfig(enabled=True, events_per_scene=(0.5, 0.5, 0.0, 0.0), level="absolute",
                          bed={"quiet": 1.0}, codec_prob=0.0, gap_prob=0.0)
    quiet = LiveSceneMaker(maker.bank, maker.negatives, maker.scene_cfg, cfg,
                           crop_frames=200, receptive_field=20, lookahead=4)
    rng = np.random.default_rng(5)
    floor_with, floor_without = [], []
    for _ in range(30):
        scene = quiet.make(rng)
        # The quietest tenth of the frames: the room, not the event.
        floor = float(np.percentile(scene.features.mean(axis=1), 10))
        (floor_with if scene.events else floor_without).append(floor)
    assert floor_with and floor_without
    assert abs(np.median(floor_with) - np.median(floor_without)) < 2.0  # natural-log units
    assert max(floor_without) < LogMel().silence_frame[0] + 8.0  # rooms below about -45 dBFS


def test_change_speed_moves_pitch_and_length_together() -> None:
    """`data.speed`'s resampling: a 1 kHz tone played 1.25 times as fast is 1.25 kHz and
    lasts 0.8 of the time; its labelled spans shrink with it."""
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    fast, spans = D.change_speed(tone, [(0.2, 0.6)], 1.25)
    assert fast.dtype == np.float32 and fast.shape[0] == 12800
    assert spans == [pytest.approx((0.16, 0.48))]
    spectrum = np.abs(np.fft.rfft(fast[1000:-1000] * np.hanning(fast.shape[0] - 2000)))
    peak_hz = np.argmax(spectrum) * 16000 / (fast.shape[0] - 2000)
    assert peak_hz == pytest.approx(1250, abs=5)
    slow, _ = D.change_speed(tone, [], 0.8)
    assert slow.shape[0] == 20000


def test_speed_changes_only_the_named_class(maker: LiveSceneMaker) -> None:
    """`data.speed: {baby_cry: [1.2, 1.2]}`: every cry is picked as before and then played
    faster; glass is picked with the same draws and left as it was."""
    from dataclasses import replace

    fast_cries = D.SceneMaker(maker.bank, replace(maker.scene_cfg, speed={"baby_cry": (1.2, 1.2)}))
    plain = D.SceneMaker(maker.bank, maker.scene_cfg)
    for seed in range(6):
        cry, cry_spans, _ = plain.pick_event("baby_cry", np.random.default_rng(seed))
        faster, faster_spans, _ = fast_cries.pick_event("baby_cry", np.random.default_rng(seed))
        assert faster.shape[0] == pytest.approx(cry.shape[0] / 1.2, abs=2)
        assert faster_spans == [pytest.approx((a / 1.2, b / 1.2)) for a, b in cry_spans]
        glass = [m.pick_event("glass_break", np.random.default_rng(seed)) for m in (plain, fast_cries)]
        np.testing.assert_array_equal(glass[0][0], glass[1][0])
        assert glass[0][1] == glass[1][1]
    with pytest.raises(ValueError, match=r"data\.speed: unknown class 'cry'"):
        D.SceneConfig(speed={"cry": (0.9, 1.1)})
    with pytest.raises(ValueError, match=r"data\.speed\.baby_cry: a \[low, high\] pair"):
        D.SceneConfig(speed={"baby_cry": (1.1, 0.9)})
    with pytest.raises(ValueError, match=r"within 0\.5\.\.2\.0"):
        D.SceneConfig(speed={"baby_cry": (0.1, 1.0)})


def _cry_after_a_knock() -> tuple[np.ndarray, float, float]:
    """3.5 s: quiet hiss, a loud 40-ms knock at 0.5 s, quiet hiss, then a voiced 2.5-s
    "cry" (450 Hz and its harmonics) from 1.0 s. Returns the audio, the label's onset (the
    knock) and where the voiced sound begins."""
    rng = np.random.default_rng(0)
    t = np.arange(int(3.5 * 16000)) / 16000
    audio = 0.001 * rng.standard_normal(t.shape[0])
    knock = slice(8000, 8000 + 640)
    audio[knock] += 0.5 * rng.standard_normal(640)
    voiced = t >= 1.0
    audio[voiced] += 0.2 * sum(np.sin(2 * np.pi * 450 * k * t[voiced]) / k for k in (1, 2, 3, 4))
    return audio.astype(np.float32), 0.5, 1.0


def _cry_only_maker(maker: LiveSceneMaker, voiced: bool, **scene: Any) -> D.SceneMaker:
    """A SceneMaker whose only cry is `_cry_after_a_knock`, labelled from the knock."""
    from dataclasses import replace

    audio, label_s, _ = _cry_after_a_knock()
    bank = copy.copy(maker.bank)
    bank.targets = {**maker.bank.targets, "baby_cry": [(audio, [(label_s, 3.5)], False, None)]}
    cfg = replace(maker.scene_cfg, procedural_share={"baby_cry": 0.0}, voiced_onset_classes=["baby_cry"] if voiced
                  else [], **scene)
    return D.SceneMaker(bank, cfg)


def test_the_onset_window_can_start_where_the_voiced_cry_does(maker: LiveSceneMaker) -> None:
    """`data.voiced_onset_classes`: a cry labelled from the knock before it keeps its label,
    and its onset term's anchor moves to the voiced cry (1.0 s), through excerpts and speed
    changes; a maker without it anchors at the label; both draw the same events."""
    _, label_s, voiced_s = _cry_after_a_knock()
    plain, anchored = _cry_only_maker(maker, False), _cry_only_maker(maker, True)
    assert anchored.voiced_onsets["baby_cry"][0] == pytest.approx(voiced_s, abs=0.1)
    for seed in range(3):
        sig, spans, anchors, _ = anchored.pick_event_anchored("baby_cry", np.random.default_rng(seed))
        same, same_spans, _ = plain.pick_event("baby_cry", np.random.default_rng(seed))
        np.testing.assert_array_equal(sig, same)
        assert spans == same_spans == [(label_s, 3.5)]
        assert anchors == [pytest.approx(voiced_s, abs=0.1)]
        assert plain.pick_event_anchored("baby_cry", np.random.default_rng(seed))[2] == [label_s]
    faster = _cry_only_maker(maker, True, speed={"baby_cry": (1.25, 1.25)})
    _, spans, anchors, _ = faster.pick_event_anchored("baby_cry", np.random.default_rng(0))
    assert spans == [pytest.approx((label_s / 1.25, 3.5 / 1.25))]
    assert anchors == [pytest.approx(voiced_s / 1.25, abs=0.1)]
    # Excerpts of a long recording: the anchor moves with the cut, and a cut that starts
    # after the voiced onset anchors at its own start.
    cuts = _cry_only_maker(maker, True, excerpt_above_s=2.0, excerpt_prob=1.0)
    rng = np.random.default_rng(4)
    for _ in range(20):
        sig, spans, anchors, _ = cuts.pick_event_anchored("baby_cry", rng)
        assert len(spans) == len(anchors) == 1 and spans[0][0] <= anchors[0] < spans[0][1]
        assert anchors[0] == spans[0][0] or anchors[0] > 0.0  # the voiced onset inside the cut
    with pytest.raises(ValueError, match=r"data\.voiced_onset_classes: unknown class 'cry'"):
        D.SceneConfig(voiced_onset_classes=["cry"])


def test_a_voiced_anchor_moves_only_the_onset_window_of_a_live_scene(maker: LiveSceneMaker) -> None:
    """The same live scene with and without `data.voiced_onset_classes`: features, frame
    labels and events are equal; each onset entry starts 20-30 frames later (knock at 0.5 s, cry at 1.0 s)."""
    live = LiveSceneConfig(enabled=True, events_per_scene=(0.0, 1.0, 0.0, 0.0), gap_prob=0.0, stream_start_prob=0.0,
                           codec_prob=0.0)
    scenes = {}
    for voiced in (False, True):
        cries = _cry_only_maker(maker, voiced, class_mix={"baby_cry": 1.0})
        live_maker = LiveSceneMaker(cries.bank, maker.negatives, cries.cfg, live, crop_frames=400,
                                    receptive_field=20, lookahead=4)
        rng = np.random.default_rng(3)
        scenes[voiced] = [live_maker.make(rng) for _ in range(12)]
    moved = 0
    for plain, anchored in zip(scenes[False], scenes[True], strict=True):
        np.testing.assert_array_equal(plain.features, anchored.features)
        np.testing.assert_array_equal(plain.target, anchored.target)
        assert plain.events == anchored.events
        assert {(c, e, w) for c, _, e, w in plain.onsets} >= {(c, e, w) for c, _, e, w in anchored.onsets}
        for (c, f, e, w), (c2, f2, e2, w2) in zip(plain.onsets, anchored.onsets, strict=False):
            if (c, e, w) == (c2, e2, w2):
                assert f2 - f in range(20, 30) and f2 < e2
                moved += 1
    assert moved >= 3


def test_voiced_onsets_need_the_onset_term_of_live_training() -> None:
    from models.config import config_from_dict

    recipe = {"data": {"voiced_onset_classes": ["baby_cry"]}, "live": {"enabled": True}, "loss": {"onset": 1.0}}
    for change in ({"loss": {"onset": 0.0}}, {"live": {"enabled": False}}, {"loss": {"kind": "bce", "onset": 1.0}}):
        with pytest.raises(ValueError, match=r"data\.voiced_onset_classes \['baby_cry'\] moves the onset term"):
            config_from_dict({**recipe, **change})
    cfg = config_from_dict(recipe)
    assert cfg.data.voiced_onset_classes == ["baby_cry"]


def test_an_energy_normalisation_plane_trains_from_scratch_with_its_own_statistics(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`net.pcen_frames` trains live from scratch: the plane's per-band statistics come from
    the training scenes (not the defaults), the saved network is the longer-memory one, and
    `--init` with such a recipe is refused with the reason."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(LIVE_CONFIG)
    with_plane = tmp_path / "pcen.yaml"
    with_plane.write_text(LIVE_CONFIG.replace("lookahead_frames: 2}", "lookahead_frames: 2, pcen_frames: 12}"))
    base = ["train", "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(tmp_path / "cache"), "--steps", "4"]
    assert cli.main([*base, "--config", str(with_plane), "--out", str(tmp_path / "pcen")]) == 0
    state = torch.load(tmp_path / "pcen" / "best.pt", weights_only=False)["state"]
    assert state["stem.weight"].shape[1] == 2 and state["pcen_kernel"].shape[-1] == 12
    assert not torch.equal(state["pcen_mean"], torch.zeros_like(state["pcen_mean"]))
    assert not torch.equal(state["pcen_std"], torch.ones_like(state["pcen_std"]))
    assert cli.main([*base, "--config", str(plain), "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    start = tmp_path / "plain" / "best.pt"
    assert cli.main([*base, "--config", str(with_plane), "--init", str(start), "--out", str(tmp_path / "x")]) != 0
    assert "net.pcen_frames" in capsys.readouterr().err


def test_train_head_rows_holds_every_other_weight_bit_for_bit(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`opt.train_head_rows: [glass_break]` from `--init`: the glass row of the head learns;
    every other weight and normalisation statistic is the starting network's exactly, so the
    cry and alarm scores are unchanged."""
    config = tmp_path / "live.yaml"
    config.write_text(LIVE_CONFIG)
    base = ["train", "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(tmp_path / "cache"), "--steps", "4"]
    assert cli.main([*base, "--config", str(config), "--out", str(tmp_path / "start")]) == 0
    glass_only = tmp_path / "glass-only.yaml"
    glass_only.write_text(LIVE_CONFIG.replace("threads: 1,", "threads: 1, train_head_rows: [glass_break],"))
    start = tmp_path / "start" / "best.pt"
    assert cli.main([*base, "--config", str(glass_only), "--init", str(start), "--seed", "4",
                     "--out", str(tmp_path / "glass")]) == 0
    before = torch.load(start, weights_only=False)["state"]
    after = torch.load(tmp_path / "glass" / "evals" / "step-4.pt", weights_only=True)
    assert set(before) == set(after)
    glass = CLASSES.index("glass_break")
    for name, value in before.items():
        if name in ("head.weight", "head.bias"):
            rows = [i for i in range(len(CLASSES)) if i != glass]
            assert torch.equal(after[name][rows], value[rows]), name
            assert not torch.equal(after[name][glass], value[glass]), f"{name}: the glass row did not learn"
        else:
            assert torch.equal(after[name], value), f"{name} moved"
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(LIVE_CONFIG.replace("threads: 1,", "threads: 1, train_head_rows: [glass],"))
    capsys.readouterr()
    assert cli.main([*base, "--config", str(unknown), "--init", str(start), "--out", str(tmp_path / "x")]) != 0
    assert "opt.train_head_rows names unknown classes ['glass']" in capsys.readouterr().err
    assert cli.main([*base, "--config", str(glass_only), "--out", str(tmp_path / "y")]) != 0
    assert "opt.train_head_rows needs --init" in capsys.readouterr().err
    unknown.write_text(LIVE_CONFIG.replace("threads: 1,", "threads: 1, train_head_rows: [],"))
    assert cli.main([*base, "--config", str(unknown), "--init", str(start), "--out", str(tmp_path / "z")]) != 0
    assert "opt.train_head_rows is empty" in capsys.readouterr().err


def test_a_run_s_kept_networks_are_picked_on_fresh_draws(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models import pick_step

    config = tmp_path / "live.yaml"
    config.write_text(LIVE_CONFIG)
    run, cache = tmp_path / "run", tiny["root"] / "cache"
    assert cli.main(["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives",
                     str(tiny["negatives"]), "--cache", str(cache), "--out", str(run)]) == 0
    args = ["--run", str(run), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(cache)]
    out = tmp_path / "picks.json"
    assert pick_step.main([*args, "--pick-draws", "11", "--judge-draws", "12", "13", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "pick: " in printed.out and "Spearman" in printed.out
    assert "step-4.pt: baby_cry" in printed.err and "step-8.pt: baby_cry" in printed.err  # progress per network
    picks = json.loads(out.read_text())
    terms = {int(step): t for step, t in picks["terms"].items()}
    assert sorted(terms) == [4, 8]  # the run keeps its network at every evaluation
    assert all(set(t) == {"selection", "pick", "judge"} and set(t["pick"]) == set(D.CLASSES) for t in terms.values())
    assert picks["scene_items"]["judge"] == 2 * picks["scene_items"]["pick"] == 2 * picks["scene_items"]["selection"]
    for c in D.CLASSES:
        chosen = picks["choices"]["pick"][c]
        assert terms[chosen]["pick"][c] == max(t["pick"][c] for t in terms.values())
        assert picks["on_judge_draws"]["pick"][c] == pytest.approx(terms[chosen]["judge"][c], abs=1e-4)
    assert picks["choices"]["last"] == dict.fromkeys(D.CLASSES, 8)
    run_step = torch.load(run / "best.pt", weights_only=False)["best_step"]
    assert picks["choices"]["run"] == dict.fromkeys(D.CLASSES, run_step)
    # The run's own scenes are not a fresh draw, and no draw is both picked on and judged on.
    with pytest.raises(SystemExit):
        pick_step.main([*args, "--pick-draws", "6"])
    assert "selection's scenes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pick_step.main([*args, "--pick-draws", "11", "--judge-draws", "11"])
    assert "both pick and judge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pick_step.main(["--run", str(tmp_path), "--data", str(tiny["data"]), "--pick-draws", "11"])
    assert "no kept networks" in capsys.readouterr().err


def _export_report(selection: float, draws: dict[int, float], cry: float = 0.5) -> dict[str, Any]:
    """What harken export --scene-draws writes, as far as python -m models.pick_export reads it."""
    rows = [{"seed": seed, "score": score, "f1": {c: cry for c in D.CLASSES}} for seed, score in draws.items()]
    return {"shipping": {"score": selection, "draws": rows}}


def test_the_export_pick_is_the_best_mean_on_pick_draws_and_is_judged_on_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.pick_export import candidate_figures, choose, main

    reports = {
        "early": _export_report(0.40, {31: 0.30, 32: 0.32, 11: 0.31, 12: 0.29}),
        "middle": _export_report(0.35, {31: 0.34, 32: 0.36, 11: 0.36, 12: 0.34}, cry=0.6),
        "late": _export_report(0.38, {31: 0.35, 32: 0.35, 11: 0.33, 12: 0.33}),
    }
    figures = candidate_figures(reports, [31, 32], [11, 12])
    assert figures["middle"]["pick"] == {"score": 0.35, "f1": dict.fromkeys(D.CLASSES, 0.6)}
    assert figures["late"]["judge"]["score"] == 0.33
    chosen = choose(figures)
    # middle and late tie on the pick draws (0.35): the earlier named is kept.
    assert chosen["pick"] == "middle" and chosen["selection"] == "early" and chosen["judge_best"] == "middle"
    assert chosen["short_of_judge_best"] == {"pick": 0.0, "selection": 0.05}
    assert chosen["rank_agreement_with_judge"] == {"pick": 0.866, "selection": -1.0}
    assert "judge_best" not in choose(candidate_figures(reports, [31, 32], []))
    with pytest.raises(ValueError, match="both pick and judge"):
        candidate_figures(reports, [31], [31])
    with pytest.raises(ValueError, match=r"late: draws \[33\] were not scored"):
        candidate_figures({"late": reports["late"]}, [33], [])
    with pytest.raises(ValueError, match="no scored draws"):
        candidate_figures({"plain": {"shipping": {"score": 0.4}}}, [31], [])
    paths = []
    for name, report in reports.items():
        paths.append(tmp_path / f"{name}.dev.json")
        paths[-1].write_text(json.dumps(report))
    assert main([*map(str, paths), "--pick-draws", "31", "32", "--judge-draws", "11", "12"]) == 0
    printed = capsys.readouterr().out
    assert "the pick (best mean over draws 31 32): middle" in printed
    assert "rule 4 on the selection's scenes would keep: early" in printed
    broken = tmp_path / "broken.dev.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit):
        main([str(broken), "--pick-draws", "31"])
    assert "broken.dev.json: cannot read an export report" in capsys.readouterr().err


def test_picks_take_the_earlier_step_on_a_tie_and_rank_agreement_needs_spread() -> None:
    from models.pick_step import best_steps, rank_agreement

    flat = dict.fromkeys(D.CLASSES, 0.5)
    rising = {step: {"pick": {c: 0.1 * step for c in D.CLASSES}, "judge": {c: -0.1 * step for c in D.CLASSES},
                     "selection": flat} for step in (1, 2, 3)}
    assert best_steps(rising, "pick") == dict.fromkeys(D.CLASSES, 3)
    assert best_steps(rising, "selection") == dict.fromkeys(D.CLASSES, 1)
    assert rank_agreement(rising, "pick", "judge") == pytest.approx(dict.fromkeys(D.CLASSES, -1.0))
    assert all(np.isnan(v) for v in rank_agreement(rising, "selection", "judge").values())


@pytest.mark.parametrize("draws", [[], [31, 32]])
def test_a_run_can_keep_its_network_by_the_exports_figure_for_the_classes_it_serves(
    tiny: dict[str, Path], draws: list[int]
) -> None:
    """eval.select: tuned records, at every evaluation, the served classes' tuned F1 and false
    alarms an hour, and keeps the network whose tuned figure (F1 less 0.05 per false alarm an
    hour) is best; with eval.select_draws that figure is the mean over the selection's scenes
    and fresh draws of them."""
    root = tiny["root"]
    config = root / f"select{len(draws)}.yaml"
    config.write_text(LIVE_CONFIG.replace(
        "on_thresholds: [0.5, 0.7],",
        "on_thresholds: [0.5, 0.7], select: tuned, select_classes: [baby_cry], fa_per_hour_budget: null,"
        f" select_draws: {draws},",
    ))
    out = root / f"select{len(draws)}"
    assert cli.main(["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives",
                     str(tiny["negatives"]), "--cache", str(root / "cache"), "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [e["step"] for e in history["history"]] == [4, 8]
    for entry in history["history"]:
        assert set(entry["tuned_f1"]) == set(entry["tuned_fa_per_hour"]) == {"baby_cry"}
        figure = entry["tuned_f1"]["baby_cry"] - 0.05 * entry["tuned_fa_per_hour"]["baby_cry"]
        if draws:
            by_set = entry["figure_by_set"]
            assert list(by_set) == ["selection", *(f"draw {seed}" for seed in draws)]
            assert by_set["selection"] == pytest.approx(figure, abs=1e-3)
            for name, f1 in entry["tuned_f1_by_set"].items():
                fa = entry["tuned_fa_per_hour_by_set"][name]["baby_cry"]
                assert by_set[name] == pytest.approx(f1["baby_cry"] - 0.05 * fa, abs=1e-3)
            figure = sum(by_set.values()) / len(by_set)
        else:
            assert "figure_by_set" not in entry
        assert entry["selection"] == pytest.approx(figure, abs=1e-3)
    best = max(history["history"], key=lambda e: (e["selection"], -e["step"]))
    assert history["best_step"] == best["step"]
    kept = torch.load(out / "best.pt", weights_only=False)
    chosen = torch.load(out / "evals" / f"step-{best['step']}.pt", weights_only=True)
    for name, value in chosen.items():
        torch.testing.assert_close(kept["state"][name], value, msg=name)


def test_an_evaluation_judges_the_mean_of_the_states_it_names(tmp_path: Path) -> None:
    """averaged_network: one step is the network itself; several are a copy holding the mean
    of the saved states (integer counters averaged alike), the training network untouched."""
    net = build_net(TrainConfig(), FeatureParams())
    states = []
    for step, shift in ((4, 0.0), (8, 1.0), (12, 3.0)):
        state = {k: (v + shift if v.is_floating_point() else v + int(shift)) for k, v in net.state_dict().items()}
        torch.save(state, tmp_path / f"step-{step}.pt")
        states.append(state)
    before = copy.deepcopy(net.state_dict())
    assert averaged_network(net, tmp_path, [12]) is net
    judged = averaged_network(net, tmp_path, [4, 8, 12])
    for name, value in judged.state_dict().items():
        expected = sum(s[name].double() for s in states) / 3
        torch.testing.assert_close(value, expected.to(value.dtype), msg=name)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), f"{name}: the training network moved"


def test_a_run_can_judge_and_keep_the_mean_of_its_last_evaluations(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """eval.select_average: 2 judges, at each evaluation, the element-wise mean of the states
    at this evaluation and the one before (the first alone), records which steps it averaged,
    and keeps that mean when it is the best; 0 is refused by name."""
    root = tiny["root"]
    config = root / "average.yaml"
    thresholds = "on_thresholds: [0.5, 0.7],"
    config.write_text(LIVE_CONFIG.replace(thresholds, f"{thresholds} select_average: 2,"))
    out = root / "average"
    base = ["train", "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(root / "cache"), "--steps", "12"]
    assert cli.main([*base, "--config", str(config), "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [e["averaged_steps"] for e in history["history"]] == [[4], [4, 8], [8, 12]]
    best = max(history["history"], key=lambda e: (e["selection"], -e["step"]))
    assert history["best_step"] == best["step"]
    states = [torch.load(out / "evals" / f"step-{s}.pt", weights_only=True) for s in best["averaged_steps"]]
    kept = torch.load(out / "best.pt", weights_only=False)["state"]
    for name, value in kept.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[name] for s in states) / len(states), msg=name)
    config.write_text(LIVE_CONFIG.replace(thresholds, f"{thresholds} select_average: 0,"))
    capsys.readouterr()
    assert cli.main([*base, "--config", str(config), "--out", str(root / "average0")]) != 0
    assert "eval.select_average must be 1 or more evaluations, got 0" in capsys.readouterr().err


def test_threads_override_the_recipe_and_are_refused_below_one(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--threads N replaces opt.threads (the kept checkpoint's recipe says so, the torch
    setting follows); 0 and words are refused by name before anything runs."""
    root = tiny["root"]
    config = root / "threads.yaml"
    config.write_text(LIVE_CONFIG.replace("threads: 1,", "threads: 3,"))
    base = ["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(root / "cache"), "--steps", "4"]
    before = torch.get_num_threads()
    try:
        assert cli.main([*base, "--out", str(root / "threads"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    kept = torch.load(root / "threads" / "best.pt", weights_only=False)
    assert kept["config"]["opt"]["threads"] == 2
    for bad, message in (("0", "--threads must be 1 or more, got 0"),
                         ("two", "--threads must be a whole number of threads, got 'two'")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main([*base, "--out", str(root / "threads-bad"), "--threads", bad])
        assert message in capsys.readouterr().err
    assert not (root / "threads-bad").exists()


def test_confuser_beds_at_another_speed_and_in_a_room(maker: LiveSceneMaker) -> None:
    """`live.confuser_bed_speed` and `live.confuser_bed_reverb_prob`: a 1 kHz confuser played
    1.25 times as fast sounds at 1.25 kHz, a room changes the bed, and with both off the bed
    is the one the code made before the options (the same draws of the generator)."""
    n = maker.n_samples
    rate = D.SAMPLE_RATE
    tone = (0.1 * np.sin(2 * np.pi * 1000 * np.arange(4 * rate) / rate)).astype(np.float32)
    bank = copy.copy(maker.bank)
    bank.negatives = [tone]
    confusers = dict(enabled=True, bed={"confusers": 1.0})

    def bed_of(**extra: object) -> np.ndarray:
        made = LiveSceneMaker(bank, None, D.SceneConfig(n_rirs=2), LiveSceneConfig(**confusers, **extra),
                              crop_frames=200, receptive_field=20, lookahead=4)
        return made._bed(np.random.default_rng(3))[0]

    def peak_hz(sig: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(sig * np.hanning(sig.shape[0])))
        return float(np.fft.rfftfreq(sig.shape[0], 1 / rate)[int(np.argmax(spectrum))])

    plain = bed_of()
    rng = np.random.default_rng(3)
    rng.choice(1, p=[1.0])  # the bed's kind, the one kind offered
    before = D.negative_bed(bank.negatives, n, rng)
    np.testing.assert_array_equal(plain, (before / (D._active_rms(before) + 1e-6) * 0.05).astype(np.float32))
    fast = bed_of(confuser_bed_speed=(1.25, 1.25))
    assert plain.shape == fast.shape == (n,)
    assert peak_hz(plain) == pytest.approx(1000, abs=15) and peak_hz(fast) == pytest.approx(1250, abs=15)
    roomy = bed_of(confuser_bed_reverb_prob=1.0)
    assert roomy.shape == (n,) and not np.allclose(roomy, plain)
    for bad in ({"confuser_bed_speed": (1.2, 0.9)}, {"confuser_bed_speed": (0.2, 1.0)},
                {"confuser_bed_reverb_prob": 1.5}):
        with pytest.raises(ValueError, match="confuser_bed"):
            LiveSceneConfig(enabled=True, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="simulated rooms"):
        LiveSceneMaker(bank, None, D.SceneConfig(reverb_prob=0.0),
                       LiveSceneConfig(**confusers, confuser_bed_reverb_prob=0.5),  # type: ignore[arg-type]
                       crop_frames=200, receptive_field=20, lookahead=4)


def test_live_scenes_hold_unlabelled_distractor_events_only_when_asked(maker: LiveSceneMaker) -> None:
    """`live.distractor_events_prob`: at 0 whole scenes, and the random stream after them,
    are those of a recipe without it; at 1 a quiet room with no targets holds household
    clips standing out of it as events do, and every frame stays a negative."""
    assert maker.negatives is not None and maker.bank.negatives

    def scenes(**extra: Any) -> LiveSceneMaker:
        return _live_maker(maker, bed={"quiet": 1.0}, events_per_scene=(1.0,), **extra)

    plain, off = scenes(), scenes(distractor_events_prob=0.0)
    rng_plain, rng_off = np.random.default_rng(8), np.random.default_rng(8)
    for _ in range(3):
        np.testing.assert_array_equal(plain.make(rng_plain).features, off.make(rng_off).features)
    assert rng_plain.random() == rng_off.random()
    on = scenes(distractor_events_prob=1.0, distractor_events_count=(2, 2))
    louder = []
    for seed in range(8):
        room, busy = plain.make(np.random.default_rng(seed)), on.make(np.random.default_rng(seed))
        assert busy.target.sum() == 0 and busy.events == [] and busy.onsets == []
        # log-mel: the loudest frame over the quiet room's loudest, in natural-log units
        louder.append(float(busy.features.max() - room.features.max()))
    assert np.median(louder) > 1.0
    with pytest.raises(ValueError, match=r"live\.distractor_events_prob"):
        LiveSceneConfig(distractor_events_prob=2.0)
    with pytest.raises(ValueError, match=r"live\.distractor_events_count"):
        LiveSceneConfig(distractor_events_count=(0, 1))
