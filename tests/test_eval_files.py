"""File-backed suites read standard benchmark layouts through tasks.load_tasks (schemas in
docs/evaluate.md), and an evaluation killed mid-run resumes to the same results (slow: subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from reopold_agents.evaluation.aggregate import strip_speed
from reopold_agents.evaluation.runner import evaluate_suite
from reopold_agents.evaluation.suite import compose_evaluate, resolve_suite
from test_eval_harness import OracleEngine, random_tiny

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_rows():
    return [{"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "A box holds 1,200 pens; 200 are sold. How many are left?", "answer": "#### 1,000"}]


def math500_rows():
    return [{"problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
             "unique_id": "test/algebra/1.json"},
            {"problem": "What is $2^5$?", "answer": "32", "unique_id": "test/algebra/2.json"}]


def tooluse_rows():
    return [{"id": "t1", "question": "What is 17 * 23? Use the calculator.", "answer": "391"},
            {"id": "t2", "question": "What is 120 / 8? Use the calculator.", "answer": "15"}]


@pytest.mark.parametrize("suite_name,rows,tool_first", [
    ("gsm8k", gsm8k_rows(), False), ("math500", math500_rows(), False), ("aime", math500_rows(), False),
    ("tooluse", tooluse_rows(), True),
])
def test_file_suites_read_benchmark_files(tmp_path, suite_name, rows, tool_first):
    path = write_jsonl(tmp_path / f"{suite_name}.jsonl", rows)
    cfg = compose_evaluate([f"suite={suite_name}", f"eval.benchmarks.{suite_name}.env.tasks={path}", "k=2",
                            f"eval.benchmarks.{suite_name}.env.tools=[search,calculator]"]
                           if suite_name == "tooluse" else
                           [f"suite={suite_name}", f"eval.benchmarks.{suite_name}.env.tasks={path}", "k=2"])
    suite = resolve_suite(cfg.eval, cfg.k, None)
    tok = random_tiny().tokenizer
    from envs.factory import load_env_tasks

    tasks = load_env_tasks(suite.benchmarks[suite_name].env)
    assert len(tasks) == 2
    engine = OracleEngine(tok, tasks, p_correct=1.0, tool_first=tool_first)
    res = evaluate_suite(engine, tok, suite, out_dir=tmp_path / "out", label="oracle", progress=False)
    b = res["benchmarks"][suite_name]
    assert b["tasks"] == 2 and b["pass@1"] == 1.0 and b["maj@2"] == 1.0  # gold answers, incl. "1,000" and \frac
    assert b["mean_tool_calls"] == (1.0 if tool_first else 0.0)


def test_mathvista_style_suite_with_images(tmp_path):
    img = tmp_path / "img0.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    rows = [{"pid": "1", "question": "What colour is the square?", "image": "img0.png",
             "choices": ["red", "blue"], "question_type": "multi_choice", "answer": "red"},
            {"pid": "2", "question": "How many squares are shown?", "image": "img0.png",
             "question_type": "free_form", "answer_type": "integer", "answer": "1"}]
    path = write_jsonl(tmp_path / "testmini.jsonl", rows)
    cfg = compose_evaluate(["suite=mathvista", f"eval.benchmarks.mathvista.env.tasks={path}", "k=1",
                            "eval.benchmarks.mathvista.env.max_pixels=12544"])
    suite = resolve_suite(cfg.eval, cfg.k, None)
    vl = random_tiny(vl=True)
    from envs.factory import load_env_tasks

    tasks = load_env_tasks(suite.benchmarks["mathvista"].env)
    engine = OracleEngine(vl.tokenizer, tasks, p_correct=1.0)
    res = evaluate_suite(engine, vl.tokenizer, suite, processor=vl.processor, label="oracle", progress=False)
    assert res["benchmarks"]["mathvista"]["pass@1"] == 1.0


@pytest.mark.slow
def test_killed_cli_resumes_to_identical_results(tmp_path):
    """SIGKILL the CLI once the first chunk is on disk; the re-run finishes and matches a clean run."""
    args = ["suite=math_tiny", "k=4", "limit=4", "eval.batch_size=4", "eval.benchmarks.arith.sampling.max_new_tokens=24",
            "plots=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "reopold_agents.evaluate", *args]
    clean = subprocess.run([*cmd, f"out_dir={tmp_path / 'clean'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    samples = tmp_path / "killed" / "tiny-student" / "samples.jsonl"
    proc = subprocess.Popen([*cmd, f"out_dir={tmp_path / 'killed'}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 4 <= samples.read_text().count("\n") < 16, "the kill should land mid-run"
    done = subprocess.run([*cmd, f"out_dir={tmp_path / 'killed'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "clean" / "tiny-student" / "results.json").read_text())
    b = json.loads((tmp_path / "killed" / "tiny-student" / "results.json").read_text())
    assert strip_speed(a) == strip_speed(b)
