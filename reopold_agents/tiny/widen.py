"""A tiny pair at a real model's vocabulary width: the same models with a 151,936-row head (Qwen2.5's).

Why: at the project tokenizer's 1,030 tokens the output head costs nothing, so a learning-speed race
against TRL (benchmarks/vs_trl_learning.py) cannot show what a real vocabulary costs each trainer (the
full-vocabulary KL, the log-softmax over every row, the teacher's top-k). Training the pair again at a
151k-token tokenizer would take an hour of SFT; widening the trained pair keeps its behaviour and gives
every forward, sample and loss the real head's shape.

How: the tiny models tie their input embedding and output head, so the head is widened by appending rows
to the embedding. Every new row is ``-scale * u``, where ``u`` is a unit direction that every final hidden
state ``h`` of the calibration text points along (``u . h >= margin > 0``, found by maximising a soft
minimum of the projections): the new rows' logits ``-scale * (u . h)`` then lie far below the old ones,
and ``scale`` is the smallest that puts the new rows' total probability under ``MASS_BOUND`` at every
calibration position. The old rows are untouched, so the old logits are bit-identical. The widening is
measured, not assumed: ``WidenReport`` gives the largest new-row mass on held-out text (other demonstrations
than the calibration's); an id the tokenizer does not know decodes to nothing, so a new row that were ever
sampled would add no text. Text pairs only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from reopold_agents.tiny.sft import SFTExample

QWEN25_VOCAB = 151_936  # Qwen2.5's head rows (config.vocab_size; its tokenizer has 151,665 tokens)
MASS_BOUND = 1e-12  # the new rows' total probability at every calibration position stays below this
CALIBRATION_DEMOS = 128  # demonstrations per kind (correct, and the student's wrong habit or procedure)
WIDEN_INFO = "widen_info.json"


@dataclass(frozen=True)
class WidenReport:
    """What one widening did and how far the new rows stay from being chosen."""

    rows_before: int
    rows_after: int
    scale: float
    margin: float  # smallest u . h over the calibration positions (> 0)
    calibration_max_new_mass: float  # largest total probability of the new rows, calibration positions
    check_max_new_mass: float  # the same on other demonstrations (held out from the calibration)
    check_margin: float  # smallest u . h on those (a negative one would mean a new row could win)


def reply_states(model: torch.nn.Module, examples: Sequence[SFTExample]) -> torch.Tensor:
    """Final hidden states (after the last norm) at every position that predicts an assistant token, and at
    the prompt's last position: the states the head scores when the model replies."""
    states = []
    with torch.no_grad():
        for ex in examples:
            hidden = model.model(input_ids=torch.tensor([ex.input_ids])).last_hidden_state[0]
            predicts = torch.tensor(list(ex.loss_mask[1:]) + [0], dtype=torch.bool)
            states.append(hidden[predicts])
    return torch.cat(states).float()


