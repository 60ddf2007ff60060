"""The result record as a typed, versioned model, and the one upgrader that reads every record written so far.

A record is one JSON file per finished (defense, attack, seed) (:mod:`~inversion_bench.results`). Its shape
is :class:`Record` (``schema_version`` 2). What the leaderboard needs to know about a metric travels in the
record, as the metric plugin declared it (:class:`MetricInfo`: unit, direction, scope, per-identity values),
so tables are rebuilt from records alone, without importing a metric plugin (or torch).

Versions:

* **1** (no ``schema_version``; a key ``schema: 1``): per-identity values sat in ``metric_details`` under
  ``per_identity_<m>`` (``per_identity_acc@1`` for ``attack_acc@1``) or ``per_identity`` of the block
  named like the metric; the leaderboard guessed a percent display from the name and always took the worst
  case over ``attack_acc@1``. :func:`upgrade` turns such a record into version 2 by exactly those rules,
  so an old run folder gives the same tables.
* **2**: ``metric_info`` (declarations), ``per_identity`` (metric -> values by identity) and
  ``worst_case_metric``.

This module imports neither torch nor a plugin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
DEFAULT_WORST_CASE_METRIC = "attack_acc@1"
"""The worst-case metric when neither the suite's ``report:`` nor the attack names one."""

Unit = Literal["share", "score", "distance"]
Direction = Literal["higher", "lower"]
Scope = Literal["attack", "target"]


class MetricOutput(BaseModel):
    """What a metric plugin declares about one value it returns.

    Attributes:
        better: what the defender wants (``"lower"``: a higher value is more leakage).
        unit: ``"share"`` (a fraction in [0, 1], shown in percent), ``"score"`` or ``"distance"``.
        per_identity: whether it returns one value per attacked identity too (intervals over identities).
        label: words for the value in legends (``"attack accuracy"``); the name when empty.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    better: Direction
    unit: Unit = "score"
    per_identity: bool = False
    label: str = ""


class MetricInfo(MetricOutput):
    """A metric output's declaration as a record keeps it: the declaration, its plugin and scope."""

    plugin: str
    scope: Scope = "attack"


class IdentityValues(BaseModel):
    """Per-identity values of one metric: identity (as text) -> value, and how many attacked identities
    without images a version-1 record counted only in a total (values 0, ids unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: dict[str, float]
    unknown: int = Field(0, ge=0)


class Record(BaseModel):
    """One result record (``schema_version`` 2).

    The fields the leaderboard derives its rules from (the metric declarations, per-identity values, the
    worst-case metric) and the pair (defense, attack, seed) are typed strictly; the provenance fields keep
    whatever their writer put there (the leaderboard names a malformed one in a note instead of dropping
    the record). Keys not named here (written by other versions or tools) are kept as they are.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: Literal[2] = SCHEMA_VERSION
    suite: Any = None
    suite_hash: Any = None
    run_dir: Any = None
    defense: str
    defense_label: Any = None
    defense_plugin: Any = None
    defense_params: Any = None
    defense_index: Any = None
    defense_swept: Any = None
    attack: str
    attack_label: Any = None
    attack_plugin: Any = None
    attack_params: Any = None
    attack_index: Any = None
    access: Any = None
    seed: int
    baseline: Any = None
    status: Any = None
    error: Any = None
    traceback: Any = None
    metrics: dict[str, Any] | None = Field(default_factory=dict)
    directions: dict[str, Any] | None = Field(default_factory=dict)
    metric_info: dict[str, MetricInfo] = Field(default_factory=dict)
    per_identity: dict[str, IdentityValues] = Field(default_factory=dict)
    worst_case_metric: str = DEFAULT_WORST_CASE_METRIC
    metric_details: Any = None
    metric_errors: Any = None
    metric_scopes: Any = None
    keys: Any = None
    config_hash: Any = None
    code_version: Any = None
    plugin_versions: Any = None
    timings: Any = None
    device: Any = None
    created: Any = None
    num_classes: Any = None
    num_reconstructions: Any = None
    queries: Any = None
    attack_info: Any = None
    target: Any = None
    evaluator: Any = None
    setup: Any = None
    report_settings: Any = None
    judge: Any = None  # records of another judge (``bench rescore``): :func:`judge_key`, the default judge, ...
    judge_agreement: Any = None  # those records: top-1 decisions compared with the default judge's


def judge_key(rec: Mapping[str, Any]) -> str | None:
    """The key of the judge that scored ``rec``: the store key of its evaluation model (``keys.evaluator``),
    which every record of any version names. Records of the suite's own evaluation model and records written by
    ``bench rescore`` with another one (``judge.key``, in ``records/judges/<key>/``) differ in it; two records
    of one (defense, attack, seed) are comparable only under the same judge key. ``None`` for a record without
    keys (a hand-made one)."""
    judge = rec.get("judge")
    if isinstance(judge, Mapping) and judge.get("key"):
        return str(judge["key"])
    keys = rec.get("keys")
    value = keys.get("evaluator") if isinstance(keys, Mapping) else None
    return str(value) if value else None


