"""Legend lines shared by the Markdown table and the HTML page: the uncertainty of the cells and the
evaluation model (its test accuracy and audit).

Plain text (no markup); :mod:`~inversion_bench.leaderboard.render` and :mod:`~inversion_bench.leaderboard.html`
add their own.
"""

from __future__ import annotations

from inversion_bench.leaderboard.model import EvaluatorAudit, EvaluatorInfo, LeaderboardTable
from inversion_bench.leaderboard.number_format import plural
from inversion_bench.leaderboard.significance import CORRECTION_NAMES, SIGN_FLIP_TEST, TWO_SAMPLE_TEST
from inversion_bench.leaderboard.stats import RNG_SEED

AUDIT_GROUPS = {"private_other": "other private identities", "public": "public identities"}
"""Display names of the audit's image groups (others are shown by their key)."""

NOT_AUDITED = "not audited"


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.1f}%"


def _audit_text(name: str, audit: EvaluatorAudit) -> str:
    images = f" ({audit.images:,} images)" if audit.images is not None else ""
    worst = ""
    if audit.impostor_acc_max is not None:
        worst = (f" (highest: {_pct(audit.impostor_acc_max)}, identity {audit.impostor_acc_max_identity})")
    return (f"{AUDIT_GROUPS.get(name, name)}{images}: false acceptance {_pct(audit.false_acceptance)}, "
            f"impostor Acc@1 {_pct(audit.impostor_acc)}{worst}")


def evaluator_items(lb: LeaderboardTable) -> list[tuple[str, str]]:
    """``(name, text)`` of the evaluation model: its test accuracy, its audit and the second evaluation
    model (when there is one). Nothing recorded reads "not recorded" and "not audited", never 0."""
    ev: EvaluatorInfo | None = lb.evaluator
    if ev is None:
        return [("evaluation model", "not recorded"), ("evaluation-model audit", NOT_AUDITED)]
    acc = "test accuracy not recorded" if ev.test_accuracy is None else f"test accuracy {_pct(ev.test_accuracy)}"
    items = [("evaluation model", f"{ev.architecture or 'architecture not recorded'}, {acc}")]
    if ev.audit:
        items.append(("evaluation-model audit", "; ".join(_audit_text(k, a) for k, a in ev.audit.items())))
    else:
        items.append(("evaluation-model audit", NOT_AUDITED))
    if ev.second_architecture or ev.second_test_accuracy is not None:
        second = "test accuracy not recorded" if ev.second_test_accuracy is None else \
            f"test accuracy {_pct(ev.second_test_accuracy)}"
        items.append(("second evaluation model", f"{ev.second_architecture or 'architecture not recorded'}, {second}"))
    return items


AUDIT_HELP = ("Evaluation-model audit: real images that are not the claimed identity (other private identities: "
              "held-out private test images; public identities: never seen by the evaluation model), scored like "
              "reconstructions. False acceptance: the share accepted as an identity they are not (1.0 by "
              "construction for public images under the top-1 rule). Impostor Acc@1: the attack accuracy a real "
              "face of somebody else scores, directly comparable to attack_acc@1; an attack near it shows little; "
              "highest: the identity real strangers land on most, and how often.")


def _level(lb: LeaderboardTable) -> str:
    return f"{100 * lb.settings.confidence:g}%"


def interval_help(lb: LeaderboardTable) -> str:
    """What the interval is and how it is computed."""
    s = lb.settings
    return (f"Interval: {_level(lb)} interval of the mean. Cells with per-identity values (attack accuracy, KNN "
            f"distance): crossed bootstrap ({s.bootstrap} resamples, generator seed {RNG_SEED}), each resample "
            "drawing the seeds with replacement and the identities with replacement once, the same identities on "
            "every drawn seed; mean ± t(ν) × its standard deviation × √(S/(S−1)), ν the Satterthwaite degrees of "
            "freedom of the seed × identity mean squares (one seed: over the identities of one trained model, "
            "without seed-to-seed variation). Other cells (target columns, the worst case, FID): Student's t over "
            "seeds, none with fewer than 3 seeds. n = identities × seeds, or seeds.")


