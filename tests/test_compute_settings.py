"""The table notes when its products were computed with different devices or thread counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from inversion_bench.leaderboard import build
from inversion_bench.leaderboard.compute_settings import compute_settings, compute_settings_note
from tests.test_leaderboard import make_record

NONE = ("none", "No defense", 0)
TOP3 = ("top3", "Top-3", 1)
GMI = ("gmi", "GMI", 0)
BREP = ("brep", "BREP-MI", 1)


def rec(defense: tuple[str, str, int], attack: tuple[str, str, int], target_threads: int | None,
        attack_threads: int | None, status: str = "ok") -> dict[str, Any]:
    r = make_record(defense, attack, 0, {"test_accuracy": 0.9, "attack_acc@1": 0.5} if status == "ok" else None,
                    status=status, error=None if status == "ok" else "boom")
    r["keys"] = {"target": f"t-{defense[0]}", "attack": f"a-{defense[0]}-{attack[0]}"}
    r["target"] = {"test_accuracy": 0.9, **({"device": "cpu", "torch_threads": target_threads}
                                            if target_threads is not None else {})}
    r["attack_info"] = {"seconds": 1.0, **({"device": "cpu", "torch_threads": attack_threads}
                                           if attack_threads is not None else {})}
    return r


def test_counts_distinct_products_per_setting() -> None:
    recs = [rec(NONE, GMI, 2, 2), rec(NONE, BREP, 2, 1), rec(TOP3, GMI, 1, 1), rec(TOP3, BREP, 1, None),
            rec(TOP3, GMI, 1, 1, status="failed")]
    counts = compute_settings(recs)
    # two targets (one per defense, counted once however many attacks ran on it), four attack runs
    assert counts["targets"] == Counter({"cpu, 2 threads": 1, "cpu, 1 thread": 1})
    assert counts["attacks"] == Counter({"cpu, 1 thread": 2, "cpu, 2 threads": 1, None: 1})


def test_note_only_when_settings_differ() -> None:
    same = [rec(NONE, GMI, 2, 2), rec(TOP3, GMI, 2, 2), rec(TOP3, BREP, None, None)]
    assert compute_settings_note(same) == []  # unrecorded products alone raise nothing
    assert compute_settings_note([rec(NONE, GMI, None, None)]) == []
    mixed = [rec(NONE, GMI, 2, 2), rec(NONE, BREP, 2, 2), rec(TOP3, GMI, 1, 1), rec(TOP3, BREP, 1, None)]
    (note,) = compute_settings_note(mixed)
    assert note.startswith("the products of this table were computed with different settings (targets: "
                           "1 target on cpu, 1 thread, 1 target on cpu, 2 threads; attacks: 2 attack runs on "
                           "cpu, 2 threads, 1 attack run on cpu, 1 thread, 1 attack run without a recorded "
                           "setting).")
    assert "rerun them with one setting (run.threads, run.device) in a fresh store" in note
    md = build(mixed).to_markdown()
    assert "## Notes" in md and "computed with different settings" in md
    assert "computed with different settings" not in build(same).to_markdown()
