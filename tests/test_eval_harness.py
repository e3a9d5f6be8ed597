"""End-to-end evaluation: real envs, real rollout, real tokenizer; metrics checked against what the
engine actually answered, tiny models on every built-in suite, resume after an interruption."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from reopold_agents.engines import Engine, Generation
from reopold_agents.evaluation.aggregate import strip_speed
from reopold_agents.evaluation.records import SAMPLES_FILE, RecordStore
from reopold_agents.evaluation.runner import EvaluationStopped, evaluate_suite
from reopold_agents.evaluation.suite import load_suite, resolve_suite
from reopold_agents.models import LoadedModel
from reopold_agents.tiny import build_tokenizer, tiny_qwen2

torch.set_num_threads(1)


class OracleEngine(Engine):
    """A scripted policy behind the real Engine interface: it reads the question from the prompt ids,
    optionally calls a tool first, then boxes the gold answer or one of two wrong ones (seeded by the
    sampling seed and request position, like a sampler). It logs every final answer it gave, which is
    the ground truth the harness's metrics must reproduce."""

    def __init__(self, tokenizer, tasks, p_correct: float = 0.5, tool_first: bool = False) -> None:
        self.tok, self.p, self.tool_first = tokenizer, p_correct, tool_first
        self.by_question = {t.question: t for t in tasks}
        self.log: list[tuple[str, bool]] = []  # (answer given, correct), in request order

    def _task(self, prompt: str):
        hits = [t for q, t in self.by_question.items() if q in prompt]
        assert hits, "the prompt should contain a task question"
        return max(hits, key=lambda t: len(t.question))  # synthetic sets may repeat a question

    def generate(self, requests, sampling):
        out = []
        for j, req in enumerate(requests):
            prompt = self.tok.decode(req.prompt_ids)
            task = self._task(prompt)
            if self.tool_first and "<tool_response>" not in prompt:
                text = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>'
            else:
                rng = random.Random(sampling.seed * 7_919 + j)
                ok = rng.random() < self.p
                wrong = [f"{task.answer}{s}" for s in ("1", "2")]
                answer = task.answer if ok else rng.choice(wrong)
                self.log.append((answer, ok))
                text = f"The answer is \\boxed{{{answer}}}.<|im_end|>"
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            out.append(Generation(ids, [0.0] * len(ids), "stop"))
        return out

    def load_weights(self, model_or_state_dict):  # pragma: no cover - never trained
        raise NotImplementedError


def brute_maj(votes: list[str], correct: list[bool], k: int) -> Fraction:
    total, subsets = Fraction(0), list(itertools.combinations(range(len(votes)), k))
    for sub in subsets:
        counts: dict[str, list[bool]] = {}
        for i in sub:
            counts.setdefault(votes[i], []).append(correct[i])
        top = max(len(v) for v in counts.values())
        winners = [v for v in counts.values() if len(v) == top]
        total += Fraction(sum(all(v) for v in winners), len(winners))
    return total / len(subsets)


def small_suite(name: str, k: int, limit: int, **sampling_overrides):
    suite = resolve_suite(load_suite(name), k=k, limit=limit)
    benches = {bname: replace(bench, sampling=replace(bench.sampling, **sampling_overrides))
               for bname, bench in suite.benchmarks.items()}
    return replace(suite, benchmarks=benches)


def random_tiny(vl: bool = False, seed: int = 0) -> LoadedModel:
    """A randomly initialised tiny model built from config (never the cached trained pair, so the tests
    neither depend on nor trigger a build)."""
    tok = build_tokenizer()
    if vl:
        from reopold_agents.tiny.vl import tiny_qwen2_5_vl, tiny_vl_processor

        return LoadedModel(tiny_qwen2_5_vl(tok, seed=seed), tok, tiny_vl_processor(tok), "tiny_vl", None)
    return LoadedModel(tiny_qwen2(tok, seed=seed), tok, None, "tiny", None)


@pytest.fixture(scope="module")
def tiny_student():
    return random_tiny()


@pytest.mark.parametrize("suite_name,tool_first", [("math_tiny", False), ("toolqa_tiny", True)])
def test_metrics_match_what_the_engine_answered(tmp_path, tiny_student, suite_name, tool_first):
    from envs.factory import load_env_tasks

    suite = small_suite(suite_name, k=4, limit=5)
    (bname, bench), = suite.benchmarks.items()
    tasks = load_env_tasks(bench.env)
    engine = OracleEngine(tiny_student.tokenizer, tasks, p_correct=0.5, tool_first=tool_first)
    res = evaluate_suite(engine, tiny_student.tokenizer, suite, out_dir=tmp_path, label="oracle", progress=False)
    b = res["benchmarks"][bname]
    assert b["tasks"] == 5 and b["samples"] == 20 and len(engine.log) == 20
    # pass@1 and maj@k from the engine's own log (independent of the env's scoring and the vote keys).
    # Chunks run in (task, sample) order and every episode gives its final answer in the same turn, so
    # log entry i is task i // n.
    truth = [engine.log[t * 4 : (t + 1) * 4] for t in range(5)]
    assert b["pass@1"] == pytest.approx(sum(ok for _, ok in engine.log) / 20)
    for k in (1, 2, 4):
        expected = sum(brute_maj([a for a, _ in s], [ok for _, ok in s], k) for s in truth) / len(truth)
        assert b["maj@k"][str(k)] == pytest.approx(float(expected), abs=1e-12)
    assert 0.0 < b["pass@1"] < 1.0 and b["answer_rate"] == 1.0
    assert b["mean_tool_calls"] == (1.0 if tool_first else 0.0)
    assert b["mean_turns"] == (2.0 if tool_first else 1.0)
    records = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert len(records) == 20 and all(r["finish"] == "terminated" for r in records)


