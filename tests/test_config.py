"""Suite validation: every broken suite gives one clear message and exit code 2."""

from __future__ import annotations

import copy

import pytest
import yaml

from inversion_bench.cli import main
from inversion_bench.config import load_suite
from inversion_bench.errors import ConfigError
from tests.conftest import tiny_suite


def _validate(capsys, path, *extra):
    code = main(["validate", str(path), *extra])
    err = capsys.readouterr().err
    return code, err


def test_valid_tiny_suite(write_suite, capsys):
    p = write_suite(tiny_suite())
    assert main(["validate", str(p)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["defenses"][1].update(name="label_smothing"),
         "defenses[1].name: unknown defense 'label_smothing'. Did you mean 'label_smoothing'? Known defenses:"),
        (lambda s: s["defenses"][1]["params"].update(alpha="strong"),
         "defenses[1].params.alpha: must be a number, got 'strong'"),
        (lambda s: s["defenses"][1]["params"].update(alpha=1.5),
         "defenses[1].params.alpha: must be <= 1.0, got 1.5"),
        (lambda s: s.update(attackz=s.pop("attacks")),
         "attackz: unknown key. Did you mean 'attacks'?"),
        (lambda s: s.update(attacks=[]), "attacks: must not be empty"),
        (lambda s: s["dataset"].update(name="image-folder", params={"root": "/no/such/folder"}),
         "dataset.params.root: folder /no/such/folder does not exist"),
        (lambda s: s["attacks"][0].update(name="mi-fase"), "Did you mean 'mi-face'?"),
        (lambda s: s["defenses"][0]["params"].update(alpah=0.1),
         "defenses[0].params.alpah: unknown key. Did you mean 'alpha'?"),
        (lambda s: s.update(evaluation=copy.deepcopy(s["target"])), "evaluation.architecture: must differ"),
        (lambda s: s["run"].update(device="gpu"), "run.device: must be auto, cpu, cuda or cuda:N"),
        (lambda s: s["defenses"][1].update(id="../../outside"),
         "defenses[1].id: '../../outside' is not a valid id: use 1-64 letters, digits, '.', '_' or '-'"),
        (lambda s: s["attacks"][0].update(id="a/b"), "attacks[0].id: 'a/b' is not a valid id"),
        (lambda s: s["defenses"][0].update(id="x" * 300), "defenses[0].id: 'xxxxxxxxx"),
        (lambda s: s["defenses"][0].update(id="a\x00b"), "defenses[0].id: 'a\\x00b' is not a valid id"),
    ],
)
def test_broken_suites(write_suite, capsys, mutate, expected):
    data = tiny_suite()
    mutate(data)
    p = write_suite(data)
    code, err = _validate(capsys, p)
    assert code == 2, err
    assert str(p) in err
    assert expected in err
    assert "Traceback" not in err


def test_malformed_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndefenses: [\n  - oops: {\n")
    code, err = _validate(capsys, p)
    assert code == 2
    assert f"{p}: line" in err and "malformed YAML" in err


def test_include_merges_and_overrides(tmp_path):
    base = tiny_suite()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"include": "base.yaml", "name": "child",
                                                         "dataset": {"resolution": 24}}))
    loaded = load_suite(tmp_path / "child.yaml", ["seeds=[0, 1]", "run.device=cpu"])
    s = loaded.suite
    assert s.name == "child"
    assert s.dataset.resolution == 24
    assert s.dataset.params["num_identities"] == 10  # kept from the base
    assert s.seeds == [0, 1]


def test_include_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_suite(tmp_path / "a.yaml")


def test_validate_does_not_touch_existing_run_folder(write_suite, tmp_path, capsys):
    data = tiny_suite()
    data["defenses"][0]["params"]["alpha"] = 1.5
    p = write_suite(data)
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "records").mkdir(parents=True)
    marker = run_dir / "records" / "hard__mif__seed0.json"
    marker.write_text('{"keep": true}')
    before = {q: q.read_bytes() for q in run_dir.rglob("*") if q.is_file()}
    assert main(["run", str(p)]) == 2
    after = {q: q.read_bytes() for q in run_dir.rglob("*") if q.is_file()}
    assert before == after
    assert "must be <= 1.0, got 1.5" in capsys.readouterr().err


def test_duplicate_ids(write_suite, capsys):
    data = tiny_suite()
    data["defenses"][1]["id"] = "hard"
    code, err = _validate(capsys, write_suite(data))
    assert code == 2 and "share the id 'hard'" in err
