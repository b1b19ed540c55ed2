"""The session fingerprints (models/fingerprint.py): the arithmetic line repeats within a
process and tells seeds and kernels apart; folder digests see a changed file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import require_module

require_module("torch", "the [train] extra (torch)")

from models import fingerprint  # noqa: E402


def test_the_arithmetic_line_repeats_and_depends_on_the_seed() -> None:
    first = fingerprint.trained_weights(steps=2, seed=0)
    again = fingerprint.trained_weights(steps=2, seed=0)
    other = fingerprint.trained_weights(steps=2, seed=1)
    assert fingerprint.digest(first) == fingerprint.digest(again)
    assert fingerprint.digest(first) != fingerprint.digest(other)
    assert first.dtype == np.float32 and first.size > 10_000  # the whole small network


def test_a_folder_digest_sees_a_changed_file_and_names_a_missing_listing(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "NEGATIVES.csv").write_text("path\ntrain/a.flac\n")
    audio = tmp_path / "train" / "a.flac"
    audio.write_bytes(b"one")
    (tmp_path / "notes.txt").write_text("not audio: not in the digest")
    before, count = fingerprint.folder_digest(tmp_path, "NEGATIVES.csv")
    assert count == 1
    (tmp_path / "notes.txt").write_text("changed")
    assert fingerprint.folder_digest(tmp_path, "NEGATIVES.csv")[0] == before
    audio.write_bytes(b"two")
    assert fingerprint.folder_digest(tmp_path, "NEGATIVES.csv")[0] != before
    with pytest.raises(FileNotFoundError, match=r"MANIFEST\.csv"):
        fingerprint.folder_digest(tmp_path, "MANIFEST.csv")


def test_the_command_prints_one_line_per_suspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "MANIFEST.csv").write_text("path\n")
    assert fingerprint.main(["--data", str(tmp_path), "--steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["machine", "arithmetic", "arithmetic", "data"]
    assert "0 audio files" in lines[-1]
    with pytest.raises(SystemExit):
        fingerprint.main(["--negatives", str(tmp_path)])  # no NEGATIVES.csv there


def test_the_sample_digest_sees_the_audio_not_its_encoding(tmp_path: Path) -> None:
    """Two encodings of the same samples (FLAC compression levels) share the sample digest
    and not the byte digest; a changed sample changes it, in its own split only."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "NEGATIVES.csv").write_text("path,split\ndev/a.flac,dev\ntrain/b.flac,train\n")
    samples = (np.sin(np.arange(8000) * 0.05) * 8000).astype(np.int16)
    sf.write(tmp_path / "dev" / "a.flac", samples, 16000, subtype="PCM_16", compression_level=0.0)
    sf.write(tmp_path / "train" / "b.flac", samples[::-1].copy(), 16000, subtype="PCM_16")
    bytes_before = fingerprint.folder_digest(tmp_path, "NEGATIVES.csv")[0]
    before = fingerprint.sample_digests(tmp_path, "NEGATIVES.csv")
    assert set(before) == {"dev", "train"}
    sf.write(tmp_path / "dev" / "a.flac", samples, 16000, subtype="PCM_16", compression_level=1.0)
    assert fingerprint.folder_digest(tmp_path, "NEGATIVES.csv")[0] != bytes_before
    assert fingerprint.sample_digests(tmp_path, "NEGATIVES.csv") == before
    changed = samples.copy()
    changed[100] += 1
    sf.write(tmp_path / "dev" / "a.flac", changed, 16000, subtype="PCM_16")
    after = fingerprint.sample_digests(tmp_path, "NEGATIVES.csv")
    assert after["dev"] != before["dev"] and after["train"] == before["train"]
    sf.write(tmp_path / "dev" / "stray.flac", samples, 16000, subtype="PCM_16")  # not in the listing
    assert set(fingerprint.sample_digests(tmp_path, "NEGATIVES.csv")) == {"dev", "train", "unlisted"}


