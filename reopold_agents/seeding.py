"""Every seed of a run, in one place: data order, rollout chunks, generate calls, envs and evaluation.

A run is a function of (config, step): the prompts of a step (``step_prompts``), the sampling seed of
each chunk of a step's tasks (``chunk_seed``: depends on the run seed, the step and the chunk index
only, never on the worker that runs it or how many workers there are, so the single-process and the
Ray placement sample the same episodes), and the seed of each generate call inside a chunk
(``turn_seed``). A multi-task run (``mix``) draws each prompt's env by the weights (``mix_draw``) and
reads each env's own seeded permutation of its tasks (``mix_task_index``). Env ``i`` of a rollout pool resets its RNG from ``env.seed + i`` (``env_seed``);
evaluation suites seed per (benchmark, chunk) and per (task, sample) episode.
"""

from __future__ import annotations

import random
import zlib

import numpy as np

_M31 = 2**31 - 1


def step_prompts(step: int, prompts_per_step: int, num_tasks: int, seed: int) -> list[int]:
    """Task indices of ``step``: a seeded permutation per pass over the tasks, read in order (so the
    data position after a resume is just the step counter)."""
    out = []
    for k in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(k, num_tasks)
        perm = list(range(num_tasks))
        random.Random(f"prompts:{seed}:{epoch}").shuffle(perm)
        out.append(perm[offset])
    return out


_MIX_TAG = zlib.crc32(b"mix")  # separates the env draw's stream from chunk seeds of the same (seed, step)


def mix_draw(step: int, prompts_per_step: int, weights: list[float], seed: int) -> list[int]:
    """Entry index (position in ``weights``) of each prompt of ``step`` in a mix run: independent draws
    with probabilities ``weights / sum(weights)`` from a SeedSequence of (seed, step) alone, so any
    step's draw is known without the steps before it."""
    total = float(sum(weights))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), _MIX_TAG]))
    return [int(i) for i in rng.choice(len(weights), size=prompts_per_step, p=[w / total for w in weights])]


def mix_task_index(position: int, num_tasks: int, seed: int, entry: str) -> int:
    """The task of the ``position``-th prompt (0-based, over the whole run) drawn for mix entry ``entry``:
    a seeded permutation per pass over that entry's tasks, as ``step_prompts`` reads a single env's."""
    epoch, offset = divmod(position, num_tasks)
    perm = list(range(num_tasks))
    random.Random(f"prompts:{seed}:{entry}:{epoch}").shuffle(perm)
    return perm[offset]


def entry_rollout_seed(seed: int, entry_index: int, num_entries: int) -> int:
    """The sampling seed of entry ``entry_index``'s episodes within a chunk sampled from ``seed`` (each
    entry's envs run as their own lock-step batch); a run of one entry samples from ``seed`` itself."""
    if num_entries == 1:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(entry_index), _MIX_TAG]).generate_state(1)[0] >> 1)


def chunk_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of chunk ``index`` of ``step``: a 31-bit value mixed with NumPy's SeedSequence
    (no correlated streams between neighbouring steps or chunks)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(index)]).generate_state(1)[0] >> 1)


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The seed of the generate call of assistant turn ``turn`` in a rollout sampled from ``seed``."""
    return None if seed is None else (seed * 1_000_003 + turn) % (2**31)


def env_seed(seed: int, index: int) -> int:
    """Env ``index`` of a pool resets its RNG from ``env.seed + index``."""
    return seed + index


def eval_chunk_seed(base: int, benchmark: str, index: int) -> int:
    """Sampling seed of an evaluation chunk: suite seed, benchmark name and chunk position only."""
    return (base * 1_000_003 + zlib.crc32(benchmark.encode()) + index * 7_919) % _M31


def eval_reset_seed(base: int, task_index: int, sample: int) -> int:
    """The env reset seed of one (task, sample) evaluation episode (independent of chunking)."""
    return (base * 1_000_003 + task_index * 1_009 + sample) % _M31
