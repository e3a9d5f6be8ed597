"""Tokens computed and step time on a BFCL-shaped batch, each prompt's prefix run once for its samples
(after) vs the prefix plan before it (before).

    OMP_NUM_THREADS=2 python benchmarks/prefix_groups.py [--headers 40 118] [--repeats 3] [--json out.json]

The batch: every row starts with one generic system header (``--headers``: 118 tokens is BFCL's real one
under the Qwen2.5-Coder template and our system prompt; 40 the issue's example), then its prompt's own
function docs (``--prompts``: 3 prompts of 200, 275 and 350 tokens), then one of ``--samples`` replies of
20-80 tokens each (random ids; a reply starts with a token of its own).

- before: the plan as it was: the prefix every row shares if it is >= ``MIN_SHARED_PREFIX`` (64) tokens,
  else groups keyed by their first 64 tokens (reproduced here, ``plan_before``, and swapped in for that side);
- after: ``logprobs._row_groups`` (rows grouped by their longest common prefixes, the cheapest plan).

Tokens computed: what one forward over the whole batch runs through the model (a shared prefix counts
once), packed (``model.pack_sequences``, the default) and padded. Step time: one teacher scoring
(``Teacher.score``, micro-batches of ``model.teacher_batch_size``) plus one learner step (REOPOLD stage 2:
forward with entropy, backward, AdamW) with the tiny toolqa pair, both sides on their own copies, interleaved
in a rotating order after one warm-up step each; both sides' log-probs are checked equal first. The last line
prints the step-time ratio before/after for the last header.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from reopold_agents.benchmarking.load import load_average

import reopold_agents.logprobs as lp

Plan = list[tuple[list[int], int]]


@dataclass
class Case:
    """The BFCL-shaped batch: right-padded ids, the replies as the loss mask, each row's prompt."""

    header: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    prompt_of: list[int]

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def bfcl_case(header: int, prompts: list[int], samples: int, reply: tuple[int, int], vocab: int, seed: int) -> Case:
    """``len(prompts)`` prompts behind one header, ``samples`` replies each, rows in prompt order."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(10, vocab - samples, (header,), generator=g)
    rows, starts, prompt_of = [], [], []
    for p, n in enumerate(prompts):
        prompt = torch.cat([head, torch.randint(10, vocab - samples, (n,), generator=g)])
        for s in range(samples):
            tail = torch.randint(10, vocab - samples, (int(torch.randint(reply[0], reply[1] + 1, (1,), generator=g)),),
                                 generator=g)
            tail[0] = vocab - samples + s  # the samples differ from their first token
            rows.append(torch.cat([prompt, tail]))
            starts.append(len(prompt))
            prompt_of.append(p)
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask, loss = torch.zeros_like(ids), torch.zeros(len(rows), width)
    for b, (row, start) in enumerate(zip(rows, starts)):
        ids[b, : len(row)], mask[b, : len(row)], loss[b, start : len(row)] = row, 1, 1.0
    return Case(header, ids, mask, loss, prompt_of)


# ------------------------------------------------------------------ the plan before this change
def _head_groups_before(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Groups of >= 2 rows whose first ``MIN_SHARED_PREFIX`` tokens are real and agree."""
    bsz, length = ids.shape
    if bsz < 2 or length <= lp.MIN_SHARED_PREFIX:
        return []
    keys: dict[tuple[int, ...], list[int]] = {}
    for b in range(bsz):
        if bool(mask[b, : lp.MIN_SHARED_PREFIX].bool().all()):
            keys.setdefault(tuple(ids[b, : lp.MIN_SHARED_PREFIX].tolist()), []).append(b)
    return [rows for rows in keys.values() if len(rows) >= 2]


def packed_groups_before(ids: torch.Tensor, mask: torch.Tensor) -> Plan:
    """The batch-wide prefix if any, else one group per 64-token head, then the other rows with 0."""
    bsz = ids.shape[0]
    shared = lp._shared_prefix_len(ids, mask)
    if shared:
        return [(list(range(bsz)), shared)]
    plan = []
    for rows in _head_groups_before(ids, mask):
        idx = torch.tensor(rows)
        n = lp._shared_prefix_len(ids.index_select(0, idx), mask.index_select(0, idx))
        if n:
            plan.append((rows, n))
    grouped = {b for rows, _ in plan for b in rows}
    rest = [b for b in range(bsz) if b not in grouped]
    return plan + ([(rest, 0)] if rest else [])


