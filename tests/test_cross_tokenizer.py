"""Cross-tokenizer scoring against brute force: segments, token bytes, and teacher credit on real tiny models.

Two project-trained tokenizers: the tiny byte-level BPE and a SentencePiece-style byte-fallback BPE
(tests/_second_tokenizer.py). Trajectories come from the real Rollout on the real toolqa env; only the
sampling is scripted (a replay engine that returns chosen ids with the student model's real log-probs),
so texts with emoji, CJK, whitespace runs, special tokens and non-canonical splits are guaranteed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

import reopold_agents as ra
from reopold_agents.engines.base import Engine, Generation, GenerationRequest, SamplingParams
from reopold_agents.rollout import Rollout
from reopold_agents.teacher import CrossTokenizerTeacher, Teacher, TeacherScores
from reopold_agents.teacher.cross.align import AlignmentError, align_turn, common_segments
from reopold_agents.teacher.cross.pieces import TokenPieces
from reopold_agents.teacher.cross.render import render_teacher_view
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch, Conversation, Trajectory, collate

sys.path.insert(0, str(Path(__file__).parent))
from _second_tokenizer import second_tokenizer  # noqa: E402

torch.set_num_threads(1)

TEXTS = [
    "Hi 😀 中文  x\n\n y café 12",
    "naïve  résumé\t\tend 🎉🎉 日本語",
    "plain words and numbers 345 here",
]
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>'


@pytest.fixture(scope="module")
def tok2():
    return second_tokenizer()


# ------------------------------------------------------------------------------------ pure segments


def _random_tiling(rng: random.Random, length: int, zero_width: float = 0.1) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(1, length), rng.randint(0, length - 1))) if length > 1 else []
    ends = [*cuts, length]
    spans, pos = [], 0
    for e in ends:
        if rng.random() < zero_width:
            spans.append((pos, pos))
        spans.append((pos, e))
        pos = e
    if rng.random() < zero_width:
        spans.append((pos, pos))
    return spans


def test_segments_and_credit_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randint(1, 30)
        s, t = _random_tiling(rng, length), _random_tiling(rng, length)
        s_lp = [-rng.random() * 3 for _ in s]
        t_lp = [-rng.random() * 3 for _ in t]
        credit = align_turn(s, s_lp, t, t_lp, length)
        # Brute force: the common cuts are exactly the positive ends both sides share.
        shared = {b for _, b in s if b > 0} & {b for _, b in t if b > 0}
        assert [seg.end for seg in credit.segments] == sorted(shared)
        for seg in credit.segments:
            lo, hi = seg.student
            tlo, thi = seg.teacher
            assert all(seg.start <= a and b <= seg.end for a, b in s[lo:hi] + t[tlo:thi])
            want = sum(t_lp[tlo:thi]) - sum(s_lp[lo:hi])
            assert sum(credit.rewards[lo:hi]) == pytest.approx(want, abs=1e-9)
            assert len({round(r, 9) for r in credit.rewards[lo:hi]}) == 1  # spread evenly
        assert sum(credit.rewards) == pytest.approx(sum(t_lp) - sum(s_lp), abs=1e-9)
        assert [v - lp for v, lp in zip(credit.teacher_logprobs, s_lp)] == pytest.approx(credit.rewards, abs=1e-9)
        # Identical tokenizations: every token its own segment, values are the teacher's own log-probs.
        solid = _random_tiling(rng, length, zero_width=0.0)
        t_own = [-rng.random() * 3 for _ in solid]
        same = align_turn(solid, [-rng.random() for _ in solid], solid, t_own, length)
        assert same.teacher_logprobs == t_own and len(same.segments) == len(solid)


def test_segments_example_and_errors():
    # "héllo": student cuts inside é (byte-level), teacher keeps é whole with "h".
    segs = common_segments([(0, 1), (1, 2), (2, 3), (3, 6)], [(0, 3), (3, 4), (4, 6)], 6)
    assert [(g.start, g.end, g.student, g.teacher) for g in segs] == [(0, 3, (0, 3), (0, 1)), (3, 6, (3, 4), (1, 3))]
    with pytest.raises(AlignmentError, match="previous token ended"):
        common_segments([(0, 2), (3, 4)], [(0, 4)], 4)
    with pytest.raises(AlignmentError, match="cover 3 bytes"):
        common_segments([(0, 3)], [(0, 4)], 4)
    with pytest.raises(AlignmentError, match="log-probs"):
        align_turn([(0, 1)], [], [(0, 1)], [0.0], 1)


# ------------------------------------------------------------------------------------ token bytes


@pytest.mark.parametrize("which", ["tiny", "second"])
def test_token_pieces_spell_text(tok, tok2, which):
    tk = tok if which == "tiny" else tok2
    tp = TokenPieces(tk)
    for text in [*TEXTS, CALL, "<|im_start|>user\nhi<|im_end|>\n"]:
        ids = tk(text, add_special_tokens=False)["input_ids"]
        assert b"".join(tp.pieces(ids)) == text.encode("utf-8")
    # Split characters: an emoji is 4 byte tokens on both tokenizers (byte-level and byte fallback).
    emoji = tk("😀", add_special_tokens=False)["input_ids"]
    assert len(emoji) == 4 and [len(p) for p in tp.pieces(emoji)] == [1, 1, 1, 1]
    # Skipped special tokens are zero-width, as decode(skip_special_tokens=True) drops them.
    ids = tk("a<|endoftext|>b", add_special_tokens=False)["input_ids"]
    assert b"".join(tp.pieces(ids, skip_special=True)) == b"ab" == tk.decode(ids, skip_special_tokens=True).encode()


def test_second_tokenizer_really_differs(tok, tok2):
    assert len(tok2) != len(tok)
    text = TEXTS[0]
    a, b = tok(text, add_special_tokens=False)["input_ids"], tok2(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(a) != tok2.convert_ids_to_tokens(b)
    assert "<0xE4>" in tok2.convert_ids_to_tokens(b)  # CJK by byte fallback


# ------------------------------------------------------------------------- real rollouts, real models


class _ReplayEngine(Engine):
    """Returns scripted ids turn after turn, with the student model's real log-probs of them."""

    def __init__(self, model: torch.nn.Module, turns: list[list[int]]) -> None:
        self.model, self.turns = model, list(turns)

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        out = []
        for req in requests:
            ids = self.turns.pop(0)
            seq = torch.tensor([req.prompt_ids + ids])
            lp = torch.log_softmax(self.model(input_ids=seq).logits[0].double(), -1)
            n = len(req.prompt_ids)
            lps = [float(lp[n - 1 + i, t]) for i, t in enumerate(ids)]
            out.append(Generation(ids, lps, "stop"))
        return out

    def load_weights(self, model_or_state_dict) -> None:
        raise NotImplementedError


