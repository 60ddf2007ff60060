"""The local executor walks the job graph: dependency order, pair by pair, failures passed on to
dependants, targets released after their last use. Jobs are replaced by a recording fake."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inversion_bench.executors import local
from inversion_bench.jobs import job_graph
from inversion_bench.plan import PairJob, Plan
from inversion_bench.run_context import Held


def _pair(di: int, ai: int, seed: int) -> PairJob:
    """Pair of defense ``d<di>`` and attack ``a<ai>``; attack ``a1`` reads the image prior."""
    name = f"d{di}__a{ai}__seed{seed}.json"
    return PairJob(f"d{di}", f"a{ai}", seed, f"t{di}{seed}", f"k{di}{ai}{seed}", f"h{di}{ai}{seed}", name,
                   prior_key="p" if ai == 1 else None)


def _plan(pairs: list[PairJob], prior: str | None = "p") -> Plan:
    keys = {(p.defense, p.seed): p.target_key for p in pairs}
    return Plan("data", "ev", prior, keys, pairs, "suite")


class _Ctx:
    """Holds targets like a RunContext and logs every release."""

    def __init__(self) -> None:
        self.held = Held()
        self.released: list[tuple[str, int]] = []
        orig = self.held.release_target

        def release(key):
            self.released.append(key)
            orig(key)

        self.held.release_target = release


@pytest.fixture
def walk(monkeypatch):
    """Runs the local executor on a graph with fake jobs; returns (order of jobs run, records, ctx)."""

    def run(pairs, fail=()):
        ran: list[str] = []
        records: list[tuple[str, str]] = []

        def fake_run_job(ctx, job):
            ran.append(job.id)
            if job.id in fail:
                raise RuntimeError(f"boom in {job.id}")
            if job.kind == "pair":
                return {"record": {"pair": job.pair.record_name, "status": "ok"}, "trace": {"t": 1}}
            return f"key-{job.id}"

        def fake_failed(ctx, pair, error, trace_text):
            assert "Traceback" in trace_text
            return {"pair": pair.record_name, "status": "failed", "error": error}

        monkeypatch.setattr(local, "run_job", fake_run_job)
        monkeypatch.setattr(local, "record_failed_pair", fake_failed)
        ctx = _Ctx()
        jobs = job_graph(_plan(pairs), pairs)
        local.LocalExecutor().execute(ctx, jobs, lambda rec, trace: records.append((rec["pair"], rec["status"],
                                                                                     rec.get("error"))))
        return ran, records, ctx

    return run


def test_pairs_run_one_after_the_other_with_their_dependencies_first(walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0)]
    ran, records, _ = walk(pairs)
    assert ran == [
        "target:d0:0", "attack:d0__a0__seed0.json", "evaluator", "pair:d0__a0__seed0.json",
        "prior", "attack:d0__a1__seed0.json", "pair:d0__a1__seed0.json",
        "target:d1:0", "attack:d1__a0__seed0.json", "pair:d1__a0__seed0.json",
    ]
    assert [r[0] for r in records] == [p.record_name for p in pairs]  # a record as soon as its pair is scored
    assert all(r[1] == "ok" for r in records)


def test_every_job_runs_once(walk):
    pairs = [_pair(d, a, s) for d in range(2) for a in range(2) for s in range(2)]
    ran, records, _ = walk(pairs)
    assert len(ran) == len(set(ran)) == 1 + 1 + 4 + 8 + 8
    assert len(records) == 8


def test_a_target_is_released_after_its_last_attack_and_scoring(walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0), _pair(1, 1, 0)]
    ran, _, ctx = walk(pairs)
    assert ctx.released == [("d0", 0), ("d1", 0)]
    # target 0 is released after its last pair and before target 1 is trained
    assert ran.index("pair:d0__a1__seed0.json") < ran.index("target:d1:0")


def test_a_failed_job_fails_its_dependants_and_the_other_pairs_still_run(walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0)]
    ran, records, _ = walk(pairs, fail={"target:d0:0"})
    assert records == [
        ("d0__a0__seed0.json", "failed", "RuntimeError: boom in target:d0:0"),
        ("d0__a1__seed0.json", "failed", "RuntimeError: boom in target:d0:0"),
        ("d1__a0__seed0.json", "ok", None),
    ]
    assert ran.count("target:d0:0") == 1  # a failed target is not trained again for its next pair
    assert "attack:d0__a0__seed0.json" not in ran and "pair:d0__a1__seed0.json" not in ran


def test_a_failed_prior_fails_only_the_attacks_that_need_it(walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0)]
    _, records, _ = walk(pairs, fail={"prior"})
    assert records == [("d0__a0__seed0.json", "ok", None),
                       ("d0__a1__seed0.json", "failed", "RuntimeError: boom in prior")]


def test_a_failed_attack_fails_its_pair_only(walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0)]
    _, records, _ = walk(pairs, fail={"attack:d0__a0__seed0.json"})
    assert [r[1] for r in records] == ["failed", "ok"]


def test_held_targets_are_bounded_and_least_recently_used_go_first():
    held = Held()
    for i in range(6):
        held.hold_target((i, 0), (SimpleNamespace(), {}))
    assert list(held.targets) == [(2, 0), (3, 0), (4, 0), (5, 0)]
    held.target((2, 0))  # used again: now the most recent
    held.hold_target((6, 0), (SimpleNamespace(), {}))
    assert list(held.targets) == [(4, 0), (5, 0), (2, 0), (6, 0)]
