"""The daemon: builds the runtime from settings, runs every source, stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from service.audio.sources import AudioSource
from service.config import Settings, unknown_class_problems
from service.contract import ContractError
from service.controls import ClassControl, ClassControls
from service.decision import DecisionParams
from service.detector import Detector
from service.events import EventMessage, utc_now
from service.inference import InferenceBatcher
from service.pipeline import SourceRunner
from service.sinks.dispatcher import Dispatcher
from service.sinks.store import EventStore, StoreError, default_store_path

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """harken cannot start; the message says what to fix."""


def class_params(settings: Settings, detector: Detector) -> dict[str, DecisionParams]:
    """The model's decision defaults with the config's per-class overrides applied."""
    unknown = sorted(set(settings.classes) - set(detector.class_names))
    if unknown:
        # load_settings(model_classes=...) reports these with every other config problem;
        # this is the last guard (a --model that differs from the config's, a Settings built in code).
        raise StartupError("; ".join(unknown_class_problems({"classes": settings.classes}, detector.class_names)))
    params: dict[str, DecisionParams] = {}
    for name in detector.class_names:
        base = detector.contract.decision[name]
        overrides = settings.classes[name].decision.model_dump(exclude_none=True) if name in settings.classes else {}
        try:
            params[name] = DecisionParams.from_dict({**base.to_dict(), **overrides})
        except ValueError as exc:
            raise StartupError(f"classes.{name}.decision: {exc}") from None
    return params


@dataclass
class Runtime:
    """Everything a running harken consists of; the API and sinks read it."""

    settings: Settings
    detector: Detector
    store: EventStore
    controls: ClassControls
    dispatcher: Dispatcher
    executor: ThreadPoolExecutor
    runners: list[SourceRunner] = field(default_factory=list)
    batcher: InferenceBatcher | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=utc_now)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def status(self) -> dict[str, Any]:
        c = self.detector.contract
        return {
            "uptime_s": round(self.uptime_s, 1),
            "model": {"name": c.model_name, "version": c.model_version, "classes": list(c.class_names),
                      "path": str(self.detector.path)},
            "sources": [
                {
                    "name": r.source.name, "url": r.source.url, "state": r.status.state, "error": r.status.error,
                    "overruns": r.status.overruns, "restarts": r.status.restarts,
                    "audio_s": round(r.audio_s, 1), "scores": r.latest_scores, "level_dbfs": round(r.latest_level, 1),
                }
                for r in self.runners
            ],
            "sinks": {"store": self.store_status(), **self.dispatcher.status()},
            "classes": [control.to_dict() for control in self.controls.all()],
        }


    def store_status(self) -> dict[str, Any]:
        """The store's health: degraded while it cannot be opened or its last write failed."""
        store = self.store
        failing = store.degraded_reason is not None or (
            self.dispatcher.store_failures > 0 and store.last_write_failed
        )
        return {
            "path": str(store.path), "write_errors": store.write_errors, "state": "degraded" if failing else "ok",
            "error": store.degraded_reason or (store.last_error if failing else None),
        }


def load_controls(settings: Settings, detector: Detector, store: EventStore) -> ClassControls:
    """Class controls from config, then whatever the user changed at run time (persisted)."""
    initial = []
    for name in detector.class_names:
        cfg = settings.classes.get(name)
        control = ClassControl(name, enabled=cfg.enabled if cfg else True, sensitivity=cfg.sensitivity if cfg else 0.5)
        saved = store.get_setting(f"class:{name}")
        if isinstance(saved, dict):
            until = saved.get("snoozed_until")
            control = ClassControl(
                name,
                enabled=bool(saved.get("enabled", control.enabled)),
                sensitivity=float(saved.get("sensitivity", control.sensitivity)),
                snoozed_until=datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None,
            )
        initial.append(control)
    return ClassControls(initial, persist=store.put_setting)


