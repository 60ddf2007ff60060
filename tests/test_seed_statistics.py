"""The defense test's unit is the trained model (issue 25): simulations of a crossed random-effects model,
the A/A case, a table whose seeds suffice, and columns that never mix attack configurations.

The simulated per-identity attack accuracy of defense ``d``, seed (trained model) ``s`` and identity ``i`` is
``mu_d + a_ds + b_i + e_dsi`` with ``a ~ N(0, sa^2)`` (the trained model), ``b ~ N(0, sb^2)`` (the identity,
shared by every defense and seed: the same identities are attacked on every seed) and ``e ~ N(0, se^2)``.
Two settings: identity-dominated, fitted to the quickstart (per-identity values correlate across seeds with
r = sb^2 / (sb^2 + se^2) = 0.76, FINDINGS 11; seed SD of a mean about 3 pp) and seed-dominated (MI-Face: two
trainings of one defense 21 pp apart, FINDINGS 11).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest

from inversion_bench.leaderboard import build, build_from_dirs
from inversion_bench.leaderboard.model import ReportSettings
from inversion_bench.leaderboard.significance import adjust, sign_flip_test, two_sample_test
from inversion_bench.leaderboard.stats import crossed_interval
from inversion_bench.leaderboard.uncertainty import defense_test
from inversion_bench.results import write_record
from tests.test_leaderboard import make_record, md_tables

SETTINGS = {"identity-dominated": (0.03, 0.25, 0.14), "seed-dominated": (0.12, 0.08, 0.15)}
"""(sa, sb, se) of the simulated crossed model."""

IDENTITIES = 20


def simulate(rng: np.random.Generator, sa: float, sb: float, se: float, seeds: int, effects: list[float],
             b: np.ndarray | None = None) -> np.ndarray:
    """Per-identity values of a baseline and ``len(effects)`` defenses: shape ``(defenses + 1, seeds, I)``."""
    b = sb * rng.standard_normal(IDENTITIES) if b is None else b
    mus = [0.0, *effects]
    return np.stack([mu + sa * rng.standard_normal((seeds, 1)) + b[None, :]
                     + se * rng.standard_normal((seeds, IDENTITIES)) for mu in mus])


def marks(table: np.ndarray, settings: ReportSettings) -> list[bool]:
    """The defense tests of every defense of a simulated table against its baseline (row 0), BH-adjusted."""
    seeds = list(range(table.shape[1]))
    means = table.mean(axis=2)
    tests = [defense_test(list(means[d]), seeds, list(means[0]), seeds, settings, settings.significance)
             for d in range(1, table.shape[0])]
    p = adjust([t["p_value"] if t["testable"] else np.nan for t in tests], settings.correction)
    return [bool(t["testable"] and q < settings.significance) for t, q in zip(tests, p, strict=True)]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_no_true_effect_marks_at_most_the_level_and_power_is_reported(setting: str, capsys) -> None:
    """5 seeds: the share of marked Δs under no effect stays within 5 % (+ Monte Carlo tolerance); power at a
    true effect of 2 seed standard deviations (of a seed's mean) is printed for both tests."""
    sa, sb, se = SETTINGS[setting]
    rng = np.random.default_rng(25)
    settings = ReportSettings()
    tables = 300
    null = [m for _ in range(tables) for m in marks(simulate(rng, sa, sb, se, 5, [0.0, 0.0, 0.0]), settings)]
    share = float(np.mean(null))
    tolerance = 2.5 * np.sqrt(0.05 * 0.95 / len(null))
    assert share <= 0.05 + tolerance, share
    seed_sd = float(np.sqrt(sa**2 + se**2 / IDENTITIES))
    power: dict[str, dict[int, float]] = {}
    for test in ("two-sample", "paired"):
        s = ReportSettings(seed_test=test)
        power[test] = {n: float(np.mean([m for _ in range(150)
                                         for m in marks(simulate(rng, sa, sb, se, n, [-2 * seed_sd]), s)]))
                       for n in (3, 4, 5, 6, 8)}
    with capsys.disabled():
        print(f"\n[{setting}] no effect, 5 seeds: {100 * share:.1f} % of {len(null)} Δs marked (BH); power at "
              "-2 seed SD (one test in the table): " + "; ".join(
                  f"{test}: " + ", ".join(f"{n} seeds {100 * p:.0f} %" for n, p in by_n.items())
                  for test, by_n in power.items()))
    assert power["two-sample"][3] == 0.0 and power["paired"][5] == 0.0  # below their minimum seeds
    assert power["two-sample"][5] > 0.5 and power["two-sample"][8] >= power["two-sample"][4]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_crossed_interval_covers_the_mean_over_new_seeds_and_identities(setting: str, capsys) -> None:
    """The 95 % crossed interval at 5 seeds x 20 identities covers the population mean 92-98 % of the time,
    where resampling identities independently within each seed would not (FINDINGS 11)."""
    sa, sb, se = SETTINGS[setting]
    rng = np.random.default_rng(7)
    reps = 400
    covered = 0
    for _ in range(reps):
        y = simulate(rng, sa, sb, se, 5, [])[0]
        low, high, _ = crossed_interval(y, 0.95, 1000, seed=int(rng.integers(1 << 31)))
        covered += low <= 0.0 <= high
    coverage = covered / reps
    with capsys.disabled():
        print(f"\n[{setting}] crossed 95 % interval, 5 seeds x {IDENTITIES} identities: coverage "
              f"{100 * coverage:.1f} % over {reps} simulated cells")
    assert 0.92 <= coverage <= 0.98


def test_a_a_two_trainings_of_one_defense_are_never_marked() -> None:
    """Two seeds of the same defense relabelled as two defenses (the reviewer's A/A check): one trained
    model each cannot be tested; and over many simulated A/A tables with 6 paired seeds (the paired test's
    minimum) the mark rate stays at the level."""
    rng = np.random.default_rng(3)
    sa, sb, se = SETTINGS["seed-dominated"]
    y = simulate(rng, sa, sb, se, 2, [])[0]  # one defense, two trainings
    y[1] += y[0].mean() - y[1].mean() - 0.2  # two trainings 20 pp apart, as LS x MI-Face seeds 0 and 1 were
    recs = []
    for k, (did, label) in enumerate((("ls", "LS seed 0"), ("ls-again", "LS seed 1"))):
        per = {str(i): float(v) for i, v in enumerate(y[k])}
        r = make_record((did, label, k), ("mi-face", "MI-Face", 0), 0,
                        {"test_accuracy": 0.9, "attack_acc@1": float(y[k].mean())})
        r["metric_details"] = {"attack_accuracy": {"per_identity_acc@1": per, "identities_attacked": IDENTITIES,
                                                   "identities_without_images": 0}}
        r["baseline"] = "ls"
        recs.append(r)
    lb = build(recs)
    cell = lb.cell("ls-again", "mi-face/attack_acc@1")
    assert cell["p_identity"] < 0.01  # the identity-level test does call these two models different ...
    assert not cell["significant"] and not cell["testable"]  # ... the defense test never marks it
    assert cell["test"].startswith("not testable with 1 seed; 4 needed")
    assert "*" not in "".join(v for row in md_tables(lb.to_markdown())[1] for v in row.values())
    # many A/A tables at 6 seeds, unadjusted: both exact tests keep their level
    for test in ("two-sample", "paired"):
        settings = ReportSettings(correction="none", seed_test=test)
        rates = [m for _ in range(400) for m in marks(simulate(rng, sa, sb, se, 6, [0.0]), settings)]
        assert np.mean(rates) <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / len(rates)), test


