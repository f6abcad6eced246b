#!/usr/bin/env bash
# The GPU check of issue 13, one command:   bash benchmarks/device_check.sh [--cpu] [device_check.py options]
#
# Options after --cpu go to benchmarks/device_check.py (e.g. --only model,profile --sizes 3840x2160).
# PYTEST_TIMEOUT (seconds, default 90; 0 skips `pytest -m gpu`) and FIGURES_TIMEOUT (default 400)
# bound the two parts.
#
# Needs: a CUDA machine with python3 holding PyTorch (2.x with CUDA), numpy, OpenCV, Pillow, numba,
# scipy, safetensors, PyYAML, typer, rich and pytest, and no network. Not needed: TensorRT,
# onnxruntime-gpu. What the machine lacks travels as pure-Python wheels in .whl/ (here: PyMatting,
# for --save fg), fetched beforehand with
#   pip download --no-deps --only-binary=:all: -d .whl PyMatting==1.1.16
# and installed below with --no-index. Budget: under 8 minutes on one H100 and 16 cores.
#
# Writes $OUT/device_check.json (every figure) and $OUT/device_check.log (everything printed);
# OUT defaults to benchmarks/out. --cpu: a dry run on a CPU at tiny sizes (what the slow test runs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
PY="${PYTHON:-python3}"
{
  echo "device_check: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/matte-site .whl/*.whl \
      && export PYTHONPATH="/tmp/matte-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  if [[ "${1:-}" != "--cpu" && "${PYTEST_TIMEOUT:-90}" != 0 ]]; then
    echo "== pytest -m gpu"
    # a test that hangs (the training tests did on the H200, 2026-11-27) prints every thread's stack
    # before pytest stops, where pytest-timeout is installed
    per_test=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 45 --timeout-method thread)
    timeout "${PYTEST_TIMEOUT:-90}" "$PY" -m pytest -m gpu -q -rfE --durations=10 -p no:cacheprovider "${per_test[@]}" tests/
    echo "pytest -m gpu: exit $?"
  fi
  echo "== figures"
  timeout "${FIGURES_TIMEOUT:-400}" "$PY" benchmarks/device_check.py --out "$OUT" "$@"
  echo "device_check.py: exit $?"
} 2>&1 | tee "$LOG"
