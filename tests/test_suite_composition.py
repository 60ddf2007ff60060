"""Suite composition and overrides (``config``, ``config_overrides``): `<key>+:` in includes,
`--set` by bracket and by id, rerunning a run folder's suite.json, and the split checked by
`bench validate`/`doctor` before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_suite

from inversion_bench.cli import main
from inversion_bench.config import load_suite, validate_suite
from inversion_bench.data import TensorFaces
from inversion_bench.data.image_folder import ImageFolder
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.errors import ConfigError
from inversion_bench.plan import make_plan
from inversion_bench.registry import load_plugins

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"


@pytest.fixture(autouse=True)
def _plugins():
    load_plugins()


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def test_readme_walk_through_extends_the_included_defenses(tmp_path):
    """docs/guides/defense-plugin.md step 3: include defenses.yaml, list yours under defenses+."""
    path = _write(tmp_path / "mine.yaml", {"include": str(SUITES / "defenses.yaml"), "name": "with-mine",
                                           "defenses+": [{"id": "mine", "name": "label_smoothing",
                                                          "params": {"alpha": 0.2}}]})
    loaded = load_suite(path)
    base = load_suite(SUITES / "defenses.yaml").suite.defense_ids()
    assert loaded.suite.defense_ids() == [*base, "mine"]
    assert loaded.suite.baseline == "hard"
    guide = (ROOT / "docs" / "guides" / "defense-plugin.md").read_text()
    assert "`include: defenses.yaml` and list it under `defenses+:`" in guide


def test_plus_keys_merge_rules(tmp_path):
    base = _write(tmp_path / "base.yaml", tiny_suite())
    over = _write(tmp_path / "over.yaml", {"include": "base.yaml", "seeds+": [1, 2], "run": {"threads": 1},
                                           "metrics+": ["calibration"]})
    s = load_suite(over).suite
    assert s.seeds == [0, 1, 2]
    assert s.run.device == "cpu" and s.run.threads == 1  # mappings merge key by key
    assert [m.name for m in s.metrics][-1] == "calibration"
    assert base.is_file()
    # without a base the list is just the items
    alone = tiny_suite()
    alone["defenses+"] = alone.pop("defenses")
    assert load_suite(_write(tmp_path / "alone.yaml", alone)).suite.defense_ids() == ["hard", "negls"]


@pytest.mark.parametrize("extra,needle", [
    ({"seeds+": 3}, "seeds+: extends a list"),
    ({"seeds+": [1], "seeds": [0]}, "both seeds: and seeds+:"),
])
def test_plus_keys_errors_name_the_file_and_key(tmp_path, extra, needle):
    _write(tmp_path / "base.yaml", tiny_suite())
    path = _write(tmp_path / "over.yaml", {"include": "base.yaml", **extra})
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_set_by_bracket_and_by_id(tmp_path):
    path = _write(tmp_path / "s.yaml", tiny_suite())
    for text in ["attacks[0].params.steps=5", "attacks.0.params.steps=5", "attacks.mif.params.steps=5"]:
        assert load_suite(path, [text]).suite.attacks[0].params["steps"] == 5, text
    assert load_suite(path, ["defenses.negls.params.alpha=-0.1"]).suite.defenses[1].params["alpha"] == -0.1


@pytest.mark.parametrize("text,needle", [
    ("attacks[0].params.steps=abc", "--set attacks[0].params.steps=abc: attacks[0].params.steps: must be an integer"),
    ("attacks.nope.params.steps=1", "--set attacks.nope.params.steps=1: "),
    ("attacks[0.params=1", "--set attacks[0.params=1: malformed key path"),
    ("run.device=gpu", "--set run.device=gpu: run.device:"),
])
def test_set_errors_name_the_flag(tmp_path, text, needle):
    path = _write(tmp_path / "s.yaml", tiny_suite())
    with pytest.raises(ConfigError) as exc:
        load_suite(path, [text])
    assert str(exc.value).startswith(needle), str(exc.value)


def test_a_file_error_still_names_the_file(tmp_path):
    path = _write(tmp_path / "s.yaml", tiny_suite(seeds=["x"]))
    with pytest.raises(ConfigError) as exc:
        load_suite(path, ["run.device=cpu"])
    assert str(exc.value).startswith(f"{path}: seeds[0]")


def test_suite_json_reruns_the_resolved_suite(tmp_path, capsys):
    loaded = load_suite(_write(tmp_path / "s.yaml", tiny_suite()), ["attacks[0].params.steps=4"])
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    plan = make_plan(loaded)
    suite_json = run_dir / "suite.json"
    suite_json.write_text(json.dumps({"source": "s.yaml", "suite": loaded.suite.model_dump(mode="json"),
                                      "suite_hash": plan.suite_hash}))
    again = load_suite(suite_json)
    assert make_plan(again).suite_hash == plan.suite_hash
    assert again.suite.attacks[0].params["steps"] == 4
    assert main(["validate", "--schema-only", str(suite_json)]) == 0
    bad = run_dir / "bad.json"
    bad.write_text(json.dumps({"source": "x", "suite": {**loaded.suite.model_dump(mode="json"), "seeds": "x"}}))
    assert main(["validate", "--schema-only", str(bad)]) == 2
    assert f"{bad}: seeds" in capsys.readouterr().err
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match="bad.json: has no \"suite\" mapping"):
        load_suite(bad)


def _split_suite(tmp_path, split, **dataset_params) -> Path:
    suite = tiny_suite()
    suite["dataset"] = {**suite["dataset"], "split": split,
                        "params": {**suite["dataset"]["params"], **dataset_params}}
    return _write(tmp_path / "split.yaml", suite)


def test_validate_rejects_an_impossible_split(tmp_path, capsys):
    path = _split_suite(tmp_path, {"private_identities": 30, "public_identities": 20}, num_identities=40)
    assert main(["validate", str(path)]) == 2
    assert "dataset.split" in capsys.readouterr().err
    assert main(["doctor", str(path)]) == 2
    assert "dataset.split" in capsys.readouterr().out
    path = _split_suite(tmp_path, {"private_identities": 30, "public_identities": 10}, num_identities=40)
    assert main(["validate", str(path)]) == 0


def test_validate_rejects_unknown_identity_names(tmp_path, capsys):
    path = _split_suite(tmp_path, {"private_identities": ["id0001", "id0002", "s99"]})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "dataset.split.private_identities" in err and "s99" in err
    path = _split_suite(tmp_path, {"private_identities": ["id0003", "id0001"], "public_identities": ["id0005"]})
    assert main(["validate", str(path)]) == 0


def test_named_split_orders_classes_as_listed():
    import torch

    names = ["a", "b", "c", "d", "e"]
    faces = TensorFaces(torch.zeros(15, 3, 1, 1, dtype=torch.uint8), torch.arange(5).repeat_interleave(3), names)
    sp = make_splits(faces, SplitSpec(private_identities=["d", "b"], public_identities=["a"]))
    assert sp.private_names == ["d", "b"] and sp.public_names == ["a"]
    sp = make_splits(faces, SplitSpec(private_identities=["d", "b"], public_identities="rest", selection="first"))
    assert sp.public_names == ["a", "c", "e"]
    with pytest.raises(ValueError, match="disjoint"):
        SplitSpec(private_identities=["a", "b"], public_identities=["b"])


def _image_folder(root: Path, names: list[str]) -> ImageFolder:
    for n in names:
        (root / n).mkdir(parents=True)
        for k in range(2):
            (root / n / f"{k}.png").write_bytes(b"")
    return ImageFolder(ImageFolder.Params(root=str(root)))


def test_image_folder_sorts_identities_naturally(tmp_path):
    folder = _image_folder(tmp_path / "nat", ["s10", "s2", "s1"])
    assert [n for n, _ in folder._identity_folders()] == ["s1", "s2", "s10"]
    assert folder.listing() == (["s1", "s2", "s10"], [2, 2, 2])
    assert folder.identity()["order"] == "natural"
    plain = _image_folder(tmp_path / "plain", ["alice", "bob"])  # same order as before: same store keys
    assert "order" not in plain.identity()


def test_quickstart_keys_unchanged():
    loaded = validate_suite(yaml.safe_load((SUITES / "quickstart.yaml").read_text()), "quickstart.yaml")
    assert make_plan(loaded).data_key == "c4e6b8121747872f"
