"""Multi-task runs and teacher routing: the seeded draw, routing against brute force, the metrics, bad
configs, and single-env runs left as they were."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import reopold_agents.run as run_mod
from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.learner import _Accumulator
from reopold_agents.metrics import read_metrics
from reopold_agents.entries import EntryRollout, TaskSampler
from reopold_agents.entry_metrics import entry_metrics
from reopold_agents.seeding import mix_draw
from reopold_agents.step import rollout_metrics
from reopold_agents.teacher import TeacherRouter, TeacherScores, teacher_label
from reopold_agents.trajectory import Batch, Trajectory, collate

MIX = ["experiment=mix_math_toolqa", "model=tiny_toolqa"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- the draw


def test_mix_draw_is_seeded_resumable_and_follows_the_weights():
    sampler = TaskSampler({"a": 50, "b": 7}, {"a": 0.75, "b": 0.25}, prompts_per_step=8, seed=3)
    run = [sampler.tasks(s) for s in range(400)]
    # a fresh sampler asked for a late step first (a resume) gives the same tasks, and so does a re-ask
    resumed = TaskSampler({"a": 50, "b": 7}, {"a": 0.75, "b": 0.25}, prompts_per_step=8, seed=3)
    assert resumed.tasks(250) == run[250] and resumed.tasks(3) == run[3] and sampler.tasks(17) == run[17]
    other = TaskSampler({"a": 50, "b": 7}, {"a": 0.75, "b": 0.25}, prompts_per_step=8, seed=4)
    assert [other.tasks(s) for s in range(5)] != run[:5]
    flat = [t for step in run for t in step]
    share_a = sum(t["env"] == "a" for t in flat) / len(flat)
    assert abs(share_a - 0.75) < 0.03  # 3200 draws: 4 standard deviations
    # each entry reads its own permutation: a pass over its tasks has no repeats, and covers them all
    for name, n in (("a", 50), ("b", 7)):
        seq = [t["options"]["task_index"] for t in flat if t["env"] == name]
        assert sorted(seq[:n]) == list(range(n)) and sorted(seq[n : 2 * n]) == list(range(n))
    assert mix_draw(5, 8, [0.75, 0.25], 3) == [["a", "b"].index(t["env"]) for t in run[5]]


def test_mix_draw_needs_tasks_and_matching_entries():
    with pytest.raises(ValueError, match="no tasks"):
        TaskSampler({"a": 0}, {"a": 1.0}, 4, 0)
    with pytest.raises(ValueError, match="entries differ"):
        TaskSampler({"a": 3}, {"b": 1.0}, 4, 0)


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("overrides, key", [
    (["mix.toolqa.weight=0"], r"mix\.toolqa\.weight: must be > 0"),
    (["mix.toolqa.weight=inf"], r"mix\.toolqa\.weight: must be a finite number"),
    (["mix.math.env.difficulty=9"], r"mix\.math\.env\.difficulty"),
    (["mix.math.env.foo=1"], r"mix\.math\.env\.foo"),
    (["mix.math.tacher=tiny"], r"mix\.math\.tacher"),
    (["mix.math.teacher="], r"mix\.math\.teacher: empty"),
    (["env.max_turns=4"], r"env\.max_turns: not used in a run with mix entries"),
    (["env=math"], r"env\.name: not used in a run with mix entries"),
])
def test_bad_mix_config_fails_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        compose([*MIX, *overrides])


def test_mix_without_entries_fails():
    with pytest.raises(ConfigError, match=r"env\.name: choose an env .* or give mix entries"):
        compose(["experiment=mix"])


@pytest.mark.parametrize("overrides, key", [
    (["mix.math.env.name=nope"], r"mix\.math\.env\.name: unknown env 'nope'"),
    (["mix.math.env.tools=[search]"], r"mix\.math\.env\.tools: env 'math' does not take it"),
    (["mix.math.teacher=./no/such/teacher"], r"mix\.math\.teacher: './no/such/teacher' is not"),
    (["algo=grpo"], r"mix\.math\.teacher: algo=grpo learns without a teacher"),
    (["mix.math.teacher={tmp}/a/b", "mix.toolqa.teacher={tmp}/a_b"], r"share the metric label '.*a_b'"),
])
def test_bad_mix_entry_fails_at_startup(overrides, key, tmp_path):
    if any("{tmp}" in o for o in overrides):  # two real model folders (a model path must hold a whole model)
        from reopold_agents.tiny import build_tokenizer, tiny_qwen2

        tok = build_tokenizer()
        model = tiny_qwen2(tok, seed=0)
        for folder in (tmp_path / "a" / "b", tmp_path / "a_b"):
            model.save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
    cfg = compose([*MIX, *(o.format(tmp=tmp_path) for o in overrides)])
    with pytest.raises(ConfigError, match=key):
        run_mod.check_startup(cfg)


def test_mix_entries_from_the_command_line():
    cfg = compose(["experiment=mix", "+env@mix.a.env=math", "+env@mix.b.env=toolqa", "mix.b.weight=3"])
    assert {k: (e.env.name, e.weight, e.teacher) for k, e in cfg.mix.items()} == {
        "a": ("math", 1.0, None), "b": ("toolqa", 3.0, None)}
    run_mod.check_startup(cfg)


def test_teacher_label():
    assert teacher_label("tiny") == "tiny" and teacher_label("self") == "self"
    assert teacher_label("Qwen/Qwen2.5-7B-Instruct") == "Qwen_Qwen2.5-7B-Instruct"
    assert teacher_label("/data/ckpt/t") == "data_ckpt_t"


# ----------------------------------------------------------------------------- routing


def _random_trajectories(tok, n: int, seed: int) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for g in range(n):
        t = Trajectory(group_id=g)
        for _ in range(rng.randint(1, 2)):
            t.append_env([rng.randrange(len(tok)) for _ in range(rng.randint(3, 9))])
            k = rng.randint(2, 6)
            t.append_generated([rng.randrange(len(tok)) for _ in range(k)], [-1.0] * k)
        out.append(t)
    return out


def _brute(model, traj: Trajectory, k: int = 0):
    """Row log-probs (and top-k values) by one unpadded forward of ``model``."""
    x = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
    mask = torch.tensor(traj.loss_mask[1:], dtype=torch.float64)
    lp = torch.cat([torch.zeros(1, dtype=torch.float64), logp.gather(-1, x[0, 1:, None])[:, 0] * mask])
    top = torch.cat([torch.zeros(1, k, dtype=torch.float64), logp.topk(k, dim=-1).values * mask[:, None]]) if k else None
    return lp, top


@pytest.mark.parametrize("algo, k", [("reopold", 0), ("gkd", 4)])
def test_each_row_is_scored_by_its_routed_teacher(algo, k):
    """math -> tiny's teacher, toolqa -> self (the student's weights): two different models, so a row
    scored by the wrong one would differ from its brute-force score."""
    from reopold_agents.models import load_model, load_tokenizer_and_processor

    extra = [f"algo={algo}"] + ([f"algo.gkd_topk={k}"] if k else [])
    cfg = compose([*MIX, "mix.toolqa.teacher=self", *extra])
    student_tok = load_tokenizer_and_processor("tiny_toolqa", "student")[0]
    router = TeacherRouter.from_config(cfg.entries, cfg.model, student_tok, top_k=k)
    assert sorted(router.teachers) == ["self", "tiny"]
    assert router.routes == {"math": "tiny", "toolqa": "self"}
    trajs = _random_trajectories(student_tok, 7, seed=1)
    route = ["tiny", "self", "self", "tiny", "self", "tiny", "tiny"]
    for t, r in zip(trajs, route):
        t.entry = "math" if r == "tiny" else "toolqa"
    batch = collate(trajs, student_tok.pad_token_id)
    assert batch.entries == [t.entry for t in trajs] and batch.teachers is None
    mask_before = batch.loss_mask.clone()
    scores = router.score(batch)
    assert scores.labels == route and sorted(scores.seconds) == ["self", "tiny"]
    assert all(s > 0 for s in scores.seconds.values())
    out = scores.apply_to(batch)
    assert out is batch and torch.equal(batch.loss_mask, mask_before) and batch.teachers == route
    models = {"tiny": load_model("tiny", "teacher").model, "self": load_model("tiny_toolqa", "student").model}
    for i, (t, r) in enumerate(zip(trajs, route)):
        n = len(t)
        want, want_top = _brute(models[r], t, k)
        other, _ = _brute(models["self" if r == "tiny" else "tiny"], t)
        got = batch.teacher_logprobs[i, :n].double()
        assert torch.allclose(got, want, atol=1e-4), (i, r)
        assert not torch.allclose(got, other, atol=1e-2), (i, r)  # the two teachers disagree: the test can fail
        assert torch.all(batch.teacher_logprobs[i, n:] == 0)
        if k:
            assert torch.allclose(batch.teacher_topk_logprobs[i, :n].double(), want_top, atol=1e-4)
    assert (batch.teacher_topk_ids is None) == (k == 0)


class _MaskingScorer:
    """A stand-in scorer that masks the first trained token of each row and gives every other one ``value``
    (as the cross-tokenizer scorer may mask turns it cannot align)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, batch: Batch) -> TeacherScores:
        mask = batch.loss_mask.clone()
        for b in range(len(batch)):
            mask[b, int(mask[b].nonzero()[0])] = 0
        return TeacherScores(torch.where(mask > 0, torch.full_like(mask, self.value), torch.zeros_like(mask)), mask,
                             masked_turns=[[f"row {b}"] for b in range(len(batch))])


