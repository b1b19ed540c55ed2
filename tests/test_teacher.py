"""The teacher (models/teacher.py): scores cached over the negatives pool, aligned to scenes,
and a training-only head learning them. A stand-in scorer replaces YAMNet (../shared is
not needed); the real model's wrapper is checked for clear errors only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module

torch = require_module("torch", "the [train] extra (torch)")

from models import data as D  # noqa: E402
from models.live_scenes import LiveSceneConfig, LiveSceneMaker  # noqa: E402
from models.negatives import NegativePool  # noqa: E402
from models.teacher import (  # noqa: E402
    HOP_SAMPLES,
    WINDOW_SAMPLES,
    ClipTeacher,
    PrincipalBasis,
    TeacherTrack,
    fit_linear_head,
    principal_components,
    score_track,
    with_first_output,
    yamnet_embedder,
    yamnet_scorer,
)
from service import cli  # noqa: E402
from tests.negatives_data import make_negatives  # noqa: E402
from tests.test_live_training import LIVE_CONFIG  # noqa: E402
from tests.test_train import make_dataset  # noqa: E402


def stand_in(window: np.ndarray) -> np.ndarray:
    """521 'class scores': loudness in class 3, a constant in class 7, nothing elsewhere."""
    out = np.zeros(521, dtype=np.float32)
    out[3] = min(1.0, 20 * float(np.sqrt(np.mean(window**2))))
    out[7] = 0.5
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teacher")
    model = root / "yamnet.tflite"
    model.write_bytes(b"stand-in")  # names the cache; the scores come from `stand_in`
    return {"root": root, "data": make_dataset(root / "data"), "negatives": make_negatives(root / "neg"),
            "model": model}


def test_teacher_scores_are_cached_and_keep_present_classes(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in)
    assert track.classes == [3, 7]
    assert track.scores.shape == (1 + (pool.audio.shape[0] - WINDOW_SAMPLES) // HOP_SAMPLES, 2)

    def never(_window: np.ndarray) -> np.ndarray:
        raise AssertionError("the cached scores must be read, not recomputed")

    again = TeacherTrack.for_pool(pool, tiny["model"], cache, score=never)
    np.testing.assert_array_equal(np.asarray(again.scores), np.asarray(track.scores))
    # Written under names of their own and moved into place: no half file is left behind.
    assert not [f.name for f in cache.iterdir() if ".tmp." in f.name]
    # Frame k's centre at window k's centre picks row k; before the pool and after it clip.
    centres = WINDOW_SAMPLES / 2 + HOP_SAMPLES * np.array([0, 1, 5])
    np.testing.assert_array_equal(track.frames(0, centres), np.asarray(track.scores)[[0, 1, 5]])
    np.testing.assert_array_equal(track.frames(HOP_SAMPLES, centres), np.asarray(track.scores)[[1, 2, 6]])
    assert np.array_equal(track.frames(-10**6, centres[:1]), np.asarray(track.scores)[:1])


def stand_in_embedding(window: np.ndarray) -> np.ndarray:
    """A 1024-d 'embedding': the window's level in a few bands of its spectrum, repeated."""
    spectrum = np.abs(np.fft.rfft(window))[:1024]
    bands = np.log1p(spectrum.reshape(16, -1).mean(axis=1))
    return np.tile(bands, 64).astype(np.float32)


def test_embedding_teacher_keeps_standardised_leading_components(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache-embedding"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    rows = np.asarray(track.scores, dtype=np.float32)
    assert track.classes == [0, 1, 2, 3]
    assert rows.shape == (1 + (pool.audio.shape[0] - WINDOW_SAMPLES) // HOP_SAMPLES, 4)
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=0.01)

    def never(_window: np.ndarray) -> np.ndarray:
        raise AssertionError("the cached rows must be read, not recomputed")

    again = TeacherTrack.for_pool(pool, tiny["model"], cache, score=never, kind="embedding", dims=4)
    np.testing.assert_array_equal(np.asarray(again.scores), np.asarray(track.scores))
    # The class scores are cached apart: asking for them computes them.
    scores = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in)
    assert scores.classes == [3, 7]
    with pytest.raises(ValueError, match="teacher kind"):
        TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in, kind="logits")


