"""End-to-end runs of ``reopold_agents.run`` on the shipped tiny pairs: every env, masks, resume, bad keys.

A 4-task held-out set and two short steps keep these fast; the full demos are measured in docs/run.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reopold_agents.run as run_mod
from reopold_agents.config.schema import resolve_tiny
from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.evaluation.heldout import gap_closed
from reopold_agents.metrics import read_metrics

SMALL = [
    "trainer.total_steps=2",
    "trainer.prompts_per_step=2",
    "trainer.group_size=2",
    "trainer.save_every=1",
    "engine.sampling.max_new_tokens=12",
    "env.max_turns=2",
    "trainer.heldout_tasks=4",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(env: str, out: Path, *extra: str):
    return compose([f"env={env}", f"trainer.output_dir={out}", *SMALL, *extra])


@pytest.mark.parametrize("env", ["math", "toolqa", "vqa"])
def test_two_step_run_writes_metrics_plot_checkpoints(env, tmp_path):
    result = run_mod.train(_cfg(env, tmp_path / "run"), progress=False)
    out = Path(result.output_dir)
    records = read_metrics(out)
    assert [r["step"] for r in records] == [0, 1, 2]  # eval before, two steps; the eval after joins step 2
    step = records[1]
    for key in ("loss", "rollout/reward", "rollout/success", "teacher/log_ratio/mean", "frac_selected",
                "frac_clipped", "entropy_mean", "perf/tokens_per_s", "perf/step_time_s", "perf/load_1min"):
        assert key in step, key
    assert step["perf/load_1min"] >= 0.0  # the machine's load the step ran under (Linux has one)
    assert records[0]["eval/success"] == result.success_before and records[-1]["eval/success"] == result.success_after
    assert (out / "curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert 0.0 <= summary["teacher_success"] <= 1.0 and records[0]["eval/teacher_success"] == summary["teacher_success"]
    assert summary["gap_closed"] == gap_closed(result.success_before, result.success_after, summary["teacher_success"])
    # model=tiny resolves to the pair made for the env (the VL pair for images, the guessing students for toolqa and math)
    want = {"math": "tiny_math", "toolqa": "tiny_toolqa_bed", "vqa": "tiny_vl_bed"}[env]
    resolved = resolve_tiny(_cfg(env, tmp_path)).model
    assert (resolved.student, resolved.teacher) == (want, want)
    assert resolve_tiny(_cfg(env, tmp_path, "model=tiny_vl")).model.student == "tiny_vl"  # explicit wins


def test_eval_suite_is_logged_during_training(tmp_path):
    extra = ["eval=math_tiny", "eval.benchmarks.arith.env.size=2", "eval.benchmarks.arith.n=1",
             "eval.benchmarks.arith.sampling.max_new_tokens=8", "trainer.eval_every=1", "trainer.total_steps=2"]
    result = run_mod.train(_cfg("math", tmp_path / "run", *extra), progress=False)
    records = read_metrics(result.output_dir)
    assert [r["step"] for r in records if "eval/success" in r] == [0, 1, 2]
    assert all(any(k.startswith("suite/") for k in r) for r in records if "eval/success" in r)


def test_masks_and_teacher_ids_at_run_level(tmp_path, monkeypatch):
    """No env token (prompt, tool output, nudges) has loss_mask 1; the teacher scores the student's ids."""
    from collections import Counter

    import reopold_agents.logprobs as logprobs

    seen: list = []
    teacher_rows: list = []
    scored: list[tuple[int, ...]] = []  # every sequence the frozen teacher read since the last step
    windows: list[tuple[Counter, Counter]] = []  # per step: (what the teacher read, the step's episodes)

    def on_step(result):
        seen.extend(result.trajectories)
        teacher_rows.extend(result.batch.teacher_logprobs.tolist())
        windows.append((Counter(scored), Counter(tuple(t.token_ids) for t in result.trajectories)))
        scored.clear()

    original_logprobs = logprobs.model_token_logprobs

    def spy(model, input_ids, attention_mask, *args, **kwargs):
        if not any(p.requires_grad for p in model.parameters()):  # the frozen teacher
            scored.extend(tuple(row[m.bool()].tolist()) for row, m in zip(input_ids.cpu(), attention_mask.cpu()))
        return original_logprobs(model, input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(logprobs, "model_token_logprobs", spy)  # the teacher imports it at call time
    cfg = _cfg("toolqa", tmp_path / "run", "env.max_turns=3", "engine.sampling.max_new_tokens=20")
    run_mod.train(cfg, progress=False, on_step=on_step)
    from reopold_agents.tiny import build_tokenizer

    tok = build_tokenizer()
    assert seen and any(len(t.turns) > 1 for t in seen), "want multi-turn episodes (env answered in between)"
    for t, teacher_lp in zip(seen, teacher_rows):
        gen_runs, env_runs, cur, cur_mask = [], [], [], None
        for tid, m in zip(t.token_ids, t.loss_mask):
            if m != cur_mask and cur:
                (gen_runs if cur_mask else env_runs).append(cur)
                cur = []
            cur_mask = m
            cur.append(tid)
        (gen_runs if cur_mask else env_runs).append(cur)
        # Each assistant turn is one run of trained ids, exactly as many ids as the engine generated.
        assert [len(r) for r in gen_runs] == [turn["num_generated"] for turn in t.turns if turn["num_generated"]]
        # Every env run after the prompt is an env turn: it ends by opening the next assistant turn.
        for r in env_runs[1:]:
            assert tok.decode(r).endswith("<|im_start|>assistant\n")
        for turn in t.turns[:-1]:
            assert turn.get("env_tokens", 0) > 0
        assert all(lp == 0.0 for lp, m in zip(teacher_lp, t.loss_mask) if not m)
        assert any(lp != 0.0 for lp, m in zip(teacher_lp, t.loss_mask) if m)
    # The teacher saw exactly the student's token ids (as a multiset of sequences: it batches by length).
    assert len(windows) == 2
    (read0, episodes0), (read1, episodes1) = windows
    assert read1 == episodes1
    # Before step 0 the preflight scored one probe episode twice (teacher determinism); nothing else extra.
    assert not episodes0 - read0
    ((_, twice),) = (read0 - episodes0).items()
    assert twice == 2


def _params(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.glob("*.safetensors"))))


