"""Running a suite: episodes in deterministic lock-step chunks, records appended as chunks finish.

Why chunks: sampling noise must not depend on what ran before, or a resumed run would differ from an
uninterrupted one. Each benchmark's (task, sample) pairs are laid out in a fixed order and cut into
chunks of ``suite.batch_size``; a chunk's seed depends only on (suite seed, benchmark name, chunk index).
A chunk whose samples are all on disk is skipped; any other chunk is regenerated from its seed and only
its missing samples are appended. The results are then a pure function of the records.

Public entry point: ``evaluate_suite`` (used by the CLI and by training every ``trainer.eval_every``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.eval import BenchmarkConfig, EvalConfig
from reopold_agents.engines.base import SamplingParams
from reopold_agents.evaluation.aggregate import benchmark_metrics, overall_metrics
from reopold_agents.evaluation.answers import extract_answer, vote_key
from reopold_agents.evaluation.records import SAMPLES_FILE, RecordStore, SampleRecord
from reopold_agents.seeding import eval_chunk_seed, eval_reset_seed
from reopold_agents.trajectory import Trajectory

RESULTS_FILE = "results.json"
SETTINGS_FILE = "settings.json"


class EvaluationStopped(RuntimeError):
    """Raised when ``max_samples`` new samples were recorded before the suite finished (resume later)."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"stopped after the requested number of new samples: {done}/{total} recorded; "
                         "run the same command again to resume")
        self.done, self.total = done, total


@dataclass
class Chunk:
    benchmark: str
    index: int
    pairs: list[tuple[int, int]]  # (task_index, sample)
    seed: int


def plan_chunks(benchmark: str, num_tasks: int, n: int, batch_size: int, seed: int) -> list[Chunk]:
    """(task, sample) pairs in task-major order, cut into chunks of ``batch_size``."""
    pairs = [(t, s) for t in range(num_tasks) for s in range(n)]
    return [
        Chunk(benchmark, i, pairs[start : start + batch_size], eval_chunk_seed(seed, benchmark, i))
        for i, start in enumerate(range(0, len(pairs), batch_size))
    ]


def _as_engine(engine_or_model: Any, tokenizer: Any, processor: Any, engine_cfg: EngineConfig) -> Any:
    from reopold_agents.engines import Engine, make_engine

    if isinstance(engine_or_model, Engine):
        return engine_or_model
    if isinstance(engine_or_model, torch.nn.Module):
        return make_engine(engine_cfg, model=engine_or_model, tokenizer=tokenizer, processor=processor)
    raise TypeError(f"evaluate_suite needs an Engine or a torch.nn.Module, got {type(engine_or_model).__name__}")


def _tool_calls(traj: Trajectory) -> int:
    """Tool calls the model made: the sum of the ``num_calls`` each turn's env info reports (toolqa: 1 per call
    it answered, failed calls too; bfcl: the calls decoded from the reply, which it scores without running)."""
    return sum(int((turn.get("info") or {}).get("num_calls", 0)) for turn in traj.turns)


def _response(traj: Trajectory, tokenizer: Any) -> str:
    if traj.turns:
        return str(traj.turns[-1].get("text", ""))
    return tokenizer.decode([t for t, m in zip(traj.token_ids, traj.loss_mask) if m], skip_special_tokens=True)


def to_record(traj: Trajectory, chunk: Chunk, task_index: int, sample: int, task: Any, tokenizer: Any,
              latency: float) -> SampleRecord:
    """One finished episode as a SampleRecord (answer extraction and vote key included)."""
    info = traj.info
    correct = bool(info.get("success", False))
    response = _response(traj, tokenizer)
    answer = info.get("pred")
    if answer is None:
        answer = extract_answer(response)
    gold = task.answer
    return SampleRecord(
        benchmark=chunk.benchmark, task_index=task_index, task_id=str(task.id), sample=sample, chunk=chunk.index,
        correct=correct, reward=float(traj.reward), answer=None if answer is None else str(answer),
        vote=vote_key(answer, correct, gold), gold=str(gold), response=response, turns=len(traj.turns),
        tool_calls=_tool_calls(traj), output_tokens=traj.num_generated, finish=str(info.get("stop", "")),
        why=str(info.get("why", "")), latency_s=latency,
    )


