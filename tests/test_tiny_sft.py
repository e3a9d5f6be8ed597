"""SFT of the tiny teacher/student: masks cover assistant turns only, training is seeded and learns."""

from __future__ import annotations

import torch

from reopold_agents.tiny.sft import SFTConfig, sft_loss, sft_train, tokenize_demonstration
from reopold_agents.tiny import build_tokenizer, tiny_qwen2

SYSTEM = {"role": "system", "content": "Use the calculator."}


def _demo(a: int, b: int) -> list[dict]:
    return [
        SYSTEM,
        {"role": "user", "content": f"What is {a} + {b}?"},
        {"role": "assistant", "content": f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a} + {b}"}}}}</tool_call>'},
        {"role": "tool", "content": str(a + b)},
        {"role": "assistant", "content": f"The answer is \\boxed{{{a + b}}}."},
    ]


def test_mask_covers_exactly_the_assistant_turns():
    tok = build_tokenizer()
    msgs = _demo(347, 29)
    ex = tokenize_demonstration(tok, msgs)
    # A turn that ends in </tool_call> is cut there (the engine stops on it); the closing <|im_end|>
    # belongs to the env turn. A final-answer turn is trained through its <|im_end|>.
    full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ex.input_ids == full[: len(ex.input_ids)] and len(full) - len(ex.input_ids) == 1  # trailing "\n"
    trained = tok.decode([i for i, m in zip(ex.input_ids, ex.loss_mask) if m])
    assert trained == msgs[2]["content"] + msgs[4]["content"] + "<|im_end|>"
    untrained = tok.decode([i for i, m in zip(ex.input_ids, ex.loss_mask) if not m])
    assert "<tool_response>\n376\n</tool_response>" in untrained and "What is 347 + 29?" in untrained
    end = tok.convert_tokens_to_ids("</tool_call>")
    k = ex.input_ids.index(end)
    assert ex.loss_mask[k] == 1 and ex.input_ids[k + 1] == tok.eos_token_id and ex.loss_mask[k + 1] == 0


def test_ids_match_a_rollout_of_the_same_turns():
    """SFT ids == what the rollout builds from the same assistant ids (chat.py's incremental encoder)."""
    from reopold_agents.chat import encode_env_turn, encode_prompt

    tok = build_tokenizer()
    msgs = _demo(5, 7)
    ex = tokenize_demonstration(tok, msgs)
    call = tok(msgs[2]["content"], add_special_tokens=False)["input_ids"]
    answer = tok(msgs[4]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = encode_prompt(tok, msgs[:2]).ids + call + encode_env_turn(tok, msgs[3:4], assistant_closed=False).ids + answer
    assert ex.input_ids == ids


def test_no_assistant_turn_is_an_error():
    tok = build_tokenizer()
    try:
        tokenize_demonstration(tok, [SYSTEM, {"role": "user", "content": "hi"}])
    except ValueError as exc:
        assert "no assistant turn" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_sft_loss_matches_brute_force():
    tok = build_tokenizer()
    torch.set_num_threads(1)
    model = tiny_qwen2(tok, seed=1)
    exs = [tokenize_demonstration(tok, _demo(a, b)) for a, b in [(1, 2), (30, 45)]]
    got = sft_loss(model, exs, tok.pad_token_id)
    total, count = 0.0, 0
    for ex in exs:  # one sequence at a time, no padding, explicit per-token log-softmax
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        for t in range(1, len(ex.input_ids)):
            if ex.loss_mask[t]:
                total += -logp[t - 1, ex.input_ids[t]].item()
                count += 1
    assert abs(got.item() - total / count) < 1e-4


def test_sft_is_seeded_and_lowers_the_loss():
    tok = build_tokenizer()
    torch.set_num_threads(1)
    exs = [tokenize_demonstration(tok, _demo(a, a + 1)) for a in range(12)]
    cfg = SFTConfig(steps=25, batch_size=4, lr=3e-3, warmup=5, seed=3)
    m1, m2 = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=0)
    l1 = sft_train(m1, exs, cfg, tok.pad_token_id, progress=False)
    l2 = sft_train(m2, exs, cfg, tok.pad_token_id, progress=False)
    assert l1 == l2
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert sum(l1[-5:]) / 5 < 0.5 * sum(l1[:5]) / 5


