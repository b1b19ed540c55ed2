"""The real `harken run` process for benchmarks: a free port, a config file, a health wait."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_daemon(root: Path, config: dict[str, Any], timeout_s: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start harken on `config` (its api.port is chosen here) and wait until it is healthy."""
    port = free_port()
    config = {**config, "api": {**config.get("api", {}), "port": port}}
    (root / "harken.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run", "--config", str(root / "harken.yaml")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("harken did not start")
