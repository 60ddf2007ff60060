"""The suite schema: typed models of every section of a suite file.

A suite names the dataset and its split, the target architecture and training recipe, the
defenses, the evaluation model, the image prior, the attacks, the metrics, the seeds, local
weights files and run settings (``run:``, with ``run.ray:`` for the Ray executor). Plugin
``params`` stay plain mappings here; ``inversion_bench.config`` validates them against each
plugin's ``Params`` and reads, merges and overrides suite files into these models.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from inversion_bench.checkpoints import Checkpoint
from inversion_bench.data.splits import SplitSpec
from inversion_bench.record_model import DEFAULT_WORST_CASE_METRIC
from inversion_bench.training import TrainingRecipe


class _Strict(BaseModel):
    """Unknown keys are errors; floats must be finite (a field that needs inf or nan says so with
    ``Field(allow_inf_nan=True)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


SEED_MAX = 2**32 - 1  # numpy's and CUDA's seeds are 32-bit
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description=f"a seed, 0..{SEED_MAX}")]


class PluginRef(_Strict):
    """A plugin by name with its parameters (validated against the plugin's ``Params``)."""

    name: str = Field(description="registered plugin name")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's parameters")


class DatasetConfig(_Strict):
    name: str = Field("synthetic-faces", description="dataset plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    resolution: int = Field(64, ge=8, le=1024, description="images are resized to this square size (datasets "
                            "read from files take params.crop: center|pad for non-square images and "
                            "params.grayscale)")
    split: SplitSpec = Field(default_factory=SplitSpec)


class ModelConfig(_Strict):
    architecture: PluginRef
    training: TrainingRecipe = Field(default_factory=TrainingRecipe)
    checkpoint: Checkpoint | None = Field(None, description="an already-trained classifier instead of "
                                          "training: a path, or {path, format: native|kedmi|gmi|mibench|ppa}")


class EvaluationConfig(ModelConfig):
    """The evaluation model (``evaluation:``): a classifier of another architecture than the target's,
    trained once per suite on the private training split, whose top-1 decision is attack accuracy."""

    audit: bool = Field(True, description="measure how often the evaluation model accepts real images of other "
                        "people (private test images of other identities, public identities): the record's "
                        "evaluator.audit, computed once per evaluation model and cached")
    second: ModelConfig | None = Field(None, description="an optional second evaluation model (another "
                                       "architecture or recipe) for the evaluator_agreement metric")

    @model_validator(mode="after")
    def _second_differs(self) -> EvaluationConfig:
        s = self.second
        if s is not None and (s.architecture, s.training, s.checkpoint) == (
                self.architecture, self.training, self.checkpoint):
            raise ValueError("second: the same model as the evaluation model (architecture, training and "
                             "checkpoint); give evaluation.second another architecture or training recipe")
        return self


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ID_RULE = ("1-64 letters, digits, '.', '_' or '-' (ASCII), starting with a letter or digit (not '.', '_' or '-'; "
           "it names the record files)")


def check_id(v: str | None) -> str | None:
    """An entry id names files (records, store folders): :data:`ID_RULE`, so it can never leave the
    run folder (no '/', no leading '.', no NUL) or overflow a file name."""
    if v is not None and not (isinstance(v, str) and _ID.fullmatch(v)):
        shown = v if len(v) <= 40 else v[:37] + "..."
        length = f"; it has {len(v)} characters" if len(v) > 64 else ""
        raise ValueError(f"{shown!r} is not a valid id: use {ID_RULE}{length}")
    return v


def _default_id_valid(entry: DefenseConfig | AttackConfig) -> None:
    """An entry without ``id`` is named by its label (or plugin name): that must make a valid id too."""
    ident = entry_id(entry)
    if not entry.id and not _ID.fullmatch(ident):
        source = "label" if entry.label else "name"
        raise ValueError(f"the id made from its {source} ({ident[:40]!r}..., {len(ident)} characters) is not a "
                         f"valid id; give the entry an id: {ID_RULE}")


class SweptConfig(_Strict):
    group: str = Field(description="id of the sweep: entries with the same group are one curve")
    param: str = Field(description="the swept defense parameter")
    value: Any = Field(description="this entry's value of it")


class DefenseConfig(_Strict):
    name: str = Field(description="defense plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(None, description="short unique id used in file names (default: from the label)")
    label: str | None = Field(None, description="display name in tables")
    checkpoint: Checkpoint | None = Field(None, description="an already-trained target instead of training: "
                                          "a path, or {path, format: native|kedmi|gmi|mibench|ppa}")
    swept: SweptConfig | None = Field(None, description="set by a sweep: (see inversion_bench.sweep): the group "
                                      "this entry belongs to and the value of the swept parameter")

    _id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))
    _default_id = model_validator(mode="after")(lambda self: _default_id_valid(self) or self)