def unreachable_direction(states: torch.Tensor, steps: int = 600, sharpness: float = 4.0) -> torch.Tensor:
    """A unit vector ``u`` with ``u . h > 0`` for every row ``h`` of ``states`` (the smallest projection
    made large by minimising ``mean softplus(-sharpness * u . h)``, started from the mean state).

    Raises ValueError when no such direction is found (the states surround the origin)."""
    start = states.mean(0)
    direction = (start / start.norm().clamp_min(1e-12)).clone().requires_grad_(True)
    opt = torch.optim.Adam([direction], lr=0.01)
    for _ in range(steps):
        unit = direction / direction.norm()
        loss = torch.nn.functional.softplus(-sharpness * (states @ unit)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unit = (direction / direction.norm()).detach()
    margin = float((states @ unit).min())
    if margin <= 0:
        raise ValueError(f"no direction separates the {len(states)} hidden states from the origin "
                         f"(best smallest projection {margin:.3f}); the head cannot be widened safely")
    return unit


def needed_scale(states: torch.Tensor, old_logits: torch.Tensor, unit: torch.Tensor, new_rows: int,
                 bound: float = MASS_BOUND) -> float:
    """The smallest ``scale`` with ``new_rows * exp(-scale * u.h - logsumexp(old logits)) <= bound`` at every
    position: the new rows' total probability under ``bound`` there."""
    proj = states @ unit
    lse = torch.logsumexp(old_logits, dim=-1)
    need = (math.log(new_rows) - math.log(bound) - lse) / proj
    return max(float(need.max()), 0.0)


def new_row_mass(states: torch.Tensor, weight: torch.Tensor, rows_before: int) -> torch.Tensor:
    """Total probability of the rows from ``rows_before`` on, at each state (brute force: the full softmax)."""
    probs = torch.softmax(states @ weight.T, dim=-1)
    return probs[:, rows_before:].sum(-1)


def widen_model(model: torch.nn.Module, vocab_size: int, calibration: Sequence[SFTExample],
                check: Sequence[SFTExample]) -> WidenReport:
    """Widen ``model``'s tied embedding/head to ``vocab_size`` rows in place (module docstring: how)."""
    if not model.config.tie_word_embeddings:
        raise ValueError("only tied embedding/head models are widened (the tiny Qwen2 models)")
    before = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= before:
        raise ValueError(f"vocab_size: {vocab_size} must exceed the model's {before} rows")
    states = reply_states(model, calibration)
    old = model.get_input_embeddings().weight.detach().float()
    unit = unreachable_direction(states)
    scale = needed_scale(states, states @ old.T, unit, vocab_size - before)
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[before:] = (-scale * unit).to(weight.dtype)
    model.tie_weights()
    model.config.vocab_size = vocab_size
    held = reply_states(model, check)
    weight = model.get_input_embeddings().weight.detach().float()
    return WidenReport(rows_before=before, rows_after=vocab_size, scale=scale, margin=float((states @ unit).min()),
                       calibration_max_new_mass=float(new_row_mass(states, weight, before).max()),
                       check_max_new_mass=float(new_row_mass(held, weight, before).max()),
                       check_margin=float((held @ unit).min()))


def widened_dir(name: str, role: str, vocab_size: int) -> Path:
    """Where ``widen_pair`` saves ``name``'s ``role`` at ``vocab_size`` rows (HF format, tokenizer included)."""
    from reopold_agents.tiny.tokenizer import cache_dir

    return cache_dir() / "models" / f"{name}-v{vocab_size}-{role}"


def calibration_examples(name: str, tokenizer: PreTrainedTokenizerBase, seed: int, demos: int = CALIBRATION_DEMOS) -> list[SFTExample]:
    """The pair's bed as both roles write it: correct demonstrations and ones with the student's habit or
    wrong procedure (``TinyRecipe``), ``demos`` of each, from task seed ``seed``."""
    from reopold_agents.tiny.recipes import RECIPES, demonstration_examples

    recipe = RECIPES[name]
    env = recipe.bed_env or (recipe.habit_env if recipe.student_habit is not None else recipe.envs[0])
    wrong = demonstration_examples(env, demos, tokenizer, seed=seed, shortcuts=recipe.habit_shortcuts,
                                   guess=recipe.habit_guess, procedure=recipe.student_procedure)
    return demonstration_examples(env, demos, tokenizer, seed=seed) + wrong


def widen_pair(name: str, vocab_size: int = QWEN25_VOCAB, demos: int = CALIBRATION_DEMOS) -> dict[str, Path]:
    """Both roles of the tiny text pair ``name`` widened to ``vocab_size`` rows and saved (once: a folder
    that holds a ``WIDEN_INFO`` made from the pair's current build, ``demos`` and ``MASS_BOUND`` is reused). Returns role -> folder, each a
    path ``model.student`` / ``model.teacher`` accept."""
    from reopold_agents.tiny.load import BUILD_INFO, is_vl_pair, load_tiny, weights_dir
    from reopold_agents.tiny.recipes import CHECK_SEED, DEMO_SEED, ensure_tiny

    if is_vl_pair(name):
        raise ValueError(f"{name}: only text pairs are widened")
    ensure_tiny(name, progress=False)
    out: dict[str, Path] = {}
    for role in ("student", "teacher"):
        target = widened_dir(name, role, vocab_size)
        source = weights_dir(name, role)
        build = json.loads((source / BUILD_INFO).read_text()) if source and (source / BUILD_INFO).exists() else {}
        made_from = {"build": build, "demos": demos, "mass_bound": MASS_BOUND}
        info_path = target / WIDEN_INFO
        if info_path.exists() and json.loads(info_path.read_text()).get("made_from") == made_from:
            out[role] = target
            continue
        model, tokenizer, _, _ = load_tiny(name, role)
        model.float().eval()
        report = widen_model(model, vocab_size, calibration_examples(name, tokenizer, DEMO_SEED, demos),
                             calibration_examples(name, tokenizer, CHECK_SEED, demos))
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        info_path.write_text(json.dumps({"pair": name, "role": role, "made_from": made_from,
                                         "report": asdict(report)}, indent=1))
        out[role] = target
    return out


def widen_report(folder: Path) -> WidenReport:
    """The report saved with a widened folder."""
    return WidenReport(**json.loads((Path(folder) / WIDEN_INFO).read_text())["report"])
