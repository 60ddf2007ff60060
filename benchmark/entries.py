"""Suite entries resolved once: every defense, attack and metric of a suite as one frozen record.

:func:`inversion_bench.config.validate_suite` looks each entry's plugin up in its registry, validates
its parameters and keeps the result here: the entry's id and label, the plugin's name (as written and
as cache keys hash it), its class, its validated parameters, its version and what the core needs to
know about it (an attack's access level, whether it needs the image prior, whether it fits a generator
of its own). Plans, jobs and products carry entries or the ids that index them
(``LoadedSuite.defenses[id]``, ``LoadedSuite.attacks[id]``), never positions in the suite's lists, and
nothing outside resolution looks a defense, attack or metric class up again.

``index`` is the entry's position in the suite, kept for messages (``attacks[2].identities``) and for
the records' ``defense_index``/``attack_index`` (the order of rows and columns); it never joins lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inversion_bench.checkpoints import Checkpoint
from inversion_bench.registry import REGISTRIES, PluginParams
from inversion_bench.suite_schema import AttackConfig, DefenseConfig, PluginRef, SweptConfig, entry_id, entry_label


@dataclass(frozen=True)
class ResolvedEntry:
    """One plugin entry of a suite, its plugin resolved and its parameters validated.

    Equal entries have equal fields; the parameters and class are compared but not hashed (a pydantic
    model has no hash).
    """

    kind: str  # the registry: "defenses", "attacks" or "metrics"
    index: int  # position in the suite's list: messages and the records' order only
    id: str
    label: str
    name: str  # the plugin name as the suite writes it (records keep it)
    plugin: str  # the name cache keys hash (Registry.key_name: an old spelling when renamed)
    cls: type = field(hash=False, repr=False)
    params: PluginParams = field(hash=False)
    version: str
    version_label: str  # "1 (inversion-bench 0.1.0)": version with provenance, for records

    @property
    def where(self) -> str:
        """The entry's place in the suite file, for messages: ``defenses[1]``."""
        return f"{self.kind}[{self.index}]"

    def spec(self) -> dict[str, Any]:
        """What every cache key of this entry's products hashes: plugin key name, version, parameters."""
        return {"plugin": self.plugin, "version": self.version, "params": self.params.model_dump(mode="json")}

    def params_json(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def build(self) -> Any:
        """A fresh plugin instance with the validated parameters (no state shared between instances)."""
        return self.cls(self.params)


@dataclass(frozen=True)
class DefenseEntry(ResolvedEntry):
    checkpoint: Checkpoint | None = field(default=None, hash=False)  # a published target instead of training
    swept: SweptConfig | None = field(default=None, hash=False)  # set by a sweep: its group and value


@dataclass(frozen=True)
class AttackEntry(ResolvedEntry):
    access: str = "white-box"
    needs_prior: bool = False
    trains_generator: bool = False
    identities: Any = field(default="all", hash=False)  # "all", the first N, or a list of class indices


@dataclass(frozen=True)
class MetricEntry(ResolvedEntry):
    """A metric of the suite (what it reports and how is the class's declaration: ``entry.cls``)."""


def _common(kind: str, index: int, ident: str, label: str, name: str, params: PluginParams) -> dict[str, Any]:
    reg = REGISTRIES[kind]
    info = reg.info(name)
    return {"kind": kind, "index": index, "id": ident, "label": label, "name": name, "plugin": reg.key_name(name),
            "cls": info.obj, "params": params, "version": info.version, "version_label": reg.version_label(name)}


def defense_entry(index: int, d: DefenseConfig, params: PluginParams) -> DefenseEntry:
    """The resolved entry of ``defenses[index]`` (its plugin known, ``params`` validated)."""
    return DefenseEntry(**_common("defenses", index, entry_id(d), entry_label(d), d.name, params),
                        checkpoint=d.checkpoint, swept=d.swept)


def attack_entry(index: int, a: AttackConfig, params: PluginParams) -> AttackEntry:
    """The resolved entry of ``attacks[index]`` (its plugin known, ``params`` validated)."""
    common = _common("attacks", index, entry_id(a), entry_label(a), a.name, params)
    cls = common["cls"]
    return AttackEntry(**common, access=str(getattr(cls, "access", "white-box")),
                       needs_prior=bool(getattr(cls, "needs_prior", False)),
                       trains_generator=bool(getattr(cls, "trains_generator", False)), identities=a.identities)


def metric_entry(index: int, m: PluginRef, params: PluginParams) -> MetricEntry:
    """The resolved entry of ``metrics[index]``; a metric's id and label are its name."""
    return MetricEntry(**_common("metrics", index, m.name, m.name, m.name, params))