# --------------------------------------------------------------------------------------------------
# version 1 -> 2: the rules the leaderboard applied to metric names before metrics declared them

_V1_SHARE = re.compile(r"(^|_)acc(uracy)?(@\d+)?$")
_V1_SHARES = frozenset({"knowledge_extraction", "evaluator_agreement", "false_acceptance"})
_V1_FIRST = ("attack_acc@1", "attack_acc@5")
_V1_LABELS = {"attack_acc@1": "attack accuracy"}


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
        return None
    return float(x)


def v1_identity_values(rec: Mapping[str, Any], metric: str) -> IdentityValues | None:
    """The per-identity values of ``metric`` in a version-1 record: the dict ``per_identity_<m>`` (or, for
    ``attack_<x>``, ``per_identity_<x>``) in any ``metric_details`` block, or ``per_identity`` of the block
    named ``m``, when it holds one number per identity; a block listing fewer identities than
    ``identities_attacked`` while ``identities_without_images`` is positive adds those as ``unknown``."""
    keys = [f"per_identity_{metric}"]
    if metric.startswith("attack_"):
        keys.append(f"per_identity_{metric[len('attack_'):]}")
    details = rec.get("metric_details") or {}
    if not isinstance(details, Mapping):
        return None
    for name, block in details.items():
        if not isinstance(block, Mapping):
            continue
        for key in [*keys, *(["per_identity"] if name == metric else [])]:
            per = block.get(key)
            if not isinstance(per, Mapping) or not per:
                continue
            values = {str(k): v for k, v in ((k, _finite(v)) for k, v in per.items()) if v is not None}
            if len(values) < len(per):  # not one number per identity (e.g. counts per identity)
                continue
            attacked = _finite(block.get("identities_attacked"))
            without = _finite(block.get("identities_without_images"))
            unknown = 0
            if attacked is not None and without and len(values) < int(attacked):
                unknown = min(int(without), int(attacked) - len(values))
            return IdentityValues(values=values, unknown=unknown)
    return None


def _v1_info(rec: Mapping[str, Any], metric: str, per_identity: bool) -> MetricInfo:
    directions = rec.get("directions") if isinstance(rec.get("directions"), Mapping) else {}
    scopes = rec.get("metric_scopes") if isinstance(rec.get("metric_scopes"), Mapping) else {}
    better = directions.get(metric)
    scope = scopes.get(metric)
    return MetricInfo(
        better=better if better in ("higher", "lower") else "lower",
        unit="share" if _V1_SHARE.search(metric) or metric in _V1_SHARES else "score",
        per_identity=per_identity,
        label=_V1_LABELS.get(metric, ""),
        plugin="attack_accuracy" if metric in _V1_FIRST else metric,
        scope="target" if metric == "test_accuracy" or scope == "target" else "attack",
    )


def _upgrade_v1(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k != "schema"}
    names: dict[str, None] = {}
    for key in ("metrics", "directions"):
        block = rec.get(key)
        names.update(dict.fromkeys(str(m) for m in (block if isinstance(block, Mapping) else ())))
    per = {m: v for m in names if (v := v1_identity_values(rec, m)) is not None}
    first = [m for m in _V1_FIRST if m in names]  # the order v1 tables showed: acc@1, acc@5, then by name
    out["metric_info"] = {m: _v1_info(rec, m, m in per).model_dump()
                          for m in [*first, *sorted(set(names) - set(first))]}
    out["per_identity"] = {m: v.model_dump() for m, v in per.items()}
    out["worst_case_metric"] = DEFAULT_WORST_CASE_METRIC
    out["schema_version"] = SCHEMA_VERSION
    return out


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any version as a version-2 mapping of plain JSON values (the input is not changed; validate
    it with :func:`load_record`).

    Raises:
        ValueError: the record names a ``schema_version`` this code does not know (a newer writer).
    """
    version = rec.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return dict(rec)
    if version == 1 and "schema_version" not in rec:
        return _upgrade_v1(rec)
    raise ValueError(f"schema_version {version!r} is not one this version of inversion-bench reads "
                     f"(it reads 1 and {SCHEMA_VERSION}); upgrade inversion-bench to read it")


def load_record(rec: dict[str, Any]) -> Record:
    """A record of any version (a parsed JSON object) as a validated :class:`Record`.

    Raises:
        ValueError: an unknown ``schema_version`` or a field of the wrong type (pydantic's message).
    """
    return Record.model_validate(upgrade(rec))
