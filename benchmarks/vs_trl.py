"""Learner throughput vs TRL: one on-policy distillation training step on the same batch, on CPU.

Same tiny Qwen2 student (hidden 64, 2 layers) and teacher (hidden 128, 4 layers) as the ``tiny``
model pair, same seeds, same batch of student samples (real math-env chat prompts + completions the
student sampled, fixed completion length), same optimiser (torch AdamW, lr 1e-5, grad-norm clip 1.0).
Generation is EXCLUDED on every side: the samples are generated once up front and every side is handed
the same token ids. What one timed step computes:

* ``reopold`` (ours): teacher scoring (teacher forward, sampled-token log-probs, chunked) + collate +
  ``Learner.step`` (student forward with chunked sampled-token log-probs and entropy, REOPOLD loss with
  clipping + entropy token selection, backward, AdamW step). The loss needs only log pi(y_t) of the
  sampled token: no [tokens x vocab] tensor is kept.
* ``trl_gkd``: ``trl.experimental.gkd.GKDTrainer.training_step`` with beta=1 (reverse KL) on the same
  student samples (the lmbda=1 data; lmbda is set to 0 here only so TRL does not regenerate) + AdamW
  step. It computes the full-vocabulary KL per token from full student and teacher logits.
* ``trl_distill``: ``trl.DistillationTrainer.training_step`` (TRL's own on-policy distillation
  trainer, beta=1 reverse KL, chunked full-vocabulary divergence) + AdamW step; its generation hook is
  replaced by an adapter that returns the pre-generated batch.

So the sides do NOT compute the same loss: TRL's trainers match the teacher's whole next-token
distribution at every position (a dense signal, ~V times more loss arithmetic); REOPOLD/OPD is a
policy gradient on the sampled token's log-ratio. The comparison is "one learner step of each
framework's on-policy distillation objective", which is what a user choosing between them runs.

Time per sample = step wall time / batch size; median over ``--repeats`` steps after one warm-up step
per side, sides interleaved in a rotating order, in this process (allocator as a user runs it). Peak
memory = peak RSS during a step (VmHWM, reset via /proc/self/clear_refs before each step) minus the RSS
just before it, measured afterwards in a child process with ``MALLOC_MMAP_THRESHOLD_`` pinned so that
freed tensors go back to the OS between steps (else one side's freed heap hides the next one's peak).

    python benchmarks/vs_trl.py                       # Qwen's real vocabulary (151,657), ~2-4 min
    python benchmarks/vs_trl.py --vocab 0             # the project tokenizer's own vocabulary (1,030)

The last line is the time-per-sample and peak-memory ratio ours / TRL's DistillationTrainer (goals <= 0.4x
and <= 0.5x).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from reopold_agents.benchmarking.trl_config import trl_args

QWEN_VOCAB = 151_657
SIDES = ("reopold", "trl_gkd", "trl_distill")
TIME_GOAL, MEMORY_GOAL = 0.4, 0.5  # ours / trl_distill, time per sample and peak extra memory
STUDENT = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
TEACHER = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256)


# ----------------------------------------------------------------------------------------- memory
def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


def _reset_hwm() -> bool:
    """Reset the peak-RSS counter to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ setup
@dataclass
class Sample:
    """One student sample: prompt ids (chat template up to the assistant header) + completion ids."""

    prompt: list[int]
    completion: list[int]


def _models(vocab: int, seed: int):
    """Tokenizer, student and teacher (fp32, train-mode-ready); ``vocab`` 0 keeps the tokenizer's size."""
    import torch
    from transformers import Qwen2ForCausalLM

    from reopold_agents.tiny import build_tokenizer, tiny_qwen2_config

    tok = build_tokenizer()
    size = vocab or len(tok)
    if size < len(tok):
        raise ValueError(f"--vocab {vocab} is smaller than the tokenizer ({len(tok)} ids)")

    def build(spec: dict, s: int):
        cfg = tiny_qwen2_config(tok, **spec)
        cfg.vocab_size = size  # Qwen-sized output layer; ids >= len(tok) are simply never sampled
        torch.manual_seed(s)
        m = Qwen2ForCausalLM(cfg)
        m.generation_config.eos_token_id = tok.eos_token_id
        m.generation_config.pad_token_id = tok.pad_token_id
        return m

    return tok, build(STUDENT, seed), build(TEACHER, seed + 1)


