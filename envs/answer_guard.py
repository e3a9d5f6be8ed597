"""Refuse, before any scorer sees it, an answer that a scorer would evaluate as code and that is not plain math.

Defence in depth: every third-party scorer already runs contained (`envs.scoring_sandbox`); these rules keep
the text that reaches an ``eval`` inside the grammar legitimate answers use. Each check is linear in the
(already size-capped) answer and runs in the trainer, so it never evaluates anything itself.

Rules, by what the scorer does with the answer:

- **Expression datasets** (reasoning-gym scorers that call ``sympy.parse_expr``, i.e. ``eval``): the answer
  must tokenise into numbers (``12``, ``1.5``), the grammar's operators, and names. ``arithmetic``
  (countdown, puzzle24): ``+ - * /`` and parentheses, no names. ``sympy`` (polynomial_multiplication,
  simple/intermediate_integration): also ``**``, ``^``, commas, single-letter variables, the math functions
  in `MATH_FUNCTIONS`, and names that occur in the task's own reference answer. Anything else is refused:
  quotes, underscores, dots outside numbers (so no attribute access), brackets, ``;``, ``=``, ``!``,
  backslashes, keywords (``lambda``, ``import``), other names (``eval``, ``open``, ``os``...).
- **Literal datasets** (scorers that ``eval`` the answer to read a Python list for partial credit:
  string_insertion, spiral_matrix, binary_matrix, n_queens): the answer must be the reference answer
  itself (the scorer compares that before any ``eval``) or a pure Python literal (lists, tuples, strings,
  numbers, signs), checked on the syntax tree without evaluating it.
- **math-verify** answers and the expression/literal datasets also pass `CODE_SHAPES` first: dunders,
  calls of ``eval``/``exec``/``open``/``getattr``..., ``import``, a Python ``lambda`` (``\\lambda`` is fine),
  and attribute access on ``os``/``sys``/``subprocess``/... .

``composite`` entries follow the rules of the dataset they come from (``metadata.source_dataset``).
Other reasoning-gym datasets do not evaluate the answer (reasoning-gym 0.1.25; ``tests/test_scoring_injection.py``
checks every dataset's scorer source against these tables) and get no content rule: their answers are
free text. A refused answer scores 0 with the rule in ``why``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpressionGrammar:
    """What an answer handed to ``parse_expr`` may contain."""

    name: str
    operators: frozenset[str]
    letters: bool = False  # single ASCII letters (variables)
    functions: frozenset[str] = frozenset()  # other names allowed
    reference_names: bool = False  # names that occur in the task's reference answer are allowed too


MATH_FUNCTIONS = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh", "cosh", "tanh",
    "asinh", "acosh", "atanh", "exp", "log", "ln", "sqrt", "Abs", "pi", "oo",
})
ARITHMETIC = ExpressionGrammar("arithmetic", frozenset({"+", "-", "*", "/", "(", ")"}))
SYMPY = ExpressionGrammar("sympy", frozenset({"+", "-", "*", "/", "**", "^", "(", ")", ","}), letters=True,
                          functions=MATH_FUNCTIONS, reference_names=True)

EXPRESSION_DATASETS: dict[str, ExpressionGrammar] = {
    "countdown": ARITHMETIC,
    "puzzle24": ARITHMETIC,
    "polynomial_multiplication": SYMPY,
    "simple_integration": SYMPY,
    "intermediate_integration": SYMPY,
}
LITERAL_DATASETS = frozenset({"string_insertion", "spiral_matrix", "binary_matrix", "n_queens"})

CODE_SHAPES = re.compile(
    r"__"
    r"|\b(?:eval|exec|compile|open|getattr|setattr|delattr|globals|locals|vars|breakpoint)\s*\("
    r"|\bimport\b"
    r"|(?<!\\)\blambda\b"
    r"|\b(?:os|sys|subprocess|shutil|socket|builtins|importlib|ctypes|pty|pickle|marshal)\s*\."
)
_TOKEN = re.compile(r"\s+|(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z][A-Za-z0-9]*)|(?P<op>\*\*|//|[-+*/^(),])")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_LITERAL_NODES = (ast.Expression, ast.List, ast.Tuple, ast.Constant, ast.UnaryOp, ast.USub, ast.UAdd, ast.Load)


def code_shape(text: str) -> str | None:
    """Why ``text`` looks like code (the first offending piece), or None."""
    m = CODE_SHAPES.search(text)
    return None if m is None else f"it contains {m.group(0).strip()!r}, which is code, not an answer"


def check_expression(text: str, grammar: ExpressionGrammar, reference: str = "") -> str | None:
    """Why ``text`` is outside ``grammar`` (the first offending token), or None."""
    allowed_names = set(grammar.functions)
    if grammar.reference_names:
        allowed_names |= set(_NAME.findall(reference))
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return f"{text[pos]!r} at position {pos} is not allowed in a {grammar.name} answer"
        if m.group("op") is not None and m.group("op") not in grammar.operators:
            return f"the operator {m.group('op')!r} is not allowed in a {grammar.name} answer"
        name = m.group("name")
        if name is not None and name not in allowed_names and not (grammar.letters and len(name) == 1):
            return f"the name {name!r} is not allowed in a {grammar.name} answer"
        pos = m.end()
    return None


def check_literal(text: str) -> str | None:
    """Why ``text`` is not a pure Python literal (lists, tuples, strings, numbers), or None."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return f"it is not a Python literal ({type(exc).__name__})"
    for node in ast.walk(tree):
        if not isinstance(node, _LITERAL_NODES):
            return f"it is not a Python literal (it has a {type(node).__name__})"
        if isinstance(node, ast.UnaryOp) and not (isinstance(node.operand, ast.Constant)
                                                   and type(node.operand.value) in (int, float)):
            return "it is not a Python literal (a sign on a non-number)"
        if isinstance(node, ast.Constant) and type(node.value) not in (str, int, float, bool):
            return f"it is not a plain literal ({type(node.value).__name__})"
    return None


def _reference_forms(entry: Mapping[str, Any]) -> set[str]:
    """The answers a literal dataset's scorer accepts by comparison, before any ``eval``."""
    forms = {entry.get("answer")}
    metadata = entry.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("valid_answers"), list):
        forms |= set(metadata["valid_answers"])
    return {f for f in forms if isinstance(f, str)}


def scoring_dataset(dataset: str, entry: Mapping[str, Any]) -> str:
    """The dataset whose scorer sees the answer: ``composite`` forwards to the entry's ``source_dataset``."""
    metadata = entry.get("metadata")
    if dataset == "composite" and isinstance(metadata, Mapping) and isinstance(metadata.get("source_dataset"), str):
        return metadata["source_dataset"]
    return dataset


def check_reasoning_gym(answer: str, dataset: str, entry: Mapping[str, Any]) -> str | None:
    """Why ``answer`` must not reach ``dataset``'s scorer, or None (see the module docstring)."""
    dataset = scoring_dataset(dataset, entry)
    grammar = EXPRESSION_DATASETS.get(dataset)
    if grammar is not None:
        reference = entry.get("answer")
        return code_shape(answer) or check_expression(answer, grammar, reference if isinstance(reference, str) else "")
    if dataset in LITERAL_DATASETS:
        if answer.strip() in _reference_forms(entry):
            return None
        return code_shape(answer) or check_literal(answer)
    return None


def check_math(answer: str) -> str | None:
    """Why ``answer`` must not reach math-verify, or None."""
    return code_shape(answer)