def test_shared_prefix_loss_equals_plain_loss_and_gradients():
    """The shared-prefix fast path is exact: same loss and same gradients as the padded batch."""
    from reopold_agents.tiny.sft import _shared_prefix_loss, common_prefix_len

    tok = build_tokenizer()
    torch.set_num_threads(1)
    long_system = {"role": "system", "content": "Use the calculator. " * 20}
    exs = [tokenize_demonstration(tok, [long_system] + _demo(a, 3 * a)[1:]) for a in (4, 51, 608)]
    p = common_prefix_len(exs) - 1
    assert p >= 64
    model = tiny_qwen2(tok, seed=2)
    fast = _shared_prefix_loss(model, exs, tok.pad_token_id, p)
    fast.backward()
    g_fast = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    plain = sft_loss(model, exs[:1], tok.pad_token_id) * 0  # warm path check: single example uses plain
    from reopold_agents.trajectory import Trajectory, collate

    batch = collate([Trajectory(token_ids=e.input_ids, loss_mask=e.loss_mask, rollout_logprobs=[0.0] * len(e.input_ids)) for e in exs], tok.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    mask = batch.loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.input_ids[:, 1:].reshape(-1), reduction="none")
    ref = (nll.view_as(mask) * mask).sum() / mask.sum()
    (ref + plain).backward()
    assert abs(fast.item() - ref.item()) < 1e-5
    for a, b in zip(g_fast, model.parameters()):
        torch.testing.assert_close(a, b.grad, atol=1e-5, rtol=1e-4)


def test_every_pair_is_shipped_with_the_current_recipe():
    """The package carries each tiny pair, made by the current recipe, so no run or CI job builds one."""
    from reopold_agents.tiny.recipes import RECIPES, is_shipped, shipped_dir

    for name in RECIPES:
        assert is_shipped(name), f"{name}: run `python scripts/build_tiny_models.py {name} --force --ship`"
        for role in ("student", "teacher"):
            assert (shipped_dir(name, role) / "model.safetensors").stat().st_size < 8 * 2**20


def test_first_use_loads_the_shipped_pair_without_building_or_copying(tmp_path, monkeypatch):
    """With an empty model cache the shipped weights load straight from the package: no SFT, no copy."""
    import reopold_agents.tiny.recipes as tm
    from reopold_agents.models import load_model
    from safetensors.torch import load_file

    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))

    def no_build(*args, **kwargs):
        raise AssertionError("built a pair although the package ships it")

    monkeypatch.setattr(tm, "_build", no_build)
    loaded = load_model("tiny", "teacher", "float32", "cpu")
    assert loaded.path == str(tm.shipped_dir("tiny", "teacher"))
    assert not tm.is_built("tiny")  # nothing was copied into the cache
    shipped = load_file(str(tm.shipped_dir("tiny", "teacher") / "model.safetensors"))
    for key, value in loaded.model.state_dict().items():
        if key in shipped:
            assert torch.equal(value, shipped[key]), key


def test_stale_shipped_copy_is_not_installed(tmp_path, monkeypatch):
    """A shipped pair from an older recipe version is ignored (the run would build a fresh one)."""
    import dataclasses

    import reopold_agents.tiny.recipes as tm

    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    monkeypatch.setitem(tm.RECIPES, "tiny", dataclasses.replace(tm.RECIPES["tiny"], version="v-next"))
    assert not tm.is_shipped("tiny")
    assert not tm.install_shipped("tiny")
    assert not tm.is_built("tiny")


def _color_examples(tok, processor, n: int = 4):
    """vqa colour questions with distinct answers: only the image tells them apart."""
    from reopold_agents.tiny.recipes import demonstration_examples

    by_answer = {}
    for ex in demonstration_examples("vqa", 120, tok, processor):
        text = tok.decode(ex.input_ids)
        if "What color" in text:
            by_answer.setdefault(text.rsplit("boxed{", 1)[1].split("}")[0], ex)
    assert len(by_answer) >= n
    return list(by_answer.values())[:n]


def test_freeze_vision_keeps_the_tower_fixed_and_learns_from_the_image():
    from reopold_agents.models import vision_tower
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl, tiny_vl_processor

    tok = build_tokenizer()
    torch.set_num_threads(1)
    exs = _color_examples(tok, tiny_vl_processor(tok))
    model = tiny_qwen2_5_vl(tok, seed=1, hidden_size=96, num_layers=3, intermediate_size=192)
    tower = vision_tower(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(steps=300, batch_size=4, lr=1e-3, warmup=5, seed=0, freeze_vision=True)
    sft_train(model, exs, cfg, tok.pad_token_id, progress=False)
    tower_names = {f"model.visual.{n}" for n, _ in tower.named_parameters()}
    assert tower_names and all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in tower_names)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in tower_names)
    assert all(p.requires_grad for p in model.parameters())  # restored after training
    # The same text with four different images, four different answers: a model that ignores the
    # image cannot get below log(4) nats on the colour token; this one is near 0 on every example.
    with torch.no_grad():
        per_example = [float(sft_loss(model, [e], tok.pad_token_id)) * sum(e.loss_mask) for e in exs]
    assert max(per_example) < 0.3, per_example


