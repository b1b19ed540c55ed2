"""Heads against later windows (model card, fifty-third round): the count and the command."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.beginnings import head_and_windows, main, reach
from tests.conftest import write_tiny_alarm_dataset
from tests.negatives_data import make_negatives

ROOT = Path(__file__).resolve().parents[1]


def test_a_head_is_the_first_window_and_later_windows_are_whole_ones() -> None:
    column = np.zeros(23)
    column[1] = 0.995  # in the head
    column[12] = 0.99  # the second later window reaches exactly the level
    column[21] = 1.0  # in a part window at the end: not counted
    assert head_and_windows(column, 5, 0.99) == (True, 3, 1)
    column[1] = 0.98
    assert head_and_windows(column, 5, 0.99) == (False, 3, 1)
    assert head_and_windows(np.full(3, 0.999), 5, 0.99) == (True, 0, 0)  # shorter than a window


def test_a_head_or_a_window_needs_one_class_and_a_frame() -> None:
    with pytest.raises(ValueError, match="one class"):
        head_and_windows(np.zeros((4, 2)), 2, 0.5)
    with pytest.raises(ValueError, match="at least one frame"):
        head_and_windows(np.zeros(4), 0, 0.5)


def test_reach_sums_files_and_gives_shares() -> None:
    quiet, loud_start = np.zeros(10), np.zeros(10)
    loud_start[0] = 1.0
    counted = reach([quiet, loud_start, np.ones(10)], 2, 0.5)
    assert (counted.files, counted.heads, counted.windows, counted.windows_reached) == (3, 2, 12, 4)
    assert counted.head_share == pytest.approx(2 / 3) and counted.window_share == pytest.approx(1 / 3)
    empty = reach([], 2, 0.5)
    assert empty.head_share == 0.0 and empty.window_share == 0.0


def test_the_command_reads_files_without_events_with_and_without_a_lead_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_tiny_alarm_dataset(tmp_path / "data")
    negatives = make_negatives(tmp_path / "neg")
    shipped = ROOT / "models" / "harken.onnx"
    reader_log = logging.getLogger("service.audio.sources")
    level_before = reader_log.level
    assert main(["--model", str(shipped), "--data", str(data), "--negatives", str(negatives),
                 "--min-file-s", "10", "--lead-in-s", "1.5"]) == 0
    assert reader_log.level == level_before  # the reader's warnings are quiet only while it counts
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dev files without events of 10 s or more")
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[1]) for row in rows] == [("harken.onnx", "0"), ("harken.onnx", "1.5")]
    for row in rows:
        # the quiet room and two dev chunks of 20 s (the alarm file has an event); 20 s give
        # a few frames under 1000, so a 2 s head and 8 whole later windows each
        assert row[2] == "3" and 0 <= int(row[3]) <= 3 and row[5] == "24"
    with pytest.raises(SystemExit):
        main(["--model", str(shipped), "--data", str(data), "--class", "doorbell"])
    with pytest.raises(SystemExit):
        main(["--model", str(shipped), "--data", str(data), "--lead-in-s", "-1"])
