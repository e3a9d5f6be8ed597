"""The benchmark scripts still run: each one's smallest configuration, asserting its closing ratio line.

Random tiny models (an empty model cache, like tests/test_run_e2e.py) and a 4-task held-out set keep
this fast; the numbers are meaningless here, only that every script runs end to end and ends with the
line docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _last_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines, "the script printed nothing"
    return lines[-1]


@pytest.fixture
def random_tiny(tmp_path):
    """The shipped tiny pair with 4 held-out tasks (SMALL_RUN); restores torch's thread count."""
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


SMALL_RUN = ["engine.sampling.max_new_tokens=6", "env.max_turns=1", "trainer.heldout_tasks=4"]


def test_sample_efficiency_smallest(random_tiny, capsys):
    se = _load("sample_efficiency")
    ratios = se.main(["--quick", "--steps", "2", "--eval-every", "1", "--prompts", "2", "--group", "2",
                      "--methods", "reopold", "grpo", "--out", str(random_tiny / "out"), "--override", *SMALL_RUN])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1].startswith("ratios samples-to-70%-gap vs REOPOLD, the best REOPOLD variant (math): GRPO/REOPOLD "), lines[-1]
    assert "DAPO/REOPOLD n/a (not run), OPD/REOPOLD n/a (not run)" in lines[-1]
    assert any(ln.startswith("math: teacher ") and "50% of the gap" in ln and "4 held-out tasks" in ln for ln in lines), out
    assert any("to 50%" in ln and "to 70%" in ln and "unstable" in ln for ln in lines), out
    assert set(ratios) == {"grpo"} and isinstance(ratios["grpo"], float)
    assert (random_tiny / "out" / "sample_efficiency_quick.png").stat().st_size > 0
    saved = random_tiny / "out" / "sample_efficiency_quick.json"
    curves, teachers, meta = se.load_json(str(saved))
    assert [c.method for c in curves] == ["reopold", "grpo"] and len(curves[0].points) == 3
    assert curves[0].teacher is not None and curves[1].teacher is None  # only the first run measured it
    assert meta["math"]["heldout_tasks"] == 4 and meta["math"]["lr"] == pytest.approx(1e-4)  # the math preset's lr
    se.main(["--from-json", str(saved), "--out", str(random_tiny / "again"), "--name", "again"])
    assert _last_line(capsys) == lines[-1]  # re-summarising this version's JSON prints the same ratios


def test_sample_efficiency_samples_to_target():
    se = _load("sample_efficiency")
    c = se.RunCurve("math", "reopold", 0, 16, [(0, 0.1), (16, 0.3), (32, 0.5), (48, 0.45)])
    assert c.samples_to(0.3) == 16 and c.samples_to(0.5) == 32 and c.samples_to(0.0) == 0
    assert math.isinf(c.samples_to(0.51)) and c.final == 0.45 and c.best == 0.5 and not c.unstable
    assert se.RunCurve("math", "grpo", 0, 16, [(0, 0.2), (16, 0.6), (32, 0.19)]).unstable


def _curves(se):
    """Hand-made math curves: start 0.2, teacher 0.8, so the 50 % / 70 % targets are 0.5 / 0.62."""
    pts = lambda *ys: [(16 * i, y) for i, y in enumerate(ys)]  # noqa: E731
    return [
        se.RunCurve("math", "reopold", 0, 16, pts(0.2, 0.5, 0.7, 0.8)),    # 50%: 16, 70%: 32
        se.RunCurve("math", "reopold", 1, 16, pts(0.2, 0.4, 0.6, 0.65)),   # 50%: 32, 70%: 48
        se.RunCurve("math", "reopold", 2, 16, pts(0.2, 0.3, 0.55, 0.6)),   # 50%: 32, 70%: never
        se.RunCurve("math", "grpo", 0, 16, pts(0.2, 0.1, 0.3, 0.62)),      # unstable; 70%: 48
        se.RunCurve("math", "grpo", 1, 16, pts(0.2, 0.2, 0.5, 0.7)),       # 50%: 32, 70%: 48
        se.RunCurve("math", "grpo", 2, 16, pts(0.2, 0.19, 0.2, 0.3)),      # unstable; never
        se.RunCurve("math", "dapo", 0, 16, pts(0.2, 0.2, 0.2, 0.2)),       # never
        se.RunCurve("math", "opd", 0, 16, pts(0.2, 0.62, 0.62, 0.62)),     # 70%: 16
    ]


