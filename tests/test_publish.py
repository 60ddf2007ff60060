"""Leaderboard entries (``bench publish``), their verification (``--check``), external evaluations and the static
site (``bench site``), on three tiny run folders: two of one protocol (A, B: the same data, recipe and judge; B
trains A's defense ``hard`` again, so its attacks hit A's published target) and one of another (C: other data).

A's own attack is a constant grey image (attack accuracy exactly 1/5: the judge gives every reconstruction one
class); B attacks the same target with a 3-step MI-Face (weaker) and a 40-step one (stronger).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inversion_bench.cli import main
from inversion_bench.entry_model import Entry, Evaluation, Numbers, entry_json_schema, schema_text, shipped_schema
from inversion_bench.leaderboard.build import build_from_dirs
from inversion_bench.leaderboard.site import build_site, rank
from inversion_bench.publish import (
    combined_worst_case,
    external_evaluations,
    make_entry,
    protocol_key,
    read_entries,
    read_entry,
    read_run,
)
from tests.browser import NEEDS_CHROMIUM, chromium, headless_chromium
from tests.conftest import run_tiny, tiny_suite

GREY = {"steps": 1, "restarts": 1, "lr": 1e-9, "start_noise": 0.0}  # a constant image: one class for all


def _suite(name: str, defenses: list[tuple[str, float]], attacks: list[tuple[str, dict]], data_seed: int = 0) -> dict:
    s = tiny_suite(name=name,
                   defenses=[{"id": d, "name": "label_smoothing", "params": {"alpha": a}} for d, a in defenses],
                   attacks=[{"id": a, "name": "mi-face", "params": p} for a, p in attacks],
                   metrics=["test_accuracy", "attack_accuracy"])
    s["dataset"]["params"]["seed"] = data_seed
    for k in ("target", "evaluation"):
        s[k]["training"]["epochs"] = 15
    s["run"]["workers"] = 1
    return s


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("publish-runs")
    out = {}
    for key, suite in {
        "a": _suite("tiny-a", [("hard", 0.0), ("negls", -0.05)], [("grey", GREY)]),
        "b": _suite("tiny-b", [("hard", 0.0), ("ls", 0.1)],
                    [("mif3", {"steps": 3, "restarts": 1}), ("mif40", {"steps": 40, "restarts": 2})]),
        "c": _suite("tiny-c", [("hard", 0.0)], [("grey", GREY)], data_seed=1),
    }.items():
        (root / key).mkdir()
        out[key] = run_tiny(suite, root / key)
    return out


def _metric(run: Path, defense: str, attack: str, metric: str = "attack_acc@1") -> float:
    rec = json.loads((run / "records" / f"{defense}__{attack}__seed0.json").read_text())
    return float(rec["metrics"][metric])


def _publish(runs: dict[str, Path], out: Path, capsys) -> str:
    printed = ""
    for key, proto in (("a", "tiny"), ("b", "tiny"), ("c", "tiny-other")):
        assert main(["publish", str(runs[key]), "--protocol", proto, "--out", str(out), "--by", f"lab {key}"]) == 0
        printed += capsys.readouterr().out
    return printed


def test_shipped_schema_is_the_models_export():
    assert shipped_schema() == schema_text()
    assert entry_json_schema()["properties"]["schema_version"]["const"] == 1


def test_publish_check_site_keeps_protocols_apart(runs, tmp_path, capsys):
    entries_dir, site_dir = tmp_path / "entries", tmp_path / "site"
    printed = _publish(runs, entries_dir, capsys)
    # B's "hard" is A's published target: one entry per target, B's attacks join it as external evaluations
    assert "not published: defense hard: its trained targets are already the entry" in printed
    assert "bench publish --external" in printed
    entries = {(e.artifacts.run_dir, e.defense.id): e for _, e in read_entries(entries_dir)}
    assert sorted((Path(r).name, d) for r, d in entries) == [("tiny-a", "hard"), ("tiny-a", "negls"),
                                                             ("tiny-b", "ls"), ("tiny-c", "hard")]
    keys = {Path(r).name: e.protocol.key for (r, _), e in entries.items()}
    assert keys["tiny-a"] == keys["tiny-b"] != keys["tiny-c"]

    # the entries' numbers are the run folders' leaderboard cells and the records' values
    for (run_dir, defense), e in entries.items():
        board = build_from_dirs([run_dir])
        assert e.utility.mean == pytest.approx(board.cell(defense, "test_accuracy")["mean"])
        assert e.worst_case.mean == pytest.approx(board.cell(defense, "worst_case")["mean"])
        assert e.worst_case.source == "run" and not e.worst_case.unreliable
        for ev in e.attacks:
            assert ev.metrics["attack_acc@1"].values == [_metric(Path(run_dir), defense, ev.attack)]
        assert e.protocol.evaluation.key == json.loads(
            next((Path(run_dir) / "records").glob(f"{defense}__*.json")).read_text())["keys"]["evaluator"]
        assert e.protocol.evaluation.audit and e.protocol.suite_hash
        assert len(e.artifacts.records) == len(e.attacks) and len(e.artifacts.reconstructions) == len(e.attacks)
    jsonschema = pytest.importorskip("jsonschema")  # the shipped schema accepts what publish writes
    for path in entries_dir.glob("*.json"):
        jsonschema.validate(json.loads(path.read_text()), json.loads(shipped_schema()))

    paths = sorted(str(p) for p in entries_dir.glob("*.json"))
    assert main(["publish", "--check", *paths]) == 0
    assert capsys.readouterr().out.count(": OK (") == 4

    assert main(["site", str(entries_dir), "--out", str(site_dir)]) == 0
    pages = sorted(site_dir.glob("protocol-*.html"))
    assert [p.name.split("-")[1] for p in pages] == ["tiny", "tiny"]  # protocol-tiny-<key>, protocol-tiny-other-<key>
    for page in pages:
        text = page.read_text()
        proto_key = page.stem.rsplit("-", 1)[1]
        rows = [e for e in entries.values() if e.protocol.key == proto_key]
        assert text.count('<tr data-entry="') == len(rows)
        for e in entries.values():  # never mixed
            assert (f'data-entry="{e.id}"' in text) == (e.protocol.key == proto_key)
    for e in entries.values():
        page = (site_dir / "entries" / f"{e.id}.html").read_text()
        assert "<svg" in page and 'src="data:image/png;base64,' in page  # its figures, inline
        assert Entry.model_validate_json((site_dir / "entries" / f"{e.id}.json").read_text()) == e
    assert "http://" not in (site_dir / "index.html").read_text() + "".join(p.read_text() for p in pages)


def test_an_edited_record_fails_check_naming_the_file(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    out = tmp_path / "entries"
    assert main(["publish", str(run), "--protocol", "tiny", "--out", str(out)]) == 0
    entry = next(out.glob("tiny--hard--*.json"))
    assert main(["publish", "--check", str(entry)]) == 0
    capsys.readouterr()

    record = run / "records" / "hard__grey__seed0.json"
    rec = json.loads(record.read_text())
    rec["metrics"]["attack_acc@1"] = 0.0
    record.write_text(json.dumps(rec))
    assert main(["publish", "--check", str(entry)]) == 1
    err = capsys.readouterr().err
    assert f"record {record} (entry " in err and "was changed after publishing" in err

    # an entry whose numbers were edited (artifacts intact) fails on the field
    shutil.copy(runs["a"] / "records" / record.name, record)
    data = json.loads(entry.read_text())
    data["worst_case"]["mean"] = 0.01
    entry.write_text(json.dumps(data))
    assert main(["publish", "--check", str(entry)]) == 1
    assert "worst_case.mean: the entry holds 0.01, its records give 0.2" in capsys.readouterr().err

    # bad input: exit 2, naming the file and field
    data["worst_case"]["mean"] = "high"
    entry.write_text(json.dumps(data))
    assert main(["publish", "--check", str(entry)]) == 2
    assert f"{entry}: not a valid entry (worst_case.mean:" in capsys.readouterr().err
    assert main(["publish", "--check", str(tmp_path / "nope.json")]) == 2
    assert main(["publish", str(run), "--out", str(out)]) == 2  # no --protocol
    assert "--protocol NAME" in capsys.readouterr().err


def test_external_evaluations_only_lower_the_standing(runs, tmp_path, capsys):
    out = tmp_path / "entries"
    assert main(["publish", str(runs["a"]), "--protocol", "tiny", "--out", str(out)]) == 0
    path = next(out.glob("tiny--hard--*.json"))
    entry = read_entry(path)
    own, weak, strong = (_metric(runs["a"], "hard", "grey"), _metric(runs["b"], "hard", "mif3"),
                         _metric(runs["b"], "hard", "mif40"))
    assert weak < own < strong, f"the fixture's attacks must bracket A's: {weak}, {own}, {strong}"
    assert entry.worst_case.mean == pytest.approx(own)

    found, skipped = external_evaluations(read_run(runs["b"]), entry)
    by_attack = {x.evaluation.attack: x for x in found}
    assert sorted(by_attack) == ["mif3", "mif40"] and skipped == []  # B's "ls" targets are not this entry's
    numbers = entry.model_dump()
    with_weak = make_entry(_numbers_of(entry), entry.artifacts, [by_attack["mif3"]])
    assert with_weak.worst_case.model_dump(exclude={"evaluations"}) == entry.worst_case.model_dump(
        exclude={"evaluations"})  # a weaker evaluation changes nothing
    assert with_weak.worst_case.evaluations == 2
    with_strong = make_entry(_numbers_of(entry), entry.artifacts, [by_attack["mif3"], by_attack["mif40"]])
    wc = with_strong.worst_case
    assert wc.mean == pytest.approx(strong) and wc.source == "external" and wc.unreliable
    assert wc.evaluation == f"external:{by_attack['mif40'].id}" and wc.run_mean == pytest.approx(own)
    assert numbers == entry.model_dump()  # nothing changed in place

    assert main(["publish", "--external", str(runs["b"]), "--into", str(out), "--by", "lab b"]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: 2 external evaluation(s) added" in printed and "worst case 20.00 % -> " in printed
    after = read_entry(path)
    assert after.worst_case == with_strong.worst_case
    assert [x.by for x in after.external] == ["lab b", "lab b"]
    assert main(["publish", "--check", str(path)]) == 0  # the external evaluations' artifacts verify too
    capsys.readouterr()
    assert main(["publish", "--external", str(runs["b"]), "--into", str(out)]) == 0  # again: nothing new
    assert "0 external evaluation(s) added (none); worst case unchanged" in capsys.readouterr().out
    assert read_entry(path).worst_case == after.worst_case

    # an external evaluation whose records attack another target (B's "ls") is named by --check
    other = tmp_path / "other"
    assert main(["publish", str(runs["b"]), "--protocol", "tiny", "--out", str(other)]) == 0
    ls = read_entry(next(other.glob("tiny--ls--*.json")))
    forged = after.external[1].model_copy(update={"id": "forged@x", "evaluation": ls.attacks[1],
                                                  "artifacts": ls.artifacts})
    data = after.model_copy(update={"external": [*after.external, forged]}).model_dump(mode="json")
    (forged_path := tmp_path / "forged.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["publish", "--check", str(forged_path)]) == 1
    assert "external evaluation forged@x: record " in (err := capsys.readouterr().err)
    assert "attacks target " in err and "not the entry's target of seed 0" in err

    # a run of another protocol evaluates none of these targets: bad input
    assert main(["publish", "--external", str(runs["c"]), "--into", str(out)]) == 2
    assert "none of its records attack a published target" in capsys.readouterr().err

    site = build_site(read_entries(out), tmp_path / "site")
    page = site.protocol_pages[0].read_text()
    assert "unreliable" in page and "external: mif40" in page


def _numbers_of(entry: Entry):
    from inversion_bench.publish import DefenseNumbers

    return DefenseNumbers(protocol=entry.protocol, defense=entry.defense, utility=entry.utility, attacks=entry.attacks,
                          seeds=entry.seeds, code_versions=entry.code_versions, plugins=entry.plugins)


def _ev(attack: str, values: dict[int, float]) -> Evaluation:
    n = Numbers(metric="attack_acc@1", direction="lower", unit="share", mean=sum(values.values()) / len(values),
                seeds=sorted(values), values=[values[s] for s in sorted(values)])
    return Evaluation(attack=attack, label=attack, metrics={"attack_acc@1": n})


def test_combined_worst_case_is_the_strongest_complete_mean():
    own = [_ev("a", {0: 0.2, 1: 0.4}), _ev("b", {0: 0.5, 1: 0.1})]
    wc = combined_worst_case(own, [], "attack_acc@1", [0, 1])
    assert (wc.evaluation, wc.mean, wc.source, wc.partial) == ("run:a", pytest.approx(0.3), "run", False)
    # ties go to the first (own before external); a mean over fewer seeds never sets it
    assert combined_worst_case([own[0], _ev("c", {0: 0.3, 1: 0.3})], [], "attack_acc@1", [0, 1]).evaluation == "run:a"
    wc = combined_worst_case([_ev("d", {0: 0.1, 1: 0.2})], [_ext(_ev("c", {0: 0.9}))], "attack_acc@1", [0, 1])
    assert (wc.evaluation, wc.mean, wc.partial, wc.unreliable) == ("run:d", pytest.approx(0.15), True, False)
    assert combined_worst_case([_ev("d", {0: 0.1, 1: 0.2})], [_ext(_ev("c", {0: 0.3, 1: 0.2}))], "attack_acc@1",
                               [0, 1]).model_dump(include={"evaluation", "source", "unreliable", "run_mean"}) == {
        "evaluation": "external:c@x", "source": "external", "unreliable": True, "run_mean": pytest.approx(0.15)}


def _ext(ev: Evaluation):
    from inversion_bench.entry_model import Artifacts, ExternalEvaluation

    return ExternalEvaluation(id=f"{ev.attack}@x", evaluation=ev, suite_hash="x", code_versions=[], plugins={},
                              artifacts=Artifacts(run_dir="/r", store="/s", records=[], reconstructions=[]),
                              submitted="2026-12-07T00:00:00Z")


def test_protocol_key_separates_judges_data_and_targets():
    base = protocol_key("p", "data1", "judge1", {"architecture": "x"}, "attack_acc@1")
    assert base == protocol_key("p", "data1", "judge1", {"architecture": "x"}, "attack_acc@1")
    for args in (("q", "data1", "judge1", {"architecture": "x"}, "attack_acc@1"),
                 ("p", "data2", "judge1", {"architecture": "x"}, "attack_acc@1"),
                 ("p", "data1", "judge2", {"architecture": "x"}, "attack_acc@1"),
                 ("p", "data1", "judge1", {"architecture": "y"}, "attack_acc@1"),
                 ("p", "data1", "judge1", {"architecture": "x"}, "attack_acc@5")):
        assert protocol_key(*args) != base


@pytest.mark.skipif(chromium() is None, reason=NEEDS_CHROMIUM)
def test_site_opens_offline_in_chromium_and_its_table_is_the_entries(runs, tmp_path, capsys):
    out = tmp_path / "entries"
    _publish(runs, out, capsys)
    assert main(["publish", "--external", str(runs["b"]), "--into", str(out)]) == 0
    entries = [e for _, e in read_entries(out)]
    site = build_site(entries, tmp_path / "site")
    page = next(p for p in site.protocol_pages if "tiny-other" not in p.name)
    mine = rank([e for e in entries if e.protocol.key == page.stem.rsplit("-", 1)[1]])
    with headless_chromium(1280, 900) as driver:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                    "downloadThroughput": -1, "uploadThroughput": -1})
        driver.get(page.resolve().as_uri())
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#board tbody tr')).map(r => [r.dataset.entry, "
            "r.querySelector('td[data-key=\"utility\"]').dataset.value, "
            "r.querySelector('td[data-key=\"worst_case\"]').dataset.value, r.querySelector('a').textContent]);")
        assert [r[0] for r in rows] == [e.id for e in mine]  # ranked by the worst case, lowest first
        for (_, utility, worst, label), e in zip(rows, mine, strict=True):
            assert float(utility) == e.utility.mean and float(worst) == e.worst_case.mean
            assert label == e.defense.label
        assert driver.execute_script("return performance.getEntriesByType('resource').length;") == 0
        driver.execute_script("document.querySelector('th[data-key=\"worst_case\"]').click();")
        driver.execute_script("document.querySelector('th[data-key=\"worst_case\"]').click();")  # descending
        order = driver.execute_script("return Array.from(document.querySelectorAll('#board tbody tr'))"
                                      ".map(r => r.dataset.entry);")
        assert order == [e.id for e in sorted(mine, key=lambda e: -e.worst_case.mean)]
        driver.find_element("css selector", f'tr[data-entry="{mine[-1].id}"] a').click()
        headline = driver.execute_script("return document.querySelector('#headline strong').dataset.value;")
        assert float(headline) == mine[-1].worst_case.mean
        assert driver.execute_script("return document.querySelectorAll('#evaluations rect.bar').length;") == (
            len(mine[-1].attacks) + len(mine[-1].external))
        assert driver.execute_script("return performance.getEntriesByType('resource').length;") == 0


def test_entries_of_another_judge_get_their_own_table(runs, tmp_path, capsys):
    """Records of a second judge (``bench rescore`` writes them to ``records/judges/<key>/``) publish with
    ``--judge KEY`` under their own protocol key: the same protocol name, never the same table."""
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({"architecture": {"name": "small-resnet", "params": {"width": 4}},
                                 "training": {"epochs": 3, "batch_size": 16}}))
    assert main(["rescore", str(run), "--evaluation", str(other), "--no-progress"]) == 0
    (judge,) = [p.name for p in (run / "records" / "judges").iterdir()]
    out = tmp_path / "entries"
    assert main(["publish", str(run), "--protocol", "tiny", "--out", str(out)]) == 0
    assert main(["publish", str(run), "--protocol", "tiny", "--out", str(out), "--judge", judge]) == 0
    entries = [e for _, e in read_entries(out)]
    assert len(entries) == 4 and {e.protocol.evaluation.key for e in entries} == {
        json.loads((run / "records" / "hard__grey__seed0.json").read_text())["keys"]["evaluator"], judge}
    assert len({e.protocol.key for e in entries}) == 2 and {e.protocol.name for e in entries} == {"tiny"}
    for e in entries:
        if e.protocol.evaluation.key == judge:
            assert [f.path for f in e.artifacts.records] == [f"records/judges/{judge}/{e.defense.id}__grey__seed0.json"]
            rec = json.loads((run / e.artifacts.records[0].path).read_text())
            assert e.attacks[0].metrics["attack_acc@1"].values == [rec["metrics"]["attack_acc@1"]]
    site = build_site(entries, tmp_path / "site")
    assert len(site.protocol_pages) == 2
    assert all(page.read_text().count('<tr data-entry="') == 2 for page in site.protocol_pages)
    capsys.readouterr()
    assert main(["publish", "--check", *map(str, out.glob("*.json"))]) == 0
    capsys.readouterr()
    assert main(["publish", str(run), "--protocol", "tiny", "--out", str(out), "--judge", "judge3"]) == 2
    assert "--judge judge3:" in (err := capsys.readouterr().err) and f"judges there: {judge}" in err
