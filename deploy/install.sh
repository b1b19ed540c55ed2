#!/bin/sh
# Install harken with its runtime dependencies only (no torch) into a virtual environment.
# The Docker image runs exactly this script, and so do the bare-metal/systemd install steps
# in the README and tests/test_deploy.py (into a fresh venv), so all three install alike.
#
# Usage: deploy/install.sh VENV_DIR [SOURCE_DIR]
#   VENV_DIR    where the venv goes (created with the python3 on PATH unless it exists)
#   SOURCE_DIR  the harken source tree (default: the directory above this script)
# PYTHON=/usr/bin/python3.11 picks the interpreter; PIP_* variables are passed to pip.
set -eu

if [ $# -lt 1 ]; then
  echo "usage: $0 VENV_DIR [SOURCE_DIR]" >&2
  exit 2
fi
venv=$1
src=${2:-$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# A non-editable install of the project and its [project.dependencies]: numpy, scipy,
# soundfile, soxr, sounddevice, onnxruntime, pydantic, fastapi, uvicorn, websockets (without
# it uvicorn cannot serve the dashboard's live WebSocket), paho-mqtt, httpx...
# each with wheels for amd64 and arm64, so the image builds on both without a compiler.
# (A current pip resolves and installs these noticeably faster than the venv's bundled one.)
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --only-binary=:all: --no-binary=harken "$src"
"$venv/bin/harken" --version
