"""Prometheus text exposition (format 0.0.4) of the runner, dispatcher and live-hub counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.api.live import LiveHub
    from service.daemon import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Exposition:
    """Collects metric families and renders them; one HELP/TYPE block per family."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self._lines.append(
                f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}"
            )

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_metrics(runtime: Runtime, hub: LiveHub | None) -> str:
    """All harken metrics as Prometheus text."""
    out = Exposition()
    runners = runtime.runners
    out.family(
        "harken_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        [({}, round(runtime.uptime_s, 3))],
    )
    out.family(
        "harken_audio_seconds_total",
        "counter",
        "Audio seconds processed per source.",
        [({"source": r.source.name}, round(r.audio_s, 3)) for r in runners],
    )
    out.family(
        "harken_inference_seconds_total",
        "counter",
        "Wall-clock seconds spent on features and the model per source.",
        [({"source": r.source.name}, round(r.inference_s, 6)) for r in runners],
    )
    out.family(
        "harken_source_overruns_total",
        "counter",
        "Audio blocks dropped because the pipeline fell behind.",
        [({"source": r.source.name}, r.status.overruns) for r in runners],
    )
    out.family(
        "harken_source_restarts_total",
        "counter",
        "Restarts of a failing source.",
        [({"source": r.source.name}, r.status.restarts) for r in runners],
    )
    out.family(
        "harken_source_running",
        "gauge",
        "1 while the source delivers audio.",
        [({"source": r.source.name}, 1 if r.status.state == "running" else 0) for r in runners],
    )
    out.family(
        "harken_score",
        "gauge",
        "Latest score per source and class.",
        [
            ({"source": r.source.name, "class": c}, v)
            for r in runners
            for c, v in r.latest_scores.items()
        ],
    )
    out.family(
        "harken_level_dbfs",
        "gauge",
        "Latest sound level per source, dBFS.",
        [({"source": r.source.name}, r.latest_level) for r in runners],
    )
    classes = runtime.detector.class_names
    counts = hub.events_total if hub is not None else {}
    sources = [r.source.name for r in runners]
    out.family(
        "harken_events_total",
        "counter",
        "Events started since the daemon started, per source and class.",
        [({"source": s, "class": c}, counts.get((s, c), 0)) for s in sources for c in classes],
    )
    out.family(
        "harken_class_enabled",
        "gauge",
        "1 when events of the class are published (enabled, not snoozed).",
        [({"class": c.name}, 1 if c.allows_events() else 0) for c in runtime.controls.all()],
    )
    dispatcher = runtime.dispatcher
    sinks = dispatcher.status()
    out.family(
        "harken_sink_delivered_total",
        "counter",
        "Event messages handed to each sink.",
        [({"sink": n}, s["delivered"]) for n, s in sinks.items()],
    )
    out.family(
        "harken_sink_failures_total",
        "counter",
        "Failures of each sink (start or delivery).",
        [({"sink": n}, s["failures"]) for n, s in sinks.items()],
    )
    out.family(
        "harken_sink_dropped_total",
        "counter",
        "Event messages dropped because a sink's queue was full.",
        [({"sink": n}, s["dropped"]) for n, s in sinks.items()],
    )
    out.family(
        "harken_sink_queue_depth",
        "gauge",
        "Event messages waiting in each sink's queue.",
        [({"sink": n}, s["queued"]) for n, s in sinks.items()],
    )
    out.family(
        "harken_store_failures_total",
        "counter",
        "Events the store failed to write.",
        [({}, dispatcher.store_failures)],
    )
    if hub is not None:
        out.family(
            "harken_live_clients", "gauge", "Connected WebSocket clients.", [({}, len(hub.clients))]
        )
        out.family(
            "harken_live_clients_dropped_total",
            "counter",
            "WebSocket clients dropped for falling behind.",
            [({}, hub.clients_dropped)],
        )
    return out.render()
