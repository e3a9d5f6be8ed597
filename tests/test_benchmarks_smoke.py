"""The benchmark scripts still run: each one's smallest configuration, asserting its closing ratio line.

Random tiny models (an empty model cache, like tests/test_run_e2e.py) and a 4-task held-out set keep
this fast; the numbers are meaningless here, only that every script runs end to end and ends with the
line docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _last_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines, "the script printed nothing"
    return lines[-1]


@pytest.fixture
def random_tiny(tmp_path):
    """The shipped tiny pair with 4 held-out tasks (SMALL_RUN); restores torch's thread count."""
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


SMALL_RUN = ["engine.sampling.max_new_tokens=6", "env.max_turns=1", "trainer.heldout_tasks=4"]


def test_sample_efficiency_smallest(random_tiny, capsys):
    se = _load("sample_efficiency")
    ratio = se.main(["--quick", "--steps", "2", "--eval-every", "1", "--prompts", "2", "--group", "2",
                     "--methods", "reopold", "grpo", "--out", str(random_tiny / "out"), "--override", *SMALL_RUN])
    last = _last_line(capsys)
    assert last.startswith("ratio samples-to-target GRPO/REOPOLD (math):"), last
    assert (random_tiny / "out" / "sample_efficiency_quick.png").stat().st_size > 0
    assert (random_tiny / "out" / "sample_efficiency_quick.json").exists()
    assert isinstance(ratio, float)


def test_sample_efficiency_samples_to_target():
    se = _load("sample_efficiency")
    c = se.RunCurve("math", "reopold", 0, 16, [(0, 0.1), (16, 0.3), (32, 0.5), (48, 0.45)])
    assert c.samples_to(0.3) == 16 and c.samples_to(0.5) == 32 and c.samples_to(0.0) == 0
    assert math.isinf(c.samples_to(0.51)) and c.final == 0.45


def test_tts_speedup_smallest(random_tiny, capsys):
    tts = _load("tts_speedup")
    ratio = tts.main(["--quick", "--steps", "1", "--k", "2", "--limit", "2", "--repeats", "1",
                      "--out", str(random_tiny / "out"), "--override", "trainer.prompts_per_step=2", *SMALL_RUN])
    last = _last_line(capsys)
    assert last.startswith("ratio speed-up at matched accuracy, distilled student vs teacher (arith):"), last
    assert (random_tiny / "out" / "tts_speedup_quick.png").stat().st_size > 0
    assert isinstance(ratio, float)


def test_vs_trl_smallest(capsys):
    pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[trl]'")
    vs = _load("vs_trl")
    ratio = vs.main(["--vocab", "0", "--batch", "2", "--completion-tokens", "4", "--repeats", "1",
                     "--mem-repeats", "0"])
    last = _last_line(capsys)
    assert last.startswith("ratio reopold vs trl_distill: time per sample"), last
    assert ratio > 0


def test_vs_trl_trl_sides_compute_reverse_kl():
    """The TRL sides are configured as claimed: their loss on the batch is the full-vocabulary reverse KL
    KL(student || teacher), averaged over completion tokens (brute force from the two models' logits)."""
    pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[trl]'")
    import tempfile

    vs = _load("vs_trl")
    args = vs.parse_args(["--vocab", "0", "--batch", "2", "--completion-tokens", "3"])
    tok, student, _ = vs._models(0, 0)
    samples = vs.make_samples(tok, student, 2, 3, 0)
    assert all(len(s.completion) == 3 and max(s.completion) < len(tok) for s in samples)
    _, s_model, t_model = vs._models(0, 0)
    kls = []
    with torch.no_grad():
        for smp in samples:
            ids = torch.tensor([smp.prompt + smp.completion])
            ls = torch.log_softmax(s_model(input_ids=ids).logits[0].double(), -1)
            lt = torch.log_softmax(t_model(input_ids=ids).logits[0].double(), -1)
            pos = range(len(smp.prompt) - 1, ids.shape[1] - 1)  # logits predicting the completion tokens
            kls += [float((ls[i].exp() * (ls[i] - lt[i])).sum()) for i in pos]
    expected = sum(kls) / len(kls)
    with tempfile.TemporaryDirectory() as d:
        for side in ("trl_gkd", "trl_distill"):
            step = vs.build_side(side, args, samples, d)
            step.model.eval()
            with torch.no_grad():
                inputs = step.trainer._prepare_inputs(step.inputs())
                loss = float(step.trainer.compute_loss(step.model, inputs))
            assert loss == pytest.approx(expected, rel=1e-4), side
