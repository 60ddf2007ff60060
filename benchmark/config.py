"""Suite files: YAML validated into typed models.

A suite names the dataset and its split, the target architecture and training recipe, the
defenses, the evaluation model, the image prior, the attacks, the metrics, the seeds, local
weights files and run settings. ``include:`` merges a base suite (paths relative to the including
file; mappings merge key by key, everything else is replaced; a block naming another plugin drops
the base's ``params``). CLI overrides beat the YAML, which
beats defaults.

Every error names the file, the field path and the fix, e.g.
``suites/x.yaml: defenses[2].params.alpha: must be <= 1, got 1.5``.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from inversion_bench.data.splits import SplitSpec
from inversion_bench.errors import ConfigError, UnknownPluginError
from inversion_bench.registry import REGISTRIES, Registry
from inversion_bench.training import TrainingRecipe
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginRef(_Strict):
    """A plugin by name with its parameters (validated against the plugin's ``Params``)."""

    name: str = Field(description="registered plugin name")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's parameters")


class DatasetConfig(_Strict):
    name: str = Field("synthetic-faces", description="dataset plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    resolution: int = Field(64, ge=8, le=1024, description="images are resized to this square size")
    split: SplitSpec = Field(default_factory=SplitSpec)


class ModelConfig(_Strict):
    architecture: PluginRef
    training: TrainingRecipe = Field(default_factory=TrainingRecipe)
    checkpoint: str | None = Field(None, description="an already-trained state dict to load instead of training")


class DefenseConfig(_Strict):
    name: str = Field(description="defense plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(None, description="short unique id used in file names (default: from the label)")
    label: str | None = Field(None, description="display name in tables")
    checkpoint: str | None = Field(None, description="an already-trained target state dict instead of training")


class AttackConfig(_Strict):
    name: str = Field(description="attack plugin")
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    label: str | None = None
    identities: Literal["all"] | int | list[int] = Field(
        "all", description="attacked classes: 'all', the first N, or a list of class indices")


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
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite file in the run folder)")
    tracking: bool = Field(True, description="mirror records to MLflow")
    amp: bool = Field(False, description="automatic mixed precision (bf16 where supported)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile models for training")
    attack_batch_size: int = Field(64, ge=1, description="latents/images optimised together")
    eval_batch_size: int = Field(256, ge=1)
    progress: bool = True
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")

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


class Suite(_Strict):
    """A whole benchmark: every defense against every attack, scored by every metric."""

    name: str = Field(description="suite name; also the run folder's name")
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    target: ModelConfig
    evaluation: ModelConfig
    prior: PluginRef | None = Field(None, description="image prior (generator) for attacks that need one")
    prior_seed: int = Field(0, description="seed of prior training")
    defenses: list[DefenseConfig] = Field(min_length=1)
    baseline: str | None = Field(None, description="id of the defense the others are compared with (default: first)")
    attacks: list[AttackConfig] = Field(min_length=1)
    metrics: list[PluginRef] = Field(min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    weights: dict[str, str] = Field(default_factory=dict, description="name -> local file or folder")
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"use letters, digits, '-', '_' and '.', got {v!r}")
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
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merges ``over`` into ``base`` key by key (lists and scalars are replaced).

    A plugin block that names another plugin than the base (``name:`` differs) does not inherit
    the base's ``params``: they belong to the other plugin.
    """
    if "name" in over and "name" in base and over["name"] != base["name"]:
        base = {k: v for k, v in base.items() if k != "params"}
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a suite file and resolves its ``include:`` chain into one mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such suite file")
    if path.resolve() in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path.resolve()))
        raise ConfigError(f"{path}: include: cycle ({chain}); remove one of the includes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}; fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a YAML mapping (key: value), got {type(data).__name__}")
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include: must be a file path or a list of paths")
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        if not inc_path.is_file():
            raise ConfigError(f"{path}: include: {inc}: no such file (looked at {inc_path})")
        merged = _deep_merge(merged, read_yaml(inc_path, (*_stack, path.resolve())))
    return _deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` (value parsed as YAML) -> (["a", "b", "c"], value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE, e.g. --set run.device=cpu")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, [] if nxt.isdigit() else {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (for 'unknown key' hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        current = _model_in(ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        m = _model_in(arg)
        if m is not None:
            return m
    return None


_BOUND_TEXT = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}


def format_error(err: dict[str, Any], model: type[BaseModel] | None, prefix: str = "") -> str:
    """One pydantic error -> 'field.path: what is wrong and the fix, got X'."""
    loc = tuple(err.get("loc", ()))
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    where = prefix + (("." if prefix and loc and not isinstance(loc[0], int) else "") + _loc_text(loc) if loc else "")
    where = where or "(top level)"
    if typ == "extra_forbidden":
        known = _known_fields(model, loc[:-1]) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown key.{hint} Allowed keys here: {', '.join(known)}" if known else \
            f"{where}: unknown key; remove it"
    if typ == "missing":
        return f"{where}: required field is missing; add it"
    if typ in _BOUND_TEXT:
        bound = next(iter(ctx.values())) if ctx else "?"
        return f"{where}: must be {_BOUND_TEXT[typ]} {bound}, got {inp!r}"
    if typ in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        kind = "an integer" if typ.startswith("int") else "a number"
        return f"{where}: must be {kind}, got {inp!r} ({type(inp).__name__}); write it without quotes"
    if typ == "too_short":
        return f"{where}: must not be empty; list at least {ctx.get('min_length', 1)} entry"
    if typ == "literal_error":
        return f"{where}: must be one of {ctx.get('expected')}, got {inp!r}"
    if typ in ("model_type", "dict_type"):
        return f"{where}: must be a mapping (key: value), got {inp!r}"
    if typ == "list_type":
        return f"{where}: must be a list, got {inp!r}"
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{where}: {msg}" + (f", got {inp!r}" if typ not in ("value_error", "assertion_error") and inp is not None
                                 and not isinstance(inp, dict | list) else "")


def _raise_validation(source: str, exc: ValidationError, model: type[BaseModel] | None, prefix: str = "") -> None:
    lines = [f"{source}: {format_error(e, model, prefix)}" for e in exc.errors()]
    raise ConfigError("\n".join(lines)) from None


def _check_plugin(source: str, where: str, reg: Registry[Any], name: str, params: dict[str, Any]) -> Any:
    try:
        cls = reg.get(name)
    except UnknownPluginError as exc:
        raise ConfigError(f"{source}: {where}.name: {exc}") from None
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        _raise_validation(source, exc, cls.Params, prefix=f"{where}.params")
    except TypeError as exc:
        raise ConfigError(f"{source}: {where}.params: {exc}") from None


class LoadedSuite:
    """A validated suite with every plugin resolved and its parameters validated."""

    def __init__(self, suite: Suite, source: str, raw: dict[str, Any]) -> None:
        self.suite = suite
        self.source = source
        self.raw = raw
        self.defense_params: list[Any] = []
        self.attack_params: list[Any] = []
        self.metric_params: list[Any] = []
        self.prior_params: Any = None
        self.dataset_params: Any = None
        self.target_arch_params: Any = None
        self.eval_arch_params: Any = None

    @property
    def folder(self) -> Path:
        """Relative data, checkpoint and weights paths are taken from here: the working directory
        (like ``run.output``); only ``include:`` paths are relative to the including file."""
        return Path.cwd()

    def weights(self) -> dict[str, Path]:
        """The weights section with ``~`` expanded and relative paths made absolute."""
        out = {}
        for name, p in self.suite.weights.items():
            path = Path(p).expanduser()
            out[name] = path if path.is_absolute() else (self.folder / path)
        return out


def validate_suite(suite_dict: dict[str, Any], source: str) -> LoadedSuite:
    """Validates a suite mapping (structure, types, plugin names and plugin params)."""
    try:
        suite = Suite(**suite_dict)
    except ValidationError as exc:
        _raise_validation(source, exc, Suite)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    loaded = LoadedSuite(suite, source, suite_dict)
    R = REGISTRIES
    loaded.dataset_params = _check_plugin(source, "dataset", R["datasets"], suite.dataset.name, suite.dataset.params)
    loaded.target_arch_params = _check_plugin(source, "target.architecture", R["architectures"],
                                              suite.target.architecture.name, suite.target.architecture.params)
    loaded.eval_arch_params = _check_plugin(source, "evaluation.architecture", R["architectures"],
                                            suite.evaluation.architecture.name, suite.evaluation.architecture.params)
    if suite.evaluation.architecture == suite.target.architecture:
        raise ConfigError(f"{source}: evaluation.architecture: must differ from target.architecture "
                          f"(both {suite.target.architecture.name}); attack accuracy needs a separate model")
    for i, d in enumerate(suite.defenses):
        loaded.defense_params.append(_check_plugin(source, f"defenses[{i}]", R["defenses"], d.name, d.params))
    needs_prior = []
    for i, a in enumerate(suite.attacks):
        loaded.attack_params.append(_check_plugin(source, f"attacks[{i}]", R["attacks"], a.name, a.params))
        if getattr(R["attacks"].get(a.name), "needs_prior", False):
            needs_prior.append(i)
    for i, m in enumerate(suite.metrics):
        loaded.metric_params.append(_check_plugin(source, f"metrics[{i}]", R["metrics"], m.name, m.params))
    if suite.prior is not None:
        loaded.prior_params = _check_plugin(source, "prior", R["generators"], suite.prior.name, suite.prior.params)
    elif needs_prior:
        i = needs_prior[0]
        raise ConfigError(f"{source}: attacks[{i}]: {suite.attacks[i].name} needs an image prior; add a "
                          "prior: section (e.g. prior: {name: dcgan})")
    if suite.baseline is not None and suite.baseline not in suite.defense_ids():
        raise ConfigError(f"{source}: baseline: {suite.baseline!r} is not a defense id; "
                          f"choose one of {suite.defense_ids()}")
    return loaded


def load_suite(path: str | Path, overrides: list[str] | None = None) -> LoadedSuite:
    """Reads, merges (include:), overrides and validates a suite file."""
    data = read_yaml(Path(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        try:
            apply_override(data, keys, value)
        except (IndexError, ValueError, TypeError, AttributeError):
            raise ConfigError(f"--set {text}: {'.'.join(keys)} does not exist in {path}") from None
    return validate_suite(data, str(path))
