"""Attacks that fit their own GAN with the target's knowledge (KED-MI, PLG-MI): the generator is a
store product keyed by the target, shared by attack entries with the same generator settings, fitted
once (a rerun reuses it), and its time is reported apart from the attack's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_suite

from inversion_bench.cli import main
from inversion_bench.config import load_suite
from inversion_bench.jobs import job_graph
from inversion_bench.plan import make_plan

PLUGIN = '''
import os
import torch
from pydantic import Field
from inversion_bench import Attack, PluginParams, Reconstruction, attacks


class MeanParams(PluginParams):
    width: int = Field(1, ge=1)      # decides the "generator"
    samples: int = Field(1, ge=1)    # decides only the inversion


@attacks.register("test-class-means")
class ClassMeans(Attack):
    """Fits per-class means of the public images the target assigns to each class; inverts by
    returning them (plus a little noise)."""

    Params = MeanParams
    trains_generator = True

    def generator_spec(self):
        return {"width": self.params.width}

    def train_generator(self, target, ctx):
        with open(os.environ["FIT_LOG"], "a") as f:
            f.write(f"{ctx.label} width {self.params.width}\\n")
        x = ctx.public.images()
        with torch.no_grad():
            pseudo = target(x.to(ctx.device)).argmax(1).cpu()
        k = target.num_classes if hasattr(target, "num_classes") else int(pseudo.max()) + 1
        means = torch.stack([x[pseudo == c].mean(0) if (pseudo == c).any() else x.mean(0) for c in range(k)])
        return {"means": means, "config": {"width": self.params.width}}

    def run(self, target, identities, prior, ctx):
        means = ctx.trained["means"]
        n = self.params.samples
        noise = 0.01 * torch.randn(len(identities) * n, *means.shape[1:], generator=ctx.generator())
        images = (means[identities].repeat_interleave(n, 0) + noise).clamp(0, 1)
        return Reconstruction(images=images, labels=identities.repeat_interleave(n), info={"samples": n})
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """The plugin file, written once (a plugin name registers once per process)."""
    path = tmp_path_factory.mktemp("plugin") / "means.py"
    path.write_text(PLUGIN)
    return path


def _suite(tmp_path: Path, attacks: list[dict]) -> Path:
    data = tiny_suite(attacks=attacks, defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}])
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


ENTRIES = [{"id": "m1", "name": "test-class-means", "params": {"samples": 1}},
           {"id": "m2", "name": "test-class-means", "params": {"samples": 2}},
           {"id": "w2", "name": "test-class-means", "params": {"width": 2}},
           {"id": "mif", "name": "mi-face", "params": {"steps": 2, "restarts": 1}}]


def test_the_generator_is_a_product_shared_by_entries_and_fitted_once(tmp_path: Path, plugin: Path, monkeypatch,
                                                                       one_thread):
    fits = tmp_path / "fits.log"
    monkeypatch.setenv("FIT_LOG", str(fits))
    suite = _suite(tmp_path, ENTRIES)
    args = ["run", str(suite), "--plugin", str(plugin), "--no-tracking", "--no-figures"]
    assert main(args) == 0
    # two generator settings (width 1, width 2) against one target: two fits, not three
    assert sorted(fits.read_text().splitlines()) == ["hard seed 0 width 1", "hard seed 0 width 2"]
    run = tmp_path / "runs" / "tiny"
    recs = {p.name.split("__")[1]: json.loads(p.read_text()) for p in (run / "records").glob("*.json")}
    assert all(r["status"] == "ok" for r in recs.values())
    m1, m2, w2 = recs["m1"]["timings"], recs["m2"]["timings"], recs["w2"]["timings"]
    assert m1["generator_s"] == m2["generator_s"] > 0  # the same stored fit
    assert "generator_s" not in recs["mif"]["timings"]  # attacks without a GAN of their own
    assert {"attack_s", "target_s", "metrics_s"} <= set(w2)
    assert len(list((run / "store" / "generators").iterdir())) == 2
    # a rerun, and a new entry that differs only in how it inverts, fit nothing
    assert main(args) == 0
    suite = _suite(tmp_path, [*ENTRIES, {"id": "m3", "name": "test-class-means", "params": {"samples": 3}}])
    assert main(args) == 0
    assert len(fits.read_text().splitlines()) == 2
    m3 = json.loads((run / "records" / "hard__m3__seed0.json").read_text())
    assert m3["status"] == "ok" and m3["timings"]["generator_s"] == m1["generator_s"]


def test_plan_keys_the_generator_by_target_and_generator_settings(tmp_path: Path, plugin: Path):
    from inversion_bench.registry import load_plugin_file

    load_plugin_file(str(plugin))
    loaded = load_suite(_suite(tmp_path, ENTRIES))
    plan = make_plan(loaded)
    keys = {p.attack: p.gan_key for p in plan.pairs}
    assert keys["m1"] == keys["m2"] != keys["w2"] and keys["mif"] is None
    assert len({p.attack_key for p in plan.pairs}) == 4
    jobs = job_graph(plan, plan.pairs)
    gens = [j for j in jobs if j.kind == "attack_generator"]
    assert len(gens) == 2 and all(j.deps == ("target:hard:0",) for j in gens)
    attack = {j.pair.attack: j for j in jobs if j.kind == "attack"}
    assert attack["m2"].deps == ("target:hard:0", f"generator:{keys['m1']}")
    assert attack["mif"].deps == ("target:hard:0",)
    order = [j.id for j in jobs]
    assert all(order.index(d) < order.index(j.id) for j in jobs for d in j.deps)


def test_bench_list_says_which_attacks_train_their_own_gan(capsys):
    assert main(["list", "attacks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    origin = {lines[i].split()[0]: lines[i + 1] for i in range(len(lines) - 1) if lines[i].startswith("  ") and
              not lines[i].startswith("   ")}
    assert origin["ked-mi"].rstrip().endswith("access: white-box, trains its own GAN")
    assert origin["plg-mi"].rstrip().endswith("access: white-box, trains its own GAN")
    assert origin["ppa"].rstrip().endswith("access: white-box")
