"""Rollout throughput on a local Ray cluster with 1 and 2 rollout workers (ratio printed last).

    python benchmarks/scale.py                    # math env, tiny models, 16 prompts x 2 samples
    python benchmarks/scale.py --tasks 32 --max-new-tokens 64 --env toolqa

Each measurement is a full ``backend.rollout`` (dispatch, generation, envs, result transfer) after
one warm-up rollout; the cluster advertises ``--cpus`` CPUs and each worker reserves one, so on a
machine with fewer free cores than workers the ratio shows contention, not Ray overhead.
"""

from __future__ import annotations

import argparse
import time

import torch


def measure(num_workers: int, args: argparse.Namespace) -> float:
    from reopold_agents.config import compose
    from reopold_agents.distributed import make_backend

    cfg = compose([
        f"env={args.env}",
        "distributed=ray",
        f"distributed.ray.num_rollout_workers={num_workers}",
        f"distributed.rollout_chunk_size={args.chunk}",
        f"distributed.ray.local_num_cpus={args.cpus}",
        f"engine.sampling.max_new_tokens={args.max_new_tokens}",
        "engine.sampling.temperature=1.0",
        f"trainer.group_size={args.group_size}",
    ])
    backend = make_backend(cfg)
    try:
        tasks = [{"env": cfg.env.name, "options": {"task_index": i}} for i in range(args.tasks)]
        backend.rollout(tasks, step=0)  # warm-up: first generate call, env construction
        best = 0.0
        for rep in range(args.repeats):
            start = time.perf_counter()
            trajs = backend.rollout(tasks, step=1 + rep)
            seconds = time.perf_counter() - start
            tokens = sum(t.num_generated for t in trajs)
            rate = len(trajs) / seconds
            best = max(best, rate)
            print(f"workers={num_workers} rep={rep}: {len(trajs)} episodes, {tokens} generated tokens in "
                  f"{seconds:.2f}s -> {rate:.2f} episodes/s, {tokens / seconds:.0f} tokens/s", flush=True)
        return best
    finally:
        backend.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="math")
    parser.add_argument("--tasks", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2, help="prompts per chunk (distributed.rollout_chunk_size)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray cluster advertises")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from reopold_agents.distributed.cluster import connect, import_ray
    from reopold_agents.config.distributed import DistributedConfig

    ray = import_ray()
    connect(DistributedConfig(backend="ray", local_num_cpus=args.cpus))  # one cluster for both measurements
    try:
        one = measure(1, args)
        two = measure(2, args)
    finally:
        ray.shutdown()
    print(f"rollout throughput: 1 worker {one:.2f} episodes/s, 2 workers {two:.2f} episodes/s")
    print(f"scale ratio (2 workers / 1 worker): {two / one:.2f}")


if __name__ == "__main__":
    main()
