"""Where the products behind a table were computed, and a note when they differ.

A target or an attack run records the device and torch's CPU thread count it ran with (the target's
``report`` in the record's ``target`` block, the attack's ``info`` in ``attack_info``). Neither is part
of a store key: a shared store serves a product to every run that asks for it, whatever setting
computed it. But CPU float reductions depend on the thread count, so two products with the same key
computed with 1 and 2 threads can differ (on the quickstart, the hard-label target reached 96.5 % test
accuracy with one thread and 97.0 % with two; label-only and black-box attacks on such near-equal
targets then follow different query paths). When the products of one table were computed with more
than one setting, the table says so, so that small differences between rows are not read as effects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from inversion_bench.leaderboard.number_format import plural


def _setting(block: Any) -> str | None:
    """``"cpu, 2 threads"`` from a target report or attack info, ``None`` when it was not recorded."""
    if not isinstance(block, dict) or block.get("torch_threads") is None:
        return None
    return f"{block.get('device', 'device not recorded')}, {plural(int(block['torch_threads']), 'thread')}"


def compute_settings(records: Sequence[dict[str, Any]]) -> dict[str, Counter[str | None]]:
    """How many distinct targets and attack runs (by store key) were computed with each setting.

    Returns:
        ``{"targets": Counter, "attacks": Counter}``; the key ``None`` counts products that do not
        record their setting (computed before it was recorded). Failed records are skipped.
    """
    seen: dict[str, dict[str, str | None]] = {"targets": {}, "attacks": {}}
    for r in records:
        if r.get("status") != "ok":
            continue
        keys = r.get("keys") or {}
        where = f"{r.get('defense')}/{r.get('seed')}"
        seen["targets"].setdefault(str(keys.get("target") or where), _setting(r.get("target")))
        seen["attacks"].setdefault(str(keys.get("attack") or f"{where}/{r.get('attack')}"),
                                   _setting(r.get("attack_info")))
    return {kind: Counter(v.values()) for kind, v in seen.items()}


def _describe(counts: Counter[str | None], noun: str) -> str:
    parts = [f"{plural(n, noun)} on {s}" for s, n in sorted(
        ((s, n) for s, n in counts.items() if s is not None), key=lambda sn: (-sn[1], sn[0]))]
    if counts.get(None):
        parts.append(f"{plural(counts[None], noun)} without a recorded setting")
    return ", ".join(parts)


def compute_settings_note(records: Sequence[dict[str, Any]]) -> list[str]:
    """One note when the recorded settings of the table's products differ, else none.

    Products without a recorded setting do not raise the note on their own (nothing is known about
    them); they are counted in it when it is raised.
    """
    counts = compute_settings(records)
    known = {s for c in counts.values() for s in c if s is not None}
    if len(known) <= 1:
        return []
    return [f"the products of this table were computed with different settings (targets: "
            f"{_describe(counts['targets'], 'target')}; attacks: {_describe(counts['attacks'], 'attack run')}). "
            "CPU results differ in the last bits between thread counts and devices, and label-only and "
            "black-box attacks can amplify that, so a small difference between rows computed differently "
            "may be numerical rather than an effect; rerun them with one setting (run.threads, run.device) "
            "in a fresh store to compare them bit for bit."]
