"""Defense sweeps: expansion into entries, validation errors, and store keys shared with hand-written entries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inversion_bench.config import load_suite
from inversion_bench.errors import ConfigError
from inversion_bench.plan import make_plan
from inversion_bench.sweep import expand_sweeps

QUICKSTART = Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml"


def _suite(tmp_path: Path, defenses: str, baseline: str = "") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(f"include: {QUICKSTART}\nname: sw\ndefenses:\n{defenses}\n{baseline}\n")
    return p


def test_sweep_expands_into_one_entry_per_value_with_group_and_value(tmp_path):
    p = _suite(tmp_path, "  - {id: ls, name: label_smoothing, label: LS, sweep: {alpha: [-0.05, 0, 0.1]}}",
               "baseline: ls.alpha0")
    suite = load_suite(p).suite
    assert suite.defense_ids() == ["ls.alpha-0.05", "ls.alpha0", "ls.alpha0.1"]
    assert [d.label for d in suite.defenses] == ["LS alpha=-0.05", "LS alpha=0", "LS alpha=0.1"]
    assert [d.params for d in suite.defenses] == [{"alpha": -0.05}, {"alpha": 0}, {"alpha": 0.1}]
    assert [(d.swept.group, d.swept.param, d.swept.value) for d in suite.defenses] == [
        ("ls", "alpha", -0.05), ("ls", "alpha", 0), ("ls", "alpha", 0.1)]
    assert suite.baseline_id == "ls.alpha0"


def test_swept_entries_share_the_store_keys_of_hand_written_ones(tmp_path):
    entry = "  - {id: ls, name: label_smoothing, sweep: {alpha: [0.0, 0.1, -0.05]}}"
    swept = make_plan(load_suite(_suite(tmp_path, entry, "baseline: ls.alpha0")))
    quick = make_plan(load_suite(QUICKSTART))
    # by suite order: the swept entries' ids (ls.alpha0, ...) differ from the hand-written ones (hard, ...)
    assert [k for (_, seed), k in swept.target_keys.items() if seed == 0][:3] == \
        [k for (_, seed), k in quick.target_keys.items() if seed == 0][:3]
    assert [p.attack_key for p in swept.pairs] == [p.attack_key for p in quick.pairs]


def test_a_suite_without_sweep_is_returned_unchanged():
    d = {"defenses": [{"name": "label_smoothing"}]}
    assert expand_sweeps(d, "x.yaml") is d


@pytest.mark.parametrize("entry,message", [
    ({"id": "ls", "name": "label_smoothing", "sweep": {"alpha": [0.1], "warmup": [True]}},
     "x.yaml: defenses[0].sweep: must name exactly one parameter"),
    ({"id": "ls", "name": "label_smoothing", "sweep": {"alpha": []}},
     "x.yaml: defenses[0].sweep.alpha: must be a non-empty list of values"),
    ({"id": "ls", "name": "label_smoothing", "sweep": {"alpha": [0.1, 0.1]}},
     "x.yaml: defenses[0].sweep.alpha: values must be distinct"),
    ({"id": "ls", "name": "label_smoothing", "params": {"alpha": 0.1}, "sweep": {"alpha": [0.1]}},
     "x.yaml: defenses[0].sweep.alpha: alpha is also set in params; remove it from params"),
])
def test_bad_sweeps_name_file_field_and_fix(entry, message):
    with pytest.raises(ConfigError) as e:
        expand_sweeps({"defenses": [entry]}, "x.yaml")
    assert str(e.value).startswith(message)


def test_an_out_of_range_swept_value_is_reported_on_its_entry_with_exit_code_2(tmp_path):
    p = _suite(tmp_path, "  - {id: ls, name: label_smoothing, sweep: {alpha: [0.1, 1.5]}}")
    r = subprocess.run([sys.executable, "-m", "inversion_bench.cli", "validate", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "defenses[1].params.alpha" in r.stderr, r.stderr
