"""Preflight: start-up checks that a run can be right, printed as a short table; a failure stops the run.

Why: none of these faults crashes a run, each makes it quietly wrong: a teacher scoring ids of another
vocabulary, a template that loses tool calls, turns that never end where the template ends them, a
noisy teacher (every token reward noisy), old log-probs of another distribution than the learner's
(the importance ratio is off from step 0). Each check is a small function returning a ``CheckResult``;
``run_preflight`` runs them, prints the table and raises ``PreflightError`` naming every failed check
and its fix. Tokenizer-level checks read tokenizers only (cheap, in the driver, before any probe);
model-level checks go through the ``Backend`` (the same for LocalBackend and RayBackend) on a probe:
one short rollout of the first task of the run's next step. Tolerances and what fails versus warns:
docs/run.md "Preflight".
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch

from reopold_agents.config.schema import RunConfig
from reopold_agents.distributed.backend import Backend
from reopold_agents.distributed.chunks import make_chunks
from reopold_agents.teacher.tokenizers import Tokenizer
from reopold_agents.trajectory import Batch, Trajectory, collate

Status = Literal["ok", "warn", "fail", "skip"]

# Largest |diff| allowed between two scorings of the same batch by the teacher, and between the
# learner's and the engine's log-probs of the same sampled tokens, by the precision the model runs in.
TEACHER_TOL = {"full": 1e-5, "half": 1e-2}
LEARNER_TOL = {"full": 1e-3, "half": 0.5}
PROBE_MAX_NEW_TOKENS = 32  # per turn of the probe rollout
PROBE_GROUP = 2  # episodes of the probe task (two rows: padding is exercised too)

_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
_PROBE_CALL = {"name": "calculator", "arguments": {"expression": "12 * 7"}}
_MARK = "reopold-preflight-assistant-turn"


@dataclass
class CheckResult:
    """One check: its status, what it saw, the measured number (if any) and the fix when it fails."""

    name: str
    status: Status
    detail: str
    value: float | None = None
    fix: str = ""


class PreflightError(RuntimeError):
    """A preflight check failed: the run would train on something wrong."""

    def __init__(self, failed: list[CheckResult]) -> None:
        self.failed = failed
        lines = [f"{r.name}: {r.detail}" + (f" -> fix: {r.fix}" if r.fix else "") for r in failed]
        super().__init__("preflight failed:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------------- tokenizer-level checks


def probe_conversation() -> tuple[list[dict], list[dict], str, dict]:
    """(prompt messages, tool schemas, an assistant reply ending in a tool call, the tool's answer)."""
    prompt = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "What is 12 * 7?"}]
    reply = "I will compute it.\n<tool_call>" + json.dumps(_PROBE_CALL) + "</tool_call>"
    return prompt, _PROBE_TOOLS, reply, {"role": "tool", "content": "84"}


def _render(tok: Tokenizer, messages: list[dict], tools: list[dict] | None, gen_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen_prompt)


def _decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _names(tok: Tokenizer, ids: list[int]) -> str:
    return ", ".join(f"{tok.convert_ids_to_tokens(int(i))!r}={int(i)}" for i in ids)


def check_tokenizers(cfg: RunConfig, student: Tokenizer, teacher: Tokenizer | None, top_k: int) -> CheckResult:
    """Same vocabulary and special tokens, or a teacher that takes the cross-tokenizer path (``teacher_path``,
    the rule ``build_teacher`` applies)."""
    from reopold_agents.teacher.build import TeacherPathError, teacher_path

    name = "tokenizers"
    if teacher is None:
        return CheckResult(name, "skip", "no teacher (the objective learns without one)")
    try:
        path = teacher_path(cfg.model, top_k, student, teacher)
    except TeacherPathError as exc:
        return CheckResult(name, "fail", str(exc),
                           fix="a teacher with the student's tokenizer, or the cross-tokenizer path "
                               "(model.teacher_engine=hf, no model.teacher_context, algo reopold/opd) with a teacher "
                               "chat template")
    return CheckResult(name, "ok", path.detail)


