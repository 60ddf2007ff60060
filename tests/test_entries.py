"""Resolved entries (``inversion_bench.entries``): ``validate_suite`` resolves every defense, attack and metric
once; plans, jobs and products carry entry ids, never positions in the suite's lists; store keys are those of
the code before entries existed."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from inversion_bench import jobs as jobs_module
from inversion_bench import plan as plan_module
from inversion_bench.config import load_suite, validate_suite
from inversion_bench.entries import AttackEntry, DefenseEntry, MetricEntry
from inversion_bench.errors import ConfigError
from inversion_bench.jobs import Job, job_graph
from inversion_bench.plan import PairJob, Plan, make_plan
from inversion_bench.registry import REGISTRIES, load_plugins
from inversion_bench.store import content_key
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"

# Store keys of built-in suites as the code before resolved entries computed them (commit 703ad94). The suite
# hash covers every pair's config hash, so every target, attack, generator, prior and metric key behind it.
# Suites whose keys depend on local files (checkpoint paths, dataset folders) are left out. A deliberate key
# change (a plugin's version, a new key field) updates these with the reason in its commit message.
PINNED = {
    "quickstart.yaml": ("249ba7129b4052c7", "c4e6b8121747872f", "ce3dca1dfb64394d", "a43489e7a7df6b15"),
    "alpha-sweep.yaml": ("d47dc154ea9f835c", "c4e6b8121747872f", "ce3dca1dfb64394d", "a43489e7a7df6b15"),
    "defenses.yaml": ("78034b147a0e0488", "c4e6b8121747872f", "ce3dca1dfb64394d", "a43489e7a7df6b15"),
    "threat-models.yaml": ("d79048a7f2e06eb6", "c4e6b8121747872f", "ce3dca1dfb64394d", "a43489e7a7df6b15"),
    "toy2d.yaml": ("a059672f0983e6e3", "d412a37092bcf9df", "eb2dcc9895b2faf2", None),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_store_keys_of_built_in_suites_are_unchanged(name):
    plan = make_plan(load_suite(SUITES / name))
    assert (plan.suite_hash, plan.data_key, plan.evaluator_key, plan.prior_key) == PINNED[name]


def test_defenses_yaml_covers_generator_and_prior_keys():
    """The pinned suites exercise every key path: attacks that fit their own generator and attacks on the prior."""
    plan = make_plan(load_suite(SUITES / "defenses.yaml"))
    assert any(p.gan_key for p in plan.pairs) and any(p.prior_key for p in plan.pairs)
    assert any(p.prior_key is None for p in plan.pairs)


def test_entries_hold_the_resolved_plugins_in_suite_order():
    loaded = load_suite(SUITES / "quickstart.yaml")
    s = loaded.suite
    assert list(loaded.defenses) == s.defense_ids() and list(loaded.attacks) == s.attack_ids()
    assert [m.name for m in loaded.metrics] == [m.name for m in s.metrics]
    for kind, entries in (("defenses", list(loaded.defenses.values())), ("attacks", list(loaded.attacks.values())),
                          ("metrics", list(loaded.metrics))):
        reg = REGISTRIES[kind]
        for i, e in enumerate(entries):
            assert (e.kind, e.index, e.where) == (kind, i, f"{kind}[{i}]")
            assert e.cls is reg.get(e.name) and isinstance(e.params, e.cls.Params)
            assert e.version == reg.info(e.name).version and e.version_label == reg.version_label(e.name)
            # what the keys hash, computed independently of the entry
            assert e.spec() == {"plugin": reg.key_name(e.name), "version": reg.info(e.name).version,
                                "params": e.cls.Params(**getattr(s, kind)[i].params).model_dump(mode="json")}
    assert all(isinstance(d, DefenseEntry) for d in loaded.defenses.values())
    assert all(isinstance(m, MetricEntry) for m in loaded.metrics)
    hard = loaded.defenses["hard"]
    assert (hard.label, hard.name, hard.params.alpha, hard.checkpoint, hard.swept) == \
        ("Hard labels", "label_smoothing", 0.0, None, None)
    mif, ppa = loaded.attacks["mi-face"], loaded.attacks["ppa"]
    assert isinstance(ppa, AttackEntry)
    assert (mif.access, mif.needs_prior, mif.trains_generator) == ("white-box", False, False)
    assert (ppa.access, ppa.needs_prior, ppa.trains_generator) == ("white-box", True, False)
    assert ppa.label == "PPA" and ppa.params.num_steps == 30 and ppa.identities == "all"


def test_entries_are_frozen_and_build_fresh_plugins():
    loaded = load_suite(SUITES / "quickstart.yaml")
    d = loaded.defenses["ls"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.label = "x"  # type: ignore[misc]
    a, b = d.build(), d.build()
    assert a is not b and type(a) is d.cls and a.params is d.params
    assert hash(d) == hash(load_suite(SUITES / "quickstart.yaml").defenses["ls"])


def test_attack_entries_carry_their_plugins_declarations():
    loaded = load_suite(SUITES / "defenses.yaml")
    for a in loaded.attacks.values():
        cls = REGISTRIES["attacks"].get(a.name)
        assert (a.access, a.needs_prior, a.trains_generator) == \
            (cls.access, getattr(cls, "needs_prior", False), getattr(cls, "trains_generator", False))
    assert any(a.trains_generator for a in loaded.attacks.values())


def test_an_attack_without_its_prior_is_refused_at_its_place(write_suite):
    load_plugins()
    data = tiny_suite(attacks=[{"id": "mif", "name": "mi-face", "params": {"steps": 1}},
                               {"id": "p", "name": "ppa", "params": {"num_steps": 0}}])
    data.pop("prior", None)
    with pytest.raises(ConfigError, match=r"t\.yaml: attacks\[1\]: ppa needs an image prior; add a prior: section"):
        validate_suite(data, "t.yaml")


def test_plan_and_jobs_carry_ids_that_index_the_entries():
    loaded = load_suite(SUITES / "quickstart.yaml")
    plan = make_plan(loaded)
    assert set(plan.target_keys) == {(d, s) for d in loaded.defenses for s in loaded.suite.seeds}
    for p in plan.pairs:
        d, a = loaded.defenses[p.defense], loaded.attacks[p.attack]
        assert p.record_name == f"{d.id}__{a.id}__seed{p.seed}.json"
        assert p.target_key == plan.target_keys[(d.id, p.seed)]
        assert p.prior_key == (plan.prior_key if a.needs_prior else None)
        want = content_key({"job": "attack", "target": p.target_key, "prior": p.prior_key, "attack": a.spec(),
                            "identities": a.identities, "seed": p.seed})
        assert p.attack_key == want
    graph = job_graph(plan, plan.pairs)
    assert {j.defense for j in graph if j.kind == "target"} == set(loaded.defenses)
    assert all(("prior" in j.deps) == (j.pair.prior_key is not None) for j in graph if j.kind == "attack")


def _fields(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls, vars(plan_module) | vars(jobs_module))


def test_plans_and_jobs_hold_no_list_positions():
    """The seams are typed: the only integers a pair, a job or a plan's target key holds are seeds."""
    for cls in (PairJob, Job):
        ints = [name for name, hint in _fields(cls).items() if int in (hint, *typing.get_args(hint))]
        assert ints == ["seed"], f"{cls.__name__} holds integers besides the seed: {ints}"
    assert _fields(Plan)["target_keys"] == dict[tuple[str, int], str]
    assert "index" not in " ".join(f.name for c in (PairJob, Job, Plan) for f in dataclasses.fields(c))


