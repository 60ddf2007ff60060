"""The "Judges" section of a report: the run's reconstructions as every judge scored them, and how the judges agree.

A run's records are scored by its suite's evaluation model (the default judge); ``bench rescore`` writes the
records of other judges (other evaluation models, same stored reconstructions) to ``records/judges/<key>/``
(:mod:`inversion_bench.judges`). When a run folder has such records, the report gets this section
(``leaderboard.md``, ``index.html``, ``judges.csv``):

* one line per judge: its key, architecture, test accuracy and the public impostors' Acc@1 of its audit
  (chance level under the top-1 rule),
* per (defense, attack): the mean ``attack_acc@1`` over seeds under each judge, and for each other judge the
  agreement of its top-1 decisions with the default judge's on the same reconstructions (pooled over seeds:
  the share of reconstructions both accept or both reject as the attacked identity, Cohen's kappa of those
  decisions, the share with the same top-1 class),
* per defense: the worst case (the strongest attack's mean of the records' worst-case metric,
  :func:`~inversion_bench.leaderboard.worst_case.worst_case`) under each judge, and its attack.

Numbers come from the records alone. The leaderboard's own tables stay the default judge's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from inversion_bench.judges import judge_key, judge_records, kappa
from inversion_bench.leaderboard.records import current, dedupe, finite, is_ok
from inversion_bench.leaderboard.worst_case import worst_case
from inversion_bench.record_model import DEFAULT_WORST_CASE_METRIC

ACC = "attack_acc@1"
INTRO = ("The same stored reconstructions scored by more than one evaluation model (judge): the suite's own (the "
         "leaderboard's numbers) and those of `bench rescore`. Attack accuracy (Acc@1) is the mean over seeds; "
         "agreement compares each other judge's top-1 decisions with the run's own judge on the same reconstructions, "
         "pooled over seeds: the share both accept or both reject as the attacked identity, Cohen's kappa of those "
         "decisions and the share with the same top-1 class. Accuracies in %.")


@dataclass
class Judge:
    """One judge of the report: its key, whether it is the suite's own, its records and their description."""

    key: str
    default: bool
    records: list[dict[str, Any]]
    architecture: str | None = None
    test_accuracy: float | None = None
    chance: float | None = None  # the public impostors' Acc@1 in its audit
    source: str | None = None  # the evaluation file of a rescore

    @property
    def name(self) -> str:
        return f"{self.key} ({'the run' if self.default else 'rescore'})"


@dataclass
class JudgesSection:
    judges: list[Judge]
    pairs: list[dict[str, Any]] = field(default_factory=list)  # per (defense, attack): labels, values
    worst: list[dict[str, Any]] = field(default_factory=list)  # per defense: label, per judge (value, attack)
    metric: str = DEFAULT_WORST_CASE_METRIC


def _describe(judge: Judge) -> None:
    for r in judge.records:
        ev = r.get("evaluator") or {}
        if not isinstance(ev, dict):
            continue
        judge.architecture = judge.architecture or ev.get("architecture")
        if judge.test_accuracy is None:
            judge.test_accuracy = finite(ev.get("test_accuracy"))
        public = ((ev.get("audit") or {}).get("public") or {}) if isinstance(ev.get("audit"), dict) else {}
        if judge.chance is None:
            judge.chance = finite(public.get("impostor_acc@1"))
        j = r.get("judge")
        if isinstance(j, dict) and j.get("evaluation_file"):
            judge.source = judge.source or str(j["evaluation_file"])


