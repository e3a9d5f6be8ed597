"""Where does the teacher reject a student's BFCL reply, and what does REOPOLD's stage-1 rule do there?

Issue 25, item 5: the 0.5B student answers a parallel task with one call and stops; the 1.5B teacher writes
the next call. The token where the reply stops (the fence's close, or the end of turn) is the one that
decides the task. This script reads the student's own replies from an `evaluate` run (samples.jsonl),
rebuilds each prompt as the BFCL env renders it, scores every reply token with both models and reports,
per reply, the token with the lowest token reward r_t = log pi_T - log pi_S (REOPOLD's step 1), whether it
is below the mixture floor log(lambda / (1 - lambda)) (stage 1's default rule `reward_floor` drops such a
token from the update; `stage1_rule=all` keeps it with its reward raised to the floor), and the teacher's
top candidates there (what the forward top-k term of `reopold_topk_forward` pulls up).

    python benchmarks/decisive_token.py /work/bfcl_eval/qwen2.5-coder-0.5b-instruct/samples.jsonl \
        --categories parallel,parallel_multiple --limit 40

The replies are re-tokenised from their text (greedy replies; a re-tokenisation can differ from the ids
the engine sampled, but scores the same text). Last line: the share of replies whose decisive token the
default stage-1 rule drops.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.bfcl import BFCLEnv
from reopold_agents.chat import encode_prompt
from reopold_agents.models import load_model
from reopold_agents.objectives.reopold import clip_floor, select_top_entropy
from tasks.bfcl import load_bfcl


@dataclass
class Decisive:
    """One reply's lowest-reward token."""

    task_id: str
    position: int  # index within the reply's tokens
    reply_tokens: int
    token: str
    reward: float
    teacher_top: list[tuple[str, float]]  # the teacher's top candidates there: (text, probability)
    below_floor: bool
    is_last_content: bool  # the fence's close or the end of turn: where the reply stops
    student_entropy: float
    entropy_selected: bool  # in the reply's top-beta tokens by student entropy (stage 2's rule, per reply)
    stop_reward: float  # r_t at the token where the reply stops, whether or not it is the lowest
    stop_teacher_top: list[tuple[str, float]]


def reply_scores(model: torch.nn.Module, ids: list[int], start: int, k: int) -> tuple[torch.Tensor, ...]:
    """log p of each reply token (positions ``start..``), the top-k (log-probs, ids) and the entropy before each."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, start - 1 : len(ids) - 1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(ids[start:])
    top = logp.topk(k, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, target[:, None])[:, 0], top.values, top.indices, entropy


def main(argv: list[str] | None = None) -> list[Decisive]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="an evaluate run's samples.jsonl (the student's replies)")
    parser.add_argument("--categories", default="parallel,parallel_multiple")
    parser.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--limit", type=int, default=40, help="replies per category at most")
    parser.add_argument("--clip-lambda", type=float, default=0.2, help="algo.clip_lambda")
    parser.add_argument("--beta", type=float, default=0.5, help="algo.beta (stage 2 keeps this share by entropy)")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every reply's decisive token here")
    args = parser.parse_args(argv)

    categories = args.categories.split(",")
    rows = [json.loads(line) for line in args.samples.read_text().splitlines() if line.strip()]
    picked: list[dict] = []
    for cat in categories:
        picked += [r for r in rows if r["benchmark"] == cat and not r["correct"]][: args.limit]
    tasks = {t.id: t for cat in categories for t in load_bfcl(cat, split="heldout")}
    student, teacher = load_model(args.student, "student"), load_model(args.teacher, "teacher")
    tok = student.tokenizer
    eos = int(tok.eos_token_id)  # the end of turn (<|im_end|> for the Qwen pair)
    floor = clip_floor(args.clip_lambda)
    env = BFCLEnv(list(tasks.values()))
    found: list[Decisive] = []
    for n, row in enumerate(picked, 1):
        obs, info = env.reset(options={"task": tasks[row["task_id"]]})
        prompt = encode_prompt(tok, obs["messages"], info["tools"]).ids
        reply = list(tok(row["response"], add_special_tokens=False)["input_ids"]) + [eos]
        ids = prompt + reply
        lp_s, _, _, entropy = reply_scores(student.model, ids, len(prompt), args.top)
        lp_t, top_t, top_ids, _ = reply_scores(teacher.model, ids, len(prompt), args.top)
        reward = lp_t - lp_s
        pos = int(reward.argmin())
        last_content = len(reply) - 1 if not row["response"].rstrip().endswith("```") else len(reply) - 2
        text = tok.decode([reply[pos]])
        selected = select_top_entropy(entropy[None], torch.ones(1, len(reply)), args.beta)[0]  # stage 2's rule

        def teacher_top(t: int) -> list[tuple[str, float]]:
            return [(tok.decode([int(i)]), math.exp(float(v))) for v, i in zip(top_t[t], top_ids[t])]

        found.append(Decisive(
            task_id=row["task_id"], position=pos, reply_tokens=len(reply), token=text, reward=float(reward[pos]),
            teacher_top=teacher_top(pos),
            below_floor=float(reward[pos]) < floor, is_last_content=pos >= last_content,
            student_entropy=float(entropy[pos]),
            entropy_selected=bool(selected[pos]), stop_reward=float(reward[last_content]),
            stop_teacher_top=teacher_top(last_content)))
        d = found[-1]
        print(f"[{n}/{len(picked)}] {d.task_id}: token {d.position}/{d.reply_tokens} {d.token!r} r={d.reward:.2f} "
              f"{'< floor' if d.below_floor else '>= floor'}, H={d.student_entropy:.2f} "
              f"{'kept' if d.entropy_selected else 'dropped'} by entropy; teacher top "
              + ", ".join(f"{t!r} {p:.2f}" for t, p in d.teacher_top), flush=True)
    if args.json:
        args.json.write_text(json.dumps([d.__dict__ for d in found], indent=1))
    stop = [d for d in found if d.is_last_content]
    below = [d for d in found if d.below_floor]
    print(f"\n{len(found)} wrong replies ({', '.join(categories)}); floor log(lambda/(1-lambda)) = {floor:.3f}")
    print(f"lowest-reward token is where the reply stops (fence close / end of turn): {len(stop)}/{len(found)}")
    if found:
        print(f"at the stop token of every reply: reward median {statistics.median(d.stop_reward for d in found):.2f}, "
              f"below the floor {sum(d.stop_reward < floor for d in found)}/{len(found)}")
        print(f"lowest-reward token's reward: median {statistics.median(d.reward for d in found):.2f} "
              f"(range {min(d.reward for d in found):.2f} .. {max(d.reward for d in found):.2f})")
        kept = [d for d in found if d.entropy_selected]
        print(f"stage 2 (top {args.beta:g} by student entropy, per reply) keeps it: {len(kept)}/{len(found)}")
        print(f"stage 1 (`reward_floor`, the default) drops it: {len(below)}/{len(found)} = {len(below) / len(found):.2f}")
    return found


if __name__ == "__main__":
    main()
