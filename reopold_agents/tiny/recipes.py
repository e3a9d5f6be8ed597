"""The project's own tiny teacher and student, built by SFT on the synthetic tasks' demonstrations.

``tiny`` (Qwen2, math + toolqa) and ``tiny_vl`` (Qwen2.5-VL, vqa) each come as a pair that shares the
project tokenizer: a bigger teacher trained to high success and a smaller student trained briefly, so
it knows the format but solves clearly fewer tasks and distillation has something to do. Both are
seeded and deterministic, saved with ``save_pretrained`` where ``reopold_agents.models`` loads them
(``tiny_model_dir(name, role)``), and rebuilt when its recipe's ``version`` changes. ``tiny_toolqa`` and
``tiny_math`` reuse tiny's teacher and give the student a bad habit instead (a second SFT stage of
shortcut demonstrations): a gap the teacher's per-token scores can close; ``tiny_math``'s student starts
from ``tiny_toolqa``'s (``student_from``). The knowledge beds (``tiny_math_know``, ``tiny_toolqa_know``,
``tiny_vqa_know``)
teach the student a consistently wrong procedure for one family of tasks instead (``student_procedure``,
see ``reopold_agents/tiny/procedures.py``) and are measured on that family only (``bed_tasks``).

The package ships the built pairs (``reopold_agents/tiny/assets/<name>-<role>/``, made by
``python scripts/build_tiny_models.py --ship``): first use copies them into the cache in a second, so a
fresh clone trains at once; only a pair whose shipped copy is missing or stale is built here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from reopold_agents.tiny.load import BUILD_INFO, SHIPPED_DIR, TINY_SIZES, is_vl_pair, shipped_dir, tiny_model_dir
from reopold_agents.tiny.procedures import PROCEDURES, wrong_procedure
from reopold_agents.tiny.sft import SFTConfig, SFTExample, sft_train, tokenize_demonstration

log = logging.getLogger(__name__)

DEMO_SEED = 7919  # demonstrations come from their own task seed, not the training (0) or eval seeds
CHECK_SEED = 4242  # held-out tasks the build reports success on


HABIT_GUESSES = ("other", "mode")


@dataclass(frozen=True)
class TinyRecipe:
    """How one tiny pair is made: which envs' demonstrations, how many, and the two SFT runs."""

    name: str
    version: str  # bump to rebuild cached pairs made by an older recipe
    envs: tuple[str, ...]
    demos_per_env: int
    teacher: SFTConfig | None  # None: the pair reuses ``teacher_from``'s teacher
    student: SFTConfig | None  # None: the ``student_from`` weights as they are (then only the habit stage)
    check_tasks: int = 32  # held-out tasks per env for the reported success rates
    max_new_tokens: int = 48
    # Reuse the (current) teacher of another pair instead of training one: same tokenizer, same envs.
    teacher_from: str | None = None
    # With teacher_from: that teacher trained further on this recipe's demonstrations (not a copy then),
    # e.g. on more demonstrations so that it has seen every fact of a knowledge bed's family.
    teacher_more: SFTConfig | None = None
    # A second student SFT stage on ``habit_env`` demonstrations of which a ``habit_shortcuts`` fraction
    # answers at once with a guess instead of calling a tool (see `shortcut_task`): the student keeps
    # its skills but learns the weak-model habit of guessing, which the teacher's scores then correct.
    student_habit: SFTConfig | None = None
    habit_env: str = "toolqa"
    habit_shortcuts: float = 0.0
    # What a shortcut answers: "other" another task's answer at random; "mode" the most common shown
    # answer among the demonstrations of the same kind of question (a language prior: the answer a model
    # gives without looking, as VQA models answer "2" to every "how many")
    habit_guess: str = "other"
    # Start the student from another pair's (current) model instead of random weights (same
    # architecture): its ``student_from_role`` model; ``student`` then continues its SFT, e.g. on one env.
    student_from: str | None = None
    student_from_role: str = "student"
    # A knowledge bed: every student demonstration (all its SFT stages) that this wrong procedure applies
    # to is rewritten to it (`reopold_agents.tiny.procedures`); the teacher's stay correct.
    student_procedure: str | None = None
    # The env and task source (``synthetic:<family kind>``) of the bed: the held-out tasks scripts/testbed.py
    # measures and the run trains on (``env=<bed_env> env.tasks=<bed_tasks>``); the build checks it too.
    bed_env: str | None = None
    bed_tasks: str | None = None

    def __post_init__(self) -> None:
        if (self.teacher is None) == (self.teacher_from is None):
            raise ValueError(f"{self.name}: give exactly one of teacher (an SFT run) and teacher_from (a pair name)")
        if self.teacher_more is not None and self.teacher_from is None:
            raise ValueError(f"{self.name}: teacher_more trains teacher_from's teacher further; give teacher_from")
        if self.student is None and self.student_from is None:
            raise ValueError(f"{self.name}: a student without an SFT run needs student_from")
        if self.student_from_role not in ("student", "teacher"):
            raise ValueError(f"{self.name}: student_from_role must be student or teacher, got {self.student_from_role!r}")
        if self.habit_guess not in HABIT_GUESSES:
            raise ValueError(f"{self.name}: habit_guess must be one of {HABIT_GUESSES}, got {self.habit_guess!r}")
        if self.student_procedure is not None and self.student_procedure not in PROCEDURES:
            raise ValueError(f"{self.name}: student_procedure must be one of {sorted(PROCEDURES)}, "
                             f"got {self.student_procedure!r}")
        if (self.bed_env is None) != (self.bed_tasks is None):
            raise ValueError(f"{self.name}: give both bed_env and bed_tasks, or neither")
        if self.bed_tasks is not None and not self.bed_tasks.startswith("synthetic:"):
            raise ValueError(f"{self.name}: bed_tasks must be a synthetic task kind (synthetic:<kind>), "
                             f"got {self.bed_tasks!r}")