def test_principal_components_are_the_directions_of_most_variance() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((2000, 5))
    x[:, 2] = 10 * rng.standard_normal(2000)  # most variance
    x[:, 4] = 3 * rng.standard_normal(2000)
    x += 0.01 * rng.standard_normal(x.shape)
    pc = principal_components(x, 2)
    assert abs(np.corrcoef(pc[:, 0], x[:, 2])[0, 1]) > 0.999
    assert abs(np.corrcoef(pc[:, 1], x[:, 4])[0, 1]) > 0.999
    np.testing.assert_array_equal(pc, principal_components(x, 2))


def test_scenes_carry_teacher_scores_only_over_plain_negatives(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in)
    bank = D.ClipBank(D.select(D.read_clips(tiny["data"]), "train"))
    live = LiveSceneConfig(enabled=True, bed={"negatives": 0.5, "quiet": 0.5}, gap_prob=0.0, codec_prob=0.0)
    maker = LiveSceneMaker(bank, pool, D.SceneConfig(n_rirs=2), live, crop_frames=200, receptive_field=20,
                           lookahead=4, teacher=track)
    scenes = [maker.make(np.random.default_rng(i)) for i in range(12)]
    with_teacher = [s for s in scenes if s.teacher_mask is not None and s.teacher_mask.all()]
    without = [s for s in scenes if s.teacher_mask is not None and not s.teacher_mask.any()]
    assert with_teacher and without and len(with_teacher) + len(without) == len(scenes)
    for s in with_teacher:
        assert s.teacher is not None and s.teacher.shape == (200, 2)
        assert np.all(s.teacher[:, 1] == np.float16(0.5))
    # Without a teacher the scenes are the very same draws (recipes without it are unchanged).
    plain = LiveSceneMaker(bank, pool, D.SceneConfig(n_rirs=2), live, crop_frames=200, receptive_field=20,
                           lookahead=4)
    same = plain.make(np.random.default_rng(3))
    assert same.teacher is None
    np.testing.assert_array_equal(same.features, scenes[3].features)


def test_a_principal_basis_places_other_rows_in_the_fitted_rows_coordinates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((500, 6)) * np.array([5.0, 1.0, 3.0, 0.5, 0.1, 2.0]) + 4.0
    basis = PrincipalBasis.fit(rows, 3)
    np.testing.assert_array_equal(basis.project(rows), principal_components(rows, 3))
    # Other rows: shifted along the leading direction (the first column) by one spread.
    moved = rows[:10].copy()
    moved[:, 0] += 5.0
    delta = basis.project(moved) - basis.project(rows[:10])
    np.testing.assert_allclose(np.abs(delta[:, 0]), 5.0 / basis.spread[0], rtol=0.05)
    basis.save(tmp_path / "basis.npz")
    again = PrincipalBasis.load(tmp_path / "basis.npz")
    np.testing.assert_array_equal(again.project(moved), basis.project(moved))
    assert [f.name for f in tmp_path.iterdir()] == ["basis.npz"]


def test_embedding_cache_keeps_its_basis_and_is_rebuilt_without_it(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache-basis"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    assert track.basis is not None
    basis_file = cache / f"{track.key}-basis.npz"
    assert basis_file.is_file()
    basis_file.unlink()  # a cache written before the basis was kept
    calls = []

    def counting(window: np.ndarray) -> np.ndarray:
        calls.append(1)
        return stand_in_embedding(window)

    rebuilt = TeacherTrack.for_pool(pool, tiny["model"], cache, score=counting, kind="embedding", dims=4)
    assert calls and basis_file.is_file()
    np.testing.assert_array_equal(np.asarray(rebuilt.scores), np.asarray(track.scores))
    assert TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in).basis is None