def padded_plan_before(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[list[int], int, int]] | None:
    """The batch-wide prefix if any, else the head groups if they cost <= ``GROUPED_MAX_COST`` of B x T."""
    bsz, length = ids.shape
    shared = lp._shared_prefix_len(ids, mask)
    if shared:
        return [(list(range(bsz)), length, shared)]
    groups = _head_groups_before(ids, mask)
    if not groups:
        return None
    grouped = {b for rows in groups for b in rows}
    rest = [b for b in range(bsz) if b not in grouped]
    plan = []
    for rows in groups + ([rest] if rest else []):
        idx = torch.tensor(rows)
        sub_ids, sub_mask = ids.index_select(0, idx), mask.index_select(0, idx)
        cut = int(sub_mask.bool().any(dim=0).nonzero().max()) + 1
        plan.append((rows, cut, lp._shared_prefix_len(sub_ids[:, :cut], sub_mask[:, :cut])))
    return plan if lp._plan_cost(plan) <= lp.GROUPED_MAX_COST * bsz * length else None


@contextmanager
def planner(side: str) -> Iterator[None]:
    """``before``: the old planners in place of the current ones for the duration; ``after``: as is."""
    if side == "after":
        yield
        return
    saved = lp._packed_groups, lp._padded_plan
    lp._packed_groups, lp._padded_plan = packed_groups_before, padded_plan_before
    try:
        yield
    finally:
        lp._packed_groups, lp._padded_plan = saved


# ------------------------------------------------------------------ counting and timing
def packed_tokens(groups: Plan, mask: torch.Tensor) -> int:
    """Tokens a packed forward runs: each group's prefix once, then its rows' suffixes."""
    lengths = mask.sum(dim=1).tolist()
    return sum(shared + sum(int(lengths[b]) - shared for b in rows) for rows, shared in groups)


def tokens_computed(case: Case) -> dict[str, dict[str, int]]:
    """Per side: tokens of one whole-batch forward, packed and padded (plain: ``B x T``)."""
    ids, mask = case.input_ids, case.attention_mask
    out = {}
    for side, (packed, padded) in {"before": (packed_groups_before, padded_plan_before),
                                   "after": (lp._packed_groups, lp._padded_plan)}.items():
        plan = padded(ids, mask)
        out[side] = {"packed": packed_tokens(packed(ids, mask), mask),
                     "padded": lp._plan_cost(plan) if plan is not None else ids.numel(),
                     "groups": len([g for g in packed(ids, mask) if g[1]])}
    out["no_sharing"] = {"packed": case.tokens, "padded": ids.numel(), "groups": 0}
    return out


def same_plans(case: Case) -> bool:
    """Whether the old and the new planners pick the same plans for this batch (then nothing to time)."""
    ids, mask = case.input_ids, case.attention_mask
    return (packed_groups_before(ids, mask) == lp._packed_groups(ids, mask)
            and padded_plan_before(ids, mask) == lp._padded_plan(ids, mask))


def make_batch(case: Case, student: torch.nn.Module):
    """A Batch with the student's own old log-probs (the teacher's come from each timed step)."""
    from reopold_agents.logprobs import model_token_logprobs
    from reopold_agents.trajectory import Batch

    with torch.no_grad():
        old, _ = model_token_logprobs(student.eval(), case.input_ids, case.attention_mask, target_mask=case.loss_mask)
    bsz = case.input_ids.shape[0]
    rewards = torch.tensor([float(b % 2) for b in range(bsz)])
    return Batch(input_ids=case.input_ids, attention_mask=case.attention_mask, loss_mask=case.loss_mask,
                 old_logprobs=old, teacher_logprobs=torch.zeros_like(old), rewards=rewards,
                 group_ids=torch.tensor(case.prompt_of))


def check_equal(student: torch.nn.Module, case: Case) -> float:
    """Largest |after - before| log-prob or entropy on the replies, packed and padded (no grad)."""
    from reopold_agents.logprobs import model_token_logprobs

    worst = 0.0
    for pack in (False, True):
        out = []
        for side in ("before", "after"):
            with planner(side), torch.no_grad():
                out.append(model_token_logprobs(student, case.input_ids, case.attention_mask, with_entropy=True,
                                                target_mask=case.loss_mask, pack=pack))
        worst = max(worst, float((out[0][0] - out[1][0]).abs().max()), float((out[0][1] - out[1][1]).abs().max()))
    return worst


