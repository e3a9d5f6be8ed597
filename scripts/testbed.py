#!/usr/bin/env python
"""Measure a test-bed pair: teacher, student start and the SFT upper bound, on the demo's held-out set.

    python scripts/testbed.py tiny_math --threads 1                   # teacher, student, upper bound
    python scripts/testbed.py tiny_toolqa_bed --threads 1
    python scripts/testbed.py tiny_math --upper-steps 1200 --skip teacher student   # upper bound, longer
    python scripts/testbed.py tiny_math_know --threads 2 --demo-logprob    # a knowledge bed, on its family

Every number is greedy success on exactly the set ``python -m reopold_agents.run env=<env>`` reports
(the run config composed as the CLI composes it: the env's preset, ``trainer.heldout_tasks`` tasks from
seed ``env.seed + HELDOUT_SEED_OFFSET``, the preset's ``max_new_tokens`` and turn limit). The upper bound
is the recipe's student architecture and starting point trained by SFT on correct (teacher-quality)
demonstrations only, without the habit stage: what distillation could reach at best. A pair without a
student SFT run (its student starts from another model's weights, e.g. the teacher's) has that starting
model as its upper bound. A knowledge bed (``bed_tasks`` in its recipe) is measured on its family only:
``env.tasks=<bed_tasks>`` is set before the overrides. ``--demo-logprob`` also reports how likely each
model is to sample the correct demonstration of a held-out task at temperature 1 (for a knowledge bed:
how often an outcome reward could see the right reply at all).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from reopold_agents.config.schema import RunConfig
    from reopold_agents.teacher.tokenizers import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pair", help="a tiny pair with a habit stage (reopold_agents.tiny.recipes.RECIPES)")
    parser.add_argument("--env", default=None, help="the env (default: the recipe's habit env)")
    parser.add_argument("--upper-steps", type=int, default=None, help="SFT steps of the upper bound (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["teacher", "student", "upper"])
    parser.add_argument("--demo-logprob", action="store_true",
                        help="also report each model's chance of sampling the correct demonstration")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. trainer.heldout_tasks=512")
    args = parser.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from reopold_agents.config.schema import compose
    from reopold_agents.evaluation.heldout import model_success
    from reopold_agents.models import load_model
    from reopold_agents.tiny.load import tokenizer_and_processor
    from reopold_agents.tiny.recipes import RECIPES, _start_model, demonstration_examples, ensure_tiny
    from reopold_agents.tiny.sft import sft_train

    recipe = RECIPES[args.pair]
    env = args.env or recipe.bed_env or recipe.habit_env
    bed = [f"env.tasks={recipe.bed_tasks}"] if recipe.bed_tasks and env == recipe.bed_env else []
    cfg = compose([f"env={env}", f"model.student={args.pair}", f"model.teacher={args.pair}", *bed, *args.overrides])
    tasks = cfg.trainer.heldout_tasks
    if recipe.student is None and args.upper_steps is not None:
        parser.error(f"{args.pair} has no student SFT run (its student starts from {recipe.student_from}'s "
                     f"{recipe.student_from_role}): its upper bound is that model, --upper-steps does not apply")

    results: dict[str, float | int | str] = {"pair": args.pair, "env": env, "tasks": tasks,
                                             "task_source": cfg.env.tasks}
    ensure_tiny(args.pair)
    for role in ("teacher", "student"):
        if role not in args.skip:
            loaded = load_model(args.pair, role)
            results[role] = model_success(cfg, loaded.model, loaded.tokenizer, loaded.processor)
            print(f"{role}: {results[role]:.3f}", flush=True)
            if args.demo_logprob:
                logprobs = demo_logprobs(cfg, loaded.model, loaded.tokenizer, loaded.processor)
                results.update(_demo_report(role, logprobs))
    if "upper" not in args.skip:
        tokenizer, processor = tokenizer_and_processor(args.pair)
        t0 = time.perf_counter()
        model = _start_model(recipe, "student", tokenizer)
        results["upper_start"] = model_success(cfg, model, tokenizer, processor)
        if recipe.student is None:  # the student's starting model is the upper bound
            results["upper"], results["upper_steps"] = results["upper_start"], 0
            print(f"upper bound (the student's starting model, {recipe.student_from}'s {recipe.student_from_role}): "
                  f"{results['upper']:.3f}", flush=True)
        else:
            sft = recipe.student if args.upper_steps is None else replace(recipe.student, steps=args.upper_steps)
            examples = [ex for name in recipe.envs
                        for ex in demonstration_examples(name, recipe.demos_per_env, tokenizer, processor)]
            sft_train(model, examples, sft, tokenizer.pad_token_id, desc="upper bound", progress=False)
            results["upper"] = model_success(cfg, model, tokenizer, processor)
            results["upper_steps"] = sft.steps
            print(f"upper bound (start {results['upper_start']:.3f}, then {sft.steps} SFT steps on "
                  f"{'+'.join(recipe.envs)}, {time.perf_counter() - t0:.0f}s): {results['upper']:.3f}", flush=True)
    for key in ("teacher", "student", "upper"):
        if key in results:
            p = float(results[key])
            print(f"  {key:8s} {p:.3f} +- {math.sqrt(p * (1 - p) / tasks):.3f} (standard error)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


@torch.no_grad()
def demo_logprobs(cfg: RunConfig, model: torch.nn.Module, tokenizer: Tokenizer, processor: Any = None) -> list[float]:
    """Per held-out task (the set ``model_success`` measures), the log-probability that ``model`` samples
    exactly the task's correct demonstration at temperature 1 (its assistant tokens, given the env's
    turns): a lower bound on the chance that one sampled episode is right."""
    from envs.demo import play_demonstration
    from envs.factory import build_env, load_env_tasks
    from reopold_agents.evaluation.heldout import heldout_env_config
    from reopold_agents.tiny.sft import tokenize_demonstration

    held = heldout_env_config(cfg.env, cfg.trainer.heldout_tasks)
    tasks = load_env_tasks(held)
    env = build_env(held, tasks=tasks, sandbox=cfg.sandbox)
    model.eval()
    out = []
    try:
        for task in tasks:
            demo = play_demonstration(env, task)
            if demo.reward <= 0:
                raise RuntimeError(f"held-out task {task.id}: its demonstration does not solve it "
                                   f"({demo.info.get('why')})")
            ex = tokenize_demonstration(tokenizer, demo.messages, demo.tools, processor, demo.images)
            ids = torch.tensor([ex.input_ids])
            logits = model(input_ids=ids, **ex.model_inputs).logits[0, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
            out.append(float((picked * torch.tensor(ex.loss_mask[1:], dtype=picked.dtype)).sum()))
    finally:
        env.close()
    return out


def _demo_report(role: str, logprobs: list[float]) -> dict[str, float]:
    """Mean chance per episode of sampling the correct demonstration, its median, and the share of tasks
    where it is at least 1 %."""
    p = torch.tensor(logprobs, dtype=torch.float64).exp()
    report = {f"{role}_demo_p_mean": float(p.mean()), f"{role}_demo_p_median": float(p.median()),
              f"{role}_demo_p_over_1pct": float((p >= 0.01).double().mean())}
    print(f"{role}: P(sample the correct demonstration) mean {report[f'{role}_demo_p_mean']:.2e}, median "
          f"{report[f'{role}_demo_p_median']:.2e}, >= 1 % on {report[f'{role}_demo_p_over_1pct']:.1%} of tasks",
          flush=True)
    return report


if __name__ == "__main__":
    main()