class BenchmarkRunner:
    """Builds one benchmark's envs over its shared task list and runs chunks through the rollout."""

    def __init__(self, engine: Any, tokenizer: Any, processor: Any, bench: BenchmarkConfig, engine_cfg: EngineConfig,
                 sandbox: Any = None, tasks: Sequence[Any] | None = None) -> None:
        from envs.factory import build_env, load_env_tasks
        from reopold_agents.rollout import Rollout, env_stop_token_ids

        self.bench = bench
        self.tasks = tasks if tasks is not None else load_env_tasks(bench.env)
        self.rollout = Rollout(
            engine, tokenizer, lambda: build_env(bench.env, tasks=self.tasks, sandbox=sandbox), processor=processor,
            max_turns=bench.env.max_turns, max_total_tokens=bench.max_total_tokens, env_workers=engine_cfg.env_workers,
            stop_token_ids=env_stop_token_ids(bench.env.name),
        )

    def run(self, chunk: Chunk, suite_seed: int) -> list[Trajectory]:
        prompts = [{"seed": eval_reset_seed(suite_seed, t, s), "options": {"task_index": t}} for t, s in chunk.pairs]
        return self.rollout.run(prompts, SamplingParams.from_config(self.bench.sampling, seed=chunk.seed))

    def close(self) -> None:
        self.rollout.close()


def _settings(suite: EvalConfig, label: str) -> dict[str, Any]:
    return {"model": label, "suite": asdict(suite)}


def _check_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    path = out / SETTINGS_FILE
    if path.exists() and resume:
        old = json.loads(path.read_text())
        if old != settings:
            diff = _first_difference(old, settings)
            raise ValueError(f"{out} holds an evaluation with different settings ({diff}); "
                             "use another out_dir, overwrite=true, or the original settings")
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
    return f"{prefix}: was {a!r}, now {b!r}"


