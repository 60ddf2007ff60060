"""A leaderboard entry: one defense of one run, published under a protocol, as a typed, versioned model.

``bench publish RUN --protocol NAME --out entries/`` writes one entry (JSON) per defense of a run folder
(:mod:`~inversion_bench.publish`); ``bench site`` ranks entries by their worst case
(:mod:`~inversion_bench.leaderboard.site`). The model here is the truth of the entry format: entries are
validated against it (pydantic), and the JSON Schema that ships with the package
(``inversion_bench/schemas/entry.schema.json``) is exported from it (:func:`entry_json_schema`; a test checks
that the shipped file equals the export), so tools without Python can validate an entry with any JSON
Schema validator.

What an entry holds:

* ``protocol``: what makes numbers comparable: the protocol's name and :attr:`Protocol.key` (a hash of the
  name, the data key (dataset, resolution and identity split), the judge (evaluation model key), the target
  architecture and training recipe, and the worst-case metric). Entries of different keys never share a
  table. The run's suite hash and the evaluation model's audit travel beside it.
* ``defense``: its plugin, parameters, version and the store key of its trained target on every seed (the
  *published target*: external evaluations must attack exactly these).
* ``utility``: the target's test accuracy with its interval; ``attacks``: every attack's numbers (each
  metric's mean, std and interval over seeds and identities); ``external``: evaluations by other runs on the
  same targets; ``worst_case``: the strongest evaluation (own or external) and which set it.
* provenance: seeds, code versions, plugin versions; ``artifacts``: the SHA-256 of every record file and
  stored reconstruction the numbers come from (``bench publish --check`` recomputes them).

Numbers are plain JSON: a value that does not exist (an interval with one seed) is ``null``, never NaN.
This module imports neither torch nor the leaderboard.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENTRY_SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/entry.schema.json"
"""The JSON Schema of :class:`Entry`, package data of ``inversion_bench``."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _finite_or_none(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number (write null for a value that does not exist)")
    return value


class Numbers(_Model):
    """One metric of one evaluation (or the target's utility) over the seeds.

    Attributes:
        metric: the metric's key (``attack_acc@1``, ``test_accuracy``).
        label: words for it (its plugin's declaration; the key when it declared none).
        direction: better for the defender: ``"lower"`` or ``"higher"`` (``None`` when undeclared).
        unit: ``"share"`` (a fraction, shown in percent), ``"score"`` or ``"distance"``.
        mean, std: over seeds (std ``None`` with one seed).
        ci_low, ci_high: the interval of the mean (:mod:`~inversion_bench.leaderboard.stats`); ``None`` without one.
        ci_method: what the interval resamples, or why there is none.
        seeds, values: each seed's value, seeds ascending.
        n_failed: failed (defense, attack, seed) pairs behind this cell.
    """

    metric: str
    label: str = ""
    direction: Literal["higher", "lower"] | None = None
    unit: Literal["share", "score", "distance"] = "score"
    mean: float | None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = ""
    seeds: list[int]
    values: list[float]
    n_failed: int = Field(0, ge=0)

    _finite = field_validator("mean", "std", "ci_low", "ci_high")(_finite_or_none)

    @field_validator("values")
    @classmethod
    def _finite_values(cls, v: list[float]) -> list[float]:
        for x in v:
            _finite_or_none(x)
        return v


class Evaluation(_Model):
    """One attack's results against the defense's published targets.

    Attributes:
        attack: the attack's id in the run that ran it.
        label: its display name.
        plugin: the attack plugin; ``params`` its parameters; ``version`` the plugin's version text.
        access: white-box, black-box or label-only.
        reconstruction_keys: seed (as text) -> store key of its stored reconstructions.
        metrics: metric key -> its numbers (every metric the records hold for this attack).
    """

    attack: str
    label: str
    plugin: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    version: str | None = None
    access: str | None = None
    reconstruction_keys: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Numbers]