def test_freeze_vision_on_a_text_model_is_an_error():
    import pytest

    tok = build_tokenizer()
    exs = [tokenize_demonstration(tok, _demo(1, 2))]
    with pytest.raises(ValueError, match="no vision tower"):
        sft_train(tiny_qwen2(tok), exs, SFTConfig(steps=1, freeze_vision=True), tok.pad_token_id, progress=False)


def test_habit_examples_replace_a_fraction_with_guesses():
    """Shortcut demonstrations answer at once (no tool call) with another task's answer; the rest are
    the expert's tool-using demonstrations."""
    from reopold_agents.tiny.recipes import demonstration_examples

    tok = build_tokenizer()
    exs = demonstration_examples("toolqa", 200, tok, shortcuts=0.6)
    turns = [tok.decode([i for i, m in zip(e.input_ids, e.loss_mask) if m]) for e in exs]
    guesses = [t for t in turns if "<tool_call>" not in t]
    assert 0.5 < len(guesses) / len(exs) < 0.7
    assert all(t.startswith("\\boxed{") and t.endswith("<|im_end|>") for t in guesses)
    assert all(t.count("<tool_call>") == 1 for t in turns if t not in guesses)
    again = demonstration_examples("toolqa", 200, tok, shortcuts=0.6)
    assert [e.input_ids for e in again] == [e.input_ids for e in exs]


