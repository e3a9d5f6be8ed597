#!/usr/bin/env python
"""Measure a test-bed pair: teacher, student start and the SFT upper bound, on the demo's held-out set.

    python scripts/testbed.py tiny_math --threads 1                   # teacher, student, upper bound
    python scripts/testbed.py tiny_toolqa_bed --threads 1
    python scripts/testbed.py tiny_math --upper-steps 1200 --skip teacher student   # upper bound, longer

Every number is greedy success on exactly the set ``python -m reopold_agents.run env=<env>`` reports
(the run config composed as the CLI composes it: the env's preset, ``trainer.heldout_tasks`` tasks from
seed ``env.seed + HELDOUT_SEED_OFFSET``, the preset's ``max_new_tokens`` and turn limit). The upper bound
is the recipe's student architecture and starting point trained by SFT on correct (teacher-quality)
demonstrations only, without the habit stage: what distillation could reach at best.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pair", help="a tiny pair with a habit stage (reopold_agents.tiny.recipes.RECIPES)")
    parser.add_argument("--env", default=None, help="the env (default: the recipe's habit env)")
    parser.add_argument("--upper-steps", type=int, default=None, help="SFT steps of the upper bound (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["teacher", "student", "upper"])
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
    env = args.env or recipe.habit_env
    cfg = compose([f"env={env}", f"model.student={args.pair}", f"model.teacher={args.pair}", *args.overrides])
    tasks = cfg.trainer.heldout_tasks

    results: dict[str, float | int | str] = {"pair": args.pair, "env": env, "tasks": tasks}
    ensure_tiny(args.pair)
    for role in ("teacher", "student"):
        if role not in args.skip:
            loaded = load_model(args.pair, role)
            results[role] = model_success(cfg, loaded.model, loaded.tokenizer, loaded.processor)
            print(f"{role}: {results[role]:.3f}", flush=True)
    if "upper" not in args.skip:
        tokenizer, processor = tokenizer_and_processor(args.pair)
        sft = recipe.student if args.upper_steps is None else replace(recipe.student, steps=args.upper_steps)
        t0 = time.perf_counter()
        model = _start_model(recipe, "student", tokenizer)
        results["upper_start"] = model_success(cfg, model, tokenizer, processor)
        examples = [ex for name in recipe.envs
                    for ex in demonstration_examples(name, recipe.demos_per_env, tokenizer, processor)]
        sft_train(model, examples, sft, tokenizer.pad_token_id, desc="upper bound", progress=False)
        results["upper"] = model_success(cfg, model, tokenizer, processor)
        results["upper_steps"] = sft.steps
        print(f"upper bound (start {results['upper_start']:.3f}, then {sft.steps} SFT steps on {'+'.join(recipe.envs)}, "
              f"{time.perf_counter() - t0:.0f}s): {results['upper']:.3f}", flush=True)
    for key in ("teacher", "student", "upper"):
        if key in results:
            p = float(results[key])
            print(f"  {key:8s} {p:.3f} +- {math.sqrt(p * (1 - p) / tasks):.3f} (standard error)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