def test_sample_efficiency_summary_targets_and_stability():
    se = _load("sample_efficiency")
    curves = _curves(se)
    targets = {"math": se.gap_targets(curves, "math", 0.8, [0.5, 0.7], 256)}
    assert targets == {"math": {"50%": 0.5, "70%": 0.62}}
    s = se.summarize(curves, targets, {"math": 0.8})["math"]
    ours, rl = s["reopold"], s["grpo"]
    assert ours["samples_to"]["50%"] == {"target": 0.5, "median": 32, "min": 16, "max": 32, "reached": 3}
    assert ours["samples_to"]["70%"]["median"] == 48 and math.isinf(ours["samples_to"]["70%"]["max"])
    assert ours["samples_to"]["70%"]["reached"] == 2 and ours["unstable"] == 0
    assert rl["unstable"] == 2 and rl["samples_to"]["70%"]["median"] == 48 and rl["samples_to"]["50%"]["median"] == 48
    assert ours["final_median"] == 0.65 and ours["gap_closed_median"] == pytest.approx(0.45 / 0.6)
    assert s["dapo"]["gap_closed_median"] == 0.0 and s["dapo"]["unstable"] == 0
    lines: list[str] = []
    ratios = se.report({"math": s}, {"math": {"teacher": 0.8, "lr": 1e-4, "heldout_tasks": 256}}, lines.append)
    assert lines[-1] == ("ratios samples-to-70%-gap vs REOPOLD, the best REOPOLD variant (math): GRPO/REOPOLD 1.00x, "
                         "DAPO/REOPOLD >= 1.00x (DAPO did not reach it in 48 samples), OPD/REOPOLD 0.33x, "
                         "DENSE_KL/REOPOLD n/a (not run)")
    assert ratios == {"grpo": 1.0, "dapo": 1.0, "opd": pytest.approx(1 / 3)}
    grpo_row = next(ln for ln in lines if ln.startswith("grpo "))
    assert "48 [32, >48]" in grpo_row and " 2/3 " in grpo_row


def test_sample_efficiency_ratios_against_the_best_reopold_variant(tmp_path):
    """The ratio line compares against the REOPOLD variant that got furthest (here reopold_topk: plain
    REOPOLD never reaches 70 %), and --from-json merges one file per seed."""
    se = _load("sample_efficiency")
    pts = lambda *ys: [(16 * i, y) for i, y in enumerate(ys)]  # noqa: E731
    curves = [se.RunCurve("math_know", "reopold", 0, 16, pts(0.0, 0.0, 0.1, 0.2)),
              se.RunCurve("math_know", "reopold_topk", 0, 16, pts(0.0, 0.3, 0.7, 0.9)),   # 70 %: 32
              se.RunCurve("math_know", "grpo", 0, 16, pts(0.0, 0.0, 0.0, 0.0)),
              se.RunCurve("math_know", "dense_kl", 0, 16, pts(0.0, 0.2, 0.5, 0.8))]        # 70 %: 48
    targets = {"math_know": se.gap_targets(curves, "math_know", 1.0, [0.5, 0.7], 256)}
    s = se.summarize(curves, targets, {"math_know": 1.0})
    assert se.best_variant(s["math_know"]) == "reopold_topk"
    lines: list[str] = []
    ratios = se.report(s, {"math_know": {"teacher": 1.0, "lr": 3e-4, "heldout_tasks": 256}}, lines.append)
    assert lines[-1] == ("ratios samples-to-70%-gap vs REOPOLD_TOPK, the best REOPOLD variant (math_know): "
                         "GRPO/REOPOLD_TOPK >= 1.50x (GRPO did not reach it in 48 samples), "
                         "DAPO/REOPOLD_TOPK n/a (not run), OPD/REOPOLD_TOPK n/a (not run), DENSE_KL/REOPOLD_TOPK 1.50x")
    assert ratios == {"grpo": 1.5, "dense_kl": 1.5}
    files = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps({"teacher_success": {"math_know": 1.0},
                                    "env_config": {"math_know": {"heldout_tasks": 256, "lr": 3e-4}},
                                    "curves": [dataclasses.asdict(dataclasses.replace(c, seed=seed)) for c in curves]}))
        files.append(str(path))
    merged, teachers, meta = se.merge_json([*files, files[0]])  # the repeated file's runs are skipped
    assert len(merged) == 8 and {c.seed for c in merged} == {0, 1} and teachers == {"math_know": 1.0}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"teacher_success": {"math_know": 0.9},
                                 "env_config": {"math_know": {"heldout_tasks": 256, "lr": 3e-4}}, "curves": []}))
    with pytest.raises(SystemExit, match="other.json"):
        se.merge_json([files[0], str(other)])


def test_sample_efficiency_ratio_not_reached():
    se = _load("sample_efficiency")
    never = {"samples_to": {"70%": {"median": math.inf}}, "budget": 2400}
    at = lambda x: {"samples_to": {"70%": {"median": x}}, "budget": 2400}  # noqa: E731
    assert se.ratio(at(1200), at(400), "70%", "GRPO") == (3.0, "3.00x")
    assert se.ratio(never, at(400), "70%", "GRPO") == (6.0, ">= 6.00x (GRPO did not reach it in 2400 samples)")
    assert se.ratio(at(1200), never, "70%", "GRPO") == (0.5, "<= 0.50x (REOPOLD did not reach it in 2400 samples)")
    value, text = se.ratio(never, never, "70%", "GRPO")
    assert math.isnan(value) and text.startswith("n/a")


def test_sample_efficiency_teacher_not_above_start():
    se = _load("sample_efficiency")
    curves = [se.RunCurve("toolqa", "reopold", 0, 16, [(0, 0.0), (16, 0.0)])]
    said: list[str] = []
    assert se.gap_targets(curves, "toolqa", 0.0, [0.5, 0.7], 64, said.append) == {"50%": 0.0156, "70%": 0.0156}
    assert "one more task solved" in said[0]


def test_benchmarks_import_the_package_not_each_other():
    """Shared code lives in reopold_agents.benchmarking: no script edits sys.path or imports a sibling."""
    scripts = {p.stem for p in BENCH.glob("*.py")}
    for path in BENCH.glob("*.py"):
        src = path.read_text()
        assert "sys.path" not in src, path.name
        imported = set(re.findall(r"^\s*(?:from|import)\s+(\w+)", src, flags=re.M))
        assert not imported & scripts, (path.name, imported & scripts)


