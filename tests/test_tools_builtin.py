"""Built-in tools: calculator (vs. a Python reference, safety), BM25 search (vs. a hand-written BM25), bar_chart."""

from __future__ import annotations

import ast
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tools.base import get_tool
from tools.calculator import MAX_INT_BITS, CalcError, evaluate
from tools.search import SearchTool, load_corpus, tokenize

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- calculator


def _random_expr(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return str(rng.randint(-50, 50)) if rng.random() < 0.8 else f"{rng.uniform(-9, 9):.3f}"
    op = rng.choice(["+", "-", "*", "/", "//", "%", "**"])
    left, right = _random_expr(rng, depth - 1), _random_expr(rng, depth - 1)
    if op == "**":
        right = str(rng.randint(0, 4))
    return f"({left} {op} {right})" if rng.random() < 0.7 else f"-({left} {op} {right})"


def test_calculator_matches_python_reference() -> None:
    """Random integer/float arithmetic agrees exactly with Python's own evaluation of the same text."""
    rng = random.Random(0)
    checked = 0
    for _ in range(600):
        expr = _random_expr(rng, 4)
        try:
            expected = eval(compile(ast.parse(expr, mode="eval"), "<ref>", "eval"), {"__builtins__": {}})  # reference only
        except (ZeroDivisionError, OverflowError):
            with pytest.raises(CalcError):
                evaluate(expr)
            continue
        if isinstance(expected, complex) or (isinstance(expected, float) and not math.isfinite(expected)):
            with pytest.raises(CalcError):
                evaluate(expr)
            continue
        assert evaluate(expr) == expected, expr
        checked += 1
    assert checked > 400


@pytest.mark.parametrize("expr, expected", [
    ("(3 + 4) * 2 ** 10 / 7", "1024"),
    ("7 / 2", "3.5"),
    ("7 // 2", "3"),
    ("-7 % 3", "2"),
    ("-2 ** 2", "-4"),
    ("2 ** -1", "0.5"),
    ("sqrt(16) + abs(-2)", "6"),
    ("round(pi, 3)", "3.142"),
    ("factorial(20)", "2432902008176640000"),
    ("2 ** 100", str(2 ** 100)),
    ("max(1, 5, 3) - min(4, 2)", "3"),
    ("log10(1000)", "3"),
    ("gcd(84, 36)", "12"),
    ("1e3 + 0.5", "1000.5"),
    ("0.1 + 0.2", "0.30000000000000004"),
])
def test_calculator_values(expr: str, expected: str) -> None:
    res = get_tool("calculator")(expression=expr)
    assert (res.text, res.is_error) == (expected, False)


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('id')", "function \"__import__('os').system\" is not allowed"),
    ("__import__('os')", "function '__import__' is not allowed"),
    ("open('/etc/passwd').read()", "is not allowed"),
    ("().__class__.__bases__", "Attribute is not allowed"),
    ("[x for x in range(10)]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("'a' * 10", "only numbers are allowed"),
    ("True + 1", "only numbers are allowed"),
    ("1j * 2", "only numbers are allowed"),
    ("x + 1", "unknown name 'x'"),
    ("2 ^ 10", "use ** for powers"),
    ("1 << 1000", "LShift is not supported"),
    ("not 1", "unary operator Not is not supported"),
    ("1 < 2", "Compare is not allowed"),
    ("sqrt(x=4)", "keyword arguments"),
    ("9 ** 9 ** 9", "power too large"),
    ("10 ** 100000", "power too large"),
    ("2.0 ** 1e9", "exponent"),
    ("factorial(100000)", "too large"),
    ("factorial(-1)", "non-negative integer"),
    ("(10 ** 1000) * (10 ** 1000)", "too large"),
    ("10 ** 1000 / 3", "overflow"),
    ("1e308 * 10", "not finite"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "zero cannot be raised"),
    ("(-8) ** (1 / 3)", "complex"),
    ("sqrt(-1)", "sqrt: math domain error"),
    ("1 +", "syntax error"),
    ("", "empty expression"),
    ("1" + "+1" * 300, "too long"),
    ("-" * 250 + "1", "too complex"),
    ("(" * 240 + "1" + ")" * 240, "too many nested parentheses"),
    ("1\x00", "null bytes"),
])
def test_calculator_rejects_with_clear_error(expr: str, why: str) -> None:
    start = time.monotonic()
    res = get_tool("calculator")(expression=expr)
    assert time.monotonic() - start < 0.5, "refusal must be instant"
    assert res.is_error and res.text.startswith("calculator error: ") and why in res.text, res.text


