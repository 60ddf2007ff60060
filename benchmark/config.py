"""Suite files: YAML read, merged, overridden and validated into typed models.

The models of every section are in ``inversion_bench.suite_schema`` (re-exported here). ``include:``
merges a base suite (paths relative to the including file, else a built-in suite by name, see
``builtin_suites``; mappings merge key by key, everything else is replaced, ``<key>+:`` extends the
base's list; a block naming another plugin drops the base's ``params``). A run folder's
``suite.json`` is read as its resolved suite (``config_overrides``). CLI overrides beat the YAML,
which beats defaults. Plugin names are looked up in the registries and their ``params`` validated
against each plugin's ``Params``.

Every error names the file, the field path and the fix, e.g.
``suites/x.yaml: defenses[2].params.alpha: must be <= 1, got 1.5``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from inversion_bench.builtin_suites import resolve_include
from inversion_bench.config_messages import format_error, raise_validation, shorten
from inversion_bench.config_overrides import apply_override, blame_override, read_suite_json, shown_path
from inversion_bench.errors import ConfigError, UnknownPluginError
from inversion_bench.registry import REGISTRIES, Registry
from inversion_bench.report_check import check_report_table
from inversion_bench.strict_values import check_numbers
from inversion_bench.suite_schema import (
    AttackConfig,
    DatasetConfig,
    DefenseConfig,
    ModelConfig,
    PluginRef,
    RayConfig,
    ReportConfig,
    RunConfig,
    Suite,
    entry_id,
    entry_label,
    non_finite,
    slug,
)
from inversion_bench.sweep import expand_sweeps, sweep_lines

__all__ = [
    "AttackConfig", "DatasetConfig", "DefenseConfig", "LoadedSuite", "ModelConfig", "PluginRef", "RayConfig",
    "ReportConfig", "RunConfig", "Suite", "SuiteLoader", "apply_override", "check_identities", "entry_id",
    "entry_label", "format_error", "load_suite", "parse_override", "parse_yaml", "read_yaml", "slug",
    "validate_suite",
]


def _deep_merge(base: dict[str, Any], over: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Merges ``over`` into ``base`` key by key (lists and scalars are replaced; ``<key>+:`` extends
    the base's list ``<key>`` with its items).

    A plugin block that names another plugin than the base (``name:`` differs) does not inherit
    the base's ``params``: they belong to the other plugin.
    """
    if "name" in over and "name" in base and over["name"] != base["name"]:
        base = {k: v for k, v in base.items() if k != "params"}
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(k, str) and k.endswith("+") and len(k) > 1:
            key, cur = k[:-1], out.get(k[:-1], [])
            if key in over:
                raise ConfigError(f"{where}{key}: both {key}: and {k}: given; keep one of them")
            if not isinstance(v, list) or not isinstance(cur, list):
                got = type(v if not isinstance(v, list) else cur).__name__
                raise ConfigError(f"{where}{k}: extends a list with a list of items, got a {got}; write {k} [a, b]")
            out[key] = cur + copy.deepcopy(v)
        elif isinstance(v, dict):
            out[k] = _deep_merge(out[k] if isinstance(out.get(k), dict) else {}, v, f"{where}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


# Limits of a suite file: far above any real suite, low enough that a hostile file is refused at once.
MAX_BYTES = 10_000_000  # file size
MAX_DEPTH = 100  # nested mappings/lists
MAX_NODES = 200_000  # scalars, mappings and lists, every alias counted as the whole node it stands for


class SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags beyond plain data) that also refuses duplicate keys, nesting
    deeper than :data:`MAX_DEPTH`, recursive aliases and documents that expand (aliases included)
    to more than :data:`MAX_NODES` nodes: an alias bomb is refused while it is composed, before
    anything is built from it."""

    def __init__(self, text: str, source: str = "<yaml>") -> None:
        super().__init__(text)
        self.source = source
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to

    def _refuse(self, mark: Any, what: str) -> None:
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        raise ConfigError(f"{self.source}:{where} {what}")

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner's cost grows with the flow level: refuse deep [ and { before the composer sees them
        if self.flow_level >= MAX_DEPTH:
            self._refuse(self.get_mark(), f"nested deeper than {MAX_DEPTH} levels; a suite needs only a few, "
                         "flatten it")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                self._refuse(event.start_mark, f"the alias *{shorten(event.anchor, quote=False)} is used inside its "
                             "own anchor (a recursive structure); remove it")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels; a suite needs "
                         "only a few, flatten it")
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
            self._check_duplicates(node)
        else:
            children = []
        size = 1 + sum(self._sizes[id(c)] for c in children)
        if size > MAX_NODES:
            self._refuse(node.start_mark, f"expands to more than {MAX_NODES:,} values (aliases counted each time they "
                         "are used; an alias bomb?); write a smaller suite")
        self._sizes[id(node)] = size
        return node

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, str], Any] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key.start_mark)
            if first is not key.start_mark:
                self._refuse(key.start_mark, f"duplicate key {shorten(key.value)} (first at line {first.line + 1}); "
                             "remove one of them")


def _compose(text: str, source: str) -> Any:
    loader = SuiteLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> Any:
    """``text`` read by :class:`SuiteLoader`; malformed YAML raises a one-line ``ConfigError``."""
    try:
        return _compose(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = shorten(getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0], 200, quote=False)
        raise ConfigError(f"{source}:{where} malformed YAML: {problem}; fix the syntax") from None


def _read_text(path: Path) -> str:
    """The file's text; anything but UTF-8 text (or a file too large) is a one-line ``ConfigError``."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes, more than the {MAX_BYTES:,} a suite may have; is it a suite?")
    raw = path.read_bytes()
    must = "a suite must be UTF-8 text: save it as UTF-8 (and include: only YAML files)"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); {must}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start} is invalid in "
                          f"UTF-8: latin-1, UTF-16 or a binary file?); {must}") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains NUL bytes (UTF-16 or a binary file?); {must}")
    return text


