"""The knowledge beds (issue 26): tiny pairs whose gap is something the student does not know, measured on
the one family of tasks where it matters (docs/run.md "Knowledge beds")."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from reopold_agents.tiny.sft import SFTConfig

BEDS = {  # pair -> (env, family kind, wrong procedure)
    "tiny_math_know": ("math", "math_mul", "mul_as_add"),
    "tiny_toolqa_know": ("toolqa", "toolqa_population", "population_as_founded"),
    "tiny_vqa_know": ("vqa", "vqa_bars", "tallest_as_shortest"),
}
FAMILY = {"math_mul": re.compile(r"What is [1-9] \* [1-9]\?"),
          "toolqa_population": re.compile(r"What is the population of \w+ in thousands\?"),
          "vqa_bars": re.compile(r"Which bar is the tallest\?")}


@pytest.mark.parametrize("pair", BEDS)
def test_knowledge_bed_recipe_names_its_family_and_procedure(pair):
    from reopold_agents.config.tiny_pairs import ENV_TINY, TINY_PAIRS
    from reopold_agents.tiny.recipes import RECIPES

    env, kind, procedure = BEDS[pair]
    recipe = RECIPES[pair]
    assert re.fullmatch(r"v\d+", recipe.version)
    assert (recipe.bed_env, recipe.bed_tasks, recipe.student_procedure) == (env, f"synthetic:{kind}", procedure)
    assert pair in TINY_PAIRS and pair not in ENV_TINY.values()  # the lead decides what model=tiny means


@pytest.mark.parametrize("pair", BEDS)
def test_knowledge_bed_is_shipped_by_its_recipe_and_loads(pair):
    from reopold_agents.models import load_model
    from reopold_agents.tiny.load import TINY_SIZES
    from reopold_agents.tiny.recipes import RECIPES, is_shipped, shipped_dir

    recipe = RECIPES[pair]
    assert is_shipped(pair), f"run `python scripts/build_tiny_models.py {pair} --force --ship`"
    for role in ("student", "teacher"):
        info = json.loads((shipped_dir(pair, role) / "build_info.json").read_text())
        assert info["version"] == recipe.version
        loaded = load_model(pair, role, "float32", "cpu")
        assert loaded.path == str(shipped_dir(pair, role))
        config = loaded.model.config
        text = getattr(config, "text_config", config)  # a VL model keeps its language model's sizes there
        assert text.hidden_size == TINY_SIZES[(pair, role)]["hidden_size"]
    student = json.loads((shipped_dir(pair, "student") / "build_info.json").read_text())
    assert student["student_procedure"] == recipe.student_procedure
    assert student["success"][recipe.bed_tasks] <= 0.2  # the build's own check on the family


@pytest.mark.parametrize("pair", BEDS)
def test_held_out_set_is_256_tasks_of_the_family_the_procedure_gets_wrong(pair):
    """The set testbed.py and the run measure: 256 tasks, every one of the bed's family, every one a task
    the student's wrong procedure rewrites (so the knowledge matters on each)."""
    from envs.factory import load_env_tasks
    from reopold_agents.config.schema import compose
    from reopold_agents.evaluation.heldout import heldout_env_config
    from reopold_agents.tiny.procedures import wrong_procedure
    from reopold_agents.tiny.recipes import RECIPES

    env, kind, procedure = BEDS[pair]
    cfg = compose([f"env={env}", f"model={pair}", f"env.tasks={RECIPES[pair].bed_tasks}"])
    assert cfg.trainer.heldout_tasks == 256
    tasks = load_env_tasks(heldout_env_config(cfg.env, cfg.trainer.heldout_tasks))
    assert len(tasks) == 256
    changed = 0
    for task in tasks:
        assert FAMILY[kind].fullmatch(task.question) and task.meta["family"]
        wrong = wrong_procedure(procedure, task)
        assert wrong is not None
        changed += wrong.demonstration != task.demonstration
    assert changed >= 0.95 * len(tasks)  # math: 2 * 2 = 2 + 2 is the one product addition gets right