def test_seed_level_p_values_equal_an_independent_enumeration() -> None:
    """The table's p-value is the exact test over per-seed means: two-sample (5 seeds) over the 252 splits,
    paired (6 shared seeds) by brute force over the 64 sign vectors."""
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.5, 0.05, 6), rng.normal(0.55, 0.05, 6)
    t5 = defense_test(list(a[:5]), list(range(5)), list(b[:5]), list(range(5)), ReportSettings(), 0.05)
    pooled = np.concatenate([a[:5], b[:5]])
    obs = abs(a[:5].mean() - b[:5].mean())
    splits = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()) >= obs - 1e-12
              for c in itertools.combinations(range(10), 5)]
    assert len(splits) == 252 and t5["testable"] and t5["p_value"] == pytest.approx(np.mean(splits))
    assert t5["p_value"] == pytest.approx(two_sample_test(a[:5], b[:5]))
    assert "two-sample permutation test over seeds (exact; 5 vs 5 seeds)" in t5["test"]
    paired = ReportSettings(seed_test="paired")
    t = defense_test(list(a), list(range(6)), list(b), list(range(6)), paired, 0.05)
    d = a - b
    brute = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product((1, -1), repeat=6)])
    assert t["testable"] and t["p_value"] == pytest.approx(brute) == pytest.approx(sign_flip_test(d))
    assert "paired sign-flip permutation test over seeds (exact; 6 seeds, 6 non-zero)" in t["test"]
    paired5 = defense_test(list(a[:5]), list(range(5)), list(b[:5]), list(range(5)), paired, 0.05)
    assert not paired5["testable"] and paired5["seeds_needed"] == 6
    assert paired5["test"].startswith("not testable with 5 seeds; 6 needed")
    t3 = defense_test(list(a[:3]), [0, 1, 2], list(b[:3]), [0, 1, 2], ReportSettings(), 0.05)
    assert not t3["testable"] and t3["test"].startswith("not testable with 3 seeds; 4 needed")