def cells_help(lb: LeaderboardTable, seeds: str) -> str:
    """The legend line of the main table's cells."""
    if lb.settings.intervals:
        return (f"Cells: mean ± half-width of the {_level(lb)} interval over seeds ({seeds}); `no CI`: no "
                "interval (see below). Accuracies in %.")
    return (f"Cells: mean ± sample standard deviation (ddof=1) over seeds ({seeds}); a cell with a single seed "
            "shows the mean only. Accuracies in %.")


def _test_name(lb: LeaderboardTable) -> str:
    if lb.settings.seed_test == "paired":
        return f"the {SIGN_FLIP_TEST} over seeds (per-seed differences, same seed in both rows)"
    return f"the {TWO_SAMPLE_TEST} over seeds (the two rows' per-seed values)"


def testability_note(lb: LeaderboardTable) -> str:
    """``"Δ marks: not testable with 1 seed; 4 needed."`` when some Δ cannot be tested; ``""`` otherwise."""
    if "testable" not in lb.data or lb.baseline is None:
        return ""
    published = lb.data["test"].astype(str).str.contains("one published model")
    if published.any():
        return ("Δ marks: not testable where a row is one published model (a checkpoint, the same on every seed: "
                "its seeds vary only the attacks); the tooltip and leaderboard.csv say which. A Δ without a mark "
                "is no evidence of a difference.")
    rows = lb.data[(lb.data["defense"] != lb.baseline) & (lb.data["seeds_needed"] > 0)]
    if rows.empty:
        return ""
    seeds = sorted({len(v) for v in rows["seeds"]})
    needed = int(rows["seeds_needed"].max())
    have = " or ".join(str(n) for n in seeds)
    some = "" if len(rows) == int((lb.data["defense"] != lb.baseline).sum()) else f" ({len(rows)} of the Δs)"
    return (f"Δ marks{some}: not testable with {have} seed{'s' if seeds != [1] else ''} per defense; {needed} needed "
            f"at {lb.settings.significance:g}. A Δ without a mark is no evidence of a difference.")


def significance_help(lb: LeaderboardTable, mark: str) -> str:
    """How to read a Δ: marked (Markdown ``mark``) or coloured (HTML, ``mark == ""``) only when significant."""
    s = lb.settings
    shown = f"`{mark}` after a Δ" if mark else "a green (better) or red (worse) Δ"
    return (f"{shown}: {_test_name(lb)} against the baseline (two-sided, exact where the permutations can be "
            f"enumerated) gives an adjusted p < {s.significance:g}. The unit is the trained model: each seed's "
            "value (its mean over identities) is one observation, so a defense is tested across trainings, "
            f"not across the identities of one model. A Δ without it ({'no mark' if mark else 'grey'}) is not "
            "significant, or not testable with the seeds at hand (the tooltip and leaderboard.csv say which and "
            f"how many seeds are needed): do not read it as a difference.{multiplicity_note(lb)} The "
            "identity-level sign-flip test over (seed, identity) pairs (leaderboard.csv: _p_identity) asks only "
            "whether these trained models differ on these identities; it never marks a Δ.")


def multiplicity_note(lb: LeaderboardTable) -> str:
    """The correction, the number of testable tests and how many would fall below the level by chance alone.

    Empty when the table holds no testable test.
    """
    if "testable" not in lb.data or lb.data.empty:
        return ""
    tested = int(lb.data["testable"].sum())
    if tested == 0:
        return ""
    alpha = lb.settings.significance
    raw = int((lb.data["testable"] & (lb.data["p_value"] < alpha)).sum())
    marked = int(lb.data["significant"].sum())
    return (f" This table holds {plural(tested, 'testable defense test')}: with no true difference anywhere, "
            f"about {alpha * tested:.1f} would fall below {alpha:g} by chance; {raw} do unadjusted. Marks use "
            f"{CORRECTION_NAMES[lb.settings.correction]} adjusted p-values over these tests: "
            f"{marked} {'is' if marked == 1 else 'are'} marked.")
