"""Generated tokens/s of the HF engine with KV reuse (``reuse_kv_cache=True``, the default: each
sequence's cache carried across turns, a batch-shared prompt prefix run once) vs the full re-prefill
of every conversation at every turn, on multi-turn toolqa batches; the goal is >= 2x.

    python benchmarks/rollout_speed.py [--prompts 8] [--group 4] [--max-turns 3] [--max-new-tokens 48]

Both paths run the same seeded batches (alternating, so machine load hits both alike) and must
produce the same token ids (checked; log-probs to 1e-5). Tokens/s = generated tokens / time inside
``engine.generate``. The last line prints the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics

import torch


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--model", default="tiny_toolqa", help="tiny_toolqa or an HF id/path (student)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)

    import reopold_agents as ra
    from reopold_agents.engines import SamplingParams
    from reopold_agents.engines.hf import HFEngine
    from reopold_agents.models import load_model
    from reopold_agents.rollout import Rollout
    loaded = load_model(args.model, "student")
    rollouts = {
        name: Rollout(
            HFEngine(loaded.model, loaded.tokenizer, processor=loaded.processor, reuse_kv_cache=reuse),
            loaded.tokenizer, lambda: ra.make_env("toolqa", seed=0), processor=loaded.processor,
            max_turns=args.max_turns, max_total_tokens=8192, env_workers=8,
        )
        for name, reuse in (("full prefill", False), ("kv reuse", True))
    }
    warm = list(range(10**6, 10**6 + args.prompts))  # env/tool set-up and first-call costs, not measured
    for rollout in rollouts.values():
        rollout.run(warm, SamplingParams(max_new_tokens=args.max_new_tokens, seed=99), group_size=args.group)
    speeds: dict[str, list[float]] = {name: [] for name in rollouts}
    worst_logp = 0.0
    for r in range(args.repeats):
        prompts = list(range(100 * r, 100 * r + args.prompts))
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, seed=r)
        got = {}
        for name, rollout in rollouts.items():
            trajs = rollout.run(prompts, sampling, group_size=args.group)
            st = rollout.stats
            speed = st.generated_tokens / max(st.generate_s, 1e-9)
            speeds[name].append(speed)
            got[name] = trajs
            longest = max(len(t) for t in trajs)
            print(f"run {r} {name:>12}: {st.episodes} episodes, {st.turns} generate calls, {st.generated_tokens} "
                  f"generated tokens, longest {longest} tokens, generate {st.generate_s:.2f}s -> {speed:.0f} tok/s")
        full, reuse = got["full prefill"], got["kv reuse"]
        if [t.token_ids for t in full] != [t.token_ids for t in reuse]:
            raise SystemExit(f"run {r}: the two paths sampled different token ids")
        worst_logp = max(worst_logp, max(abs(a - b) for f, k in zip(full, reuse)
                                         for a, b in zip(f.rollout_logprobs, k.rollout_logprobs)))
    for rollout in rollouts.values():
        rollout.close()
    print(f"same token ids on every run; max |log-prob difference| {worst_logp:.2e}")
    med = {name: statistics.median(v) for name, v in speeds.items()}
    ratio = med["kv reuse"] / med["full prefill"]
    print(f"generated tokens/s (median of {args.repeats} runs): full prefill {med['full prefill']:.0f}, "
          f"kv reuse {med['kv reuse']:.0f}")
    print(f"kv reuse / full prefill: {ratio:.2f}x (goal >= 2x): {'OK' if ratio >= 2 else 'BELOW GOAL'}")
    return ratio


if __name__ == "__main__":
    main()
