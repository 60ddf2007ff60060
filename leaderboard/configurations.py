"""One column per attack configuration, one row per defense configuration: a Δ compares like with like.

Run folders combined into one table may hold records of one attack id (or defense id) run with
different parameters, e.g. PPA with 8 candidates in one folder and 16 in another after a ``--set``
rerun. Merged under one id, their seeds would be averaged together and tested against each other as if
they were one configuration. Here an entry's configuration is its plugin, its validated parameters and
the plugin's version; an id with several configurations among the records becomes one id per
configuration, ``<id>@<8 hex digits of the configuration hash>``, labelled with the parameters that
differ (``PPA (num_candidates=16)``), and a note names them. Ids with one configuration are unchanged.

Pure functions over record dicts; :func:`~inversion_bench.leaderboard.aggregate.aggregate` calls
:func:`split_configurations` before anything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

ENTRIES = {"attack": ("attack_plugin", "attack_params", "attack_label"),
           "defense": ("defense_plugin", "defense_params", "defense_label")}
"""Kind -> the record fields of its plugin, parameters and display name."""


def configuration(rec: dict[str, Any], kind: str) -> dict[str, Any]:
    """The configuration of a record's attack or defense: plugin, parameters and plugin version."""
    plugin_key, params_key, _ = ENTRIES[kind]
    plugin = rec.get(plugin_key)
    versions = rec.get("plugin_versions") if isinstance(rec.get("plugin_versions"), dict) else {}
    return {"plugin": plugin, "params": rec.get(params_key), "version": versions.get(f"{kind}:{plugin}")}


def configuration_hash(config: dict[str, Any]) -> str:
    """8 hex digits of the SHA-256 of the configuration's canonical JSON."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _flat(params: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": v}`` of nested parameter dicts (non-dicts under their own prefix)."""
    if not isinstance(params, dict):
        return {prefix or "params": params}
    out: dict[str, Any] = {}
    for k, v in params.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differing(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The parameter names (dotted) whose values differ between configurations; ``plugin``/``version`` when
    those differ."""
    flats = [_flat(c.get("params") or {}) for c in configs]
    keys = sorted({k for f in flats for k in f})
    names = [k for k in keys if len({json.dumps(f.get(k, "<absent>"), sort_keys=True, default=str)
                                     for f in flats}) > 1]
    for extra in ("plugin", "version"):
        if len({str(c.get(extra)) for c in configs}) > 1:
            names.append(extra)
    return names


def _describe(config: dict[str, Any], names: Sequence[str]) -> str:
    flat = _flat(config.get("params") or {})
    parts = []
    for n in names:
        value = config.get(n) if n in ("plugin", "version") else flat.get(n, "<absent>")
        parts.append(f"{n}={json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    return ", ".join(parts)


def split_configurations(records: Sequence[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """The records with every attack and defense id that has several configurations split into one id each.

    Args:
        records: result records (any order).
        notes: receives one line per split id, naming its configurations.

    Returns:
        The records; a split record is a copy with its id (``attack``/``defense``) and label rewritten, and
        ``<kind>_base_id`` holding the original id.
    """
    out = list(records)
    for kind, (_, _, label_key) in ENTRIES.items():
        configs: dict[str, dict[str, dict[str, Any]]] = {}
        for r in out:
            cfg = configuration(r, kind)
            configs.setdefault(str(r.get(kind)), {})[configuration_hash(cfg)] = cfg
        split = {ident: by_hash for ident, by_hash in configs.items() if len(by_hash) > 1}
        if not split:
            continue
        renamed = []
        for r in out:
            ident = str(r.get(kind))
            if ident not in split:
                renamed.append(r)
                continue
            h = configuration_hash(configuration(r, kind))
            names = differing(list(split[ident].values()))
            label = f"{r.get(label_key) or ident} ({_describe(split[ident][h], names)})"
            renamed.append({**r, kind: f"{ident}@{h}", label_key: label, f"{kind}_base_id": ident})
        out = renamed
        for ident, by_hash in split.items():
            names = differing(list(by_hash.values()))
            variants = "; ".join(f"{ident}@{h}: {_describe(c, names)}" for h, c in by_hash.items())
            notes.append(f"{kind} {ident!r} was run with {len(by_hash)} configurations ({variants}); each is its "
                         f"own {'column' if kind == 'attack' else 'row'}, and no Δ or test is taken across them.")
    return out