def test_confuser_clips_are_scored_as_the_pool_was_and_cached(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache-clips"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    clips = [np.random.default_rng(i).uniform(-0.3, 0.3, 16000 * (i + 1)).astype(np.float32) for i in range(3)]
    scores = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in)
    by_clip = ClipTeacher.for_clips(clips, scores, tiny["model"], cache, score=stand_in)
    assert by_clip.n_classes == 2 and list(by_clip.starts) == [0, 1, 4, 9]  # 1 s, 2 s and 3 s clips
    np.testing.assert_array_equal(by_clip.rows[4:9], score_track(clips[2], stand_in)[:, [3, 7]])
    embedding = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    in_pool_terms = ClipTeacher.for_clips(clips, embedding, tiny["model"], cache, score=stand_in_embedding)
    assert embedding.basis is not None
    expected = embedding.basis.project(score_track(clips[1], stand_in_embedding).astype(np.float32))
    np.testing.assert_allclose(in_pool_terms.rows[1:4], expected, atol=0.01)

    def never(_window: np.ndarray) -> np.ndarray:
        raise AssertionError("the cached rows must be read, not recomputed")

    again = ClipTeacher.for_clips(clips, embedding, tiny["model"], cache, score=never)
    np.testing.assert_array_equal(again.rows, in_pool_terms.rows)
    with pytest.raises(ValueError, match="household confuser clips in train"):
        ClipTeacher.for_clips([], embedding, tiny["model"], cache, score=never)


def test_clip_teacher_lays_rows_as_the_pieces_lie() -> None:
    # Clip 0 has 4 windows, clip 1 one (a clip shorter than a window).
    rows = np.arange(5, dtype=np.float16)[:, None] * np.ones((1, 2), dtype=np.float16)
    teacher = ClipTeacher(rows, np.array([0, 4, 5]))
    centre0 = WINDOW_SAMPLES // 2  # the centre of a clip's first window
    pieces = [(0, 0, 40000, 5000), (1, 48000, 58000, 0)]  # clip 0 from its sample 5000, a gap, clip 1
    centres = np.array([centre0 - 5000, centre0 - 5000 + 2 * HOP_SAMPLES, 39000, 44000, 48000 + centre0 - 100, 49000])
    got, held = teacher.frames(pieces, centres.astype(float))
    # Frame 0 sits on clip 0's first window, frame 1 on its third; frame 2 lies at clip 0's
    # sample 44000, past its last window's reach (4 windows: centres up to 30840 + 3840);
    # frame 3 in the silence between the pieces; frame 4 on clip 1's window, frame 5 at
    # clip 1's sample 1000, more than half a hop before that window's centre.
    assert held.tolist() == [True, True, False, False, True, False]
    assert got[:2, 0].tolist() == [0.0, 2.0] and got[4, 0] == 4.0
    # A later piece overrides an earlier one where they overlap (a cross-fade).
    # At 7800 clip 1 (its sample 5800) holds; at 2500 clip 1's sample 500 holds none, though
    # clip 0's sample 7500 would.
    over, held_over = teacher.frames([(0, 0, 40000, 5000), (1, 2000, 12000, 0)], np.array([7800.0, 2500.0]))
    assert held_over.tolist() == [True, False] and over[0, 0] == 4.0