def _ids(tk, text: str, split: float = 0.0, seed: int = 0) -> list[int]:
    """Student ids of ``text``; ``split`` > 0 breaks that share of byte-level tokens into single bytes
    (a non-canonical tokenization, as sampling produces)."""
    rng = random.Random(seed)
    out = []
    for i in tk(text, add_special_tokens=False)["input_ids"]:
        token = tk.convert_ids_to_tokens(i)
        if rng.random() < split and len(token) > 1 and i not in tk.added_tokens_decoder:
            out.extend(tk.convert_tokens_to_ids(list(token)))
        else:
            out.append(i)
    return out


def _episode(tok, student, turns: list[list[int]]):
    """One toolqa episode with scripted turns: (trajectory, the conversation as the env last showed it)."""
    envs = []

    def factory():
        envs.append(ra.make_env("toolqa", seed=0))
        return envs[-1]

    rollout = Rollout(_ReplayEngine(student, turns), tok, factory, max_turns=len(turns), max_total_tokens=4096, env_workers=1)
    try:
        (traj,) = rollout.run([0], SamplingParams(max_new_tokens=64))
        env = envs[0]
        conv = Conversation(messages=env._observation()["messages"], tools=env.tool_specs())
    finally:
        rollout.close()
    return traj, conv


def _brute_teacher_turns(model, tk, conv: Conversation, closed: list[bool]) -> list[float]:
    """Per turn, log pi_T(text [+ end token] | the conversation before it, rendered for generation)."""
    out = []
    turn = 0
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant":
            continue
        ctx = tk.apply_chat_template(conv.messages[:i], tools=conv.tools, tokenize=False, add_generation_prompt=True)
        ctx_ids = tk(ctx, add_special_tokens=False)["input_ids"]
        text_ids = tk(m["content"], add_special_tokens=False)["input_ids"] + ([tk.eos_token_id] if closed[turn] else [])
        seq = torch.tensor([ctx_ids + text_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        out.append(sum(float(lp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(text_ids)))
        turn += 1
    return out


def _cross_scored(teacher: CrossTokenizerTeacher, traj: Trajectory, conv: Conversation) -> tuple[Batch, TeacherScores]:
    """``traj`` collated and scored as the training step does (the scores written into the batch)."""
    batch = collate([traj], teacher.student_tokenizer.pad_token_id)
    (seen,) = batch.conversations
    # The scorer reads the conversation the rollout kept, the one the env showed (the brute force's).
    assert seen.messages == conv.messages and seen.tools == conv.tools
    assert seen.turn_lengths == [t["num_generated"] for t in traj.turns]
    scores = teacher.score(batch)
    assert scores.apply_to(batch) is batch
    return batch, scores


def _turn_sums(traj, batch) -> list[tuple[float, float]]:
    """Per turn: (sum of rewards = teacher_logprobs - rollout_logprobs, sum of rollout log-probs)."""
    gen = [i for i, m in enumerate(traj.loss_mask) if m]
    teacher = batch.teacher_logprobs[0].double().tolist()
    out, pos = [], 0
    for t in traj.turns:
        idx = gen[pos : pos + t["num_generated"]]
        out.append((sum(teacher[i] - traj.rollout_logprobs[i] for i in idx), sum(traj.rollout_logprobs[i] for i in idx)))
        pos += t["num_generated"]
    return out


def _script(tk, split: float) -> tuple[list[list[int]], list[bool]]:
    eos = tk.eos_token_id
    turns = [
        _ids(tk, CALL, split),  # stops at </tool_call>: not closed, the rollout adds <|im_end|>
        _ids(tk, TEXTS[0], split, 1) + [eos],
        _ids(tk, TEXTS[1], split, 2)[:5] + [tk.convert_tokens_to_ids("<|endoftext|>")] + _ids(tk, TEXTS[1], split, 2)[5:] + [eos],
    ]
    return turns, [False, True, True]


def test_identical_tokenizers_match_same_tokenizer_path(tok, one_thread):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=5, hidden_size=96, num_layers=3)
    turns, _ = _script(tok, split=0.0)
    turns[2] = [t for t in turns[2] if t != tok.convert_tokens_to_ids("<|endoftext|>")]  # canonical ids only
    traj, conv = _episode(tok, student, [list(t) for t in turns])
    same = collate([traj], tok.pad_token_id)
    Teacher(tok, model=teacher).score(same).apply_to(same)
    cross, scores = _cross_scored(CrossTokenizerTeacher(tok, tok, teacher, chunk_size=5), traj, conv)
    assert scores.masked_turns == [[]]
    assert int(cross.loss_mask.sum()) == sum(len(t) for t in turns)
    assert cross.loss_mask[0, 1:].long().tolist() == traj.loss_mask[1:]  # (collate never trains on position 0)
    assert torch.equal(cross.loss_mask, same.loss_mask)
    got, want = cross.teacher_logprobs[0], same.teacher_logprobs[0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want != 0).sum() == sum(traj.loss_mask)


@pytest.mark.parametrize("teacher_tok", ["tiny-noncanonical", "second"])
def test_turn_sums_equal_full_sequence_logprobs(tok, tok2, teacher_tok, one_thread):
    tk = tok if teacher_tok.startswith("tiny") else tok2
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tk, seed=5, hidden_size=96, num_layers=3)
    turns, closed = _script(tok, split=0.5)
    traj, conv = _episode(tok, student, turns)
    assert [m["content"] for m in conv.messages if m["role"] == "assistant"] == [CALL, TEXTS[0], TEXTS[1]]
    batch, scores = _cross_scored(CrossTokenizerTeacher(tok, tk, teacher), traj, conv)
    assert scores.masked_turns == [[]]
    assert batch.loss_mask[0, 1:].long().tolist() == traj.loss_mask[1:]  # nothing masked
    brute = _brute_teacher_turns(teacher, tk, conv, closed)
    for k, ((reward_sum, student_sum), t_sum) in enumerate(zip(_turn_sums(traj, batch), brute)):
        assert reward_sum == pytest.approx(t_sum - student_sum, abs=1e-4), k
    # The tokenizations really differ: some segments hold several tokens on one side.
    view = render_teacher_view(tk, conv.messages, conv.tools)
    assert any(t.num_text_tokens != len(s) for t, s in zip(view.turns, turns))


def test_misaligned_turns_are_masked_and_reported(tok, tok2, one_thread):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok2, seed=5)
    eos = tok.eos_token_id
    emoji = tok("😀", add_special_tokens=False)["input_ids"]
    turns = [
        _ids(tok, "ok then") + emoji[:2] + _ids(tok, " done") + [eos],  # half an emoji: text holds U+FFFD
        _ids(tok, TEXTS[2]) + [eos],
    ]
    traj, conv = _episode(tok, student, turns)
    n0 = len(turns[0])
    gen = [i for i, m in enumerate(traj.loss_mask) if m]
    batch, scores = _cross_scored(CrossTokenizerTeacher(tok, tok2, teacher), traj, conv)
    ((problem,),) = scores.masked_turns
    assert problem.startswith("turn 0:") and "UTF-8" in problem
    assert all(batch.loss_mask[0, i] == 0 for i in gen[:n0])  # masked: out of the loss, reward 0
    assert all(batch.teacher_logprobs[0, i] == 0 for i in gen[:n0])  # no teacher value where nothing is trained
    assert all(batch.loss_mask[0, i] == 1 for i in gen[n0:])  # the next turn is still scored
    brute = _brute_teacher_turns(teacher, tok2, conv, [True, True])
    teacher_lps = batch.teacher_logprobs[0].double().tolist()
    assert sum(teacher_lps[i] - traj.rollout_logprobs[i] for i in gen[n0:]) == pytest.approx(
        brute[1] - sum(traj.rollout_logprobs[i] for i in gen[n0:]), abs=1e-4
    )


