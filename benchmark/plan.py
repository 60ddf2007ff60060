"""Planning: the jobs of a suite and the content keys of their products.

Jobs: load data; train the evaluation model (once per suite); fit the prior (once per suite);
train a target per (defense, seed); attack per (defense, attack, seed); score each attack. Every
product's key hashes its config, the keys of its inputs and the plugin versions, so a product is
recomputed exactly when something it depends on changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inversion_bench.checkpoints import CheckpointRef, as_ref
from inversion_bench.config import LoadedSuite, entry_id, entry_label
from inversion_bench.config_messages import raise_validation
from inversion_bench.data.resolved import resolved_identities
from inversion_bench.entries import AttackEntry
from inversion_bench.errors import ConfigError, UnknownPluginError
from inversion_bench.registry import REGISTRIES
from inversion_bench.results import record_filename
from inversion_bench.store import content_key


def _plugin_spec(kind: str, name: str, params: Any) -> dict[str, Any]:
    info = REGISTRIES[kind].info(name)
    dumped = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params or {})
    return {"plugin": REGISTRIES[kind].key_name(name), "version": info.version, "params": dumped}


def _checkpoint_spec(ref: str | CheckpointRef | None, folder: Path) -> dict[str, Any] | None:
    """The file behind a ``checkpoint:`` (path, size, mtime) and, when not native, its format."""
    if ref is None:
        return None
    cref = as_ref(ref)
    p = Path(cref.path).expanduser()
    p = p if p.is_absolute() else folder / p
    st = p.stat() if p.exists() else None
    spec: dict[str, Any] = {"path": str(p), "size": st.st_size if st else None,
                            "mtime": int(st.st_mtime) if st else None}
    if cref.format != "native":  # native checkpoints keep the keys they had before formats existed
        spec["format"] = cref.format
    return spec


SECOND_EVALUATOR_SEED = 1
"""Training seed of the second evaluation model (the first one trains with seed 0)."""


def second_arch_params(loaded: LoadedSuite) -> Any:
    """The validated architecture parameters of ``evaluation.second`` (None without a second evaluator).

    Raises ConfigError naming the suite file and the field (``bench validate`` exits 2).
    """
    second = loaded.suite.evaluation.second
    if second is None:
        return None
    where = f"{loaded.source}: evaluation.second.architecture"
    if second.architecture == loaded.suite.target.architecture:
        raise ConfigError(f"{where}: must differ from target.architecture (both {second.architecture.name}); "
                          "an evaluation model must be separate from the attacked one")
    try:
        cls = REGISTRIES["architectures"].get(second.architecture.name)
    except UnknownPluginError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    try:
        return cls.Params(**second.architecture.params)
    except ValidationError as exc:
        raise_validation(loaded.source, exc, cls.Params, prefix="evaluation.second.architecture.params")
    except TypeError as exc:
        raise ConfigError(f"{where}.params: {exc}") from None


def second_evaluator_key(loaded: LoadedSuite, data_key: str) -> str | None:
    """The store key of the second evaluation model (None without ``evaluation.second``)."""
    second = loaded.suite.evaluation.second
    if second is None:
        return None
    return content_key({
        "job": "second_evaluator", "data": data_key, "seed": SECOND_EVALUATOR_SEED,
        "architecture": _plugin_spec("architectures", second.architecture.name, second_arch_params(loaded)),
        "training": second.training.model_dump(mode="json"),
        "checkpoint": _checkpoint_spec(second.checkpoint, loaded.folder),
    })


def generator_spec(attack: AttackEntry) -> dict[str, Any] | None:
    """What keys the generator ``attack`` fits with its target's knowledge: the plugin's name and
    version and its ``generator_spec()`` (None for attacks without ``trains_generator``)."""
    if not attack.trains_generator:
        return None
    return {"plugin": attack.plugin, "version": attack.version, "spec": attack.build().generator_spec()}


def generator_key(spec: dict[str, Any] | None, target_key: str, seed: int) -> str | None:
    """The store key of the generator ``spec`` (:func:`generator_spec`) fitted against the target
    ``target_key`` with ``seed``: entries that differ only in how they invert share it."""
    if spec is None:
        return None
    return content_key({"job": "attack_generator", "target": target_key, "seed": seed, "attack": spec})


@dataclass(frozen=True)
class PairJob:
    """One (defense, attack, seed) pair with the keys of everything it needs.

    ``defense`` and ``attack`` are entry ids: ``LoadedSuite.defenses[defense]`` and
    ``LoadedSuite.attacks[attack]`` are the resolved entries (:mod:`inversion_bench.entries`).
    """

    defense: str
    attack: str
    seed: int
    target_key: str
    attack_key: str
    config_hash: str
    record_name: str
    gan_key: str | None = None  # the attack's own generator (attacks with trains_generator), else None
    prior_key: str | None = None  # the image prior the attack reads (attacks with needs_prior), else None


@dataclass
class Plan:
    data_key: str
    evaluator_key: str
    prior_key: str | None
    target_keys: dict[tuple[str, int], str]  # (defense id, seed) -> key
    pairs: list[PairJob]
    suite_hash: str
    second_evaluator_key: str | None = None  # only with evaluation.second


def make_plan(loaded: LoadedSuite) -> Plan:
    """Computes the content keys of every product of the suite (nothing is run)."""
    s = loaded.suite
    folder = loaded.folder
    dataset_plugin = REGISTRIES["datasets"].get(s.dataset.name)(loaded.dataset_params)
    data_spec = {
        "dataset": {**_plugin_spec("datasets", s.dataset.name, loaded.dataset_params),
                    "identity": dataset_plugin.identity()},
        "resolution": s.dataset.resolution,
        "split": s.dataset.split.model_dump(mode="json"),
    }
    resolved = resolved_identities(dataset_plugin, s.dataset.split)
    if resolved is not None:  # datasets read from files: the identities they resolve to (generated data: none)
        data_spec["resolved"] = resolved
    data_key = content_key(data_spec)
    evaluator_key = content_key({
        "job": "evaluator", "data": data_key,
        "architecture": _plugin_spec("architectures", s.evaluation.architecture.name, loaded.eval_arch_params),
        "training": s.evaluation.training.model_dump(mode="json"),
        "checkpoint": _checkpoint_spec(s.evaluation.checkpoint, folder),
    })
    second_key = second_evaluator_key(loaded, data_key)
    # the second evaluator enters the hashes only when there is one: keys of suites without it stay valid
    with_second = {"second_evaluator": second_key} if second_key is not None else {}
    prior_key = None
    if s.prior is not None:
        prior_key = content_key({"job": "prior", "data": data_key, "seed": s.prior_seed,
                                 "prior": _plugin_spec("generators", s.prior.name, loaded.prior_params)})
    target_arch = _plugin_spec("architectures", s.target.architecture.name, loaded.target_arch_params)
    recipe = s.target.training.model_dump(mode="json")
    metric_specs = [m.spec() for m in loaded.metrics]
    target_keys: dict[tuple[str, int], str] = {}
    pairs: list[PairJob] = []
    for d in loaded.defenses.values():
        for seed in s.seeds:
            target_keys[(d.id, seed)] = content_key({
                "job": "target", "data": data_key, "architecture": target_arch, "training": recipe,
                "defense": d.spec(), "seed": seed, "checkpoint": _checkpoint_spec(d.checkpoint, folder),
            })
    gan_specs = {a.id: generator_spec(a) for a in loaded.attacks.values()}
    for d in loaded.defenses.values():
        for a in loaded.attacks.values():
            attack_spec = a.spec()
            attack_prior = prior_key if a.needs_prior else None
            for seed in s.seeds:
                target_key = target_keys[(d.id, seed)]
                gan_key = generator_key(gan_specs[a.id], target_key, seed)
                # the generator enters the attack's hash only for attacks that train one: other keys stay valid
                with_gan = {"generator": gan_key} if gan_key is not None else {}
                attack_key = content_key({
                    "job": "attack", "target": target_key, "prior": attack_prior,
                    "attack": attack_spec, "identities": a.identities, "seed": seed, **with_gan,
                })
                config_hash = content_key({"attack": attack_key, "evaluator": evaluator_key,
                                           "metrics": metric_specs, **with_second})
                pairs.append(PairJob(d.id, a.id, seed, target_key, attack_key, config_hash,
                                     record_filename(d.id, a.id, seed), gan_key, attack_prior))
    suite_hash = content_key({"data": data_key, "evaluator": evaluator_key, "prior": prior_key,
                              "pairs": [p.config_hash for p in pairs], **with_second})
    return Plan(data_key, evaluator_key, prior_key, target_keys, pairs, suite_hash, second_key)


def describe(loaded: LoadedSuite, plan: Plan) -> list[str]:
    s = loaded.suite
    lines = [f"suite {s.name}: {len(s.defenses)} defense(s) x {len(s.attacks)} attack(s) x "
             f"{len(s.seeds)} seed(s) = {len(plan.pairs)} pair(s)"]
    for d in s.defenses:  # the parameters as the suite writes them
        lines.append(f"  defense {entry_id(d)}: {d.name} {d.params} ({entry_label(d)})")
    for a in s.attacks:
        lines.append(f"  attack  {entry_id(a)}: {a.name} {a.params}")
    return lines + seed_lines(loaded)


def seed_lines(loaded: LoadedSuite) -> list[str]:
    """What the suite's seeds allow the leaderboard's defense test to say: the seeds it needs at the level, and
    for one difference among the table's Δs (about (defenses - 1) x columns of them)."""
    from inversion_bench.leaderboard.significance import seed_requirements

    s = loaded.suite
    metrics = [m.cls for m in loaded.metrics]
    columns = 1 if any("attack_acc@1" in cls.better for cls in metrics) else 0  # the worst case
    columns += sum(len(cls.better) * (1 if cls.scope == "target" else len(s.attacks)) for cls in metrics)
    tests = (len(s.defenses) - 1) * columns
    lines = seed_requirements(len(s.seeds), tests, s.report.significance, s.report.seed_test, s.report.correction)
    fixed = [d.id for d in loaded.defenses.values() if d.checkpoint]
    if fixed:
        base = " (the baseline: every Δ)" if s.baseline_id in fixed else ""
        lines.append(f"  not testable whatever the seeds: {', '.join(fixed)}{base} load a published checkpoint, one "
                     "trained model on every seed")
    return lines
