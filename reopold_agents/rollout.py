"""Lock-step multi-turn rollouts: many env episodes advance one assistant turn per engine call.

Per turn: one batched ``engine.generate`` for every unfinished episode; then every env ``step``s in a
thread pool (tool calls of different episodes overlap each other; tokenising each env turn happens in
the same worker), and the next turn starts. A Trajectory is built from exact ids only:

* the prompt and every env turn (tool results, nudges, the closing ``<|im_end|>`` after a turn that
  stopped on ``</tool_call>``, the next ``<|im_start|>assistant\\n``) are appended with loss_mask 0,
  tokenised incrementally by ``reopold_agents.chat`` (never re-rendering earlier turns);
* the engine's sampled ids are appended verbatim with loss_mask 1 and their rollout log-probs.

An episode ends when the env terminates/truncates it, after ``max_turns`` assistant turns, or when the
next turn would not fit into ``max_total_tokens`` (a generation is cut to the remaining budget).
``Trajectory.info["stop"]`` says which: ``terminated | truncated | max_turns | max_total_tokens``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import torch

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.env import EnvConfig
from reopold_agents.chat import count_images, encode_env_turn, encode_prompt
from reopold_agents.engines.base import Engine, GenerationRequest, SamplingParams
from reopold_agents.seeding import turn_seed
from reopold_agents.trajectory import Trajectory


@dataclass
class RolloutStats:
    """Where the wall time of the last ``run`` went (the overhead benchmark reads these)."""

    total_s: float = 0.0
    generate_s: float = 0.0  # inside engine.generate
    env_s: float = 0.0  # env reset/step incl. tool calls and env-turn tokenisation (thread pool, wall)
    episodes: int = 0
    turns: int = 0  # generate calls
    generated_tokens: int = 0

    @classmethod
    def total(cls, parts: list["RolloutStats"]) -> "RolloutStats":
        """Field-wise sum (several rollouts run one after another, e.g. a mix run's entries)."""
        zero = cls()
        return cls(**{f.name: sum((getattr(p, f.name) for p in parts), getattr(zero, f.name)) for f in fields(cls)})

    @property
    def overhead_fraction(self) -> float:
        """Share of rollout time spent outside generation."""
        return 0.0 if self.total_s <= 0 else max(0.0, self.total_s - self.generate_s) / self.total_s


@dataclass
class _Episode:
    env: Any
    traj: Trajectory
    tools: list[dict] | None = None
    seen_messages: int = 0
    seen_images: int = 0
    turns: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def env_stop_token_ids(env_name: str) -> list[int] | None:
    """``[]`` (no stop at ``</tool_call>``) for an env that takes several calls in one reply (bfcl's
    parallel calls, ``stop_at_tool_call = False``); None (the rollout's default stops) otherwise."""
    from reopold_agents.registry import ENVS

    return None if getattr(ENVS.get(env_name), "stop_at_tool_call", True) else []


def tool_call_stop_ids(tokenizer: Any) -> list[int]:
    """The rollout's default stops besides EOS: ``[id of </tool_call>]`` when the tokenizer has it as one
    token, else none."""
    tool_end = tokenizer.convert_tokens_to_ids("</tool_call>")
    return [tool_end] if isinstance(tool_end, int) and tool_end != tokenizer.unk_token_id else []


class Rollout:
    """Runs episodes of envs built by ``env_factory`` with ``engine``; envs are pooled across calls."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        env_factory: Callable[[], Any],
        processor: Any = None,
        max_turns: int = 4,
        max_total_tokens: int = 2048,
        env_workers: int = 8,
        stop_token_ids: list[int] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if max_turns < 1 or max_total_tokens < 2 or env_workers < 1:
            raise ValueError("max_turns and env_workers must be >= 1 and max_total_tokens >= 2")
        self.engine = engine
        self.tokenizer = tokenizer
        self.processor = processor
        self.env_factory = env_factory
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens
        self.pool = ThreadPoolExecutor(max_workers=env_workers, thread_name_prefix="env")
        self.stop_token_ids = list(stop_token_ids) if stop_token_ids is not None else tool_call_stop_ids(tokenizer)
        self.template_kwargs = dict(template_kwargs or {})
        self._envs: list[Any] = []
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tok_lock = threading.Lock()
        self.stats = RolloutStats()

    @classmethod
    def from_config(cls, engine_cfg: EngineConfig, env_cfg: EnvConfig, engine: Engine, tokenizer: Any, env_factory: Callable[[], Any],
                    processor: Any = None) -> "Rollout":
        """The turn limit from the ``EnvConfig`` (``env.max_turns``), the token budget and worker count from
        the ``EngineConfig``; the stop at ``</tool_call>`` unless the env says it takes several calls per reply."""
        return cls(
            engine,
            tokenizer,
            env_factory,
            processor=processor,
            stop_token_ids=env_stop_token_ids(env_cfg.name),
            max_turns=env_cfg.max_turns,
            max_total_tokens=engine_cfg.max_total_tokens,
            env_workers=engine_cfg.env_workers,
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for env in self._envs:
            env.close()
        self._envs.clear()

    def _env(self, i: int) -> Any:
        while len(self._envs) <= i:
            self._envs.append(self.env_factory())
        return self._envs[i]

    # ------------------------------------------------------------------------------------ episode

    def run(self, prompts: list[int | dict[str, Any]], sampling: SamplingParams, group_size: int = 1) -> list[Trajectory]:
        """One trajectory per (prompt, sample): ``group_size`` episodes per prompt share a ``group_id``.

        A prompt is a reset seed (int) or ``env.reset`` keyword arguments (``{"seed": 3}``,
        ``{"options": {"task_index": 7}}``); group members reset identically, so they get the same task.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        sampling = replace(sampling, stop_token_ids=sorted(set(sampling.stop_token_ids) | set(self.stop_token_ids)))
        sampling.check()
        start = time.perf_counter()
        stats = RolloutStats()
        resets = [{"seed": p} if isinstance(p, int) else dict(p) for p in prompts]
        episodes = [
            _Episode(env=self._env(g * group_size + k), traj=Trajectory(group_id=g))
            for g in range(len(resets))
            for k in range(group_size)
        ]
        t0 = time.perf_counter()
        list(self.pool.map(lambda ep_r: self._reset(*ep_r), zip(episodes, [r for r in resets for _ in range(group_size)])))
        stats.env_s += time.perf_counter() - t0
        for turn in range(self.max_turns):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            t0 = time.perf_counter()
            gens = self.engine.generate(
                [GenerationRequest(list(ep.traj.token_ids), list(ep.traj.images), dict(ep.traj.model_inputs)) for ep in active],
                replace(sampling, seed=turn_seed(sampling.seed, turn)),
            )
            stats.generate_s += time.perf_counter() - t0
            stats.turns += 1
            for ep, gen in zip(active, gens):
                budget = self.max_total_tokens - len(ep.traj)
                ids, lps, reason = gen.token_ids[:budget], gen.logprobs[:budget], gen.finish_reason
                if len(ids) < len(gen.token_ids):
                    reason = "length"
                ep.traj.append_generated(ids, lps)
                ep.extra = {"ids": ids, "finish_reason": reason}
                stats.generated_tokens += len(ids)
            t0 = time.perf_counter()
            list(self.pool.map(self._step, active))
            stats.env_s += time.perf_counter() - t0
        for ep in episodes:
            if not ep.done:  # the loop ran out of turns while the env still wanted more
                ep.traj.info["stop"] = "max_turns"
        stats.episodes = len(episodes)
        stats.total_s = time.perf_counter() - start
        self.stats = stats
        return [ep.traj for ep in episodes]

    def _reset(self, ep: _Episode, reset_kwargs: dict[str, Any]) -> None:
        obs, info = ep.env.reset(**reset_kwargs)
        ep.tools = info.get("tools") or None
        messages, images = obs["messages"], list(obs.get("images") or [])
        with self._tok_lock:
            enc = encode_prompt(self.tokenizer, messages, ep.tools, self.processor, images, **self.template_kwargs)
        if len(enc.ids) >= self.max_total_tokens:
            raise ValueError(f"the prompt alone has {len(enc.ids)} tokens >= engine.max_total_tokens={self.max_total_tokens}")
        ep.traj.append_env(enc.ids)
        ep.traj.images.extend(enc.images)
        ep.traj.model_inputs = dict(enc.model_inputs)
        ep.traj.info = {k: v for k, v in info.items() if k != "tools"}
        ep.traj.messages, ep.traj.tools = list(messages), ep.tools
        ep.seen_messages, ep.seen_images = len(messages), len(images)

    def _step(self, ep: _Episode) -> None:
        ids: list[int] = ep.extra["ids"]
        eos = self.tokenizer.eos_token_id
        content = ids[:-1] if ids and ids[-1] == eos else ids
        with self._tok_lock:
            text = self.tokenizer.decode(content, skip_special_tokens=True)
        obs, reward, terminated, truncated, info = ep.env.step(text)
        ep.traj.messages = list(obs["messages"])
        ep.turns += 1
        ep.traj.reward += float(reward)
        turn = {"text": text, "num_generated": len(ids), "finish_reason": ep.extra["finish_reason"],
                "reward": float(reward), "info": info}
        ep.traj.turns.append(turn)
        if terminated or truncated:
            ep.done = True
            ep.traj.info.update(info)
            ep.traj.info["stop"] = "terminated" if terminated else "truncated"
            return
        if ep.turns >= self.max_turns:
            ep.done = True
            ep.traj.info.update(info)
            ep.traj.info["stop"] = "max_turns"
            return
        messages, images = obs["messages"], list(obs.get("images") or [])
        if len(messages) <= ep.seen_messages or messages[ep.seen_messages].get("role") != "assistant":
            raise RuntimeError("env observation does not continue the conversation with the assistant's message")
        new = messages[ep.seen_messages + 1 :]
        new_images = images[ep.seen_images :]
        if count_images(new) != len(new_images):
            raise RuntimeError(f"env added {count_images(new)} image parts but {len(new_images)} new images")
        with self._tok_lock:
            enc = encode_env_turn(
                self.tokenizer,
                new,
                assistant_closed=bool(ids) and ids[-1] == eos,
                tools=ep.tools,
                processor=self.processor,
                images=new_images,
                **self.template_kwargs,
            )
        ep.seen_messages, ep.seen_images = len(messages), len(images)
        # The env turn plus at least one generated token must fit.
        if len(ep.traj) + len(enc.ids) + 1 > self.max_total_tokens:
            ep.done = True
            ep.traj.info.update(info)
            ep.traj.info["stop"] = "max_total_tokens"
            return
        turn["env_tokens"] = len(enc.ids)
        ep.traj.append_env(enc.ids)
        ep.traj.images.extend(enc.images)
        for k, v in enc.model_inputs.items():
            ep.traj.model_inputs[k] = torch.cat([ep.traj.model_inputs[k], v]) if k in ep.traj.model_inputs else v