def collect(run_dirs: Sequence[Path], records: Sequence[dict[str, Any]], notes: list[str]) -> list[Judge]:
    """The judges of ``run_dirs``: the default one (``records``, the run folders' own) first, then every judge with
    records under ``records/judges/`` (by key); only the default one when there are none."""
    unreadable: list[tuple[Path, str]] = []
    others: dict[str, list[dict[str, Any]]] = {}
    for d in run_dirs:
        for key, recs in judge_records(Path(d), unreadable).items():
            others.setdefault(key, []).extend(recs)
    notes.extend(f"judge record {p} skipped: it cannot be read ({why}); `bench rescore` writes it again"
                 for p, why in unreadable)
    keys = {judge_key(r) for r in records} - {None}
    default = Judge(key=", ".join(sorted(str(k) for k in keys)) or "?", default=True,
                    records=[current(r) for r in records])
    judges = [default] + [Judge(key=k, default=False, records=[current(r) for r in dedupe(v, notes)])
                          for k, v in sorted(others.items())]
    for j in judges:
        _describe(j)
    return judges


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pair_rows(judges: list[Judge]) -> list[dict[str, Any]]:
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for j in judges:
        for r in j.records:
            key = (str(r["defense"]), str(r["attack"]))
            row = pairs.setdefault(key, {"defense": key[0], "attack": key[1], "order": (
                int(r.get("defense_index") or 0), int(r.get("attack_index") or 0)),
                "defense_label": str(r.get("defense_label") or key[0]),
                "attack_label": str(r.get("attack_label") or key[1]), "acc": {}, "seeds": {}, "agree": {}})
            if not is_ok(r):
                continue
            v = finite((r.get("metrics") or {}).get(ACC))
            if v is not None:
                row["acc"].setdefault(j.key, []).append(v)
            row["seeds"].setdefault(j.key, set()).add(int(r["seed"]))
            a = r.get("judge_agreement")
            if not j.default and isinstance(a, dict) and all(isinstance(a.get(k), int) for k in
                                                             ("n", "both", "first_only", "second_only", "neither")):
                pooled = row["agree"].setdefault(j.key, {"n": 0, "both": 0, "first_only": 0, "second_only": 0,
                                                         "neither": 0, "same": 0.0})
                for k in ("n", "both", "first_only", "second_only", "neither"):
                    pooled[k] += int(a[k])
                pooled["same"] += float(a.get("same_top1") or 0.0) * int(a["n"])
    out = []
    for row in sorted(pairs.values(), key=lambda r: r["order"]):
        row["acc"] = {k: _mean(v) for k, v in row["acc"].items()}
        row["agreement"] = {}
        for k, p in row.pop("agree").items():
            if p["n"]:
                row["agreement"][k] = {"agreement": (p["both"] + p["neither"]) / p["n"],
                                       "kappa": kappa(p["both"], p["first_only"], p["second_only"], p["neither"]),
                                       "same_top1": p["same"] / p["n"], "n": p["n"]}
        out.append(row)
    return out


def _worst_rows(judges: list[Judge], metric: str) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    attacks = list(dict.fromkeys(str(r["attack"]) for j in judges for r in sorted(
        j.records, key=lambda r: int(r.get("attack_index") or 0))))
    for j in judges:
        by_defense: dict[str, list[dict[str, Any]]] = {}
        for r in j.records:
            by_defense.setdefault(str(r["defense"]), []).append(r)
            rows.setdefault(str(r["defense"]), {"defense": str(r["defense"]), "order": int(r.get("defense_index") or 0),
                                                "label": str(r.get("defense_label") or r["defense"]), "judges": {}})
        for d, recs in by_defense.items():
            wc = worst_case(recs, attacks, metric)
            if wc.attack is not None and wc.values:
                rows[d]["judges"][j.key] = (sum(wc.values) / len(wc.values), wc.attack)
    return sorted(rows.values(), key=lambda r: r["order"])


def judges_section(run_dirs: Sequence[Path], records: Sequence[dict[str, Any]],
                   notes: list[str]) -> JudgesSection | None:
    """The section's content, or None when no run folder has records of another judge."""
    judges = collect(run_dirs, records, notes)
    if len(judges) < 2:
        return None
    metrics = [str(r.get("worst_case_metric") or DEFAULT_WORST_CASE_METRIC) for r in judges[0].records]
    metric = max(dict.fromkeys(metrics), key=metrics.count) if metrics else DEFAULT_WORST_CASE_METRIC
    return JudgesSection(judges=judges, pairs=_pair_rows(judges), worst=_worst_rows(judges, metric), metric=metric)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _judge_lines(s: JudgesSection) -> list[str]:
    out = []
    for j in s.judges:
        what = [j.architecture or "architecture not recorded",
                f"test accuracy {_pct(j.test_accuracy)} %" if j.test_accuracy is not None else None,
                f"public impostors' Acc@1 {_pct(j.chance)} %" if j.chance is not None else None,
                f"from {j.source}" if j.source else None, f"{len(j.records)} record(s)"]
        out.append(f"{j.name}: " + ", ".join(w for w in what if w))
    return out


