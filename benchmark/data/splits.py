"""Private/public identity splits and train/test image splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inversion_bench.data import FaceCollection, LabeledImages
from inversion_bench.errors import ConfigError


class SplitSpec(BaseModel):
    """How identities and images are divided.

    Private identities are the target's classes (their images split into train/test); public
    identities are disjoint from them and form the attacker's auxiliary data (prior training).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    private_identities: int | Literal["all"] = Field(
        20, description="number of identities the target classifies, or 'all'"
    )
    public_identities: int | Literal["rest"] = Field(
        "rest", description="number of disjoint identities for the attacker, or 'rest'"
    )
    selection: Literal["random", "first", "most_images"] = Field(
        "random", description="how the private identities are chosen"
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of each private identity's images held out")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seed of the identity choice and the train/test split")

    @field_validator("private_identities")
    @classmethod
    def _private(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 2:
            raise ValueError(f"the target needs at least 2 classes, got {v}; give 2 or more, or 'all'")
        return v

    @field_validator("public_identities")
    @classmethod
    def _public(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"must be >= 0 or 'rest', got {v}")
        return v


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


def make_splits(collection: FaceCollection, spec: SplitSpec) -> Splits:
    """Splits ``collection`` according to ``spec`` (deterministic for a given seed)."""
    n_ids = len(collection.identity_names)
    g = torch.Generator().manual_seed(spec.seed)
    counts = torch.bincount(collection.targets, minlength=n_ids)
    if spec.selection == "random":
        order = torch.randperm(n_ids, generator=g)
    elif spec.selection == "first":
        order = torch.arange(n_ids)
    else:  # most images first, ties broken by index (stable sort)
        order = torch.sort(-counts, stable=True).indices
    n_priv = n_ids if spec.private_identities == "all" else spec.private_identities
    if n_priv > n_ids or n_priv < 2:
        raise ConfigError(
            f"dataset.split.private_identities: the dataset has {n_ids} identities, "
            f"cannot take {n_priv} private ones; give 2..{n_ids} (or 'all')"
        )
    private_ids = order[:n_priv]
    rest = order[n_priv:]
    n_pub = len(rest) if spec.public_identities == "rest" else spec.public_identities
    if n_pub > len(rest):
        raise ConfigError(
            f"dataset.split.public_identities: only {len(rest)} identities are left after "
            f"{n_priv} private ones, cannot take {n_pub}; lower one of the two"
        )
    public_ids = rest[:n_pub]

    train_idx, train_lab, test_idx, test_lab = [], [], [], []
    for label, ident in enumerate(private_ids.tolist()):
        idx = torch.nonzero(collection.targets == ident).flatten()
        if len(idx) < 2:
            raise ConfigError(
                f"dataset: identity {collection.identity_names[ident]!r} has {len(idx)} image(s); each "
                "private identity needs at least 2 (one for training, one for testing); add images or "
                "set dataset.split.selection: most_images"
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(len(idx) - 1, max(1, round(len(idx) * spec.test_fraction)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
        test_lab.append(torch.full((n_test,), label))
        train_lab.append(torch.full((len(idx) - n_test,), label))

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
