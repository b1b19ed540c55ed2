"""Configuration: YAML + environment into one typed tree; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "harken.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults() -> None:
    settings = load_settings(None, environ={})
    assert [(s.name, s.url) for s in settings.sources] == [("default", "mic")]
    assert settings.api.host == "127.0.0.1" and settings.api.port == 8080
    assert not settings.mqtt.enabled and settings.webhooks == []


def test_yaml_and_environment_merge_with_nesting(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt: {enabled: true, host: broker}\nsources: [{name: nursery, url: mic}]\n")
    settings = load_settings(path, environ={"HARKEN_MQTT__PORT": "1884", "HARKEN_MQTT__HOST": "other",
                                            "HARKEN_LOG__LEVEL": "debug", "UNRELATED": "x"})
    assert settings.mqtt.enabled and settings.mqtt.host == "other" and settings.mqtt.port == 1884
    assert settings.log.level == "debug"
    assert settings.sources[0].name == "nursery"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("mqtt: {hots: x}\n", {}, r"mqtt\.hots: unknown key"),
        ("mqtt: {port: abc}\n", {}, r"mqtt\.port: .*integer.*'abc'"),
        ("", {"HARKEN_MQTT__PORT": "99999"}, r"mqtt\.port: .*65535"),
        ("", {"HARKEN_MQQT__HOST": "x"}, r"mqqt: unknown key"),
        ("sources: [{name: a, url: speaker}]\n", {}, r"sources\.0\.url: .*unknown source 'speaker'"),
        ("sources: [{name: a, url: mic}, {name: a, url: demo}]\n", {}, "source names must be unique"),
        ("classes: {smoke_alarm: {sensitivity: 2}}\n", {}, r"classes\.smoke_alarm\.sensitivity"),
        ("webhooks: [{url: 'ftp://x'}]\n", {}, r"webhooks\.0\.url"),
        ("- just\n- a list\n", {}, "top level must be a mapping"),
        ("mqtt: {host: [unclosed\n", {}, "not valid YAML at line"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert "Traceback" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_source_flag_replaces_sources() -> None:
    settings = Settings().with_source("file:/x.wav")
    assert [(s.name, s.url) for s in settings.sources] == [("default", "file:/x.wav")]
    assert Settings().with_source("demo").sources[0].name == "demo"


def test_unknown_classes_are_checked_against_the_configured_model(tmp_path: Path) -> None:
    asked: list[Path | None] = []

    def model_classes(model: Path | None) -> list[str]:
        asked.append(model)
        return ["dog_bark", "doorbell"]

    path = write(tmp_path, "model: /models/dogs.onnx\nclasses: {dog_bark: {}, cat: {}}\n"
                           "webhooks: [{url: 'http://h/x', priority: {cat: 3}, format: ntfy}]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"HARKEN_MQTT__PORT": "x"}, model_classes=model_classes)
    assert asked == [Path("/models/dogs.onnx")]
    message = str(info.value)
    assert "mqtt.port" in message  # reported together, in one line
    assert "classes.cat: the model has no such class (it knows dog_bark, doorbell)" in message
    assert "webhooks.0.priority: the model has no class 'cat'" in message
    assert "\n" not in message
    # A model that cannot be read: its own check reports it; the config is not blamed.
    settings = load_settings(path, environ={}, model_classes=lambda model: None)
    assert set(settings.classes) == {"dog_bark", "cat"}
    # Without model_classes (tests, tools that load no model) class names are not checked.
    assert "cat" in load_settings(path, environ={}).classes