def test_calculator_source_never_evals() -> None:
    tree = ast.parse((REPO / "tools/calculator.py").read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


def test_calculator_int_size_limit_is_exact() -> None:
    assert evaluate(f"2 ** {MAX_INT_BITS - 1}") == 2 ** (MAX_INT_BITS - 1)
    with pytest.raises(CalcError):
        evaluate(f"2 ** {MAX_INT_BITS + 1}")


# -------------------------------------------------------------------------------------- search


def _reference_bm25(docs: list[list[str]], query: list[str], k1=1.5, b=0.75, eps=0.25) -> list[float]:
    """BM25 Okapi written out from its definition (rank_bm25's variant: negative idf floored at eps*mean idf)."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    idf = {t: math.log(n - c + 0.5) - math.log(c + 0.5) for t, c in df.items()}
    floor = eps * (sum(idf.values()) / len(idf))
    idf = {t: (v if v >= 0 else floor) for t, v in idf.items()}
    scores = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for q in query:
            f = tf.get(q, 0)
            s += idf.get(q, 0.0) * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return scores


def test_bm25_scores_match_reference() -> None:
    tool = SearchTool()
    docs = [tokenize(f"{d.title} {d.text}") for d in tool.docs]
    for query in ["capital city of Australia", "highest mountain on Earth", "speed of light in vacuum metres",
                  "river Africa Nile longest", "chess board squares"]:
        got = tool.scores(query)
        ref = _reference_bm25(docs, tokenize(query))
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12), query


@pytest.mark.parametrize("query, top_title", [
    ("What is the capital of Australia?", "Canberra"),
    ("How tall is the Eiffel Tower?", "Eiffel Tower"),
    ("second highest mountain", "K2"),
    ("how many bones in the adult human skeleton", "Human skeleton"),
    ("who created the Python programming language", "Python (programming language)"),
])
def test_search_default_corpus(query: str, top_title: str) -> None:
    res = get_tool("search")(query=query, k=2)
    assert not res.is_error
    first = res.text.splitlines()[0]
    assert first.startswith(f"[1] {top_title}: ")
    assert res.text.count("\n") <= 1


def test_search_custom_corpus_list_and_jsonl(tmp_path: Path) -> None:
    docs = ["the cat sat on the mat", "dogs chase cats", {"id": "q", "title": "Quantum", "text": "qubits entangle"}]
    tool = get_tool("search", corpus=docs, k=1)
    assert tool(query="qubits").text == "[1] Quantum: qubits entangle"
    assert tool(query="mat").text == "[1] the cat sat on the mat"
    assert tool(query="zebra").text == "no results for 'zebra'"
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "title": f"T{i}", "text": t}) for i, t in
                              enumerate(["alpha beta", "beta gamma", "gamma delta"])) + "\n\n")
    tool = get_tool("search", corpus=str(path))
    assert [d.id for d in tool.docs] == ["0", "1", "2"]
    assert tool(query="delta").text == "[1] T2: gamma delta"
    assert tool(query="beta gamma", k=3).text.splitlines()[0] == "[1] T1: beta gamma"


def test_search_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        load_corpus(bad)
    with pytest.raises(ValueError, match="document 0 has no string 'text' field"):
        load_corpus([{"title": "x"}])
    with pytest.raises(ValueError, match="empty"):
        load_corpus([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="k must be in"):
        SearchTool(k=0)
    tool = get_tool("search")
    assert tool(query="the of and").is_error  # only stop words
    res = tool(query="x", k=11)
    assert res.is_error and "maximum" in res.text


# ----------------------------------------------------------------------------------- bar_chart


def test_bar_chart_returns_an_image_with_proportional_bars() -> None:
    res = get_tool("bar_chart")(values=[1, 3], labels=["a", "b"], title="t")
    assert not res.is_error and res.text == "bar chart (2 bars: a=1, b=3)"
    (img,) = res.images
    assert img.size == (320, 200)
    px = img.load()

    def bar_height(x: int) -> int:
        return sum(1 for y in range(img.size[1]) if px[x, y] == (66, 110, 200))

    left, right = bar_height(24 + 68), bar_height(24 + 68 + 136)
    assert left > 0 and right == pytest.approx(3 * left, rel=0.05)


def test_bar_chart_errors() -> None:
    tool = get_tool("bar_chart")
    assert tool(values=[]).is_error
    assert tool(values=[-1]).is_error
    assert "2 labels for 1 values" in tool(values=[1], labels=["a", "b"]).text
    assert "not of type number" in tool(values=["x"]).text
