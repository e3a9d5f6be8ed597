"""TextEnv API: gymnasium check_env on every built-in, registries, plugins, config, the docs example."""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import reopold_agents as ra
from envs import GYM_IDS
from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.registry import ENVS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gym_id", sorted(GYM_IDS))
def test_check_env_passes_for_builtins(gym_id):
    env = gym.make(gym_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # check_env reports API problems as warnings; none may come from our envs.
    assert [str(w.message) for w in caught] == []
    assert type(gym.make(f"envs:{gym_id}").unwrapped) is type(env.unwrapped)  # the module-prefixed form


@pytest.mark.parametrize("name", ["math", "vqa", "toolqa"])
def test_make_env_and_observation_contract(name):
    env = ra.make_env(name, seed=0)
    assert isinstance(env, ra.TextEnv) and isinstance(env, gym.Env)
    obs, info = env.reset()
    assert obs in env.observation_space
    assert [m["role"] for m in obs["messages"]] == ["system", "user"]
    assert set(info) >= {"task_id", "answer", "tools", "max_turns"}
    assert (len(info["tools"]) > 0) == (name == "toolqa")
    obs2, info2 = ra.make_env(name, seed=0).reset()
    assert info2["task_id"] == info["task_id"]  # seed= at construction makes the first reset reproducible
    obs, *_ = env.step("no answer here")
    assert obs["messages"][2] == {"role": "assistant", "content": "no answer here"}
    assert obs in env.observation_space
    # observations are fresh objects: mutating one does not touch the env or later observations
    obs["messages"].clear()
    obs["images"].append("junk")
    obs3, *_ = env.step("\\boxed{0}")
    assert len(obs3["messages"]) >= 4 and "junk" not in obs3["images"]


def test_reset_options():
    env = ra.make_env("math", seed=0, size=10)
    _, info = env.reset(options={"task_index": 3})
    assert info["task_id"] == env.tasks[3].id
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"tsk": 1})
    with pytest.raises(IndexError, match="out of range"):
        env.reset(options={"task_index": 10})
    with pytest.raises(TypeError, match="must be a Task"):
        env.reset(options={"task": "What is 1+1?"})


def test_misuse_raises_clear_errors():
    env = ra.make_env("math")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("hi")
    env.reset(seed=1)
    with pytest.raises(TypeError, match="str"):
        env.step(123)
    with pytest.raises(ValueError, match="max_turns"):
        ra.make_env("math", max_turns=0)
    with pytest.raises(KeyError, match="unknown env 'nope'"):
        ra.make_env("nope")


def test_render_ansi():
    env = ra.make_env("vqa", seed=0, render_mode="ansi")
    env.reset()
    text = env.render()
    assert text.startswith("[system]") and "<image>" in text


def test_entry_point_plugin_registers_itself(tmp_path, monkeypatch):
    dist = tmp_path / "fake_reopold_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-reopold-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[reopold_agents.envs]\nfake_plugin_env = fake_reopold_plugin_mod:EchoEnv\n")
    (tmp_path / "fake_reopold_plugin_mod.py").write_text(textwrap.dedent('''
        import reopold_agents as ra
        from tasks import Task

        class EchoEnv(ra.TextEnv):
            """Answer with the word in the question."""
            def __init__(self, **kw):
                super().__init__([Task(id="echo-1", question="Say: hello", answer="hello")], **kw)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ENVS, "_items", dict(ENVS._items))
    monkeypatch.setattr(ENVS, "_loaded", False)
    assert "fake_plugin_env" in ENVS.names()
    env = ra.make_env("fake_plugin_env", seed=0)
    env.reset()
    _, r, term, _, info = env.step("\\boxed{Hello}")
    assert (r, term, info["success"]) == (1.0, True, True)
    check_env(env, skip_render_check=True)


def test_docs_custom_env_example_runs(monkeypatch):
    doc = (ROOT / "docs" / "envs.md").read_text()
    block = re.search(r"<!-- example: custom-env -->\s*```python\n(.*?)```", doc, re.DOTALL)
    assert block, "docs/envs.md lost its custom-env example"
    code = block.group(1)
    assert len(code.strip().splitlines()) < 15
    monkeypatch.setattr(ENVS, "_items", dict(ENVS._items))
    namespace: dict = {}
    exec(compile(code, "docs/envs.md", "exec"), namespace)
    assert namespace["reward"] == 1.0


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["math", "vqa", "toolqa"])
def test_env_yaml_builds_env(name):
    from envs.factory import build_env, build_envs

    cfg = compose([f"env={name}", "env.size=6"]).env
    assert cfg.name == name
    env = build_env(cfg)
    assert len(env.tasks) == 6 and env.max_turns == cfg.max_turns
    envs = build_envs(cfg, 2)
    assert envs[0].tasks is envs[1].tasks
    assert envs[0].reset()[1]["task_id"] != "" and envs[1].reset()[0] in envs[1].observation_space


def test_env_config_keys_reach_the_env():
    from envs.factory import build_env

    cfg = compose(["env=vqa", "env.size=3", "env.max_pixels=3136", "env.min_pixels=784", "env.difficulty=2",
                   "env.max_turns=4", "env.system_prompt=Look."]).env
    env = build_env(cfg)
    obs, _ = env.reset()
    assert env.max_turns == 4 and obs["messages"][0]["content"] == "Look."
    assert obs["images"][0].size == (56, 56)  # 112x112 cut down to <= 3136 pixels
    assert env.tasks[0].meta["difficulty"] == 2
    tq = build_env(compose(["env=toolqa", "env.tools=[calculator]", "env.max_tool_chars=7", "env.size=2"]).env)
    assert list(tq.tools) == ["calculator"] and tq.max_tool_chars == 7


@pytest.mark.parametrize(
    "override, key",
    [("env.difficulty=4", "env.difficulty"), ("env.max_turns=0", "env.max_turns"), ("env.size=-1", "env.size"),
     ("env.min_pixels=0", "env.min_pixels"), ("+env.colour=red", "colour")],
)
def test_bad_env_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        compose(["env=vqa", override])
