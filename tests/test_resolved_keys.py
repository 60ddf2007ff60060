"""Keys follow the resolved data (issue 26, item 5): renaming or reordering identity folders of a folder
dataset gives every downstream product (data, evaluation model, prior, targets, attacks) a new key, even
when the dataset plugin's own ``identity()`` does not notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from inversion_bench.config import load_suite
from inversion_bench.data import image_folder
from inversion_bench.data.image_folder import ImageFolder
from inversion_bench.data.resolved import names_digest, resolved_identities
from inversion_bench.data.splits import SplitSpec
from inversion_bench.data.synthetic import SyntheticFaces
from inversion_bench.plan import make_plan
from tests.conftest import tiny_suite

NAMES = [f"s{k}" for k in range(1, 13)]  # natural order s1, s2, ..., s12; name order s1, s10, s11, s12, s2, ...


def _tree(root: Path) -> Path:
    for k, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for j in range(2):
            (root / name / f"{j}.png").write_bytes(b"x" * (10 * k + j + 1))  # listing reads names and sizes only
    return root


def _keys(write_suite, root: Path) -> dict[str, object]:
    suite = tiny_suite(
        dataset={"name": "image-folder", "params": {"root": str(root)}, "resolution": 16,
                 "split": {"private_identities": 4, "public_identities": "rest", "selection": "first",
                           "test_fraction": 0.5, "seed": 1}},
        prior={"name": "dcgan", "params": {"steps": 2}},
        attacks=[{"id": "gmi", "name": "gmi", "params": {"num_steps": 2}}],
    )
    plan = make_plan(load_suite(write_suite(suite)))
    return {"data": plan.data_key, "evaluator": plan.evaluator_key, "prior": plan.prior_key,
            "targets": set(plan.target_keys.values()), "attacks": {p.attack_key for p in plan.pairs},
            "pairs": {p.config_hash for p in plan.pairs}, "suite": plan.suite_hash}


def _all_differ(a: dict[str, object], b: dict[str, object]) -> None:
    for name in a:
        if isinstance(a[name], set):
            assert not a[name] & b[name], f"{name}: a key survived the change"  # type: ignore[operator]
        else:
            assert a[name] != b[name], f"{name}: key unchanged"


@pytest.fixture
def blind_identity(monkeypatch):
    """The folder plugin's own fingerprint reduced to its parameters (the suite text): only the resolved
    identities can tell the datasets apart."""
    monkeypatch.setattr(ImageFolder, "identity", lambda self: self.params.model_dump(mode="json"))


def test_renamed_identity_folder_changes_every_key(tmp_path, write_suite, blind_identity):
    root = _tree(tmp_path / "faces")
    before = _keys(write_suite, root)
    assert _keys(write_suite, root) == before  # deterministic
    (root / "s3").rename(root / "t3")  # a private identity (selection: first) gets another name
    _all_differ(before, _keys(write_suite, root))


def test_reordered_identities_change_every_key(tmp_path, write_suite, blind_identity, monkeypatch):
    root = _tree(tmp_path / "faces")
    natural = _keys(write_suite, root)
    # the incident of the issue: another sort order of the same folders changes which are private
    monkeypatch.setattr(image_folder, "natural_key", lambda name: name)
    assert ImageFolder(ImageFolder.Params(root=str(root))).listing()[0][:4] == ["s1", "s10", "s11", "s12"]
    _all_differ(natural, _keys(write_suite, root))


def test_swapped_folder_names_change_every_key(tmp_path, write_suite):
    root = _tree(tmp_path / "faces")
    before = _keys(write_suite, root)
    (root / "s1").rename(root / "tmp")
    (root / "s2").rename(root / "s1")
    (root / "tmp").rename(root / "s2")  # same names, same order: other images behind two of them
    _all_differ(before, _keys(write_suite, root))


def test_resolved_identities_name_the_split(tmp_path):
    root = _tree(tmp_path / "faces")
    plugin = ImageFolder(ImageFolder.Params(root=str(root)))
    got = resolved_identities(plugin, SplitSpec(private_identities=3, public_identities=2, selection="first"))
    assert got is not None and got["count"] == 12
    assert got["private"] == names_digest(["s1", "s2", "s3"]) and got["public"] == names_digest(["s4", "s5"])
    too_many = resolved_identities(plugin, SplitSpec(private_identities=30, selection="first"))
    assert too_many is not None and "private" not in too_many  # bench validate reports the split itself


def test_generated_data_adds_nothing():
    plugin = SyntheticFaces(SyntheticFaces.Params(num_identities=5, images_per_identity=2))
    assert resolved_identities(plugin, SplitSpec(private_identities=2)) is None