def test_a_pair_can_reuse_another_pairs_teacher(tmp_path, monkeypatch):
    """tiny_toolqa's teacher is tiny's teacher, copied (no SFT), stamped with tiny_toolqa's version."""
    import json

    import reopold_agents.tiny.recipes as tm
    from reopold_agents.tiny.load import tiny_model_dir
    from safetensors.torch import load_file

    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    monkeypatch.setattr(tm, "sft_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    tm.build_tiny("tiny_toolqa", progress=False, roles=("teacher",))
    copied = tiny_model_dir("tiny_toolqa", "teacher")
    assert json.loads((copied / "build_info.json").read_text())["version"] == tm.RECIPES["tiny_toolqa"].version
    ours, theirs = load_file(str(copied / "model.safetensors")), load_file(str(tiny_model_dir("tiny", "teacher") / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_recipe_needs_exactly_one_teacher_source():
    import dataclasses

    import pytest

    from reopold_agents.tiny.recipes import RECIPES

    with pytest.raises(ValueError, match="exactly one of teacher"):
        dataclasses.replace(RECIPES["tiny_toolqa"], teacher=SFTConfig())
    with pytest.raises(ValueError, match="exactly one of teacher"):
        dataclasses.replace(RECIPES["tiny"], teacher=None)


def test_tiny_math_test_bed_is_shipped_with_its_gap():
    """The math test bed ships built by its current recipe, with the gap its build measured: the
    student before the habit stage (the SFT upper bound) >= 0.85, after it <= 0.3 (256 tasks)."""
    import json

    from reopold_agents.models import load_model
    from reopold_agents.tiny.load import TINY_SIZES
    from reopold_agents.tiny.recipes import RECIPES, is_shipped, shipped_dir

    recipe = RECIPES["tiny_math"]
    assert is_shipped("tiny_math") and recipe.check_tasks >= 256
    for role in ("student", "teacher"):
        info = json.loads((shipped_dir("tiny_math", role) / "build_info.json").read_text())
        assert info["version"] == recipe.version
        loaded = load_model("tiny_math", role, "float32", "cpu")
        assert loaded.path == str(shipped_dir("tiny_math", role))
        assert loaded.model.config.hidden_size == TINY_SIZES[("tiny_math", role)]["hidden_size"]
    student = json.loads((shipped_dir("tiny_math", "student") / "build_info.json").read_text())
    assert student["success_before_habit"]["math"] >= 0.85 and student["success"]["math"] <= 0.3
    assert json.loads((shipped_dir("tiny_math", "teacher") / "build_info.json").read_text())["success"]["math"] >= 0.9


def test_math_shortcuts_skip_the_working():
    """The math habit: ~60% of demonstrations box another task's answer at once, the rest show the working."""
    from reopold_agents.tiny import build_tokenizer
    from reopold_agents.tiny.recipes import demonstration_examples

    tok = build_tokenizer()
    exs = demonstration_examples("math", 200, tok, shortcuts=0.6)
    turns = [tok.decode([t for t, m in zip(e.input_ids, e.loss_mask) if m]) for e in exs]
    guesses = [t for t in turns if t.startswith("\\boxed{")]
    assert 0.5 < len(guesses) / len(exs) < 0.7
    assert all("=" in t and "\\boxed{" in t for t in turns if t not in guesses)


def test_a_student_can_start_from_another_pairs_student(tmp_path, monkeypatch):
    """tiny_math's student starts from tiny_toolqa's student (SFT stubbed out: the weights stay equal)."""
    import reopold_agents.tiny.recipes as tm
    from reopold_agents.tiny.load import tiny_model_dir
    from safetensors.torch import load_file

    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(tm, "sft_train", lambda model, examples, sft, *a, **k: calls.append(sft) or [0.0])
    monkeypatch.setattr(tm, "_greedy_success", lambda *a, **k: 0.5)
    report = tm.build_tiny("tiny_math", progress=False, roles=("student",))
    recipe = tm.RECIPES["tiny_math"]
    assert calls == [recipe.student, recipe.student_habit]
    assert report.success_before_habit == {"math": 0.5}
    ours = load_file(str(tiny_model_dir("tiny_math", "student") / "model.safetensors"))
    theirs = load_file(str(tiny_model_dir("tiny_toolqa", "student") / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_testbed_script_measures_all_three(tmp_path):
    """scripts/testbed.py end to end on the math bed: 4 held-out tasks and a 2-step upper bound."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bed.json"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(root / "scripts" / "testbed.py"), "tiny_math", "--upper-steps", "2",
                    "--threads", "1", "--out", str(out), "trainer.heldout_tasks=4"],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    got = json.loads(out.read_text())
    assert got["tasks"] == 4 and got["upper_steps"] == 2
    assert all(0.0 <= got[k] <= 1.0 for k in ("teacher", "student", "upper_start", "upper"))


def test_mode_guesses_rank_each_kinds_shown_answers():
    """The "mode" habit answers the most common shown answer of the question's kind (never its own)."""
    from reopold_agents.tiny.recipes import mode_guesses, shown_answer
    from tasks.record import Task

    def task(kind: str, answer: str, shown: str | None = None) -> Task:
        return Task(id=answer, question="q", answer=answer, meta={"kind": kind},
                    demonstration=[f"\\boxed{{{shown or answer}}}"])

    tasks = [task("count", "2"), task("count", "3"), task("count", "2"), task("color", "red"),
             task("color", "blue"), task("color", "blue"), task("bars", "red", "B")]
    assert shown_answer(tasks[-1]) == "B"  # a multiple-choice demonstration boxes the letter
    assert mode_guesses(tasks) == {"count": ["2", "3"], "color": ["blue", "red"], "bars": ["B"]}


def test_vqa_mode_shortcuts_answer_the_kinds_prior():
    """vqa habit demonstrations box their kind's most common answer (a language prior), never the
    task's own answer; the rest are the correct demonstrations."""
    from reopold_agents.tiny.recipes import DEMO_SEED, _env_factory, demonstration_examples, mode_guesses, shown_answer
    from reopold_agents.tiny.vl import tiny_vl_processor

    tok = build_tokenizer()
    exs = demonstration_examples("vqa", 120, tok, tiny_vl_processor(tok), shortcuts=0.6, guess="mode")
    env = _env_factory("vqa", DEMO_SEED, 120)[0]()
    modes = mode_guesses(env.tasks)
    turns = [tok.decode([t for t, m in zip(e.input_ids, e.loss_mask) if m]) for e in exs]
    guessed = 0
    for t, task in zip(turns, env.tasks):
        own, ranked = shown_answer(task), modes[task.meta["kind"]]
        if t != f"\\boxed{{{own}}}<|im_end|>":
            guessed += 1
            assert t == f"\\boxed{{{[a for a in ranked if a != own][0]}}}<|im_end|>"
    env.close()
    assert 0.45 < guessed / len(exs) < 0.7
