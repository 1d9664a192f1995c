"""CEL (Common Expression Language) for policy rules and test cases (CONTRACT.md §6).

Backed by ``common-expression-language`` (the ``cel`` module: Python bindings of the Rust
``cel-interpreter``). It was chosen over ``cel-python`` (``celpy``) because it reports syntax
errors with line, column and what was expected, rejects pathologically nested input at parse
time instead of overflowing Python's stack, follows CEL's numeric equality (``1 == 1.0``,
``true != 1``), returns plain Python values and evaluates several times faster.

Expressions see these variables (what the callers in ``app.policies.service`` and
``app.testsuites.runner`` bind):

- ``asset``: the asset document exactly as the API returns it (JSON types only).
- ``artifact``: the scan facts (``{format, dtypes, tensor_count, ...}``), or ``null`` when the asset
  has none (metadata-only, or not scanned yet). It is deliberately not faked as an empty map: a
  rule about artifacts on an asset without one then fails loudly instead of passing on
  defaults; a rule that should pass for such assets says so:
  ``artifact == null || artifact.format != "pickle"``.
- ``response`` (test cases only): ``{status: int, json: any|null, text: string}``.

Expressions are not type-checked at compile time (the library has no checker), so a misspelt
variable or field compiles and fails when evaluated; callers count that as a failed rule or case.
Integers beyond 64 bits in the activation become doubles.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE = 500
_ERROR_LINE = re.compile(r"^ERROR: <input>:(\d+):(\d+): (?:Syntax error: )?(.*)$", re.MULTILINE)


class CelError(Exception):
    """A CEL expression could not be compiled or evaluated; ``message`` says why, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CelCompileError(CelError):
    """The expression is not valid CEL."""


class CelEvalError(CelError):
    """The expression failed at run time: a missing key, a type mismatch, an overflow, ...; or,
    from :func:`evaluate_condition`, it did not produce a bool."""


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A compiled expression; immutable and safe to share between threads."""

    text: str
    variables: frozenset[str]
    compiled: Any = dataclasses.field(repr=False)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _compile_message(text: str, raw: str) -> str:
    prefix = f"Failed to parse expression '{text}': "
    body = raw.removeprefix(prefix)
    found = [
        f"syntax error at line {line}, column {column}: {what.strip()}"
        for line, column, what in _ERROR_LINE.findall(body)
    ]
    return _shorten("; ".join(found) if found else body.split("\n", 1)[0] or "invalid expression")


@functools.lru_cache(maxsize=2048)
def compile_expression(text: str) -> Program:
    """Compile ``text`` once (cached by text, so rules evaluated for every asset compile once).

    Raises :class:`CelCompileError` with a one-line message naming line and column.
    """
    # Imported here: the package imports its command-line tool (typer, rich) with it, which
    # costs every process ~0.3 s at start-up even when it never evaluates an expression.
    import cel

    try:
        compiled = cel.compile(text)
        variables = frozenset(compiled.variables())
    except Exception as exc:
        raise CelCompileError(_compile_message(text, str(exc))) from None
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        raise CelCompileError(_shorten(f"invalid expression ({exc})")) from None
    return Program(text=text, variables=variables, compiled=compiled)


def _eval_message(program: Program, activation: Mapping[str, Any], exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        message = f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    else:
        # The library appends advice ("CEL does not coerce between types, so ..."); the first
        # sentence is the diagnosis.
        message = str(exc).split("\n", 1)[0].split(". ", 1)[0].rstrip(".")
        message = message or type(exc).__name__
    nulls = sorted(
        name for name in program.variables if name in activation and activation[name] is None
    )
    if nulls:
        message += f" ({', '.join(nulls)} {'is' if len(nulls) == 1 else 'are'} null)"
    return _shorten(message)


def evaluate(program: Program, activation: Mapping[str, Any]) -> Any:
    """Evaluate ``program`` with ``activation`` (variable name -> JSON-like value).

    Returns a plain Python value (bool, int, float, str, list, dict, None; bytes, datetime or
    timedelta when the expression builds one). Every failure, including a value the library
    cannot convert, raises :class:`CelEvalError` and nothing else.
    """
    try:
        return program.compiled.execute(dict(activation))
    except Exception as exc:
        raise CelEvalError(_eval_message(program, activation, exc)) from None
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        raise CelEvalError(_eval_message(program, activation, exc)) from None


def evaluate_condition(program: Program, activation: Mapping[str, Any]) -> bool:
    """:func:`evaluate` a rule or test expectation that must yield a bool; any other result
    raises :class:`CelEvalError` saying what it was."""
    result = evaluate(program, activation)
    if not isinstance(result, bool):
        shown = repr(result)
        if len(shown) > 80:
            shown = shown[:79] + "…"
        raise CelEvalError(f"expression returned {type(result).__name__} {shown}, not a bool")
    return result