def make_samples(tok, student, batch: int, completion_tokens: int, seed: int) -> list[Sample]:
    """Real math-env prompts; completions sampled from ``student`` restricted to the tokenizer's ids."""
    import torch

    import reopold_agents as ra
    from reopold_agents.chat import encode_prompt

    env = ra.make_env("math", seed=seed)
    samples = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(batch):
        obs, info = env.reset(seed=seed * 1000 + i)
        prompt = list(encode_prompt(tok, obs["messages"], info.get("tools") or None).ids)
        ids = torch.tensor([prompt])
        out: list[int] = []
        with torch.no_grad():  # plain ancestral sampling without KV cache: short, and exactly reproducible
            past = None
            cur = ids
            for _ in range(completion_tokens):
                res = student(input_ids=cur, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1, : len(tok)].float()
                nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
                out.append(nxt)
                cur = torch.tensor([[nxt]])
        samples.append(Sample(prompt, out))
    env.close()
    return samples


# ------------------------------------------------------------------------------------------ sides
class OursStep:
    """``reopold_agents.step.train_step`` (collate + teacher scoring + mask check + ``Learner.step``; REOPOLD
    stage 2: clipping + entropy selection) on fixed samples instead of a fresh rollout."""

    def __init__(self, tok, student, teacher, samples: list[Sample], args: argparse.Namespace) -> None:
        import torch

        from reopold_agents.config.algo import AlgoConfig
        from reopold_agents.config.trainer import TrainerConfig
        from reopold_agents.distributed.backend import ChunkedRolloutStats
        from reopold_agents.learner import Learner
        from reopold_agents.logprobs import model_token_logprobs
        from reopold_agents.teacher import Teacher
        from reopold_agents.trajectory import Trajectory

        self.model = student
        trainer = TrainerConfig(lr=1e-5, max_grad_norm=1.0, total_steps=10)
        self.learner = Learner(student, AlgoConfig(name=args.algo), trainer, logprob_chunk_size=args.chunk)
        self.teacher = Teacher(tok, model=teacher.eval(), chunk_size=args.chunk, batch_size=len(samples))
        self.pad_token_id = tok.pad_token_id
        # rollout log-probs = the student's own log-probs of its samples (what the engine records)
        self.base: list[Trajectory] = []
        for s in samples:
            t = Trajectory()
            t.append_env(s.prompt)
            ids = torch.tensor([s.prompt + s.completion])
            with torch.no_grad():
                lp, _ = model_token_logprobs(student.eval(), ids, torch.ones_like(ids), chunk_size=args.chunk)
            t.append_generated(s.completion, lp[0, len(s.prompt):].tolist())
            self.base.append(t)
        self.stats = ChunkedRolloutStats(episodes=len(self.base))
        self.step_index = 9  # stage 2 of 10 steps: entropy selection active (the heavier rule)

    # the three backend calls the step makes, all in this process
    def score(self, batch):
        return self.teacher.score(batch)

    def update(self, batch, step: int):
        return self.learner.step(batch, step), 0

    def sync_weights(self) -> int:
        return 0

    def result(self):  # the "rollout handle": the fixed samples
        return [copy.copy(t) for t in self.base]

    def __call__(self) -> float:
        import time

        from reopold_agents.step import train_step

        return train_step(self, self, self.step_index, time.perf_counter()).metrics["loss"]


class _TRLStep:
    """``trainer.training_step`` (forward + loss + backward inside TRL) + clip + AdamW step + zero_grad."""

    trainer: Any
    inputs: Callable[[], dict]

    def _init_opt(self) -> None:
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we do not run
        self.model = self.trainer.model

    def __call__(self) -> float:
        import torch

        self.model.train()
        loss = self.trainer.training_step(self.model, self.inputs(), None)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.trainer.optimizer.step()
        self.trainer.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        return float(loss)