def read_yaml(path: Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a suite file and resolves its ``include:`` chain into one mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such suite file")
    if path.resolve() in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path.resolve()))
        raise ConfigError(f"{path}: include: cycle ({chain}); remove one of the includes")
    data = parse_yaml(_read_text(path), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a YAML mapping (key: value), got {type(data).__name__}")
    includes = data.pop("include", None)
    if includes is None:
        return _deep_merge({}, data, f"{path}: ")
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include: must be a file path or a list of paths")
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = resolve_include(path, inc)
        merged = _deep_merge(merged, read_yaml(inc_path, (*_stack, path.resolve())), f"{path}: ")
    return _deep_merge(merged, data, f"{path}: ")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b[0].c=value`` or ``a.b.0.c=value`` (value parsed as YAML) -> (["a", "b", "0", "c"], value).
    A list entry may also be named by its id: ``attacks.<id>.params.steps=5``."""
    shown = shorten(text, 80, quote=False)
    if "=" not in text:
        raise ConfigError(f"--set {shown}: expected KEY.PATH=VALUE, e.g. --set run.device=cpu")
    key, raw = text.split("=", 1)
    keys = re.sub(r"\[(\d+)\]", r".\1", key.strip()).split(".")
    if not all(k.strip() and "[" not in k and "]" not in k for k in keys):
        what = ("empty key" if not key.strip() else f"empty part in the key path {shorten(key.strip(), 60)}"
                if not all(k.strip() for k in keys) else f"malformed key path {shorten(key.strip(), 60)}")
        raise ConfigError(f"--set {shown}: {what}; expected KEY.PATH=VALUE, e.g. --set run.device=cpu or "
                          "--set attacks[0].params.steps=5")
    try:
        value = _compose(raw, f"--set {shown}")
    except yaml.YAMLError:
        value = raw
    return [k.strip() for k in keys], value


def _check_plugin(source: str, where: str, reg: Registry[Any], name: str, params: dict[str, Any],
                  renames: dict[str, str] | None = None) -> Any:
    try:
        cls = reg.get(name)
    except UnknownPluginError as exc:
        raise ConfigError(f"{source}: {where}.name: {exc}") from None
    try:
        validated = cls.Params(**params)
    except ValidationError as exc:
        raise_validation(source, exc, cls.Params, prefix=f"{where}.params")
    except TypeError as exc:
        raise ConfigError(f"{source}: {where}.params: {exc}") from None
    _check_finite(source, validated, f"{where}.params")
    check_numbers(source, validated, params, f"{where}.params", renames)  # no true for 1, seeds of 32 bits
    return validated


def _check_finite(source: str, model: Any, prefix: str = "") -> None:
    """Every float of ``model`` is finite unless its field allows inf/nan (:func:`non_finite`)."""
    found = non_finite(model)
    if found is not None:
        loc, value = found
        err = {"type": "finite_number", "loc": loc, "input": value}
        raise ConfigError(f"{source}: {format_error(err, None, prefix)}")


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
        self.overrides: list[str] | None = None  # the --set overrides load_suite applied (None: not known)

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


# ``Suite(**x)`` with a non-mapping ``x`` raises a TypeError naming the class by its module; name it
# by its public path, as before the schema moved to ``suite_schema``.
_SUITE_CALL = f"{Suite.__module__}.{Suite.__qualname__}()"


def _public_type_error(exc: TypeError) -> str:
    return str(exc).replace(_SUITE_CALL, "inversion_bench.config.Suite()", 1)


def validate_suite(suite_dict: dict[str, Any], source: str) -> LoadedSuite:
    """Validates a suite mapping (structure, types, plugin names and plugin params); swept defenses
    (``sweep:``) are expanded first (:mod:`inversion_bench.sweep`)."""
    written, suite_dict = suite_dict, expand_sweeps(suite_dict, source)
    try:
        suite = Suite(**suite_dict)
    except ValidationError as exc:
        raise_validation(source, exc, Suite)
    except TypeError as exc:
        raise ConfigError(f"{source}: {_public_type_error(exc)}") from None
    _check_finite(source, suite)
    swept = sweep_lines(written, suite.defenses)
    check_numbers(source, suite, suite_dict, renames=swept)
    loaded = LoadedSuite(suite, source, suite_dict)
    R = REGISTRIES
    loaded.dataset_params = _check_plugin(source, "dataset", R["datasets"], suite.dataset.name, suite.dataset.params)
    loaded.target_arch_params = _check_plugin(source, "target.architecture", R["architectures"],
                                              suite.target.architecture.name, suite.target.architecture.params)
    loaded.eval_arch_params = _check_plugin(source, "evaluation.architecture", R["architectures"],
                                            suite.evaluation.architecture.name, suite.evaluation.architecture.params)
    if suite.target.checkpoint is not None:
        raise ConfigError(f"{source}: target.checkpoint: a target is trained or loaded per defense; move the file to "
                          "the defense it belongs to, e.g. defenses[0].checkpoint (the published target of no defense)")
    if suite.evaluation.architecture == suite.target.architecture:
        raise ConfigError(f"{source}: evaluation.architecture: must differ from target.architecture "
                          f"(both {suite.target.architecture.name}); attack accuracy needs a separate model")
    for i, d in enumerate(suite.defenses):
        loaded.defense_params.append(_check_plugin(source, f"defenses[{i}]", R["defenses"], d.name, d.params, swept))
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
    private = suite.dataset.split.private_identities
    if private != "all":
        check_identities(suite, len(private) if isinstance(private, list) else private, source)
    if suite.baseline is not None and suite.baseline not in suite.defense_ids():
        raise ConfigError(f"{source}: baseline: {suite.baseline!r} is not a defense id; "
                          f"choose one of {suite.defense_ids()}")
    check_report_table(suite, source)
    check_worst_case(suite, source)
    return loaded


def check_worst_case(suite: Suite, source: str) -> None:
    """``report.worst_case``, when the suite names one, is an output some suite metric declares with
    ``better: lower`` (the worst case is a maximum of leakage)."""
    if "worst_case" not in suite.report.model_fields_set:
        return
    name = suite.report.worst_case
    outputs = {o: out for m in suite.metrics for o, out in REGISTRIES["metrics"].get(m.name).outputs.items()}
    if name not in outputs:
        raise ConfigError(f"{source}: report.worst_case: {name!r} is no output of the suite's metrics; choose one of "
                          f"{sorted(o for o, out in outputs.items() if out.better == 'lower')} or add its metric")
    if outputs[name].better != "lower":
        raise ConfigError(f"{source}: report.worst_case: {name!r} is declared better: higher (a higher value is less "
                          "leakage), but the worst case takes the highest mean; choose one declared better: lower")


def check_identities(suite: Suite, num_classes: int, source: str) -> None:
    """Every attack's ``identities`` names private classes: a list holds indices 0..num_classes-1, a count N
    is at most num_classes; checked when the suite is validated if the split fixes the class count, else
    as soon as the data is split (before the run writes anything)."""
    for i, a in enumerate(suite.attacks):
        if isinstance(a.identities, int) and a.identities > num_classes:
            raise ConfigError(f"{source}: attacks[{i}].identities: {a.identities} (the first {a.identities} classes), "
                              f"but there are only {num_classes} private classes; use identities: {num_classes} or "
                              "fewer, or all, or raise dataset.split.private_identities")
        bad = [c for c in a.identities if c >= num_classes] if isinstance(a.identities, list) else []
        if bad:
            raise ConfigError(f"{source}: attacks[{i}].identities: class index {bad[0]} is outside the {num_classes} "
                              f"private classes (0..{num_classes - 1}); use indices below {num_classes} or raise "
                              "dataset.split.private_identities")


def load_suite(path: str | Path, overrides: list[str] | None = None) -> LoadedSuite:
    """Reads, merges (include:), overrides and validates a suite file: a YAML suite, or a run
    folder's ``suite.json`` (its resolved ``suite``, to rerun it)."""
    data = read_suite_json(Path(path)) if str(path).endswith(".json") else read_yaml(Path(path))
    applied: list[tuple[str, str]] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        try:
            applied.append((text, shown_path(apply_override(data, keys, value))))
        except (IndexError, ValueError, TypeError, AttributeError, KeyError) as exc:
            why = f" ({exc.args[0]})" if isinstance(exc, KeyError) else ""
            raise ConfigError(f"--set {shorten(text, 80, quote=False)}: {shorten('.'.join(keys), 60, quote=False)} "
                              f"does not exist in {path}{why}") from None
    try:
        loaded = validate_suite(data, str(path))
    except ConfigError as exc:
        raise blame_override(exc, str(path), applied) from None
    loaded.overrides = [text for text, _ in applied]
    return loaded
