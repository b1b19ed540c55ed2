"""A private Mosquitto broker and a recording MQTT client for integration tests."""

from __future__ import annotations

import atexit
import getpass
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """`mosquitto -c <tmpconf>` on a free loopback port; stop() and start() keep the port."""

    def __init__(
        self,
        workdir: Path,
        mosquitto: str,
        mosquitto_pub: str,
        password_file: Path | None = None,
        credentials: tuple[str, str] | None = None,
        persistence: bool = False,
        conf_text: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mosquitto = mosquitto
        self.mosquitto_pub = mosquitto_pub
        self.port = free_port()
        self.credentials = credentials
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if password_file else 'true'}",
            # Run as whoever runs the tests: as root mosquitto would switch to the
            # `mosquitto` user, who cannot read the test's private directory.
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/"]
        # conf_text: a complete config of the caller's (its listener must use self.port).
        text = (
            "\n".join(lines) + "\n"
            if conf_text is None
            else conf_text.replace("PORT", str(self.port))
        )
        self.conf.write_text(text)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.mosquitto, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        atexit.register(self.stop)  # a broker never outlives the test run, even an aborted one
        deadline = time.monotonic() + timeout_s
        command = [self.mosquitto_pub, "-h", "127.0.0.1", "-p", str(self.port), "-t", "test/ping"]
        command += ["-m", "ping", "-q", "1"]
        if self.credentials:
            command += ["-u", self.credentials[0], "-P", self.credentials[1]]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                if subprocess.run(command, capture_output=True, timeout=2).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections within {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM (a persistent broker saves its sessions), then SIGKILL if it lingers."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    dup: bool = False

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class Recorder:
    """A paho client that records every message on its subscriptions (thread-safe)."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "",
        clean_session: bool = True,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topics = topics
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("test subscriber did not get its SUBACK within 10 s")

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup))
            )
            self._cond.notify_all()

    def first_deliveries(self) -> list[Received]:
        """Messages without the DUP flag: a persistent session may re-send what it had in flight
        to this client when the broker went down; that leg's duplicates are not the sender's."""
        with self._cond:
            return [m for m in self.messages if not m.dup]

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:60]) for m in self.messages[-15:]]
                    raise AssertionError(
                        f"timed out after {timeout_s} s waiting for {what}; last: {seen}"
                    )
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