def time_steps(case: Case, student: torch.nn.Module, teacher: torch.nn.Module, tokenizer, repeats: int
               ) -> dict[str, dict[str, list[float]]]:
    """Seconds of the teacher's scoring and the learner's step, per side, ``repeats`` each after a warm-up."""
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.model import ModelConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner
    from reopold_agents.teacher import Teacher

    model_cfg = ModelConfig()
    batch = make_batch(case, student)
    scorer = Teacher(tokenizer, model=teacher, chunk_size=model_cfg.logprob_chunk_size,
                     batch_size=model_cfg.teacher_batch_size, pack=model_cfg.pack_sequences)
    learners = {side: Learner(copy.deepcopy(student), AlgoConfig(name="reopold"),
                              TrainerConfig(lr=1e-5, max_grad_norm=1.0, total_steps=10),
                              logprob_chunk_size=model_cfg.logprob_chunk_size, pack_sequences=model_cfg.pack_sequences)
                for side in ("before", "after")}
    times = {side: {"teacher": [], "learner": []} for side in learners}
    sides = list(learners)
    for r in range(repeats + 1):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            with planner(side):
                t0 = time.perf_counter()
                scores = scorer.score(batch)
                t1 = time.perf_counter()
                learners[side].step(_with_teacher(batch, scores.logprobs), 9)  # stage 2: entropy selection
                t2 = time.perf_counter()
            if r:  # the first round warms up
                times[side]["teacher"].append(t1 - t0)
                times[side]["learner"].append(t2 - t1)
    return times


def _with_teacher(batch, logprobs: torch.Tensor):
    import dataclasses

    return dataclasses.replace(batch, teacher_logprobs=logprobs)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--headers", type=int, nargs="+", default=[40, 118], help="header lengths (one case each)")
    ap.add_argument("--prompts", type=int, nargs="+", default=[200, 275, 350], help="each prompt's own tokens")
    ap.add_argument("--samples", type=int, default=4, help="replies per prompt (trainer.group_size)")
    ap.add_argument("--reply", type=int, nargs=2, default=(20, 80), help="reply lengths")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per side (after one warm-up)")
    ap.add_argument("--model", default="tiny_toolqa", help="a tiny pair name")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as OMP_NUM_THREADS leaves them)")
    ap.add_argument("--json", default="", help="write the raw numbers here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.samples < 2:
        ap.error("--repeats must be >= 1 and --samples >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    from reopold_agents.tiny.load import load_tiny

    student, tokenizer, _, _ = load_tiny(args.model, "student")
    teacher, _, _, _ = load_tiny(args.model, "teacher")
    student, teacher = student.float(), teacher.float()
    vocab = int(student.config.vocab_size)
    load = load_average()
    print(f"model {args.model}, {torch.get_num_threads()} torch threads, load average {load}; "
          f"{len(args.prompts)} prompts x {args.samples} samples, replies {args.reply[0]}-{args.reply[1]} tokens")
    report: dict[str, dict] = {}
    ratio = float("nan")
    for header in args.headers:
        case = bfcl_case(header, args.prompts, args.samples, tuple(args.reply), vocab, seed=header)
        diff = check_equal(student.eval(), case)
        if diff > 1e-4:
            raise SystemExit(f"header {header}: before and after log-probs differ by {diff:.2e}")
        tokens = tokens_computed(case)
        print(f"header {header}: {case.tokens} real tokens in {tuple(case.input_ids.shape)}; max |after - before| "
              f"{diff:.1e}; tokens computed per forward, packed: no sharing {tokens['no_sharing']['packed']}, before "
              f"{tokens['before']['packed']} ({tokens['before']['groups']} prefix group(s)), after "
              f"{tokens['after']['packed']} ({tokens['after']['groups']}); padded: before "
              f"{tokens['before']['padded']}, after {tokens['after']['padded']}")
        report[str(header)] = {"tokens": tokens, "max_diff": diff, "shape": list(case.input_ids.shape)}
        if same_plans(case):
            print("  the same plans before and after: not timed")
            ratio = 1.0
            report[str(header)]["ratio"] = ratio
            continue
        times = time_steps(case, student, teacher, tokenizer, args.repeats)
        med = {side: {part: statistics.median(ts) for part, ts in parts.items()} for side, parts in times.items()}
        step = {side: med[side]["teacher"] + med[side]["learner"] for side in med}
        ratio = step["before"] / step["after"]
        for side in ("before", "after"):
            print(f"  {side}: teacher {med[side]['teacher']:.3f}s + learner {med[side]['learner']:.3f}s = "
                  f"{step[side]:.3f}s (median of {args.repeats})")
        report[str(header)].update({"times": times, "median_s": med, "step_s": step, "ratio": ratio})
    end_load = load_average()
    print(f"load average at the end {end_load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load": [load, end_load], "threads": torch.get_num_threads(),
                       "cases": report}, f, indent=1)
    last = report[str(args.headers[-1])]["tokens"]
    fewer = last["before"]["packed"] / last["after"]["packed"]
    print(f"header {args.headers[-1]}: tokens computed before/after {fewer:.2f}x, step time before/after {ratio:.2f}x")
    return ratio


if __name__ == "__main__":
    main()
