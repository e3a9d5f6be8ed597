#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages (as root), a venv in .venv, Python deps.
set -euo pipefail
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
