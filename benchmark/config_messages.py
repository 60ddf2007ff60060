"""Validation messages: pydantic errors turned into one line each that names the field and the fix.

``format_error`` gives e.g. ``defenses[2].params.alpha: must be <= 1, got 1.5``; an unknown key
lists the keys allowed there (with the closest one as a hint). ``raise_validation`` prefixes every
line with the suite file and raises ``ConfigError``. Messages stay short whatever the input: at most
:data:`MAX_PROBLEMS` lines (then a count of the rest), and every value shown is cut to a few dozen
characters (:func:`shorten`).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from inversion_bench.errors import ConfigError

MAX_PROBLEMS = 10  # lines of one message; the rest are counted


def shorten(value: Any, limit: int = 60, quote: bool = True) -> str:
    """``repr(value)`` (or ``str`` with ``quote=False``) cut to about ``limit`` characters."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + shorten(part, quote=False)
    return out or "(top level)"


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (for 'unknown key' hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        current = _model_in(ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        m = _model_in(arg)
        if m is not None:
            return m
    return None


_BOUND_TEXT = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}


def format_error(err: dict[str, Any], model: type[BaseModel] | None, prefix: str = "") -> str:
    """One pydantic error -> 'field.path: what is wrong and the fix, got X'."""
    loc = tuple(err.get("loc", ()))
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    where = prefix + (("." if prefix and loc and not isinstance(loc[0], int) else "") + _loc_text(loc) if loc else "")
    where = where or "(top level)"
    if typ == "extra_forbidden":
        known = _known_fields(model, loc[:-1]) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown key.{hint} Allowed keys here: {', '.join(known)}" if known else \
            f"{where}: unknown key; remove it"
    if typ == "finite_number":
        return f"{where}: must be a finite number, got {shorten(inp)}; inf and nan are not allowed here"
    if typ == "missing":
        return f"{where}: required field is missing; add it"
    if typ in _BOUND_TEXT:
        bound = next(iter(ctx.values())) if ctx else "?"
        return f"{where}: must be {_BOUND_TEXT[typ]} {bound}, got {shorten(inp)}"
    if typ in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        kind = "an integer" if typ.startswith("int") else "a number"
        return f"{where}: must be {kind}, got {shorten(inp)} ({type(inp).__name__}); write it without quotes"
    if typ == "too_short":
        return f"{where}: must not be empty; list at least {ctx.get('min_length', 1)} entry"
    if typ == "literal_error":
        return f"{where}: must be one of {ctx.get('expected')}, got {shorten(inp)}"
    if typ in ("model_type", "dict_type"):
        return f"{where}: must be a mapping (key: value), got {shorten(inp)}"
    if typ == "list_type":
        return f"{where}: must be a list, got {shorten(inp)}"
    msg = shorten(err.get("msg", "invalid value").removeprefix("Value error, "), 300, quote=False)
    shown = typ not in ("value_error", "assertion_error") and inp is not None and not isinstance(inp, dict | list)
    return f"{where}: {msg}" + (f", got {shorten(inp)}" if shown else "")


def raise_validation(source: str, exc: ValidationError, model: type[BaseModel] | None, prefix: str = "") -> None:
    """Raises ``ConfigError`` with one ``source: field.path: message`` line per error of ``exc``."""
    errors = exc.errors()
    lines = [f"{source}: {format_error(e, model, prefix)}" for e in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"... and {len(errors) - MAX_PROBLEMS} more problem(s)")
    raise ConfigError("\n".join(lines)) from None