def seeded_records(n_seeds: int, effect: float, settings: dict | None = None) -> list[dict]:
    """Hard labels and a strong defense (``effect`` lower attack accuracy) and a null defense, ``n_seeds`` each."""
    rng = np.random.default_rng(5)
    recs = []
    for k, (did, label, mu) in enumerate((("hard", "Hard labels", 0.8), ("strong", "Strong", 0.8 + effect),
                                          ("null", "Null", 0.8))):
        for s in range(n_seeds):
            r = make_record((did, label, k), ("gmi", "GMI", 0), s,
                            {"test_accuracy": 0.9, "attack_acc@1": float(mu + rng.normal(0, 0.02))})
            r["baseline"] = "hard"
            if settings is not None:
                r["report_settings"] = settings
            recs.append(r)
    return recs


def test_enough_seeds_mark_with_the_configured_correction() -> None:
    lb = build(seeded_records(5, -0.3))
    strong, null = lb.cell("strong", "gmi/attack_acc@1"), lb.cell("null", "gmi/attack_acc@1")
    assert strong["testable"] and strong["significant"] and strong["p_value"] == pytest.approx(2 / 252)
    assert not null["significant"]
    tested = lb.data[lb.data["testable"]]
    assert set(tested["column"]) == {"test_accuracy", "gmi/attack_acc@1", "worst_case"} and len(tested) == 6
    assert lb.cell("strong", "test_accuracy")["p_value"] == 1.0  # every value equal
    assert list(tested["p_adjusted"]) == pytest.approx(list(adjust(list(tested["p_value"]), "bh")))
    md = lb.to_markdown()
    assert "Benjamini–Hochberg (false discovery rate) adjusted p-values" in md and "Δ marks" not in md
    delta = md_tables(md)[1]
    assert next(r for r in delta if r["Defense"] == "Strong")["GMI [white-box]: attack_acc@1 (pp) ↓"].endswith("*")
    # Holm over the same 6 tests must reach 0.05 / 6: 4 seeds (smallest p 2/70) cannot, 5 (2/252) can
    holm = build(seeded_records(4, -0.3, {"correction": "holm"}))
    assert holm.settings.correction == "holm"
    cell = holm.cell("strong", "gmi/attack_acc@1")
    assert not cell["testable"] and cell["seeds_needed"] == 5 and not cell["significant"]
    assert "not testable with 4 seeds per defense; 5 needed at 0.05" in holm.to_markdown()
    holm5 = build(seeded_records(5, -0.3, {"correction": "holm"}))
    cell = holm5.cell("strong", "gmi/attack_acc@1")
    tested = holm5.data[holm5.data["testable"]]
    assert list(tested["p_adjusted"]) == pytest.approx(list(adjust(list(tested["p_value"]), "holm")))
    assert cell["p_adjusted"] == pytest.approx(6 * 2 / 252)
    assert cell["significant"] and "Holm (family-wise error rate)" in holm5.to_markdown()
    # the paired test needs 6 seeds: with 5 the same table says so
    paired = build(seeded_records(5, -0.3, {"seed_test": "paired"}))
    assert "not testable with 5 seeds per defense; 6 needed at 0.05" in paired.to_markdown()


