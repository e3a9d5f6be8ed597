"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.tiny import build_tokenizer


@pytest.fixture(scope="session")
def tok():
    """The project's own tokenizer (trained once, cached under ``$REOPOLD_CACHE``)."""
    return build_tokenizer()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
