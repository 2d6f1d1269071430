#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine: Debian packages, the venv, Python deps.
# Idempotent: re-running only installs what is missing or what pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
APT_PACKAGES=(nginx)
# `--test`: what the tests need besides: Debian's chromium (browser tests; no browser is ever
# downloaded), Azurite from npm (Azure Blob emulator) under build/azurite, and ffmpeg plus
# rtsp-server-perl (a real RTSP source on loopback for the stream-ingest tests), and Debian's
# Fashion-MNIST (real product photos the learning tests and benchmarks train on).
WITH_TEST_TOOLS=0
if [ "${1:-}" = "--test" ]; then
  WITH_TEST_TOOLS=1
  APT_PACKAGES+=(chromium ffmpeg rtsp-server-perl dataset-fashion-mnist)
  command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
fi

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "installing Python dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # torch==2.13.0 (pinned in pyproject) is a CPU build the machine's pip configuration provides locally.
  "$VENV/bin/python" -m pip install -q -e '.[training,dev]' 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, onnxruntime, fastapi, groundlight" >/dev/null
  touch "$STAMP"
fi

if [ "$WITH_TEST_TOOLS" = 1 ] && [ ! -x build/azurite/node_modules/.bin/azurite-blob ]; then
  echo "installing Azurite into build/azurite"
  mkdir -p build/azurite
  cp tests/support/azurite-package.json build/azurite/package.json
  (cd build/azurite && npm install --no-audit --no-fund --silent >/dev/null)
fi