def test_one_attack_id_with_two_configurations_is_two_columns(tmp_path: Path) -> None:
    """PPA with 8 candidates in one folder and 16 in the other (a --set rerun): two columns, labelled with the
    differing parameter; no Δ or test across them."""
    def recs(seed: int, candidates: int, defenses: tuple[str, ...]) -> list[dict]:
        out = []
        for did in defenses:
            k = ("hard", "ls").index(did)
            r = make_record((did, did.upper(), k), ("ppa", "PPA", 0), seed,
                            {"test_accuracy": 0.9, "attack_acc@1": 0.5 + 0.1 * k + 0.01 * candidates})
            r.update(attack_plugin="ppa", attack_params={"num_candidates": candidates, "num_steps": 30},
                     defense_plugin="label_smoothing", defense_params={"alpha": 0.1 * k})
            r["config_hash"] = f"{did}-{seed}-{candidates}"
            r.update(baseline="hard", directions={"test_accuracy": "higher", "attack_acc@1": "lower"})
            out.append(r)
        return out

    a, b = tmp_path / "a", tmp_path / "b"
    for r in recs(0, 8, ("hard", "ls")):
        write_record(a / "records", r)
    for r in recs(1, 16, ("ls",)):  # only LS was rerun, with 16 candidates
        write_record(b / "records", r)
    lb = build_from_dirs([a, b])
    ppa = [c for c in lb.columns if c.is_attack]
    assert len(ppa) == 2 and {c.attack_label for c in ppa} == {"PPA (num_candidates=8)", "PPA (num_candidates=16)"}
    by_label = {c.attack_label: c for c in ppa}
    eight, sixteen = by_label["PPA (num_candidates=8)"], by_label["PPA (num_candidates=16)"]
    assert lb.cell("ls", eight.key)["n"] == 1 and lb.cell("ls", sixteen.key)["n"] == 1  # never averaged together
    assert lb.cell("ls", eight.key)["delta"] == pytest.approx(0.1)  # LS vs hard, both with 8 candidates
    assert np.isnan(lb.cell("ls", sixteen.key)["delta"])  # the baseline never ran 16: no Δ across configurations
    assert lb.cell("ls", sixteen.key)["test"] == "no test (the baseline has no values)"
    assert any("'ppa' was run with 2 configurations" in n and "num_candidates=16" in n for n in lb.notes)
    # one configuration: the id and label stay as they are
    single = build(recs(0, 8, ("hard", "ls")))
    assert [c.key for c in single.columns if c.is_attack] == ["ppa/attack_acc@1"]
    # same pair in both configurations: two columns side by side, not a refused duplicate
    both = copy.deepcopy(recs(0, 16, ("hard", "ls")))
    lb2 = build([*recs(0, 8, ("hard", "ls")), *both])
    assert len([c for c in lb2.columns if c.is_attack]) == 2


def test_validate_prints_the_seeds_the_defense_test_needs(capsys) -> None:
    from inversion_bench.cli import main

    suites = Path(__file__).resolve().parents[1] / "suites"
    assert main(["validate", "--schema-only", str(suites / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert ("defense test: two-sample permutation test over seeds at 0.05, Benjamini–Hochberg (false discovery "
            "rate) over about 36 Δ(s): needs 4 seeds per defense; the suite runs 1 (not testable)") in out
    assert "one difference among 36 null Δs is marked only with p < 0.05/36: 7 seeds per defense" in out
    assert main(["validate", "--schema-only", str(suites / "quickstart.yaml"), "--set", "report.seed_test=paired",
                 "--set", "report.correction=holm"]) == 0
    out = capsys.readouterr().out
    assert "paired sign-flip permutation test over seeds at 0.05, Holm (family-wise error rate)" in out
    assert "needs 11 seeds per defense; the suite runs 1 (not testable)" in out  # 2 / 2^n < 0.05 / 36
    assert main(["validate", "--schema-only", str(suites / "celeba64.yaml")]) == 0
    assert ("not testable whatever the seeds: hard (the baseline: every Δ) load a published checkpoint"
            in capsys.readouterr().out)
    for name in ("defenses", "threat-models", "alpha-sweep"):  # the comparison suites can mark a difference
        assert main(["validate", "--schema-only", str(suites / f"{name}.yaml")]) == 0
        assert "needs 4 seeds per defense; the suite runs 5 (enough)" in capsys.readouterr().out, name


def test_a_published_checkpoint_is_one_trained_model_whatever_the_seeds() -> None:
    """A target loaded from a checkpoint is the same model on every seed: only the attack varies, so the
    defense test over seeds would treat attack noise as training replicates. Not testable."""
    recs = seeded_records(5, -0.3)
    for r in recs:
        if r["defense"] == "hard":
            r["target"] = {"test_accuracy": 0.9, "checkpoint": {"path": "IR152_91.16.tar", "format": "kedmi"}}
    lb = build(recs)
    cell = lb.cell("strong", "gmi/attack_acc@1")
    assert not cell["testable"] and not cell["significant"] and "one published model" in cell["test"]
    assert "the baseline is one published model" in cell["test"]
    assert "not testable where a row is one published model" in lb.to_markdown()
    trained = build(seeded_records(5, -0.3))  # the same numbers from five trainings: marked
    assert trained.cell("strong", "gmi/attack_acc@1")["significant"]
