"""Private/public identity splits and train/test image splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inversion_bench.data import DatasetPlugin, FaceCollection, LabeledImages
from inversion_bench.errors import ConfigError


class SplitSpec(BaseModel):
    """How identities and images are divided.

    Private identities are the target's classes (their images split into train/test); public
    identities are disjoint from them and form the attacker's auxiliary data (prior training).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    private_identities: int | Literal["all"] | list[str] = Field(
        20, description="number of identities the target classifies, 'all', or their names (class k = k-th name)"
    )
    public_identities: int | Literal["rest"] | list[str] = Field(
        "rest", description="number of disjoint identities for the attacker, 'rest', or their names"
    )
    selection: Literal["random", "first", "most_images", "published"] = Field(
        "random", description="how the private identities are chosen; 'published': the first ones of a dataset "
        "with a published split (celeba-split), whose own train/test images are kept (test_fraction unused)"
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of each private identity's images held out")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seed of the identity choice and the train/test split")

    @field_validator("private_identities")
    @classmethod
    def _private(cls, v: int | str | list[str]) -> int | str | list[str]:
        if isinstance(v, list) and len(set(v)) < len(v):
            raise ValueError(f"names {sorted({n for n in v if v.count(n) > 1})} more than once; list each once")
        n = len(v) if isinstance(v, list) else v
        if isinstance(n, int) and n < 2:
            raise ValueError(f"the target needs at least 2 classes, got {n}; give 2 or more, or 'all'")
        return v

    @field_validator("public_identities")
    @classmethod
    def _public(cls, v: int | str | list[str]) -> int | str | list[str]:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"must be >= 0 or 'rest', got {v}")
        if isinstance(v, list) and len(set(v)) < len(v):
            raise ValueError(f"names {sorted({n for n in v if v.count(n) > 1})} more than once; list each once")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> SplitSpec:
        both = [n for n in self.public_identities if n in self.private_identities] \
            if isinstance(self.public_identities, list) and isinstance(self.private_identities, list) else []
        if both:
            raise ValueError(f"public_identities: {both[:5]} are also private identities; the two must be disjoint")
        return self


@dataclass
class Splits:
    private_train: LabeledImages
    private_test: LabeledImages
    public: LabeledImages
    private_names: list[str]
    public_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.private_names)


@runtime_checkable
class SplitAware(Protocol):
    """A dataset that renders public and private identities differently (synthetic-faces' ``public_shift``),
    so its collection depends on the split."""

    def load_for_split(self, resolution: int, split: SplitSpec) -> FaceCollection: ...


def load_collection(plugin: DatasetPlugin, resolution: int, spec: SplitSpec) -> FaceCollection:
    """``plugin``'s collection at ``resolution`` for the split ``spec`` (told the split if :class:`SplitAware`)."""
    if isinstance(plugin, SplitAware):
        return plugin.load_for_split(resolution, spec)
    return plugin.load(resolution)