def test_router_writes_back_each_teachers_loss_mask(tok):
    trajs = _random_trajectories(tok, 5, seed=2)
    route = ["b", "a", "b", "b", "a"]
    for t, r in zip(trajs, route):
        t.entry = f"env_{r}"  # entry env_a -> teacher a, env_b -> teacher b
    batch = collate(trajs, tok.pad_token_id)
    before = batch.loss_mask.clone()
    routes = {"env_a": "a", "env_b": "b"}
    scores = TeacherRouter({"a": _MaskingScorer(-1.0), "b": _MaskingScorer(-2.0)}, routes).score(batch)
    # each teacher saw its rows as a sub-batch (row numbers 0..); the reasons land on the batch's rows
    assert scores.masked_turns == [["row 0"], ["row 0"], ["row 1"], ["row 2"], ["row 1"]]
    scores.apply_to(batch)
    assert batch.teachers == route
    for i, r in enumerate(route):
        first = int(before[i].nonzero()[0])
        want_mask = before[i].clone()
        want_mask[first] = 0
        assert torch.equal(batch.loss_mask[i], want_mask)
        value = -1.0 if r == "a" else -2.0
        assert torch.equal(batch.teacher_logprobs[i], torch.where(want_mask > 0, torch.tensor(value), torch.tensor(0.0)))
    batch.entries = ["env_a", "env_c", "env_a", "env_a", "env_a"]
    with pytest.raises(ValueError, match=r"unknown entries \['env_c'\]"):
        TeacherRouter({"a": _MaskingScorer(-1.0)}, {"env_a": "a"}).score(batch)
    with pytest.raises(ValueError, match=r"teachers \['b'\] that are not loaded"):
        TeacherRouter({"a": _MaskingScorer(-1.0)}, routes)


