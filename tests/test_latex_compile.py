"""``leaderboard.tex`` compiles with pdflatex as written: non-ASCII labels, Δ rows, the setup caption."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from inversion_bench.leaderboard import build
from inversion_bench.leaderboard.latex_text import tex_text
from tests.latex_build import compile_table
from tests.test_leaderboard import synthetic_records

SETUP = {
    "dataset": {"name": "synthetic-faces", "params": {"seed": 0}, "resolution": 16, "split": {"seed": 1}},
    "sizes": {"private_identities": 5, "public_identities": 5, "private_train_images": 45,
              "private_test_images": 15, "public_images": 60},
    "target": {"architecture": "small-cnn", "params": {"width": 8}, "epochs": 2, "checkpoint": None},
    "evaluation": {"architecture": "small-resnet", "params": {}, "epochs": 3, "checkpoint": None},
    "metrics": [{"name": "fid", "params": {"extractor": "inception"}, "keys": ["fid"]}],
    "overrides": ["attacks[0].params.steps=3"],
}


def unicode_board():
    records = copy.deepcopy(synthetic_records())
    labels = {"none": "Kein Schutz – α=0 ± Δ", "mid_reg": "MID ε→0 “reg” é中😀", "broken": "Broken_100% ↑↓ — ok"}
    for r in records:
        r["defense_label"] = labels[r["defense"]]
        r["attack_label"] = "PLG-MI ≥ β…" if r["attack"] == "plg_mi" else "GMI ×2"
        r["setup"] = SETUP
        r["attack_params"] = {"steps": 3, "λ": 0.5}
        r["attack_plugin"] = r["attack"]
    return build(records)


def test_latex_is_ascii_with_setup_and_labels() -> None:
    lb = unicode_board()
    tex = lb.to_latex(deltas=True)
    assert tex.isascii()
    assert r"$\alpha$" in tex and r"$\pm$" in tex and r"\resizebox" in tex and r"$\Delta$ " in tex
    assert "synthetic-faces at 16x16 px" in tex and "45 train / 15 test images" in tex
    assert "fid (Inception)" in tex and r"attacks[0].params.steps=3" in tex
    assert "fid (Inception)" in lb.to_markdown()
    assert tex_text("é") == r"\'{e}" and tex_text("中") == ""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (.ci/run installs it)")
@pytest.mark.parametrize("deltas", [False, True])
def test_latex_compiles_with_pdflatex(tmp_path: Path, deltas: bool) -> None:
    proc = compile_table(tmp_path, unicode_board().to_latex(deltas=deltas))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").is_file()
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Missing character" not in log
