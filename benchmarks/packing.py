"""Learner tokens/s with padding-free (packed) batches vs padded ones, on toolqa-like mixed lengths; the
goal is >= 1.5x.

    OMP_NUM_THREADS=2 python benchmarks/packing.py [--rows 16] [--repeats 3] [--json out.json]

The toolqa test-bed student (``tiny_toolqa_bed``: Qwen2, hidden 128, 4 layers) takes one timed
``Learner.step`` (REOPOLD in stage 2: forward with entropy, token selection, clipped loss, backward, AdamW)
on two batches, each side with its own copy of the model, the sides interleaved in a rotating order:

- ``mixed`` (the goal's batch): half the rows 700-780 tokens (toolqa episodes), half short (60-300:
  a short task's prompt and answer), no prefix shared by all rows, the last 30% of each row trained;
- ``toolqa``: every row the real toolqa prompt (system prompt and tool schemas, ~630 shared tokens)
  and a suffix of 10-30 tokens (answered at once) or 72-152 (a few tool calls: 700-780 in all), the
  suffix trained. The padded side already runs the shared prompt once (KV cache); packed, the suffixes
  are packed too.

Both sides must give the same log-probs (checked before timing). Tokens/s = real tokens / step seconds;
the last line prints the ratios of the medians, the ``mixed`` one first.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass

import torch

from reopold_agents.benchmarking.load import load_average


@dataclass
class Case:
    """One benchmark batch: right-padded ids and the trained positions."""

    name: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def _rows_to_case(name: str, rows: list[torch.Tensor], trained_from: list[int]) -> Case:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    loss = torch.zeros(len(rows), width)
    for b, (row, start) in enumerate(zip(rows, trained_from)):
        ids[b, : len(row)], mask[b, : len(row)], loss[b, start : len(row)] = row, 1, 1.0
    return Case(name, ids, mask, loss)


def mixed_case(rows: int, long: tuple[int, int], short: tuple[int, int], vocab: int, seed: int) -> Case:
    """Half long rows, half short ones, interleaved, random ids (no shared prefix)."""
    g = torch.Generator().manual_seed(seed)
    lengths = []
    for b in range(rows):
        lo, hi = long if b % 2 == 0 else short
        lengths.append(int(torch.randint(lo, hi + 1, (1,), generator=g)))
    seqs = [torch.randint(10, vocab, (n,), generator=g) for n in lengths]
    return _rows_to_case("mixed", seqs, [int(n * 0.7) for n in lengths])


def toolqa_case(rows: int, prompt: list[int], short: tuple[int, int], long: tuple[int, int], vocab: int,
                seed: int) -> Case:
    """The real toolqa prompt in front of every row, then a short or long suffix (trained)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.tensor(prompt)
    seqs = []
    for b in range(rows):
        lo, hi = long if b % 2 == 0 else short
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        seqs.append(torch.cat([head, torch.randint(10, vocab, (n,), generator=g)]))
    return _rows_to_case("toolqa", seqs, [len(prompt)] * rows)


def toolqa_prompt(tokenizer, limit: int | None) -> list[int]:
    """The first turn of a toolqa episode (system prompt, tool schemas, question) in the student's ids."""
    import reopold_agents as ra

    env = ra.make_env("toolqa", seed=0)
    obs, _ = env.reset(options={"task_index": 0})
    text = tokenizer.apply_chat_template(obs["messages"], tools=env.tool_specs(), tokenize=False,
                                         add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:limit] if limit else ids


def make_batch(case: Case, model: torch.nn.Module):
    """A scored Batch: old log-probs from the model itself, the teacher's a little off them."""
    from reopold_agents.logprobs import model_token_logprobs
    from reopold_agents.trajectory import Batch

    with torch.no_grad():
        old, _ = model_token_logprobs(model.eval(), case.input_ids, case.attention_mask, target_mask=case.loss_mask)
    g = torch.Generator().manual_seed(1)
    teacher = (old + 0.3 * torch.randn(old.shape, generator=g)) * case.loss_mask
    bsz = case.input_ids.shape[0]
    return Batch(input_ids=case.input_ids, attention_mask=case.attention_mask, loss_mask=case.loss_mask,
                 old_logprobs=old, teacher_logprobs=teacher, rewards=torch.zeros(bsz), group_ids=torch.arange(bsz))


def check_equal(model: torch.nn.Module, case: Case) -> float:
    """Largest |packed - padded| log-prob on the trained tokens (no grad)."""
    from reopold_agents.logprobs import model_token_logprobs

    with torch.no_grad():
        out = [model_token_logprobs(model, case.input_ids, case.attention_mask, target_mask=case.loss_mask,
                                    with_entropy=True, pack=pack) for pack in (False, True)]
    return max(float((out[0][0] - out[1][0]).abs().max()), float((out[0][1] - out[1][1]).abs().max()))