def test_confuser_beds_carry_the_teacher_of_their_clips(tiny: dict[str, Path]) -> None:
    cache = tiny["root"] / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in)
    bank = D.ClipBank(D.select(D.read_clips(tiny["data"]), "train"))
    by_clip = ClipTeacher.for_clips(bank.negatives, track, tiny["model"], cache, score=stand_in)
    live = LiveSceneConfig(enabled=True, bed={"confusers": 0.5, "negatives": 0.5}, gap_prob=0.0, codec_prob=0.0,
                           level="absolute")
    common = (bank, pool, D.SceneConfig(n_rirs=2), live)
    maker = LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track,
                           confuser_teacher=by_clip, teacher_beds=("negatives", "confusers"))
    plain = LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track)
    kinds = {i: maker._bed(np.random.default_rng(i))[2] for i in range(16)}
    on_confusers = [i for i, origin in kinds.items() if origin.pieces]
    on_pool = [i for i, origin in kinds.items() if origin.pool_start is not None]
    assert on_confusers and on_pool
    for i in on_confusers:
        scene, before = maker.make(np.random.default_rng(i)), plain.make(np.random.default_rng(i))
        # The same draws with the confuser teacher or without it; only the teacher's rows differ.
        np.testing.assert_array_equal(scene.features, before.features)
        assert before.teacher_mask is not None and not before.teacher_mask.any()
        assert scene.teacher is not None and scene.teacher_mask is not None and scene.teacher_mask.any()
        assert np.all(scene.teacher[scene.teacher_mask, 1] == np.float16(0.5))  # the stand-in's constant
        assert not scene.teacher_mask.all()  # the gaps between pieces hold none
    for i in on_pool:
        np.testing.assert_array_equal(maker.make(np.random.default_rng(i)).teacher,
                                      plain.make(np.random.default_rng(i)).teacher)
    # Weighted confuser frames: the mask carries each frame's weight; pool frames keep 1.
    weighted = LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track,
                              confuser_teacher=by_clip, teacher_beds=("negatives", "confusers"),
                              confuser_teacher_weight=0.25)
    light = weighted.make(np.random.default_rng(on_confusers[0]))
    full = maker.make(np.random.default_rng(on_confusers[0]))
    assert light.teacher_mask is not None and full.teacher_mask is not None
    np.testing.assert_array_equal(light.teacher_mask, 0.25 * full.teacher_mask.astype(np.float32))
    np.testing.assert_array_equal(light.features, full.features)
    pool_mask = weighted.make(np.random.default_rng(on_pool[0])).teacher_mask
    assert pool_mask is not None and pool_mask.dtype == bool and pool_mask.any()
    # A confuser bed played faster is no longer what the teacher scored: it carries none.
    faster = LiveSceneConfig(enabled=True, bed={"confusers": 1.0}, gap_prob=0.0, codec_prob=0.0,
                             confuser_bed_speed=(1.2, 1.3))
    sped = LiveSceneMaker(bank, pool, D.SceneConfig(n_rirs=2), faster, crop_frames=200, receptive_field=20,
                          lookahead=4, teacher=track, confuser_teacher=by_clip, teacher_beds=("confusers",))
    sped_scene = sped.make(np.random.default_rng(0))
    assert sped_scene.teacher_mask is not None and not sped_scene.teacher_mask.any()
    # Confuser beds alone: the pool's stretches carry none.
    only = LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track,
                          confuser_teacher=by_clip, teacher_beds=("confusers",))
    pool_scene = only.make(np.random.default_rng(on_pool[0]))
    assert pool_scene.teacher_mask is not None and not pool_scene.teacher_mask.any()
    wrong = ClipTeacher(np.zeros((5, 3), dtype=np.float16), np.array([0, 5]))
    with pytest.raises(ValueError, match="3 components, the pool's track 2"):
        LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track,
                       confuser_teacher=wrong, teacher_beds=("confusers",))
    with pytest.raises(ValueError, match="go together"):
        LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4, teacher=track,
                       teacher_beds=("confusers",))
    with pytest.raises(ValueError, match="needs the pool's teacher track"):
        LiveSceneMaker(*common, crop_frames=200, receptive_field=20, lookahead=4,
                       confuser_teacher=by_clip, teacher_beds=("confusers",))


def test_training_with_the_teacher_learns_its_head_and_resumes(tiny: dict[str, Path]) -> None:
    root = tiny["root"]
    cache = root / "cache"
    TeacherTrack.for_pool(NegativePool.load(tiny["negatives"], "train", cache), tiny["model"], cache, score=stand_in)
    config = root / "teacher.yaml"
    config.write_text(LIVE_CONFIG.replace("loss: {onset: 1.0, onset_frames: 10}",
                                          "loss: {onset: 1.0, onset_frames: 10, teacher: 1.0}"))
    base = ["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--cache", str(cache), "--teacher", str(tiny["model"])]
    assert cli.main([*base, "--out", str(root / "run"), "--max-minutes", "0"]) == 0
    assert cli.main([*base, "--out", str(root / "run")]) == 0
    last = torch.load(root / "run" / "last.pt", weights_only=False)
    assert last["state"]["step"] == 8 and last["teacher_head"]["weight"].shape == (2, 8, 1)
    report = json.loads((root / "run" / "report.json").read_text())
    assert report["data"]["teacher_classes"] == 2
    # (a batch of 3 scenes may hold no plain negatives background: then the term is 0)
    history = json.loads((root / "run" / "history.json").read_text())["history"]
    assert any(entry["teacher"] > 0 for entry in history) and all(entry["teacher"] >= 0 for entry in history)
    # The exported model is the network alone: the teacher head stays in training.
    onnx_path = root / "teacher.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "run" / "best.pt"), "--out", str(onnx_path)]) == 0
    assert onnx_path.stat().st_size > 0


