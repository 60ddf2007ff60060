"""The defense plugin guide's walk-through (docs/guides/defense-plugin.md, step 5), on a tiny suite: a new
defense in a suite of its own, run on the store of an existing run folder, combined with it by `bench report`."""

from __future__ import annotations

import yaml

from inversion_bench.cli import main
from tests.conftest import tiny_suite

PLUGIN = '''
from inversion_bench import Defense, defenses


@defenses.register("my-defense")
class MyDefense(Defense):
    """Cross-entropy, like hard labels, but a plugin of its own."""
'''


def test_new_defense_joins_existing_results_without_recomputing_them(tmp_path, one_thread, capsys):
    runs = tmp_path / "runs"
    base = tiny_suite(defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}])
    base["run"] = {**base["run"], "output": str(runs)}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(base))
    assert main(["run", str(tmp_path / "quick.yaml"), "--no-figures", "--no-tracking"]) == 0
    store = runs / "tiny" / "store"
    evaluators = sorted(p.name for p in (store / "evaluators").iterdir())

    (tmp_path / "my_defense.py").write_text(PLUGIN)
    (tmp_path / "mine.yaml").write_text(
        "include: quick.yaml\nname: mine\n"
        "defenses: [{id: mine, name: my-defense, label: My defense}]\nbaseline: mine\n")
    assert main(["run", str(tmp_path / "mine.yaml"), "--plugin", str(tmp_path / "my_defense.py"),
                 "--store", str(store), "--no-figures", "--no-tracking"]) == 0
    assert not (runs / "mine" / "store").exists()  # everything went to the shared store
    assert sorted(p.name for p in (store / "evaluators").iterdir()) == evaluators  # not retrained

    out = tmp_path / "compare"
    assert main(["report", str(runs / "tiny"), str(runs / "mine"), "--baseline", "hard", "--output", str(out),
                 "--no-figures"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "My defense" in md and "hard (baseline)" in md
    assert (out / "index.html").is_file()