def test_teacher_success_is_the_teacher_measured_as_a_student(tmp_path, capsys):
    """The "gap closed" target: the teacher's held-out success equals what the run measures for a student
    that has the teacher's weights; the before/after line prints it and the fraction closed."""
    from reopold_agents.tiny.load import weights_dir

    extra = ["trainer.total_steps=1", "trainer.heldout_tasks=8", "engine.sampling.max_new_tokens=32"]  # the working fits
    result = run_mod.train(_cfg("math", tmp_path / "a", *extra), progress=False)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("held-out success")][0]
    assert f"(teacher {result.teacher_success:.3f}, gap closed" in line
    teacher_dir = str(weights_dir("tiny_math", "teacher"))
    as_student = run_mod.train(_cfg("math", tmp_path / "b", *extra, f"model.student={teacher_dir}", f"model.teacher={teacher_dir}",
                                    "trainer.eval_teacher=false"), progress=False)
    assert as_student.teacher_success is None and as_student.gap_closed is None
    assert result.teacher_success == as_student.success_before
    assert result.teacher_success > result.success_before  # the test bed's gap (0.953 vs 0.160 on 256 tasks)


def test_gap_closed_formula():
    assert gap_closed(0.2, 0.6, 1.0) == pytest.approx(0.5)
    assert gap_closed(0.2, 0.1, 0.6) == pytest.approx(-0.25)  # a run that got worse closes a negative gap
    assert gap_closed(0.5, 0.7, 0.5) is None and gap_closed(0.5, 0.7, 0.4) is None  # no gap to close


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    extra = ["trainer.total_steps=4", "trainer.save_every=2", "trainer.lr=1e-3", "trainer.keep_checkpoints=5"]
    full = run_mod.train(_cfg("math", tmp_path / "full", *extra), progress=False)

    class Crash(RuntimeError):
        pass

    def crash(result):
        if result.step + 1 == 3:
            raise Crash("simulated crash after step 3 (last checkpoint: step 2)")

    with pytest.raises(Crash):
        run_mod.train(_cfg("math", tmp_path / "crash", *extra), progress=False, on_step=crash)
    resumed = run_mod.train(_cfg("math", tmp_path / "crash", *extra, "trainer.resume=true"), progress=False)
    a = _params(Path(full.output_dir) / "checkpoints" / "step_00000004" / "model")
    b = _params(Path(resumed.output_dir) / "checkpoints" / "step_00000004" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = lambda k: k.startswith("perf/") or k.endswith("/score_s")  # noqa: E731  (teacher/<label>/score_s)
    strip = lambda recs: [{k: v for k, v in r.items() if not timing(k)} for r in recs]  # noqa: E731
    assert strip(read_metrics(full.output_dir)) == strip(read_metrics(resumed.output_dir))
    assert resumed.success_before == full.success_before and resumed.evals == full.evals
    assert resumed.teacher_success == full.teacher_success is not None  # kept in the checkpoint, not re-measured


def test_bad_config_key_fails_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="trainer.lrr"):
        compose(["+trainer.lrr=0.1"])
    with pytest.raises(ConfigError, match="trainer.total_steps"):
        compose(["trainer.total_steps=0"])
    proc = subprocess.run(
        [sys.executable, "-m", "reopold_agents.run", "+trainer.total_stepz=3", f"trainer.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode != 0
    assert "trainer.total_stepz" in proc.stderr + proc.stdout


def test_step_timings_cover_the_in_process_rollout(tmp_path):
    """perf/rollout_s is measured from before the submit (an in-process rollout runs inside it)."""
    run_mod.train(_cfg("math", tmp_path / "run", "trainer.total_steps=1"), progress=False)
    rec = [r for r in read_metrics(tmp_path / "run") if "perf/rollout_s" in r][0]
    assert rec["perf/rollout_s"] > 0.0
    assert rec["perf/step_time_s"] >= rec["perf/rollout_s"] + rec["perf/learner_s"] - 1e-6