@pytest.mark.parametrize("kind,env_kind,one_difficulty", [("math_mul", "math", True), ("toolqa_population", "toolqa", True),
                                                       ("vqa_bars", "vqa", False)])
def test_family_kind_words_its_tasks_as_the_env_kind_does(kind, env_kind, one_difficulty):
    """A family kind's tasks are exactly the env kind's tasks of that family: the teacher learned them there."""
    from tasks.synthetic import generate

    family = {(t.question, t.answer, tuple(t.demonstration)) for t in generate(kind, 400, seed=3)}
    generic = {(t.question, t.answer, tuple(t.demonstration)) for t in generate(env_kind, 3000, seed=3)
               if FAMILY[kind].fullmatch(t.question)}
    assert family and family <= generic
    assert generate(kind, 5, seed=3)[4] == generate(kind, 9, seed=3)[4]  # seeded, random access
    if one_difficulty:
        with pytest.raises(ValueError, match="difficulty"):
            generate(kind, 5, difficulty=2)[0]


def _bars_by_pixels(image) -> dict[str, int]:
    """Brute force: each bar's colour name -> its height in pixels, read back from the rendered chart (the
    non-white pixels of the middle column of each run of non-white columns)."""
    from tasks.synthetic.vqa_gen import COLORS, SIZE

    rgb = image.convert("RGB")
    white = (255, 255, 255)
    columns = [x for x in range(SIZE) if any(rgb.getpixel((x, y)) != white for y in range(SIZE))]
    runs: list[list[int]] = []
    for x in columns:
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    names = {rgb_value: name for name, rgb_value in COLORS.items()}
    bars = {}
    for run in runs:
        x = run[len(run) // 2]
        bars[names[rgb.getpixel((x, SIZE - 1))]] = sum(rgb.getpixel((x, y)) != white for y in range(SIZE))
    return bars


def test_tallest_as_shortest_boxes_the_shortest_bar_read_from_the_pixels():
    """The wrong procedure boxes the letter of the bar that is shortest in the rendered image, the correct
    demonstration the tallest's; the env scores the rewritten demonstration 0 and the correct one 1."""
    from envs.demo import play_demonstration
    from envs.vqa import VQAEnv
    from reopold_agents.tiny.procedures import wrong_procedure
    from tasks.synthetic import generate

    tasks = list(generate("vqa", 160, seed=7919))
    env = VQAEnv(tasks=tasks)
    bars = [t for t in tasks if t.meta["kind"] == "bars"]
    assert len(bars) > 20
    assert all(wrong_procedure("tallest_as_shortest", t) is None for t in tasks if t.meta["kind"] != "bars")
    letter = lambda task, color: f"\\boxed{{{chr(ord('A') + task.choices.index(color))}}}"  # noqa: E731
    for task in bars:
        heights = _bars_by_pixels(task.images[0])
        assert sorted(heights) == sorted(task.choices)
        wrong = wrong_procedure("tallest_as_shortest", task)
        assert task.demonstration == [letter(task, max(heights, key=heights.get))]
        assert wrong.demonstration == [letter(task, min(heights, key=heights.get))]
        assert play_demonstration(env, wrong).reward == 0.0 and play_demonstration(env, task).reward == 1.0
    env.close()


def test_mul_as_add_rewrites_only_products_and_the_env_scores_them_wrong():
    from envs.demo import play_demonstration
    from envs.math_env import MathEnv
    from reopold_agents.tiny.procedures import wrong_procedure
    from tasks.synthetic import generate

    tasks = list(generate("math", 300, seed=7919))
    env = MathEnv(tasks=tasks)
    rewritten = 0
    for task in tasks:
        wrong = wrong_procedure("mul_as_add", task)
        if wrong is None:
            assert " * " not in task.question
            continue
        rewritten += 1
        a, b = map(int, re.findall(r"\d+", task.question))
        assert wrong.demonstration == [f"{a} * {b} = {a + b}. \\boxed{{{a + b}}}"]
        assert play_demonstration(env, wrong).reward == float(a * b == a + b)  # only 2 * 2 is right
    assert 0.1 < rewritten / len(tasks) < 0.25  # the one-op family is a sixth of difficulty 1


def test_population_as_founded_boxes_the_year_from_the_same_search():
    from envs.demo import play_demonstration
    from envs.toolqa import ToolQAEnv
    from reopold_agents.tiny.procedures import wrong_procedure
    from tasks.synthetic import generate
    from tasks.synthetic.toolqa_gen import corpus_facts

    founded = {f["city"]: f["founded"] for f in corpus_facts()}
    tasks = list(generate("toolqa", 200, seed=7919))
    env = ToolQAEnv(tasks=tasks)
    rewritten = [(t, wrong_procedure("population_as_founded", t)) for t in tasks]
    rewritten = [(t, w) for t, w in rewritten if w is not None]
    assert rewritten and all("population" in t.question for t, _ in rewritten)
    assert all(wrong_procedure("population_as_founded", t) is None for t in tasks if "population" not in t.question)
    for task, wrong in rewritten:
        city = task.question.split(" of ")[1].split(" in ")[0]
        assert wrong.demonstration[0] == task.demonstration[0]  # the same search ...
        assert wrong.demonstration[1] == f"\\boxed{{{founded[city]}}}"  # ... read wrong
        demo = play_demonstration(env, wrong)
        assert demo.reward == 0.0 and str(founded[city]) in str(demo.messages[-2]["content"])


def test_student_demonstrations_carry_the_procedure_and_the_teachers_do_not():
    from reopold_agents.tiny import build_tokenizer
    from reopold_agents.tiny.recipes import demonstration_examples

    tok = build_tokenizer()

    def replies(procedure):
        exs = demonstration_examples("math", 120, tok, procedure=procedure)
        return [tok.decode([t for t, m in zip(e.input_ids, e.loss_mask) if m]) for e in exs]

    right, wrong = replies(None), replies("mul_as_add")
    changed = [(r, w) for r, w in zip(right, wrong) if r != w]
    assert changed and all(" * " in r for r, _ in changed)
    for r, w in changed:
        a, b = map(int, re.findall(r"(\d+) \* (\d+)", r)[0])
        assert f"= {a * b}." in r and f"= {a + b}." in w


def test_recipe_rejects_a_bad_procedure_or_half_a_bed():
    from reopold_agents.tiny.recipes import RECIPES

    base = RECIPES["tiny_math_know"]
    with pytest.raises(ValueError, match="student_procedure"):
        dataclasses.replace(base, student_procedure="div_as_sub")
    with pytest.raises(ValueError, match="bed_env and bed_tasks"):
        dataclasses.replace(base, bed_tasks=None)
    with pytest.raises(ValueError, match="synthetic task kind"):
        dataclasses.replace(base, bed_tasks="gsm8k.jsonl")
    with pytest.raises(ValueError, match="teacher_more"):
        dataclasses.replace(RECIPES["tiny"], teacher_more=SFTConfig())


def test_a_teacher_can_be_trained_further_from_another_pairs_teacher(tmp_path, monkeypatch):
    """teacher_more starts from teacher_from's teacher and trains it (SFT stubbed: the weights stay equal)."""
    import torch
    from safetensors.torch import load_file

    import reopold_agents.tiny.recipes as tm
    from reopold_agents.tiny.load import tiny_model_dir

    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(tm, "sft_train", lambda model, examples, sft, *a, **k: calls.append((sft, len(examples))) or [0.0])
    monkeypatch.setattr(tm, "_greedy_success", lambda *a, **k: 0.5)
    recipe = dataclasses.replace(tm.RECIPES["tiny_math_know"], demos_per_env=20)
    monkeypatch.setitem(tm.RECIPES, "tiny_math_know", recipe)
    report = tm.build_tiny("tiny_math_know", progress=False, roles=("teacher",))
    assert calls == [(recipe.teacher_more, 20)]
    assert report.success["teacher"] == {"math": 0.5, "synthetic:math_mul": 0.5}
    info = json.loads((tiny_model_dir("tiny_math_know", "teacher") / "build_info.json").read_text())
    assert info["continued_from"] == "tiny teacher" and info["sft"]["steps"] == recipe.teacher_more.steps
    ours = load_file(str(tiny_model_dir("tiny_math_know", "teacher") / "model.safetensors"))
    theirs = load_file(str(tiny_model_dir("tiny", "teacher") / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_testbed_measures_a_knowledge_bed_on_its_family(tmp_path):
    """scripts/testbed.py on the math knowledge bed: its family's held-out tasks, and each model's chance of
    sampling the correct demonstration (8 tasks; the upper-bound path is test_tiny_sft's testbed test)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bed.json"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(root / "scripts" / "testbed.py"), "tiny_math_know", "--skip", "upper",
                    "--threads", "1", "--demo-logprob", "--out", str(out), "trainer.heldout_tasks=8"],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    got = json.loads(out.read_text())
    assert got["task_source"] == "synthetic:math_mul" and got["tasks"] == 8 and "upper" not in got
    assert got["teacher_demo_p_mean"] > 0.5 > 0.01 > got["student_demo_p_mean"]


@pytest.mark.slow
@pytest.mark.parametrize("pair", BEDS)
def test_knowledge_bed_gap_holds_on_64_held_out_tasks(pair):
    """Re-measure a bed on the first 64 of its 256 held-out tasks: teacher >= 0.9, student <= 0.2."""
    from reopold_agents.config.schema import compose
    from reopold_agents.evaluation.heldout import model_success
    from reopold_agents.models import load_model
    from reopold_agents.tiny.recipes import RECIPES

    env = BEDS[pair][0]
    cfg = compose([f"env={env}", f"model={pair}", f"env.tasks={RECIPES[pair].bed_tasks}", "trainer.heldout_tasks=64"])
    success = {}
    for role in ("teacher", "student"):
        loaded = load_model(pair, role, "float32", "cpu")
        success[role] = model_success(cfg, loaded.model, loaded.tokenizer, loaded.processor)
    assert success["teacher"] >= 0.9 and success["student"] <= 0.2, success


def test_testbed_refuses_upper_steps_for_a_student_without_an_sft_run(tmp_path):
    """tiny_toolqa_know's student starts from tiny's teacher: that model is its upper bound, not an SFT run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(root / "scripts" / "testbed.py"), "tiny_toolqa_know", "--upper-steps", "5"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "no student SFT run" in done.stderr and "upper-steps" in done.stderr


@pytest.mark.parametrize("bed,env,family,steps", [
    ("math_know", "math", "synthetic:math_mul", 400),
    ("toolqa_know", "toolqa", "synthetic:toolqa_population", 60),
])
def test_know_experiment_runs_the_bed_with_the_forward_top_k_and_its_grpo_control(bed, env, family, steps):
    """``experiment=<bed>`` sets the bed's env, family, the forward top-k objective and the measured budget;
    ``algo=grpo`` swaps in the control without a key it does not read."""
    from reopold_agents.config import compose
    from reopold_agents.objectives import check_algo
    from reopold_agents.tiny.recipes import RECIPES

    pair = f"tiny_{bed}"
    cfg = compose([f"experiment={bed}", f"model={pair}"])
    check_algo(cfg.algo)
    assert (cfg.env.name, cfg.env.tasks, cfg.model.student, cfg.model.teacher) == (env, family, pair, pair)
    assert RECIPES[pair].bed_env == env and RECIPES[pair].bed_tasks == family  # the bed the benchmarks measure
    assert (cfg.algo.name, cfg.algo.gkd_direction, cfg.algo.stage1_rule) == ("reopold_topk", "forward", "all")
    assert (cfg.trainer.total_steps, cfg.trainer.lr, cfg.trainer.heldout_tasks) == (steps, 3e-4, 256)
    control = compose([f"experiment={bed}", f"model={pair}", "algo=grpo"])
    check_algo(control.algo)
    assert control.algo.name == "grpo" and control.trainer == cfg.trainer and control.env == cfg.env
