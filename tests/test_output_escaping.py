"""Escaping of free text in every output (``leaderboard.escape``, the LaTeX and HTML writers, figure
labels): hostile labels cannot inject CSV formulas, Markdown columns, raw HTML, LaTeX or matplotlib
mathtext; and the StyleGAN2-ADA adapter (``attacks.generators.stylegan2_ada``) calls the discriminator
with batches its minibatch-std layer accepts."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from inversion_bench.attacks.generators.stylegan2_ada import (
    StyleGAN2ADAGenerator,
    grouped_call,
    mbstd_group_size,
)
from inversion_bench.attacks.gmi import GenerativeModelInversion, GMIParams
from inversion_bench.attacks.ppa import PlugAndPlayAttack, PPAParams
from inversion_bench.interfaces import AttackContext
from inversion_bench.leaderboard.equal_utility import to_markdown as eu_markdown
from inversion_bench.leaderboard.escape import csv_text, md_text, plot_text, write_csv
from inversion_bench.leaderboard.latex import latex_escape
from inversion_bench.leaderboard.toy2d import draw_toy2d
from inversion_bench.models import build_classifier
from tests.conftest import run_tiny, tiny_suite

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402

FORMULA = '=HYPERLINK("http://x")'
PIPE_HTML = "a|b<script>"
MATH = r"$\notacommand$"
ATTACK = r"@mif|<b>x</b> $\notacommand$"
FIGURES = ("privacy_utility", "qualitative", "embedding", "gradient_stability")


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory) -> Path:
    """The leaderboard folder of a tiny run (3 defenses x 1 attack x 1 seed) with hostile labels."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = tiny_suite()
    data["defenses"][0]["label"] = FORMULA
    data["defenses"][1]["label"] = PIPE_HTML
    data["defenses"].append({"id": "ls", "name": "label_smoothing", "params": {"alpha": 0.1}, "label": MATH})
    data["attacks"][0]["label"] = ATTACK
    return run_tiny(data, tmp) / "leaderboard"