def time_case(model: torch.nn.Module, case: Case, repeats: int) -> dict[str, list[float]]:
    """Seconds of each timed learner step per side (one warm-up step each first)."""
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner

    batch = make_batch(case, model)
    learners = {}
    for side in ("padded", "packed"):
        trainer = TrainerConfig(lr=1e-5, max_grad_norm=1.0, total_steps=10)
        learners[side] = Learner(copy.deepcopy(model), AlgoConfig(name="reopold"), trainer,
                                 logprob_chunk_size=1024, pack_sequences=side == "packed")
    times: dict[str, list[float]] = {side: [] for side in learners}
    sides = list(learners)
    for r in range(repeats + 1):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            start = time.perf_counter()
            learners[side].step(batch, 9)  # stage 2: entropy selection active
            if r:  # the first round warms up
                times[side].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="sequences per learner step")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per side (after one warm-up)")
    ap.add_argument("--long", type=int, nargs=2, default=(700, 780), help="mixed: long row lengths")
    ap.add_argument("--short", type=int, nargs=2, default=(60, 300), help="mixed: short row lengths")
    ap.add_argument("--suffix-short", type=int, nargs=2, default=(10, 30), help="toolqa: short suffix lengths")
    ap.add_argument("--suffix-long", type=int, nargs=2, default=(72, 152), help="toolqa: long suffix lengths")
    ap.add_argument("--prompt-limit", type=int, default=0, help="toolqa: cut the prompt to this many tokens (0: whole)")
    ap.add_argument("--model", default="tiny_toolqa_bed", help="a tiny pair name (its student)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as OMP_NUM_THREADS leaves them)")
    ap.add_argument("--cases", nargs="+", choices=("mixed", "toolqa"), default=["mixed", "toolqa"],
                    help="which batches to time (mixed: the goal's)")
    ap.add_argument("--json", default="", help="write the raw numbers here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.rows < 2:
        ap.error("--repeats must be >= 1 and --rows >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    from reopold_agents.tiny.load import load_tiny

    model, tokenizer, _, _ = load_tiny(args.model, "student")
    model = model.float()
    vocab = int(model.config.vocab_size)
    cases = []
    if "mixed" in args.cases:
        cases.append(mixed_case(args.rows, tuple(args.long), tuple(args.short), vocab, seed=0))
    if "toolqa" in args.cases:
        prompt = toolqa_prompt(tokenizer, args.prompt_limit or None)
        cases.append(toolqa_case(args.rows, prompt, tuple(args.suffix_short), tuple(args.suffix_long), vocab, seed=0))
    load = load_average()
    print(f"model {args.model} student, {torch.get_num_threads()} torch threads, load average {load}, "
          f"{args.rows} rows per step, {args.repeats} timed steps per side")
    ratios: dict[str, float] = {}
    report: dict[str, dict] = {}
    for case in cases:
        diff = check_equal(model.eval(), case)
        if diff > 1e-4:
            raise SystemExit(f"{case.name}: packed and padded log-probs differ by {diff:.2e}")
        times = time_case(model, case, args.repeats)
        med = {side: statistics.median(ts) for side, ts in times.items()}
        rate = {side: case.tokens / med[side] for side in med}
        ratios[case.name] = rate["packed"] / rate["padded"]
        padded_slots = case.input_ids.numel()
        print(f"{case.name}: {case.tokens} real tokens in a {tuple(case.input_ids.shape)} padded batch "
              f"({100 * case.tokens / padded_slots:.0f}% real); max |packed - padded| {diff:.1e}; median step "
              f"padded {med['padded']:.3f}s ({rate['padded']:.0f} tok/s), packed {med['packed']:.3f}s "
              f"({rate['packed']:.0f} tok/s): {ratios[case.name]:.2f}x")
        report[case.name] = {"tokens": case.tokens, "shape": list(case.input_ids.shape), "times": times,
                             "median_s": med, "tokens_per_s": rate, "ratio": ratios[case.name], "max_diff": diff}
    end_load = load_average()
    print(f"load average at the end {end_load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load": [load, end_load], "threads": torch.get_num_threads(),
                       "cases": report}, f, indent=1)
    parts = []
    if "mixed" in ratios:
        parts.append(f"mixed {ratios['mixed']:.2f}x (goal >= 1.5x: {'met' if ratios['mixed'] >= 1.5 else 'MISSED'})")
    if "toolqa" in ratios:
        parts.append(f"toolqa shared prompt {ratios['toolqa']:.2f}x")
    print("learner tokens/s packed/padded: " + ", ".join(parts))
    return ratios


if __name__ == "__main__":
    main()