def evaluate_suite(
    engine_or_model: Any,
    tokenizer: Any,
    suite: EvalConfig,
    *,
    processor: Any = None,
    engine_cfg: EngineConfig | None = None,
    sandbox: Any = None,
    label: str = "model",
    out_dir: str | Path | None = None,
    resume: bool = True,
    max_samples: int | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on every benchmark of ``suite``; returns the results dict.

    Args:
        engine_or_model: an ``Engine`` (e.g. the training run's student engine, after its weight sync) or
            a torch module (wrapped in an engine built from ``engine_cfg``).
        tokenizer, processor: the model's tokenizer (and VL processor for image benchmarks).
        suite: an ``EvalConfig`` (``cfg.eval`` in training; ``load_suite(name)`` elsewhere).
        engine_cfg: engine keys (name, batch size, env workers); sampling and episode limits come from
            each benchmark.
        sandbox: a sandbox or the ``sandbox`` config section, for toolqa benchmarks with the python tool.
        label: the model's name in reports.
        out_dir: where samples.jsonl, settings.json, results.json/.md and plots go; None keeps
            everything in memory (no files).
        resume: reuse samples already in ``out_dir`` (the settings must match).
        max_samples: raise ``EvaluationStopped`` once this many new samples are recorded.
        progress: show a progress bar.
        plots: write scaling.png / benchmarks.png next to results.json.

    The results dict is ``{"suite", "model", "benchmarks": {name: metrics}, "overall": {...}}`` (metrics in
    docs/evaluate.md). Wall-clock measurements sit only under ``benchmarks.<name>.speed``.
    """
    engine_cfg = engine_cfg or EngineConfig()
    engine = _as_engine(engine_or_model, tokenizer, processor, engine_cfg)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and (out / SAMPLES_FILE).exists():
            (out / SAMPLES_FILE).unlink()
        _check_settings(out, _settings(suite, label), resume)
    store = RecordStore(out / SAMPLES_FILE if out is not None else None)

    # Generation reseeds the global torch RNG per chunk; fork it so a training run's RNG stream is untouched.
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        store = _generate(engine, tokenizer, processor, suite, engine_cfg, sandbox, label, store, max_samples, progress)

    benchmarks = {name: benchmark_metrics(store.for_benchmark(name), bench.n) for name, bench in suite.benchmarks.items()}
    results = {"suite": suite.name, "model": label, "benchmarks": benchmarks, "overall": overall_metrics(benchmarks)}
    if out is not None:
        write_outputs(results, out, plots=plots)
    return results


def _generate(engine: Any, tokenizer: Any, processor: Any, suite: EvalConfig, engine_cfg: EngineConfig, sandbox: Any,
              label: str, store: RecordStore, max_samples: int | None, progress: bool) -> RecordStore:
    """Run every chunk that still has missing samples, appending records as chunks finish."""
    from tqdm.auto import tqdm

    runners: dict[str, BenchmarkRunner] = {}
    try:
        for name, bench in suite.benchmarks.items():
            runners[name] = BenchmarkRunner(engine, tokenizer, processor, bench, engine_cfg, sandbox=sandbox)
        plans = {name: plan_chunks(name, len(runners[name].tasks), bench.n, suite.batch_size, suite.seed)
                 for name, bench in suite.benchmarks.items()}
        total = sum(len(c.pairs) for chunks in plans.values() for c in chunks)
        done_before = sum((c.benchmark, *p) in store for chunks in plans.values() for c in chunks for p in c.pairs)
        new = 0
        with tqdm(total=total, initial=done_before, desc=f"eval {suite.name} [{label}]", unit="sample",
                  disable=not progress, leave=False) as bar:
            for name, runner in runners.items():
                for chunk in plans[name]:
                    missing = {p for p in chunk.pairs if (name, *p) not in store}
                    if not missing:
                        continue
                    start = time.perf_counter()
                    trajs = runner.run(chunk, suite.seed)
                    latency = time.perf_counter() - start
                    if len(trajs) != len(chunk.pairs):
                        raise RuntimeError(f"rollout returned {len(trajs)} episodes for {len(chunk.pairs)} requests")
                    records = [to_record(tr, chunk, t, s, runner.tasks[t], tokenizer, latency)
                               for tr, (t, s) in zip(trajs, chunk.pairs) if (t, s) in missing]
                    added = store.append(records)
                    new += added
                    bar.update(added)
                    if max_samples is not None and new >= max_samples and done_before + new < total:
                        raise EvaluationStopped(done_before + new, total)
    finally:
        for runner in runners.values():
            runner.close()
    return store


def write_outputs(results: dict[str, Any], out: Path, plots: bool = True) -> None:
    """results.json, results.md and (optionally) scaling.png / benchmarks.png in ``out``."""
    from reopold_agents.evaluation.report import results_markdown

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    if plots and results["benchmarks"]:
        from reopold_agents.evaluation.plots import plot_benchmarks, plot_scaling

        plot_scaling([results], out / "scaling.png")
        plot_benchmarks([results], out / "benchmarks.png")


def flatten_for_logging(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Scalars for the training metrics logger: ``eval/success`` (mean pass@1) and per-benchmark keys."""
    flat: dict[str, float] = {f"{prefix}/success": float(results["overall"]["pass@1"])}
    for name, b in results["benchmarks"].items():
        n = b["n"]
        flat[f"{prefix}/{name}/pass@1"] = float(b["pass@1"])
        flat[f"{prefix}/{name}/maj@{n}"] = float(b[f"maj@{n}"])
        flat[f"{prefix}/{name}/pass@{n}"] = float(b[f"pass@{n}"])
        flat[f"{prefix}/{name}/output_tokens"] = float(b["mean_output_tokens"])
        flat[f"{prefix}/{name}/turns"] = float(b["mean_turns"])
        flat[f"{prefix}/{name}/tool_calls"] = float(b["mean_tool_calls"])
        flat[f"{prefix}/{name}/tokens_per_s"] = float(b["speed"]["tokens_per_s"])
    return flat