class AttackConfig(_Strict):
    name: str = Field(description="attack plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    label: str | None = None
    identities: Literal["all"] | int | list[int] = Field(
        "all", description="attacked classes: 'all', the first N, or a list of class indices")

    _id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))
    _default_id = model_validator(mode="after")(lambda self: _default_id_valid(self) or self)

    @field_validator("identities")
    @classmethod
    def _identities(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"the first N classes needs N >= 1, got {v}")
        if isinstance(v, list) and any(i < 0 for i in v):
            raise ValueError(f"class indices start at 0, got {min(v)}; use indices 0..classes-1")
        return v


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RayConfig(_Strict):
    """Resources and retries of every job when the suite runs on a Ray cluster (``--executor ray``).

    Each job (evaluation model, prior, one target per defense and seed, one attack+scoring per pair)
    is one Ray task with these resource requests.
    """

    address: str | None = Field(None, description="cluster to join: auto (RAY_ADDRESS or the one `ray start` "
                                "began on this machine; an error if none), host:port, ray://host:port (Ray "
                                "client), local (always a new local one); default: like auto, else a new local one")
    num_cpus: float = Field(1.0, gt=0, description="CPU cores per task (torch threads = this, or run.threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per task (fractions share a GPU)")
    memory: ByteSize | None = Field(None, description="memory per task for Ray's scheduler, e.g. 4GB (default: none)")
    max_retries: int = Field(3, ge=0, description="reruns of a task whose worker process or node died")
    retry_exceptions: bool = Field(False, description="also rerun a task that raised a Python exception "
                                   "(off: training that diverged with a fixed seed would diverge again)")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v in ("auto", "local") or re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", v):
            return v
        raise ValueError(f"must be auto, local, ray://host:port or host:port, got {v!r}")


class RunConfig(_Strict):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    output: str = Field("runs", description="folder holding run folders; the run folder is <output>/<name>; "
                        "a local path (on a cluster: a shared filesystem mounted at the same path on every node)")
    executor: Literal["local", "ray"] = Field("local", description="local: every job in this process; "
                                              "ray: every job a task on a Ray cluster (see run.ray)")
    ray: RayConfig = Field(default_factory=RayConfig)
    store: str | None = Field(None, description="product store (default: <run folder>/store); one store may serve "
                              "many run folders, so identical products are computed once; a local path, relative "
                              "to the working directory like output")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite file in the run folder)")
    tracking: bool = Field(True, description="mirror records to MLflow")
    amp: bool = Field(False, description="automatic mixed precision (bf16 where supported)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile models for training")
    attack_batch_size: int = Field(64, ge=1, description="latents/images optimised together")
    eval_batch_size: int = Field(256, ge=1)
    progress: bool = True
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    workers: int | None = Field(None, ge=1, description="local executor: jobs run at the same time, each in a "
                                "worker process (1: all in this process); default: cores // run.threads when "
                                "threads is set and the device is the CPU, else 1")

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "://" in v):
            raise ValueError(f"must be a local folder path, got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _ray_gpus(self) -> RunConfig:
        if self.executor == "ray" and self.device.startswith("cuda") and self.ray.num_gpus == 0:
            raise ValueError(f"run.device {self.device} with run.executor ray needs GPUs for the tasks; set "
                             "run.ray.num_gpus (e.g. 1), or run.device: auto")
        return self

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if _URL.match(v):
            raise ValueError(f"must be a local path, got the URL {v!r}: remote storage URLs (fsspec) are not "
                             "supported; mount the storage (NFS, a FUSE mount of the bucket) at the same path on "
                             "every node and give that path, e.g. /mnt/shared/runs")
        return v


class TableConfig(_Strict):
    """The paper table: which columns ``leaderboard.tex`` and the tables of ``leaderboard.md`` show, and
    how long the LaTeX caption is (the CSV and the page keep every column). Names are checked against
    the suite's attacks and metrics when it is validated."""

    metrics: list[str] | None = Field(None, min_length=1, description="metric keys whose columns the paper "
                                      "table shows, e.g. [attack_acc@1, knn_distance] (the test accuracy and the "
                                      "worst case always show); default: every metric")
    attacks: list[str] | None = Field(None, min_length=1, description="attack ids whose columns the paper table "
                                      "shows; default: every attack (columns are grouped by access level, then "
                                      "in suite order)")
    caption: Literal["short", "full"] = Field("short", description="LaTeX caption: short (the setup in one line, "
                                              "the rest on the report page) or full (every attack's parameters)")

    @field_validator("metrics", "attacks")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        twice = sorted(x for x, n in Counter(v or []).items() if n > 1)
        if twice:
            raise ValueError(f"{twice[0]!r} is listed more than once; list each name once")
        return v


class ReportConfig(_Strict):
    """How the leaderboard states uncertainty (kept in every record, so a table rebuilt from records
    alone reads the same)."""

    significance: float = Field(0.05, gt=0, lt=1, description="a difference to the baseline is marked only "
                                "when its defense test over seeds, adjusted for the table's number of tests, gives "
                                "a p-value below this level (otherwise grey)")
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of the intervals")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples per interval (and Monte Carlo draws of a "
                           "permutation test too large to enumerate)")
    intervals: bool = Field(False, description="Markdown and LaTeX show mean ± interval half-width (the CSVs "
                            "and the page's tooltips always carry the interval)")
    correction: Literal["bh", "holm", "none"] = Field(
        "bh", description="multiplicity correction over the table's defense tests: bh (Benjamini-Hochberg, false "
        "discovery rate), holm (family-wise error rate) or none")
    seed_test: Literal["two-sample", "paired"] = Field(
        "two-sample", description="the defense test over seeds: two-sample permutation of the rows' per-seed values "
        "(4 seeds per row at 0.05) or paired sign-flip of the per-seed differences (same seeds in both rows; 6 "
        "seeds at 0.05)")
    table: TableConfig = Field(default_factory=TableConfig, description="the paper table's columns and caption")
    worst_case: str = Field(DEFAULT_WORST_CASE_METRIC, description="the metric output the worst case takes the "
                            "strongest attack's mean of: one a suite metric declares with better: lower (a higher "
                            "value is more leakage); an attack that declares its own worst_case_metric uses that")


