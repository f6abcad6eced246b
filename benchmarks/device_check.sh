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
  # what a process group would read (a WORLD_SIZE here makes `matte train` join one)
  env | grep -E '^(WORLD_SIZE|RANK|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_|SLURM_PROCID|SLURM_NTASKS|OMPI_COMM_WORLD_SIZE)=' || true
  if [[ "${1:-}" != "--cpu" && "${PYTEST_TIMEOUT:-90}" != 0 ]]; then
    echo "== pytest -m gpu"
    # a test still running after 45 s (the training tests did not finish on the H200, 2026-11-27)
    # prints every thread's stack: pytest's own faulthandler, whose watchdog thread also sees a
    # main thread blocked in C code, and which needs no plugin
    timeout "${PYTEST_TIMEOUT:-90}" "$PY" -m pytest -m gpu -q -rfE --durations=10 -p no:cacheprovider \
      -o faulthandler_timeout=45 tests/
    echo "pytest -m gpu: exit $?"
  fi
  echo "== figures"
  timeout "${FIGURES_TIMEOUT:-400}" "$PY" benchmarks/device_check.py --out "$OUT" "$@"
  echo "device_check.py: exit $?"
} 2>&1 | tee "$LOG"
