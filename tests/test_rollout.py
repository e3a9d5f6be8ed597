"""Rollout on the real toolqa env: masks, exact ids (engine ids + env ids, nothing re-tokenised),
groups, limits, and teacher scoring of the very same ids."""

from __future__ import annotations

import pytest
import torch

import reopold_agents as ra
from reopold_agents.chat import encode_env_turn, encode_prompt
from reopold_agents.engines import Engine, SamplingParams
from reopold_agents.engines.hf import HFEngine
from reopold_agents.trajectory import collate
from reopold_agents.rollout import Rollout
from reopold_agents.teacher import Teacher
from reopold_agents.tiny import tiny_qwen2

torch.set_num_threads(1)


class Recording(Engine):
    """Wraps a real engine and remembers what it returned (to check the trajectory against it)."""

    def __init__(self, inner: Engine, script: dict[int, list[list[int]]] | None = None) -> None:
        self.inner, self.calls, self.script = inner, [], script or {}

    def generate(self, requests, sampling):
        gens = self.inner.generate(requests, sampling)
        self.calls.append((requests, gens))
        return gens

    def load_weights(self, m):
        self.inner.load_weights(m)


def spans(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of the loss mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def expected_ids(tok, env, traj, generated: list[list[int]], processor=None):
    """Prompt + (generation + env turn)* rebuilt from the env's final conversation, turn by turn."""
    obs = env._observation()
    msgs, images = obs["messages"], obs["images"]
    tools = env.tool_specs() or None
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    from reopold_agents.chat import count_images

    n_img = count_images(msgs[:first])
    out = encode_prompt(tok, msgs[:first], tools, processor, images[:n_img]).ids
    asst = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for k, gen in enumerate(generated):
        out += gen
        lo = asst[k] + 1
        hi = asst[k + 1] if k + 1 < len(asst) else len(msgs)
        if lo < hi and k + 1 < len(generated):
            env_imgs = images[n_img : n_img + count_images(msgs[lo:hi])]
            n_img += len(env_imgs)
            out += encode_env_turn(tok, msgs[lo:hi], gen[-1] == tok.eos_token_id, tools, processor, env_imgs).ids
    return out


def test_toolqa_multi_turn_masks_and_exact_ids(tok):
    student = tiny_qwen2(tok, seed=0)
    engine = Recording(HFEngine(student, tok))
    rollout = Rollout(engine, tok, lambda: ra.make_env("toolqa", seed=0), max_turns=3, max_total_tokens=4096, env_workers=4)
    trajs = rollout.run([0, 1], SamplingParams(max_new_tokens=24, seed=0), group_size=2)
    assert len(trajs) == 4 and [t.group_id for t in trajs] == [0, 0, 1, 1]
    assert trajs[0].info["task_id"] == trajs[1].info["task_id"] != trajs[2].info["task_id"]
    assert max(len(t.turns) for t in trajs) >= 2  # really multi-turn
    for i, traj in enumerate(trajs):
        # what the engine returned for this episode, call by call
        # match calls positionally: unfinished episodes keep their order; after call c an episode is
        # still active iff it played more than c + 1 turns
        gens, lps = [], []
        active = list(range(4))
        for c, (reqs, out) in enumerate(engine.calls):
            if i in active:
                g = out[active.index(i)]
                assert reqs[active.index(i)].prompt_ids == traj.token_ids[: len(reqs[active.index(i)].prompt_ids)]
                gens.append(g.token_ids)
                lps.extend(g.logprobs)
            active = [a for a in active if len(trajs[a].turns) > c + 1]
        assert traj.token_ids == expected_ids(tok, rollout._envs[i], traj, gens)
        # loss_mask 1 exactly on the engine's ids, with the engine's log-probs
        ones = [s for s in spans(traj.loss_mask) if s[0] == 1]
        assert [traj.token_ids[a:b] for _, a, b in ones] == gens
        assert [lp for lp, m in zip(traj.rollout_logprobs, traj.loss_mask) if m] == pytest.approx(lps)
        assert traj.num_generated == sum(map(len, gens))
        assert traj.info["stop"] in ("terminated", "truncated", "max_turns")
    # the teacher scores exactly these ids
    teacher_model = tiny_qwen2(tok, seed=5, hidden_size=96)
    before = [list(t.token_ids) for t in trajs]
    batch = collate(trajs, tok.pad_token_id)
    Teacher(tok, model=teacher_model).score(batch).apply_to(batch)
    for row, (t, ids) in enumerate(zip(trajs, before)):
        assert t.token_ids == ids and batch.input_ids[row, : len(ids)].tolist() == ids
        teacher_lp = batch.teacher_logprobs[row, : len(ids)].tolist()
        x = torch.tensor([ids])
        with torch.no_grad():
            ref = torch.log_softmax(teacher_model(input_ids=x).logits[0, :-1].double(), -1).gather(-1, x[0, 1:, None])[:, 0]
        got = torch.tensor(teacher_lp[1:], dtype=torch.float64)
        m = torch.tensor(t.loss_mask[1:], dtype=torch.float64)
        assert torch.allclose(got, ref * m, atol=1e-4)
    rollout.close()


def test_limits(tok):
    student = tiny_qwen2(tok, seed=1)
    rollout = Rollout(HFEngine(student, tok), tok, lambda: ra.make_env("toolqa", seed=0), max_turns=2, max_total_tokens=700)
    trajs = rollout.run([{"seed": 3}], SamplingParams(max_new_tokens=64, seed=1), group_size=3)
    for t in trajs:
        assert len(t) <= 700 and len(t.turns) <= 2
        assert t.info["stop"] in ("terminated", "truncated", "max_turns", "max_total_tokens")
    st = rollout.stats
    assert st.episodes == 3 and 0 < st.generate_s <= st.total_s and 0 <= st.overhead_fraction < 1
    with pytest.raises(ValueError, match="max_total_tokens"):
        Rollout(HFEngine(student, tok), tok, lambda: ra.make_env("toolqa", seed=0), max_total_tokens=50).run([0], SamplingParams())
    rollout.close()


def test_token_budget_cuts_generation_and_ends_episode(tok):
    student = tiny_qwen2(tok, seed=2)
    env = ra.make_env("toolqa", seed=0)
    obs, info = env.reset(seed=4)
    prompt_len = len(encode_prompt(tok, obs["messages"], info["tools"]).ids)
    budget = prompt_len + 10
    rollout = Rollout(HFEngine(student, tok), tok, lambda: ra.make_env("toolqa", seed=0), max_turns=4, max_total_tokens=budget)
    trajs = rollout.run([4, 4], SamplingParams(max_new_tokens=64, seed=3))
    for t in trajs:
        assert len(t) <= budget and len(t.turns) == 1
        assert t.num_generated <= 10
        assert t.info["stop"] in ("max_total_tokens", "terminated")
    assert any(t.info["stop"] == "max_total_tokens" for t in trajs)
    rollout.close()
