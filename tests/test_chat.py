"""Incremental chat tokenisation: env turns are exactly the template's tokens between assistant turns,
and re-tokenising the whole conversation would drift (reasoning stripping, non-canonical sampled ids)."""

from __future__ import annotations

import pytest

from reopold_agents.chat import encode_env_turn, encode_prompt

TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def full_ids(tok, messages, **kw):
    text = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True, **kw)
    return ids(tok, text)


def build_incremental(tok, conversation, generated, **kw):
    """Prompt ids + for each assistant turn: its 'generated' ids + the env turn, as the rollout does."""
    prompt_msgs = conversation[0]
    out = encode_prompt(tok, prompt_msgs, TOOLS, **kw).ids
    for gen, env_msgs in zip(generated, conversation[1:]):
        out = out + gen
        out = out + encode_env_turn(tok, env_msgs, assistant_closed=gen[-1] == tok.eos_token_id, tools=TOOLS, **kw).ids
    return out


def test_prompt_matches_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    want = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert encode_prompt(tok, msgs, TOOLS).ids == list(want)


def test_incremental_equals_full_render_when_nothing_drifts(tok):
    """Canonical generated ids + a template that keeps history: both ways agree token for token."""
    a1 = 'Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "3+4"}}</tool_call>'
    a2 = "The answer is \\boxed{7}."
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    env1 = [{"role": "tool", "content": "7"}]
    env2 = [{"role": "user", "content": "Are you sure?"}]
    # turn 1 stopped on </tool_call> (no <|im_end|> generated); turn 2 ended with EOS
    gen1 = ids(tok, a1)
    gen2 = ids(tok, a2) + [tok.eos_token_id]
    inc = build_incremental(tok, [msgs, env1, env2], [gen1, gen2])
    full = full_ids(tok, msgs + [{"role": "assistant", "content": a1}] + env1 + [{"role": "assistant", "content": a2}] + env2)
    assert inc == full


def test_env_turn_after_tool_call_end_starts_with_im_end(tok):
    env = encode_env_turn(tok, [{"role": "tool", "content": "42"}], assistant_closed=False, tools=TOOLS).ids
    closed = encode_env_turn(tok, [{"role": "tool", "content": "42"}], assistant_closed=True, tools=TOOLS).ids
    assert env[0] == tok.eos_token_id and env[1:] == closed
    assert tok.decode(closed) == "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_reasoning_stripping_template_would_drift(tok):
    """With strip_reasoning the template deletes earlier <think> blocks: re-rendering changes ids the
    student generated, the incremental encoding keeps them."""
    a1 = '<think>\nI need the calculator.\n</think>\n<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    msgs = [{"role": "user", "content": "What is 6 * 7?"}]
    env1 = [{"role": "tool", "content": "42"}]
    gen1 = ids(tok, a1)
    inc = build_incremental(tok, [msgs, env1], [gen1], strip_reasoning=True)
    full = full_ids(tok, msgs + [{"role": "assistant", "content": a1}] + env1, strip_reasoning=True)
    assert inc != full
    assert tok.decode(inc).count("<think>") == 1 and tok.decode(full).count("<think>") == 0
    prompt = encode_prompt(tok, msgs, TOOLS, strip_reasoning=True).ids
    assert inc[len(prompt) : len(prompt) + len(gen1)] == gen1  # the generated ids survive verbatim
    # and without stripping, the same conversation agrees both ways
    assert build_incremental(tok, [msgs, env1], [gen1]) == full_ids(tok, msgs + [{"role": "assistant", "content": a1}] + env1)


def test_non_canonical_sampled_ids_would_drift(tok):
    """A sampler may emit a word as several sub-tokens; re-tokenising the text merges them."""
    word = "answer"
    canonical = ids(tok, word)
    split = [i for ch in word for i in ids(tok, ch)]
    assert len(canonical) < len(split) and tok.decode(split) == word
    msgs = [{"role": "user", "content": "hi"}]
    env1 = [{"role": "user", "content": "ok"}]
    gen = split + [tok.eos_token_id]
    inc = build_incremental(tok, [msgs, env1], [gen])
    full = full_ids(tok, msgs + [{"role": "assistant", "content": word}] + env1)
    assert tok.decode(inc) == tok.decode(full) and inc != full


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="assistant"):
        encode_env_turn(tok, [{"role": "assistant", "content": "x"}], assistant_closed=True)
    with pytest.raises(ValueError, match="no new messages"):
        encode_env_turn(tok, [], assistant_closed=True)
    with pytest.raises(ValueError, match="1 image placeholders but 0 images"):
        encode_env_turn(tok, [{"role": "tool", "content": [{"type": "image"}]}], assistant_closed=True)
    with pytest.raises(ValueError, match="no processor"):
        encode_prompt(tok, [{"role": "user", "content": [{"type": "image", "image": object()}]}], images=[object()])
