"""Fingerprints of what a training run depends on, to compare two sessions.

Training repeats exactly within one machine and session and not across sessions (model
card, tenth round: run S8 re-run by its recorded command scored 0.341 against 0.387). Three
suspects, each printed as one line that two sessions can compare:

* the **arithmetic**: a few optimiser steps of the small network on fixed random input,
  with the default CPU kernels and with oneDNN switched off (oneDNN and MKL choose code
  paths by instruction set, and a difference of a few ulp grows over thousands of steps);
* the **negatives** folder, rebuilt from Debian packages each session;
* the **data** folder (`MANIFEST.csv` and its audio).

The negatives folder has a second line, its build: the ffmpeg that decoded it and, per split,
a digest of its packages' versions (`BUILD_INFO.json`, written by the recipe's build). Equal
builds do not make equal samples: ffmpeg's player for tracker modules (libopenmpt) gives other
samples on every run for some modules, so three .it files of pingus-data (six train chunks)
decode a little differently on every build, on one machine too (model card, forty-ninth round),
and the train split's sample digest differs between any two builds. Per folder
(`<split>/<package>`) the digests say which packages differ: `--write-folders FILE` records
them, `--against FILE` compares with a record (`models/card/negatives-folders.tsv`, the
forty-ninth round's build).

A folder's line has two kinds of digest: its bytes (the listing and every audio file) and,
per split of its listing (train, dev), its decoded samples. A rebuild by another FLAC encoder
or package snapshot changes the bytes; only a change of the samples changes what a run
or a dev figure sees (twelfth round: the negatives' bytes differed from the session before
while every re-measured dev figure was equal to the last digit).

Equal lines rule a suspect out; a differing arithmetic line with equal data says the
machine, not the recipe, is why a run does not repeat.

    python -m models.fingerprint [--negatives DIR [--against FILE] [--write-folders FILE]] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from models.config import build_net, load_config
from service.audio.features import FeatureParams

#: The recipe whose network the arithmetic line trains (the shipped members' size).
RECIPE = Path(__file__).parent / "configs" / "live-long-small.yaml"
AUDIO_SUFFIXES = (".flac", ".wav")


@contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def trained_weights(steps: int = 20, onednn: bool = True, seed: int = 0) -> np.ndarray:
    """The small network's weights after `steps` AdamW steps on fixed random log-mels and
    targets, flattened (float32). Depends only on the arithmetic of this machine and torch."""
    cfg = load_config(RECIPE)
    params = FeatureParams()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_net(cfg, params)
    features = torch.randn(4, 400, params.n_mels, generator=generator)
    with torch.no_grad():
        frames = net(features).shape  # the network drops its receptive field's frames
    targets = (torch.rand(frames, generator=generator) > 0.9).float()
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.opt.lr, weight_decay=cfg.opt.weight_decay)
    net.train()
    with _onednn(onednn):
        for _ in range(steps):
            optimiser.zero_grad()
            loss = F.binary_cross_entropy_with_logits(net(features), targets)
            loss.backward()
            optimiser.step()
    return torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()]).float().numpy()


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def audio_files(root: Path) -> list[Path]:
    """Every audio file under `root`, in sorted path order (the order both digests use)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def folder_digest(root: Path, listing: str) -> tuple[str, int]:
    """sha256 over `listing` (the folder's CSV) and every audio file under `root`, in sorted
    path order; and how many audio files went in."""
    if not (root / listing).is_file():
        raise FileNotFoundError(f"{root}: no {listing} (give the folder that holds it)")
    files = audio_files(root)
    total = hashlib.sha256()
    for path in [root / listing, *files]:
        total.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as file:  # streamed: the negatives hold 1.8 GB
            total.update(hashlib.file_digest(file, "sha256").digest())
    return total.hexdigest()[:16], len(files)


def sample_digests(root: Path, listing: str) -> dict[str, str]:
    """sha256 of the decoded samples (and relative paths) of the audio of each split named
    by `listing`'s `split` column (train, dev, ...), in sorted path order; audio the listing
    does not name counts as "unlisted"."""
    return decoded_digests(root, listing)[0]


def decoded_digests(root: Path, listing: str) -> tuple[dict[str, str], dict[str, str]]:
    """The decoded samples' digests of each split (as `sample_digests`) and of each folder
    that holds audio (its path under `root`, `train/pingus-data` in the negatives), from one
    pass over the audio (the negatives hold 24 hours)."""
    with (root / listing).open(newline="") as file:
        split_of = {row["path"]: row.get("split") or "unlisted" for row in csv.DictReader(file)}
    by_split: dict[str, hashlib._Hash] = {}
    by_folder: dict[str, hashlib._Hash] = {}
    for path in audio_files(root):
        relative = path.relative_to(root).as_posix()
        samples, rate = sf.read(path, dtype="int16", always_2d=True)  # the FLACs are 16-bit
        content = [relative.encode() + b"\0" + str(rate).encode() + b"\0", np.ascontiguousarray(samples).tobytes()]
        folder = path.parent.relative_to(root).as_posix()
        for total in (
            by_split.setdefault(split_of.get(relative, "unlisted"), hashlib.sha256()),
            by_folder.setdefault(folder, hashlib.sha256()),
        ):
            for part in content:
                total.update(part)
    return (
        {split: total.hexdigest()[:16] for split, total in sorted(by_split.items())},
        {folder: total.hexdigest()[:16] for folder, total in sorted(by_folder.items())},
    )