def test_training_with_the_teacher_on_confuser_beds(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny["root"]
    cache = root / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    bank = D.ClipBank(D.select(D.read_clips(tiny["data"]), "train"))
    track = TeacherTrack.for_pool(pool, tiny["model"], cache, kind="embedding", dims=4)
    ClipTeacher.for_clips(bank.negatives, track, tiny["model"], cache, score=stand_in_embedding)
    config = root / "teacher-confusers.yaml"
    config.write_text(LIVE_CONFIG.replace(
        "loss: {onset: 1.0, onset_frames: 10}",
        "loss: {onset: 1.0, onset_frames: 10, teacher: 1.0, teacher_kind: embedding, teacher_dims: 4, "
        "teacher_beds: [confusers], teacher_confuser_weight: 0.5}").replace(
            "live: {enabled: true,", "live: {enabled: true, bed: {confusers: 1.0},"))
    common = ["--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]), "--cache", str(cache),
              "--teacher", str(tiny["model"])]
    assert cli.main(["train", "--config", str(config), *common, "--out", str(root / "confusers")]) == 0
    report = json.loads((root / "confusers" / "report.json").read_text())
    assert report["data"]["teacher_beds"] == ["confusers"]
    history = json.loads((root / "confusers" / "history.json").read_text())["history"]
    # Every bed is a confuser bed: without the clips' rows the term would be 0 throughout.
    assert all(entry["teacher"] > 0 for entry in history)
    bad = root / "teacher-beds.yaml"
    bad.write_text(config.read_text().replace("teacher_beds: [confusers]", "teacher_beds: [confuser]"))
    capsys.readouterr()
    assert cli.main(["train", "--config", str(bad), *common, "--out", str(root / "bad")]) != 0
    assert "loss.teacher_beds: a list of 'negatives' and 'confusers', got ['confuser']" in capsys.readouterr().err


def test_teacher_terms_weigh_frames_by_the_mask() -> None:
    """A float mask is each frame's weight in the term's weighted mean; 0/1 is the old mask."""
    from models.losses import LossConfig, teacher_embedding_loss

    pred = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]])
    plain = teacher_embedding_loss(pred, teacher, torch.tensor([[True, True, False]]))
    assert float(plain) == pytest.approx((1 + 9) / 2)
    weighted = teacher_embedding_loss(pred, teacher, torch.tensor([[1.0, 0.25, 0.0]]))
    assert float(weighted) == pytest.approx((1 + 0.25 * 9) / 1.25)
    with pytest.raises(ValueError, match="teacher_confuser_weight must be > 0"):
        LossConfig(teacher_confuser_weight=0.0)


def test_training_learns_the_teachers_embedding(tiny: dict[str, Path]) -> None:
    root = tiny["root"]
    cache = root / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    config = root / "teacher-embedding.yaml"
    config.write_text(LIVE_CONFIG.replace(
        "loss: {onset: 1.0, onset_frames: 10}",
        "loss: {onset: 1.0, onset_frames: 10, teacher: 1.0, teacher_kind: embedding, teacher_dims: 4}"))
    assert cli.main(["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives",
                     str(tiny["negatives"]), "--cache", str(cache), "--teacher", str(tiny["model"]),
                     "--out", str(root / "embedding")]) == 0
    last = torch.load(root / "embedding" / "last.pt", weights_only=False)
    assert last["teacher_head"]["weight"].shape == (4, 8, 1)
    history = json.loads((root / "embedding" / "history.json").read_text())["history"]
    # mean squared error against unit-variance components: positive, and not a BCE's ~0.02
    assert any(entry["teacher"] > 0.1 for entry in history)