def check_chat_template(student: Tokenizer, teacher: Tokenizer | None = None) -> CheckResult:
    """A probe conversation with a tool call, encoded turn by turn as the rollout does (prompt, sampled
    reply, env turn), reads back exactly as the template renders it whole; with a cross-tokenizer
    ``teacher``, its own template keeps the tool-call turn verbatim (else the turn is never scored)."""
    from reopold_agents.chat import encode_env_turn, encode_prompt

    name = "chat template"
    prompt, tools, reply, tool_msg = probe_conversation()
    fix = "a chat template that renders assistant text (and its <tool_call>) verbatim and closes turns with EOS"
    try:
        ids = encode_prompt(student, prompt, tools).ids
        ids += list(student(reply, add_special_tokens=False)["input_ids"])  # stopped at </tool_call>: not closed
        ids += encode_env_turn(student, [tool_msg], assistant_closed=False, tools=tools).ids
        full = _render(student, prompt + [{"role": "assistant", "content": reply}, tool_msg], tools, True)
    except Exception as exc:  # any template error means the rollout cannot encode turns with it
        return CheckResult(name, "fail", f"the student's template cannot encode the probe: {exc}", fix=fix)
    built = _decode(student, ids)
    if reply not in full:
        return CheckResult(name, "fail", "the student's template does not render the assistant's tool call "
                                         f"verbatim ({reply!r} not in the render)", fix=fix)
    if built != full:
        at = next((i for i, (a, b) in enumerate(zip(built, full)) if a != b), min(len(built), len(full)))
        return CheckResult(name, "fail", f"turn-by-turn ids and the template's render differ at char {at}: "
                                         f"rollout {built[max(0, at - 20):at + 30]!r} vs template "
                                         f"{full[max(0, at - 20):at + 30]!r}",
                           fix="a template whose earlier text does not change as the conversation grows "
                               "(the rollout never re-renders it)")
    detail = f"a tool-call conversation round-trips ({len(ids)} tokens)"
    if teacher is not None:
        from reopold_agents.teacher.cross.render import render_teacher_view

        try:
            view = render_teacher_view(teacher, prompt + [{"role": "assistant", "content": reply}, tool_msg], tools)
            problem = next((t.problem for t in view.turns if t.problem), "")
        except ValueError as exc:
            problem = str(exc)
        if problem:
            return CheckResult(name, "fail", f"the teacher's template: {problem} (the tool-call turn would be "
                                             "masked, never scored)", fix=fix)
        detail += "; the teacher's template keeps it verbatim"
    return CheckResult(name, "ok", detail)


def check_stop_tokens(tok: Tokenizer, stop_token_ids: list[int]) -> CheckResult:
    """The engine stops at EOS and ``stop_token_ids``: EOS must be the token the template closes an
    assistant turn with, and every other stop id must occur in the template's render of a tool call."""
    name = "stop tokens"
    eos = tok.eos_token_id
    stops = [eos, *[s for s in stop_token_ids if s != eos]]
    try:
        closed = _render(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}], None, False)
        after = closed[closed.index(_MARK) + len(_MARK):]
        closing = next(iter(tok(after, add_special_tokens=False)["input_ids"]), None)
        prompt, tools, reply, tool_msg = probe_conversation()
        rendered = set(tok(_render(tok, prompt + [{"role": "assistant", "content": reply}, tool_msg], tools, True),
                           add_special_tokens=False)["input_ids"])
    except Exception as exc:
        return CheckResult(name, "fail", f"cannot render the probe with the student's template: {exc}")
    if closing != eos:
        got = "nothing" if closing is None else repr(tok.convert_ids_to_tokens(closing))
        return CheckResult(name, "fail", f"the template closes assistant turns with {got} but the engine stops at "
                                         f"EOS {tok.eos_token!r}: turns would not end where the template ends them",
                           fix=f"make the student tokenizer's eos_token the template's end-of-turn token ({got})")
    missing = [s for s in stops[1:] if s not in rendered]
    if missing:
        return CheckResult(name, "fail", f"engine stop token(s) {_names(tok, missing)} never occur in the template's "
                                         "render of a tool-call conversation: generation would stop at a token the "
                                         "template does not write", fix="stop only at EOS and the template's "
                                                                        "tool-call end tag (</tool_call>)")
    return CheckResult(name, "ok", f"engine stops at {_names(tok, stops)}; the template closes turns with EOS")