class Suite(_Strict):
    """A whole benchmark: every defense against every attack, scored by every metric."""

    name: str = Field(description="suite name; also the run folder's name")
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    target: ModelConfig
    evaluation: EvaluationConfig
    prior: PluginRef | None = Field(None, description="image prior (generator) for attacks that need one")
    prior_seed: Seed = Field(0, description="seed of prior training")
    defenses: list[DefenseConfig] = Field(min_length=1)
    baseline: str | None = Field(None, description="id of the defense the others are compared with (default: first)")
    attacks: list[AttackConfig] = Field(min_length=1)
    metrics: list[PluginRef] = Field(min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)
    weights: dict[str, str] = Field(default_factory=dict, description="name -> local file or folder")
    run: RunConfig = Field(default_factory=RunConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            shown = v if len(v) <= 40 else v[:37] + "..."
            raise ValueError(f"use 1-100 letters, digits, '-', '_' and '.', starting with a letter or digit (it "
                             f"names the run folder), got {shown!r}")
        return v

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @model_validator(mode="after")
    def _ids(self) -> Suite:
        for kind in ("defenses", "attacks"):
            seen: dict[str, int] = {}
            for i, entry in enumerate(getattr(self, kind)):
                ident = entry_id(entry)
                if ident in seen:
                    raise ValueError(f"{kind}[{i}] and {kind}[{seen[ident]}] share the id {ident!r}; "
                                     "give each an 'id' (or a different label)")
                seen[ident] = i
        if len(set(self.seeds)) != len(self.seeds):
            twice = sorted(x for x, n in Counter(self.seeds).items() if n > 1)[:5]
            raise ValueError(f"seeds must be distinct, {twice} appear more than once")
        return self

    # convenience ---------------------------------------------------------------------------
    def defense_ids(self) -> list[str]:
        return [entry_id(d) for d in self.defenses]

    def attack_ids(self) -> list[str]:
        return [entry_id(a) for a in self.attacks]

    @property
    def baseline_id(self) -> str:
        return self.baseline or self.defense_ids()[0]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def entry_id(entry: DefenseConfig | AttackConfig) -> str:
    if entry.id:
        return entry.id
    return slug(entry.label) if entry.label else entry.name


def entry_label(entry: DefenseConfig | AttackConfig) -> str:
    return entry.label or entry_id(entry)


def non_finite(value: Any, loc: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], float] | None:
    """The first inf or nan float in a validated model (its fields, lists and tuples, nested models)
    as (field path, value), or None. Fields that allow it (``Field(allow_inf_nan=True)``) and free-form
    ones (``Any``, mappings: validated by their plugin's ``Params``) are skipped. This covers models
    outside this module (the training recipe, a plugin's nested models) whatever their own config."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (loc, value)
    if isinstance(value, list | tuple):
        items: Any = enumerate(value)
    elif isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name, info in type(value).model_fields.items()
                 if info.annotation is not Any and not any(getattr(m, "allow_inf_nan", False) for m in info.metadata))
    else:
        return None
    for key, item in items:
        found = non_finite(item, (*loc, key))
        if found is not None:
            return found
    return None