@pytest.mark.parametrize("script", ["sweep", "vs_trl_learning"])
def test_script_runs_by_path_from_anywhere(script, tmp_path):
    """``python benchmarks/<script>.py`` as documented, from another folder: the package import resolves."""
    import subprocess

    res = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "usage:" in res.stdout, res.stderr[-2000:]


def test_sweep_one_factor_design_and_ranking():
    sw = _load("sweep")
    base = {"clip_lambda": 0.2, "beta": 0.5, "stage_switch": 0.5, "lr": 1e-4}
    levels = {"clip_lambda": [0.1, 0.2, 0.3], "beta": [0.2, 0.5], "stage_switch": [0.3, 0.5], "lr": [1e-4, 2e-4, 5e-5]}
    design = sw.one_factor_configs(levels, base)
    assert design[0] == base and len(design) == 7
    assert [sw.label(c, base) for c in design] == [
        "defaults", "clip_lambda=0.1", "clip_lambda=0.3", "beta=0.2", "stage_switch=0.3", "lr=0.0002", "lr=5e-05"]
    assert all(sum(c[k] != base[k] for k in base) == 1 for c in design[1:])
    grid = sw.grid_configs(levels)
    assert len(grid) == 36 and len({tuple(c.values()) for c in grid}) == 36 and base in grid
    assert sw.config_overrides(design[1]) == ("algo.clip_lambda=0.1", "algo.beta=0.5", "algo.stage_switch=0.5",
                                              "trainer.lr=0.0001")
    from reopold_agents.benchmarking.gap_targets import gap_targets
    from reopold_agents.benchmarking.learning_runs import RunCurve

    pts = lambda *ys: [(16 * i, y) for i, y in enumerate(ys)]  # noqa: E731
    configs = {sw.label(c, base): c for c in design[:4]}
    curves = [RunCurve("math", "defaults", 0, 16, pts(0.2, 0.5, 0.8)),        # gap 100 %, 70 % at 32
              RunCurve("math", "clip_lambda=0.1", 0, 16, pts(0.2, 0.7, 0.8)),  # gap 100 %, 70 % at 16
              RunCurve("math", "clip_lambda=0.3", 0, 16, pts(0.2, 0.9, 0.5)),  # best eval 0.9, gap 50 %
              RunCurve("math", "beta=0.2", 0, 16, pts(0.2, 0.1, 0.2))]         # gap 0 %
    targets = gap_targets(curves, "math", 0.8, [0.5, 0.7], 256)
    rows = sw.rows_of(curves, configs, targets, 0.8)
    assert [r["label"] for r in sw.rank(rows)] == ["clip_lambda=0.1", "defaults", "clip_lambda=0.3", "beta=0.2"]
    r3 = next(r for r in rows if r["label"] == "clip_lambda=0.3")
    assert r3["best_median"] == 0.9 and r3["final_median"] == 0.5 and r3["gap_closed_median"] == pytest.approx(0.5)
    lines: list[str] = []
    best = sw.report(rows, "math", targets, 0.8, 0.2, 256, lines.append)
    assert best["label"] == "clip_lambda=0.1"
    assert lines[-1] == ("best config (math): clip_lambda=0.1 beta=0.5 stage_switch=0.5 lr=0.0001 [clip_lambda=0.1]: "
                         "gap closed 100%, samples to 70% 16")
    assert "| clip_lambda=0.1 | 0.1 | 0.5 | 0.5 | 0.0001 | 0.800 | 0.800 | 16 | 16 | 100% |" in lines


def test_sweep_smallest(random_tiny, capsys):
    sw = _load("sweep")
    best = sw.main(["--steps", "2", "--eval-every", "1", "--prompts", "2", "--group", "2", "--clip-lambdas", "0.2", "0.3",
                    "--betas", "0.5", "--stage-switches", "0.5", "--lrs", "1e-4", "--out", str(random_tiny / "out"),
                    "--override", *SMALL_RUN])
    last = _last_line(capsys)
    assert last.startswith("best config (math): clip_lambda=") and best["label"] in ("defaults", "clip_lambda=0.3"), last
    assert (random_tiny / "out" / "sweep_math.png").stat().st_size > 0
    assert len(json.loads((random_tiny / "out" / "sweep_math.json").read_text())["rows"]) == 2


def test_tts_speedup_smallest(random_tiny, capsys):
    tts = _load("tts_speedup")
    ratio = tts.main(["--quick", "--steps", "1", "--k", "2", "--limit", "2", "--repeats", "1",
                      "--out", str(random_tiny / "out"), "--override", "trainer.prompts_per_step=2", *SMALL_RUN])
    last = _last_line(capsys)
    assert last.startswith("ratio speed-up at matched accuracy, distilled student vs teacher (arith):"), last
    assert (random_tiny / "out" / "tts_speedup_quick.png").stat().st_size > 0
    assert isinstance(ratio, float)


def test_vs_trl_smallest(capsys):
    pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[trl]'")
    vs = _load("vs_trl")
    ratio = vs.main(["--vocab", "0", "--batch", "2", "--completion-tokens", "4", "--repeats", "1",
                     "--mem-repeats", "0"])
    last = _last_line(capsys)
    assert last.startswith("ratio reopold vs trl_distill: time per sample"), last
    assert ratio > 0