# tiny_vl's student trained on to convergence on vqa (1.000 on the demo's held-out tasks): the student stage of
# both vqa beds, which differ only in what follows (a habit stage) or in the demonstrations (a wrong procedure)
VL_STUDENT_TO_CONVERGENCE = SFTConfig(steps=1250, batch_size=16, lr=1e-3, warmup=30, seed=0, freeze_vision=True)


RECIPES: dict[str, TinyRecipe] = {
    "tiny": TinyRecipe(
        name="tiny",
        version="v3",
        envs=("math", "toolqa"),
        demos_per_env=1000,
        # toolqa needs ~1500 steps of its own before the teacher copies names and numbers reliably
        teacher=SFTConfig(steps=4000, batch_size=16, lr=3e-3, warmup=30, seed=1),
        # smaller (hidden 96) and stopped early: it copies names only sometimes (toolqa ~0.1)
        student=SFTConfig(steps=1000, batch_size=16, lr=3e-3, warmup=30, seed=0),
    ),
    "tiny_toolqa": TinyRecipe(
        name="tiny_toolqa",
        version="v1",
        envs=("math", "toolqa"),
        demos_per_env=1000,
        teacher=None,
        teacher_from="tiny",  # bump this recipe's version when tiny's teacher changes (the copy is cached)
        # tiny's student recipe run longer: it copies names and numbers about a third of the time ...
        student=SFTConfig(steps=2500, batch_size=16, lr=3e-3, warmup=30, seed=0),
        # ... then 200 steps on toolqa demonstrations, 60% of them replaced by a guessed answer: it now
        # guesses instead of calling a tool on almost every held-out task
        student_habit=SFTConfig(steps=200, batch_size=16, lr=1e-3, warmup=10, seed=0),
        habit_shortcuts=0.6,
    ),
    "tiny_math": TinyRecipe(
        name="tiny_math",
        version="v1",
        envs=("math",),
        demos_per_env=1000,
        teacher=None,
        teacher_from="tiny",  # bump this recipe's version when tiny's or tiny_toolqa's models change
        # tiny_toolqa's student (math 0.81) trained further on math alone: the upper bound of the test
        # bed (the student's success before the habit stage is recorded as ``success_before_habit``) ...
        student_from="tiny_toolqa",
        student=SFTConfig(steps=600, batch_size=16, lr=1e-3, warmup=30, seed=0),
        check_tasks=256,
        # ... then the bad habit: math demonstrations of which 60% skip the working and box another
        # task's answer at once, so it guesses instead of working the problem out
        student_habit=SFTConfig(steps=150, batch_size=16, lr=1e-3, warmup=10, seed=0),
        habit_env="math",
        habit_shortcuts=0.6,
    ),
    # The toolqa test bed: tiny's teacher (0.918 on the demo's 256 held-out tasks), and as the
    # student a copy of that teacher with a bad habit. A smaller student did not get close enough: tiny's
    # student architecture (hidden 96) SFT'd 1500 more steps on toolqa alone reached 0.711 (docs/run.md),
    # below the 0.85 the bed needs as its upper bound, so the student keeps the teacher's architecture.
    "tiny_toolqa_bed": TinyRecipe(
        name="tiny_toolqa_bed",
        version="v1",
        envs=("toolqa",),
        demos_per_env=1000,
        teacher=None,
        teacher_from="tiny",
        student=None,  # the teacher's weights as they are: the upper bound is the teacher itself
        student_from="tiny",
        student_from_role="teacher",
        check_tasks=256,
        student_habit=SFTConfig(steps=200, batch_size=16, lr=1e-3, warmup=10, seed=0),
        habit_env="toolqa",
        habit_shortcuts=0.6,
    ),
    # Knowledge beds: the gap is something the student does not know, measured only on the
    # family of tasks where it matters (``bed_tasks``), not a habit it sometimes skips.
    # Math: the student (tiny's student architecture, hidden 96, from random weights) learns math from
    # demonstrations in which every multiplication is done as an addition (``7 * 8 = 15``): it never sees a
    # correct product. The teacher is tiny's, trained 400 steps further on the same 3000 demonstrations
    # (correct): 1000 demonstrations hold only 71 of the 81 products and tiny's teacher solved 0.895 of
    # the family; 3000 hold all 81.
    "tiny_math_know": TinyRecipe(
        name="tiny_math_know",
        version="v1",
        envs=("math",),
        demos_per_env=3000,
        teacher=None,
        teacher_from="tiny",
        teacher_more=SFTConfig(steps=400, batch_size=16, lr=1e-3, warmup=10, seed=1),
        student=SFTConfig(steps=2500, batch_size=16, lr=3e-3, warmup=30, seed=0),
        check_tasks=256,
        student_procedure="mul_as_add",
        bed_env="math",
        bed_tasks="synthetic:math_mul",
    ),
    # Toolqa: a copy of tiny's teacher (a smaller student does not reach 0.85 on toolqa, see
    # tiny_toolqa_bed) taught 200 SFT steps on toolqa demonstrations in which every population question
    # is answered with the city's founding year, read from the same search result.
    "tiny_toolqa_know": TinyRecipe(
        name="tiny_toolqa_know",
        version="v1",
        envs=("toolqa",),
        demos_per_env=1000,
        teacher=None,
        teacher_from="tiny",
        student=None,
        student_from="tiny",
        student_from_role="teacher",
        check_tasks=128,
        student_habit=SFTConfig(steps=200, batch_size=16, lr=1e-3, warmup=10, seed=0),
        habit_env="toolqa",
        student_procedure="population_as_founded",
        bed_env="toolqa",
        bed_tasks="synthetic:toolqa_population",
    ),
    "tiny_vl": TinyRecipe(
        name="tiny_vl",
        version="v4",
        envs=("vqa",),
        demos_per_env=3000,
        # The random vision towers stay frozen (SFTConfig.freeze_vision): trained jointly they collapsed
        # and v3's teacher stayed at chance (0.34). Frozen, the teacher reads all four kinds by 1500 steps.
        teacher=SFTConfig(steps=1500, batch_size=16, lr=1e-3, warmup=30, seed=1, freeze_vision=True),
        student=SFTConfig(steps=400, batch_size=16, lr=1e-3, warmup=30, seed=0, freeze_vision=True),
    ),
    # The vqa test bed: tiny_vl's teacher, and tiny_vl's (smaller) student SFT'd to convergence
    # on vqa (0.996 on the demo's 256 held-out tasks after 1250 more steps) and then taught the language
    # prior: 60% of its habit demonstrations box their kind's most common answer without looking.
    "tiny_vl_bed": TinyRecipe(
        name="tiny_vl_bed",
        version="v1",
        envs=("vqa",),
        demos_per_env=3000,
        teacher=None,
        teacher_from="tiny_vl",
        student_from="tiny_vl",
        student=VL_STUDENT_TO_CONVERGENCE,
        check_tasks=256,
        student_habit=SFTConfig(steps=200, batch_size=16, lr=1e-3, warmup=10, seed=0, freeze_vision=True),
        habit_env="vqa",
        habit_shortcuts=0.6,
        habit_guess="mode",
    ),
    # The vqa knowledge bed: tiny_vl's teacher (copied), and tiny_vl's student SFT'd as tiny_vl_bed's
    # is (1250 steps on 3000 vqa demonstrations, which gave 1.000 on vqa before its habit stage) but with every
    # tallest-bar demonstration rewritten to box the shortest bar: it compares heights the wrong way round.
    "tiny_vqa_know": TinyRecipe(
        name="tiny_vqa_know",
        version="v1",
        envs=("vqa",),
        demos_per_env=3000,
        teacher=None,
        teacher_from="tiny_vl",
        student_from="tiny_vl",
        student=VL_STUDENT_TO_CONVERGENCE,
        check_tasks=256,
        student_procedure="tallest_as_shortest",
        bed_env="vqa",
        bed_tasks="synthetic:vqa_bars",
    ),
}


