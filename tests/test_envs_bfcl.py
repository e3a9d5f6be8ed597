"""env=bfcl: Gymnasium checks, the tools schema the model sees, reward = the matcher, the config paths
(env group, task source, eval suites)."""

from __future__ import annotations

import importlib.util
import json
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import reopold_agents as ra
from envs.bfcl import BFCLEnv, to_json_schema, tool_spec
from envs.factory import build_env
from reopold_agents.config import compose
from reopold_agents.config.env import EnvConfig

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                                reason="the bench extra is not installed (bash scripts/setup.sh)")


def _env(category: str, **kw) -> BFCLEnv:
    return build_env(EnvConfig(name="bfcl", tasks=f"bfcl:{category}", size=0, max_turns=1, **kw))


def _call(name: str, **args) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


@pytest.mark.parametrize("category", ["simple_python", "parallel", "live_irrelevance"])
def test_check_env(category):
    env = gym.make("reopold/BFCL-v0", category=category)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    assert type(env.unwrapped) is BFCLEnv and env.unwrapped.tasks[0].meta["bfcl_category"] == category
    assert len(gym.make("reopold/BFCL-v0").unwrapped.tasks) == 400  # simple_python by default


def test_reset_offers_the_entry_functions_as_tools():
    env = _env("multiple")
    obs, info = env.reset(options={"task_index": 0})
    assert obs in env.observation_space
    assert [m["role"] for m in obs["messages"]] == ["system", "user"]
    assert obs["messages"][1]["content"] == env.tasks[0].question
    names = [t["function"]["name"] for t in info["tools"]]
    assert names == ["triangle_properties.get", "circle_properties.get"]
    radius = info["tools"][1]["function"]["parameters"]["properties"]["radius"]
    assert radius["type"] == "number" and radius["description"].endswith("This is a float type value.")
    assert info["tools"][0]["function"]["parameters"]["type"] == "object"
    # the task's own docs are untouched (BFCL types kept for the matcher)
    assert env.tasks[0].meta["functions"][1]["parameters"]["properties"]["radius"]["type"] == "float"


def test_json_schema_conversion_is_recursive():
    schema = {"type": "dict", "properties": {"xs": {"type": "array", "items": {"type": "float", "description": "x"}},
                                             "cfg": {"type": "dict", "properties": {"t": {"type": "tuple"}, "a": {"type": "any"}}}}}
    out = to_json_schema(schema)
    assert out["type"] == "object" and out["properties"]["xs"]["items"]["type"] == "number"
    assert out["properties"]["cfg"]["properties"]["t"]["type"] == "array"
    assert out["properties"]["cfg"]["properties"]["a"]["type"] == "string"
    assert schema["type"] == "dict"  # input not modified
    spec = tool_spec({"name": "f", "description": "d", "parameters": schema})
    assert spec["type"] == "function" and spec["function"]["name"] == "f"


def test_system_message_of_the_entry_is_merged_after_ours():
    env = _env("live_simple")
    idx = next(i for i, t in enumerate(env.tasks) if t.meta["messages"][0]["role"] == "system")
    obs, _ = env.reset(options={"task_index": idx})
    system = obs["messages"][0]
    assert system["role"] == "system" and system["content"].startswith(BFCLEnv.default_system_prompt)
    assert system["content"].endswith(env.tasks[idx].meta["messages"][0]["content"])
    assert [m["role"] for m in obs["messages"]].count("system") == 1


def test_step_rewards_the_matcher_verdict():
    env = _env("simple_python")
    env.reset(options={"task_index": 0})
    obs, reward, terminated, truncated, info = env.step("Sure.\n" + _call("calculate_triangle_area", base=10, height=5))
    assert (reward, terminated, truncated, info["success"], info["num_calls"]) == (1.0, True, False, True, 1)
    assert json.loads(info["pred"]) == [{"calculate_triangle_area": {"base": 10, "height": 5}}]
    env.reset(options={"task_index": 0})
    _, reward, terminated, _, info = env.step(_call("calculate_triangle_area", base=10, height=6))
    assert (reward, terminated, info["success"], info["error_type"]) == (0.0, True, False, "value_error:other")
    env.reset(options={"task_index": 0})
    _, reward, _, _, info = env.step('{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}')
    assert reward == 1.0  # plain JSON call
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("again")


def test_parallel_and_irrelevance_episodes():
    env = _env("parallel")
    env.reset(options={"task_index": 0})
    text = _call("spotify.play", artist="Maroon 5", duration=15) + _call("spotify.play", artist="Taylor Swift", duration=20)
    assert env.step(text)[1] == 1.0
    env = _env("irrelevance")
    env.reset(options={"task_index": 0})
    assert env.step("None of the functions computes a triangle's area.")[1] == 1.0
    env.reset(options={"task_index": 0})
    _, reward, _, _, info = env.step(_call("determine_body_mass_index", weight=70.0, height=1.8))
    assert reward == 0.0 and info["error_type"] == "irrelevance:called"


@pytest.mark.parametrize("text", ["", "<tool_call>", "</tool_call>", "<tool_call>{]</tool_call>", "[1, 2]", "{",
                                  '<tool_call>{"name": 3}</tool_call>', "\x00\uffff" * 50, "<tool_call>" * 1000])
def test_model_text_never_crashes_a_step(text):
    for category in ("simple_python", "irrelevance"):
        env = _env(category)
        env.reset(options={"task_index": 1})
        _, reward, terminated, _, info = env.step(text)
        assert terminated and reward == (1.0 if category == "irrelevance" else 0.0)
        assert isinstance(info["why"], str)


