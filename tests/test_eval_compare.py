"""compare: the speed-up-at-matched-accuracy definition on hand-made results, and two tiny models
evaluated and compared through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from reopold_agents.evaluation.compare import compare_markdown, compare_results, matched_k

torch.set_num_threads(1)


def fake_results(model: str, pass1: float, maj: dict[int, float], s_per_sample: float, tok_s: float) -> dict:
    n = max(maj)
    bench = {
        "n": n, "pass@1": pass1, f"maj@{n}": maj[n], "maj@k": {str(k): v for k, v in maj.items()},
        "pass@k": {str(k): v for k, v in maj.items()}, "mean_output_tokens": 10.0,
        "speed": {"tokens_per_s": tok_s, "seconds_per_sample": s_per_sample},
    }
    return {"suite": "s", "model": model, "benchmarks": {"b": bench}}


def test_speedup_at_matched_accuracy_hand_computed():
    student = fake_results("student", 0.30, {1: 0.30, 2: 0.40, 4: 0.55, 8: 0.60}, s_per_sample=0.1, tok_s=400.0)
    teacher = fake_results("teacher", 0.50, {1: 0.50, 2: 0.55, 4: 0.60, 8: 0.62}, s_per_sample=1.0, tok_s=50.0)
    row = compare_results(student, teacher)["benchmarks"]["b"]
    assert row["matched_k"] == 4  # first k with student maj@k >= teacher pass@1 = 0.50
    assert row["speedup_at_matched_accuracy"] == pytest.approx(1.0 / (4 * 0.1))  # 2.5x
    assert row["throughput_ratio"] == pytest.approx(8.0)
    assert row["pass@1_delta"] == pytest.approx(-0.2)
    # Never reaches the target: no speed-up is claimed.
    weak = fake_results("weak", 0.1, {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.4}, s_per_sample=0.1, tok_s=400.0)
    row = compare_results(weak, teacher)["benchmarks"]["b"]
    assert row["matched_k"] is None and row["speedup_at_matched_accuracy"] is None
    assert "none" in compare_markdown(compare_results(weak, teacher))
    assert matched_k({"maj@k": {"1": 0.5, "2": 0.7}}, 0.5) == 1
    assert row["gap"] == pytest.approx(0.4) and row["gap_se"] is None  # no task counts: no error claimed


def test_gap_standard_error_hand_computed():
    """Student 2/50, teacher 15/50: gap 0.26, SE sqrt(.04*.96/50 + .3*.7/50) = 0.0700; leads (> 2 SE).
    Student 41/50, teacher 43/50: gap 0.04 with SE 0.0732: does not lead."""
    student = dict(fake_results("s", 0.04, {1: 0.04}, 0.1, 1.0))
    teacher = dict(fake_results("t", 0.30, {1: 0.30}, 0.1, 1.0))
    for r in (student, teacher):
        r["benchmarks"]["b"]["tasks"] = 50
    row = compare_results(student, teacher)["benchmarks"]["b"]
    assert row["gap"] == pytest.approx(0.26)
    assert row["gap_se"] == pytest.approx(((0.04 * 0.96 + 0.3 * 0.7) / 50) ** 0.5) and row["b_leads"] is True
    assert "+26.0 (7.0)*" in compare_markdown(compare_results(student, teacher))
    student["benchmarks"]["b"]["pass@1"], teacher["benchmarks"]["b"]["pass@1"] = 0.82, 0.86
    row = compare_results(student, teacher)["benchmarks"]["b"]
    assert row["gap"] == pytest.approx(0.04) and row["gap_se"] == pytest.approx(0.07321, abs=1e-4)
    assert row["b_leads"] is False


def test_compare_rejects_different_suites():
    a = fake_results("a", 0.1, {1: 0.1}, 0.1, 1.0)
    b = dict(fake_results("b", 0.1, {1: 0.1}, 0.1, 1.0), suite="other")
    with pytest.raises(ValueError, match="suite"):
        compare_results(a, b)


def save_tiny(path, seed: int, **sizes) -> str:
    """A random tiny Qwen2 saved as an HF checkpoint directory (loaded through from_pretrained)."""
    from reopold_agents.tiny import build_tokenizer, tiny_qwen2

    tok = build_tokenizer()
    tiny_qwen2(tok, seed=seed, **sizes).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_cli_compares_two_tiny_models(tmp_path, capsys):
    from reopold_agents.evaluate import main

    student = save_tiny(tmp_path / "tiny-student", seed=0)
    teacher = save_tiny(tmp_path / "tiny-teacher", seed=1, hidden_size=128, num_layers=4)
    out = tmp_path / "ev"
    rc = main(["suite=math_tiny", "k=2", "limit=2", f"model={student}", f"compare={teacher}", f"out_dir={out}",
               "device=cpu", "eval.benchmarks.arith.sampling.max_new_tokens=6"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tiny-student vs tiny-teacher" in printed and "| arith |" in printed
    for sub in ("tiny-student", "tiny-teacher"):
        res = json.loads((out / sub / "results.json").read_text())
        assert res["model"] == sub and res["benchmarks"]["arith"]["samples"] == 4
    cmp = json.loads((out / "compare" / "compare.json").read_text())
    row = cmp["benchmarks"]["arith"]
    assert (cmp["a"], cmp["b"]) == ("tiny-student", "tiny-teacher")
    a = json.loads((out / "tiny-student" / "results.json").read_text())["benchmarks"]["arith"]
    b = json.loads((out / "tiny-teacher" / "results.json").read_text())["benchmarks"]["arith"]
    assert row["a"]["pass@1"] == a["pass@1"] and row["b"]["pass@1"] == b["pass@1"]
    assert row["throughput_ratio"] == pytest.approx(a["speed"]["tokens_per_s"] / b["speed"]["tokens_per_s"])
    for name in ("compare.md", "compare_scaling.png", "compare_benchmarks.png"):
        assert (out / "compare" / name).stat().st_size > 0