@pytest.mark.parametrize("suite_name,model", [("math_tiny", "tiny"), ("toolqa_tiny", "tiny"), ("vqa_tiny", "tiny_vl")])
def test_tiny_models_on_each_builtin_suite(tmp_path, suite_name, model):
    loaded = random_tiny(vl=model == "tiny_vl")
    suite = small_suite(suite_name, k=2, limit=2, max_new_tokens=8)
    res = evaluate_suite(loaded.model, loaded.tokenizer, suite, processor=loaded.processor, out_dir=tmp_path,
                         label=f"{model}-student", progress=False)
    (bname, bench), = suite.benchmarks.items()
    b = res["benchmarks"][bname]
    assert (b["tasks"], b["n"], b["samples"]) == (2, 2, 4)
    assert set(b["pass@k"]) == set(b["maj@k"]) == {"1", "2"}
    assert 0 < b["mean_output_tokens"] <= 8 * bench.env.max_turns
    assert 1 <= b["mean_turns"] <= bench.env.max_turns
    assert b["speed"]["tokens_per_s"] > 0 and b["speed"]["latency_s_mean"] > 0
    for name in ("results.json", "results.md", "scaling.png", "benchmarks.png", SAMPLES_FILE, "settings.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(res))
    assert len(RecordStore(tmp_path / SAMPLES_FILE)) == 4


def _records_without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in r.__dict__.items() if k != "latency_s"} for r in RecordStore(path)]


def test_resume_after_interruption_gives_the_same_results(tmp_path, tiny_student):
    # Sampled (temperature 1), 3 tasks x 3 samples in chunks of 4: an interruption falls mid-benchmark.
    suite = replace(small_suite("math_tiny", k=3, limit=3, max_new_tokens=6, temperature=1.0), batch_size=4)
    args = dict(label="tiny-student", progress=False)
    full = evaluate_suite(tiny_student.model, tiny_student.tokenizer, suite, out_dir=tmp_path / "a", **args)

    with pytest.raises(EvaluationStopped) as stop:
        evaluate_suite(tiny_student.model, tiny_student.tokenizer, suite, out_dir=tmp_path / "b", max_samples=1, **args)
    assert stop.value.done == 4 and stop.value.total == 9
    assert not (tmp_path / "b" / "results.json").exists()
    # A crash mid-write leaves a torn last line: it is dropped and regenerated.
    with open(tmp_path / "b" / SAMPLES_FILE, "a") as fh:
        fh.write('{"benchmark": "arith", "task_in')
    resumed = evaluate_suite(tiny_student.model, tiny_student.tokenizer, suite, out_dir=tmp_path / "b", **args)

    assert strip_speed(resumed) == strip_speed(full)
    a_text = json.dumps(strip_speed(json.loads((tmp_path / "a" / "results.json").read_text())), sort_keys=True)
    b_text = json.dumps(strip_speed(json.loads((tmp_path / "b" / "results.json").read_text())), sort_keys=True)
    assert a_text == b_text
    assert _records_without_timing(tmp_path / "b" / SAMPLES_FILE) == _records_without_timing(tmp_path / "a" / SAMPLES_FILE)
    # The first 4 samples were not redone: their recorded chunk timing is the interrupted run's.
    lines = (tmp_path / "b" / SAMPLES_FILE).read_text().splitlines()
    assert len(lines) == 9 and all(line.endswith("}") for line in lines)

    # Resuming a finished run generates nothing and reproduces the results file exactly.
    before = (tmp_path / "b" / "results.json").read_text()
    again = evaluate_suite(tiny_student.model, tiny_student.tokenizer, suite, out_dir=tmp_path / "b", **args)
    assert (tmp_path / "b" / "results.json").read_text() == before and again == json.loads(before)


def test_resume_refuses_different_settings(tmp_path, tiny_student):
    suite = small_suite("math_tiny", k=1, limit=1, max_new_tokens=4)
    evaluate_suite(tiny_student.model, tiny_student.tokenizer, suite, out_dir=tmp_path, label="m", progress=False)
    other = replace(suite, benchmarks={k: replace(b, sampling=replace(b.sampling, temperature=0.3))
                                       for k, b in suite.benchmarks.items()})
    with pytest.raises(ValueError, match="temperature"):
        evaluate_suite(tiny_student.model, tiny_student.tokenizer, other, out_dir=tmp_path, label="m", progress=False)
    # resume=False starts over instead.
    evaluate_suite(tiny_student.model, tiny_student.tokenizer, other, out_dir=tmp_path, label="m", progress=False,
                   resume=False)


def test_in_memory_evaluation_for_training(tiny_student):
    """What the run CLI does every trainer.eval_every steps: no files, a flat dict for the logger."""
    from reopold_agents.engines import make_engine
    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.evaluation.runner import flatten_for_logging

    engine = make_engine(EngineConfig(), model=tiny_student.model, tokenizer=tiny_student.tokenizer)
    suite = small_suite("math_tiny", k=2, limit=2, max_new_tokens=4)
    rng_before = torch.get_rng_state()
    res = evaluate_suite(engine, tiny_student.tokenizer, suite, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training run's RNG stream is untouched
    flat = flatten_for_logging(res)
    assert flat["eval/success"] == res["overall"]["pass@1"]
    assert {"eval/arith/pass@1", "eval/arith/maj@2", "eval/arith/tokens_per_s"} <= set(flat)
    assert all(isinstance(v, float) for v in flat.values())