class TRLGKDStep(_TRLStep):
    """GKD (beta=1: reverse KL over the full vocabulary) on the pre-generated student samples."""

    def __init__(self, tok, student, teacher, samples: list[Sample], args: argparse.Namespace, outdir: str) -> None:
        import torch
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        cfg = trl_args(GKDConfig, outdir, len(samples), lmbda=0.0, beta=1.0, seq_kd=False, temperature=1.0,
                        max_new_tokens=args.completion_tokens)
        dummy = Dataset.from_list([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}])
        self.trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=dummy, processing_class=tok)
        width = max(len(s.prompt) + len(s.completion) for s in samples)
        ids = torch.full((len(samples), width), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, s in enumerate(samples):
            n, p = len(s.prompt) + len(s.completion), len(s.prompt)
            ids[i, :n] = torch.tensor(s.prompt + s.completion)
            att[i, :n] = 1
            labels[i, p:n] = torch.tensor(s.completion)
        self.batch = {"input_ids": ids, "attention_mask": att, "labels": labels}
        self.inputs = lambda: dict(self.batch)
        self._init_opt()


class TRLDistillStep(_TRLStep):
    """TRL's DistillationTrainer (beta=1, chunked full-vocab divergence); generation replaced by the batch."""

    def __init__(self, tok, student, teacher, samples: list[Sample], args: argparse.Namespace, outdir: str) -> None:
        import torch
        from datasets import Dataset
        from trl import DistillationConfig, DistillationTrainer

        left = copy.deepcopy(tok)
        left.padding_side = "left"
        pad = tok.pad_token_id
        p_w = max(len(s.prompt) for s in samples)
        c_w = max(len(s.completion) for s in samples)
        prompt_ids = torch.full((len(samples), p_w), pad, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        comp_ids = torch.full((len(samples), c_w), pad, dtype=torch.long)
        comp_mask = torch.zeros_like(comp_ids)
        for i, s in enumerate(samples):
            prompt_ids[i, p_w - len(s.prompt):] = torch.tensor(s.prompt)
            prompt_mask[i, p_w - len(s.prompt):] = 1
            comp_ids[i, : len(s.completion)] = torch.tensor(s.completion)
            comp_mask[i, : len(s.completion)] = 1
        generated = {
            "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp_ids,
            "completion_mask": comp_mask, "num_items_in_batch": comp_mask.sum(),
        }

        class _Pregenerated(DistillationTrainer):  # adapter: the generation hook returns our fixed batch
            def _generate_and_score_completions(self, inputs):  # noqa: ARG002
                return {k: v.clone() for k, v in generated.items()}

        cfg = trl_args(DistillationConfig, outdir, len(samples), beta=1.0, temperature=1.0,
                        max_completion_length=args.completion_tokens)
        dummy = Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}]}] * len(samples))
        self.trainer = _Pregenerated(model=student, teacher_model=teacher, args=cfg, train_dataset=dummy,
                                     processing_class=left)
        rows = [{"prompt": [{"role": "user", "content": "x"}]}] * len(samples)
        self.inputs = lambda: list(rows)
        self._init_opt()


def build_side(name: str, args: argparse.Namespace, samples: list[Sample], outdir: str):
    tok, student, teacher = _models(args.vocab, args.seed)
    if name == "reopold":
        return OursStep(tok, student, teacher, samples, args)
    if name == "trl_gkd":
        return TRLGKDStep(tok, student, teacher, samples, args, outdir)
    if name == "trl_distill":
        return TRLDistillStep(tok, student, teacher, samples, args, outdir)
    raise ValueError(f"unknown side {name!r}; choose from {SIDES}")


# ------------------------------------------------------------------------------------------- runs
def measure(args: argparse.Namespace, emit: Callable[[str], None] = print, memory: bool = False) -> dict[str, dict]:
    """Build every side, warm each up once, then run ``repeats`` interleaved steps (rotating order).

    ``memory=False``: wall time per step. ``memory=True``: peak RSS above the pre-step RSS per step
    (run it in a process with ``MALLOC_MMAP_THRESHOLD_`` pinned, see ``main``)."""
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    tok, student, _ = _models(args.vocab, args.seed)
    samples = make_samples(tok, student, args.batch, args.completion_tokens, args.seed)
    if not memory:
        tokens = sum(len(s.prompt) + len(s.completion) for s in samples)
        emit(f"batch: {len(samples)} samples, {tokens} tokens ({sum(len(s.completion) for s in samples)} completion), "
             f"vocab {args.vocab or len(tok)}, threads {args.threads}, generation excluded")
    sides = list(args.sides)
    repeats = args.mem_repeats if memory else args.repeats
    values: dict[str, list[float]] = {n: [] for n in sides}
    with tempfile.TemporaryDirectory() as outdir:
        steps = {name: build_side(name, args, samples, outdir) for name in sides}
        for name in sides:
            steps[name]()  # warm-up: lazy inits, optimizer state
        for r in range(repeats):
            order = sides[r % len(sides):] + sides[: r % len(sides)]  # rotate who goes first
            for name in order:
                if memory:
                    if not _reset_hwm():
                        raise RuntimeError("cannot reset the peak-RSS counter (/proc/self/clear_refs)")
                    base = _rss_kib()
                    steps[name]()
                    values[name].append(max(_hwm_kib() - base, 0) / 1024)
                else:
                    start = time.perf_counter()
                    steps[name]()
                    values[name].append(time.perf_counter() - start)
    if memory:
        return {n: {"peak_mib": statistics.median(v), "peak_mib_all": v} for n, v in values.items()}
    return {
        n: {"step_s": statistics.median(v), "per_sample_ms": 1000 * statistics.median(v) / len(samples), "step_s_all": v}
        for n, v in values.items()
    }