def test_fit_linear_head_recovers_a_linear_map_over_marked_frames_only() -> None:
    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(4, 6, generator=gen), torch.randn(4, generator=gen)
    features = [torch.randn(2, 6, 50, generator=gen) for _ in range(3)]
    targets = [(weight @ f + bias[:, None]).transpose(1, 2) for f in features]
    masks = [torch.ones(2, 50) for _ in range(3)]
    for t, m in zip(targets, masks, strict=True):  # unmarked frames carry rubbish: ignored
        t[:, :10] = 100.0
        m[:, :10] = 0.0
    head = torch.nn.Conv1d(6, 4, 1)
    before, after = fit_linear_head(head, features, targets, masks, ridge=1e-9)
    assert after < 1e-6 < before
    assert torch.allclose(head.weight[..., 0], weight, atol=1e-3)
    assert torch.allclose(head.bias, bias, atol=1e-3)
    with pytest.raises(ValueError, match="no teacher frames"):
        fit_linear_head(head, features, targets, [torch.zeros(2, 50) for _ in range(3)])


def test_fit_linear_head_weighs_frames_as_the_training_term_does() -> None:
    # Targets no linear map fits exactly: a frame weighing 2 pulls as the same frame twice.
    gen = torch.Generator().manual_seed(5)
    features = [torch.randn(2, 6, 40, generator=gen) for _ in range(2)]
    targets = [torch.randn(2, 40, 3, generator=gen) for _ in range(2)]
    masks = [torch.ones(2, 40) for _ in range(2)]
    masks[0][0, :15] = 2.0
    masks[1][1, 30:] = 0.0
    weighted = torch.nn.Conv1d(6, 3, 1)
    weighted_errors = fit_linear_head(weighted, features, targets, masks)
    # The frames weighing 2, given once more as a batch of their own at weight 1.
    heavy_features, heavy_targets = features[0][:1, :, :15], targets[0][:1, :15]
    duplicated = torch.nn.Conv1d(6, 3, 1)
    duplicated_errors = fit_linear_head(
        duplicated,
        [*features, heavy_features],
        [*targets, heavy_targets],
        [torch.ones(2, 40), masks[1], torch.ones(1, 15)],
    )
    assert torch.allclose(weighted.weight, duplicated.weight, atol=1e-5)
    assert torch.allclose(weighted.bias, duplicated.bias, atol=1e-5)
    assert weighted_errors[1] == pytest.approx(duplicated_errors[1], rel=1e-6)
    unweighted = torch.nn.Conv1d(6, 3, 1)
    fit_linear_head(unweighted, features, targets, [(m > 0).float() for m in masks])
    assert not torch.allclose(weighted.weight, unweighted.weight, atol=1e-3)