def test_the_build_line_tells_package_versions_from_the_decoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed package version changes its own split's digest only; the ffmpeg build is
    printed as the build recorded it; a folder without the record says so, a broken record
    is named."""
    (tmp_path / "NEGATIVES.csv").write_text("path,split\n")
    assert "no BUILD_INFO.json" in fingerprint.build_line(tmp_path)
    info = {
        "ffmpeg": "ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers",
        "packages": {
            "game-data": {"split": "train", "version": "1.0-1"},
            "music": {"split": "train", "version": "2.0-3"},
            "prompts": {"split": "dev", "version": "0.9-2"},
        },
    }
    record = tmp_path / "BUILD_INFO.json"
    record.write_text(json.dumps(info))
    before = fingerprint.build_line(tmp_path)
    assert before.startswith("build        ffmpeg version 5.1.9-0+deb12u1; package versions: dev ")
    assert "(1 packages)" in before and "(2 packages)" in before and "Copyright" not in before
    info["packages"]["music"]["version"] = "2.0-4"
    record.write_text(json.dumps(info))
    after = fingerprint.build_line(tmp_path)
    assert _split_digest(after, "dev") == _split_digest(before, "dev")
    assert _split_digest(after, "train") != _split_digest(before, "train")
    assert fingerprint.main(["--negatives", str(tmp_path), "--steps", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == after
    record.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"BUILD_INFO\.json: not a negatives build record"):
        fingerprint.build_line(tmp_path)
    with pytest.raises(SystemExit):
        fingerprint.main(["--negatives", str(tmp_path), "--steps", "1"])


def _split_digest(build_line: str, split: str) -> str:
    return build_line.split(f" {split} ")[1].split()[0]


def test_the_folder_record_names_the_packages_whose_samples_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-folder digests are written to a record and compared with it: a changed sample is
    named by its folder, a new or vanished folder is named too, and a broken record or a
    record without the negatives is refused with its reason."""
    negatives = tmp_path / "negatives"
    samples = (np.sin(np.arange(4000) * 0.07) * 6000).astype(np.int16)
    for folder in ("train/game-data", "train/music", "dev/prompts"):
        (negatives / folder).mkdir(parents=True)
        sf.write(negatives / folder / "0000.flac", samples, 16000, subtype="PCM_16")
    (negatives / "NEGATIVES.csv").write_text(
        "path,split\ntrain/game-data/0000.flac,train\ntrain/music/0000.flac,train\ndev/prompts/0000.flac,dev\n"
    )
    splits, folders = fingerprint.decoded_digests(negatives, "NEGATIVES.csv")
    assert splits == fingerprint.sample_digests(negatives, "NEGATIVES.csv")
    assert set(folders) == {"train/game-data", "train/music", "dev/prompts"}
    record = tmp_path / "record.tsv"
    assert fingerprint.main(["--negatives", str(negatives), "--steps", "1", "--write-folders", str(record)]) == 0
    capsys.readouterr()
    decoder = fingerprint.build_line(negatives).removeprefix("build").strip()
    assert record.read_text().startswith(f"# the negatives' samples by folder; {decoder}; ")
    assert fingerprint.read_folder_record(record) == folders
    assert fingerprint.against_line(folders, folders, "record.tsv") == "folders      3 of 3 as in record.tsv"

    changed = samples.copy()
    changed[1234] += 3  # a few units, as libopenmpt's random draws make
    sf.write(negatives / "train" / "music" / "0000.flac", changed, 16000, subtype="PCM_16")
    (negatives / "train" / "new-pack").mkdir()
    sf.write(negatives / "train" / "new-pack" / "0000.flac", samples, 16000, subtype="PCM_16")
    (negatives / "dev" / "prompts" / "0000.flac").unlink()
    assert fingerprint.main(["--negatives", str(negatives), "--steps", "1", "--against", str(record)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "folders      1 of 3 as in record.tsv; differ: train/music; new: train/new-pack; gone: dev/prompts"
    )

    record.write_text("# heading\ntrain/music\n")
    with pytest.raises(ValueError, match=r"record\.tsv:2: not a `folder<TAB>digest` line"):
        fingerprint.read_folder_record(record)
    with pytest.raises(SystemExit):
        fingerprint.main(["--negatives", str(negatives), "--steps", "1", "--against", str(record)])
    with pytest.raises(SystemExit):
        fingerprint.main(["--against", str(record)])  # no negatives to compare
    assert "give --negatives too" in capsys.readouterr().err
