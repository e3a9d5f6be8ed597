"""`python -m reopold_agents.run distributed=ray`: the run CLI drives the Ray backend end to end.

Two steps of the math env on the shipped tiny pair, on a local Ray cluster the backend starts and stops
itself: metrics, checkpoints and the held-out evaluation (run by rollout worker 0 with the synced
weights) all come out, and resume continues from the Ray checkpoint.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")

import reopold_agents.run as run_mod  # noqa: E402
from reopold_agents.config import compose  # noqa: E402
from reopold_agents.metrics import read_metrics  # noqa: E402

OVERRIDES = [
    "env=math",
    "env.max_turns=1",
    "engine.sampling.max_new_tokens=8",
    "trainer.heldout_tasks=4",
    "trainer.prompts_per_step=2",
    "trainer.group_size=2",
    "trainer.save_every=1",
    "trainer.lr=1e-3",
    "distributed=ray",
    "distributed.ray.num_rollout_workers=2",
    "distributed.rollout_chunk_size=1",
    "distributed.ray.local_num_cpus=2",
]


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    """A private cache (with the project tokenizer) that the Ray workers inherit through REOPOLD_CACHE."""
    from reopold_agents.tiny import build_tokenizer, cache_dir

    build_tokenizer()
    private = tmp_path / "cache"
    private.mkdir()
    for entry in cache_dir().glob("tokenizer-*"):
        if entry.is_dir() and ".tmp" not in entry.name:
            shutil.copytree(entry, private / entry.name)
    monkeypatch.setenv("REOPOLD_CACHE", str(private))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield private
    torch.set_num_threads(threads)


def test_run_cli_on_ray_trains_checkpoints_and_resumes(private_cache, tmp_path, monkeypatch):
    import ray
    import transformers

    import reopold_agents.models as models_mod
    import reopold_agents.tiny.load as tiny_load

    loads: list[str] = []  # every model load in this (the driver's) process; the actors are other processes

    def counting(module, name):
        inner = getattr(module, name)

        def wrapper(*args, **kwargs):
            loads.append(f"{module.__name__}.{name}")
            return inner(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counting(models_mod, "load_model")
    counting(tiny_load, "load_tiny")
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText):
        monkeypatch.setattr(auto, "from_pretrained", lambda *a, **k: loads.append("from_pretrained"))

    out = tmp_path / "run"
    run_mod.train(compose([*OVERRIDES, "trainer.total_steps=2", f"trainer.output_dir={out}"]), progress=False)
    assert not ray.is_initialized(), "the run must stop the local cluster it started"
    assert loads == [], f"the driver loaded models: {loads}"  # the teacher's held-out success too came from its role
    records = read_metrics(out)
    assert 0.0 <= records[0]["eval/teacher_success"] <= 1.0 and records[0]["eval/teacher/math/success"] == \
        records[0]["eval/teacher_success"]
    assert [r["step"] for r in records] == [0, 1, 2]  # the final evaluation joins step 2's record
    step1, step2 = records[1], records[2]
    for key in ("loss", "policy_lag", "rollout/success", "teacher/log_ratio/mean", "frac_selected", "rollout/episodes"):
        assert key in step1, key
    assert step1["rollout/episodes"] == 4.0  # prompts_per_step x group_size, nothing lost or doubled
    assert step1["loss"] != step2["loss"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    # the learner's weights moved between the two checkpoints
    from safetensors.torch import load_file

    saved = load_file(str(out / "checkpoints" / "step_00000002" / "model" / "model.safetensors"))
    init = load_file(str(out / "checkpoints" / "step_00000001" / "model" / "model.safetensors"))
    assert any(not torch.equal(saved[k], init[k]) for k in saved)

    # resume: one more step continues from the Ray learner's step-2 checkpoint
    resumed = run_mod.train(
        compose([*OVERRIDES, "trainer.total_steps=3", f"trainer.output_dir={out}", "trainer.resume=true"]),
        progress=False,
    )
    assert resumed.steps == 3
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [0, 1, 2, 3]  # one record per step (the final eval joins its step), also after resume
    assert (out / "checkpoints" / "step_00000003").is_dir()
    assert os.environ["REOPOLD_CACHE"] == str(private_cache)