def test_config_paths():
    cfg = compose(["env=bfcl"])
    assert (cfg.env.name, cfg.env.tasks, cfg.env.split, cfg.env.max_turns) == ("bfcl", "bfcl:core", "train", 1)
    env = build_env(cfg.env)
    assert isinstance(env, BFCLEnv) and len(env.tasks) == 990  # the train split (tests/test_bfcl_split.py)
    assert len(_env("parallel", ).tasks) == 200
    limited = build_env(EnvConfig(name="bfcl", tasks="bfcl:multiple", size=7, max_turns=1))
    assert len(limited.tasks) == 7
    assert isinstance(ra.make_env("bfcl", category="irrelevance"), BFCLEnv)


def test_unsupported_category_fails_clearly():
    from tasks import TaskLoadError, load_tasks

    with pytest.raises(TaskLoadError, match="multi_turn_base is left out: multi-turn"):
        load_tasks("bfcl:multi_turn_base")
    with pytest.raises(TaskLoadError, match="supported: simple_python"):
        load_tasks("bfcl:simple_cobol")
    with pytest.raises(ValueError, match="not a BFCL task"):
        BFCLEnv(ra.make_env("math", seed=0, size=2).tasks)


def test_suites_load_with_every_category():
    from envs.factory import load_env_tasks
    from reopold_agents.evaluation.suite import load_suite

    suite = load_suite("bfcl")
    assert list(suite.benchmarks) == ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                                      "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                                      "live_irrelevance", "live_relevance"]
    assert all(b.env.name == "bfcl" and b.n == 1 and b.sampling.temperature == 0.0 for b in suite.benchmarks.values())
    assert sum(len(load_env_tasks(b.env)) for b in suite.benchmarks.values()) == 3491
    core = load_suite("bfcl_core")
    assert set(core.benchmarks) == {"simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"}


def test_eval_rollout_keeps_generating_after_a_call():
    """A parallel answer is several calls in one message: the eval rollout must not stop at </tool_call>
    for bfcl (it does for toolqa, whose env answers one call per turn)."""
    from transformers import AutoTokenizer

    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.evaluation.runner import BenchmarkRunner
    from reopold_agents.evaluation.suite import load_suite
    from reopold_agents.tiny.load import shipped_dir

    tok = AutoTokenizer.from_pretrained(shipped_dir("tiny_toolqa", "student"))
    tool_end = tok.convert_tokens_to_ids("</tool_call>")
    bfcl = BenchmarkRunner(None, tok, None, load_suite("bfcl_core").benchmarks["parallel"], EngineConfig())
    toolqa = BenchmarkRunner(None, tok, None, load_suite("toolqa_tiny").benchmarks["toolqa"], EngineConfig())
    try:
        assert bfcl.rollout.stop_token_ids == [] and toolqa.rollout.stop_token_ids == [tool_end]
    finally:
        bfcl.close()
        toolqa.close()


def test_eval_record_counts_the_calls_of_a_bfcl_reply():
    """A BFCL reply's calls are scored, not executed, so the record's ``tool_calls`` is the env's count of
    decoded calls; toolqa's answered calls count one each (a failed call too); a plain answer counts none."""
    from reopold_agents.evaluation.runner import _tool_calls
    from reopold_agents.trajectory import Trajectory

    env = _env("parallel")
    env.reset(seed=0)
    text = '```json\n{"name": "f", "arguments": {"a": 1}}\n{"name": "g", "arguments": {}}\n```'
    bfcl_info = env.respond(text).info
    assert bfcl_info["num_calls"] == 2

    toolqa = ra.make_env("toolqa", seed=0)
    toolqa.reset(seed=0)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    toolqa_infos = [toolqa.step(call)[4], toolqa.step('<tool_call>{"name": "nope"}</tool_call>')[4]]
    assert toolqa_infos[0]["tool_error"] is None and toolqa_infos[1]["tool_error"]

    def traj(*infos: dict) -> Trajectory:
        return Trajectory(token_ids=[], loss_mask=[], turns=[{"text": "", "info": i} for i in infos])

    assert _tool_calls(traj(bfcl_info)) == 2
    assert _tool_calls(traj(*toolqa_infos, {"task_id": "t", "turn": 3})) == 2
    assert _tool_calls(traj({})) == 0


@pytest.mark.slow
def test_evaluate_cli_on_bfcl_core(tmp_path, capsys):
    """The documented command end to end (tiny model, first entry of each category): per-category table,
    every stored verdict equal to re-scoring the stored reply."""
    from reopold_agents.evaluate import main
    from tasks.bfcl import load_bfcl
    from envs.bfcl import parse_calls
    from envs.bfcl_match import match_calls

    assert main(["suite=bfcl_core", "model=tiny_toolqa", "limit=2", f"out_dir={tmp_path}", "plots=false"]) == 0
    out = capsys.readouterr().out
    for cat in ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"):
        assert f"| {cat} | 2 | 1 |" in out
    results = json.loads((tmp_path / "tiny_toolqa-student" / "results.json").read_text())
    assert set(results["benchmarks"]) == {"simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"}
    for line in (tmp_path / "tiny_toolqa-student" / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        task = load_bfcl(rec["benchmark"], limit=2)[rec["task_index"]]
        parsed = parse_calls(rec["response"])
        calls = [] if parsed.error else parsed.calls
        assert match_calls(rec["benchmark"], task.meta["functions"], calls, task.meta["ground_truth"]).valid == rec["correct"]
        assert rec["tool_calls"] == len(calls)  # the calls decoded from the reply, not executed turns (none are)