def build_runtime(settings: Settings) -> Runtime:
    try:
        detector = Detector.load(settings.model)
    except ContractError as exc:
        raise StartupError(f"model: {exc}") from None
    params = class_params(settings, detector)
    store_path = settings.store.path or default_store_path()
    try:
        store = EventStore(store_path)
    except StoreError as exc:
        # A notifier that refuses to start over a full disk protects no one (and a service
        # manager would restart it in a loop): run on a store in memory, loudly degraded.
        reason = f"{exc}; events are kept in memory only until it is fixed and harken restarted"
        log.error("%s", reason)
        store = EventStore.in_memory(reason, Path(store_path).parent / "clips")
    # Not saved here: run_daemon stores each closed event with its sinks' notifications in one
    # transaction, so a crash during start-up leaves it open for the next start to close.
    dangling = store.close_dangling(save=False)
    for event in dangling:
        log.warning("closing event %s (%s) left open by an earlier run", event.id, event.class_name)
    controls = load_controls(settings, detector, store)
    dispatcher = Dispatcher(store)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    runtime = Runtime(settings, detector, store, controls, dispatcher, executor)
    # Sinks saw these events start but never end: they get the end once they are running.
    runtime.extras["closed_on_start"] = dangling
    # Every source's blocks go through one shared inference stage on the executor's worker.
    runtime.batcher = InferenceBatcher(executor)
    for source_cfg in settings.sources:
        source = AudioSource(source_cfg.name, source_cfg.url, realtime=source_cfg.realtime, loop=source_cfg.loop)
        runtime.runners.append(SourceRunner(
            source, detector, dispatcher, executor, params, controls,
            arbitration_margin=settings.decision.arbitration_margin,
            clip_pre_s=settings.store.clip_pre_s, clip_post_s=settings.store.clip_post_s,
            clips_dir=store.clips_dir, on_clip=store.set_clip, batcher=runtime.batcher,
        ))
    return runtime


def add_sinks(runtime: Runtime) -> None:
    """Attach the configured output sinks to the dispatcher (MQTT, webhooks, live API)."""
    if runtime.settings.webhooks:
        from service.sinks.webhooks import WebhookConfigError, build_webhook_sinks

        try:
            sinks = build_webhook_sinks(
                runtime.settings, runtime.store, runtime.detector.class_names
            )
        except WebhookConfigError as exc:
            raise StartupError(f"config {exc}") from None
        for sink in sinks:
            runtime.dispatcher.add_sink(sink)
    if runtime.settings.mqtt.enabled:
        from service.sinks.mqtt import MqttSink

        runtime.dispatcher.add_sink(MqttSink.from_runtime(runtime))
    if runtime.settings.api.enabled:
        from service.api import attach, listen, serve

        attach(runtime)  # the live WebSocket hub sink, feedback keeper and clip notifications
        sock = listen(runtime.settings.api)  # refuses exposure without a token; binds the port now
        runtime.extras.setdefault("servers", []).append(("api", serve(runtime, sock)))


async def _prune_forever(runtime: Runtime) -> None:
    while True:
        cutoff = utc_now() - timedelta(days=runtime.settings.store.retention_days)
        try:
            for clip in runtime.store.prune(cutoff):
                with contextlib.suppress(OSError):
                    (runtime.store.clips_dir / Path(clip).name).unlink()
        except Exception as exc:
            log.error("pruning old events failed: %s", exc)
        await asyncio.sleep(3600)


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully."""
    runtime = build_runtime(settings)
    add_sinks(runtime)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await runtime.dispatcher.start()
    for event in runtime.extras.pop("closed_on_start", []):
        await runtime.dispatcher.publish(EventMessage("end", event))
    c = runtime.detector.contract
    log.info("harken started: model %s %s, classes %s, store %s", c.model_name, c.model_version,
             ", ".join(c.class_names), runtime.store.path)
    tasks = [asyncio.create_task(r.run(), name=f"source-{r.source.name}") for r in runtime.runners]
    servers = [asyncio.create_task(coro, name=name) for name, coro in runtime.extras.pop("servers", [])]
    pruner = asyncio.create_task(_prune_forever(runtime))
    waiter = asyncio.create_task(stop.wait())
    sources_done = asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait({waiter, sources_done}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
    if not stop.is_set() and not runtime.extras.get("serve_after_sources_end", bool(servers)):
        log.info("all sources ended")
    elif not stop.is_set():
        await waiter  # the API keeps serving the history until asked to stop
    log.info("shutting down")
    for runner in runtime.runners:
        runner.stop()
    # Runners notice the stop at their next block and close open events themselves;
    # a source blocked on input (stdin, a dead stream) is cancelled after a grace period.
    _done, pending = await asyncio.wait(tasks, timeout=3.0) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for runner in runtime.runners:
        runner.flush_clips()
    pruner.cancel()
    waiter.cancel()
    await runtime.dispatcher.stop()
    for server in servers:
        server.cancel()
    await asyncio.gather(*servers, pruner, return_exceptions=True)
    runtime.executor.shutdown(wait=True)
    runtime.store.close()
    log.info("harken stopped")
    return 0
