"""Share of rollout wall time spent outside generation (env steps, tool calls, tokenisation, bookkeeping)
for a multi-turn toolqa batch; the target is <= 10%.

    python benchmarks/rollout_overhead.py [--prompts 8] [--group 4] [--max-turns 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default="tiny", help="tiny or an HF id/path (student)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import reopold_agents as ra
    from reopold_agents.engines import SamplingParams
    from reopold_agents.engines.hf import HFEngine
    from reopold_agents.models import load_model
    from reopold_agents.rollout import Rollout

    loaded = load_model(args.model, "student")
    engine = HFEngine(loaded.model, loaded.tokenizer, processor=loaded.processor)
    rollout = Rollout(
        engine, loaded.tokenizer, lambda: ra.make_env("toolqa", seed=0), processor=loaded.processor,
        max_turns=args.max_turns, max_total_tokens=8192, env_workers=8,
    )
    # Warm-up with the measured batch shape: every pooled env and its tools (the search index, the
    # calculator parser) pay their one-time set-up here, not in the first measured run.
    rollout.run(list(range(10**6, 10**6 + args.prompts)), SamplingParams(max_new_tokens=args.max_new_tokens, seed=99),
                group_size=args.group)
    fractions = []
    for r in range(args.repeats):
        start = time.perf_counter()
        trajs = rollout.run(list(range(100 * r, 100 * r + args.prompts)), SamplingParams(max_new_tokens=args.max_new_tokens, seed=r), group_size=args.group)
        wall = time.perf_counter() - start
        st = rollout.stats
        turns = sum(len(t.turns) for t in trajs)
        tool_calls = sum(1 for t in trajs for turn in t.turns if turn["info"].get("tool_name"))
        fractions.append(st.overhead_fraction)
        print(
            f"run {r}: {st.episodes} episodes, {turns} assistant turns, {st.turns} generate calls, "
            f"{tool_calls} tool calls, {st.generated_tokens} generated tokens, wall {wall:.2f}s, generate {st.generate_s:.2f}s, "
            f"env+tools {st.env_s:.2f}s, outside generation {100 * st.overhead_fraction:.1f}%"
        )
    rollout.close()
    share = statistics.median(fractions)
    print(f"share of rollout time outside generation (median of {len(fractions)} runs): {100 * share:.1f}% "
          f"(target <= 10%): {'OK' if share <= 0.10 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
