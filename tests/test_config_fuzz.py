"""Property-based: whatever YAML or environment a user writes, harken answers with one clear
error naming the key (or accepts it), never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import ConfigError, Settings, load_settings

SECTIONS = ["sources", "model", "classes", "decision", "store", "api", "mqtt", "webhooks", "log", "bogus"]
KEYS = ["host", "port", "enabled", "token", "path", "url", "name", "level", "json", "sensitivity", "tls",
        "retention_days", "qos", "node_id", "on", "classes", "smoke_alarm", "decision", "on_threshold", "x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["mic", "demo", "file:/x.wav", "-", "url:rtsp://c/l", "info", "1e9"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=4)


def _check(outcome: Settings | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        message = str(outcome)
        assert message and "\n" not in message and "Traceback" not in message
        assert ": " in message  # "<origin>: <key>: <problem>"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_yaml_document_gives_settings_or_one_clear_error(document: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            outcome: Settings | ConfigError = load_settings(path, environ={})
        except ConfigError as exc:
            outcome = exc
        _check(outcome)
        if isinstance(outcome, ConfigError) and "bogus" in document:
            assert "bogus" in str(outcome) or ": " in str(outcome)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.builds(lambda a, b: f"HARKEN_{a}__{b}".upper(), st.sampled_from(SECTIONS), st.sampled_from(KEYS)),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=15),
    max_size=4,
))
def test_any_environment_gives_settings_or_one_clear_error(environ: dict[str, str]) -> None:
    try:
        outcome: Settings | ConfigError = load_settings(None, environ=environ)
    except ConfigError as exc:
        outcome = exc
        named = [key.removeprefix("HARKEN_").split("__")[0].lower() for key in environ]
        assert any(name in str(exc) for name in named), str(exc)
    _check(outcome)


@given(st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_arbitrary_bytes_as_a_config_file(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(raw)
        try:
            load_settings(path, environ={})
        except ConfigError as exc:
            _check(exc)