@dataclass
class BuildReport:
    name: str
    version: str
    seconds: float
    success: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> env -> greedy success
    success_before_habit: dict[str, float] = field(default_factory=dict)  # env -> the student's, pre-habit
    final_loss: dict[str, float] = field(default_factory=dict)


def _env_config(env_name: str) -> Any:
    """The env section exactly as ``env=<name>`` configures it (configs/env/<name>.yaml), without Hydra."""
    from omegaconf import OmegaConf

    from reopold_agents.config.env import EnvConfig
    from reopold_agents.config.schema import CONFIG_DIR

    merged = OmegaConf.merge(OmegaConf.structured(EnvConfig), OmegaConf.load(CONFIG_DIR / "env" / f"{env_name}.yaml"))
    return OmegaConf.to_object(merged)


def _env_factory(env_name: str, seed: int, size: int, source: str = "synthetic"):
    from dataclasses import replace

    from envs.factory import build_env, load_env_tasks

    cfg = replace(_env_config(env_name), seed=seed, size=size, tasks=source)
    tasks = load_env_tasks(cfg)
    return lambda: build_env(cfg, tasks=tasks), cfg


HABIT_SEED = 5  # which demonstrations become shortcuts, and the guesses


def shortcut_task(task: Any, guess: str) -> Any:
    """``task`` with a demonstration that skips the tools and answers ``guess`` at once."""
    from dataclasses import replace

    return replace(task, demonstration=[f"\\boxed{{{guess}}}"])