def measure_memory_child(argv: list[str]) -> dict[str, dict]:
    """Run the memory phase in a child process whose allocator returns freed tensors to the OS."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--memory-child", f.name]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(f.name) as g:
            return json.load(g)


def report(res: dict[str, dict], args: argparse.Namespace, emit: Callable[[str], None] = print) -> float:
    """Print the table and the ratios; the last line is the ratio vs TRL's DistillationTrainer and the goals."""
    emit(f"{'side':<12} {'ms/sample':>10} {'step s':>8} {'peak MiB':>9}   "
         f"(time: median of {args.repeats}, memory: median of {args.mem_repeats})")
    for name, r in res.items():
        emit(f"{name:<12} {r['per_sample_ms']:>10.1f} {r['step_s']:>8.3f} {r['peak_mib']:>9.1f}")
    ours = res["reopold"]
    trl = {k: v for k, v in res.items() if k != "reopold"}
    for name, r in trl.items():
        mem = ours["peak_mib"] / r["peak_mib"] if r["peak_mib"] > 0 else float("nan")
        emit(f"ratio reopold/{name}: time per sample {ours['per_sample_ms'] / r['per_sample_ms']:.3f}x, "
             f"peak memory {mem:.3f}x")
    # The goal is against TRL's own on-policy distillation trainer; without it, the faster TRL side.
    goal = "trl_distill" if "trl_distill" in trl else min(trl, key=lambda k: trl[k]["per_sample_ms"])
    ratio = ours["per_sample_ms"] / trl[goal]["per_sample_ms"]
    mem = ours["peak_mib"] / trl[goal]["peak_mib"] if trl[goal]["peak_mib"] > 0 else float("nan")
    met = ratio <= TIME_GOAL and (mem != mem or mem <= MEMORY_GOAL)  # memory nan: not measured (--mem-repeats 0)
    emit(f"ratio reopold vs {goal}: time per sample {ratio:.3f}x (goal <= {TIME_GOAL}), peak memory {mem:.3f}x "
         f"(goal <= {MEMORY_GOAL}): {'OK' if met else 'ABOVE GOAL'}")
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=QWEN_VOCAB, help="model vocabulary (0: the tokenizer's, 1,030)")
    p.add_argument("--batch", type=int, default=8, help="samples per step")
    p.add_argument("--completion-tokens", type=int, default=64, help="sampled tokens per sample")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side (after one warm-up)")
    p.add_argument("--mem-repeats", type=int, default=1, help="memory-measured steps per side (0: skip memory)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="our trainer.logprob_chunk_size")
    p.add_argument("--algo", default="reopold", choices=["reopold", "opd"], help="our objective")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the medians here")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if "reopold" not in args.sides or len(args.sides) < 2:
        p.error("--sides needs 'reopold' and at least one TRL side")
    for key in ("batch", "completion_tokens", "repeats", "threads", "chunk"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> float:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        with open(args.memory_child, "w") as f:
            json.dump(measure(args, memory=True), f)
        return float("nan")
    res = measure(args)
    if args.mem_repeats > 0:
        for name, mem in measure_memory_child(argv).items():
            res[name].update(mem)
    else:
        for r in res.values():
            r["peak_mib"] = float("nan")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": res}, f, indent=1)
    return report(res, args)


if __name__ == "__main__":
    main()