class FileHash(_Model):
    """A file an entry's numbers come from: its path (relative to the run folder) and SHA-256."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ProductHash(_Model):
    """A stored product (``<store>/<kind>/<key>/``): the SHA-256 of each of its files."""

    kind: str
    key: str
    files: dict[str, str]


class Artifacts(_Model):
    """Where the numbers come from, with content hashes to verify them against.

    Attributes:
        run_dir: the run folder (absolute, as it was when published).
        store: the product store of that run (absolute).
        records: every record file behind the numbers (paths relative to ``run_dir``).
        reconstructions: every stored reconstruction behind them (``attacks`` products of ``store``).
    """

    run_dir: str
    store: str
    records: list[FileHash]
    reconstructions: list[ProductHash]


class EvaluationModel(_Model):
    """The judge: the evaluation model whose decisions the attack accuracies are.

    Attributes:
        key: its store key (``keys.evaluator`` of the records, or the judge key of re-scored records).
        architecture: its architecture; ``test_accuracy`` on the private test split.
        audit: its audit on images it must not accept as an attacked identity (as the records hold it).
    """

    key: str
    architecture: str | None = None
    test_accuracy: float | None = None
    audit: dict[str, Any] = Field(default_factory=dict)


class Protocol(_Model):
    """What makes two entries comparable (same :attr:`key`), and the run's suite hash.

    Attributes:
        name: the name the publisher gave (``--protocol``).
        key: hash of name, data key, judge key, target setup and worst-case metric
            (:func:`~inversion_bench.publish.protocol_key`).
        suite_hash: the content hash of the published run's suite (defenses and attacks included).
        data_key: the store key of the data: dataset, its parameters, resolution and identity split.
        dataset: the dataset setup (name, params, resolution, split).
        target: the target setup (architecture, params, training length, checkpoint).
        evaluation: the judge.
        worst_case_metric: the metric the worst case takes.
    """

    name: str = Field(min_length=1)
    key: str
    suite_hash: str
    data_key: str
    dataset: dict[str, Any]
    target: dict[str, Any]
    evaluation: EvaluationModel
    worst_case_metric: str


class Defense(_Model):
    """The defense of an entry: id and label in its run, plugin, parameters, version, and the store key
    of its trained target on every seed (seed as text)."""

    id: str
    label: str
    plugin: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    version: str | None = None
    target_keys: dict[str, str]


class ExternalEvaluation(_Model):
    """An evaluation of the entry's published targets by another run (anyone's) of the same protocol.

    Attributes:
        id: ``<attack>@<suite hash of its run>``; unique within the entry.
        evaluation: its numbers.
        suite_hash: its run's suite hash; ``code_versions`` and ``plugins`` its provenance.
        artifacts: its records and reconstructions with their hashes.
        submitted: when it was added (ISO time, UTC); ``by`` who submitted it (free text, optional).
    """

    id: str
    evaluation: Evaluation
    suite_hash: str
    code_versions: list[str]
    plugins: dict[str, str]
    artifacts: Artifacts
    submitted: str
    by: str | None = None


class WorstCaseEntry(_Model):
    """The entry's headline: the strongest evaluation's mean of the worst-case metric.

    Attributes:
        metric: the worst-case metric; ``direction`` better for the defender.
        evaluation: which evaluation set it: ``run:<attack>`` or ``external:<external id>``.
        source: ``"run"`` (the publisher's own attacks) or ``"external"``.
        attack: its attack id; ``label`` its display name.
        mean, ci_low, ci_high, ci_method, seeds, values: its numbers.
        run_mean: the worst case over the publisher's own attacks alone (``None`` without one).
        partial: some evaluation lacks a value on some seed (the headline covers only some of them).
        unreliable: an external evaluation set the worst case: the publisher's own attacks missed a stronger
            one (RobustBench's flag for an evaluation that overestimated a defense).
        evaluations: how many evaluations (own and external) it is the maximum over.
    """

    metric: str
    direction: Literal["higher", "lower"] | None = "lower"
    evaluation: str | None
    source: Literal["run", "external"] | None
    attack: str | None
    label: str | None
    mean: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = ""
    seeds: list[int]
    values: list[float]
    run_mean: float | None
    partial: bool
    unreliable: bool
    evaluations: int = Field(ge=0)

    _finite = field_validator("mean", "ci_low", "ci_high", "run_mean")(_finite_or_none)


class Published(_Model):
    """When and with what the entry was written: ISO time (UTC), the inversion-bench version, who (optional)."""

    created: str
    tool: str
    by: str | None = None


class Entry(_Model):
    """One leaderboard entry (``schema_version`` 1): one defense of one run under one protocol."""

    schema_version: Literal[1] = ENTRY_SCHEMA_VERSION
    id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    protocol: Protocol
    defense: Defense
    utility: Numbers
    attacks: list[Evaluation]
    external: list[ExternalEvaluation] = Field(default_factory=list)
    worst_case: WorstCaseEntry
    seeds: list[int]
    code_versions: list[str]
    plugins: dict[str, str]
    artifacts: Artifacts
    published: Published


def entry_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Entry` (draft 2020-12, as pydantic exports it)."""
    schema = Entry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"inversion-bench-entry-v{ENTRY_SCHEMA_VERSION}"
    return schema


def schema_text() -> str:
    """:func:`entry_json_schema` as the text of the shipped file (sorted keys, two-space indent, final newline)."""
    return json.dumps(entry_json_schema(), indent=2, sort_keys=True) + "\n"


def shipped_schema() -> str:
    """The text of the JSON Schema file that ships with the package."""
    return resources.files("inversion_bench").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


def load_entry(data: Any, where: str) -> Entry:
    """A parsed entry (a JSON object) as a validated :class:`Entry`.

    Raises:
        ValueError: it is not an entry of a version this code reads; the message names ``where``, each field
            and what is wrong with it.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: holds a JSON {type(data).__name__}, not an entry object")
    version = data.get("schema_version")
    if version != ENTRY_SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {version!r} is not one this version of inversion-bench reads "
                         f"(it reads {ENTRY_SCHEMA_VERSION}); publish it again with `bench publish`")
    from pydantic import ValidationError

    try:
        return Entry.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:8])
        raise ValueError(f"{where}: not a valid entry ({problems})") from None
