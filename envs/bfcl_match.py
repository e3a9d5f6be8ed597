"""BFCL's AST matching rules (Berkeley Function Calling Leaderboard), written for our parsed calls.

The leaderboard checks a model's calls against ``possible_answer`` entries ``{fn: {arg: [allowed values]}}``
("AST" categories). The rules, as BFCL documents and applies them to Python functions:

- the function name must be the expected one (exactly);
- every ``required`` parameter of the function doc is present; no parameter outside the doc or the
  ground truth; a ground-truth parameter that is left out must list ``""`` (= optional) among its values;
- types follow the doc (``integer``, ``float``, ``string``, ``boolean``, ``array``/``tuple`` -> list,
  ``dict``, ``any`` -> string), exactly (a boolean is not an integer); an integer is accepted for a
  ``float``; a value of the ground truth's own type is accepted when that differs from the doc's (BFCL's
  "variable" case); array items are type-checked one level deep (an int item where floats are
  expected fails: the int -> float allowance is for a parameter itself);
- strings compare after standardisation (lower case; spaces and ``,./-_*^`` removed; ``'`` -> ``"``), also
  inside lists and dicts; lists compare element-wise in order; dicts key by key (each value among that
  key's allowed values, optional keys may be missing); lists of dicts dict by dict; anything else by
  equality (so ``5.0`` equals ``5``);
- categories: ``simple``/``live_simple`` exactly one call; ``multiple`` exactly one call, of the expected
  function among several offered; ``parallel*`` the same number of calls as the ground truth, matched in
  any order; ``irrelevance``/``live_irrelevance`` no call at all; ``live_relevance`` at least one call
  (that category has no ground truth).

One deliberate difference from BFCL's reference code: its parallel checker assigns calls greedily (the
first unmatched call that fits each ground-truth entry), which can reject a set of calls that does match
under some other assignment. Here parallel matching searches all assignments (a bipartite matching), so
it is exactly "matched in any order". Only the Python categories are supported (Java/JavaScript need
BFCL's string-to-type converters; multi-turn needs its API state machines).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envs.tool_parsing import ToolCall

PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
NESTED_TYPES = ("array", "tuple")
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")
SOME_CALL_CATEGORIES = ("live_relevance",)
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")

GroundTruthCall = Mapping[str, Mapping[str, Sequence[Any]]]  # {fn_name: {param: [allowed values]}}


@dataclass(frozen=True)
class Match:
    """The verdict on one model output: ``error_type`` is BFCL-style (``simple:wrong_func_name``, ...)."""

    valid: bool
    error: str = ""
    error_type: str = ""


OK = Match(True)


def _digits(value: int) -> int:
    """Decimal digits of ``value`` without converting it to text (past 4300 digits that raises)."""
    return max(1, int(abs(value).bit_length() * 0.30103) + 1)


def _fail(error_type: str, error: str) -> Match:
    return Match(False, error, error_type)


def standardize_string(s: str) -> str:
    """BFCL's string normalisation, so "April 1, 2024" and "april 1 2024" compare equal."""
    return _STANDARDIZE.sub("", s).lower().replace("'", '"')


def _std(v: Any) -> Any:
    return standardize_string(v) if isinstance(v, str) else v


def _allowed_type(allowed: Sequence[Any]) -> type | None:
    """Type of the first non-optional allowed value (None when all are ``""``)."""
    for a in allowed:
        if a != "":
            return type(a)
    return None


def _type_check(param: str, value: Any, allowed: Sequence[Any], type_name: str, expected: type,
                nested: type | None) -> tuple[Match, bool]:
    """(verdict, is_variable): the value has the doc's type (items too, one level deep), or the ground
    truth's own type when that differs from the doc's (then values are compared as given)."""
    gt_type = _allowed_type(allowed)
    is_variable = gt_type is not None and gt_type is not expected
    if type(value) is expected:
        if nested is None:
            return OK, is_variable
        for option in allowed:
            items_ok = True
            if isinstance(option, list):
                items_ok = all(_type_check(param, item, option, nested.__name__, nested, None)[0].valid for item in value)
            if items_ok:
                return OK, is_variable
        return _fail("type_error:nested", f"parameter {param!r}: items of {value!r} are not all {nested.__name__}"), False
    if gt_type is not None and type(value) is gt_type:
        return OK, True
    return _fail("type_error", f"parameter {param!r}: expected type {type_name}, got {type(value).__name__} ({value!r})"), False


