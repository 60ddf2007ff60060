"""Read-only access to ``bench run`` folders: their ``suite.json`` and stored products (targets, evaluation
model, reconstructions), for the figures of a report (:mod:`inversion_bench.leaderboard.report_figures`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the tables-only path (``bench leaderboard``) reads suite.json here and imports no torch
    import torch

    from inversion_bench.run_context import RunContext


class ReportError(ValueError):
    """The run folders cannot be reported (or combined); the message says which folder and field."""


def read_suite_json(run_dir: Path) -> dict[str, Any]:
    """The ``suite.json`` that ``bench run`` writes into a run folder."""
    path = Path(run_dir) / "suite.json"
    if not path.is_file():
        raise ReportError(f"{run_dir}: no suite.json; give a folder written by `bench run`")
    return json.loads(path.read_text())


class RunView:
    """Read-only access to one run folder's suite and stored products (never trains).

    Args:
        run_dir: the run folder.
        ctx: the ``RunContext`` of the run that just ran this folder, if there is one (``bench run``
            passes it): its data and models already in memory are used instead of being loaded again.
    """

    def __init__(self, run_dir: Path, ctx: RunContext | None = None) -> None:
        from inversion_bench.config import validate_suite
        from inversion_bench.registry import load_plugins
        from inversion_bench.run_context import RunContext

        self.run_dir = Path(run_dir)
        if ctx is None:
            load_plugins()
            data = read_suite_json(self.run_dir)
            ctx = RunContext(validate_suite(data["suite"], str(self.run_dir / "suite.json")), run_dir=self.run_dir,
                             progress=False)
        self.ctx = ctx
        self.loaded = ctx.loaded
        self.suite = ctx.suite

    @property
    def splits(self) -> Any:
        from inversion_bench.products.data import splits

        return splits(self.ctx)

    def has_target(self, record: dict[str, Any]) -> bool:
        """Whether the suite as this folder last ran it plans the record's target: its defense and seed are
        among the run's (a ``bench run --seeds 3`` into a folder holding seeds 0-2 plans seed 3 only)."""
        return (str(record["defense"]), int(record["seed"])) in self.ctx.plan.target_keys

    def target(self, record: dict[str, Any]) -> torch.nn.Module:
        """The target model of a record, loaded from the store."""
        from inversion_bench.products.target import target

        key = (record.get("keys") or {}).get("target")
        defense, seed = str(record["defense"]), int(record["seed"])
        store = self.ctx.store
        if not key or not store.has("targets", key):
            raise ReportError(f"target of {record['defense']} seed {seed} is not in {store.root}")
        if not self.has_target(record):
            raise ReportError(f"target of {record['defense']} seed {seed}: the last run of {self.run_dir} planned "
                              f"seeds {list(self.suite.seeds)} only, so this target's key cannot be checked; "
                              "use a record of those seeds, or run the suite with this seed")
        if self.ctx.plan.target_keys[(defense, seed)] != key:
            raise ReportError(f"target of {record['defense']} seed {seed}: the suite now gives another key "
                              "(code or plugin versions changed since the run); re-run the suite")
        return target(self.ctx, defense, seed)[0]

    def evaluator(self) -> torch.nn.Module:
        from inversion_bench.products.evaluator import evaluator

        if not self.ctx.store.has("evaluators", self.ctx.plan.evaluator_key):
            raise ReportError(f"the evaluation model is not in {self.ctx.store.root}")
        return evaluator(self.ctx)[0]

    def reconstruction(self, record: dict[str, Any]) -> Any:
        """The stored :class:`~inversion_bench.interfaces.Reconstruction` of an ok record."""
        from inversion_bench.products.reconstruction import load_reconstruction

        key = (record.get("keys") or {}).get("attack")
        if not key or not self.ctx.store.has("attacks", key):
            raise ReportError(f"reconstructions of {record['defense']} x {record['attack']} seed "
                              f"{record['seed']} are not in {self.ctx.store.root}")
        return load_reconstruction(self.ctx, key)