def _cells(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# CSV


def test_csv_text_cells_are_neutralised(board_dir: Path) -> None:
    board = {r["defense"]: r for r in _cells(board_dir / "leaderboard.csv")}
    assert board["hard"]["defense_label"] == "'" + FORMULA
    assert board["negls"]["defense_label"] == PIPE_HTML and board["ls"]["defense_label"] == MATH
    records = _cells(board_dir / "records.csv")
    assert {r["defense_label"] for r in records if r["defense"] == "hard"} == {"'" + FORMULA}
    assert {r["attack_label"] for r in records} == {"'" + ATTACK}
    points = _cells(board_dir / "figures" / "privacy_utility.csv")
    assert "'" + FORMULA in {r["defense"] for r in points} and {r["attack"] for r in points} == {"'" + ATTACK}
    for path in [board_dir / "leaderboard.csv", board_dir / "records.csv", *(board_dir / "figures").glob("*.csv")]:
        for row in _cells(path):
            for key, value in row.items():
                assert not value.startswith(("=", "+", "@")) and not re.match(r"-[^\d.]", value), (path, key, value)
    # numbers stay numbers: the raw columns read back as floats, negative values included
    frame = pd.read_csv(board_dir / "leaderboard.csv")
    assert pd.api.types.is_float_dtype(frame["mif/attack_acc@1_mean"])
    assert (pd.read_csv(board_dir / "records.csv")["value"].dtype.kind == "f")


def test_csv_text_rules(tmp_path: Path) -> None:
    for text in ("=1+2", "+x", "-cmd", "@SUM(A1)", "\tx", "\rx", "-1+2", "-"):
        assert csv_text(text) == "'" + text
    for value in ("-0.5", "+3", "-1e-05", "abc", "", None, -0.5, 3, float("nan")):
        out = csv_text(value)
        assert out is value or out == value or (out != out and value != value)
    frame = pd.DataFrame({"label": ["=cmd", "-5", "ok", None], "x": [-1.5, -2.0, 0.0, 3.0], "n": [-1, 0, 1, 2],
                          "=head": ["a", "b", "c", "d"]})
    write_csv(frame, tmp_path / "f.csv")
    back = pd.read_csv(tmp_path / "f.csv")
    assert back["label"].tolist()[:3] == ["'=cmd", -5, "ok"] or back["label"].tolist()[:3] == ["'=cmd", "-5", "ok"]
    assert back["x"].tolist() == [-1.5, -2.0, 0.0, 3.0] and back["n"].tolist() == [-1, 0, 1, 2]
    assert "'=head" in back.columns


# --------------------------------------------------------------------------------------------------
# Markdown, HTML, LaTeX


def _columns(line: str) -> int:
    """Cells of a GitHub table row: ``|`` not escaped by a backslash separate them."""
    return sum(1 for m in re.finditer(r"\\.|\|", line.strip()) if m.group() == "|") - 1


def test_markdown_rows_keep_their_columns_and_no_html(board_dir: Path) -> None:
    md = (board_dir / "leaderboard.md").read_text()
    assert "<script" not in md and "<b>" not in md
    assert "a\\|b&lt;script&gt;" in md and "&lt;b&gt;x&lt;/b&gt;" in md
    lines = md.splitlines()
    tables = 0
    for i, line in enumerate(lines):
        if line.startswith("| Defense"):
            tables += 1
            end = next((k for k in range(i, len(lines)) if not lines[k].startswith("|")), len(lines))
            body = lines[i:end]
            assert len(body) >= 3 and all(_columns(ln) == _columns(line) for ln in body), body
    assert tables == 2  # the main table and the Δ table
    assert sum(1 for ln in lines if ln.startswith("|") and "a\\|b" in ln) == 2


def test_equal_utility_markdown_escapes_labels() -> None:
    table = pd.DataFrame([{"group": "g|1<i>", "param": "alpha", "attack": "a", "attack_label": PIPE_HTML,
                           "baseline": "b", "baseline_test_accuracy": 0.5, "value": float("nan"),
                           "baseline_value": 0.4, "crossings": 0, "reason": "x|y <img src=x>"},
                          {"group": "g", "param": "", "attack": "a", "attack_label": "A|B", "baseline": "b",
                           "baseline_test_accuracy": 0.5, "value": 0.3, "baseline_value": 0.4, "crossings": 1,
                           "reason": ""}])
    md = eu_markdown(table)
    assert "<" not in md.replace("&lt;", "")
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(rows) == 4 and all(_columns(ln) == 6 for ln in rows), rows


def test_md_text() -> None:
    assert md_text("a|b<script>&") == "a\\|b&lt;script&gt;&amp;"
    assert md_text(r"$\x$ `c`") == r"\$\\x\$ \`c\`"
    assert md_text("a\\|b\nc") == "a\\\\\\|b c"  # a backslash cannot un-escape the pipe
    cell = md_text("a\\|b")
    assert _columns(f"| {cell} | x |") == 2


def test_html_page_escapes_labels(board_dir: Path) -> None:
    page = (board_dir / "index.html").read_text()
    assert "a|b&lt;script&gt;" in page and PIPE_HTML not in page
    assert page.count("<script") == 1 and "<b>x</b>" not in page  # the page's own script only
    assert "=HYPERLINK(&quot;http://x&quot;)" in page


def test_latex_escapes_labels(board_dir: Path) -> None:
    tex = (board_dir / "leaderboard.tex").read_text()
    assert r"\$\textbackslash{}notacommand\$" in tex
    assert r"a\textbar{}b\textless{}script\textgreater{}" in tex
    assert MATH not in tex and PIPE_HTML not in tex
    assert latex_escape("\\$&%_#{}~^") == (r"\textbackslash{}\$\&\%\_\#\{\}\textasciitilde{}"
                                           r"\textasciicircum{}")
    assert "\n" not in latex_escape("a\n\nb")


# --------------------------------------------------------------------------------------------------
# figures


def test_every_figure_is_drawn_with_a_mathtext_label(board_dir: Path) -> None:
    for fig in FIGURES:
        for ext in ("png", "svg"):
            assert (board_dir / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
    page = (board_dir / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert "not drawn" not in page
    svg = (board_dir / "figures" / "privacy_utility.svg").read_text()
    assert "notacommand" in svg  # drawn as text, not parsed as math


def test_toy2d_figure_with_a_mathtext_title(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    points, labels = torch.rand(8, 2), torch.tensor([0, 1] * 4)
    paths = draw_toy2d([(MATH, model, None, None), (r"_x $a^$", model, None, None)], points, labels,
                       tmp_path / "toy", grid_size=20)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_plot_text() -> None:
    assert plot_text(MATH) == r"\$\notacommand\$"
    assert plot_text("_hidden") == "\u200b_hidden"


# --------------------------------------------------------------------------------------------------
# StyleGAN2-ADA discriminator batching


def _grouped_gen(group_size: int | None = 4) -> StyleGAN2ADAGenerator:
    nets = tiny_stylegan.make_pickle_dict(mbstd_group_size=group_size)
    return StyleGAN2ADAGenerator(nets["G_ema"], nets["D"]).eval()


@pytest.mark.parametrize("n", range(1, 10))
def test_discriminator_accepts_every_batch_size(n: int) -> None:
    gen = _grouped_gen()
    assert mbstd_group_size(gen.d) == 4
    torch.manual_seed(n)
    x = torch.rand(n, 3, 16, 16, requires_grad=True)
    if n > 4 and n % 4:
        with pytest.raises(RuntimeError, match="invalid"):  # the tiny D groups like the official one
            gen.d(x * 2 - 1, None)
    out = gen.discriminator_logits(x)
    assert out.shape == (n,) and torch.isfinite(out).all()
    raw = x.detach() * 2 - 1
    head = n - n % 4 if n > 4 else n
    with torch.no_grad():
        assert torch.allclose(out[:head], gen.d(raw[:head], None).flatten(), atol=1e-6)  # unchanged rows
        if head < n:  # the tail: scored in a full group with the real rows before it
            assert torch.allclose(out[head:], gen.d(raw[n - 4:], None).flatten()[4 - n % 4:], atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every image gets a gradient


def test_group_size_is_read_from_the_network() -> None:
    assert mbstd_group_size(_grouped_gen(2).d) == 2
    assert mbstd_group_size(_grouped_gen(None).d) is None  # one group of the whole batch: no constraint
    assert mbstd_group_size(tiny_stylegan.TinyD()) == 4  # no layer found: the official default
    d = _grouped_gen(2).d
    assert grouped_call(d, torch.rand(5, 3, 16, 16), 2).shape == (5, 1)
    assert _grouped_gen(None).discriminator_logits(torch.rand(7, 3, 16, 16)).shape == (7,)


def _target() -> nn.Module:
    torch.manual_seed(1)
    return build_classifier("small-cnn", {"width": 4}, 6, 16, {}).eval()


def _ctx() -> AttackContext:
    return AttackContext(device=torch.device("cpu"), seed=0, batch_size=64, progress=False, resolution=16)


def _seen_batches(gen: StyleGAN2ADAGenerator) -> list[int]:
    sizes: list[int] = []
    gen.d.register_forward_hook(lambda m, args, out: sizes.append(int(args[0].shape[0])))
    return sizes


def test_gmi_with_grouped_discriminator_batch_5() -> None:
    gen = _grouped_gen()
    sizes = _seen_batches(gen)
    params = GMIParams(num_steps=2, num_restarts=3, batch_size=5)  # 3 identities x 3 restarts: batches 5, 4
    rec = GenerativeModelInversion(params).run(_target(), torch.tensor([1, 2, 4]), gen, _ctx())
    assert rec.images.shape == (3, 3, 16, 16) and sizes and all(s <= 4 or s % 4 == 0 for s in sizes)


def test_ppa_with_grouped_discriminator_batch_5() -> None:
    gen = _grouped_gen()
    sizes = _seen_batches(gen)
    params = PPAParams(search_space_size=24, num_candidates=4, num_steps=2, samples_per_target=2, iterations=2,
                       discriminator_weight=0.5, batch_size=5)
    rec = PlugAndPlayAttack(params).run(_target(), torch.tensor([0, 3, 5]), gen, _ctx())
    assert rec.images.shape[0] == 6 and sizes and all(s <= 4 or s % 4 == 0 for s in sizes)
