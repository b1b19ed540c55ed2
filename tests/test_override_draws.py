"""`python -m models.override_draws`: its setting is parsed, and refused by name."""

from __future__ import annotations

import pytest

from models.override_draws import main, parse_setting


def test_a_setting_names_a_decision_parameter_and_its_values() -> None:
    assert parse_setting("onset_touch_s=0,0.5,2") == ("onset_touch_s", [0.0, 0.5, 2.0])
    assert parse_setting("onset_k=5") == ("onset_k", [5.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [("onset_touch=1", "NAME one of on_threshold"), ("onset_touch_s", "NAME one of"),
     ("onset_touch_s=a,b", "the values must be numbers"), ("onset_touch_s=", "no value given")],
)
def test_a_bad_setting_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_setting(text)


def test_the_command_line_refuses_a_bad_setting_before_reading_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--model", "m.onnx", "--config", "c.yaml", "--data", "d", "--negatives", "n", "--cache", "c",
              "--set", "threshold=1"])
    assert "--set 'threshold=1'" in capsys.readouterr().err
