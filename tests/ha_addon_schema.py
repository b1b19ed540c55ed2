"""The keys and types Home Assistant documents for add-on repositories, written down for tests.

Sources: developers.home-assistant.io, "Add-on configuration" (config.yaml: required and
optional keys, options/schema element types, build.yaml, translations) and "Create an add-on
repository" (repository.yaml). The Supervisor ignores keys it does not know; these checks
refuse them instead, because in our files an unknown key is a typo. Each check returns a list
of problems, each naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

ARCHES = {"armhf", "armv7", "aarch64", "amd64", "i386"}
MAP_TYPES = {
    "homeassistant_config", "addon_config", "ssl", "addons", "backup", "share", "media",
    "all_addon_configs", "data", "config",  # "config": the older name of homeassistant_config
}
ROLES = {"default", "homeassistant", "backup", "manager", "admin"}
CAPABILITIES = {
    "BPF", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH", "IPC_LOCK", "NET_ADMIN", "NET_RAW", "PERFMON",
    "SYS_ADMIN", "SYS_MODULE", "SYS_NICE", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
}
# One element of an options schema: str(min,max), int(min,max), float(min,max), bool, email,
# url, password(min,max), port, match(REGEX), list(a|b|c), device(filter); "?" = optional.
SCHEMA_ELEMENT = re.compile(
    r"^(?:bool|email|url|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>\d+)?,(?P<i_max>\d+)?\))?"
    r"|float(?:\((?P<f_min>[\d.]+)?,(?P<f_max>[\d.]+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\))\??$"
)
SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
SERVICE = re.compile(r"^(mqtt|mysql):(provide|want|need)$")
MAP_STRING = re.compile(
    r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|all_addon_configs|addon_config)"
    r"(?::(rw|ro))?$"
)
WATCHDOG = re.compile(r"^(?:https?|\[PROTO:\w+\]|tcp)://\[HOST\]:(\[PORT:\d+\]|\d+).*$")
WEBUI = re.compile(r"^(?:https?|\[PROTO:\w+\])://\[HOST\]:\[PORT:\d+\].*$")
PORT_KEY = re.compile(r"^\d{1,5}/(tcp|udp)$")
IMAGE = re.compile(r"^([a-zA-Z\-.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[.\-\w{}]+)?$")

Check = Callable[[Any], str | None]


def _type(kind: type | tuple[type, ...], name: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            return f"must be {name}, got a boolean"
        return None if isinstance(value, kind) else f"must be {name}, got {type(value).__name__}"

    return check


BOOL = _type(bool, "a boolean")
STR = _type(str, "a string")


def _one_of(choices: set[str]) -> Check:
    return lambda v: None if v in choices else f"must be one of {sorted(choices)}, got {v!r}"


def _match(pattern: re.Pattern[str], what: str) -> Check:
    return lambda v: None if isinstance(v, str) and pattern.match(v) else f"must be {what}, got {v!r}"


def _url(value: Any) -> str | None:
    parsed = urlparse(value) if isinstance(value, str) else None
    ok = parsed is not None and parsed.scheme in ("http", "https") and bool(parsed.netloc)
    return None if ok else f"must be an http(s) URL, got {value!r}"


def _list_of(check: Check) -> Check:
    def checker(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be a list, got {type(value).__name__}"
        for i, item in enumerate(value):
            problem = check(item)
            if problem:
                return f"item {i}: {problem}"
        return None

    return checker


def _dict_of(key: Check, value: Check) -> Check:
    def checker(data: Any) -> str | None:
        if not isinstance(data, dict):
            return f"must be a mapping, got {type(data).__name__}"
        for k, v in data.items():
            problem = key(k) or value(v)
            if problem:
                return f"{k}: {problem}"
        return None

    return checker


def _port(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    return None if ok else f"must be a port 1-65535, got {value!r}"


def _int_range(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"must be an integer {low}-{high}, got {value!r}"

    return check


def _map_entry(value: Any) -> str | None:
    if isinstance(value, str):
        return None if MAP_STRING.match(value) else f"unknown map entry {value!r}"
    if not isinstance(value, dict):
        return f"must be a string or mapping, got {type(value).__name__}"
    unknown = set(value) - {"type", "read_only", "path"}
    if unknown:
        return f"unknown keys {sorted(unknown)}"
    if value.get("type") not in MAP_TYPES:
        return f"type must be one of {sorted(MAP_TYPES)}, got {value.get('type')!r}"
    if "read_only" in value and not isinstance(value["read_only"], bool):
        return "read_only must be a boolean"
    if "path" in value and (not isinstance(value["path"], str) or value["path"] in ("", "/")):
        return "path must be a non-empty path other than /"
    return None


def _ulimits(value: Any) -> str | None:
    def limit(v: Any) -> str | None:
        if isinstance(v, int) and not isinstance(v, bool):
            return None
        if isinstance(v, dict) and set(v) == {"soft", "hard"} and all(isinstance(x, int) for x in v.values()):
            return None
        return "must be an integer or {soft, hard}"

    return _dict_of(STR, limit)(value)


def _equal(expected: Any) -> Check:
    return lambda v: None if v == expected and type(v) is type(expected) else f"must be {expected!r}"


def _any(*checks: Check) -> Check:
    def check(value: Any) -> str | None:
        problems = [c(value) for c in checks]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)

    return check


REQUIRED = {
    "name": STR,
    "version": STR,
    "slug": _match(SLUG, "a slug (letters, digits, - _ .)"),
    "description": STR,
    "arch": _list_of(_one_of(ARCHES)),
}
OPTIONAL: dict[str, Check] = {
    "machine": _list_of(STR),
    "url": _url,
    "startup": _one_of({"initialize", "system", "services", "application", "once"}),
    "webui": _match(WEBUI, "a webui URL like http://[HOST]:[PORT:8080]/"),
    "boot": _one_of({"auto", "manual", "manual_only"}),
    "ports": _dict_of(_match(PORT_KEY, "PORT/tcp or PORT/udp"), _any(_port, _equal(None))),
    "ports_description": _dict_of(_match(PORT_KEY, "PORT/tcp or PORT/udp"), STR),
    "host_network": BOOL, "host_ipc": BOOL, "host_dbus": BOOL, "host_pid": BOOL, "host_uts": BOOL,
    "devices": _list_of(STR),
    "homeassistant": STR,
    "hassio_role": _one_of(ROLES),
    "hassio_api": BOOL, "homeassistant_api": BOOL, "docker_api": BOOL,
    "privileged": _list_of(_one_of(CAPABILITIES)),
    "full_access": BOOL,
    "apparmor": _type((bool, str), "a boolean or a profile name"),
    "map": _list_of(_map_entry),
    "environment": _dict_of(STR, STR),
    "audio": BOOL, "video": BOOL, "gpio": BOOL, "usb": BOOL, "uart": BOOL, "udev": BOOL,
    "devicetree": BOOL, "kernel_modules": BOOL, "stdin": BOOL, "legacy": BOOL,
    "options": _type(dict, "a mapping"),
    "schema": _type((dict, bool), "a mapping or false"),
    "image": _match(IMAGE, "an image name like ghcr.io/owner/{arch}-addon"),
    "codenotary": STR,
    "timeout": _int_range(10, 300),
    "tmpfs": BOOL,
    "discovery": _list_of(STR),
    "services": _list_of(_match(SERVICE, "SERVICE:provide|want|need (mqtt or mysql)")),
    "auth_api": BOOL,
    "ingress": BOOL,
    "ingress_port": _any(_port, _equal(0)),  # 0: a free port, for add-ons on the host network
    "ingress_entry": STR,
    "ingress_stream": BOOL,
    "panel_icon": _match(re.compile(r"^mdi:[a-z0-9-]+$"), "an MDI icon like mdi:ear-hearing"),
    "panel_title": STR,
    "panel_admin": BOOL,
    "backup": _one_of({"hot", "cold"}),
    "backup_pre": STR, "backup_post": STR,
    "backup_exclude": _list_of(STR),
    "advanced": BOOL,
    "stage": _one_of({"stable", "experimental", "deprecated"}),
    "init": BOOL,
    "watchdog": _match(WATCHDOG, "a watchdog URL like http://[HOST]:[PORT:8099]/health"),
    "realtime": BOOL,
    "journald": BOOL,
    "breaking_versions": _list_of(STR),
    "ulimits": _ulimits,
}


def _check_keys(data: Any, required: dict[str, Check], optional: dict[str, Check], where: str) -> list[str]:
    if not isinstance(data, dict):
        return [f"{where}: must be a mapping, got {type(data).__name__}"]
    problems = [f"{where}: missing required key {key!r}" for key in required if key not in data]
    for key, value in data.items():
        check = required.get(key) or optional.get(key)
        if check is None:
            problems.append(f"{where}: unknown key {key!r}")
            continue
        problem = check(value)
        if problem:
            problems.append(f"{where}: {key}: {problem}")
    return problems


def _schema_problems(schema: Any, path: str, depth: int) -> list[str]:
    """Elements are type strings; lists hold one element (never a list); depth at most two."""
    if isinstance(schema, str):
        return [] if SCHEMA_ELEMENT.match(schema) else [f"{path}: unknown type {schema!r}"]
    if depth > 2:  # the schema's own mapping is level 0: e.g. options -> list -> mapping of types
        return [f"{path}: nested deeper than two levels"]
    if isinstance(schema, list):
        if len(schema) != 1:
            return [f"{path}: a list schema holds exactly one element"]
        if isinstance(schema[0], list):
            return [f"{path}: a list may not hold a list"]
        return _schema_problems(schema[0], f"{path}[]", depth + 1)
    if isinstance(schema, dict):
        problems = []
        for key, element in schema.items():
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} is not a string (quote YAML's on/off/yes/no)")
            problems += _schema_problems(element, f"{path}.{key}", depth + 1)
        return problems
    return [f"{path}: must be a type string, a list or a mapping, got {type(schema).__name__}"]


def _element_problem(element: str, value: Any) -> str | None:
    """Validate one option value as the Supervisor does for its type string."""
    match = SCHEMA_ELEMENT.match(element)
    assert match is not None, element
    kind = element.rstrip("?")
    bounds = {k[2:]: float(v) for k, v in match.groupdict().items() if v and k[1:2] == "_"}

    def in_range(number: float) -> bool:
        return bounds.get("min", -float("inf")) <= number <= bounds.get("max", float("inf"))

    if kind.startswith(("str", "password")):
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        return None if ok and in_range(len(str(value))) else f"{value!r} is not {kind}"
    if kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool) and in_range(value)
        return None if ok else f"{value!r} is not {kind}"
    if kind.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and in_range(float(value))
        return None if ok else f"{value!r} is not {kind}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not bool"
    if kind == "url":
        return _url(value)
    if kind == "port":
        return _port(value)
    if kind == "email":
        return None if isinstance(value, str) and re.match(r"^[^@\s]+@[^@\s]+$", value) else f"{value!r} is not email"
    if kind.startswith("match"):
        return None if re.match(match.group("match"), str(value)) else f"{value!r} does not match {kind}"
    if kind.startswith("list"):
        return None if str(value) in match.group("list").split("|") else f"{value!r} is not one of {kind}"
    return None  # device: depends on the machine's hardware


def option_problems(schema: Any, options: Any, path: str = "options") -> list[str]:
    """The options against the schema, as the Supervisor validates them before a start."""
    if isinstance(schema, str):
        if options is None:
            return [f"{path}: required value missing"]
        problem = _element_problem(schema, options)
        return [f"{path}: {problem}"] if problem else []
    if isinstance(schema, list):
        if not isinstance(options, list):
            return [f"{path}: must be a list"]
        return [p for i, item in enumerate(options) for p in option_problems(schema[0], item, f"{path}[{i}]")]
    if not isinstance(options, dict):
        return [f"{path}: must be a mapping"]
    problems = [f"{path}: {key!r} is not in the schema" for key in options if key not in schema]
    for key, element in schema.items():
        if key in options:
            problems += option_problems(element, options[key], f"{path}.{key}")
        elif not (isinstance(element, str) and element.endswith("?")):
            problems.append(f"{path}: required option {key!r} has no value")
    return problems


def config_problems(config: Any) -> list[str]:
    """config.yaml: documented keys and types, a valid options schema, defaults that fit it."""
    problems = _check_keys(config, REQUIRED, OPTIONAL, "config.yaml")
    if problems:
        return problems
    schema = config.get("schema", {})
    if isinstance(schema, dict):
        problems += _schema_problems(schema, "schema", 0)
        if not problems:
            problems += option_problems(schema, config.get("options", {}))
    return problems


def build_problems(build: Any) -> list[str]:
    return _check_keys(
        build,
        {},
        {
            "build_from": _any(
                _match(IMAGE, "an image"), _dict_of(_one_of(ARCHES), _match(IMAGE, "an image"))
            ),
            "args": _dict_of(STR, STR),
            "labels": _dict_of(STR, STR),
            "squash": BOOL,
            "codenotary": _dict_of(_one_of({"signer", "base_image"}), STR),
        },
        "build.yaml",
    )


def repository_problems(repository: Any) -> list[str]:
    return _check_keys(repository, {"name": STR}, {"url": _url, "maintainer": STR}, "repository.yaml")


def translation_problems(translations: Any, schema: dict[str, Any]) -> list[str]:
    """translations/<lang>.yaml: `configuration` names and describes every option (and every
    field of a nested one) and nothing else; `network` describes ports."""
    problems = _check_keys(
        translations, {}, {"configuration": _type(dict, "a mapping"), "network": _dict_of(STR, STR)}, "translations"
    )
    if problems:
        return problems

    def fields_of(element: Any) -> dict[str, Any] | None:
        element = element[0] if isinstance(element, list) else element
        return element if isinstance(element, dict) else None

    def check(entries: Any, elements: dict[str, Any], where: str) -> list[str]:
        if not isinstance(entries, dict):
            return [f"{where}: must be a mapping"]
        found = [f"{where}: {key!r} is not an option" for key in entries if key not in elements]
        for key, element in elements.items():
            entry = entries.get(key)
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                found.append(f"{where}: {key!r} has no name")
                continue
            if not isinstance(entry.get("description"), str):
                found.append(f"{where}: {key!r} has no description")
            unknown = set(entry) - {"name", "description", "fields"}
            if unknown:
                found.append(f"{where}.{key}: unknown keys {sorted(unknown)}")
            nested = fields_of(element)
            if nested is not None:
                found += check(entry.get("fields", {}), nested, f"{where}.{key}.fields")
        return found

    return check(translations.get("configuration", {}), schema, "configuration")
