"""Checks that everything a suite needs on disk is there, before any work starts.

Dataset folders, checkpoints and weights files (ImageNet backbones, StyleGAN2-ADA pickles, FID
Inception, FaceNet) are listed with whether each is present and where it is expected, so that
``bench validate`` / ``bench run`` stop with the full list instead of failing after hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inversion_bench.config import LoadedSuite, check_identities
from inversion_bench.data.resolved import listed_collection
from inversion_bench.data.splits import make_splits
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
    for i, m in enumerate(s.metrics):
        yield f"metrics[{i}]", REGISTRIES["metrics"].get(m.name), loaded.metric_params[i]


def check_resources(loaded: LoadedSuite) -> list[Resource]:
    """Every dataset folder, checkpoint and weights file of the suite, checked on disk."""
    s = loaded.suite
    out: list[Resource] = []
    dataset = REGISTRIES["datasets"].get(s.dataset.name)(loaded.dataset_params)
    problems = dataset.missing()
    root = getattr(loaded.dataset_params, "root", None)
    out.append(Resource("dataset.params", f"dataset {s.dataset.name}", Path(root) if root else None,
                        not problems, "; ".join(problems)))
    second = s.evaluation.second.checkpoint if s.evaluation.second is not None else None
    for field, ref in [("evaluation.checkpoint", s.evaluation.checkpoint), ("evaluation.second.checkpoint", second)] + [
            (f"defenses[{i}].checkpoint", d.checkpoint) for i, d in enumerate(s.defenses)]:
        if ref is None:
            continue
        p = Path(ref).expanduser()
        p = p if p.is_absolute() else loaded.folder / p
        out.append(Resource(field, "trained classifier state dict", p, p.is_file(),
                            "" if p.is_file() else f"{field}: {p} not found; train it or fix the path"))
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


def missing_resources(loaded: LoadedSuite) -> list[str]:
    return [f"{loaded.source}: {r.problem}" for r in check_resources(loaded) if not r.ok]


def split_problems(loaded: LoadedSuite) -> list[str]:
    """The split checked against the dataset's identity listing (no image read): sizes against the
    identities found, named identities that do not exist, private identities with too few images,
    attacked class indices. Empty when the dataset cannot list its identities before loading."""
    s = loaded.suite
    dataset = REGISTRIES["datasets"].get(s.dataset.name)(loaded.dataset_params)
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