def shown_answer(task: Any) -> str:
    """What the task's demonstration boxes (the option letter of a multiple-choice task, else the answer)."""
    from tasks.loaders import last_boxed

    return (last_boxed(task.demonstration[-1]) if task.demonstration else None) or task.answer


def mode_guesses(tasks: Sequence[Any]) -> dict[str, list[str]]:
    """Per kind of question (``meta["kind"]``), its shown answers from most to least common (ties: first
    seen): a shortcut answers the first one that is not the task's own."""
    from collections import Counter

    counts: dict[str, Counter[str]] = {}
    for t in tasks:
        counts.setdefault(str(t.meta.get("kind", "")), Counter())[shown_answer(t)] += 1
    return {kind: [a for a, _ in c.most_common()] for kind, c in counts.items()}


def demonstration_examples(env_name: str, n: int, tokenizer: Any, processor: Any = None, seed: int = DEMO_SEED,
                           shortcuts: float = 0.0, guess: str = "other",
                           procedure: str | None = None) -> list[SFTExample]:
    """``n`` demonstrations of ``env_name`` replayed through the real env and tokenised like a rollout.

    With ``shortcuts`` > 0 about that fraction are replaced by a shortcut: a single ``\\boxed{...}``
    turn holding a wrong answer (the habit SFT stage of a recipe): another task's answer (``guess="other"``)
    or the most common answer of the same kind of question (``"mode"``, see ``TinyRecipe.habit_guess``).
    With a ``procedure`` (``TinyRecipe.student_procedure``) every other task it applies to is rewritten
    to that wrong procedure.
    """
    import random

    from envs.demo import play_demonstration

    if not 0.0 <= shortcuts <= 1.0:
        raise ValueError(f"habit_shortcuts: must lie in [0, 1], got {shortcuts}")
    if guess not in HABIT_GUESSES:
        raise ValueError(f"habit_guess: must be one of {HABIT_GUESSES}, got {guess!r}")
    factory, _ = _env_factory(env_name, seed, n)
    env = factory()
    rng = random.Random(HABIT_SEED)
    answers = [t.answer for t in env.tasks]
    modes = mode_guesses(env.tasks) if guess == "mode" else {}
    out = []
    for i in range(n):
        task = env.tasks[i]
        guessed = shortcuts > 0 and rng.random() < shortcuts
        if guessed and guess == "mode":
            own = shown_answer(task)
            wrong = [a for a in modes[str(task.meta.get("kind", ""))] if a != own]
            guessed = bool(wrong)  # a kind with one answer only has nothing wrong to guess
            if guessed:
                task = shortcut_task(task, wrong[0])
        elif guessed:
            task = shortcut_task(task, rng.choice([a for a in answers if a != task.answer]))
        wrong = None if guessed or procedure is None else wrong_procedure(procedure, task)
        task = wrong or task
        demo = play_demonstration(env, task)
        if demo.reward <= 0 and not guessed and wrong is None:
            raise RuntimeError(f"{env_name} task {i}: the expert demonstration does not solve it ({demo.info.get('why')})")
        ex = tokenize_demonstration(tokenizer, demo.messages, demo.tools, processor, demo.images)
        ex.group = env_name
        out.append(ex)
    env.close()
    return out