# ----------------------------------------------------------------------------- model-level checks


def check_tool_schemas(tok: Tokenizer, trajectory: Trajectory) -> CheckResult:
    """Every tool the env offers (``Trajectory.tools``) is named in the prompt the student actually read: a
    template that ignores ``tools`` (and an env prompt that does not list them) hides them from the model."""
    name = "tool schemas"
    names = [str((t.get("function") or t).get("name", "")) for t in (trajectory.tools or [])]
    if not names:
        return CheckResult(name, "skip", "the env offers no tools")
    first = trajectory.loss_mask.index(1) if 1 in trajectory.loss_mask else len(trajectory.loss_mask)
    prompt = _decode(tok, trajectory.token_ids[:first])
    missing = [n for n in names if n not in prompt]
    if missing:
        return CheckResult(name, "fail", f"tool(s) {missing} the env offers never appear in the student's prompt "
                                         "(its chat template does not render tool schemas)",
                           fix="a student chat template that renders `tools`, or an env system prompt listing them")
    return CheckResult(name, "ok", f"the prompt shows the env's tools ({', '.join(names)})")


def _max_abs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, int]:
    """max and mean |a - b| over ``mask``, and the number of positions."""
    diff = (a.float().cpu() - b.float().cpu()).abs()[mask.cpu() > 0]
    if not diff.numel():
        return 0.0, 0.0, 0
    return float(diff.max()), float(diff.mean()), int(diff.numel())


def check_teacher_determinism(first: Batch, second: Batch, tol: float) -> CheckResult:
    """Two scorings of the same batch must agree to ``tol`` (token rewards must not be noise)."""
    name = "teacher determinism"
    if first.teacher_logprobs is None or second.teacher_logprobs is None:
        return CheckResult(name, "skip", "no teacher scores (the objective learns without a teacher)")
    trained = first.loss_mask.cpu() > 0
    bad = int((~torch.isfinite(first.teacher_logprobs.cpu()) & trained).sum())
    if bad:
        return CheckResult(name, "fail", f"the teacher's log-probs are not finite on {bad} of {int(trained.sum())} "
                                         "probe tokens (NaN or -inf)",
                           fix="check the teacher's weights and dtype, or the served teacher's replies")
    fix = "score in eval mode (no dropout) and without sampling noise; on GPU, deterministic kernels"
    if not torch.equal(first.loss_mask.cpu(), second.loss_mask.cpu()):
        return CheckResult(name, "fail", "the teacher masked different tokens the second time", fix=fix)
    mx, _, n = _max_abs(first.teacher_logprobs, second.teacher_logprobs, first.loss_mask)
    detail = f"the probe scored twice ({n} tokens): max |diff| {mx:.2g} (tol {tol:g})"
    return CheckResult(name, "ok" if mx <= tol else "fail", detail, mx, "" if mx <= tol else fix)


def check_learner_engine(batch: Batch, learner_lp: torch.Tensor, recompute: bool, tol: float) -> CheckResult:
    """The learner's log-probs of the probe's sampled tokens against the engine's (``batch.old_logprobs``):
    above ``tol`` the run's pi_old is not the learner's pi_theta at step 0, unless pi_old is recomputed."""
    name = "learner vs engine"
    mx, mean, n = _max_abs(learner_lp, batch.old_logprobs, batch.loss_mask)
    if n == 0:
        return CheckResult(name, "warn", "the probe sampled no trained tokens; nothing compared")
    detail = f"max |log pi_learner - log pi_engine| {mx:.2g} (mean {mean:.2g}) over {n} probe tokens (tol {tol:g})"
    if mx <= tol:  # NaN is never <= tol
        return CheckResult(name, "ok", detail, mx)
    if recompute:
        return CheckResult(name, "warn", detail + "; trainer.recompute_old_logprobs corrects it", mx)
    return CheckResult(name, "fail", detail, mx, fix="trainer.recompute_old_logprobs=true (pi_old from the learner), "
                                                     "or make the engine run the learner's weights and precision")