def _check_string(param: str, value: str, allowed: Sequence[Any]) -> Match:
    if standardize_string(value) in [standardize_string(a) for a in allowed if isinstance(a, str)]:
        return OK
    return _fail("value_error:string", f"parameter {param!r}: {value!r} is not one of {list(allowed)} (case-insensitive)")


def _check_list(param: str, value: list, allowed: Sequence[Any]) -> Match:
    got = [_std(v) for v in value]
    options = [[_std(v) for v in option] for option in allowed]  # an optional "" becomes [], like BFCL
    if got in options:
        return OK
    return _fail("value_error:list", f"parameter {param!r}: {value!r} is not one of {list(allowed)}")


def _dict_matches(value: Mapping[str, Any], option: Mapping[str, Sequence[Any]]) -> str | None:
    """None when ``value`` fits the allowed dict ``option``, else why not."""
    for key, v in value.items():
        if key not in option:
            return f"unexpected dict key {key!r}"
        if _std(v) not in [_std(a) for a in option[key]]:
            return f"dict key {key!r}: {v!r} is not one of {list(option[key])}"
    for key, allowed in option.items():
        if key not in value and "" not in allowed:
            return f"missing dict key {key!r}"
    return None


def _check_dict(param: str, value: dict, allowed: Sequence[Any]) -> Match:
    why = "no allowed value"
    for option in allowed:
        if option == "":
            continue
        why = _dict_matches(value, option) or ""
        if not why:
            return OK
    return _fail("value_error:dict", f"parameter {param!r}: {why}")


def _check_list_of_dicts(param: str, value: list, allowed: Sequence[Any]) -> Match:
    why = "no allowed value"
    for option in allowed:
        if len(value) != len(option):
            why = f"{len(value)} dicts, expected {len(option)}"
            continue
        problems = [_dict_matches(v, o) if isinstance(v, Mapping) else f"item {v!r} is not a dict" for v, o in zip(value, option)]
        why = next((p for p in problems if p), "")
        if not why:
            return OK
    return _fail("value_error:list_dict", f"parameter {param!r}: {why}")


def check_call(function: Mapping[str, Any], call: ToolCall, expected: GroundTruthCall) -> Match:
    """One call against one ground-truth entry ``{fn: {param: [allowed]}}`` and that function's doc."""
    (name, params_gt), = expected.items()
    if call.name != name:
        return _fail("simple:wrong_func_name", f"called {call.name!r}, expected {name!r}")
    schema = function.get("parameters") or {}
    props: Mapping[str, Any] = schema.get("properties") or {}
    for param in schema.get("required") or []:
        if param not in call.arguments:
            return _fail("simple:missing_required", f"missing required parameter {param!r}")
    for param, value in call.arguments.items():
        if param not in props or param not in params_gt:
            return _fail("simple:unexpected_param", f"unexpected parameter {param!r}")
        allowed = params_gt[param]
        type_name = props[param].get("type", "any")
        expected_type = PY_TYPES.get(type_name)
        if expected_type is None:
            return _fail("type_error:unsupported", f"parameter {param!r}: unsupported type {type_name!r} in the function doc")
        nested = None
        if type_name in NESTED_TYPES and "items" in props[param]:
            nested = PY_TYPES.get(props[param]["items"].get("type", "any"))
        if type_name == "float" and type(value) is int:
            try:
                value = float(value)  # Python would convert an int argument; BFCL accepts it
            except OverflowError:  # past ~1.8e308: a clear verdict here, not a crash of the episode
                return _fail("type_error", f"parameter {param!r}: an integer of about {_digits(value)} digits is "
                                           "too large for a float")
        verdict, is_variable = _type_check(param, value, allowed, type_name, expected_type, nested)
        if not verdict.valid:
            return verdict
        if not is_variable:
            if expected_type is dict:
                verdict = _check_dict(param, value, allowed)
            elif expected_type is list and nested is dict:
                verdict = _check_list_of_dicts(param, value, allowed)
            elif expected_type is str:
                verdict = _check_string(param, value, allowed)
            elif expected_type is list:
                verdict = _check_list(param, value, allowed)
            elif value not in allowed:
                verdict = _fail("value_error:other", f"parameter {param!r}: {value!r} is not one of {list(allowed)}")
            if not verdict.valid:
                return verdict
        elif value not in allowed:
            return _fail("value_error:other", f"parameter {param!r}: {value!r} is not one of {list(allowed)}")
    for param, allowed in params_gt.items():
        if param not in call.arguments and "" not in allowed:
            return _fail("simple:missing_optional", f"parameter {param!r} left out but not optional (allowed: {list(allowed)})")
    return OK