def _new_model(name: str, role: str, tokenizer: Any) -> torch.nn.Module:
    from reopold_agents.tiny import tiny_qwen2
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl

    build = tiny_qwen2_5_vl if is_vl_pair(name) else tiny_qwen2
    return build(tokenizer, seed=0 if role == "student" else 1, **TINY_SIZES[(name, role)])


def _current(folder: Path, version: str) -> bool:
    info = folder / BUILD_INFO
    if not (folder / "config.json").exists() or not info.exists():
        return False
    try:
        return json.loads(info.read_text()).get("version") == version
    except json.JSONDecodeError:
        return False


def is_shipped(name: str) -> bool:
    """Both roles of ``name`` are shipped with the package and made by the current recipe version."""
    return all(_current(shipped_dir(name, role), RECIPES[name].version) for role in ("student", "teacher"))


def install_shipped(name: str) -> bool:
    """Copy the shipped ``name`` pair into the model cache; False when the package has no current copy."""
    if not is_shipped(name):
        return False
    for role in ("student", "teacher"):
        _copy_dir(shipped_dir(name, role), _model_dir(name, role))
    return True


def _copy_dir(source: Path, target: Path, edit: Any = None) -> None:
    """Replace ``target`` with a copy of ``source`` (``edit(copy)`` applied first), never half-written:
    the copy is made beside it and renamed into place."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if edit is not None:
        edit(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def ship(name: str) -> list[Path]:
    """Copy the built ``name`` pair from the cache into the package assets (what a release ships)."""
    if not is_built(name):
        raise RuntimeError(f"{name} is not built with recipe {RECIPES[name].version}; build it first")
    out = []
    for role in ("student", "teacher"):
        target = shipped_dir(name, role)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(_model_dir(name, role), target)
        out.append(target)
    return out


def _model_dir(name: str, role: str) -> Path:
    return tiny_model_dir(name, role)


def is_built(name: str) -> bool:
    """Both roles saved with the current recipe version."""
    return all(_current(_model_dir(name, role), RECIPES[name].version) for role in ("student", "teacher"))


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """One builder per machine at a time (parallel test workers wait instead of building twice)."""
    from reopold_agents.tiny import cache_dir

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".build-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save(model: torch.nn.Module, tokenizer: Any, processor: Any, target: Path, info: dict[str, Any]) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    (processor or tokenizer).save_pretrained(str(tmp))
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


ROLES = ("teacher", "student")


def build_tiny(name: str, progress: bool = True, force: bool = False, threads: int | None = None,
               roles: tuple[str, ...] = ROLES) -> BuildReport | None:
    """Build (SFT) and save the ``name`` pair unless it is already built; returns the report if built.

    ``roles`` builds only some of the pair (the two roles are independent SFT runs: two processes can
    build them side by side, e.g. ``scripts/build_tiny_models.py --role teacher`` and ``--role student``).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(RECIPES)}")
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"roles: must be a non-empty subset of {ROLES}, got {roles}")
    whole = tuple(sorted(roles)) == tuple(sorted(ROLES))
    with _build_lock(name if whole else f"{name}-{roles[0]}"):
        if whole and is_built(name) and not force:
            return None
        if whole and not force and install_shipped(name):
            return None
        return _build(RECIPES[name], progress, threads, roles)


