"""The `harken` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
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


def _model_classes(override: Path | None = None) -> Callable[[Path | None], Sequence[str] | None]:
    """For load_settings: the class names of the model harken will load (`override`, else
    the config's `model:`, else the bundled one); None when it cannot be loaded, which the
    model's own check reports."""
    from service.contract import ContractError
    from service.detector import Detector

    def class_names(configured: Path | None) -> Sequence[str] | None:
        try:
            return Detector.load(override or configured).class_names
        except ContractError:
            return None

    return class_names


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(_config_path(args), model_classes=_model_classes())
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


def cmd_addon(args: argparse.Namespace) -> int:
    """The Home Assistant add-on's entry point: options + Supervisor -> config -> daemon."""
    from service.addon import load_addon_settings
    from service.daemon import run_daemon
    from service.logs import setup_logging

    setup_logging("info")
    token = os.environ.get("SUPERVISOR_TOKEN") or os.environ.get("HASSIO_TOKEN")  # HASSIO_TOKEN: older Supervisors
    settings, notes = load_addon_settings(
        args.options, args.supervisor_url, token, config_dir=args.config_dir, port=args.port,
        ingress_proxies=tuple(args.ingress_proxy or ["172.30.32.2"]),
    )
    setup_logging(settings.log.level, settings.log.json_format)
    for note in notes:
        log.info("add-on: %s", note)
    if args.check:
        print(f"{args.options}: OK ({len(settings.sources)} source(s), "
              f"mqtt {'on' if settings.mqtt.enabled else 'off'}, {len(settings.webhooks)} webhook(s))")
        return 0
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

    logging.basicConfig(format="harken detect: %(message)s", level=logging.WARNING, stream=sys.stderr)
    settings = (load_settings(args.config, model_classes=_model_classes(args.model))
                if args.config else Settings())
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
        details = f"{d['channels']} ch, {d['default_samplerate']:.0f} Hz, {d['hostapi']}"
        print(f"{mark} {d['index']:>3}  {d['name']}  ({details})")
    print("use --source mic:INDEX or mic:NAME; * marks the default device")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file, model_classes=_model_classes())
    from service.daemon import StartupError, class_params
    from service.detector import Detector
    from service.sinks.webhooks import WebhookConfigError, check_targets

    try:
        detector = Detector.load(settings.model)
        class_params(settings, detector)
        check_targets(settings.webhooks, detector.class_names)
    except (StartupError, WebhookConfigError) as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    if settings.api.enabled:
        from service.api.security import exposure_problem

        problem = exposure_problem(settings.api)
        if problem:
            raise ConfigError(f"{args.file}: {problem}")
    print(f"{args.file}: OK ({len(settings.sources)} source(s), mqtt {'on' if settings.mqtt.enabled else 'off'}, "
          f"{len(settings.webhooks)} webhook(s), api {'on' if settings.api.enabled else 'off'})")
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from service.sinks.webhook_format import redact_url
    from service.sinks.webhooks import WebhookConfigError, notify_test, select_targets

    settings = load_settings(args.config)
    if not settings.webhooks:
        origin = args.config or "embedded defaults"
        raise ConfigError(f"{origin}: no webhook targets configured (the webhooks: section)")
    try:
        targets = select_targets(settings, args.target)
    except WebhookConfigError as exc:
        raise ConfigError(str(exc)) from None
    failed = 0
    for key, target, result in asyncio.run(notify_test(targets)):
        mark = "OK  " if result.ok else "FAIL"
        print(f"{mark} {key:<20} {target.format:<13} {redact_url(target.url)}  {result.detail} "
              f"({result.elapsed_ms:.0f} ms)", flush=True)
        failed += not result.ok
    return 1 if failed else 0


