"""`TextEnv`: the Gymnasium base of every chat environment (observation = whole conversation, action = text).

Episode protocol (docs/envs.md):

- ``reset(seed=, options={"task": Task} | {"task_index": i})`` -> ``(obs, info)``; ``obs`` holds the
  system and user messages, ``info`` the tool specs (``tools``), ``task_id``, ``answer``, ``max_turns``.
- ``step(text)`` appends the assistant message and whatever the env answers (tool results, a nudge);
  ``obs`` always holds the *whole* conversation and every image in it, so a rollout tokenises only the
  messages it has not seen.
- An episode ends with ``terminated`` when the agent commits to a final answer (reward 1.0 if correct,
  else 0.0; a graded scorer's score in [0, 1] where the task has one) and with ``truncated`` when
  ``max_turns`` assistant turns pass without one. The final ``info`` carries ``success`` and ``why``.

Subclasses override `respond` (what the env does with one assistant message) and may override
`user_content` (the first user message) and `tool_specs`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from envs.answers import ANSWER_FORMATS, extract_final_answer
from envs.scoring import SCORING_TIMEOUT_S, Verdict, score_answer
from envs.spaces import AssistantText, chat_observation_space
from tasks.record import Task
from tools.text_bounds import bounded_text, valid_text

log = logging.getLogger(__name__)
Message = dict[str, Any]
NUDGE = "Give your final answer as \\boxed{...}."
MAX_ENV_MESSAGE_CHARS = 4000  # bound of the env's own replies (nudges, errors) in answer-only envs
# Longest assistant message an env reads (``max_action_chars``). Sized for long reasoning replies: a
# thinking model's 32K-token reply is ~130K characters, 64K tokens ~260K; the engine's token budget is the
# real bound on length, this one only guards the env's parsers (all linear) against absurd input.
DEFAULT_MAX_ACTION_CHARS = 262_144


@dataclass
class Outcome:
    """What the env does with one assistant message."""

    messages: list[Message] = field(default_factory=list)  # env replies appended to the conversation
    reward: float = 0.0
    terminated: bool = False
    success: bool = False
    why: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def copy_message(m: Message) -> Message:
    """A new message dict (and parts list) sharing only the immutable text and the PIL images."""
    out = dict(m)
    if isinstance(m.get("content"), list):
        out["content"] = [dict(p) for p in m["content"]]
    return out


def format_choices(choices: Sequence[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


class TextEnv(gym.Env[dict[str, Any], str]):
    """A chat environment over a sequence of `Task` records (synthetic ones when ``tasks`` is None).

    Args:
        tasks: the task source (any sequence of Task); None generates ``size`` synthetic tasks of
            ``task_kind`` with ``seed`` and ``difficulty``.
        max_turns: assistant turns before truncation (class default when None).
        system_prompt: the system message (class default when None; "" for none).
        seed: seeds the synthetic tasks and the first ``reset()`` without a seed.
        size, difficulty: synthetic task set size and difficulty (1-3).
        max_action_chars: the action space's length bound; a longer action is answered with an error, unread
            (None: the class's ``default_max_action_chars``, `DEFAULT_MAX_ACTION_CHARS` unless a subclass sets it).
        scoring_timeout_s: the most time one answer's scoring may take (third-party scorers run in a contained
            worker process, the answer's process killed at this bound; a timed-out answer scores 0).
        render_mode: None or "ansi" (``render()`` returns the conversation as text).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}
    task_kind: str | None = None
    default_max_turns: int = 2
    default_system_prompt: str = "You are a helpful assistant. Give your final answer as \\boxed{...}."
    default_answer_type: str = "auto"
    default_max_action_chars: int = DEFAULT_MAX_ACTION_CHARS
    # True: generation may stop at ``</tool_call>`` (one call per turn, the env answers it); False: a turn
    # runs to the end of the message so it can hold several calls (bfcl's parallel categories).
    stop_at_tool_call: bool = True

    def __init__(
        self,
        tasks: Sequence[Task] | None = None,
        *,
        max_turns: int | None = None,
        system_prompt: str | None = None,
        seed: int | None = None,
        size: int = 1000,
        difficulty: int = 1,
        max_action_chars: int | None = None,
        scoring_timeout_s: float = SCORING_TIMEOUT_S,
        answer_format: str = "boxed",
        render_mode: str | None = None,
    ) -> None:
        if tasks is None:
            if self.task_kind is None:
                raise ValueError(f"{type(self).__name__} has no synthetic task kind; pass tasks=[...]")
            from tasks.synthetic import generate

            tasks = generate(self.task_kind, size=size, seed=seed or 0, difficulty=difficulty)
        if len(tasks) == 0:
            raise ValueError(f"{type(self).__name__}: the task source is empty")
        self.tasks = tasks
        self.max_turns = self.default_max_turns if max_turns is None else int(max_turns)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        if not 0 < scoring_timeout_s < float("inf"):  # also rejects NaN
            raise ValueError(f"scoring_timeout_s must be a positive finite number, got {scoring_timeout_s}")
        self.scoring_timeout_s = float(scoring_timeout_s)
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        self.answer_format = answer_format
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.observation_space = chat_observation_space()
        limit = self.default_max_action_chars if max_action_chars is None else max_action_chars
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_action_chars must be an integer >= 1, got {limit!r}")
        self.action_space = AssistantText(max_length=limit)
        self._init_seed = seed
        self._task: Task | None = None
        self._messages: list[Message] = []
        self._images: list[Any] = []
        self._turn = 0
        self._done = False

    # ------------------------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is None and self._init_seed is not None and self._np_random is None:
            seed = self._init_seed
        super().reset(seed=seed)
        self._task = self._pick_task(options or {})
        self._messages, self._images = [], []
        self._turn, self._done = 0, False
        for m in self.initial_messages(self._task):
            self._add(m)
        info = {
            "task_id": self._task.id,
            "answer": self._task.answer,
            "tools": copy.deepcopy(self.tool_specs()),
            "max_turns": self.max_turns,
            "turn": 0,
        }
        return self._observation(), info

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._task is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over (terminated or truncated); call reset()")
        if not isinstance(action, str):
            raise TypeError(f"action must be the assistant's text (str), got {type(action).__name__}")
        self._turn += 1
        self._add({"role": "assistant", "content": valid_text(action)})
        out = self._respond_safely(action)
        terminated = bool(out.terminated)
        truncated = not terminated and self._turn >= self.max_turns
        if not truncated:
            for m in out.messages:
                self._add(self._bounded_message(m))
        info: dict[str, Any] = {"task_id": self._task.id, "turn": self._turn, **copy.deepcopy(out.info)}
        if terminated or truncated:
            self._done = True
            info["success"] = bool(out.success) if terminated else False
            info["why"] = out.why if terminated else f"max_turns ({self.max_turns}) reached without a final answer"
            info["answer"] = self._task.answer
        for key, value in info.items():  # model text echoed into info (pred, why, errors) is logged: bound it
            if isinstance(value, str):
                info[key] = bounded_text(value, MAX_ENV_MESSAGE_CHARS)
        reward = float(out.reward) if terminated else 0.0
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = []
        for m in self._messages:
            content = m["content"]
            if isinstance(content, list):
                content = "".join(p["text"] if p["type"] == "text" else "<image>" for p in content)
            lines.append(f"[{m['role']}] {content}")
        return "\n".join(lines)

    def _respond_safely(self, action: str) -> Outcome:
        """`respond`, with the step contract enforced around it: no text makes `step` raise.

        An action longer than the action space's bound is not parsed (its work would be unbounded);
        an exception out of `respond` is an env bug: logged with its traceback, and the episode goes
        on with an error reply instead of crashing the rollout.
        """
        limit = self.action_space.max_length
        if len(action) > limit:
            why = f"Error: the message is {len(action)} characters long, over the limit of {limit}; it was not read."
            return Outcome(messages=[{"role": "user", "content": why}], why=why, info={"action_too_long": True})
        try:
            return self.respond(action)
        except Exception as exc:  # noqa: BLE001 - the contract: model text never crashes a step
            log.exception("%s.respond failed on a %d-character action", type(self).__name__, len(action))
            why = f"Error: the environment could not process this message ({type(exc).__name__})."
            return Outcome(messages=[{"role": "user", "content": why}], why=why, info={"env_error": type(exc).__name__})

    def message_limit(self, message: Message) -> int:
        """Most characters an env reply may carry (subclasses bound tool output by their own setting)."""
        return MAX_ENV_MESSAGE_CHARS

    def _bounded_message(self, message: Message) -> Message:
        """The env reply with valid Unicode text cut to `message_limit` (text parts included)."""
        limit = self.message_limit(message)
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = bounded_text(content, limit)
        elif isinstance(content, list):
            out["content"] = [
                {**p, "text": bounded_text(p["text"], limit)} if p.get("type") == "text" and isinstance(p.get("text"), str) else p
                for p in content
            ]
        if isinstance(out.get("name"), str):
            out["name"] = bounded_text(out["name"], 200)
        return out

    # ----------------------------------------------------------------------------- subclass hooks

    def tool_specs(self) -> list[dict[str, Any]]:
        """JSON function specs the chat template renders into the system prompt (none by default)."""
        return []

    def user_content(self, task: Task) -> str | list[dict[str, Any]]:
        """The first user message: the question, with lettered options for multiple choice."""
        text = task.question
        if task.choices:
            text += "\nChoices:\n" + format_choices(task.choices)
        return text

    def initial_messages(self, task: Task) -> list[Message]:
        msgs: list[Message] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": self.user_content(task)})
        return msgs

    def score(self, pred: str) -> Verdict:
        assert self._task is not None
        return score_answer(pred, self._task, self.default_answer_type, timeout_s=self.scoring_timeout_s)

    def respond(self, text: str) -> Outcome:
        """Answer-only envs: score a final answer, else nudge towards the answer format."""
        return self.finish_or_nudge(text)

    # ---------------------------------------------------------------------------------- helpers

    def finish_or_nudge(self, text: str) -> Outcome:
        pred = extract_final_answer(text, self.answer_format)
        if pred is None:
            return Outcome(messages=[{"role": "user", "content": NUDGE}], why="no final answer", info={"nudged": True})
        verdict = self.score(pred)
        info: dict[str, Any] = {"pred": pred}
        if verdict.timed_out:
            info["scoring_timed_out"] = True
        return Outcome(
            reward=verdict.score if verdict.score is not None else (1.0 if verdict.success else 0.0),
            terminated=True,
            success=verdict.success,
            why=verdict.why,
            info=info,
        )

    @property
    def task(self) -> Task | None:
        """The current episode's task."""
        return self._task

    @property
    def turn(self) -> int:
        return self._turn

    def _pick_task(self, options: dict[str, Any]) -> Task:
        unknown = set(options) - {"task", "task_index"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; accepted: 'task', 'task_index'")
        if "task" in options:
            if not isinstance(options["task"], Task):
                raise TypeError(f"options['task'] must be a Task, got {type(options['task']).__name__}")
            return options["task"]
        if "task_index" in options:
            i = int(options["task_index"])
            if not 0 <= i < len(self.tasks):
                raise IndexError(f"options['task_index']={i} out of range for {len(self.tasks)} tasks")
            return self.tasks[i]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _add(self, message: Message) -> None:
        self._messages.append(message)
        content = message.get("content")
        if isinstance(content, list):
            self._images.extend(p["image"] for p in content if p.get("type") == "image")

    def _observation(self) -> dict[str, Any]:
        return {"messages": [copy_message(m) for m in self._messages], "images": list(self._images)}
