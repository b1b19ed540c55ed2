"""The `harken` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from service.config import ConfigError, Settings, load_settings

log = logging.getLogger("harken")


def _config_path(args: argparse.Namespace) -> Path | None:
    """--config, else HARKEN_CONFIG when that file exists (the Docker image sets it)."""
    if args.config is not None:
        return args.config
    from_env = os.environ.get("HARKEN_CONFIG")
    if not from_env:
        return None
    if Path(from_env).is_file():
        return Path(from_env)
    print(f"harken: no config file at HARKEN_CONFIG={from_env}; using embedded defaults and "
          "HARKEN_* variables", file=sys.stderr)
    return None


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(_config_path(args))
    if getattr(args, "source", None):
        from service.config import SourceConfig

        try:
            SourceConfig(url=args.source)
        except Exception as exc:
            raise ConfigError(f"--source {args.source}: {_first_error(exc)}") from None
        settings = settings.with_source(args.source)
    return settings


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)


def cmd_run(args: argparse.Namespace) -> int:
    from service.daemon import run_daemon
    from service.logs import setup_logging

    settings = _settings(args)
    setup_logging(settings.log.level, settings.log.json_format)
    return _run_until_stopped(run_daemon(settings))


def _run_until_stopped(daemon: Coroutine[Any, Any, int]) -> int:
    """asyncio.run without its final wait for executor threads.

    A source thread blocked on input (an idle stdin pipe, a stalled stream) cannot be
    interrupted, and asyncio.run, then the interpreter, would wait for it forever after
    a SIGTERM. The daemon has stored, delivered and closed everything when it returns,
    so such a thread is left behind and the process exits with the daemon's status.
    """
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(daemon)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()  # shuts the default executor down without waiting
    blocked = [t.name for t in threading.enumerate()
               if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if blocked:
        log.debug("exiting without waiting for blocked threads: %s", ", ".join(blocked))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_detect(args: argparse.Namespace) -> int:
    from service.audio.sources import SourceError
    from service.daemon import class_params
    from service.detector import Detector
    from service.pipeline import analyse_file

    settings = load_settings(args.config) if args.config else Settings()
    detector = Detector.load(args.model or settings.model)
    params = class_params(settings, detector)
    failed = 0
    rows = []
    for path in args.files:
        try:
            result = analyse_file(path, detector, params, settings.decision.arbitration_margin)
        except SourceError as exc:
            print(f"harken detect: {exc}", file=sys.stderr)
            failed += 1
            continue
        for event in result.events:
            row = {
                "file": str(path), "class": event.class_name, "start_s": event.start_s, "end_s": event.end_s,
                "detected_s": event.detected_s, "peak_score": event.peak_score, "mean_score": event.mean_score,
                "duration_s": round(event.end_s - event.start_s, 3),
            }
            if args.json:
                print(json.dumps(row), flush=True)
            rows.append(row)
    if not args.json:
        if rows:
            print(f"{'file':<32} {'class':<12} {'start_s':>8} {'end_s':>8} {'detected_s':>10} {'peak':>5}")
            for r in rows:
                print(f"{_short(r['file']):<32} {r['class']:<12} {r['start_s']:>8.2f} {r['end_s']:>8.2f} "
                      f"{r['detected_s']:>10.2f} {r['peak_score']:>5.2f}")
        else:
            print("no events")
    return 1 if failed else 0


def _short(path: str, width: int = 32) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def cmd_devices(args: argparse.Namespace) -> int:
    from service.audio.mic import list_input_devices
    from service.audio.sources import SourceError

    try:
        devices = list_input_devices()
    except SourceError as exc:
        print(f"harken devices: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(devices))
        return 0
    if not devices:
        print("no input devices found")
        return 0
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:>3}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz, {d['hostapi']})")
    print("use --source mic:INDEX or mic:NAME; * marks the default device")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    from service.daemon import StartupError, class_params
    from service.detector import Detector

    try:
        class_params(settings, Detector.load(settings.model))
    except StartupError as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    print(f"{args.file}: OK ({len(settings.sources)} source(s), mqtt {'on' if settings.mqtt.enabled else 'off'}, "
          f"{len(settings.webhooks)} webhook(s), api {'on' if settings.api.enabled else 'off'})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from service.doctor import Check, format_checks, run_checks

    try:
        settings = load_settings(_config_path(args))
    except ConfigError as exc:
        checks = [Check("config", "fail", str(exc),
                        "fix the named key; `harken check-config FILE` validates a file")]
    else:
        where = _config_path(args) or "embedded defaults"
        checks = [Check("config", "ok", f"{where}: {len(settings.sources)} source(s)")]
        checks += run_checks(settings, timeout_s=args.timeout)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print(format_checks(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harken", description="Local-first home sound-event monitor.")
    parser.add_argument("--version", action="version", version=f"harken {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="YAML config file (default: embedded defaults)")
    run.add_argument("--source", help="mic[:DEVICE] | file:PATH | demo | - | url:URL (replaces configured sources)")
    run.set_defaults(func=cmd_run)

    detect = sub.add_parser("detect", help="detect events in audio files (offline)")
    detect.add_argument("files", nargs="+", type=Path)
    detect.add_argument("--json", action="store_true", help="one JSON object per event")
    detect.add_argument("--model", type=Path, help="model file (default: the bundled model)")
    detect.add_argument("--config", type=Path, help="config file for per-class decision overrides")
    detect.set_defaults(func=cmd_detect)

    devices = sub.add_parser("devices", help="list audio input devices")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(func=cmd_devices)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    doctor = sub.add_parser(
        "doctor", help="check audio devices, model, broker, webhooks and store; say how to fix"
    )
    doctor.add_argument("--config", type=Path, help="YAML config file (default: embedded defaults)")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")
    doctor.add_argument("--json", action="store_true", help="the checks as a JSON list")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harken")
    except PackageNotFoundError:
        return "dev"


def main(argv: list[str] | None = None) -> int:
    from service.contract import ContractError
    from service.daemon import StartupError
    from service.sinks.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ContractError, StartupError, StoreError) as exc:
        print(f"harken {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
