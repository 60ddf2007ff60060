"""Metrics declare what they return (benchmark/interfaces.py Metric.outputs, MetricResult) and the leaderboard
learns unit, direction and per-identity values from those declarations as the records keep them, never from
metric names: a new metric plugin gets percent display, crossed intervals, the seed test and the worst case
without a change to leaderboard/."""

from __future__ import annotations

import ast
import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.leaderboard import build
from inversion_bench.products.record import metric_info, score
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import REGISTRIES
from tests.test_leaderboard import make_record, md_row, md_tables

LEADERBOARD = Path(__file__).resolve().parents[1] / "leaderboard"


class LeakShare(Metric):
    """A share with per-identity values: per identity, the mean brightness of its reconstructions (in [0, 1])."""

    outputs = {"leak_share": MetricOutput(better="lower", unit="share", per_identity=True, label="leak share")}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        per = {int(c): float(rec.images[rec.labels == c].mean()) for c in rec.labels.unique()}
        return MetricResult(values={"leak_share": sum(per.values()) / len(per)}, per_identity={"leak_share": per},
                            details={"identities": len(per)})


@contextlib.contextmanager
def registered_metric(name: str, cls: type[Metric]) -> Iterator[None]:
    registry = REGISTRIES["metrics"]
    entries = dict(registry._entries)
    registry.register(name)(cls)
    try:
        yield
    finally:
        registry._entries.clear()
        registry._entries.update(entries)


def test_outputs_declare_better_and_a_plain_better_still_works() -> None:
    assert LeakShare.better == {"leak_share": "lower"}

    class Old(Metric):
        better = {"old_score": "higher"}

        def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
            return MetricResult(values={"old_score": 1.0})

    assert Old.outputs == {"old_score": MetricOutput(better="higher", unit="score", per_identity=False)}
    attack_acc = REGISTRIES["metrics"].get("attack_accuracy").outputs["attack_acc@1"]
    assert (attack_acc.unit, attack_acc.better, attack_acc.per_identity) == ("share", "lower", True)


BRIGHTNESS = {  # defense -> seed -> per-identity brightness of the reconstructions (identities 0..4)
    "none": [[0.8, 0.7, 0.9, 0.6, 0.75], [0.85, 0.65, 0.8, 0.7, 0.9], [0.7, 0.8, 0.85, 0.75, 0.6],
             [0.9, 0.75, 0.7, 0.8, 0.85]],
    "strong": [[0.1, 0.2, 0.15, 0.05, 0.1], [0.2, 0.1, 0.05, 0.15, 0.1], [0.1, 0.15, 0.2, 0.1, 0.05],
               [0.05, 0.1, 0.1, 0.2, 0.15]],
}
DEFENSES = {"none": ("none", "No defense", 0), "strong": ("strong", "Strong", 1)}


def _record(defense: str, seed: int) -> dict[str, Any]:
    """A record as the runner writes it, with the new metric scored through ``products.record.score``."""
    levels = BRIGHTNESS[defense][seed]
    images = torch.cat([torch.full((2, 3, 4, 4), v) for v in levels])
    labels = torch.arange(len(levels)).repeat_interleave(2)
    ctx = SimpleNamespace(suite=SimpleNamespace(metrics=[SimpleNamespace(name="leak_share")]),
                          loaded=SimpleNamespace(metric_params=[LeakShare.Params()]))
    scores = score(ctx, Reconstruction(images, labels), SimpleNamespace())
    rec = make_record(DEFENSES[defense], ("probe", "Probe", 0), seed,
                      {"test_accuracy": 0.9 - 0.05 * DEFENSES[defense][2], **scores.values})
    rec.pop("schema")
    rec.update(schema_version=2, directions={"test_accuracy": "higher", **scores.directions},
               metric_scopes={"test_accuracy": "target", **scores.scopes}, metric_details=scores.details,
               metric_info={**metric_info(REGISTRIES["metrics"].get("test_accuracy"), "test_accuracy"),
                            **metric_info(LeakShare, "leak_share")},
               per_identity={m: {"values": v} for m, v in scores.per_identity.items()},
               worst_case_metric="leak_share")
    return rec


def test_a_new_share_metric_gets_percent_intervals_tests_and_the_worst_case() -> None:
    with registered_metric("leak_share", LeakShare):
        records = [_record(d, s) for d in BRIGHTNESS for s in range(4)]
    assert records[0]["per_identity"]["leak_share"]["values"] == pytest.approx(
        {"0": 0.8, "1": 0.7, "2": 0.9, "3": 0.6, "4": 0.75}, abs=1e-6)
    lb = build(records)  # the plugin is no longer registered: the tables need only the records
    worst = lb.worst_case_column
    assert worst is not None and worst.metric == "leak_share" and worst.is_share
    col = next(c for c in lb.columns if c.key == "probe/leak_share")
    assert col.is_share and col.direction == "lower"
    cell = lb.cell("strong", "probe/leak_share")
    means = [sum(v) / len(v) for v in BRIGHTNESS["strong"]]
    assert cell["mean"] == pytest.approx(sum(means) / 4, abs=1e-6)
    assert "crossed bootstrap over seeds and identities" in cell["ci_method"] and cell["n_identities"] == 5
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"]
    assert bool(cell["testable"]) and math.isfinite(cell["p_value"]) and "permutation" in cell["test"]
    assert bool(cell["significant"])  # every seed of "strong" is below every seed of "none"
    md = lb.to_markdown()
    (main, *_) = md_tables(md)
    row = md_row(main, "Strong")
    assert row["Probe [white-box]: leak_share (%) ↓"].startswith(f"{100 * cell['mean']:.1f} ± ")
    assert row["Worst case: leak_share (%) ↓"].startswith(f"{100 * cell['mean']:.1f} ± ")
    assert "the highest mean leak share (leak_share, over seeds)" in md


def _code_strings(source: str) -> list[tuple[int, str]]:
    """Every string constant of a module's code (docstrings left out), with its line."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_leaderboard_has_no_metric_name_rules() -> None:
    """Facts about metrics come from their declarations in the records: no per-identity key scanning, no
    name-pattern unit, no fixed worst-case metric anywhere in the code of leaderboard/."""
    offenders = []
    for path in sorted(LEADERBOARD.glob("*.py")):
        if path.name == "published.py":  # the published data files' schema: which run metrics a row may quote
            continue
        for line, text in _code_strings(path.read_text(encoding="utf-8")):
            if (text.startswith("per_identity_") or re.fullmatch(r"attack_acc@\d+", text)
                    or "acc(uracy)" in text or text in ("knowledge_extraction", "evaluator_agreement")):
                offenders.append(f"{path.name}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("worst, expected", [
    ("attack_acc@5", None),
    ("fid", "report.worst_case: 'fid' is declared better: higher (a higher value is less leakage), but the worst "
            "case takes the highest mean; choose one declared better: lower"),
    ("leakage", "report.worst_case: 'leakage' is no output of the suite's metrics; choose one of ['attack_acc@1', "
                "'attack_acc@5'] or add its metric"),
])
def test_the_suite_names_the_worst_case_metric(write_suite, capsys, worst: str, expected: str | None) -> None:
    from inversion_bench.cli import main
    from tests.conftest import tiny_suite

    data = tiny_suite()
    data["metrics"] = ["attack_accuracy", "fid"]
    data["report"] = {"worst_case": worst}
    path = write_suite(data)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    if expected is None:
        assert code == 0, err
    else:
        assert code == 2 and f"{path}: {expected}" in err, err