def test_fine_tuning_fits_the_teacher_head_to_the_starting_network(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny["root"]
    cache = root / "cache"
    pool = NegativePool.load(tiny["negatives"], "train", cache)
    TeacherTrack.for_pool(pool, tiny["model"], cache, score=stand_in_embedding, kind="embedding", dims=4)
    config = root / "teacher-fit.yaml"
    config.write_text(LIVE_CONFIG.replace(
        "loss: {onset: 1.0, onset_frames: 10}",
        "loss: {onset: 1.0, onset_frames: 10, teacher: 1.0, teacher_kind: embedding, teacher_dims: 4, "
        "teacher_head_fit_batches: 2}"))
    common = ["--config", str(config), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
              "--cache", str(cache), "--teacher", str(tiny["model"])]
    # From scratch the option does nothing: there is no trained network to fit the head to.
    assert cli.main(["train", *common, "--out", str(root / "fit-start")]) == 0
    assert "teacher head fitted" not in capsys.readouterr().out
    onnx_path = root / "fit-start.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "fit-start" / "best.pt"), "--out", str(onnx_path)]) == 0
    assert cli.main(["train", *common, "--init", str(onnx_path), "--out", str(root / "fit-tune")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "teacher head fitted" in x)
    before, after = (float(v) for v in line.split("error ")[1].rstrip(")").split(" -> "))
    assert after < before


def test_teacher_errors_are_clear(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny["root"]
    config = root / "teacher-missing.yaml"
    config.write_text(LIVE_CONFIG.replace("loss: {onset: 1.0, onset_frames: 10}", "loss: {teacher: 1.0}"))
    assert cli.main(["train", "--config", str(config), "--data", str(tiny["data"]), "--negatives",
                     str(tiny["negatives"]), "--cache", str(root / "cache"), "--out", str(root / "x")]) != 0
    assert "needs --teacher" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"nope\.tflite not found"):
        yamnet_scorer(root / "nope.tflite")
    with pytest.raises(FileNotFoundError, match=r"nope\.tflite not found"):
        yamnet_embedder(root / "nope.tflite")
    with pytest.raises(ValueError, match=r"yamnet\.tflite: not a TFLite model"):
        yamnet_embedder(tiny["model"])
    bad = root / "teacher-kind.yaml"
    bad.write_text(LIVE_CONFIG.replace("loss: {onset: 1.0, onset_frames: 10}",
                                       "loss: {teacher: 1.0, teacher_kind: logits}"))
    assert cli.main(["train", "--config", str(bad), "--data", str(tiny["data"]), "--negatives",
                     str(tiny["negatives"]), "--cache", str(root / "cache"), "--out", str(root / "x")]) != 0
    assert "teacher_kind" in capsys.readouterr().err


def test_training_distils_a_harken_model_and_refuses_one_that_does_not_line_up(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny["root"]
    base = ["--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]), "--cache", str(root / "cache")]
    plain = root / "plain.yaml"
    plain.write_text(LIVE_CONFIG)
    assert cli.main(["train", "--config", str(plain), *base, "--out", str(root / "elder")]) == 0
    elder = root / "elder.onnx"
    assert cli.main(["export", "--checkpoint", str(root / "elder" / "best.pt"), "--out", str(elder)]) == 0
    student = root / "student.yaml"
    student.write_text(LIVE_CONFIG.replace("loss: {onset: 1.0, onset_frames: 10}",
                                           "loss: {onset: 1.0, onset_frames: 10, distil: 2.0}"))
    assert cli.main(["train", "--config", str(student), *base, "--out", str(root / "student"),
                     "--distil-from", str(elder)]) == 0
    history = json.loads((root / "student" / "history.json").read_text())["history"]
    assert history and all(entry["distil"] > 0 for entry in history)
    assert json.loads((root / "student" / "report.json").read_text())["data"]["distilled_from"] == "elder.onnx"
    # Its scores must line up with the student's frames: another receptive field is refused.
    wider = root / "wider.yaml"
    wider.write_text(student.read_text().replace("dilations: [1, 2]", "dilations: [1, 2, 4]"))
    capsys.readouterr()
    assert cli.main(["train", "--config", str(wider), *base, "--out", str(root / "wider"),
                     "--distil-from", str(elder)]) != 0
    assert "receptive field 10 and look-ahead 2 frames" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(student), *base, "--out", str(root / "none")]) != 0
    assert "loss.distil > 0 needs --distil-from" in capsys.readouterr().err
    # loss.distil_classes names the classes learnt from the elder; a name that is no class is refused.
    typo = root / "typo.yaml"
    typo.write_text(student.read_text().replace("distil: 2.0}", "distil: 2.0, distil_classes: [smoke_alarms]}"))
    assert cli.main(["train", "--config", str(typo), *base, "--out", str(root / "typo"),
                     "--distil-from", str(elder)]) != 0
    assert "loss.distil_classes names unknown classes ['smoke_alarms']" in capsys.readouterr().err


def test_distillation_of_some_classes_ignores_the_others() -> None:
    """`distil_loss(..., classes)`: only the named classes' scores are learnt, so the elder's
    scores of the other classes (and the network's logits for them) change nothing."""
    from models.losses import distil_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 30, 3, generator=gen, requires_grad=True)
    scores = torch.rand(2, 30, 3, generator=gen)
    changed = scores.clone()
    changed[..., 0] = 1.0 - changed[..., 0]
    changed[..., 2] = 0.5
    alarm_only = distil_loss(logits, scores, [1])
    torch.testing.assert_close(alarm_only, distil_loss(logits, changed, [1]))
    assert not torch.isclose(distil_loss(logits, scores), distil_loss(logits, changed))
    alarm_only.backward()
    assert logits.grad is not None
    assert float(logits.grad[..., [0, 2]].abs().max()) == 0.0 and float(logits.grad[..., 1].abs().max()) > 0


def test_distillation_weighs_the_elders_positive_frames_up() -> None:
    """`positive_weight`: frames the elder scores above 0.5 count that many times, every
    other frame once, and the sum is over as many terms as a plain mean: the frames the
    elder calls negative keep exactly their weight."""
    from models.losses import LossConfig, distil_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 40, 3)
    scores = torch.full((2, 40, 3), 0.1)
    scores[:, 10:14, 1] = 0.95
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, scores, reduction="none")
    positive = scores > 0.5
    expected = (bce.sum() + 7.0 * bce[positive].sum()) / bce.numel()
    torch.testing.assert_close(distil_loss(logits, scores, positive_weight=8.0), expected)
    torch.testing.assert_close(distil_loss(logits, scores, positive_weight=1.0), bce.mean())
    # Only the positive frames' weight moves: a change on a negative frame costs the same.
    quiet = scores.clone()
    quiet[0, 0, 0] = 0.3
    plain_change = distil_loss(logits, quiet) - distil_loss(logits, scores)
    weighted_change = (
        distil_loss(logits, quiet, positive_weight=8.0) - distil_loss(logits, scores, positive_weight=8.0)
    )
    torch.testing.assert_close(plain_change, weighted_change)
    with pytest.raises(ValueError, match=r"loss\.distil_positive must be >= 1"):
        LossConfig(distil_positive=0.5)


