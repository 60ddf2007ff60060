"""Checks that everything a suite needs on disk is there, before any work starts.

Dataset folders, checkpoints and weights files (ImageNet backbones, StyleGAN2-ADA pickles, FID
Inception, FaceNet) are listed with whether each is present and where it is expected, so that
``bench validate`` / ``bench run`` stop with the full list instead of failing after hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inversion_bench.checkpoints import as_ref, load_into, not_found_message
from inversion_bench.config import LoadedSuite, check_identities
from inversion_bench.data.resolved import listed_collection
from inversion_bench.data.splits import make_splits
from inversion_bench.entries import DefenseEntry
from inversion_bench.errors import ConfigError
from inversion_bench.plan import second_arch_params
from inversion_bench.registry import REGISTRIES


@dataclass
class Resource:
    """One file or folder the suite needs."""

    field: str  # where the suite asks for it, e.g. "weights.facenet"
    what: str
    path: Path | None
    ok: bool
    problem: str = ""
    blocking: bool = True  # False: reported (WRONG) but does not stop a run


def _plugins(loaded: LoadedSuite):
    s = loaded.suite
    yield "target.architecture", REGISTRIES["architectures"].get(s.target.architecture.name), loaded.target_arch_params
    yield ("evaluation.architecture", REGISTRIES["architectures"].get(s.evaluation.architecture.name),
           loaded.eval_arch_params)
    if s.evaluation.second is not None:
        yield ("evaluation.second.architecture", REGISTRIES["architectures"].get(s.evaluation.second.architecture.name),
               second_arch_params(loaded))
    if s.prior is not None:
        yield "prior", REGISTRIES["generators"].get(s.prior.name), loaded.prior_params
    for m in loaded.metrics:
        yield m.where, m.cls, m.params


def check_resources(loaded: LoadedSuite) -> list[Resource]:
    """Every dataset folder, checkpoint and weights file of the suite, checked on disk."""
    s = loaded.suite
    out: list[Resource] = []
    dataset = REGISTRIES["datasets"].get(s.dataset.name)(loaded.dataset_params)
    checks = dataset.checks()
    if checks:  # the dataset lists its files itself (split files, image counts against the expected ones)
        out.extend(Resource(c.field, c.what, c.path, c.ok, c.problem, c.blocking) for c in checks)
    else:
        problems = dataset.missing()
        root = getattr(loaded.dataset_params, "root", None)
        out.append(Resource("dataset.params", f"dataset {s.dataset.name}", Path(root) if root else None,
                            not problems, "; ".join(problems)))
    out.extend(check_checkpoints(loaded))
    weights = loaded.weights()
    seen: set[str] = set()
    for field, cls, params in _plugins(loaded):
        plugin = cls(params)
        if callable(getattr(plugin, "missing", None)):  # the plugin knows its own lookup (e.g. hub cache)
            probs = plugin.missing(weights)
            if probs or plugin.required_weights():
                out.append(Resource(field, f"weights of {field}", None, not probs, "; ".join(probs)))
            continue
        needed = plugin.required_weights() if hasattr(plugin, "required_weights") else {}
        for name, what in needed.items():
            if name in seen:
                continue
            seen.add(name)
            if name in weights:
                p = weights[name]
                ok = p.exists()
                out.append(Resource(f"weights.{name}", what, p, ok,
                                    "" if ok else f"weights.{name}: {p} not found ({what}); put the file there "
                                    "or change the path"))
            else:
                p = Path(name).expanduser()
                if p.exists():
                    out.append(Resource(field, what, p, True))
                else:
                    out.append(Resource(f"weights.{name}", what, None, False,
                                        f"{field} needs weights {name!r} ({what}); add 'weights: {{{name}: "
                                        "/path/to/file}' to the suite"))
    return out


def _checkpoint_fields(loaded: LoadedSuite) -> Iterator[tuple[str, Any, str, Any, DefenseEntry | None]]:
    """(field, checkpoint value, architecture name, its params, the defense entry or None) per classifier."""
    s = loaded.suite
    yield ("evaluation.checkpoint", s.evaluation.checkpoint, s.evaluation.architecture.name,
           loaded.eval_arch_params, None)
    if s.evaluation.second is not None:
        yield ("evaluation.second.checkpoint", s.evaluation.second.checkpoint, s.evaluation.second.architecture.name,
               second_arch_params(loaded), None)
    for d in loaded.defenses.values():
        yield f"{d.where}.checkpoint", d.checkpoint, s.target.architecture.name, loaded.target_arch_params, d


def private_classes(loaded: LoadedSuite) -> int | None:
    """The number of private identities (the classifiers' classes), from the dataset's listing; None
    when it is unknown before loading or the split does not fit the listing."""
    dataset = REGISTRIES["datasets"].get(loaded.suite.dataset.name)(loaded.dataset_params)
    listing = dataset.listing()
    if listing is None:
        return None
    try:
        return make_splits(listed_collection(*listing), loaded.suite.dataset.split).num_classes
    except ConfigError:
        return None


def check_checkpoints(loaded: LoadedSuite) -> list[Resource]:
    """Every ``checkpoint:`` of the suite: its format known to the architecture, the file present
    (else where it comes from) and, when the class count is known, every key and shape fitting the
    classifier the suite builds (:func:`inversion_bench.checkpoints.load_into`)."""
    out: list[Resource] = []
    classes: int | None = -1  # computed on the first file found
    for field, ref, arch_name, arch_params, defense in _checkpoint_fields(loaded):
        if ref is None:
            continue
        cref = as_ref(ref)
        path = Path(cref.path).expanduser()
        path = path if path.is_absolute() else loaded.folder / path
        arch = REGISTRIES["architectures"].get(arch_name)
        what = f"{arch_name} checkpoint ({cref.format})"
        formats = ["native", *arch.checkpoint_prefixes]
        if cref.format not in formats:
            out.append(Resource(field, what, path, False, f"{field}.format: architecture {arch_name} reads no "
                                f"{cref.format} checkpoints; use one of {formats} or another architecture"))
            continue
        if not path.is_file():
            out.append(Resource(field, what, path, False, not_found_message(field, path, cref.format)))
            continue
        classes = private_classes(loaded) if classes == -1 else classes
        problem = "" if classes is None else _fit_problem(loaded, field, path, cref.format, arch, arch_params,
                                                          defense, classes)
        out.append(Resource(field, what, path, not problem, problem))
    return out


def _fit_problem(loaded: LoadedSuite, field: str, path: Path, fmt: str, arch: Any, arch_params: Any,
                 defense: DefenseEntry | None, classes: int) -> str:
    """Why the file does not load into the classifier the suite builds ('' when it does)."""
    try:
        model = arch(arch_params).build(classes, loaded.suite.dataset.resolution, loaded.weights())
    except ConfigError:
        return ""  # a missing backbone weights file: reported with the weights
    if defense is not None:
        model = defense.build().configure_model(model)
    try:
        load_into(model, path, fmt, arch.name, arch.checkpoint_prefixes, arch.mibench_name)
    except ConfigError as exc:
        return f"{field}: {exc}"
    return ""


def missing_resources(loaded: LoadedSuite) -> list[str]:
    return [f"{loaded.source}: {r.problem}" for r in check_resources(loaded) if not r.ok and r.blocking]


def split_problems(loaded: LoadedSuite) -> list[str]:
    """The split checked against the dataset's identity listing (no image read): sizes against the
    identities found, named identities that do not exist, private identities with too few images,
    attacked class indices. Empty when the dataset cannot list its identities before loading."""
    s = loaded.suite
    dataset = REGISTRIES["datasets"].get(s.dataset.name)(loaded.dataset_params)
    if s.dataset.split.selection == "published" and not dataset.published_split:
        return [f"{loaded.source}: dataset.split.selection: 'published' needs a dataset that ships its published "
                f"split (celeba-split); {s.dataset.name} has none: use random, first or most_images"]
    listing = dataset.listing() if callable(getattr(dataset, "listing", None)) else None
    if listing is None:
        return []
    names, counts = listing
    try:
        splits = make_splits(listed_collection(names, counts), s.dataset.split)
        check_identities(s, splits.num_classes, loaded.source)
    except ConfigError as exc:
        msg = str(exc)
        return [msg if msg.startswith(loaded.source) else f"{loaded.source}: {msg}"]
    return []
