"""`calculator`: safe arithmetic on a parsed AST (never `eval`), with limits on size and magnitude.

Only numeric literals, + - * / // % **, unary +/-, parentheses, the constants pi/e/tau and a short list
of math functions are accepted; anything else (names, attributes, calls to other functions, strings,
comprehensions) is rejected with a message naming the construct. Powers, products and factorials are
checked *before* they are computed, so ``9**9**9`` is refused instantly instead of hanging.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

from tools.base import ToolResult, register_tool

MAX_EXPR_CHARS = 500
MAX_NODES = 200
MAX_INT_BITS = 4096  # ~1233 decimal digits
MAX_FACTORIAL = 400
MAX_ROUND_DIGITS = 400


class CalcError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


def _check_int(x: Any) -> Any:
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise CalcError(f"result too large (more than {MAX_INT_BITS} bits)")
    return x


def _pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b * math.log2(abs(a)) > MAX_INT_BITS:
            raise CalcError(f"power too large: the result would have more than {MAX_INT_BITS} bits")
    if isinstance(b, (int, float)) and abs(b) > 1e6 and not (isinstance(a, (int, float)) and abs(a) in (0, 1)):
        raise CalcError(f"exponent {b} is too large")
    try:
        out = a**b
    except ZeroDivisionError:
        raise CalcError("zero cannot be raised to a negative power") from None
    if isinstance(out, complex):
        raise CalcError("result is a complex number (negative base with a fractional exponent)")
    return out


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise CalcError(f"result too large (more than {MAX_INT_BITS} bits)")
    return a * b


def _div(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def f(a: Any, b: Any) -> Any:
        if b == 0:
            raise CalcError("division by zero")
        return op(a, b)

    return f


def _round(x: Any, ndigits: Any = None) -> Any:
    # int.__round__(-n) computes 10**n first: round(5, -10**9) would hold the GIL for hours.
    if ndigits is not None:
        if not isinstance(ndigits, int) or isinstance(ndigits, bool):
            raise CalcError(f"round: the number of digits must be an integer, got {ndigits!r}")
        if abs(ndigits) > MAX_ROUND_DIGITS:
            raise CalcError(f"round: the number of digits must be within +-{MAX_ROUND_DIGITS}, got {ndigits}")
    return round(x, ndigits) if ndigits is not None else round(x)


def _factorial(n: Any) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalcError(f"factorial needs a non-negative integer, got {n!r}")
    if n > MAX_FACTORIAL:
        raise CalcError(f"factorial argument {n} is too large (max {MAX_FACTORIAL})")
    return math.factorial(n)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: _div(operator.truediv),
    ast.FloorDiv: _div(operator.floordiv),
    ast.Mod: _div(operator.mod),
    ast.Pow: _pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "abs": abs, "round": _round, "floor": math.floor, "ceil": math.ceil,
    "factorial": _factorial, "min": min, "max": max, "gcd": math.gcd,
}
_CONSTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_HINTS = {ast.BitXor: " (use ** for powers)", ast.BitAnd: "", ast.BitOr: "", ast.LShift: "", ast.RShift: ""}


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalcError(f"only numbers are allowed, not {node.value!r}")
        return _check_int(node.value)
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise CalcError(f"operator {type(node.op).__name__} is not supported{_HINTS.get(type(node.op), '')}")
        return _check_int(op(_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp):
        uop = _UNARY.get(type(node.op))
        if uop is None:
            raise CalcError(f"unary operator {type(node.op).__name__} is not supported")
        return uop(_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        raise CalcError(f"unknown name {node.id!r} (constants: {', '.join(_CONSTS)})")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise CalcError(f"function {name!r} is not allowed (allowed: {', '.join(sorted(_FUNCS))})")
        if node.keywords:
            raise CalcError("keyword arguments are not supported")
        args = [_eval(a) for a in node.args]
        try:
            return _check_int(_FUNCS[node.func.id](*args))
        except CalcError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise CalcError(f"{node.func.id}: {exc}") from None
    raise CalcError(f"{type(node).__name__} is not allowed in a calculator expression")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely; raise CalcError saying what is wrong."""
    expr = expression.strip()
    if not expr:
        raise CalcError("empty expression")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalcError(f"expression too long ({len(expr)} > {MAX_EXPR_CHARS} characters)")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise CalcError(f"syntax error{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise CalcError(f"cannot parse the expression: {type(exc).__name__}") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise CalcError(f"expression too complex ({n_nodes} > {MAX_NODES} syntax nodes)")
    try:
        out = _eval(tree)
    except CalcError:
        raise
    except OverflowError:
        raise CalcError("numeric overflow (result too large for a float)") from None
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise CalcError(f"cannot evaluate: {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise CalcError(f"result is not finite ({out})")
    return out


def format_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


@register_tool("calculator")
def calculator(expression: str) -> ToolResult:
    """Evaluate an arithmetic expression exactly (integers) or in floating point.

    Supports + - * / // % ** (power), parentheses, unary minus, the constants pi, e, tau and the
    functions sqrt, exp, log, log2, log10, sin, cos, tan, asin, acos, atan, abs, round, floor, ceil,
    factorial, min, max, gcd.

    Args:
        expression: the expression, e.g. "(3 + 4) * 2 ** 10 / 7".
    """
    try:
        return ToolResult(text=format_number(evaluate(expression)))
    except CalcError as exc:
        return ToolResult.error(f"calculator error: {exc}")
