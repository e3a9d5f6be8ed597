"""A second project-trained tokenizer, built unlike the tiny one, for cross-tokenizer tests.

The tiny tokenizer (``reopold_agents.tiny.tokenizer``) is byte-level BPE (GPT-2/Qwen style). This one
is SentencePiece style, as Llama-2/Mistral: spaces become ``▁`` and start a word, merges are learned on
characters, and any character missing from its small alphabet (emoji, CJK, accents) falls back to
``<0xXX>`` byte tokens. Different vocab size and merges, same special tokens and chat template, so
whitespace merges, byte fallback and multi-byte characters all cut the same text differently from
the tiny tokenizer. Cached like the project tokenizer (under ``cache_dir()``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from reopold_agents.tiny import QWEN_SPECIAL_TOKENS, build_tokenizer, cache_dir

VERSION = "spbf-v2"
_WORDS = "the a of to is what how many total answer number sum tool call result search city year find you are helpful".split()


def _added_tokens(template_tok: PreTrainedTokenizerFast) -> list[str]:
    """The tiny tokenizer's added non-special tokens (``<tool_call>``, ``<think>``, ...)."""
    return [t.content for t in template_tok.added_tokens_decoder.values() if not t.special]


def _corpus(template: str, seed: int = 1, lines: int = 1500) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(3, 10)))
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        out.append(rng.choice([f"{words.capitalize()}?", f"{a} + {b} = \\boxed{{{a + b}}}", f'{{"name": "search", "arguments": {{"query": "{words}"}}}}']))
    out.append(template)
    return out


def train_second_tokenizer(vocab_size: int = 700) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tiny = build_tokenizer()
    specials = list(QWEN_SPECIAL_TOKENS)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}|\n"), behavior="isolated"),  # digits and newlines stand alone
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")]
    )
    draft = Tokenizer(models.BPE(byte_fallback=True))
    draft.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(byte_tokens), special_tokens=specials, show_progress=False)
    draft.train_from_iterator(_corpus(tiny.chat_template), trainer=trainer)
    import json

    trained = json.loads(draft.to_str())["model"]
    # Byte tokens must be in the BPE vocabulary itself (not added tokens) for byte fallback to find them.
    vocab: dict[str, int] = {t: i for i, t in enumerate(specials + byte_tokens)}
    for tok in sorted(trained["vocab"], key=trained["vocab"].get):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=specials[1:]
    )
    fast.add_tokens(_added_tokens(tiny))
    fast.chat_template = tiny.chat_template
    fast.padding_side = "left"
    return fast


def second_tokenizer() -> PreTrainedTokenizerFast:
    """The cached second tokenizer (trained on first use)."""
    target = cache_dir() / f"tokenizer-{VERSION}"
    if not (target / "tokenizer.json").exists():
        tmp = Path(f"{target}.tmp{os.getpid()}")
        train_second_tokenizer().save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process saved it first
            pass
    return PreTrainedTokenizerFast.from_pretrained(str(target))
