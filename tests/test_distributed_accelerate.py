"""AccelerateLearner: gradient accumulation and mixed precision change how, never what, it optimises."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.distributed import DistributedConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.accelerate_learner import AccelerateLearner, learner_strategy
from reopold_agents.learner import Learner
from reopold_agents.tiny import build_tokenizer, tiny_qwen2
from reopold_agents.trajectory import Trajectory, collate


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one state per process; each test here builds its own with other settings."""
    from accelerate.state import AcceleratorState

    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


LABELS = ("teacher_a", "teacher_b", "teacher_a", "teacher_b", "teacher_b", "teacher_a")  # routed teacher per row


def _episodes(tok, seed: int = 0) -> tuple[list[Trajectory], list[list[float]]]:
    """Six trajectories of varying lengths (prompt tokens with mask 0, generated tokens with log-probs) and
    each one's teacher log-probs (0 off the student's tokens)."""
    g = torch.Generator().manual_seed(seed)
    trajs, teacher = [], []
    vocab = len(tok)
    for i in range(6):
        t = Trajectory(group_id=i // 2)
        t.append_env(torch.randint(10, vocab, (3 + i % 3,), generator=g).tolist())
        n = 4 + (i * 3) % 5
        t.append_generated(torch.randint(10, vocab, (n,), generator=g).tolist(),
                           (-torch.rand(n, generator=g) * 3 - 4).tolist())
        teacher.append([0.0 if m == 0 else float(-torch.rand(1, generator=g) * 8) for m in t.loss_mask])
        t.reward = float(i % 2)
        trajs.append(t)
    return trajs, teacher


def _scored(trajs: list[Trajectory], teacher: list[list[float]], labels: tuple[str, ...], pad: int):
    """The collated batch with the teacher's scores written in, as a routed teacher's TeacherScores would."""
    from reopold_agents.teacher import TeacherScores

    batch = collate(trajs, pad)
    scores = TeacherScores.empty(batch.loss_mask)
    for b, row in enumerate(teacher):
        scores.logprobs[b, : len(row)] = torch.tensor(row)
    scores.labels = list(labels)
    return scores.apply_to(batch)


def _batch(tok, seed: int = 0):
    trajs, teacher = _episodes(tok, seed)
    return _scored(trajs, teacher, LABELS, tok.pad_token_id)


def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("aggregation,rule", [("token_mean", "entropy"), ("seq_mean", "all")])
def test_grad_accumulation_matches_one_pass(aggregation, rule):
    tok = build_tokenizer()
    algo = AlgoConfig(aggregation=aggregation, stage_switch=0.0, stage2_rule=rule)
    trainer = TrainerConfig(lr=1e-2, total_steps=4, max_grad_norm=0.5)
    batch = _batch(tok)

    ref_model = tiny_qwen2(tok, seed=1)
    ref = Learner(ref_model, algo, trainer)
    ref_metrics = [ref.step(batch, s) for s in range(2)]

    model = tiny_qwen2(tok, seed=1)
    acc = AccelerateLearner(model, algo, trainer, DistributedConfig(grad_accumulation=3))
    metrics = [acc.step(batch, s) for s in range(2)]

    # lr=1e-2: a wrong accumulation weight would move params by ~1e-2, float noise moves them <1e-4
    assert torch.allclose(_params(acc.unwrapped), _params(ref_model), atol=1e-4, rtol=0)  # Adam turns float noise in ~0 grads into <=1e-4
    for m, r in zip(metrics, ref_metrics):
        assert m["loss"] == pytest.approx(r["loss"], rel=1e-4, abs=1e-6)
        assert m["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-4)
        assert m["num_selected"] == r["num_selected"]
        assert m["grad_accumulation"] == 3.0
    # the update did something (so the equality above is not vacuous)
    assert not torch.allclose(_params(acc.unwrapped), _params(tiny_qwen2(tok, seed=1)))


def test_bf16_autocast_runs_and_stays_close():
    tok = build_tokenizer()
    algo = AlgoConfig(stage_switch=0.0, stage2_rule="all")
    trainer = TrainerConfig(lr=1e-3, total_steps=2)
    batch = _batch(tok, seed=3)
    ref = Learner(tiny_qwen2(tok, seed=2), algo, trainer).step(batch, 0)
    acc = AccelerateLearner(tiny_qwen2(tok, seed=2), algo, trainer, DistributedConfig(mixed_precision="bf16"))
    assert acc.accelerator.mixed_precision == "bf16"
    m = acc.step(batch, 0)
    assert m["skipped"] == 0.0
    assert m["loss"] == pytest.approx(ref["loss"], abs=0.05, rel=0.05)  # bf16 rounding, same objective


def _opt_tensors(learner):
    state = learner.optimizer.state_dict()["state"]
    return {(k, name): torch.as_tensor(v).clone() for k, s in state.items() for name, v in s.items()}


def test_nonfinite_minibatch_rolls_back_the_step_under_accumulation():
    """Under accelerate too, a NaN in the 2nd minibatch (its 1st micro-batch) rolls back the 1st minibatch:
    parameters and optimiser state as before the step; an all-NaN batch is one non-finite skip."""
    tok = build_tokenizer()
    algo = AlgoConfig(stage_switch=0.0, stage2_rule="all")
    trainer = TrainerConfig(lr=1e-2, total_steps=4, num_minibatches=2)
    batch = _batch(tok)
    acc = AccelerateLearner(tiny_qwen2(tok, seed=1), algo, trainer, DistributedConfig(grad_accumulation=2),
                            logprob_chunk_size=3)
    assert acc.chunk_size == 3
    assert acc.step(batch, 0)["skipped"] == 0.0
    params, state = _params(acc.unwrapped), _opt_tensors(acc)
    assert state  # AdamW has moments to protect
    real_loss, calls = acc.objective.loss, []

    def poisoned(fwd):
        calls.append(1)
        loss, stats = real_loss(fwd)
        return (loss * float("nan"), stats) if len(calls) == 3 else (loss, stats)

    acc.objective.loss = poisoned
    m = acc.step(batch, 1)
    assert len(calls) == 4  # 2 minibatches x 2 micro-batches; the 2nd minibatch's 1st one is NaN
    assert torch.equal(_params(acc.unwrapped), params)
    after = _opt_tensors(acc)
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert m["skipped"] == 1.0 and m["skipped_nonfinite"] == 2.0 and m["skipped_empty"] == 0.0
    acc.objective.loss = real_loss
    bad = _batch(tok)
    bad.teacher_logprobs.fill_(float("nan"))
    m = acc.step(bad, 2)
    assert m["skipped_nonfinite"] == 1.0 and m["skipped_empty"] == 0.0
    assert torch.equal(_params(acc.unwrapped), params)
    assert acc.step(batch, 3)["skipped"] == 0.0 and not torch.equal(_params(acc.unwrapped), params)


def test_strategy_choice_and_cpu_errors():
    assert learner_strategy(DistributedConfig(), 1, cuda=False) == "ddp"
    assert learner_strategy(DistributedConfig(), 2, cuda=False) == "ddp"
    assert learner_strategy(DistributedConfig(), 4, cuda=True) == "fsdp"
    assert learner_strategy(DistributedConfig(learner_strategy="ddp"), 4, cuda=True) == "ddp"
    tok = build_tokenizer()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16"):
            AccelerateLearner(tiny_qwen2(tok), AlgoConfig(), TrainerConfig(), DistributedConfig(mixed_precision="fp16"))
        with pytest.raises(ValueError, match="fsdp"):
            AccelerateLearner(tiny_qwen2(tok), AlgoConfig(), TrainerConfig(), DistributedConfig(learner_strategy="fsdp"))


def _rank_main(out_dir: str) -> None:
    """One learner rank (run in a subprocess with RANK/WORLD_SIZE/MASTER_* set): its half of the batch."""
    import os

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tok = build_tokenizer()
    trajs, teacher = _episodes(tok)
    per = len(trajs) // world
    rows = slice(rank * per, (rank + 1) * per)
    mine = _scored(trajs[rows], teacher[rows], LABELS[rows], tok.pad_token_id)
    learner = AccelerateLearner(tiny_qwen2(tok, seed=1), *_ddp_configs(), DistributedConfig(grad_accumulation=2))
    assert learner.accelerator.num_processes == world
    metrics = [learner.step(mine, s) for s in range(2)]
    torch.save({"params": _params(learner.unwrapped), "metrics": metrics}, os.path.join(out_dir, f"rank{rank}.pt"))
    learner.close()  # destroy the gloo group before exit


def _ddp_configs():
    # reward_floor selects per token (no batch-wide ranking), so a split over ranks changes nothing
    return AlgoConfig(stage_switch=0.0, stage2_rule="reward_floor"), TrainerConfig(lr=1e-2, total_steps=4)


def test_two_cpu_ranks_give_the_one_process_update(tmp_path):
    """2 DDP ranks (gloo, loopback) x 2 micro-batches on halves of a batch == one process on all of it,
    although the halves hold different numbers of selected tokens (global token-mean normaliser)."""
    import os
    import socket
    import subprocess
    import sys

    tok = build_tokenizer()
    algo, trainer = _ddp_configs()
    ref_model = tiny_qwen2(tok, seed=1)
    ref = Learner(ref_model, algo, trainer)
    batch = _batch(tok)
    ref_metrics = [ref.step(batch, s) for s in range(2)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_distributed_accelerate as t; t._rank_main({str(tmp_path)!r})"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # DDP kept the replicas identical
    assert torch.allclose(ranks[0]["params"], _params(ref_model), atol=1e-4, rtol=0)
    for m, r in zip(ranks[0]["metrics"], ref_metrics):
        assert m["loss"] == pytest.approx(r["loss"], rel=1e-4, abs=1e-6)  # global, not rank-0's half
        assert m["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-4)
        for key in ("num_tokens", "num_selected", "frac_selected", "frac_clipped", "entropy_mean", "reward_mean",
                    "reward_std", "reward_min", "reward_max"):
            assert m[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), key  # whole batch, not rank 0's half
        teacher_keys = sorted(k for k in r if k.startswith("teacher/"))
        assert teacher_keys == [f"teacher/{label}/{q}" for label in ("teacher_a", "teacher_b")
                                for q in ("frac_clipped", "frac_selected")]
        for key in teacher_keys:  # per-teacher counts reduced once over the ranks, too
            assert m[key] == pytest.approx(r[key], rel=1e-6, abs=1e-9), key
        assert m["learner_ranks"] == 2.0
    trajs, _ = _episodes(tok)
    sel = [int(b.loss_mask.sum()) for b in (collate(trajs[:3], 0), collate(trajs[3:], 0))]
    assert sel[0] != sel[1]  # the halves are unequal, so a per-rank mean would have been wrong