def _function_doc(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((f for f in functions if f.get("name") == name), None)


def _check_against(functions: Sequence[Mapping[str, Any]], call: ToolCall, expected: GroundTruthCall) -> Match:
    name = next(iter(expected))
    doc = _function_doc(functions, name)
    if doc is None:
        raise ValueError(f"ground truth names {name!r}, which is not among the offered functions")
    return check_call(doc, call, expected)


def _match_unordered(functions: Sequence[Mapping[str, Any]], calls: Sequence[ToolCall],
                     ground_truth: Sequence[GroundTruthCall]) -> Match:
    """Every ground-truth entry matched to a distinct call (any order): augmenting-path bipartite matching."""
    fits = [[_check_against(functions, c, gt).valid for c in calls] for gt in ground_truth]
    owner: list[int | None] = [None] * len(calls)  # call index -> ground-truth index

    def assign(g: int, seen: set[int]) -> bool:
        for c, ok in enumerate(fits[g]):
            if ok and c not in seen:
                seen.add(c)
                if owner[c] is None or assign(owner[c], seen):  # type: ignore[arg-type]
                    owner[c] = g
                    return True
        return False

    for g, gt in enumerate(ground_truth):
        if not assign(g, set()):
            name = next(iter(gt))
            # the reason shown is why the closest same-name call fails (or that none has the name)
            same = [c for c in calls if c.name == name]
            detail = _check_against(functions, same[0], gt).error if same else f"no call to {name!r}"
            return _fail("parallel:cannot_find_match", f"no call matches ground-truth entry {g + 1} ({name}): {detail}")
    return OK


def match_calls(category: str, functions: Sequence[Mapping[str, Any]], calls: Sequence[ToolCall],
                ground_truth: Sequence[GroundTruthCall] | None) -> Match:
    """Score a model's calls for one BFCL entry of ``category`` (see the module docstring for the rules)."""
    if category in NO_CALL_CATEGORIES:
        return OK if not calls else _fail("irrelevance:called", f"{len(calls)} call(s) made, none expected")
    if category in SOME_CALL_CATEGORIES:
        return OK if calls else _fail("relevance:no_call", "no call made, one expected")
    if ground_truth is None:
        raise ValueError(f"category {category!r} needs a ground truth")
    if "parallel" in category:
        if len(calls) != len(ground_truth):
            return _fail("parallel:wrong_count", f"{len(calls)} call(s), expected {len(ground_truth)}")
        return _match_unordered(functions, calls, ground_truth)
    if len(calls) != 1 or len(ground_truth) != 1:
        return _fail("simple:wrong_count", f"{len(calls)} call(s), expected 1")
    return _check_against(functions, calls[0], ground_truth[0])


_OMIT = object()  # "leave the parameter out" (None is a real allowed value in a few entries)


def calls_from_ground_truth(ground_truth: Sequence[GroundTruthCall], functions: Sequence[Mapping[str, Any]]) -> list[ToolCall]:
    """The calls a perfect model would make: for each parameter the doc defines, its first allowed value
    (left out when only ``""``, i.e. omission, is allowed); parameters the doc lacks are left out.

    Used by the tests to check that the matcher accepts every answer of the shipped files.
    """
    calls = []
    for entry in ground_truth:
        (name, params), = entry.items()
        doc = _function_doc(functions, name) or {}
        props = (doc.get("parameters") or {}).get("properties") or {}
        args = {}
        for param, allowed in params.items():
            first = next((a for a in allowed if a != ""), _OMIT)
            if first is not _OMIT and param in props:
                args[param] = _first_choice(first)
        calls.append(ToolCall(name=name, arguments=args))
    return calls


def _first_choice(value: Any) -> Any:
    """Inside a dict answer each key again lists allowed values: take the first non-optional one."""
    if isinstance(value, dict):
        out = {}
        for k, allowed in value.items():
            first = next((a for a in allowed if a != ""), _OMIT) if isinstance(allowed, list) else allowed
            if first is not _OMIT:
                out[k] = _first_choice(first)
        return out
    if isinstance(value, list):
        return [_first_choice(v) if isinstance(v, dict) else v for v in value]
    return value