# ----------------------------------------------------------------------------- rollout + metrics


class _FakeRollout:
    """Records its calls; one trajectory per (prompt, sample), group ids 0.. as ``Rollout.run`` numbers them."""

    def __init__(self, tag: int) -> None:
        self.tag, self.calls, self.stats = tag, [], None

    def run(self, prompts, sampling, group_size=1):
        from reopold_agents.rollout import RolloutStats

        self.calls.append((prompts, sampling.seed))
        self.stats = RolloutStats(episodes=len(prompts) * group_size, generated_tokens=10 * self.tag)
        return [Trajectory(group_id=g, reward=float(p["options"]["task_index"]), info={"k": k})
                for g, p in enumerate(prompts) for k in range(group_size)]

    def close(self) -> None:
        pass


def test_mix_rollout_routes_tasks_and_keeps_task_order():
    from reopold_agents.engines.base import SamplingParams

    a, b = _FakeRollout(1), _FakeRollout(2)
    mix = EntryRollout({"a": a, "b": b})
    tasks = [{"env": e, "options": {"task_index": i}} for e, i in [("b", 0), ("a", 1), ("b", 2), ("a", 3)]]
    out = mix.run(tasks, SamplingParams(seed=11), group_size=2)
    assert [t.reward for t in out] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [t.group_id for t in out] == [0, 0, 1, 1, 2, 2, 3, 3]  # the task's position, as one Rollout.run
    assert [t.entry for t in out] == ["b", "b", "a", "a", "b", "b", "a", "a"]  # what teachers are routed by
    assert [t.info["k"] for t in out] == [0, 1] * 4
    assert a.calls[0][0] == [{"options": {"task_index": 1}}, {"options": {"task_index": 3}}]  # "env" stripped
    assert a.calls[0][1] != b.calls[0][1]  # each entry's own sampling seed
    assert mix.stats.episodes == 8 and mix.stats.generated_tokens == 30
    with pytest.raises(ValueError, match="names env entry 'c'"):
        mix.run([{"env": "c", "options": {}}], SamplingParams(seed=1))