def check_temperature(batch: Batch, learner_lp: torch.Tensor, learner_lp_t: torch.Tensor | None, temperature: float,
                      recompute: bool, tis_cap: float) -> CheckResult:
    """Which distribution the engine's log-probs (old log-probs) are of: the raw T=1 one the learner
    computes, or the temperature-scaled one the samples come from (``learner_lp_t``, None at T in {0, 1})."""
    name = "temperature"
    if learner_lp_t is None or temperature in (0.0, 1.0):
        how = "greedy sampling" if temperature == 0 else "T=1"
        return CheckResult(name, "ok", f"{how}: old log-probs are of the T=1 distribution, as the learner's",
                           temperature)
    d1, _, n = _max_abs(learner_lp, batch.old_logprobs, batch.loss_mask)
    dt, _, _ = _max_abs(learner_lp_t, batch.old_logprobs, batch.loss_mask)
    if n == 0:
        return CheckResult(name, "warn", f"T={temperature:g}: the probe sampled no trained tokens", temperature)
    seen = f"max |diff| to the learner's {d1:.2g} at T=1, {dt:.2g} at T={temperature:g}"
    if d1 <= dt:
        return CheckResult(name, "ok", f"samples at T={temperature:g}; the engine's log-probs are of T=1, as the "
                                       f"learner's ({seen})", temperature)
    detail = (f"the engine's log-probs are of the T={temperature:g} distribution, the learner's of T=1 ({seen}): "
              "the importance ratio is off from step 0")
    if recompute and tis_cap == 0:
        return CheckResult(name, "warn", detail + "; pi_old is recomputed by the learner", temperature)
    return CheckResult(name, "fail", detail, temperature,
                       fix="raw (T=1) log-probs from the engine (vLLM: logprobs_mode=raw_logprobs), or "
                           "trainer.recompute_old_logprobs=true with trainer.tis_cap=0")


# ------------------------------------------------------------------------------------- the run


def half_precision(cfg: RunConfig, learner: bool) -> bool:
    """Whether the models run in 16 bits (the looser tolerances): ``model.dtype`` says so, the learner
    autocasts (``distributed.mixed_precision``), or ``dtype=auto`` meets a GPU, here or on Ray's GPU roles
    (the driver of a Ray run may have none)."""
    m, d = cfg.model, cfg.distributed
    if m.dtype in ("bfloat16", "float16") or (learner and d.mixed_precision != "no"):
        return True
    if m.dtype != "auto":
        return False
    if m.device != "auto":
        return m.device.startswith("cuda")
    ray_gpus = d.backend == "ray" and max(d.ray.gpus_per_learner, d.ray.gpus_per_rollout_worker,
                                          d.ray.gpus_per_teacher) > 0
    return torch.cuda.is_available() or ray_gpus


def run_routes(cfg: RunConfig) -> list[tuple[str, str]]:
    """The distinct (env, teacher) pairs a run scores: each entry's env with its routed teacher."""
    from reopold_agents.config.mix import entry_teacher

    return list(dict.fromkeys((e.env.name, entry_teacher(e, cfg.model)) for e in cfg.entries.values()))


def load_tokenizers(cfg: RunConfig, teacher_name: str) -> tuple[Tokenizer, Tokenizer | None]:
    """The student's tokenizer and ``teacher_name``'s (None when the objective learns without a teacher)."""
    from reopold_agents.config.model import SELF_TEACHER
    from reopold_agents.models import load_tokenizer_and_processor
    from reopold_agents.roles import objective_needs

    student = load_tokenizer_and_processor(cfg.model.student, "student")[0]
    if not objective_needs(cfg)[0]:
        return student, None
    if teacher_name == SELF_TEACHER:
        return student, student
    return student, load_tokenizer_and_processor(teacher_name, "teacher")[0]


def tokenizer_checks(cfg: RunConfig, student: Tokenizer, teacher: Tokenizer | None, env_name: str) -> list[CheckResult]:
    """Tokenizers, chat template and stop tokens (of env ``env_name``), from the tokenizers alone."""
    from reopold_agents.roles import objective_needs
    from reopold_agents.rollout import env_stop_token_ids, tool_call_stop_ids
    from reopold_agents.teacher.build import teacher_path

    top_k = objective_needs(cfg)[1]
    tokens = check_tokenizers(cfg, student, teacher, top_k)
    cross = None  # a teacher that renders the conversation with its own template
    if tokens.status == "ok" and teacher is not None and teacher_path(cfg.model, top_k, student, teacher).kind == "cross_tokenizer":
        cross = teacher
    stops = env_stop_token_ids(env_name)
    stops = tool_call_stop_ids(student) if stops is None else stops
    return [tokens, check_chat_template(student, cross), check_stop_tokens(student, stops)]


