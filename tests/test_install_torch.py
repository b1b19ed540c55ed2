"""scripts/install-torch-cpu: the CPU build of torch, from a local wheel where pip has one,
else from PyTorch's CPU index (PyPI's Linux wheel is the multi-gigabyte CUDA build).

Nothing is downloaded: pip is cut off from its configuration and from PyPI, "PyPI" is a
local folder with a stand-in torch wheel without `+cpu` (as PyPI's CUDA build is versioned),
and the "CPU index" is a local simple index with a `+cpu` stand-in. Each stand-in says where
it came from.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-torch-cpu"


def _stand_in_wheel(folder: Path, version: str, origin: str) -> Path:
    """A minimal valid wheel named torch whose module records `origin`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    dist_info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": f"ORIGIN = {origin!r}\n__version__ = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: harken-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def _simple_index(root: Path, wheel: Path) -> str:
    """A PEP 503 index with one project, torch, served from files."""
    project = root / "torch"
    project.mkdir(parents=True)
    (project / wheel.name).write_bytes(wheel.read_bytes())
    href = wheel.name.replace("+", "%2B")
    (project / "index.html").write_text(f'<html><body><a href="{href}">{wheel.name}</a></body></html>\n')
    (root / "index.html").write_text('<html><body><a href="torch/">torch</a></body></html>\n')
    return root.as_uri()


def _install(venv: Path, find_links: Path, cpu_index: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    empty = tmp_path / "no-pypi"
    empty.mkdir(exist_ok=True)
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # not this machine's pip.conf (its wheelhouse, its indexes)
        PIP_INDEX_URL=empty.as_uri(),  # an index with nothing: no request leaves the machine
        PIP_FIND_LINKS=str(find_links),  # "PyPI" / the local wheelhouse, as plain pip sees it
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TORCH_INDEX_URL=cpu_index,
    )
    done = subprocess.run([str(SCRIPT), str(venv / "bin" / "python")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.ORIGIN, torch.__version__)"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "torch"],
                   env=env, capture_output=True, timeout=120, check=True)
    return found.stdout.strip()


@pytest.mark.integration
def test_install_torch_cpu_prefers_a_local_cpu_wheel_else_the_cpu_index(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    cpu_index = _simple_index(tmp_path / "cpu-index", _stand_in_wheel(tmp_path / "built", "2.13.0+cpu", "cpu index"))

    # An ordinary machine: plain pip would get PyPI's build (no +cpu): the CPU index is used.
    pypi = tmp_path / "pypi"
    _stand_in_wheel(pypi, "2.13.0", "pypi (cuda)")
    assert _install(venv, pypi, cpu_index, tmp_path) == "cpu index 2.13.0+cpu"

    # This project's test machines: a CPU wheel on disk, found by plain pip; no index needed.
    wheelhouse = tmp_path / "wheelhouse"
    _stand_in_wheel(wheelhouse, "2.13.0+cpu", "local wheel")
    assert _install(venv, wheelhouse, cpu_index, tmp_path) == "local wheel 2.13.0+cpu"