def _pair_cells(s: JudgesSection, row: dict[str, Any]) -> list[str]:
    cells = [_pct(row["acc"].get(j.key)) for j in s.judges]
    for j in s.judges[1:]:
        a = row["agreement"].get(j.key)
        cells += [_pct(a["agreement"]), _num(a["kappa"]), _pct(a["same_top1"])] if a else ["—", "—", "—"]
    return cells


def _pair_heads(s: JudgesSection) -> list[str]:
    heads = [f"Acc@1 {j.key}" + (" (run)" if j.default else "") for j in s.judges]
    for j in s.judges[1:]:
        heads += [f"agreement {j.key}", f"kappa {j.key}", f"same top-1 {j.key}"]
    return heads


def _worst_cell(row: dict[str, Any], key: str) -> str:
    v = row["judges"].get(key)
    return "—" if v is None else f"{_pct(v[0])} ({v[1]})"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(s: JudgesSection) -> str:
    lines = ["## Judges", "", INTRO, ""] + [f"- {_md(line)}" for line in _judge_lines(s)] + [""]
    heads = ["Defense", "Attack", *_pair_heads(s)]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join([_md(row["defense_label"]), _md(row["attack_label"]), *_pair_cells(s, row)]) + " |"
              for row in s.pairs]
    lines += ["", f"Worst case ({s.metric}, the strongest attack's mean over seeds) under each judge:", ""]
    lines += ["| Defense | " + " | ".join(j.key + (" (run)" if j.default else "") for j in s.judges) + " |",
              "|" + "---|" * (len(s.judges) + 1)]
    lines += ["| " + " | ".join([_md(row["label"]), *(_md(_worst_cell(row, j.key)) for j in s.judges)]) + " |"
              for row in s.worst]
    return "\n".join(lines) + "\n"


def to_html(s: JudgesSection) -> str:
    judges = "".join(f"<li>{escape(line)}</li>" for line in _judge_lines(s))
    head = "".join(f"<th>{escape(h)}</th>" for h in ["Defense", "Attack", *_pair_heads(s)])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in [row["defense_label"], row["attack_label"],
                                                                         *_pair_cells(s, row)]) + "</tr>"
                   for row in s.pairs)
    whead = "".join(f"<th>{escape(j.key + (' (run)' if j.default else ''))}</th>" for j in s.judges)
    wbody = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in [row["label"], *(
        _worst_cell(row, j.key) for j in s.judges)]) + "</tr>" for row in s.worst)
    return (f'<h2 id="judges">Judges</h2><p class="small">{escape(INTRO)}</p><ul class="small">{judges}</ul>'
            f'<table id="judges-pairs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<p class="small">Worst case ({escape(s.metric)}, the strongest attack\'s mean over seeds) under each '
            f'judge:</p><table id="judges-worst"><thead><tr><th>Defense</th>{whead}</tr></thead>'
            f"<tbody>{wbody}</tbody></table>")


def write_judges_csv(s: JudgesSection, path: Path) -> Path:
    """One row per (judge, defense, attack): Acc@1 mean over seeds and, for other judges, the agreement."""
    import pandas as pd

    from inversion_bench.leaderboard.escape import write_csv

    rows = []
    for row in s.pairs:
        for j in s.judges:
            a = row["agreement"].get(j.key) or {}
            rows.append({"judge": j.key, "default": j.default, "defense": row["defense"], "attack": row["attack"],
                         "seeds": len(row["seeds"].get(j.key, ())), "attack_acc@1": row["acc"].get(j.key),
                         "agreement": a.get("agreement"), "kappa": a.get("kappa"), "same_top1": a.get("same_top1"),
                         "n": a.get("n")})
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(pd.DataFrame(rows), path)


def append_judges(run_dirs: Sequence[Path], records: Sequence[dict[str, Any]], out_dir: Path,
                  files: dict[str, Path], sections: list[str], notes: list[str]) -> list[str]:
    """Appends the judges' section to the written ``leaderboard.md`` and to ``sections``, writes ``judges.csv``
    (into ``files``); returns the page's HTML section (none when the runs have no other judge)."""
    s = judges_section(run_dirs, records, notes)
    if s is None:
        return []
    md = to_markdown(s)
    sections.append(md)
    markdown = files["markdown"]
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n" + md, encoding="utf-8")
    files["judges_csv"] = write_judges_csv(s, out_dir / "judges.csv")
    return [to_html(s)]