# ------------------------------------------------------------------------ no index joins of suite entries
# the core that holds a LoadedSuite (the rest of the leaderboard reads records, whose defense_index and
# attack_index only order rows and columns)
CORE = [*sorted((ROOT / "benchmark").rglob("*.py")), ROOT / "leaderboard" / "runs.py"]
PARALLEL = {"defense_params", "attack_params", "metric_params", "defense_index", "attack_index"}
ENTRY_LISTS = {"defenses", "attacks", "metrics"}
# registry lookups of defenses, attacks and metrics by a constant kind: resolution only
LOOKUP_ALLOWED = {"entries.py": "resolves the entries", "report_check.py": "validates report.table in validate_suite",
                  "config.py": "validates report.worst_case in validate_suite",
                  "record.py": "the test_accuracy declaration every record carries; the attack plugin an earlier "
                               "record names when its report settings are refreshed (worst_case_metric)"}


def _suite_list(node: ast.AST) -> bool:
    """``<x>.suite.defenses``, ``suite.attacks``, ``s.metrics``: a list of the suite's configured entries."""
    if not (isinstance(node, ast.Attribute) and node.attr in ENTRY_LISTS):
        return False
    owner = node.value
    return (isinstance(owner, ast.Attribute) and owner.attr == "suite") or \
        (isinstance(owner, ast.Name) and owner.id in {"s", "suite"})


def index_joins(source: str) -> list[str]:
    """What in ``source`` joins suite entries by position: a parallel params/index attribute, indexing a suite
    list, zipping a suite list with anything, or a constant-kind registry lookup of a plugin entry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in PARALLEL:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Subscript) and _suite_list(node.value):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip" and \
                any(_suite_list(a) for a in node.args):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "REGISTRIES" \
                and isinstance(node.slice, ast.Constant) and node.slice.value in ENTRY_LISTS:
            found.append(f"{node.lineno}: lookup {ast.unparse(node)}")
    return found


def test_the_index_join_finder_on_hand_made_code():
    code = """
params = ctx.loaded.defense_params[job.defense_index]
a = ctx.suite.attacks[i]
for m, p in zip(s.metrics, loaded.metric_params):
    pass
cls = REGISTRIES["attacks"].get(name)
ok = ctx.loaded.attacks[job.attack]
ok2 = REGISTRIES[kind].get(name)
ok3 = record["defense_index"]
"""
    assert sorted(f.split(":")[0] for f in index_joins(code)) == ["2", "2", "3", "4", "4", "6"]


def test_no_core_module_joins_suite_entries_by_position():
    bad = [f"{path.relative_to(ROOT)}:{hit}" for path in CORE
           for hit in index_joins(path.read_text(encoding="utf-8"))
           if not (hit.split(": ", 1)[1].startswith("lookup") and path.name in LOOKUP_ALLOWED)]
    assert bad == [], "index joins or repeated plugin lookups (use LoadedSuite.defenses/attacks/metrics): " + \
        "; ".join(bad)
