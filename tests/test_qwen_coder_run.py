"""One LoRA training step of ``model=qwen_coder`` on BFCL (Qwen2.5-Coder-0.5B-Instruct student with peft
adapters, Qwen2.5-Coder-1.5B-Instruct teacher, one tokenizer), run by ``.ci/run`` in its real-model step after
``bash scripts/setup.sh --real`` (``-m real``; excluded from the default run). About 10 GB of RAM with both
models loaded, and minutes on 2 cores (docs/run.md, "Real models: setup")."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

import reopold_agents.run as run_mod
from reopold_agents.config import compose
from reopold_agents.metrics import read_metrics

pytestmark = pytest.mark.real


def test_one_lora_step_of_qwen_coder_on_bfcl_trains_adapters_only(tmp_path):
    from reopold_agents.gguf import PACKAGED

    parts = [p for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct") for p, _ in PACKAGED[name].parts]
    missing = [p for p in parts if importlib.util.find_spec(p) is None]
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("peft") is None or missing:
        pytest.fail(f"the real checkpoints are not installed ({missing[:3]}...): run bash scripts/setup.sh --real")
    import torch
    from safetensors.torch import load_file

    cfg = compose(["env=bfcl", "model=qwen_coder", "model.lora.enabled=true", "trainer.total_steps=1",
                   "trainer.prompts_per_step=1", "trainer.group_size=2", "engine.sampling.max_new_tokens=24",
                   "trainer.heldout_tasks=2", "trainer.eval_teacher=false", "trainer.save_every=0",
                   f"trainer.output_dir={tmp_path}"])
    assert (cfg.env.tasks, cfg.env.split) == ("bfcl:core", "train")
    torch.set_num_threads(2)
    result = run_mod.train(cfg, progress=False)

    step = [r for r in read_metrics(tmp_path) if "loss" in r][0]
    assert step["num_tokens"] > 0 and step["skipped"] == 0.0
    for key in ("loss", "grad_norm", "teacher/log_ratio/mean", "rollout/reward"):
        assert math.isfinite(step[key]), (key, step[key])
    assert 0.0 <= result.success_before <= 1.0 and 0.0 <= result.success_after <= 1.0
    # The held-out set interleaves the core categories: its first two tasks are of two, each logged on its own.
    first = [r for r in read_metrics(tmp_path) if "eval/success" in r][0]
    per_category = [k for k in first if k.startswith("eval/bfcl/") and k != "eval/bfcl/success"]
    assert len(per_category) == 2 and all(0.0 <= first[k] <= 1.0 for k in per_category), first

    # The checkpoint holds the adapters only (the base is the unchanged model.student), and they trained:
    # peft initialises every lora_B to zero, so a nonzero lora_B is the step's update.
    model_dir = tmp_path / "checkpoints" / "step_00000001" / "model"
    assert sorted(p.name for p in model_dir.glob("*.safetensors")) == ["adapter_model.safetensors"]
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["r"] == cfg.model.lora.rank and sorted(adapter["target_modules"]) == sorted(cfg.model.lora.target_modules)
    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    lora_b = [w for k, w in weights.items() if ".lora_B." in k]
    assert lora_b and any(bool(w.abs().sum() > 0) for w in lora_b)
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