def test_vs_trl_trl_sides_compute_reverse_kl():
    """The TRL sides are configured as claimed: their loss on the batch is the full-vocabulary reverse KL
    KL(student || teacher), averaged over completion tokens (brute force from the two models' logits)."""
    pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[trl]'")
    import tempfile

    vs = _load("vs_trl")
    args = vs.parse_args(["--vocab", "0", "--batch", "2", "--completion-tokens", "3"])
    tok, student, _ = vs._models(0, 0)
    samples = vs.make_samples(tok, student, 2, 3, 0)
    assert all(len(s.completion) == 3 and max(s.completion) < len(tok) for s in samples)
    _, s_model, t_model = vs._models(0, 0)
    kls = []
    with torch.no_grad():
        for smp in samples:
            ids = torch.tensor([smp.prompt + smp.completion])
            ls = torch.log_softmax(s_model(input_ids=ids).logits[0].double(), -1)
            lt = torch.log_softmax(t_model(input_ids=ids).logits[0].double(), -1)
            pos = range(len(smp.prompt) - 1, ids.shape[1] - 1)  # logits predicting the completion tokens
            kls += [float((ls[i].exp() * (ls[i] - lt[i])).sum()) for i in pos]
    expected = sum(kls) / len(kls)
    with tempfile.TemporaryDirectory() as d:
        for side in ("trl_gkd", "trl_distill"):
            step = vs.build_side(side, args, samples, d)
            step.model.eval()
            with torch.no_grad():
                inputs = step.trainer._prepare_inputs(step.inputs())
                loss = float(step.trainer.compute_loss(step.model, inputs))
            assert loss == pytest.approx(expected, rel=1e-4), side


RATIO_LINE = re.compile(r"^ratio wall-clock to 70 % of the gap, ours/TRL: GKD (?:(?:<=|>=) )?\d+\.\d\dx.*|"
                        r"^ratio wall-clock to 70 % of the gap, ours/TRL: GKD n/a")


def test_vs_trl_learning_quick(random_tiny, capsys):
    """--quick end to end: ours, TRL's GKD (lmbda=1) and DistillationTrainer each train 3 steps of 16 student
    samples (TRL generating itself) and are evaluated by our held-out set at 0, 16, 32 and 48 samples."""
    pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[trl]'")
    vl = _load("vs_trl_learning")
    ratios = vl.main(["--quick", "--out", str(random_tiny / "out")])
    last = _last_line(capsys)
    assert RATIO_LINE.match(last) and ", DistillationTrainer " in last and last.endswith("(goal <= 0.5x)"), last
    assert set(ratios) == {"trl_gkd", "trl_distill"}
    saved = json.loads((random_tiny / "out" / "vs_trl_learning_quick.json").read_text())
    curves = {c["side"]: c for c in saved["curves"]}
    assert set(curves) == {"reopold", "trl_gkd", "trl_distill"}
    for side, c in curves.items():
        assert c["error"] is None, (side, c["error"])
        assert [p[0] for p in c["points"]] == [0, 16, 32, 48], side  # the budget's samples, evaluated every step
        secs = [p[1] for p in c["points"]]
        assert secs[0] == 0 and all(b > a for a, b in zip(secs, secs[1:])), (side, secs)
        assert all(0.0 <= p[2] <= 1.0 for p in c["points"])
    assert len({c["points"][0][2] for c in curves.values()}) == 1  # the same student at step 0 on every side
    assert saved["meta"]["heldout_tasks"] == 8 and saved["meta"]["lr"] == pytest.approx(1e-4)
    assert saved["meta"]["ours"] == "ours:reopold"  # the table names our side by the objective it ran
    assert (random_tiny / "out" / "vs_trl_learning_quick.png").stat().st_size > 0


def _side_curves(vl):
    """Hand-made: start 0.2, teacher 0.8 (targets 0.5 / 0.62); (samples, training seconds, success)."""
    SC = vl.SideCurve
    return [
        SC("reopold", 0, [(0, 0.0, 0.2), (16, 1.0, 0.5), (32, 2.0, 0.7)]),    # 50%: 16 / 1.0 s, 70%: 32 / 2.0 s
        SC("reopold", 1, [(0, 0.0, 0.2), (16, 1.2, 0.4), (32, 2.4, 0.65)]),   # 50%, 70%: 32 / 2.4 s
        SC("reopold", 2, [(0, 0.0, 0.2), (16, 1.1, 0.3), (32, 2.2, 0.55)]),   # 50%: 32 / 2.2 s, 70%: never
        SC("trl_gkd", 0, [(0, 0.0, 0.2), (16, 2.0, 0.3), (32, 4.0, 0.62)]),   # 70%: 32 / 4 s
        SC("trl_gkd", 1, [(0, 0.0, 0.2), (16, 2.0, 0.6), (32, 5.0, 0.7)]),    # 50%: 16 / 2 s, 70%: 32 / 5 s
        SC("trl_gkd", 2, [(0, 0.0, 0.2), (16, 3.0, 0.5), (32, 6.0, 0.9)]),    # 50%: 16 / 3 s, 70%: 32 / 6 s
        SC("trl_distill", 0, error="ImportError: no vllm"),
    ]