def _scored(trajs: list[Trajectory], seed: int = 0, labels: list[str] | None = None,
            seconds: dict[str, float] | None = None) -> tuple[Batch, TeacherScores]:
    """``trajs`` collated, with random teacher log-probs on the trained tokens written in by ``apply_to``."""
    batch = collate(trajs, 0)
    g = torch.Generator().manual_seed(seed)
    scores = TeacherScores(torch.where(batch.loss_mask > 0, -torch.rand(batch.loss_mask.shape, generator=g) * 3,
                                       torch.zeros(())), batch.loss_mask.clone(), labels=labels,
                           masked_turns=[[] for _ in trajs], seconds=dict(seconds or {}))
    return scores.apply_to(batch), scores


def test_per_env_and_per_teacher_metrics_match_brute_force():
    rng = random.Random(0)
    trajs = []
    for i in range(9):
        t = Trajectory(group_id=i, reward=float(i % 3 == 0), entry="ab"[i % 2])
        t.append_env([1] * rng.randint(2, 5))
        k = rng.randint(2, 8)
        t.append_generated([2] * k, [-0.5] * k)
        trajs.append(t)
    labels = [["x", "y", "y"][i % 3] for i in range(len(trajs))]
    seconds = {"x": 0.25, "y": 0.75}
    batch, scores = _scored(trajs, labels=labels, seconds=seconds)
    scores.masked_turns[4] = ["turn 0: a reason", "turn 2: another"]
    m = entry_metrics(trajs, batch, scores)
    assert m["teacher/masked_turns"] == 2
    ratio = (batch.teacher_logprobs - batch.old_logprobs).numpy()
    trained = batch.loss_mask.numpy() > 0
    for env in "ab":
        rows = [i for i, t in enumerate(trajs) if t.entry == env]
        assert m[f"env/{env}/episodes"] == len(rows)
        assert m[f"env/{env}/success"] == pytest.approx(np.mean([trajs[i].reward > 0 for i in rows]))
        assert m[f"env/{env}/response_tokens"] == pytest.approx(np.mean([trajs[i].num_generated for i in rows]))
        assert m[f"env/{env}/log_ratio_mean"] == pytest.approx(np.concatenate([ratio[i][trained[i]] for i in rows]).mean())
    for label in "xy":
        rows = [i for i, t in enumerate(labels) if t == label]
        vals = np.concatenate([ratio[i][trained[i]] for i in rows]).astype(np.float64)
        assert m[f"teacher/{label}/rows"] == len(rows) and m[f"teacher/{label}/tokens"] == len(vals)
        assert m[f"teacher/{label}/score_s"] == pytest.approx(seconds[label])
        assert m[f"teacher/{label}/log_ratio/mean"] == pytest.approx(vals.mean(), abs=1e-6)
        assert m[f"teacher/{label}/log_ratio/std"] == pytest.approx(vals.std(), abs=1e-6)
        for q in (10, 50, 90):
            assert m[f"teacher/{label}/log_ratio/p{q}"] == pytest.approx(np.quantile(vals, q / 100), abs=1e-6)


