"""MQTT sink: Home Assistant discovery, retained states, durable events and controls over MQTT.

Threads: paho-mqtt runs in this sink's own network thread (connect, reconnect with
exponential backoff, keepalive). Its callbacks never touch harken state; they hand over to
the asyncio loop with `call_soon_threadsafe`, where everything else happens.

Nothing lost: every event message is written to the store's durable outbox before any
delivery is tried. One task delivers the outbox in order with QoS 1 and marks an item
delivered only when the broker's PUBACK arrives (paho's `on_publish`). A message in flight
when the connection drops stays in paho's session and is re-sent after the reconnect; a
message still pending when harken stops is sent on the next start (at least once).
Retained states are not queued: they are re-published whole on every (re)connect and when
Home Assistant announces `online`.

Several sources: besides the per-class ("any source") entities, each source gets a binary
sensor per class and a level sensor when there are two or more (`ha.entity_sources`). On
connect the sink also reads its node's retained discovery configs and clears those it no
longer publishes (a source removed from the config), with the states they pointed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from service.config import MqttConfig
from service.controls import ClassControl, ClassControls
from service.events import EventMessage, iso, utc_now
from service.sinks import ha_discovery as ha
from service.sinks.dispatcher import LiveUpdate
from service.sinks.store import EventStore, StoreError

if TYPE_CHECKING:
    from service.daemon import Runtime

log = logging.getLogger(__name__)

SINK_NAME = "mqtt"
#: Outbox items published before waiting for their PUBACKs (paho's default in-flight limit).
OUTBOX_WINDOW = 20
#: On shutdown, how long queued events may take to reach the broker before going offline, and
#: how long the final states get for their PUBACKs; the dispatcher allows a sink 5 s to stop.
FLUSH_TIMEOUT_S = 1.5
FINAL_STATES_TIMEOUT_S = 1.0
#: How long `start()` waits for the first connection, so that a normal start publishes live.
START_WAIT_S = 3.0
CONNECT_TIMEOUT_S = 3.0
#: CONNACK reasons that mean the credentials are wrong: retrying fast cannot help.
AUTH_REFUSALS = ("Bad user name or password", "Not authorized")


def _no_op(*_args: Any) -> None:
    pass


def _clip(text: str, limit: int = 80) -> str:
    """Anyone on the broker chooses topics and payloads: a log line quotes at most `limit` chars."""
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit})"


def harken_version() -> str:
    try:
        return version("harken")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+source"


class MqttSink:
    """Publishes harken to an MQTT broker as a Home Assistant device (a dispatcher sink)."""

    name = SINK_NAME

    def __init__(
        self,
        config: MqttConfig,
        store: EventStore,
        controls: ClassControls,
        class_names: Sequence[str],
        device: ha.DeviceInfo,
        clip_base: str | None = None,
        source_names: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.store = store
        self.controls = controls
        self.class_names = list(class_names)
        self.device = device
        self.clip_base = clip_base
        self.topics = ha.Topics(config.topic_prefix, config.node_id, config.discovery_prefix)
        self.broker = f"{config.host}:{config.port}"
        self.sources = ha.entity_sources(source_names)
        # Static for the run: what to publish on each connect, and what is ours to keep.
        self._configs = ha.discovery_configs(
            self.topics,
            self.device,
            self.class_names,
            config.snooze_minutes,
            config.level_interval_s,
            self.sources,
        )
        self._in_use = ha.retained_topics(self._configs)

        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()  # no more reconnects
        self._abort = threading.Event()  # leave the network loop even if still connected
        # Written by the network thread, read by both: a plain bool is atomic in CPython.
        self._link_up = False
        self._auth_refused = False
        self._round_connected = False

        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._first_outcome = asyncio.Event()
        # Set at the broker's SUBACK: from then on a command sent to harken reaches it.
        self._commands_live = asyncio.Event()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._deliverer: asyncio.Task[None] | None = None
        self._unmarked: set[int] = set()  # acknowledged by the broker, not yet marked in the store
        self._stopping = False

        self.state = "stopped"
        self.error: str | None = None
        self._logged_error: str | None = None
        self.attempts = 0
        self.connects = 0
        self.events_published = 0
        self.commands_applied = 0
        self.commands_ignored = 0
        self.stale_configs_cleared = 0

        started = iso(utc_now())
        self._open: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in self.class_names}
        self._last_event: dict[str, dict[str, Any] | None] = dict.fromkeys(self.class_names)
        self._since: dict[str, str | None] = dict.fromkeys(self.class_names, started)
        self._level_peak_dbfs: float | None = None
        self._level_published_at = 0.0
        pairs = [(s, c) for s in self.sources for c in self.class_names]
        self._source_last: dict[tuple[str, str], dict[str, Any] | None] = dict.fromkeys(pairs)
        self._source_since: dict[tuple[str, str], str | None] = dict.fromkeys(pairs, started)
        self._source_peak_dbfs: dict[str, float] = {}

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> MqttSink:
        settings = runtime.settings
        contract = runtime.detector.contract
        clip_base = ha.clip_base_url(
            settings.api.enabled,
            settings.api.host,
            settings.api.port,
            settings.mqtt.public_url,
            socket.gethostname(),
        )
        device = ha.DeviceInfo(
            node_id=settings.mqtt.node_id,
            sw_version=harken_version(),
            model_version=f"{contract.model_name} {contract.model_version}",
            configuration_url=clip_base if settings.api.enabled else None,
        )
        return cls(
            settings.mqtt,
            runtime.store,
            runtime.controls,
            contract.class_names,
            device,
            clip_base,
            source_names=[source.name for source in settings.sources],
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.controls.subscribe(self._on_control)
        try:
            self._client = self._make_client()
        except (OSError, ValueError) as exc:  # unreadable TLS files, bad key, …
            message = (
                str(exc) if str(exc).startswith("mqtt.") else f"mqtt.tls: cannot set up TLS: {exc}"
            )
            self._set_error(message, logging.ERROR)
            self._first_outcome.set()
            return
        self.state = "connecting"
        pending = self._pending()
        if pending:
            log.info("%d MQTT event message(s) from an earlier run wait in the outbox", pending)
        self._deliverer = asyncio.create_task(self._deliver_forever(), name="mqtt-outbox")
        self._thread = threading.Thread(
            target=self._network_loop, name=f"mqtt-{self.config.node_id}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_WAIT_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_outcome.wait(), START_WAIT_S)
        if self._link_up:
            # The CONNACK came; the subscription follows it. Returning before its SUBACK would
            # let a caller's first command race the subscribe and miss harken.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._commands_live.wait(), max(0.0, deadline - time.monotonic())
                )

    async def stop(self) -> None:
        """Flush the outbox briefly, turn states OFF, publish `offline`, disconnect."""
        if self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._link_up and self._pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._deliverer is not None:
            self._deliverer.cancel()
            await asyncio.gather(self._deliverer, return_exceptions=True)
        if self._link_up:
            since = iso(utc_now())
            waits = []
            for name in self.class_names:
                for source in self.sources:
                    if self._source_open(source, name):
                        self._source_since[(source, name)] = since
                if self._open[name]:
                    self._open[name].clear()
                    self._since[name] = since
                for topic, payload in self._class_state(name) + self._source_states(name):
                    waits += self._publish_acked(topic, payload, retain=True)
            waits += self._publish_acked(self.topics.availability, ha.OFFLINE, retain=True)
            if waits:
                await asyncio.wait(waits, timeout=FINAL_STATES_TIMEOUT_S)
        self._halt.set()
        if self._client is not None:
            self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 1.0)
            if self._thread.is_alive():
                self._abort.set()
                await asyncio.to_thread(self._thread.join, 0.5)
        self._connected.clear()
        self.state = "stopped"
        pending = self._pending()
        log.info(
            "MQTT sink stopped (%d event messages published%s)",
            self.events_published,
            f", {pending} wait in the outbox for the next start" if pending else "",
        )

    def status(self) -> dict[str, Any]:
        try:
            outbox: dict[str, int] | None = self.store.outbox_counts(SINK_NAME)
        except StoreError:
            outbox = None
        return {
            "state": self.state,
            "connected": self._link_up,
            "broker": self.broker,
            "node_id": self.config.node_id,
            "error": self.error,
            "attempts": self.attempts,
            "connects": self.connects,
            "events_published": self.events_published,
            "commands_applied": self.commands_applied,
            "commands_ignored": self.commands_ignored,
            "sources": self.sources,
            "stale_configs_cleared": self.stale_configs_cleared,
            "outbox": outbox,
        }

    # ------------------------------------------------------------------ sink interface
    def outbox_entries(self, message: EventMessage) -> list[dict[str, Any]]:
        """The events-topic payload; the dispatcher stores it with the event in one transaction."""
        return [message.to_dict()]

    def deliver_without_outbox(self, payloads: list[dict[str, Any]]) -> None:
        """The outbox is not writable (disk full?): hand the messages to paho's memory queue."""
        log.error("MQTT outbox not writable; publishing %d message(s) without it", len(payloads))
        if self._client is not None:
            for payload in payloads:
                self._client.publish(self.topics.events, ha.dumps(payload), qos=self.config.qos)

    async def handle(self, message: EventMessage) -> None:
        self._wake.set()  # the dispatcher has put the message into the outbox
        name = message.event.class_name
        event = message.event.to_dict()
        open_events = self._open.setdefault(name, {})
        if message.phase == "start":
            open_events[message.event.id] = event
            self._since[name] = event["started_at"]
        else:
            open_events.pop(message.event.id, None)
            if not open_events:
                self._since[name] = event["ended_at"]
        self._last_event[name] = event
        key = (message.event.source, name)
        if key in self._source_since:
            if message.phase == "start":
                self._source_since[key] = event["started_at"]
            elif not self._source_open(*key):
                self._source_since[key] = event["ended_at"]
            self._source_last[key] = event
        if name in self.class_names:
            self._publish_class_state(name)
            if key in self._source_since:
                for topic, payload in self._source_state(*key):
                    self._publish(topic, payload, True)

    def on_live(self, update: LiveUpdate) -> None:
        """Keep the loudest level of the interval; publish it every `level_interval_s`."""
        peak = self._level_peak_dbfs
        self._level_peak_dbfs = update.level_dbfs if peak is None else max(peak, update.level_dbfs)
        if update.source in self.sources:
            source_peak = self._source_peak_dbfs.get(update.source)
            self._source_peak_dbfs[update.source] = (
                update.level_dbfs if source_peak is None else max(source_peak, update.level_dbfs)
            )
        now = time.monotonic()
        if now - self._level_published_at >= self.config.level_interval_s and self._link_up:
            self._publish(self.topics.level, f"{self._level_peak_dbfs:.1f}", retain=False, qos=0)
            # A source without blocks in the interval publishes nothing: its sensor expires.
            for source, level_dbfs in self._source_peak_dbfs.items():
                self._publish(self.topics.source_level(source), f"{level_dbfs:.1f}", retain=False, qos=0)
            self._level_published_at = now
            self._level_peak_dbfs = None
            self._source_peak_dbfs = {}

    # ------------------------------------------------------------------ publishing (loop thread)
    def _publish(
        self, topic: str, payload: str, retain: bool, qos: int = 1
    ) -> mqtt.MQTTMessageInfo | None:
        client = self._client
        if client is None or not self._link_up:
            return None  # re-published whole on the next connect
        try:
            return client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, RuntimeError) as exc:
            log.error("MQTT publish to %s failed: %s", topic, exc)
            return None

    def _publish_acked(self, topic: str, payload: str, retain: bool) -> list[asyncio.Future[None]]:
        """Publish with QoS 1 and return a future that completes on the PUBACK."""
        info = self._publish(topic, payload, retain)
        if info is None or self._loop is None:
            return []
        future = self._loop.create_future()
        self._acks[info.mid] = future
        return [future]

    def _class_state(self, name: str) -> list[tuple[str, str]]:
        """(topic, payload) of a class's attributes and state, attributes first so that an
        automation triggered by the state reads fresh attributes."""
        on = bool(self._open.get(name))
        event = next(reversed(self._open[name].values())) if on else self._last_event.get(name)
        control = self.controls.get(name).to_dict() if name in self.controls.names else None
        attributes = ha.state_attributes(
            name, on, self._since.get(name), event, control, self.clip_base
        )
        return [
            (self.topics.attributes(name), ha.dumps(attributes)),
            (self.topics.state(name), ha.ON if on else ha.OFF),
        ]

    def _source_open(self, source: str, name: str) -> list[dict[str, Any]]:
        """The open events of one class in one source, oldest first."""
        return [e for e in self._open.get(name, {}).values() if e.get("source") == source]

    def _source_state(self, source: str, name: str) -> list[tuple[str, str]]:
        """Like `_class_state`, for the class's binary sensor of one source."""
        open_events = self._source_open(source, name)
        event = open_events[-1] if open_events else self._source_last.get((source, name))
        control = self.controls.get(name).to_dict() if name in self.controls.names else None
        attributes = ha.state_attributes(
            name,
            bool(open_events),
            self._source_since.get((source, name)),
            event,
            control,
            self.clip_base,
            source=source,
        )
        return [
            (self.topics.source_attributes(source, name), ha.dumps(attributes)),
            (self.topics.source_state(source, name), ha.ON if open_events else ha.OFF),
        ]

    def _source_states(self, name: str) -> list[tuple[str, str]]:
        return [pair for source in self.sources for pair in self._source_state(source, name)]

    def _publish_class_state(self, name: str) -> None:
        for topic, payload in self._class_state(name):
            self._publish(topic, payload, True)

    def _publish_controls(self, control: ClassControl) -> None:
        self._publish(
            self.topics.control_state(control.name, "enabled"),
            ha.ON if control.enabled else ha.OFF,
            True,
        )
        self._publish(
            self.topics.control_state(control.name, "sensitivity"), f"{control.sensitivity:g}", True
        )

    def _publish_all(self) -> None:
        """Discovery, availability and every state: on each connect and when HA comes online."""
        for topic, config in self._configs.items():
            self._publish(topic, ha.dumps(config), True)
        self._publish(self.topics.availability, ha.ONLINE, True)
        for name in self.class_names:
            if name in self.controls.names:
                self._publish_controls(self.controls.get(name))
            self._publish_class_state(name)
            for topic, payload in self._source_states(name):
                self._publish(topic, payload, True)

    def _on_control(self, control: ClassControl) -> None:
        if control.name in self.class_names:
            self._publish_controls(control)
            self._publish_class_state(control.name)
            for topic, payload in self._source_states(control.name):
                self._publish(topic, payload, True)

    def _on_discovery_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A retained config of this node that this run does not publish is left over (a source
        removed from the config, a class the model dropped): clear it and its states, so that
        Home Assistant removes the entity. Our own configs echo back and are ignored."""
        if not retained or not payload or topic in self._configs:
            return
        for state_topic in ha.stale_state_topics(payload, self.topics, self._in_use):
            self._publish(state_topic, "", True)
        self._publish(topic, "", True)
        self.stale_configs_cleared += 1
        log.info("MQTT: cleared the left-over discovery config %s", _clip(topic, 160))

    # ------------------------------------------------------------------ the outbox
    def _pending(self) -> int:
        try:
            return self.store.outbox_counts(SINK_NAME)["pending"]
        except StoreError:
            return 0

    async def _deliver_forever(self) -> None:
        while True:
            await self._connected.wait()
            self._wake.clear()  # before reading, so a put during the read is not missed
            try:
                self._mark_unmarked()
                due = [
                    item
                    for item in self.store.outbox_due(SINK_NAME, limit=OUTBOX_WINDOW + len(self._unmarked))
                    if item.seq not in self._unmarked
                ][:OUTBOX_WINDOW]
                if due:
                    await self._deliver(due)
                    continue
                next_at = self.store.outbox_next_attempt(SINK_NAME)
            except StoreError as exc:
                # Disk full or store locked: what reached the broker is remembered in memory
                # (no re-sends); the rest waits in the outbox until the store recovers.
                log.error("MQTT outbox unusable: %s; trying again in %g s", exc, self.config.reconnect_max_s)
                await asyncio.sleep(self.config.reconnect_max_s)
                continue
            if self._unmarked:
                next_at = time.time() + self.config.reconnect_min_s
            timeout_s = 60.0 if next_at is None else min(60.0, max(0.05, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)

    def _mark_unmarked(self) -> None:
        """Record deliveries that could not be marked while the store refused writes."""
        for seq in sorted(self._unmarked):
            self.store.outbox_delivered(seq)  # raises StoreError while the store still refuses
            self._unmarked.discard(seq)

    async def _deliver(self, due: list[Any]) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        in_flight: list[tuple[int, asyncio.Future[None]]] = []
        for item in due:
            if not self._link_up:
                break
            try:
                info = client.publish(
                    self.topics.events, ha.dumps(item.payload), qos=self.config.qos
                )
            except (
                ValueError,
                TypeError,
            ) as exc:  # e.g. larger than MQTT allows: retrying cannot help
                log.error(
                    "MQTT event message %s cannot be published, left in the outbox as failed: %s",
                    item.seq,
                    exc,
                )
                self.store.outbox_failed(item.seq, str(exc))
                continue
            if self.config.qos == 0:
                # No acknowledgement exists at QoS 0: written to the socket is all we learn.
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._delivered(item.seq)
                    continue
                self.store.outbox_retry(
                    item.seq, time.time() + self.config.reconnect_min_s, mqtt.error_string(info.rc)
                )
                break
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.store.outbox_retry(
                    item.seq, time.time() + self.config.reconnect_min_s, mqtt.error_string(info.rc)
                )
                break
            # Registered before the next await, so the PUBACK callback cannot come first.
            future = self._loop.create_future()
            self._acks[info.mid] = future
            in_flight.append((item.seq, future))
        for seq, future in in_flight:
            # Across a reconnect paho re-sends the message itself and the PUBACK still lands here.
            await future
            self._delivered(seq)

    def _delivered(self, seq: int) -> None:
        self.events_published += 1
        try:
            self.store.outbox_delivered(seq)
        except StoreError as exc:
            if not self._unmarked:
                log.error("MQTT delivery of outbox item %d not recorded (%s); kept in memory", seq, exc)
            self._unmarked.add(seq)

    # ------------------------------------------------------------------ loop-side reactions
    def _acked(self, mid: int) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _set_error(self, error: str, level: int) -> None:
        self.state = "degraded"
        self.error = error
        self._first_outcome.set()
        if error != self._logged_error:  # a broker that stays away is logged once, not per retry
            self._logged_error = error
            log.log(level, "%s", error)
        else:
            log.debug("%s", error)

    def _on_connected(self) -> None:
        self.connects += 1
        if self.error:
            log.info("MQTT connected to %s again (node %s)", self.broker, self.config.node_id)
        else:
            log.info("MQTT connected to %s (node %s)", self.broker, self.config.node_id)
        self.state = "ok"
        self.error = None
        self._logged_error = None
        self._publish_all()
        self._connected.set()
        self._wake.set()
        self._first_outcome.set()

    def _on_link_lost(self, reason: str) -> None:
        self._connected.clear()
        if not self._stopping:
            self._set_error(
                f"MQTT connection to {self.broker} lost ({reason}); reconnecting with backoff",
                logging.WARNING,
            )

    def _on_refused(self, reason: str, auth: bool) -> None:
        if auth:
            user = f"user {self.config.username!r}" if self.config.username else "no user name"
            self._set_error(
                f"MQTT broker {self.broker} refused the credentials ({reason}; {user}): "
                f"check mqtt.username and mqtt.password; "
                f"retrying every {self.config.reconnect_max_s:g} s",
                logging.ERROR,
            )
        else:
            self._set_error(
                f"MQTT broker {self.broker} refused the connection: {reason}", logging.ERROR
            )

    def _on_unreachable(self, reason: str) -> None:
        self._set_error(
            f"cannot reach MQTT broker {self.broker}: {reason}; retrying with backoff",
            logging.WARNING,
        )

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.topics.is_discovery(topic):
            self._on_discovery_config(topic, payload, retained)
            return
        if topic == self.topics.ha_status:
            if payload.strip().lower() == ha.ONLINE.encode():
                log.info("Home Assistant is online: re-sending discovery and states")
                self._publish_all()
            return
        try:
            if retained:
                raise ha.CommandError(
                    "retained commands are not applied (they would repeat on every reconnect)"
                )
            name, kind = self.topics.parse_command(topic)
            if name not in self.controls.names:
                raise ha.CommandError(f"unknown class {_clip(name)!r}")
            if kind == "enabled":
                self.controls.update(name, enabled=ha.parse_enabled(payload))
            elif kind == "sensitivity":
                self.controls.update(name, sensitivity=ha.parse_sensitivity(payload))
            else:
                minutes = ha.parse_snooze(payload, self.config.snooze_minutes)
                if minutes == 0:
                    self.controls.update(name, clear_snooze=True)
                else:
                    self.controls.snooze(name, minutes)
        except (
            ValueError,
            KeyError,
        ) as exc:  # CommandError is a ValueError; so are the controls' range errors
            self.commands_ignored += 1
            log.warning("MQTT command on %s ignored: %s", _clip(topic), _clip(str(exc), 160))
        except Exception:
            self.commands_ignored += 1
            log.exception("MQTT command on %s failed", _clip(topic))
        else:
            self.commands_applied += 1

    # ------------------------------------------------------------------ network thread
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"harken-{cfg.node_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls.enabled:
            for key in ("ca_file", "cert_file", "key_file"):
                path = getattr(cfg.tls, key)
                if path is not None and not path.is_file():
                    raise ValueError(f"mqtt.tls.{key}: {path}: no such file")
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED if cfg.tls.verify else ssl.CERT_NONE,
            )
            if not cfg.tls.verify:
                client.tls_insecure_set(True)
        # paho writes to the socket from the publishing thread when it sees no network thread
        # of its own (ours calls client.loop()): the asyncio thread and the network thread
        # then use one socket at once, which corrupts a TLS stream ("bad record mac").
        # Announcing an external loop makes publish() only queue and wake our network thread.
        client.on_socket_register_write = _no_op
        client.on_socket_unregister_write = _no_op
        client.will_set(self.topics.availability, ha.OFFLINE, qos=1, retain=True)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        client.on_subscribe = self._cb_subscribe
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        return client

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while we were shutting down
            loop.call_soon_threadsafe(callback, *args)

    def _network_loop(self) -> None:
        client = self._client
        assert client is not None
        delay_s = self.config.reconnect_min_s
        while not self._halt.is_set():
            self.attempts += 1
            self._round_connected = False
            try:
                client.reconnect()
            except OSError as exc:  # refused, unreachable, DNS, TLS handshake
                self._call(
                    self._on_unreachable,
                    getattr(exc, "strerror", None) or str(exc) or type(exc).__name__,
                )
            except Exception as exc:
                self._call(self._on_unreachable, f"{type(exc).__name__}: {exc}")
            else:
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                # socket() is None once paho closed a lost connection inside loop().
                while (
                    rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                    and client.socket() is not None
                    and not self._abort.is_set()
                ):
                    rc = client.loop(timeout=0.5)
            if self._halt.is_set():
                break
            if self._round_connected:
                delay_s = self.config.reconnect_min_s
            wait_s = self.config.reconnect_max_s if self._auth_refused else delay_s
            log.debug("MQTT reconnect in %.1f s", wait_s)
            self._halt.wait(wait_s)
            if not self._round_connected:
                delay_s = min(delay_s * 2, self.config.reconnect_max_s)

    def _cb_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        if reason_code.is_failure:
            self._auth_refused = str(reason_code) in AUTH_REFUSALS
            self._call(self._on_refused, str(reason_code), self._auth_refused)
            return
        self._auth_refused = False
        self._round_connected = True
        client.subscribe(
            [
                (self.topics.command_filter, 1),
                (self.topics.ha_status, 1),
                (self.topics.discovery_filter, 1),
            ]
        )
        self._link_up = True
        self._call(self._on_connected)

    def _cb_subscribe(self, *_args: Any) -> None:
        self._call(self._commands_live.set)

    def _cb_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        was_up, self._link_up = self._link_up, False
        if was_up:
            self._call(self._on_link_lost, str(reason_code))

    def _cb_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        self._call(self._acked, mid)

    def _cb_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self._on_message, message.topic, bytes(message.payload), bool(message.retain))