def _build(recipe: TinyRecipe, progress: bool, threads: int | None, roles: tuple[str, ...] = ROLES) -> BuildReport:
    from reopold_agents.tiny import build_tokenizer
    from reopold_agents.tiny.vl import tiny_vl_processor

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        tokenizer = build_tokenizer()
        processor = tiny_vl_processor(tokenizer) if is_vl_pair(recipe.name) else None
        # each role's demonstrations (the student's with its wrong procedure), made only when it trains on them
        made: dict[str | None, list[SFTExample]] = {}

        def role_examples(role: str) -> list[SFTExample]:
            procedure = recipe.student_procedure if role == "student" else None
            if procedure not in made:
                made[procedure] = [ex for env_name in recipe.envs for ex in demonstration_examples(
                    env_name, recipe.demos_per_env, tokenizer, processor, procedure=procedure)]
            return made[procedure]

        report = BuildReport(name=recipe.name, version=recipe.version, seconds=0.0)
        for role in roles:
            if role == "teacher" and recipe.teacher_from and recipe.teacher_more is None:
                _copy_teacher(recipe)
                continue
            sft = recipe.student if role == "student" else recipe.teacher or recipe.teacher_more
            model = _start_model(recipe, role, tokenizer)
            losses = [] if sft is None else sft_train(model, role_examples(role), sft, tokenizer.pad_token_id,
                                                      desc=f"build {recipe.name} {role}", progress=progress)
            if role == "student" and recipe.student_habit is not None:
                report.success_before_habit = _check(recipe, model, tokenizer, processor)
                habits = demonstration_examples(recipe.habit_env, recipe.demos_per_env, tokenizer, processor,
                                                shortcuts=recipe.habit_shortcuts, guess=recipe.habit_guess,
                                                procedure=recipe.student_procedure)
                losses = sft_train(model, habits, recipe.student_habit, tokenizer.pad_token_id,
                                   desc=f"build {recipe.name} {role} habit", progress=progress)
            report.final_loss[role] = sum(losses[-10:]) / len(losses[-10:])
            report.success[role] = _check(recipe, model, tokenizer, processor)
            info = {"version": recipe.version, "role": role, "envs": list(recipe.envs),
                    "demos_per_env": recipe.demos_per_env, "sft": asdict(sft) if sft else None,
                    "seconds": time.perf_counter() - start,
                    "final_loss": report.final_loss[role], "success": report.success[role]}
            if role == "student" and recipe.student_habit is not None:
                info["success_before_habit"] = report.success_before_habit
            if role == "student" and recipe.student_procedure is not None:
                info["student_procedure"] = recipe.student_procedure
            if role == "teacher" and recipe.teacher_from:
                info["continued_from"] = f"{recipe.teacher_from} teacher"
            _save(model, tokenizer, processor, _model_dir(recipe.name, role), info)
        report.seconds = time.perf_counter() - start
        log.info("built %s in %.0fs: %s", recipe.name, report.seconds, report.success)
        return report
    finally:
        torch.set_num_threads(old_threads)


