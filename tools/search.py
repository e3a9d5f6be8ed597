"""`search`: BM25 (rank_bm25.BM25Okapi) retrieval over a local corpus, no network.

The corpus is a list of documents (strings or ``{"id", "title", "text"}`` dicts) or a JSONL file with one
such object per line; the default is the small built-in ``tools/data/default_corpus.jsonl`` so the tool
works out of the box. The toolqa environment passes its own corpus: ``get_tool("search", corpus=path)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rank_bm25 import BM25Okapi

from tools.base import Tool, ToolResult, register_tool

DEFAULT_CORPUS = Path(__file__).parent / "data" / "default_corpus.jsonl"
_TOKEN = re.compile(r"[a-z0-9]+")
MAX_QUERY_CHARS = 1000  # BM25 scores every query token against every document: bound the work per call
# Words too common to discriminate between documents; tiny corpora make BM25's idf noisy for them.
_STOP = frozenset("a an and are as at be by did do does for from has have how in is it its of on or "
                  "the to was were what when where which who whom why with".split())


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


@dataclass
class Document:
    id: str
    title: str
    text: str


def _to_doc(i: int, item: Any, where: str) -> Document:
    if isinstance(item, str):
        return Document(id=str(i), title="", text=item)
    if isinstance(item, dict):
        text = item.get("text", item.get("contents"))
        if not isinstance(text, str):
            raise ValueError(f"{where}: document {i} has no string 'text' field (keys: {sorted(item)})")
        return Document(id=str(item.get("id", i)), title=str(item.get("title", "")), text=text)
    raise ValueError(f"{where}: document {i} must be a string or a dict, got {type(item).__name__}")


def load_corpus(corpus: str | Path | Iterable[Any] | None) -> list[Document]:
    """Documents from a JSONL path, an iterable of strings/dicts, or the default corpus (None)."""
    if corpus is None:
        corpus = DEFAULT_CORPUS
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"search corpus {path} does not exist")
        docs = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                    docs.append(_to_doc(len(docs), item, f"{path}:{lineno}"))
    else:
        docs = [_to_doc(i, item, "search corpus") for i, item in enumerate(corpus)]
    if not docs:
        raise ValueError("search corpus is empty")
    return docs


@register_tool("search")
class SearchTool(Tool):
    """BM25 search; returns the top-k documents as numbered ``[i] title: text`` entries."""

    name = "search"
    description = "Search a local collection of documents by keywords and return the most relevant passages."
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "keywords to search for"},
            "k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3,
                  "description": "number of results"},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, corpus: str | Path | Iterable[Any] | None = None, k: int = 3, max_chars_per_doc: int = 500) -> None:
        if not 1 <= k <= 10:
            raise ValueError(f"search tool: k must be in [1, 10], got {k}")
        self.docs = load_corpus(corpus)
        self.default_k = k
        self.max_chars_per_doc = max_chars_per_doc
        self._bm25 = BM25Okapi([tokenize(f"{d.title} {d.text}") or ["<empty>"] for d in self.docs])

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for ``query`` (corpus order)."""
        return [float(s) for s in self._bm25.get_scores(tokenize(query))]

    def search(self, query: str, k: int | None = None) -> list[tuple[Document, float]]:
        """Top-k (document, score) pairs with a positive score, best first (ties: corpus order)."""
        scored = [(s, -i) for i, s in enumerate(self.scores(query)) if s > 0]
        scored.sort(reverse=True)
        return [(self.docs[-i], s) for s, i in scored[: k or self.default_k]]

    def run(self, query: str, k: int | None = None) -> ToolResult:
        if len(query) > MAX_QUERY_CHARS:
            return ToolResult.error(f"search: the query is {len(query)} characters long; keep it under {MAX_QUERY_CHARS}")
        if not tokenize(query):
            return ToolResult.error("search: the query has no searchable words")
        hits = self.search(query, k)
        if not hits:
            return ToolResult(text=f"no results for {query!r}")  # query <= MAX_QUERY_CHARS
        lines = []
        for rank, (doc, _) in enumerate(hits, 1):
            text = doc.text if len(doc.text) <= self.max_chars_per_doc else doc.text[: self.max_chars_per_doc] + "..."
            lines.append(f"[{rank}] {doc.title}: {text}" if doc.title else f"[{rank}] {text}")
        return ToolResult(text="\n".join(lines))