def test_learner_splits_selected_and_clipped_counts_by_teacher():
    g = torch.Generator().manual_seed(0)
    loss_mask = (torch.rand(6, 10, generator=g) > 0.3).float()
    select = (torch.rand(6, 10, generator=g) > 0.5) & (loss_mask > 0)
    clipped = (torch.rand(6, 10, generator=g) > 0.6) & (loss_mask > 0)
    tags = ["p", "q", "p", "p", "q", "q"]
    acc = _Accumulator()
    acc.observe_tokens(loss_mask[:4], select[:4], torch.zeros(4, 10), clipped[:4], tags[:4])  # two minibatches
    acc.observe_tokens(loss_mask[4:], select[4:], torch.zeros(2, 10), clipped[4:], tags[4:])
    batch = Batch(input_ids=torch.zeros(6, 10, dtype=torch.long), attention_mask=torch.ones(6, 10, dtype=torch.long),
                  loss_mask=loss_mask, old_logprobs=torch.zeros(6, 10), teacher_logprobs=None,
                  rewards=torch.zeros(6), group_ids=torch.arange(6))
    from reopold_agents.objectives import TokenTerms

    m = acc.metrics(acc.totals(batch, TokenTerms(torch.zeros(6, 10), None, clipped)), 0, 1, 1e-3)
    for label in "pq":
        rows = [i for i, t in enumerate(tags) if t == label]
        sel = int(select[rows].sum())
        assert m[f"teacher/{label}/frac_selected"] == pytest.approx(sel / float(loss_mask[rows].sum()))
        assert m[f"teacher/{label}/frac_clipped"] == pytest.approx(int((clipped & select)[rows].sum()) / sel)


def test_single_env_batches_and_metrics_are_unchanged():
    trajs = []
    for i in range(3):
        t = Trajectory(group_id=i, reward=1.0)
        t.append_env([1, 1, 1])
        t.append_generated([2, 2], [-0.1, -0.2])
        trajs.append(t)
    batch, _ = _scored(trajs)  # no entry stamped, no teacher labels
    assert batch.teachers is None and entry_metrics(trajs, batch, None) == {}
    metrics = rollout_metrics(trajs, batch, None)
    assert set(metrics) == {"rollout/reward", "rollout/success", "rollout/response_tokens", "rollout/turns",
                            "rollout/seq_len", "rollout/mixed_groups", "teacher/log_ratio/mean",
                            "teacher/log_ratio/std", "teacher/log_ratio/min", "teacher/log_ratio/max"}
    assert metrics["rollout/mixed_groups"] == 0.0  # groups of one episode: nothing an outcome advantage can act on
    trajs[1].group_id, trajs[1].reward = 0, 0.0  # episodes 0 and 1 now share a group and score unalike
    mixed, _ = _scored(trajs)
    assert rollout_metrics(trajs, mixed, None)["rollout/mixed_groups"] == pytest.approx(2 / 3)
    cfg = compose(["env=math"])
    assert cfg.mix == {} and cfg.env.name == "math"
    (entry,) = cfg.entries.values()  # a single-env run is a run of one entry, named after its env
    assert list(cfg.entries) == ["math"] and entry.env == cfg.env and entry.teacher is None


