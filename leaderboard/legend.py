"""Legend lines shared by the Markdown table and the HTML page: the uncertainty of the cells and the
evaluation model (its test accuracy and audit).

Plain text (no markup); :mod:`~inversion_bench.leaderboard.render` and :mod:`~inversion_bench.leaderboard.html`
add their own.
"""

from __future__ import annotations

from inversion_bench.leaderboard.formatting import plural
from inversion_bench.leaderboard.model import EvaluatorAudit, EvaluatorInfo, LeaderboardTable
from inversion_bench.leaderboard.stats import SIGN_FLIP_TEST

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
    return (f"Interval: {_level(lb)} percentile bootstrap interval of the mean ({s.bootstrap} resamples, fixed "
            "seed): where the records hold per-identity values (attack accuracy, KNN distance), each resample "
            "draws the seeds with replacement and, within each, the attacked identities with replacement; other "
            "cells (target columns, the worst case, FID and other metrics without per-identity values) resample "
            "seeds only and have no interval with a single seed. n = identities per seed × seeds.")


def cells_help(lb: LeaderboardTable, seeds: str) -> str:
    """The legend line of the main table's cells."""
    if lb.settings.intervals:
        return (f"Cells: mean ± half-width of the {_level(lb)} bootstrap interval (half of its width; the interval "
                f"need not be symmetric) over seeds ({seeds}); `no CI`: a single value, no interval. Accuracies in %.")
    return (f"Cells: mean ± sample standard deviation (ddof=1) over seeds ({seeds}); a cell with a single seed "
            "shows the mean only. Accuracies in %.")


def significance_help(lb: LeaderboardTable, mark: str) -> str:
    """How to read a Δ: marked (Markdown ``mark``) or coloured (HTML, ``mark == ""``) only when significant."""
    s = lb.settings
    shown = f"`{mark}` after a Δ" if mark else "a green (better) or red (worse) Δ"
    return (f"{shown}: the {SIGN_FLIP_TEST} against the baseline (two-sided, on the per-identity values "
            f"paired by (seed, identity) against the same attack; every sign vector when 2^pairs ≤ {s.bootstrap}, "
            f"otherwise {s.bootstrap} random ones) gives p < {s.significance:g}. A Δ without it "
            f"({'no mark' if mark else 'grey'}) is not significant at that level, or has no paired test "
            "(target columns, the worst case, metrics without per-identity values): do not read it as a "
            f"difference.{multiplicity_note(lb)}")


def multiplicity_note(lb: LeaderboardTable) -> str:
    """How many paired tests the table holds and how many would fall below the level by chance alone.

    Every Δ is tested on its own, at ``settings.significance``, without a correction for the number of
    tests: with ``m`` tests and no true difference anywhere, about ``significance * m`` are expected to
    be marked. Empty when the table holds no test.
    """
    if "p_value" not in lb.data or lb.data.empty:
        return ""
    p = lb.data["p_value"].astype(float)
    tested = int(p.notna().sum())
    if tested == 0:
        return ""
    alpha = lb.settings.significance
    marked = int(lb.data["significant"].sum())
    return (f" This table holds {plural(tested, 'paired test')}, each at {alpha:g} without a "
            f"correction for their number: with no true difference anywhere, about {alpha * tested:.1f} would "
            f"be marked by chance; {marked} {'is' if marked == 1 else 'are'} marked here.")