def model_checks(cfg: RunConfig, backend: Backend, tasks: list[Any], student: Tokenizer, step: int = 0) -> list[CheckResult]:
    """Tool schemas, teacher determinism, learner vs engine log-probs and the temperature, on a probe
    rollout of ``tasks[0]`` (step ``step``'s seeds) through ``backend``; ``student`` is its tokenizer."""
    chunk = make_chunks(tasks[:1], 1, cfg.trainer.seed, step)[0]  # step ``step``'s seeds, as its first chunk
    probe, _ = backend.ask("rollout", "run", chunk, max_new_tokens=PROBE_MAX_NEW_TOKENS,
                           group_size=min(PROBE_GROUP, cfg.trainer.group_size))
    batch = collate(probe, backend.pad_token_id)
    one = batch.select(torch.tensor([0]))  # one episode is enough to see noise, and halves the teacher's cost
    first, second = copy.deepcopy(one), copy.deepcopy(one)
    for scored in (first, second):
        scores = backend.score(scored)
        if scores is not None:
            scores.apply_to(scored)
    half = half_precision(cfg, learner=True)  # the engine takes over the learner's dtype
    teacher_half = half_precision(cfg, learner=False) or cfg.model.teacher_in_vllm  # vLLM: the saved dtype
    recompute = cfg.recomputes_old_logprobs
    temperature = float(cfg.engine.sampling.temperature)
    learner_lp = backend.ask("learner", "logprobs", batch)
    learner_lp_t = backend.ask("learner", "logprobs", batch, temperature) if temperature not in (0.0, 1.0) else None
    return [
        check_tool_schemas(student, probe[0]),
        check_teacher_determinism(first, second, TEACHER_TOL["half" if teacher_half else "full"]),
        check_learner_engine(batch, learner_lp, recompute, LEARNER_TOL["half" if half else "full"]),
        check_temperature(batch, learner_lp, learner_lp_t, temperature, recompute, float(cfg.trainer.tis_cap)),
    ]


def format_table(results: list[CheckResult], seconds: float | None = None) -> str:
    """The results as a short plain-text table (log files keep it readable)."""
    head = "preflight" + ("" if seconds is None else f" ({seconds:.1f}s)")
    width = max(len(r.name) for r in results)
    lines = [head, f"  {'check':<{width}}  status  {'value':>8}  detail"]
    for r in results:
        value = "" if r.value is None else f"{r.value:.2g}"
        lines.append(f"  {r.name:<{width}}  {r.status:<6}  {value:>8}  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail", "skip")}
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def run_preflight(cfg: RunConfig, backend: Backend, tasks: list[Any], step: int = 0,
                  emit: Callable[[str], None] = print) -> list[CheckResult]:
    """Run every check (tokenizer-level first: a failure there stops before the probe), ``emit`` the table
    and raise PreflightError if any check failed."""
    start = time.perf_counter()
    results: list[CheckResult] = []
    routes = run_routes(cfg)
    for env_name, teacher_name in routes:  # a mix run checks each env with its routed teacher
        student, teacher = load_tokenizers(cfg, teacher_name)
        checks = tokenizer_checks(cfg, student, teacher, env_name)
        if len(routes) > 1:
            checks = [replace(r, name=f"{r.name} [{env_name}]") for r in checks]
        results += checks
    if not any(r.status == "fail" for r in results):
        results += model_checks(cfg, backend, tasks, student, step)
    emit(format_table(results, time.perf_counter() - start))
    failed = [r for r in results if r.status == "fail"]
    if failed:
        raise PreflightError(failed)
    return results


__all__ = ["CheckResult", "PreflightError", "check_chat_template", "check_learner_engine", "check_stop_tokens",
           "check_teacher_determinism", "check_temperature", "check_tokenizers", "check_tool_schemas", "format_table",
           "load_tokenizers", "model_checks", "run_preflight", "run_routes", "tokenizer_checks"]