def _training_module(command: str):
    """Import the trainer lazily; torch and onnx come with the [train] extra only."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"`harken {command}` needs the training extra ({exc.name} is not installed): "
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
            "(the CPU build; PyPI's is the CUDA one), then pip install 'harken[train]'"
        ) from None
    from models import train

    return train


def _bad_input_as_config_error(
    command: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    errors: tuple[type[Exception], ...] = (FileNotFoundError, ValueError),
) -> int:
    """Run a training-side command; a missing file or bad value becomes one clear error."""
    try:
        return command(args)
    except errors as exc:
        raise ConfigError(str(exc)) from None


def positive_threads(text: str) -> int:
    """`harken train --threads`: a whole number, 1 or more, refused by name otherwise."""
    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number of threads, got {text!r}") from None
    if threads < 1:
        raise argparse.ArgumentTypeError(f"--threads must be 1 or more, got {threads}")
    return threads


def cmd_train(args: argparse.Namespace) -> int:
    train = _training_module("train")
    return _bad_input_as_config_error(train.cmd_train, args)


def cmd_mine(args: argparse.Namespace) -> int:
    _training_module("mine")
    from models.mining import cmd_mine as mine_command

    if not args.checkpoint.is_file():
        raise ConfigError(f"checkpoint {args.checkpoint} not found (write one with `harken train`)")
    return _bad_input_as_config_error(mine_command, args)


def cmd_reference(args: argparse.Namespace) -> int:
    _training_module("reference")
    from models.reference import cmd_reference as reference_command

    # RuntimeError: the teacher's runtime (ai-edge-litert) is not installed
    return _bad_input_as_config_error(reference_command, args, (FileNotFoundError, ValueError, RuntimeError))


def cmd_export(args: argparse.Namespace) -> int:
    train = _training_module("export")
    if not args.checkpoint.is_file():
        raise ConfigError(
            f"checkpoint {args.checkpoint} not found (write one with `harken train`)"
        )
    if args.member_weights is not None:
        args.member_weights = _member_weights(args.member_weights, 1 + len(args.ensemble or []))
    if args.weights and not args.data:
        raise ConfigError("--weights needs --data: the decisions are re-tuned for the exported weights")
    if args.checkpoint.suffix == ".onnx" and args.member is None and not (args.config and args.data and args.cache):
        raise ConfigError(
            f"{args.checkpoint} is a model .onnx: re-tuning its decisions needs --config (the recipe "
            "it was trained with), --data and --cache (where the dev scenes are kept)"
        )
    if args.checkpoint.suffix != ".onnx" and args.config and not args.data:
        raise ConfigError("--config with a best.pt sets the tuning code its decisions are re-tuned by: "
                          "it needs --data (the network's own recipe is in the checkpoint)")
    if args.checkpoint.suffix == ".onnx" and args.weights:
        raise ConfigError("--weights are training snapshots: give the run's best.pt as --checkpoint")
    missing = [str(w) for w in args.weights or [] if not w.is_file()]
    if missing:
        raise ConfigError(f"--weights: {', '.join(missing)} not found (a run keeps them in evals/)")
    if args.ensemble and args.checkpoint.suffix != ".onnx":
        raise ConfigError("--ensemble joins exported models: give a model .onnx as --checkpoint "
                          "(export each run first)")
    missing = [str(m) for m in args.ensemble or [] if not m.is_file()]
    if missing:
        raise ConfigError(f"--ensemble: {', '.join(missing)} not found")
    if args.member is not None and (args.checkpoint.suffix != ".onnx" or not args.config or args.ensemble):
        raise ConfigError("--member N takes one network out of an ensemble: give the ensemble "
                          ".onnx as --checkpoint and the members' recipe as --config, without --ensemble")
    if args.other_members and args.member is None:
        raise ConfigError("--other-members goes with --member N (taking a member out of a joined ensemble)")
    missing = [str(m) for m in args.other_members or [] if not m.is_file()]
    if missing:
        raise ConfigError(f"--other-members: {', '.join(missing)} not found")
    return _bad_input_as_config_error(train.cmd_export, args)


def _member_weights(items: list[str], models: int) -> dict[str, list[float]]:
    """`--member-weights smoke_alarm=1,0 ...` as {class: [weight per model]}; whether the
    class exists and the weights add up is checked where the models are read
    (models.export.member_weight_matrix)."""
    if models < 2:
        raise ConfigError("--member-weights weighs the models of an ensemble: give --ensemble MORE.onnx too")
    weights: dict[str, list[float]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--member-weights {item!r}: write CLASS=W,W (one weight per model), "
                              "e.g. smoke_alarm=1,0") from None
    return weights


def _eval_command(args: argparse.Namespace) -> str:
    """The options of this run as a command line, for the report."""
    parts = ["harken eval"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


#: What `harken eval` imports from the [eval] extra (plots; PSDS, which needs pandas).
EVAL_MODULES = ("matplotlib", "sed_scores_eval", "pandas")


def _check_eval_extra() -> None:
    """One line naming the extra, instead of a traceback halfway through an evaluation."""
    import importlib.util

    missing = [m for m in EVAL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"needs the [eval] extra ({', '.join(missing)} not installed): "
            "pip install 'harken[eval]' (in a checkout: pip install -e '.[eval]')"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    _check_eval_extra()
    from models.evaluate import EvalOptions, format_table, run_evaluation
    from models.manifest import ManifestError
    from service.audio.sources import SourceError

    try:
        ebrs = tuple(float(v) for v in args.ebr.split(","))
    except ValueError:
        print(f"harken eval: --ebr {args.ebr!r}: give comma-separated dB values, e.g. -6,0,6",
              file=sys.stderr)
        return 2
    options = EvalOptions(
        out=args.out, data=args.data, model=args.model, split=args.split or None, tsv=args.tsv,
        scenes=args.scenes, seed=args.seed, scene_s=args.scene_s, ebrs_db=ebrs, span=args.span,
        open_licences_only=args.open_licences, collar_s=args.collar, config=args.config,
        worst=args.worst, psds=not args.no_psds, write_scenes=args.write_scenes,
        progress=not args.no_progress, command=_eval_command(args), negatives=args.negatives,
        lead_in_s=args.lead_in_s,
    )
    try:
        report = run_evaluation(options)
    except (ManifestError, SourceError) as exc:
        print(f"harken eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report: {args.out / 'report.md'} (every figure in {args.out / 'report.json'})")
    return 1 if report["dataset"]["failed_files"] else 0

def cmd_doctor(args: argparse.Namespace) -> int:
    from service.doctor import Check, format_checks, run_checks

    try:
        settings = load_settings(_config_path(args), model_classes=_model_classes())
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
    detect.add_argument(
        "files", nargs="+", type=Path, metavar="FILE",
        help="audio files: WAV, FLAC, OGG… through libsndfile, anything else through ffmpeg; "
             "each is converted to 16 kHz mono",
    )
    detect.add_argument("--json", action="store_true", help="one JSON object per event")
    detect.add_argument("--model", type=Path, help="model file (default: the bundled model)")
    detect.add_argument("--config", type=Path, help="config file for per-class decision overrides")
    detect.set_defaults(func=cmd_detect)

    devices = sub.add_parser("devices", help="list audio input devices")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(func=cmd_devices)

    ev = sub.add_parser("eval", help="evaluate a model on a data set: event-level report, plots")
    add = ev.add_argument
    add("--model", type=Path, help="model file (default: the bundled model)")
    add("--data", type=Path, help="data folder with MANIFEST.csv (audio root for --tsv)")
    add("--split", default="dev", help="manifest split (default: dev; '' = all rows)")
    add("--tsv", type=Path, help="DCASE-style truth: filename, onset, offset, event_label")
    add("--scenes", type=int, default=0, metavar="N",
        help="evaluate on N seeded DCASE-2017-style mixtures built from the split")
    add("--seed", type=int, default=0, help="seed of the mixtures (default 0)")
    add("--scene-s", type=float, default=30.0, help="mixture length in s (default 30)")
    add("--ebr", default="-6,0,6", help="event-to-background ratios, dB (default -6,0,6)")
    add("--write-scenes", action="store_true", help="write the mixtures (FLAC + TSV) to OUT/scenes")
    add("--span", choices=("active", "whole"), default="active",
        help="span of a target clip without manifest times (default: its active span)")
    add("--open-licences", action="store_true", help="only openly licensed clips")
    add("--negatives", type=Path,
        help="a built negatives folder (shared/data/negatives recipe): its chunks of the split "
             "count as hours of audio without events, for false alarms per hour")
    add("--collar", type=float, default=0.5, help="onset collar in s (default 0.5)")
    add("--lead-in-s", type=float, default=0.0, metavar="S",
        help="play each file after S seconds of a quiet room (-65 dBFS), as a running microphone "
             "hears a sound begin (default 0: each file a stream of its own)")
    add("--config", type=Path, help="config file for per-class decision overrides")
    add("--worst", type=int, default=6, help="worst cases to plot (default 6)")
    add("--no-psds", action="store_true", help="skip PSDS and the score curves")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--out", type=Path, required=True, help="folder for report.json, report.md, plots")
    ev.set_defaults(func=cmd_eval)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    notify = sub.add_parser("notify-test", help="send a test notification to webhook targets")
    notify.add_argument("target", nargs="?", help="target name or index (default: every target)")
    notify.add_argument("--config", type=Path, help="YAML config file with webhooks")
    notify.set_defaults(func=cmd_notify_test)

    doctor = sub.add_parser(
        "doctor", help="check audio devices, model, broker, webhooks and store; say how to fix"
    )
    doctor.add_argument("--config", type=Path, help="YAML config file (default: embedded defaults)")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")
    doctor.add_argument("--json", action="store_true", help="the checks as a JSON list")
    doctor.set_defaults(func=cmd_doctor)

    addon = sub.add_parser(
        "addon", help="run as the Home Assistant add-on (options and MQTT broker from the Supervisor)"
    )
    addon.add_argument("--options", type=Path, default=Path("/data/options.json"),
                       help="the add-on options the Supervisor wrote (default /data/options.json)")
    addon.add_argument("--config-dir", type=Path, default=Path("/config"),
                       help="folder for the events database, clips and false alarms (default /config)")
    addon.add_argument("--supervisor-url", default=os.environ.get("SUPERVISOR_URL", "http://supervisor"),
                       help="the Supervisor's API (default $SUPERVISOR_URL or http://supervisor)")
    addon.add_argument("--port", type=int, default=8099, help="API and dashboard port, the ingress_port (8099)")
    addon.add_argument("--ingress-proxy", action="append", metavar="ADDRESS",
                       help="address of the ingress proxy, trusted without token (default 172.30.32.2; repeatable)")
    addon.add_argument("--check", action="store_true", help="validate the options and stop")
    addon.set_defaults(func=cmd_addon)

    # Arguments are declared here (not in models/) so that `harken --help` needs no torch.
    models_dir = Path(__file__).resolve().parent.parent / "models"
    train = sub.add_parser("train", help="train the detector (needs the [train] extra)")
    train.add_argument("--config", type=Path, default=models_dir / "configs" / "default.yaml",
                       help="training recipe (default: models/configs/default.yaml)")
    train.add_argument("--data", type=Path, required=True,
                       help="folder with MANIFEST.csv and 16 kHz FLAC clips")
    train.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    train.add_argument("--cache", type=Path, help="scene cache folder (default: <out>/cache)")
    train.add_argument("--steps", type=int, help="override opt.steps of the config")
    train.add_argument("--seed", type=int,
                       help="override the recipe's seed (initial weights and training scenes; dev stays)")
    train.add_argument("--ablation", action="store_true",
                       help="train every loss variant and write ablation.md")
    train.add_argument("--ablation-steps", type=int,
                       help="steps per ablation variant (default: opt.steps)")
    train.add_argument("--negatives", type=Path,
                       help="built negatives folder (NEGATIVES.csv): backgrounds and dev false alarms")
    train.add_argument("--max-minutes", type=float,
                       help="stop cleanly after this wall time; run again to resume")
    train.add_argument("--threads", type=positive_threads,
                       help="override opt.threads, the training process's torch threads (two runs side by "
                       "side on two cores: 1 each)")
    train.add_argument("--stop-at-step", type=int,
                       help="stop at this step (checked at evaluations) keeping the schedule; resumable")
    train.add_argument("--init", type=Path,
                       help="start from these weights (fine-tuning): a checkpoint (.pt) or an exported model (.onnx)")
    train.add_argument("--init-member", type=int,
                       help="with --init ENSEMBLE.onnx (members side by side): start from member N (0, 1, ...)")
    train.add_argument("--init-grow", action="store_true",
                       help="the recipe's network has more temporal blocks (dilations) than the --init "
                       "weights: the extra, last blocks start near the identity")
    train.add_argument("--hard-negatives", type=Path, nargs="+",
                       help="windows mined by `harken mine` (JSON); several mining runs are joined")
    train.add_argument("--teacher", type=Path,
                       help="YAMNet's yamnet.tflite, for recipes with loss.teacher (training only)")
    train.add_argument("--distil-from", type=Path,
                       help="a harken .onnx model (an ensemble) whose scores the network learns, "
                       "for recipes with loss.distil (training only)")
    train.set_defaults(func=cmd_train, command_line=None)

    mine = sub.add_parser("mine", help="score train negatives, collect where a model fires (hard negatives)")
    mine.add_argument("--checkpoint", type=Path, required=True,
                      help="best.pt written by `harken train`, or a model .onnx (its contract gives the decisions)")
    mine.add_argument("--negatives", type=Path, required=True, help="built negatives folder")
    mine.add_argument("--out", type=Path, required=True, help="JSON of mined windows")
    mine.add_argument("--cache", type=Path, help="negatives cache folder")
    mine.add_argument("--data", type=Path,
                      help="data folder (MANIFEST.csv): also score its train household confusers")
    mine.add_argument("--threshold", type=float,
                      help="mining on-threshold for every class (default: 0.8 x the tuned thresholds)")
    mine.add_argument("--classes", nargs="+", metavar="CLASS",
                      help="mine windows and confuser reports of these classes only "
                           "(for a round training one class's member; the figures count every class)")
    mine.set_defaults(func=cmd_mine)

    export = sub.add_parser("export", help="write a trained checkpoint as ONNX with its contract")
    export.add_argument("--checkpoint", type=Path, required=True,
                        help="best.pt written by `harken train`, or a model .onnx whose decisions "
                             "are re-tuned (needs --config, --data, --cache)")
    export.add_argument("--version", dest="model_version",
                        help="model version in the contract (default: the recipe's version)")
    export.add_argument("--config", type=Path,
                        help="with a model .onnx: the recipe it was trained with (dev set, tuning rules); "
                             "with a best.pt and --data: the recipe whose tuning rules re-tune its decisions "
                             "(the network is the checkpoint's)")
    export.add_argument("--weights", type=Path, nargs="+",
                        help="network states to export instead of the checkpoint's (a run's evals/step-N.pt); "
                             "several are averaged. Needs --data: the decisions are re-tuned for them")
    export.add_argument("--ensemble", type=Path, nargs="+", metavar="MODEL.onnx",
                        help="with a model .onnx: more exported models (other seeds or recipes, same "
                             "look-ahead; the longest memory sets the receptive field) joined with it as "
                             "one network, the mean of their logits; the decisions are re-tuned for the ensemble")
    export.add_argument("--member-weights", nargs="+", metavar="CLASS=W,W", default=None,
                        help="with --ensemble: one class's logit as a weighted mean of the models' (one "
                             "weight per model, --checkpoint first, summing to 1), e.g. smoke_alarm=1,0 takes "
                             "the alarm from the first model alone; other classes keep the plain mean")
    export.add_argument("--member", type=int, metavar="N",
                        help="with an ensemble .onnx: write its member N (0, 1, ...) as a model of its own "
                             "(needs --config, the member's recipe; --data re-tunes it)")
    export.add_argument("--other-members", type=Path, nargs="+", metavar="MODEL.onnx",
                        help="with --member of a joined ensemble (the default since 2.3.0): the other members' "
                             "own models in member order; a joined network keeps only the sum of its members' "
                             "head biases, so member N's is what the others' leave")
    export.add_argument("--out", type=Path, default=models_dir / "harken.onnx",
                        help="ONNX file to write (default: the bundled models/harken.onnx)")
    export.add_argument("--data", type=Path,
                        help="re-tune the decision parameters on this data set's dev split")
    export.add_argument("--cache", type=Path,
                        help="scene cache of the training run (default: next to the checkpoint)")
    export.add_argument("--negatives", type=Path,
                        help="built negatives folder: live recipes tune on dev negatives too, and "
                             "procedural alarms in dev negatives get a line of their own")
    export.add_argument("--cross-validate", action="store_true",
                        help="also score the decision tuning itself: tuned on one half of dev (by "
                             "source recording), scored on the other, both ways (model card, rule 2)")
    export.add_argument("--scene-draws", type=int, nargs="*", metavar="SEED",
                        help="also rule 5: the tuned decisions scored on fresh draws of the dev scenes "
                             "(these scene seeds; none given: the rule's 11-15), the mean of rule 4's figure")
    export.add_argument("--tune-draws", type=int, nargs="+", metavar="SEED",
                        help="tune the decisions on these draws of the dev scenes too, beside the selection's")
    export.add_argument("--tune-draws-shared", choices=("once", "each"), default="once",
                        help="with --tune-draws: count the shared negatives and quiet rooms once in the tuning "
                             "(the default) or once with each draw, as rule 5 scores a draw")
    export.add_argument("--tune-onset-draws", type=int, nargs="+", metavar="SEED",
                        help="then tune the onset-only parameters (look-back, rise and touch dating: they move "
                             "reported onsets and nothing else) on these draws too, the rest kept")
    export.set_defaults(func=cmd_export)

    reference = sub.add_parser(
        "reference", help="score YAMNet zero-shot on the dev scenes, tuned as harken's networks (evaluation only)")
    reference.add_argument("--yamnet", type=Path, required=True, help="YAMNet's yamnet.tflite")
    reference.add_argument("--config", type=Path, required=True,
                           help="a live recipe: its dev scenes and tuning rules "
                                "(e.g. models/configs/live-long-small.yaml)")
    reference.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv): its dev split")
    reference.add_argument("--negatives", type=Path, help="built negatives folder: dev negatives and procedural alarms")
    reference.add_argument("--cache", type=Path, help="cache folder for the scored dev scenes")
    reference.add_argument("--out", type=Path, required=True, help="figures are written to OUT.dev.json")
    reference.add_argument("--hop-frames", type=int, default=5,
                           help="one YAMNet window every N log-mel frames of 20 ms (default 5: 100 ms)")
    reference.add_argument("--cross-validate", action="store_true",
                           help="also the tuning's cross-validated score (as `harken export --cross-validate`)")
    reference.set_defaults(func=cmd_reference)
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
