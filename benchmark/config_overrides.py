"""``--set`` overrides applied to a suite mapping, their errors, and a run folder's ``suite.json`` read
as a suite (``bench run runs/X/suite.json`` reruns a finished run's resolved suite)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from inversion_bench.config_messages import shorten
from inversion_bench.errors import ConfigError
from inversion_bench.suite_schema import entry_id


def _list_index(node: list[Any], k: str) -> int:
    """``k`` as an index of ``node``: a number, or the id of an entry (``id:``, else its label or name)."""
    if k.isdigit():
        return int(k)
    ids = [entry_id(_Entry(e)) if isinstance(e, dict) else None for e in node]
    if not any(ids):
        raise ValueError(f"{k!r} is not an index")
    if k not in ids:
        raise KeyError(f"no entry with id {k!r} (ids: {', '.join(str(i) for i in ids)})")
    return ids.index(k)


class _Entry:
    """A raw suite entry seen by :func:`entry_id` (``id``, ``label``, ``name``)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.id, self.label, self.name = raw.get("id"), raw.get("label"), raw.get("name")


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> list[str]:
    """Sets ``keys`` of ``data`` to ``value``; returns the path with list entries as indices."""
    node: Any = data
    path: list[str] = []
    for i, k in enumerate(keys):
        if isinstance(node, list):
            k = str(_list_index(node, k))
        path.append(k)
        if i == len(keys) - 1:
            break
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, [] if keys[i + 1].isdigit() else {})
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value
    return path


def shown_path(path: list[str]) -> str:
    return "".join(f"[{k}]" if k.isdigit() else f".{k}" for k in path).lstrip(".")


def blame_override(exc: ConfigError, source: str, applied: list[tuple[str, str]]) -> ConfigError:
    """The error of a field a ``--set`` gave names the flag instead of the suite file."""
    msg = str(exc)
    if not msg.startswith(f"{source}: "):
        return exc
    rest = msg[len(source) + 2:]
    field = rest.split(":", 1)[0].strip()
    for text, shown in reversed(applied):
        if any(a == b or a.startswith((b + ".", b + "[")) for a, b in ((field, shown), (shown, field))):
            return ConfigError(f"--set {shorten(text, 80, quote=False)}: {rest}")
    return exc


def read_suite_json(path: Path) -> dict[str, Any]:
    """The ``suite`` mapping of a run folder's ``suite.json`` (written by ``bench run``)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; give a run folder's suite.json or a YAML suite") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); give a run folder's suite.json "
                          "or a YAML suite") from None
    if not isinstance(data, dict) or not isinstance(data.get("suite"), dict):
        raise ConfigError(f"{path}: has no \"suite\" mapping; give the suite.json that `bench run` wrote into a "
                          "run folder, or a YAML suite")
    return copy.deepcopy(data["suite"])
