"""scripts/gpu_check.sh refuses cleanly where there is no usable CUDA GPU: a clear "no GPU" message,
exit status 2, within seconds and before installing anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": path, "GPU_CHECK_VENV": str(tmp_path / "venv"),
            "GPU_CHECK_LOGS": str(tmp_path / "logs"), **env}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60)
    proc.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return proc


def _path_without_nvidia_smi() -> str:
    """PATH with every directory that holds an nvidia-smi left out (so this runs on GPU hosts too)."""
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "nvidia-smi").exists())


def test_refuses_without_nvidia_driver(tmp_path):
    proc = _run(tmp_path, _path_without_nvidia_smi())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU" in proc.stderr and "nvidia-smi not found" in proc.stderr
    assert proc.seconds < 10
    assert not (tmp_path / "venv").exists(), "it installed something before refusing"
    assert proc.stdout == ""  # no table of checks that never ran


def test_refuses_when_torch_cannot_use_the_gpu(tmp_path):
    """A driver that lists a GPU (a stand-in nvidia-smi) but a torch without CUDA: refused after the
    environment step, naming the interpreter, not run as a series of failing checks."""
    if torch.cuda.is_available():
        pytest.skip("this torch can use CUDA: the refusal cannot be provoked here")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-00000000)'\n")
    fake.chmod(0o755)
    proc = _run(tmp_path, f"{bindir}{os.pathsep}{_path_without_nvidia_smi()}", GPU_CHECK_PYTHON=sys.executable)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU" in proc.stderr and "cannot use CUDA" in proc.stderr and sys.executable in proc.stderr
    assert "vllm_text" not in proc.stdout


def test_script_is_valid_bash():
    bash = shutil.which("bash")
    assert bash is not None
    assert subprocess.run([bash, "-n", str(SCRIPT)]).returncode == 0