# ----------------------------------------------------------------------------- a mixed run


def test_mixed_run_with_two_routed_teachers(tmp_path):
    """One step of math + toolqa, math scored by tiny's teacher and toolqa by ``self`` (the student's own
    initial weights: on the first, on-policy step its log-ratio is ~0, the tiny teacher's is not)."""
    out = tmp_path / "run"
    cfg = compose([*MIX, "mix.toolqa.teacher=self", f"trainer.output_dir={out}", "trainer.total_steps=1",
                   "trainer.prompts_per_step=4", "trainer.group_size=1", "trainer.heldout_tasks=2",
                   "trainer.save_every=0", "engine.sampling.max_new_tokens=24", "mix.toolqa.env.max_turns=2"])
    draws = TaskSampler.from_config(cfg.entries, cfg.trainer.prompts_per_step, cfg.trainer.seed).tasks(0)
    assert {t["env"] for t in draws} == {"math", "toolqa"}  # this seed's first step has both
    seen: list[dict[str, float]] = []
    result = run_mod.train(cfg, progress=False, on_step=lambda r: seen.append(r.metrics))
    m = seen[0]
    for env in ("math", "toolqa"):
        for key in ("episodes", "reward", "success", "response_tokens", "turns", "log_ratio_mean"):
            assert f"env/{env}/{key}" in m, (env, key)
    n_env = {e: sum(t["env"] == e for t in draws) for e in ("math", "toolqa")}
    assert m["env/math/episodes"] == n_env["math"] and m["env/toolqa/episodes"] == n_env["toolqa"]
    assert m["rollout/success"] == pytest.approx(
        sum(m[f"env/{e}/success"] * n for e, n in n_env.items()) / sum(n_env.values()))
    # one teacher per env here, so each teacher's numbers are its env's
    assert m["teacher/tiny/log_ratio/mean"] == pytest.approx(m["env/math/log_ratio_mean"])
    assert m["teacher/self/log_ratio/mean"] == pytest.approx(m["env/toolqa/log_ratio_mean"])
    assert abs(m["teacher/self/log_ratio/mean"]) < 1e-3 < abs(m["teacher/tiny/log_ratio/mean"])
    assert m["teacher/tiny/score_s"] > 0 and m["teacher/self/score_s"] > 0
    tokens = {t: m[f"teacher/{t}/tokens"] for t in ("tiny", "self")}
    assert sum(tokens.values()) == m["num_tokens"]
    assert sum(m[f"teacher/{t}/frac_selected"] * n for t, n in tokens.items()) == pytest.approx(m["num_selected"])
    records = read_metrics(out)
    first, last = records[0], records[-1]
    for rec in (first, last):
        assert rec["eval/success"] == pytest.approx(0.5 * rec["eval/math/success"] + 0.5 * rec["eval/toolqa/success"])
    summary = json.loads((Path(result.output_dir) / "summary.json").read_text())
    assert summary["by_env"] == {"math": [first["eval/math/success"], last["eval/math/success"]],
                                 "toolqa": [first["eval/toolqa/success"], last["eval/toolqa/success"]]}