def test_vs_trl_learning_reach_and_summary():
    vl = _load("vs_trl_learning")
    curves = _side_curves(vl)
    assert curves[0].reach(0.5) == (16, 1.0) and curves[0].reach(0.2) == (0, 0.0)
    assert curves[2].reach(0.62) == (math.inf, math.inf) and curves[2].budget == (32, 2.2)
    from reopold_agents.benchmarking.gap_targets import gap_targets

    targets = gap_targets([c.run_curve(16) for c in curves if c.error is None], "math", 0.8, [0.5, 0.7], 256)
    assert targets == {"50%": 0.5, "70%": 0.62}
    s = vl.summarize(curves, targets)
    ours, gkd = s["reopold"], s["trl_gkd"]
    assert ours["samples_to"]["70%"] == {"target": 0.62, "median": 32, "min": 32, "max": math.inf, "reached": 2}
    assert ours["seconds_to"]["70%"]["median"] == 2.4 and ours["seconds_to"]["50%"]["median"] == 2.2
    assert gkd["seconds_to"]["70%"]["median"] == 5.0 and gkd["samples_to"]["50%"]["median"] == 16
    assert ours["final"] == {"median": 0.65, "min": 0.55, "max": 0.7, "reached": 3}
    assert gkd["train_seconds_median"] == 5.0
    assert s["trl_distill"] == {"seeds": 0, "errors": ["seed 0: ImportError: no vllm"]}
    lines: list[str] = []
    meta = {"teacher": 0.8, "start": 0.2, "targets": targets, "heldout_tasks": 256, "lr": 1e-4, "per_step": 16}
    ratios = vl.report(s, meta, lines.append)
    assert lines[-1] == ("ratio wall-clock to 70 % of the gap, ours/TRL: GKD 0.48x, DistillationTrainer n/a "
                         "(DistillationTrainer failed: seed 0: ImportError: no vllm) (goal <= 0.5x)")
    assert ratios["trl_gkd"] == pytest.approx(0.48) and math.isnan(ratios["trl_distill"])
    row = next(ln for ln in lines if ln.startswith("reopold "))
    assert "32 [32, >32]" in row and "2.4s [2.0s, >2.2s]" in row, row
    assert any(ln.startswith(f"{'trl_distill':<28} FAILED: seed 0: ImportError") for ln in lines), lines
    named = []
    vl.report(s, dict(meta, ours="ours:reopold_topk-forward"), named.append)  # our side named by its objective
    assert any(ln.startswith("ours:reopold_topk-forward ") for ln in named) and not any(ln.startswith("reopold ") for ln in named)


def test_vs_trl_learning_ratio_bounds():
    vl = _load("vs_trl_learning")

    def side(secs: float, total: float) -> dict:
        return {"seeds": 3, "seconds_to": {"70%": {"median": secs}}, "train_seconds_median": total,
                "budget_samples": 320}

    assert vl.time_ratio(side(2.0, 9.0), side(8.0, 20.0), "70%", "GKD") == (0.25, "0.25x")
    assert vl.time_ratio(side(2.0, 9.0), side(math.inf, 20.0), "70%", "GKD") == (
        0.1, "<= 0.10x (GKD did not reach it in 320 samples)")
    assert vl.time_ratio(side(math.inf, 9.0), side(4.5, 20.0), "70%", "GKD") == (
        2.0, ">= 2.00x (ours did not reach it in 320 samples)")
    value, text = vl.time_ratio(side(math.inf, 9.0), side(math.inf, 20.0), "70%", "GKD")
    assert math.isnan(value) and text == "n/a (neither reached it)"
    value, text = vl.time_ratio(side(0.0, 9.0), side(0.0, 20.0), "70%", "GKD")
    assert math.isnan(value) and text.startswith("n/a (GKD is at the target from the start")


def test_vs_trl_learning_clock_excludes_evaluation():
    """The TRL-side clock stops while our evaluation runs (each one takes 10 fake seconds here)."""
    vl = _load("vs_trl_learning")
    now = [0.0]

    def evaluate() -> float:
        now[0] += 10.0
        return 0.5

    curve = vl.SideCurve("trl_gkd", 0)
    clock = vl.HeldoutClock(evaluate, every=2, total=3, per_step=16, curve=curve, clock=lambda: now[0])
    clock.begin()                    # step-0 evaluation: 0 -> 10 s
    for step, dt in ((1, 1.0), (2, 1.5), (3, 1.0)):
        now[0] += dt                 # a training step
        clock.step(step)             # evaluates after steps 2 (every) and 3 (the last)
    assert curve.points == [(0, 0.0, 0.5), (32, 2.5, 0.5), (48, 3.5, 0.5)]


def test_vs_trl_learning_checks_prompts():
    vl = _load("vs_trl_learning")
    vl.check_prompts("trl_gkd", [[1, 2], [3]], [[1, 2], [3]])
    with pytest.raises(RuntimeError, match="1 of 2 prompts tokenised differently"):
        vl.check_prompts("trl_gkd", [[1, 2], [3, 4]], [[1, 2], [3]])
    with pytest.raises(SystemExit):
        vl.parse_args(["--samples", "40"])  # not a multiple of a step's 16 samples


