"""Datasets: face collections (one class per identity) and their private/public splits.

Every image handed to other modules is float32, CHW (NCHW for batches), RGB, in [0, 1].

A dataset plugin turns its parameters into a :class:`FaceCollection`, i.e. images with an identity
index each. :func:`inversion_bench.data.splits.make_splits` then picks disjoint private identities (the
target's classes, split into train/test images) and public identities (the attacker's auxiliary
data).

Datasets read from files (``image-folder``, ``celeba``) take the :class:`ImageOptions` parameters:
``crop`` (how a non-square image becomes square: ``center`` crop, the default, or ``pad``) and
``grayscale`` (one luminance value repeated in the three channels; the collection's ``grayscale``
tells attacks, e.g. MI-Face, to optimise one channel). Left at their defaults, they do not appear
in the parameters' dump, so the cache keys of existing suites do not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor

from inversion_bench.registry import Plugin, PluginParams
from inversion_bench.store import content_key


class FaceCollection(ABC):
    """Images of identities. ``targets[i]`` is the identity index of image ``i``."""

    identity_names: list[str]
    targets: Tensor  # [N] int64
    resolution: int
    grayscale: bool = False  # True: the three channels of every image are equal
    published_test: Tensor | None = None  # [N] bool: the published split's test images (``selection: published``)
    published_test_by_image: bool = False  # True: the published split was drawn over all images (PPA's), so a
    # private identity may have no test image; False: each private identity has both (checked)
    listing_only: bool = False  # True: identities and counts of a listing, no pixels (``bench validate``)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Images ``indices`` as a float32 [n, 3, R, R] tensor in [0, 1]."""

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.get([i])[0], int(self.targets[i])


class TensorFaces(FaceCollection):
    """A collection held in memory as uint8 (used for generated and small data)."""

    def __init__(self, images_u8: Tensor, targets: Tensor, identity_names: list[str]) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[1] != 3:
            raise ValueError("TensorFaces expects uint8 images [N, 3, R, R]")
        self.images_u8 = images_u8
        self.targets = targets.long()
        self.identity_names = list(identity_names)
        self.resolution = int(images_u8.shape[-1])

    def __len__(self) -> int:
        return int(self.targets.numel())

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images_u8[idx].float().div_(255.0)


class LabeledImages:
    """A subset of a collection with its own labels (e.g. private classes 0..C-1).

    ``labels[i]`` is the label of ``collection`` image ``indices[i]``.
    """

    def __init__(self, collection: FaceCollection, indices: Tensor, labels: Tensor, name: str) -> None:
        self.collection = collection
        self.indices = indices.long()
        self.labels = labels.long()
        self.name = name
        self.key: str | None = None  # set by the runner: identifies dataset, resolution and split

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def resolution(self) -> int:
        return self.collection.resolution

    def images(self, positions: Sequence[int] | Tensor | None = None) -> Tensor:
        """Images at ``positions`` of this subset (all when None), float [n, 3, R, R] in [0, 1]."""
        if positions is None:
            return self.collection.get(self.indices)
        pos = torch.as_tensor(positions, dtype=torch.long)
        return self.collection.get(self.indices[pos])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields (images, labels) batches; shuffled with ``generator`` when asked."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            pos = order[start : start + batch_size]
            yield self.images(pos), self.labels[pos]

    def of_labels(self, labels: Sequence[int] | Tensor) -> LabeledImages:
        """The images whose label is in ``labels``."""
        wanted = torch.as_tensor(labels, dtype=torch.long)
        mask = torch.isin(self.labels, wanted)
        sub = LabeledImages(self.collection, self.indices[mask], self.labels[mask], self.name)
        if self.key is not None:
            sub.key = f"{self.key}-labels{content_key(sorted(wanted.tolist()), length=8)}"
        return sub


Crop = Literal["center", "pad"]


class ImageOptions(PluginParams):
    """How file-based datasets turn an image into the square RGB the other modules expect."""

    crop: Crop = Field("center", description="non-square images: 'center' crops the centre square (the shorter "
                       "side), 'pad' pads the shorter side with black to a square; then resized")
    grayscale: bool = Field(False, description="convert to luminance, repeated in the 3 channels (pixel-space "
                            "attacks such as MI-Face then optimise one channel)")

    @model_serializer(mode="wrap")
    def _drop_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves out ``crop``/``grayscale`` at their defaults: the dumps (hence the cache keys) of
        datasets that do not use them are those from before the options existed."""
        data = handler(self)
        if data.get("crop") == "center":
            data.pop("crop")
        if data.get("grayscale") is False:
            data.pop("grayscale")
        return data


def is_grayscale(data: LabeledImages | FaceCollection | None) -> bool:
    """Whether ``data`` (a subset or a collection) holds grayscale images (three equal channels)."""
    if isinstance(data, LabeledImages):
        data = data.collection
    return bool(getattr(data, "grayscale", False))


class DataCheck(NamedTuple):
    """One file or folder a dataset reads, checked for ``bench doctor`` (``ok`` False: ``problem`` says why)."""

    field: str  # where the suite names it, e.g. "dataset.params.images"
    what: str  # what it is and where it comes from
    path: Path | None
    ok: bool
    problem: str = ""
    blocking: bool = True  # False: shown by the doctor (WRONG) without stopping a run, e.g. a count


class DatasetPlugin(Plugin, ABC):
    """A dataset plugin: parameters in, a :class:`FaceCollection` out."""

    generated: ClassVar[bool] = False
    """True when the collection is a pure function of the parameters and the plugin version (nothing is
    read from disk): its resolved identities then add nothing to the data key
    (:mod:`inversion_bench.data.resolved`). Plugins that read files leave it False."""

    published_split: ClassVar[bool] = False
    """True when the collection carries its published train/test assignment (``published_test``), which
    ``split: {selection: published}`` keeps."""

    def missing(self) -> list[str]:
        """Problems that stop a run before it starts (e.g. a missing folder), each with its fix."""
        return []

    def checks(self) -> list[DataCheck]:
        """The files and folders the dataset reads, each checked (counts against the expected ones where the
        protocol defines them), for ``bench doctor``; empty: the doctor shows :meth:`missing` as one line."""
        return []

    def listing(self) -> tuple[list[str], list[int]] | None:
        """The identity names (in :meth:`load`'s order) and their image counts, from file listings only
        (no image decoded), for ``bench validate`` to check the split; None when unknown before loading."""
        return None

    def identity(self) -> dict[str, Any]:
        """What identifies the data for cache keys (defaults to the parameters)."""
        return self.params.model_dump(mode="json")

    @abstractmethod
    def load(self, resolution: int) -> FaceCollection:
        """Loads (or generates) the collection at ``resolution`` x ``resolution`` pixels."""