def make_splits(collection: FaceCollection, spec: SplitSpec) -> Splits:
    """Splits ``collection`` according to ``spec`` (deterministic for a given seed)."""
    n_ids = len(collection.identity_names)
    g = torch.Generator().manual_seed(spec.seed)
    counts = torch.bincount(collection.targets, minlength=n_ids)
    fixed = _published_test(collection, spec)
    if spec.selection == "random":
        order = torch.randperm(n_ids, generator=g)
    elif spec.selection in ("first", "published"):
        order = torch.arange(n_ids)
    else:  # most images first, ties broken by index (stable sort)
        order = torch.sort(-counts, stable=True).indices
    private_ids, rest = _private(collection.identity_names, order, spec)
    public_ids = _public(collection.identity_names, rest, spec)

    train_idx, train_lab, test_idx, test_lab = [], [], [], []
    for label, ident in enumerate(private_ids.tolist()):
        idx = torch.nonzero(collection.targets == ident).flatten()
        if len(idx) < 2:
            raise ConfigError(
                f"dataset: identity {collection.identity_names[ident]!r} has {len(idx)} image(s); each "
                "private identity needs at least 2 (one for training, one for testing); add images or "
                "set dataset.split.selection: most_images"
            )
        if fixed is not None:
            test, train = idx[fixed[idx]], idx[~fixed[idx]]
            by_image = getattr(collection, "published_test_by_image", False)
            if not len(train) or not (len(test) or by_image):
                raise ConfigError(f"dataset: identity {collection.identity_names[ident]!r} has {len(train)} training "
                                  f"and {len(test)} test image(s) in the published split; each private identity "
                                  "needs both: choose private identities of the split")
        else:
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_test = min(len(idx) - 1, max(1, round(len(idx) * spec.test_fraction)))
            test, train = idx[:n_test], idx[n_test:]
        test_idx.append(test)
        train_idx.append(train)
        test_lab.append(torch.full((len(test),), label))
        train_lab.append(torch.full((len(train),), label))

    pub_mask = torch.isin(collection.targets, public_ids)
    pub_idx = torch.nonzero(pub_mask).flatten()
    remap = {int(ident): k for k, ident in enumerate(public_ids.tolist())}
    pub_lab = torch.tensor([remap[int(t)] for t in collection.targets[pub_idx]], dtype=torch.long)

    return Splits(
        private_train=LabeledImages(collection, torch.cat(train_idx), torch.cat(train_lab), "private_train"),
        private_test=LabeledImages(collection, torch.cat(test_idx), torch.cat(test_lab), "private_test"),
        public=LabeledImages(collection, pub_idx, pub_lab, "public"),
        private_names=[collection.identity_names[i] for i in private_ids.tolist()],
        public_names=[collection.identity_names[i] for i in public_ids.tolist()],
    )


def _published_test(collection: FaceCollection, spec: SplitSpec) -> torch.Tensor | None:
    """The collection's published test-image mask under ``selection: published`` (None otherwise, and for a
    listing, whose train/test sizes then follow ``test_fraction``: only the identities are read from it)."""
    if spec.selection != "published":
        return None
    mask = getattr(collection, "published_test", None)
    if mask is None and not getattr(collection, "listing_only", False):
        raise ConfigError("dataset.split.selection: 'published' needs a dataset that ships its published split "
                          "(e.g. celeba-split); this dataset has none: use random, first or most_images")
    return mask


def _by_name(names: list[str], wanted: list[str], field: str) -> torch.Tensor:
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in wanted if n not in index]
    if unknown:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ConfigError(f"dataset.split.{field}: {len(unknown)} name(s) not among the dataset's {len(names)} "
                          f"identities: {unknown[:5]}; the dataset's identities are {shown}")
    return torch.tensor([index[n] for n in wanted], dtype=torch.long)


def _private(names: list[str], order: torch.Tensor, spec: SplitSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The private identity indices (in class order) and the others in ``order``."""
    n_ids = len(names)
    if isinstance(spec.private_identities, list):
        private_ids = _by_name(names, spec.private_identities, "private_identities")
        return private_ids, order[~torch.isin(order, private_ids)]
    n_priv = n_ids if spec.private_identities == "all" else spec.private_identities
    if n_priv > n_ids or n_priv < 2:
        raise ConfigError(
            f"dataset.split.private_identities: the dataset has {n_ids} identities, "
            f"cannot take {n_priv} private ones; give 2..{n_ids} (or 'all')"
        )
    return order[:n_priv], order[n_priv:]


def _public(names: list[str], rest: torch.Tensor, spec: SplitSpec) -> torch.Tensor:
    if isinstance(spec.public_identities, list):
        return _by_name(names, spec.public_identities, "public_identities")
    n_pub = len(rest) if spec.public_identities == "rest" else spec.public_identities
    if n_pub > len(rest):
        n_priv = len(names) - len(rest)
        raise ConfigError(
            f"dataset.split: private_identities {n_priv} + public_identities {n_pub} = {n_priv + n_pub}, but the "
            f"dataset has {len(names)} identities (only {len(rest)} left after the private ones); lower one of the two"
        )
    return rest[:n_pub]
