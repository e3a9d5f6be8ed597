"""Hub-free fixtures: a tokenizer the project trains itself and tiny Qwen-family models built from config.

Tests, the CPU demo and benchmarks all use these, so nothing is ever downloaded.
"""

from reopold_agents.tiny.tokenizer import QWEN_SPECIAL_TOKENS, build_tokenizer, cache_dir
from reopold_agents.tiny.architectures import tiny_qwen2, tiny_qwen2_config

__all__ = ["QWEN_SPECIAL_TOKENS", "build_tokenizer", "cache_dir", "tiny_qwen2", "tiny_qwen2_config"]