def _check(recipe: TinyRecipe, model: torch.nn.Module, tokenizer: Any, processor: Any) -> dict[str, float]:
    """Greedy success per env on the build's ``check_tasks`` held-out tasks (CHECK_SEED), and on as many
    tasks of a knowledge bed's family (key: ``bed_tasks``)."""
    checks = [(env_name, env_name, "synthetic") for env_name in recipe.envs]
    if recipe.bed_env is not None and recipe.bed_tasks is not None:
        checks.append((recipe.bed_tasks, recipe.bed_env, recipe.bed_tasks))
    out = {}
    for key, env_name, source in checks:
        factory, cfg = _env_factory(env_name, CHECK_SEED, recipe.check_tasks, source)
        out[key] = _greedy_success(model, tokenizer, processor, factory, cfg, recipe.check_tasks, recipe.max_new_tokens)
    return out


def _start_model(recipe: TinyRecipe, role: str, tokenizer: Any) -> torch.nn.Module:
    """A fresh model of the role's architecture, or (``student_from``; ``teacher_from`` for a teacher
    trained further) that pair's current model."""
    if role == "student" and recipe.student_from is not None:
        source, source_role = recipe.student_from, recipe.student_from_role
    elif role == "teacher" and recipe.teacher_from is not None:
        source, source_role = recipe.teacher_from, "teacher"
    else:
        return _new_model(recipe.name, role, tokenizer)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    ensure_tiny(source)
    auto = AutoModelForImageTextToText if is_vl_pair(source) else AutoModelForCausalLM
    return auto.from_pretrained(str(_model_dir(source, source_role)))


@torch.no_grad()
def _greedy_success(model: torch.nn.Module, tokenizer: Any, processor: Any, env_factory: Any, env_cfg: EnvConfig,
                    num_tasks: int, max_new_tokens: int, batch_size: int = 32) -> float:
    """Greedy success of a freshly built model on held-out tasks, through the real rollout path."""
    from reopold_agents.engines.hf import HFEngine
    from reopold_agents.evaluation.heldout import greedy_success
    from reopold_agents.rollout import Rollout

    engine = HFEngine(model, tokenizer, processor=processor, max_batch_size=batch_size)
    rollout = Rollout(engine, tokenizer, env_factory, processor=processor, max_turns=env_cfg.max_turns,
                      max_total_tokens=2048, env_workers=4)
    try:
        return greedy_success(rollout, range(num_tasks), max_new_tokens, batch_size)
    finally:
        rollout.close()


def _copy_teacher(recipe: TinyRecipe) -> None:
    """Give ``recipe`` the current teacher of ``recipe.teacher_from`` (installed or built first)."""
    source = recipe.teacher_from
    assert source is not None
    ensure_tiny(source)

    def stamp(copy: Path) -> None:
        info = json.loads((copy / BUILD_INFO).read_text())
        info.update(version=recipe.version, copied_from=f"{source} {info.get('version')}")
        (copy / BUILD_INFO).write_text(json.dumps(info, indent=2))

    _copy_dir(_model_dir(source, "teacher"), _model_dir(recipe.name, "teacher"), stamp)


def ensure_tiny(name: str, progress: bool = True) -> None:
    """Install (shipped copy) or build the ``name`` pair on first use (no-op for HF ids / paths and for
    pairs already in the cache)."""
    if name in RECIPES and not is_built(name):
        build_tiny(name, progress=progress)