def write_folder_record(path: Path, folders: dict[str, str], heading: str) -> None:
    """A record of per-folder sample digests (tab-separated `folder digest` lines under a
    `#` heading) that a later session compares with (`--against`)."""
    lines = [f"# {heading}", *(f"{folder}\t{value}" for folder, value in sorted(folders.items()))]
    path.write_text("\n".join(lines) + "\n")


def read_folder_record(path: Path) -> dict[str, str]:
    """The per-folder digests of a record written by `write_folder_record`."""
    folders: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"{path}:{number}: not a `folder<TAB>digest` line: {line!r}")
        folders[fields[0]] = fields[1]
    return folders


def against_line(folders: dict[str, str], recorded: dict[str, str], name: str) -> str:
    """Which folders' samples differ from a record, which are new, which are gone."""
    shared = sorted(set(folders) & set(recorded))
    differ = [folder for folder in shared if folders[folder] != recorded[folder]]
    new = sorted(set(folders) - set(recorded))
    gone = sorted(set(recorded) - set(folders))
    parts = [f"folders      {len(shared) - len(differ)} of {len(recorded)} as in {name}"]
    for label, names in (("differ", differ), ("new", new), ("gone", gone)):
        if names:
            parts.append(f"{label}: {' '.join(names)}")
    return "; ".join(parts)


def _folder_line(label: str, root: Path, listing: str, splits: dict[str, str]) -> str:
    value, count = folder_digest(root, listing)
    samples = " ".join(f"{split} {value}" for split, value in splits.items())
    return f"{label:<12} {value} ({count} audio files); samples: {samples}"


def _lines_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def build_line(negatives: Path) -> str:
    """The negatives build's ffmpeg and, per split, a digest of its packages' versions
    (sorted `package=version` lines), from the recipe's `BUILD_INFO.json`."""
    return f"build        {build_description(negatives)}"


def build_description(negatives: Path) -> str:
    """`build_line` without its label (also the folder record's heading)."""
    path = negatives / "BUILD_INFO.json"
    if not path.is_file():
        return f"{negatives} has no BUILD_INFO.json (not built by scripts/negatives)"
    try:
        info = json.loads(path.read_text())
        packages: dict[str, dict] = info["packages"]
        by_split: dict[str, list[str]] = {}
        for name, stats in sorted(packages.items()):
            by_split.setdefault(stats.get("split") or "unlisted", []).append(f"{name}={stats.get('version')}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a negatives build record ({error})") from error
    ffmpeg = str(info.get("ffmpeg") or "ffmpeg unknown").split(" Copyright")[0]
    versions = " ".join(
        f"{split} {_lines_digest(lines)} ({len(lines)} packages)" for split, lines in sorted(by_split.items())
    )
    return f"{ffmpeg}; package versions: {versions}"


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(
    negatives: Path | None,
    data: Path | None,
    steps: int = 20,
    against: Path | None = None,
    write_folders: Path | None = None,
) -> list[str]:
    recorded = read_folder_record(against) if against is not None else None  # a bad record fails first
    default = trained_weights(steps, onednn=True)
    plain = trained_weights(steps, onednn=False)
    machine = (
        f"{cpu_model()}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; cpu capability {torch.backends.cpu.get_cpu_capability()}"
    )
    lines = [
        f"machine      {machine}",
        f"arithmetic   {digest(default)} (default kernels, {steps} steps)",
        f"arithmetic   {digest(plain)} (oneDNN off; largest weight difference from default "
        f"{float(np.abs(default - plain).max()):.2e})",
    ]
    if negatives is not None:
        splits, folders = decoded_digests(negatives, "NEGATIVES.csv")
        build = build_description(negatives)
        lines += [_folder_line("negatives", negatives, "NEGATIVES.csv", splits), f"build        {build}"]
        if recorded is not None and against is not None:
            lines.append(against_line(folders, recorded, against.name))
        if write_folders is not None:
            write_folder_record(write_folders, folders, f"the negatives' samples by folder; {build}; {machine}")
    if data is not None:
        lines.append(_folder_line("data", data, "MANIFEST.csv", sample_digests(data, "MANIFEST.csv")))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.fingerprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--negatives", type=Path, help="the built negatives folder (NEGATIVES.csv)")
    parser.add_argument("--data", type=Path, help="the data folder (MANIFEST.csv)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps of the arithmetic line")
    parser.add_argument(
        "--against", type=Path, help="a record of the negatives' samples by folder to compare with (with --negatives)"
    )
    parser.add_argument(
        "--write-folders", type=Path, help="write the negatives' samples by folder to this record (with --negatives)"
    )
    args = parser.parse_args(argv)
    if args.negatives is None and (args.against is not None or args.write_folders is not None):
        parser.error("--against and --write-folders read the negatives: give --negatives too")
    try:
        lines = report(args.negatives, args.data, args.steps, args.against, args.write_folders)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
