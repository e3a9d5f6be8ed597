"""Make env-produced text safe to hand to a tokenizer: valid Unicode, and no longer than a bound.

Model text reaches env replies verbatim (an unknown tool name, an echoed query, a parser message).
A lone surrogate (``"\\ud800"``, which JSON's ``\\u`` escapes can produce) is a valid Python ``str`` but
cannot be encoded as UTF-8, so a tokenizer raises on it; and an echoed 10 MB argument would make an
observation as large as the model's text. Every env message goes through these two functions.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (surrogate pairs joined); unchanged if valid."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    # UTF-16 with surrogatepass joins pairs written as two code points; decoding with "replace" turns
    # each unpaired half into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def cap_text(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters; a cut text ends with a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    marker = f"\n...[cut {len(text)} -> {max_chars} characters]"
    if max_chars <= len(marker):
        return text[:max_chars]
    return text[: max_chars - len(marker)] + marker


def bounded_text(text: str, max_chars: int) -> str:
    """`valid_text` then `cap_text`: what every env reply carries."""
    return cap_text(valid_text(text), max_chars)


def safe_repr(value: object, max_chars: int = 80) -> str:
    """``repr(value)`` cut to ``max_chars``, never raising (huge ints and deep nesting make repr fail)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"<{type(value).__name__}: {type(exc).__name__}>"
    return valid_text(text if len(text) <= max_chars else text[: max_chars - 3] + "...")
