"""Evaluation CLI: ``python -m reopold_agents.evaluate suite=math_tiny k=8 [model=...] [compare=...]``.

Evaluates ``model`` (loaded as the student; ``role=teacher`` picks the tiny teacher) on every benchmark
of the suite, writes ``<out_dir>/<label>/{samples.jsonl,results.json,results.md,*.png}`` and prints the
Markdown table. With ``compare=<model>`` a second model (loaded as the teacher/reference) is evaluated
the same way and ``<out_dir>/compare/`` gets the side-by-side table, JSON and plots, including the
speed-up at matched accuracy. Re-running the same command resumes: finished samples are not redone.
Keys: configs/evaluate.yaml and reopold_agents/config/eval.py; docs: docs/evaluate.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from reopold_agents.config.eval import EvaluateConfig
from reopold_agents.config.schema import ConfigError

USAGE = """usage: python -m reopold_agents.evaluate [key=value ...]

  suite=NAME|PATH   suite in configs/eval/ (default math_tiny) or a suite YAML file
  k=N               samples per task for every benchmark (pass@k / maj@k for k = 1, 2, 4, ..., N)
  model=NAME        tiny | tiny_toolqa | tiny_vl | HF id | local path   (role=student|teacher picks tiny weights)
  compare=NAME      also evaluate this model (as the teacher) and compare side by side
  limit=N           at most N tasks per benchmark     out_dir=DIR   (default outputs/eval/<suite>)
  max_samples=N     stop after N new samples (re-run the same command to resume)
  eval.<key>=V      override a suite key, e.g. eval.benchmarks.gsm8k.env.tasks=/data/gsm8k.jsonl
  engine.<key>=V    engine keys (engine=vllm for GPU generation); engine.sampling.<key>=V and
                    engine.max_total_tokens=V apply to every benchmark (eval.benchmarks.<name>.* wins)
suites: {suites}
"""


def model_label(name: str, role: str) -> str:
    """Directory/report name of a model: ``tiny-student``, ``Qwen2.5-1.5B-Instruct``, ``ckpt-100``."""
    from reopold_agents.config.tiny_pairs import TINY_NAMES

    if name in TINY_NAMES:
        return f"{name}-{role}"
    return Path(name.rstrip("/")).name or name


def evaluate_model(cfg: EvaluateConfig, name: str, role: str, out_dir: Path, label: str) -> dict[str, Any]:
    """Load one model and run the (already resolved) suite ``cfg.eval`` on it."""
    from reopold_agents.engines import make_engine
    from reopold_agents.evaluation.runner import evaluate_suite
    from reopold_agents.models import load_model

    loaded = load_model(name, role, cfg.dtype, cfg.device)  # type: ignore[arg-type]
    for bench_name, bench in cfg.eval.benchmarks.items():
        if bench.env.name == "vqa" and not loaded.is_vl:
            raise ConfigError(f"model: benchmark {bench_name!r} of suite {cfg.eval.name!r} asks questions about "
                              f"images but {name!r} is a text-only model (use model=tiny_vl or a VL checkpoint)")
    engine = make_engine(cfg.engine, model=loaded.model, tokenizer=loaded.tokenizer, processor=loaded.processor,
                         model_path=loaded.path)
    try:
        return evaluate_suite(engine, loaded.tokenizer, cfg.eval, processor=loaded.processor, engine_cfg=cfg.engine,
                              label=label, out_dir=out_dir, resume=cfg.resume, max_samples=cfg.max_samples,
                              plots=cfg.plots)
    finally:
        engine.close()


def check_task_sources(cfg: EvaluateConfig) -> None:
    """Fail before any model loads if a benchmark's task file is missing or malformed."""
    from envs.factory import load_env_tasks

    for name, bench in cfg.eval.benchmarks.items():
        try:
            load_env_tasks(bench.env)
        except ValueError as exc:  # TaskLoadError names the file/row
            raise ConfigError(f"eval.benchmarks.{name}.env.tasks: {exc} "
                              f"(set eval.benchmarks.{name}.env.tasks=<file or folder>)") from None


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (and ``cfg.compare``); returns ``{"a": results, "b": results?, "compare": ...}``."""
    from dataclasses import replace

    from reopold_agents.evaluation.compare import compare_markdown, write_comparison
    from reopold_agents.evaluation.report import results_markdown
    from reopold_agents.evaluation.suite import resolve_suite

    cfg = replace(cfg, eval=resolve_suite(cfg.eval, cfg.k, cfg.limit))
    if not cfg.eval.benchmarks:
        raise ConfigError(f"suite: {cfg.suite!r} has no benchmarks")
    check_task_sources(cfg)
    root = Path(cfg.out_dir or Path("outputs") / "eval" / cfg.eval.name)
    models = [(cfg.model, cfg.role, model_label(cfg.model, cfg.role))]
    if cfg.compare is not None:
        label_b = model_label(cfg.compare, "teacher")
        if label_b == models[0][2]:
            label_b += "-ref"
        models.append((cfg.compare, "teacher", label_b))
    if cfg.overwrite:
        for _, _, label in models:
            shutil.rmtree(root / label, ignore_errors=True)
        shutil.rmtree(root / "compare", ignore_errors=True)
    out: dict[str, Any] = {}
    for key, (name, role, label) in zip(("a", "b"), models):
        results = evaluate_model(cfg, name, role, root / label, label)
        print(results_markdown(results))
        print(f"saved to {root / label}/\n")
        out[key] = results
    if "b" in out:
        cmp = write_comparison(out["a"], out["b"], root / "compare")
        print(compare_markdown(cmp))
        print(f"saved to {root / 'compare'}/")
        out["compare"] = cmp
    return out


def main(argv: list[str] | None = None) -> int:
    from reopold_agents.evaluation.runner import EvaluationStopped
    from reopold_agents.evaluation.suite import compose_evaluate, suite_names

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE.format(suites=", ".join(suite_names())))
        return 0
    try:
        cfg = compose_evaluate(argv)
        run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EvaluationStopped as exc:
        print(str(exc), file=sys.stderr)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
