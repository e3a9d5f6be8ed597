#!/usr/bin/env python
"""Measure the math test bed (``tiny_math``): teacher, student start and the SFT upper bound.

    python scripts/math_testbed.py --threads 1                    # teacher, student, upper bound
    python scripts/math_testbed.py --upper-steps 1200 --threads 1  # the upper bound trained twice as long

All three numbers are greedy success on the demo's own held-out set (``trainer.heldout_tasks`` tasks of
``env=math`` from seed ``env.seed + HELDOUT_SEED_OFFSET``, the set ``python -m reopold_agents.run
env=math`` reports), 256 tasks by default (standard error <= 0.03). The upper bound is the same student
architecture and starting point as ``tiny_math``'s student, trained by SFT on the teacher-quality
(correct) demonstrations only, without the habit stage: what distillation could reach at best.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch


def heldout_success(model: torch.nn.Module, tokenizer, tasks: int, max_new_tokens: int) -> float:
    from reopold_agents.evaluation.heldout import HELDOUT_SEED_OFFSET
    from reopold_agents.tiny.recipes import _env_factory, _greedy_success

    factory, cfg = _env_factory("math", _env_seed() + HELDOUT_SEED_OFFSET, tasks)
    return _greedy_success(model, tokenizer, None, factory, cfg, tasks, max_new_tokens)


def _env_seed() -> int:
    from reopold_agents.tiny.recipes import _env_config

    return _env_config("math").seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=256, help="held-out tasks (the demo's trainer.heldout_tasks)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="as configs/experiment/math.yaml")
    parser.add_argument("--upper-steps", type=int, default=None, help="SFT steps of the upper bound (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["teacher", "student", "upper"])
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from reopold_agents.tiny import build_tokenizer
    from reopold_agents.tiny.load import weights_dir
    from reopold_agents.tiny.recipes import RECIPES, _start_model, demonstration_examples, ensure_tiny
    from reopold_agents.tiny.sft import sft_train

    recipe = RECIPES["tiny_math"]
    tokenizer = build_tokenizer()
    results: dict[str, float | int] = {"tasks": args.tasks}
    for role in ("teacher", "student"):
        if role in args.skip:
            continue
        ensure_tiny("tiny_math")
        model = AutoModelForCausalLM.from_pretrained(str(weights_dir("tiny_math", role)))
        results[role] = heldout_success(model, tokenizer, args.tasks, args.max_new_tokens)
        print(f"{role}: {results[role]:.3f}", flush=True)
    if "upper" not in args.skip:
        sft = recipe.student if args.upper_steps is None else replace(recipe.student, steps=args.upper_steps)
        t0 = time.perf_counter()
        model = _start_model(recipe, "student", tokenizer)
        results["upper_start"] = heldout_success(model, tokenizer, args.tasks, args.max_new_tokens)
        examples = demonstration_examples("math", recipe.demos_per_env, tokenizer)
        sft_train(model, examples, sft, tokenizer.pad_token_id, desc="upper bound", progress=False)
        results["upper"] = heldout_success(model, tokenizer, args.tasks, args.max_new_tokens)
        results["upper_steps"] = sft.steps
        print(f"upper bound ({recipe.student_from} student {results['upper_start']:.3f}, then {sft.steps} math SFT "
              f"steps, {time.perf_counter() - t0:.0f}s): {results['upper']:.3f}", flush=True)
    for key in ("teacher", "student", "upper"):
        if key in results:
            p = float(results[key])
            print(f"  {key:8s} {p:.3f} +- {math.sqrt(p * (1 - p) / args.tasks):.3f} (standard error)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
