"""Suite validation (``config``, ``suite_schema``, ``config_overrides``) against hostile or careless
suites: ``bench validate`` refuses them with exit code 2 and a short message naming the file, the field
and the fix (never a traceback, never a hang)."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest
import yaml

from inversion_bench.cli import main
from inversion_bench.config import read_yaml, validate_suite
from inversion_bench.errors import ConfigError
from tests.conftest import tiny_suite

_NO_TRACE = ("Traceback", "RecursionError", "UnicodeDecodeError")


def _validate(capsys, path, *extra):
    code = main(["validate", str(path), *extra])
    captured = capsys.readouterr()
    assert not any(t in captured.err + captured.out for t in _NO_TRACE)
    return code, captured.err


def _refused(capsys, path, *expected, extra=()):
    code, err = _validate(capsys, path, *extra)
    assert code == 2, err
    assert err.startswith(f"error: {path}") or err.startswith("error: --set"), err
    for text in expected:
        assert text in err, err
    return err


def _text(write_suite, suite=None, tail="", name="suite.yaml"):
    """A valid suite file with ``tail`` appended (top-level YAML lines)."""
    p = write_suite(suite or tiny_suite(), name)
    p.write_text(p.read_text() + tail)
    return p


# ---- item 1: ids ------------------------------------------------------------------------------

def test_id_rule_is_stated(write_suite, capsys):
    s = tiny_suite()
    s["defenses"][0]["id"] = ".hidden"
    _refused(capsys, write_suite(s), "defenses[0].id: '.hidden' is not a valid id", "1-64", "not '.'")


@pytest.mark.parametrize("values, shown", [([0.1, "a/b"], "'a/b'"), ([0.1, 0.2], "0.1")])
def test_swept_id_reported_on_the_sweep_entry(write_suite, capsys, values, shown):
    s = tiny_suite()
    base = "ls" if shown == "'a/b'" else "l" * 60  # an odd value / an id too long once expanded
    s["defenses"][1] = {"id": base, "name": "label_smoothing", "sweep": {"alpha": values}}
    _refused(capsys, write_suite(s), f"defenses[1].sweep.alpha: the value {shown} makes the id", "not a valid id",
             "1-64", "not '.'")


def test_id_made_from_a_long_label_is_refused(write_suite, capsys):
    s = tiny_suite()
    s["defenses"][1] = {"label": "L" * 300, "name": "label_smoothing", "params": {"alpha": 0.1}}
    _refused(capsys, write_suite(s), "defenses[1]: the id made from its label", "300 characters",
             "give the entry an id")


# ---- item 4: numbers --------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["target"]["training"].update(lr=float("inf")), "target.training.lr: must be a finite number, got inf"),
    (lambda s: s["defenses"][1]["params"].update(alpha=float("-inf")),
     "defenses[1].params.alpha: must be a finite number, got -inf"),
    (lambda s: s["target"]["training"].update(betas=[float("nan"), 0.999]),
     "target.training.betas[0]: must be a finite number, got nan"),
    (lambda s: s.update(prior={"name": "dcgan", "params": {"betas": [0.5, float("inf")]}}),
     "prior.params.betas[1]: must be a finite number, got inf"),
    (lambda s: s["run"].update(ray={"num_cpus": float("inf")}), "run.ray.num_cpus: must be a finite number"),
    (lambda s: s.update(seeds=[18446744073709551616]), "seeds[0]: must be <= 4294967295"),
    (lambda s: s.update(seeds=[-1]), "seeds[0]: must be >= 0"),
    (lambda s: s.update(prior_seed=2**32), "prior_seed: must be <= 4294967295"),
    (lambda s: s["dataset"]["split"].update(seed=2**40), "dataset.split.seed: must be <= 4294967295"),
    (lambda s: s["attacks"][0].update(identities=[-1]), "attacks[0].identities: class indices start at 0"),
])
def test_numbers_refused(write_suite, capsys, mutate, expected):
    s = tiny_suite()
    mutate(s)
    _refused(capsys, write_suite(s), expected)


def test_infinity_is_opt_in():
    from pydantic import Field, ValidationError

    from inversion_bench.registry import PluginParams
    from inversion_bench.suite_schema import non_finite

    class P(PluginParams):
        cap: float = Field(1.0, allow_inf_nan=True)
        x: float = 1.0
        pair: tuple[float, float] = (0.0, 1.0)

    assert P(cap=float("inf")).cap == float("inf")
    assert non_finite(P(cap=float("inf"))) is None
    for bad in ({"x": float("inf")}, {"pair": (float("nan"), 1.0)}):
        with pytest.raises(ValidationError, match="finite number"):
            P(**bad)
    assert non_finite(P.model_construct(x=float("nan"), pair=(0.0, 1.0))) == (("x",), pytest.approx(float("nan"),
                                                                                                  nan_ok=True))


def test_identities_outside_the_classes_refused_at_validation(write_suite, capsys):
    s = tiny_suite()
    s["dataset"]["split"]["private_identities"] = 3
    s["attacks"][0]["identities"] = [0, 99]
    _refused(capsys, write_suite(s), "attacks[0].identities: class index 99 is outside the 3 private classes")


def _splits_of(suite):
    """The data product of ``suite`` through a minimal context (no run folder)."""
    from inversion_bench.products.data import splits

    loaded = validate_suite(suite, "x.yaml")
    ctx = types.SimpleNamespace(held=types.SimpleNamespace(splits=None), suite=loaded.suite, loaded=loaded,
                                plan=types.SimpleNamespace(data_key="k"))
    return splits(ctx)


def test_identities_checked_as_soon_as_the_classes_are_known():
    s = tiny_suite()
    s["dataset"]["split"]["private_identities"] = "all"  # 10 classes, known once the data is listed
    s["attacks"][0]["identities"] = [99]
    with pytest.raises(ConfigError, match=r"^x\.yaml: attacks\[0\]\.identities: class index 99 is outside the 10"):
        _splits_of(s)


def test_split_larger_than_the_dataset():
    s = tiny_suite()
    s["dataset"]["split"]["private_identities"] = 20
    with pytest.raises(ConfigError, match=r"^x\.yaml: dataset\.split\.private_identities: the dataset has 10"):
        _splits_of(s)


# ---- item 4: YAML -----------------------------------------------------------------------------

def test_duplicate_key(write_suite, capsys):
    p = _text(write_suite, tail="seeds: [1]\n")
    first = 1 + next(i for i, line in enumerate(p.read_text().splitlines()) if line.startswith("seeds:"))
    last = len(p.read_text().splitlines())
    _refused(capsys, p, f"line {last}", "duplicate key 'seeds'", f"first at line {first}")


def test_merge_keys_still_override(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n")
    assert read_yaml(p)["b"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "utf-16-le"])
def test_not_utf8(write_suite, capsys, encoding):
    p = write_suite(tiny_suite())
    p.write_bytes((p.read_text() + "description: Café\n").encode(encoding))
    _refused(capsys, p, "must be UTF-8")


def test_binary_include(write_suite, capsys, tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    p = write_suite({**tiny_suite(), "include": "blob.bin"})
    code, err = _validate(capsys, p)
    assert code == 2 and "blob.bin: not UTF-8" in err and "must be UTF-8" in err, err


def test_deep_nesting(write_suite, capsys):
    p = _text(write_suite, tail="description: " + "[" * 20000 + "]" * 20000 + "\n")
    t0 = time.perf_counter()
    _refused(capsys, p, "nested deeper than 100 levels")
    assert time.perf_counter() - t0 < 1


BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))


def test_alias_bomb(write_suite, tmp_path):
    p = _text(write_suite, tail=BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        read_yaml(p)
    assert time.perf_counter() - t0 < 1
    out = subprocess.run([sys.executable, "-m", "inversion_bench.cli", "validate", str(p)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "alias bomb" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_recursive_alias(write_suite, capsys):
    _refused(capsys, _text(write_suite, tail="description: &r [1, *r]\n"), "recursive")


# ---- item 8: message caps ---------------------------------------------------------------------

def test_many_unknown_keys_capped(write_suite, capsys):
    p = write_suite(tiny_suite())
    p.write_text(p.read_text() + yaml.safe_dump({f"k{i}": i for i in range(20000)}))
    err = _refused(capsys, p, "k0: unknown key", "... and 19990 more problem(s)")
    assert len(err.splitlines()) == 11 and len(err) < 5000


def test_huge_key_and_value_shortened(write_suite, capsys):
    s = tiny_suite()
    s["K" * 100_000] = 1
    s["defenses"][1]["params"]["alpha"] = "x" * 100_000
    err = _refused(capsys, write_suite(s), "unknown key")
    assert len(err) < 2000


@pytest.mark.parametrize("arg, expected", [("=5", "--set =5: empty key; expected KEY.PATH=VALUE"),
                                           ("run..device=cpu", "empty part in the key path 'run..device'")])
def test_set_empty_key(write_suite, capsys, arg, expected):
    _refused(capsys, write_suite(tiny_suite()), expected, extra=("--set", arg))


def test_set_value_is_bounded_too(write_suite, capsys):
    _refused(capsys, write_suite(tiny_suite()), "nested deeper than 100 levels",
             extra=("--set", "description=" + "[" * 5000 + "]" * 5000))