def test_mixed_run_resumed_after_a_crash_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    def cfg(out, *extra):
        return compose([*MIX, f"trainer.output_dir={out}", "trainer.total_steps=3", "trainer.save_every=1",
                        "trainer.keep_checkpoints=5", "trainer.prompts_per_step=2", "trainer.group_size=1",
                        "trainer.heldout_tasks=2", "trainer.lr=1e-3", "trainer.eval_every=2",
                        "engine.sampling.max_new_tokens=12", "mix.toolqa.env.max_turns=2", *extra])

    full = run_mod.train(cfg(tmp_path / "full"), progress=False)

    class Crash(RuntimeError):
        pass

    def crash(result):
        if result.step + 1 == 2:
            raise Crash("after step 2's evaluation, before its checkpoint (the last one: step 1)")

    with pytest.raises(Crash):
        run_mod.train(cfg(tmp_path / "crash"), progress=False, on_step=crash)
    resumed = run_mod.train(cfg(tmp_path / "crash", "trainer.resume=true"), progress=False)
    params = [load_file(str(Path(r.output_dir) / "checkpoints" / "step_00000003" / "model" / "model.safetensors"))
              for r in (full, resumed)]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    timing = lambda k: k.startswith("perf/") or k.endswith("/score_s")  # noqa: E731
    strip = lambda recs: [{k: v for k, v in r.items() if not timing(k)} for r in recs]  # noqa: E731
    assert strip(read_metrics(full.output_dir)) == strip(read_metrics(resumed.output_dir))
    assert resumed.by_env == full.by_env and resumed.evals == full.evals


def test_mix_routes_one_env_to_a_teacher_of_another_tokenizer(tmp_path, monkeypatch):
    """math -> tiny's teacher (the student's ids), toolqa -> a teacher with another tokenizer (the
    cross-tokenizer scorer): each row's log-probs and loss mask are the ones its own teacher wrote."""
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    from reopold_agents.teacher import CrossTokenizerTeacher, Teacher

    sys.path.insert(0, str(Path(__file__).parent))
    from _second_tokenizer import second_tokenizer

    tok2 = second_tokenizer()
    torch.manual_seed(3)
    # Llama, not qwen2: transformers loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which drops
    # this tokenizer's spaces (the preflight's chat-template check fails on that, rightly)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok2), hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                           eos_token_id=tok2.eos_token_id, pad_token_id=tok2.pad_token_id))
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(str(teacher_dir))
    tok2.save_pretrained(str(teacher_dir))
    seen, routers = [], []
    real_from = TeacherRouter.from_config.__func__
    monkeypatch.setattr(TeacherRouter, "from_config",
                        classmethod(lambda cls, *a, **k: routers.append(real_from(cls, *a, **k)) or routers[-1]))
    cfg = compose([*MIX, f"mix.toolqa.teacher={teacher_dir}", f"trainer.output_dir={tmp_path / 'run'}",
                   "trainer.total_steps=1", "trainer.prompts_per_step=4", "trainer.group_size=1",
                   "trainer.heldout_tasks=1", "trainer.save_every=0", "engine.sampling.max_new_tokens=16",
                   "mix.toolqa.env.max_turns=2"])
    run_mod.train(cfg, progress=False, on_step=seen.append)
    cross = teacher_label(str(teacher_dir))
    assert isinstance(routers[0].teachers[cross], CrossTokenizerTeacher)
    assert isinstance(routers[0].teachers["tiny"], Teacher)
    (result,) = seen
    batch, trajs = result.batch, result.trajectories
    assert batch.teachers == ["tiny" if t.entry == "math" else cross for t in trajs]
    assert set(batch.teachers) == {"tiny", cross}
    for i, t in enumerate(trajs):
        if batch.teachers[i] != cross:
            continue
        n = len(t)
        # what the cross-tokenizer teacher writes for this episode alone (its own loss mask and log-probs)
        alone = collate([t], 0)
        routers[0].teachers[cross].score(alone).apply_to(alone)
        assert torch.equal(batch.loss_mask[i, :n], alone.loss_mask[0])
        assert torch.allclose(batch.teacher_logprobs[i, :n], alone.teacher_logprobs[0], atol=1e-5)
        assert torch.all(batch.teacher_logprobs[i, n:] == 0)
    assert f"teacher/{cross}/log_ratio/mean" in result.metrics and "teacher/tiny/log_ratio/mean" in result.metrics
