"""A small byte-level BPE tokenizer with Qwen's special tokens and a Qwen-style chat template.

Trained by the project on a seeded synthetic corpus (math, tool calls, short English), so it behaves
like a Qwen tokenizer (same special tokens, digits split one per token, ``<|im_end|>`` as EOS) while
being small enough for models that train on a CPU in minutes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast

TOKENIZER_VERSION = "v1"
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added (non-special) tokens, as in Qwen2.5/Qwen3: they survive decode(skip_special_tokens=True).
QWEN_ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

_WORDS = (
    "the a an of to in is was what how many much total each if then and or not answer question "
    "number numbers sum product difference add subtract multiply divide plus minus times equals "
    "apples books coins cars boxes pens cats dogs birds students tickets cookies marbles red blue "
    "green yellow circle square triangle bar chart image shows count there are which largest "
    "smallest value city country capital population river mountain year born height length "
    "calculator search python lookup result error tool call final use please compute find give "
    "you are a helpful assistant think step by step reason the user asks about has have buys sells "
    "gives gets more less left remaining every day week month cost price dollars cents per"
).split()


def cache_dir() -> Path:
    """Where built fixtures (tokenizer, tiny teacher) are cached: ``$REOPOLD_CACHE`` or ~/.cache."""
    root = os.environ.get("REOPOLD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reopold_agents")
    return Path(root)


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    tools = ["calculator", "search", "python"]
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.35:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op = rng.choice(["+", "-", "*", "/"])
            out.append(f"What is {a} {op} {b}? The answer is \\boxed{{{a}}}.")
        elif kind < 0.6:
            name = rng.choice(tools)
            arg = " ".join(rng.choices(_WORDS, k=rng.randint(1, 4)))
            out.append(f'<tool_call>{{"name": "{name}", "arguments": {{"expression": "{arg}"}}}}</tool_call>')
            out.append(f"<tool_response>\n{arg} = {rng.randint(0, 9999)}\n</tool_response>")
        else:
            words = rng.choices(_WORDS, k=rng.randint(5, 15))
            out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    out.append(CHAT_TEMPLATE_PATH.read_text())
    return out


def train_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE (deterministic for a given seed and vocab size)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),  # one digit per token, as Qwen
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )
    fast.add_tokens(QWEN_ADDED_TOKENS)
    fast.chat_template = CHAT_TEMPLATE_PATH.read_text()
    fast.model_max_length = 32768
    fast.padding_side = "left"
    return fast


def build_tokenizer(path: str | os.PathLike | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Load the project tokenizer from ``path`` (default: the cache), training and saving it if absent."""
    target = Path(path) if path else cache_dir() / f"tokenizer-{TOKENIZER_VERSION}-{vocab_size}"
    if (target / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(target))
    tok = train_tokenizer(vocab_size=vocab_size)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; use theirs
        pass
    return PreTrainedTokenizerFast.from_pretrained(str(target))