def _graph_outputs(model: bytes) -> list[int]:
    """The first subgraph's outputs of a TFLite-shaped flatbuffer, read with flatbuffers' own
    tables (Model field 2 `subgraphs`, SubGraph field 2 `outputs`)."""
    from flatbuffers.encode import Get
    from flatbuffers.number_types import Int32Flags, UOffsetTFlags
    from flatbuffers.table import Table

    root = Table(bytearray(model), Get(UOffsetTFlags.packer_type, model, 0))
    o = root.Offset(8)
    subgraph = Table(root.Bytes, root.Indirect(root.Vector(o)))
    o = subgraph.Offset(8)
    return [subgraph.Get(Int32Flags, subgraph.Vector(o) + 4 * i) for i in range(subgraph.VectorLen(o))]


def _tflite_shaped(outputs: list[int], with_subgraph: bool = True) -> bytes:
    """A flatbuffer laid out as TFLite's schema where the edit reads it: a Model whose
    field 2 holds one SubGraph whose field 2 holds `outputs` (inputs in field 1 beside)."""
    import flatbuffers

    builder = flatbuffers.Builder(64)

    def int_vector(values: list[int]) -> int:
        builder.StartVector(4, len(values), 4)
        for v in reversed(values):
            builder.PrependInt32(v)
        return builder.EndVector()

    inputs, outs = int_vector([0]), int_vector(outputs)
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(1, inputs, 0)
    builder.PrependUOffsetTRelativeSlot(2, outs, 0)
    subgraph = builder.EndObject()
    builder.StartVector(4, 1 if with_subgraph else 0, 4)
    if with_subgraph:
        builder.PrependUOffsetTRelative(subgraph)
    subgraphs = builder.EndVector()
    builder.StartObject(5)
    builder.PrependUint32Slot(0, 3, 0)
    builder.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def test_the_embedding_is_read_as_the_graph_s_edited_first_output() -> None:
    """`with_first_output` (YAMNet's embedding at full speed) overwrites the first output's
    tensor index and nothing else; what is not a model with a subgraph is refused by name."""
    model = _tflite_shaped([123, 89])
    assert _graph_outputs(model) == [123, 89]
    edited = with_first_output(model, 121)
    assert _graph_outputs(edited) == [121, 89]
    assert len(edited) == len(model)
    assert sum(a != b for a, b in zip(edited, model, strict=True)) == 1  # 123 -> 121: one byte
    with pytest.raises(ValueError, match="it has no subgraph"):
        with_first_output(_tflite_shaped([1], with_subgraph=False), 0)
    with pytest.raises(ValueError, match="its first subgraph has no output"):
        with_first_output(_tflite_shaped([]), 0)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        with_first_output(b"\xff\xff\xff\x7f", 0)
