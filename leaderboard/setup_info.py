"""The experimental setup behind a table, from the records' ``setup`` blocks, for every output.

Each record carries ``setup`` (``products.record.base_record``): dataset (name, parameters, resolution,
split), split sizes, target and evaluation architectures and epochs, the metrics' parameters and the
``--set`` overrides (``None`` when the suite loader did not keep them: the resolved values are in the
setup then). The evaluation model's test accuracy comes from the records' ``evaluator`` block and each
attack's parameters from ``attack_params``. :func:`setup_lines` says it in a few plain lines (Markdown,
page, LaTeX caption); :func:`metric_label` names what a metric column measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_EXTRACTOR = "evaluation-model"
EXTRACTOR_NAMES = {"evaluation-model": "evaluation-model features", "inception": "Inception",
                   "facenet": "FaceNet"}


def table_setup(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The setup of a table: the first record's ``setup`` with every attack's parameters (by attack id)
    and the evaluation model's test accuracy added; ``None`` when no record has a setup."""
    with_setup = [r for r in records if isinstance(r.get("setup"), dict)]
    if not with_setup:
        return None
    setup = dict(with_setup[0]["setup"])
    setup["attacks"] = {}
    for r in records:
        attack = str(r.get("attack"))
        if attack not in setup["attacks"] and r.get("attack_plugin"):
            setup["attacks"][attack] = {"plugin": r.get("attack_plugin"), "params": r.get("attack_params") or {}}
    accs = [(r.get("evaluator") or {}).get("test_accuracy") for r in records if isinstance(r.get("evaluator"), dict)]
    accs = [a for a in accs if isinstance(a, int | float)]
    if accs:
        setup["evaluation_test_accuracy"] = float(accs[0])
    overrides: list[str] = []
    for r in with_setup:
        overrides += [o for o in (r["setup"].get("overrides") or []) if o not in overrides]
    setup["overrides"] = overrides if any(r["setup"].get("overrides") is not None for r in with_setup) else None
    return setup


def _params(params: dict[str, Any], limit: int = 10) -> str:
    items = [f"{k}={v}" for k, v in params.items() if v is not None and not isinstance(v, dict | list)]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _sizes(setup: dict[str, Any]) -> str:
    z = setup.get("sizes") or {}
    if not z:
        return ""
    return (f"; {z.get('private_identities')} private identities ({z.get('private_train_images')} train / "
            f"{z.get('private_test_images')} test images), {z.get('public_identities')} public identities "
            f"({z.get('public_images')} images)")


def _model(part: dict[str, Any]) -> str:
    text = f"{part.get('architecture')}"
    text += f" ({_params(part['params'])})" if part.get("params") else ""
    length = f"{part['steps']} steps" if part.get("steps") else f"{part.get('epochs')} epochs"
    return text + (f", checkpoint {part['checkpoint']}" if part.get("checkpoint") else f", {length}")


def setup_lines(setup: dict[str, Any] | None) -> list[str]:
    """The setup in plain lines (``[]`` without one): dataset and splits, models, attacks, overrides."""
    if not setup:
        return []
    return [*setup_body(setup), overrides_line(setup.get("overrides"))]


def setup_body(setup: dict[str, Any], attack_params: bool = True) -> list[str]:
    """The dataset with its splits, the target and evaluation models and the attacks, one line each.

    Args:
        setup: the table's setup (:func:`table_setup`).
        attack_params: list every attack's parameters; ``False`` names the attacks only.

    Returns:
        Plain lines.
    """
    ds = setup.get("dataset") or {}
    lines = [f"Dataset: {ds.get('name')} at {ds.get('resolution')}x{ds.get('resolution')} px{_sizes(setup)}."]
    ev = f"Evaluation model: {_model(setup.get('evaluation') or {})}"
    if setup.get("evaluation_test_accuracy") is not None:
        ev += f", test accuracy {100 * setup['evaluation_test_accuracy']:.1f}%"
    lines += [f"Target: {_model(setup.get('target') or {})}. {ev}."]
    attacks = setup.get("attacks") or {}
    if attacks and attack_params:
        lines.append("Attacks: " + "; ".join(
            f"{a} ({v.get('plugin')}" + (f": {_params(v.get('params') or {})})" if v.get("params") else ")")
            for a, v in attacks.items()) + ".")
    elif attacks:
        lines.append("Attacks: " + ", ".join(f"{a} ({v.get('plugin')})" for a, v in attacks.items()) + ".")
    return lines


def overrides_line(overrides: list[str] | None, flag: str = "--set") -> str:
    """The ``--set`` overrides in one line (``flag`` is how the option is written, e.g. LaTeX markup)."""
    if overrides is None:
        return f"Overrides ({flag}): not recorded; the values above are the resolved ones."
    return f"Overrides ({flag}): " + (", ".join(overrides) if overrides else "none") + "."


def experiment_overrides(overrides: list[str] | None) -> list[str] | None:
    """The overrides that change the experiment: ``run.*`` settings (device, threads, the store and
    output folders, ...) are left out, so no local path reaches a paper."""
    if overrides is None:
        return None
    return [o for o in overrides if o.split("=", 1)[0].strip().split(".", 1)[0].split("[", 1)[0] != "run"]


def metric_label(setup: dict[str, Any] | None, metric: str) -> str:
    """A metric key for display: with its feature extractor when that is not the default, e.g.
    ``fid (Inception)``; the key itself otherwise (keys never change, only labels)."""
    for m in (setup or {}).get("metrics") or []:
        if metric in (m.get("keys") or []):
            ext = (m.get("params") or {}).get("extractor")
            if ext and ext != DEFAULT_EXTRACTOR:
                return f"{metric} ({EXTRACTOR_NAMES.get(str(ext), str(ext))})"
    return metric