def test_packing_smallest(random_tiny, capsys):
    """benchmarks/packing.py: both batches run, packed and padded agree, the ratios end the output."""
    bench = _load("packing")
    out = random_tiny / "packing.json"
    ratios = bench.main(["--rows", "4", "--repeats", "1", "--long", "60", "80", "--short", "5", "20",
                         "--suffix-short", "2", "5", "--suffix-long", "10", "20", "--prompt-limit", "100",
                         "--threads", "1", "--json", str(out)])
    last = _last_line(capsys)
    assert re.fullmatch(r"learner tokens/s packed/padded: mixed \d+\.\d\dx \(goal >= 1\.5x: (met|MISSED)\), "
                        r"toolqa shared prompt \d+\.\d\dx", last), last
    assert set(ratios) == {"mixed", "toolqa"} and all(r > 0 for r in ratios.values())
    saved = json.loads(out.read_text())
    assert saved["cases"]["toolqa"]["shape"][0] == 4 and saved["cases"]["mixed"]["max_diff"] <= 1e-4
    assert len(saved["cases"]["mixed"]["times"]["packed"]) == 1


def test_contention_smallest(random_tiny, capsys):
    """benchmarks/contention.py: a quiet and a contended 2-step run (in this process), the ratio last; the
    busy competitor is gone afterwards."""
    bench = _load("contention")
    out = random_tiny / "contention.json"
    ratio = bench.main(["--steps", "2", "--heldout", "4", "--in-process", "--json", str(out), "--override",
                        *SMALL_RUN, "trainer.prompts_per_step=2", "trainer.group_size=2", "trainer.save_every=0"])
    last = _last_line(capsys)
    assert re.fullmatch(r"median step time \(steps 2\.\.2, 1 repeat\): quiet \d+\.\d{3}s, beside one busy process "
                        r"\d+\.\d{3}s: ratio \d+\.\d\dx \(goal <= 2\.5x: (met|MISSED)\)", last), last
    saved = json.loads(out.read_text())
    assert [r["condition"] for r in saved["runs"]] == ["quiet", "contended"] and ratio == pytest.approx(saved["ratio"])
    assert all(len(r["step_times"]) == 1 for r in saved["runs"])
    assert not _busy_children(), "the competitor outlived the benchmark"


def _busy_children() -> list[int]:
    """This process's children running the benchmark's busy loop."""
    import os

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"while True" in cmdline:
            found.append(int(proc.name))
    return found


def test_prefix_groups_smallest(random_tiny, capsys):
    """benchmarks/prefix_groups.py: both headers run, before and after agree, each prompt becomes a group,
    the ratios end the output."""
    bench = _load("prefix_groups")
    out = random_tiny / "prefix_groups.json"
    ratio = bench.main(["--headers", "40", "70", "--prompts", "70", "90", "--samples", "2", "--reply", "3", "6",
                        "--repeats", "1", "--threads", "1", "--json", str(out)])
    last = _last_line(capsys)
    assert re.fullmatch(r"header 70: tokens computed before/after \d+\.\d\dx, step time before/after "
                        r"\d+\.\d\dx", last), last
    saved = json.loads(out.read_text())
    assert ratio > 0 and set(saved["cases"]) == {"40", "70"}
    wide = saved["cases"]["70"]["tokens"]  # a 70-token header: before, it was the only prefix shared
    assert wide["before"]["groups"] == 1 and wide["after"]["groups"] == 2
    assert wide["after"]["packed"] < wide["before"]["packed"] < wide["no_sharing"]["packed"]
    assert saved["cases"]["70"]["max_diff"] <= 1e-4 and len(saved["cases"]["70"]["times"]["after"]["learner"]) == 1


def test_decisive_token_finds_the_lowest_reward_token(tmp_path, capsys):
    """The shipped tiny pair on two BFCL held-out tasks: each reply's decisive token is its lowest-reward one,
    checked against the token rewards computed here by brute force (one plain forward per model)."""
    import math as _math

    from envs.bfcl import BFCLEnv
    from reopold_agents.chat import encode_prompt
    from reopold_agents.models import load_model
    from tasks.bfcl import load_bfcl

    pytest.importorskip("bfcl_eval", reason="BFCL data: pip install -e '.[bench]'")
    dt = _load("decisive_token")
    tasks = load_bfcl("parallel", split="heldout")[:2]
    replies = ['```json\n{"name": "f", "arguments": {"x": 1}}\n```', '{"name": "g", "arguments": {}}']
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"benchmark": "parallel", "task_id": t.id, "correct": False, "response": r}) + "\n"
                               for t, r in zip(tasks, replies)))
    found = dt.main([str(samples), "--categories", "parallel", "--student", "tiny", "--teacher", "tiny",
                     "--json", str(tmp_path / "d.json")])
    last = _last_line(capsys)
    assert last.startswith("stage 1 (`reward_floor`, the default) drops it: ") and last.endswith(f"/2 = {sum(d.below_floor for d in found) / 2:.2f}")
    assert [d.task_id for d in found] == [t.id for t in tasks]
    student, teacher = load_model("tiny", "student"), load_model("tiny", "teacher")
    tok = student.tokenizer
    env = BFCLEnv(tasks)
    for task, reply, d in zip(tasks, replies, found):
        obs, info = env.reset(options={"task": task})
        prompt = encode_prompt(tok, obs["messages"], info["tools"]).ids
        ids = prompt + tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = [torch.log_softmax(m.model(input_ids=x).logits[0].double(), -1) for m in (student, teacher)]
        rewards = [float(lp[1][t - 1, ids[t]] - lp[0][t - 1, ids[t]]) for t in range(len(prompt), len(ids))]
        assert d.reply_tokens == len(rewards) and d.position == min(range(len(rewards)), key=rewards.__getitem__)
        assert d.reward == pytest.approx(rewards[d.position], abs=1e-4)
        assert d.below_floor == (d.reward < _math.log(0.2 / 0.8))
        assert sum(p for _, p in d.teacher_top) <= 1.0 + 1e-6
    assert len(json.loads((tmp_path / "d.json").read_text())) == 2


