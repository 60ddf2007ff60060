"""Strict numbers in suites and plugin parameters, checked after pydantic has validated them.

Pydantic reads ``true`` as 1 wherever a number is expected (``lr: true``, ``epochs: true``,
``sweep: {alpha: [true, 0.1]}``), and a plugin's ``seed: int`` takes 2^64, which numpy and torch
refuse only when the run is under way. :func:`number_problem` walks a validated model next to the
mapping it was validated from and finds, wherever a field holds a number:

- a boolean the user wrote (a field that wants a boolean, or anything, keeps it);
- a seed (a field named ``seed`` or ``*_seed``) outside 0..:data:`SEED_MAX`, like the suite's own seeds;
- an integer beyond 64 bits (no tensor, array or C library takes it).

This holds for every model a suite is validated into: the suite's own sections and every plugin's
``Params``, built-in or third-party, without each declaring it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from inversion_bench.config_messages import shorten
from inversion_bench.errors import ConfigError
from inversion_bench.suite_schema import SEED_MAX

INT64_MAX = 2**63 - 1
_ABSENT = object()


def _is_seed(name: Any) -> bool:
    return isinstance(name, str) and (name == "seed" or name.endswith("_seed"))


def _problem(value: Any, given: Any, name: Any) -> str | None:
    """What is wrong with one validated ``value`` read from ``given`` (field ``name``), or None."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and isinstance(given, bool):
        kind = "an integer" if isinstance(value, int) else "a number"
        return (f"{str(given).lower()} is a boolean, but {kind} is expected here; write the number itself "
                "(true and false are not numbers here)")
    if not number or not isinstance(value, int):
        return None
    if _is_seed(name) and not 0 <= value <= SEED_MAX:
        bound = ">= 0" if value < 0 else f"<= {SEED_MAX}"
        return f"must be {bound}, got {shorten(value, 30)} (seeds are 32-bit: 0..{SEED_MAX}, as numpy's and CUDA's)"
    if abs(value) > INT64_MAX:
        return f"must fit a 64-bit integer (at most {INT64_MAX} in size), got {shorten(value, 30)}"
    return None


def _walk(value: Any, given: Any, loc: tuple[Any, ...], name: Any) -> tuple[tuple[Any, ...], str] | None:
    problem = _problem(value, given, name)
    if problem is not None:
        return loc, problem
    if isinstance(value, BaseModel):
        return number_problem(value, given, loc)
    if isinstance(value, list | tuple):
        givens = list(given) if isinstance(given, list | tuple) and len(given) == len(value) else [_ABSENT] * len(value)
        pairs: Any = ((i, v, g, name) for i, (v, g) in enumerate(zip(value, givens, strict=True)))
    elif isinstance(value, dict):
        source = given if isinstance(given, dict) else {}
        pairs = ((k, v, source.get(k, _ABSENT), k) for k, v in value.items())
    else:
        return None
    for key, v, g, n in pairs:
        found = _walk(v, g, (*loc, key), n)
        if found is not None:
            return found
    return None


def number_problem(model: BaseModel, given: Any, loc: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], str] | None:
    """The first number of the validated ``model`` that breaks the rules above, as (field path, what is
    wrong and the fix); ``given`` is the mapping ``model`` was validated from (booleans are found there)."""
    source = given if isinstance(given, dict) else {}
    for name, info in type(model).model_fields.items():
        raw = source.get(info.alias or name, _ABSENT)
        found = _walk(getattr(model, name), raw, (*loc, name), name)
        if found is not None:
            return found
    return None


def _loc_text(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + shorten(part, quote=False)
    return out or "(top level)"


def check_numbers(source: str, model: BaseModel, given: Any, prefix: str = "",
                  renames: dict[str, str] | None = None) -> None:
    """Raises ``ConfigError`` (``source: field.path: problem``) for the first :func:`number_problem`.

    Args:
        source: the suite file.
        model: the validated model (a suite or a plugin's ``Params``).
        given: the mapping it was validated from.
        prefix: the field path of ``model`` in the suite (``defenses[2].params``).
        renames: field paths to report as another line of the file (a swept parameter as its ``sweep:``).
    """
    found = number_problem(model, given)
    if found is None:
        return
    loc, problem = found
    where = _loc_text(prefix, loc)
    raise ConfigError(f"{source}: {(renames or {}).get(where, where)}: {problem}")