def test_template_that_changes_text_is_masked(tok, tok2, one_thread):
    """A teacher template that trims assistant content cannot score a turn ending in whitespace."""
    from transformers import PreTrainedTokenizerFast

    trimming = PreTrainedTokenizerFast.from_pretrained(tok2.name_or_path)
    trimming.chat_template = tok2.chat_template.replace("{{ text }}", "{{ text | trim }}")
    assert trimming.chat_template != tok2.chat_template
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(trimming, seed=5)
    turns = [_ids(tok, "first answer  \n"), _ids(tok, TEXTS[2]) + [tok.eos_token_id]]
    traj, conv = _episode(tok, student, turns)
    gen = [i for i, m in enumerate(traj.loss_mask) if m]
    batch, scores = _cross_scored(CrossTokenizerTeacher(tok, trimming, teacher), traj, conv)
    ((problem,),) = scores.masked_turns
    assert problem.startswith("turn 0:") and "changed the assistant text" in problem
    assert int(batch.loss_mask.sum()) == len(turns[1])
    brute = _brute_teacher_turns(teacher, trimming, conv, [False, True])
    second = gen[len(turns[0]) :]
    teacher_lps = batch.teacher_logprobs[0].double().tolist()
    assert sum(teacher_lps[i] - traj.rollout_logprobs[i] for i in second) == pytest.approx(
        brute[1] - sum(traj.rollout_logprobs[i] for i in second), abs=1e-4
    )


def test_sentencepiece_prefix_space_is_dropped(tok2):
    """Llama-2 style: every word piece starts with ▁ and the decoder strips the first one; the pieces of
    a text then spell " " + text, and ``pieces_of_text`` drops that one byte (and nothing else)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from reopold_agents.teacher.cross.pieces import pieces_of_text

    spec = json.loads(tok2.backend_tokenizer.to_str())
    spec["pre_tokenizer"]["pretokenizers"][1]["prepend_scheme"] = "always"
    spec["decoder"]["decoders"].append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    llama_like = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    tp = TokenPieces(llama_like)
    assert tp.strips_leading_space and not TokenPieces(tok2).strips_leading_space
    text = "hello 中 world"
    ids = llama_like(text, add_special_tokens=False)["input_ids"]
    assert llama_like.convert_ids_to_tokens(ids)[0].startswith("▁") and llama_like.decode(ids) == text
    pieces = pieces_of_text(tp, tp.pieces(ids), text)
    assert pieces is not None and b"".join(pieces) == text.encode() and len(pieces) == len(ids)
    assert pieces_of_text(tp, tp.pieces(ids), "hello 中 world!") is None