def _samples(path: Path, outcomes: dict[str, list[bool]]) -> Path:
    """An evaluate samples.jsonl with the fields bfcl_runs reads: greedy sample 0 of each task."""
    lines = [json.dumps({"benchmark": cat, "task_id": f"{cat}_{i}", "sample": 0, "correct": ok})
             for cat, oks in outcomes.items() for i, ok in enumerate(oks)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bfcl_runs_compares_each_category_against_a_naive_count(tmp_path):
    br = _load("bfcl_runs")
    import random

    rng = random.Random(0)
    for _ in range(40):
        n_before, n_teacher = rng.randint(5, 50), rng.randint(1, 50)
        before = {f"t{i}": rng.random() < 0.3 for i in range(n_before)}
        after = {f"t{i}": rng.random() < 0.5 for i in range(n_before)}
        teacher = {f"t{i}": rng.random() < 0.8 for i in range(n_teacher)}
        row = br.compare_category("parallel", before, after, teacher)
        shared = list(before)
        p_b = sum(before[i] for i in shared) / len(shared)
        assert row.before == p_b and row.after == sum(after[i] for i in shared) / len(shared)
        assert row.fell == (row.after < p_b - math.sqrt(p_b * (1 - p_b) / len(shared)))
        matched = [i for i in shared if i in teacher]
        p_t = sum(teacher[i] for i in matched) / len(matched)
        p_bm = sum(before[i] for i in matched) / len(matched)
        p_am = sum(after[i] for i in matched) / len(matched)
        se = math.sqrt((p_t * (1 - p_t) + p_bm * (1 - p_bm)) / len(matched))
        assert row.n_gap == len(matched) and row.leads == (p_t - p_bm > 2 * se)
        if row.leads:
            assert math.isclose(row.closed, (p_am - p_bm) / (p_t - p_bm))
        else:
            assert row.closed is None


def test_bfcl_runs_report_reads_runs_on_disk(tmp_path, capsys):
    """The report from disk only: one run folder with its summary and held-out samples."""
    br = _load("bfcl_runs")
    student = _samples(tmp_path / "student.jsonl", {"parallel": [False] * 10, "multiple": [True] * 8 + [False] * 2})
    teacher = _samples(tmp_path / "teacher.jsonl", {"parallel": [True] * 8 + [False] * 2, "multiple": [True] * 10})
    run = tmp_path / "root" / "opd_s0"
    (run / "heldout" / "merged").mkdir(parents=True)
    _samples(run / "heldout" / "merged" / "samples.jsonl", {"parallel": [True] * 4 + [False] * 6,
                                                            "multiple": [True] * 5 + [False] * 5})
    (run / "summary.json").write_text(json.dumps({"evals": [[0, 0.4], [10, 0.2], [20, 0.5]], "seconds": 600}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 0, "eval/success": 0.4, "eval/bfcl/parallel/success": 0.0},
        *({"step": s, "grad_norm": 1.0 + s, "rollout/response_tokens": 60.0 - s, "perf/load_1min": 1.0 + s / 10}
          for s in range(1, 21)),
        {"step": 20, "eval/success": 0.5, "eval/bfcl/parallel/success": 0.4})) + "\n")
    br.main(["--report-only", "--root", str(tmp_path / "root"), "--algos", "opd", "--seeds", "0", "1",
             "--student", str(student), "--teacher", str(teacher), "--json", str(tmp_path / "r.json"),
             "--plot", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # panels: the keys some run logged (the default categories' multiple was not)
    assert br.plot_runs(tmp_path / "root", ["opd"], [0, 1], ["parallel", "multiple"], tmp_path / "c2.png") == [
        "eval/success", "eval/bfcl/parallel/success", "rollout/response_tokens", "grad_norm"]
    report = json.loads((tmp_path / "r.json").read_text())
    found = report["algos"]["opd"]
    assert [r["seed"] for r in found] == [0] and found[0]["inrun_fell"]  # 0.2 < 0.4 - 0.069
    # the load the steps ran under, from the runs' own metrics (1.1 ... 3.0 over steps 1-20)
    assert found[0]["load"] == report["load_during_runs"] == "median 2.05 (1.10-3.00) over 20 steps"
    rows = {r["category"]: r for r in found[0]["categories"]}
    assert rows["parallel"]["leads"] and math.isclose(rows["parallel"]["closed"], 0.4 / 0.8)
    assert rows["multiple"]["fell"] and rows["multiple"]["closed"] is None  # 0.5 < 0.8 - 0.126; gap 0.2 < 2 SE
    assert _last_line(capsys) == "median gap closed where the teacher leads: opd parallel 50% of the gap (1 seeds)"


def test_vs_trl_learning_vocab_points_every_side_at_the_widened_pair(tmp_path, monkeypatch):
    """--vocab N widens the bed's pair (reopold_agents/tiny/widen.py) and overrides model.student/teacher with
    the widened folders, which the shared config then resolves; without it nothing changes."""
    vl = _load("vs_trl_learning")
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    args = vl.parse_args(["--quick", "--vocab", "2048"])
    cfg = vl.shared_config(args)
    widened = vl.widen_models(args, cfg)
    assert set(widened) == {"student", "teacher"}
    assert all(w["rows_before"] == 1030 and w["rows_after"] == 2048 for w in widened.values())
    cfg = vl.shared_config(args)
    assert (cfg.model.student, cfg.model.teacher) == (widened["student"]["path"], widened["teacher"]["path"])
    plain = vl.parse_args(["--quick"])
    assert vl.widen_models(plain, vl.shared_config(plain)) == {} and plain.override == ["trainer.heldout_tasks=8"]


def _smol_run(run: Path, evals: list[list[float]], reply_tokens: float, grad_norm: float) -> None:
    """A finished 40-step run folder with the files stabilisers.py reads."""
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"evals": evals, "steps": 40, "teacher_success": 0.6,
                                                  "seconds": 600.0, "best": max(evals[1:], key=lambda e: e[1])}))
    records = [{"step": s, "eval/success": v} for s, v in evals]
    records += [{"step": s, "grad_norm": grad_norm * s, "rollout/response_tokens": reply_tokens - s / 10,
                 "lr": 1e-5} for s in range(1, 41)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_stabilisers_reports_falls_gap_and_windows_from_disk(tmp_path, capsys):
    """stabilisers.py from disk: a run that dips more than one SE below its start is flagged, gap closed at
    the end, reply length and grad norm averaged over steps 1-10 and 31-40, and the closing summary line."""
    st = _load("stabilisers")
    root = tmp_path / "root"
    _smol_run(root / "plain_s0", [[0, 0.2], [10, 0.45], [20, 0.15], [40, 0.3]], 16.0, 1.0)  # 0.15 < 0.2 - 0.035
    _smol_run(root / "both_s0", [[0, 0.2], [10, 0.18], [20, 0.4], [40, 0.5]], 16.0, 0.5)  # 0.18 > 0.165
    st.main(["--report-only", "--root", str(root), "--variants", "plain", "both", "--seeds", "0", "1",
             "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _last_line(capsys) == ("median over seeds: plain fell 1/1, final 0.300 (0.300-0.300); "
                                  "both fell 0/1, final 0.500 (0.500-0.500)")
    found = json.loads((tmp_path / "r.json").read_text())["variants"]
    plain, both = found["plain"]["0"], found["both"]["0"]
    assert plain["fell"] and not both["fell"]
    assert math.isclose(both["closed"], (0.5 - 0.2) / (0.6 - 0.2))
    assert math.isclose(plain["reply_tokens_first"], 16.0 - 0.55)  # mean of 16 - s/10 over s = 1..10
    assert math.isclose(plain["reply_tokens_last"], 16.0 - 3.55)  # s = 31..40
    assert math.isclose(both["grad_norm_last"], 0.5 * 35.5)
    assert plain["load"] == "not logged"  # runs older than perf/load_1min say so rather than guess


def test_load_during_is_the_median_and_range_of_the_logged_load():
    from reopold_agents.benchmarking.load import load_during
    from reopold_agents.metrics import load_1min

    assert load_during([{"step": 1}, {"step": 2}]) == "not logged"
    assert load_during([{"perf/load_1min": v} for v in (3.0, 1.0, 2.5, 0.5)]) == \
        "median 1.75 (0.50-3.00) over 4 steps"
    assert load_1min() is not None and load_1min() >= 0.0


def test_stabilisers_variants_spell_every_key_and_compose():
    """Every variant sets all six stabiliser keys (a preset default cannot change what it measures) and its
    command composes into a valid config with those values."""
    from reopold_agents.config import compose

    st = _load("stabilisers")
    keys = {o.split("=")[0] for o in st.VARIANTS["plain"]}
    assert len(keys) == 6
    for name, overrides in st.VARIANTS.items():
        assert {o.split("=")[0] for o in overrides} == keys, name
        cfg = compose(st.run_overrides(name, 3, Path("/tmp/x")))
        assert cfg.trainer.total_steps == 40 and cfg.trainer.seed == 3 and cfg.trainer.keep_best
        assert (cfg.algo.aggregation == "constant") == (name in ("constant", "both"))
        assert (cfg.trainer.warmup_steps == 4) == (name in ("schedule", "both"))
        assert cfg.trainer.lr_schedule == ("cosine" if name in ("schedule", "both") else "constant")
        assert cfg.algo.stop_token == {"stop_clip": "clip", "stop_mask": "mask"}.get(name, "train")


def test_train_run_skips_finished_runs_and_resumes_stopped_ones(tmp_path, monkeypatch):
    """benchmarking/run_curves.train_run: the run CLI with the output folder; nothing once summary.json exists;
    trainer.resume=true once a step checkpoint exists."""
    from reopold_agents.benchmarking import run_curves

    calls: list[list[str]] = []
    monkeypatch.setattr(run_curves.subprocess, "run", lambda cmd, check, cwd: calls.append(cmd))
    run = tmp_path / "plain_s0"
    run_curves.train_run(run, ["env=math", "trainer.seed=0"], tmp_path)
    assert calls[-1][1:] == ["-m", "reopold_agents.run", "env=math", "trainer.seed=0", f"trainer.output_dir={run}"]
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    run_curves.train_run(run, ["env=math"], tmp_path)
    assert calls[-1][-1] == "trainer.resume=true" and len(calls) == 2
    (run / "summary.json").write_text("{}")
    run_curves.train_run(run, ["env=math"], tmp_path)
    assert len(calls) == 2
