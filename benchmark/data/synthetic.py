"""Procedurally rendered face-like identities (the ``synthetic-faces`` dataset).

Every identity has stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style and
colour, accessories) drawn from ``numpy.random.default_rng([seed, identity])``; every image adds
its own nuisance (pose, scale, lighting, expression, background, clothing, pixel noise) drawn
from ``numpy.random.default_rng([seed, identity, image])``. Nothing depends on the resolution
except the pixel grid, so an identity looks the same at 32 and at 128 pixels, and adding
identities leaves the earlier ones untouched.

Shapes are painted back to front as soft coverage masks computed from approximate signed
distances (a one-pixel linear ramp at the render resolution), on a supersampled grid that is then
box-filtered down to the requested resolution. Only exactly rounded float operations touch the
pixel grid, so the output is bit-identical for a given seed whatever the batch or thread layout.

The dataset is split by responsibility: :mod:`~inversion_bench.data.synthetic_traits` draws the
traits and the per-image nuisance, :mod:`~inversion_bench.data.synthetic_draw` holds the canvas and
the signed distances, :mod:`~inversion_bench.data.synthetic_render` paints the faces, and this
module holds the registered dataset plugin, the supersampling and noise, and the preview grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor

from inversion_bench.data import DatasetPlugin, FaceCollection, TensorFaces
from inversion_bench.data.resolved import listed_collection
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.data.synthetic_render import render_images
from inversion_bench.data.synthetic_traits import (
    HAIR_STYLES,
    FaceTraits,
    PublicShift,
    identity_traits,
    image_params,
)
from inversion_bench.errors import ConfigError
from inversion_bench.registry import PluginParams, datasets

__all__ = [
    "HAIR_STYLES",
    "FaceTraits",
    "PublicShift",
    "SyntheticFaces",
    "identity_traits",
    "image_params",
    "render_identity",
    "save_preview",
]

log = logging.getLogger(__name__)

# Images are drawn at (at least) this many pixels, then box-filtered down to the resolution.
_SS_TARGET = 64


def render_identity(
    seed: int,
    identity: int,
    images: Sequence[int] | int,
    resolution: int,
    *,
    noise: float = 0.03,
    variation: float = 1.0,
    chunk: int = 20,
    shift: PublicShift | None = None,
) -> Tensor:
    """Renders images of one identity as uint8 [n, 3, R, R].

    Args:
        seed: dataset seed.
        identity: identity index (its traits come from ``default_rng([seed, identity])``).
        images: image indices to render, or a count (``range(images)``).
        resolution: output size in pixels.
        noise: standard deviation of the Gaussian pixel noise (images in [0, 1]).
        variation: multiplies the per-image nuisance (pose, lighting, expression, background).
        chunk: images rendered together (memory vs. speed; does not change the output).
        shift: the public identities' population and rendering style (None: none).
    """
    if isinstance(images, int):
        images = range(images)
    with _single_threaded():
        return _render_identity(seed, identity, list(images), resolution, noise, variation, chunk, shift)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Runs torch ops on the calling thread only (restores the thread count afterwards).

    The renderer issues many small tensor ops: intra-op threads mostly wait on each other, badly
    so on a busy machine. :meth:`SyntheticFaces.load` renders identities on parallel threads instead.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _render_identity(
    seed: int,
    identity: int,
    image_list: list[int],
    resolution: int,
    noise: float,
    variation: float,
    chunk: int,
    shift: PublicShift | None,
) -> Tensor:
    tr = identity_traits(seed, identity, shift)
    ss = max(1, math.ceil(_SS_TARGET / resolution))  # supersampling factor
    out = []
    for start in range(0, len(image_list), chunk):
        params = [image_params(seed, identity, j, tr, variation, shift) for j in image_list[start : start + chunk]]
        with torch.no_grad():
            hi = render_images(tr, params, resolution * ss)
            lo = F.avg_pool2d(hi, ss) if ss > 1 else hi
        if noise > 0:
            nz = np.stack(
                [
                    p["rng"].standard_normal((3, resolution, resolution), dtype=np.float32)  # type: ignore[union-attr]
                    for p in params
                ]
            )
            lo.add_(torch.from_numpy(nz).mul_(noise))
        out.append(lo.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8))
    return torch.cat(out) if out else torch.empty(0, 3, resolution, resolution, dtype=torch.uint8)


@datasets.register("synthetic-faces")
class SyntheticFaces(DatasetPlugin):
    """Procedurally rendered face-like identities (no download; deterministic from the seed).

    Each identity has stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style
    and colour, glasses, beard, earrings, hat); each image varies pose, scale, lighting,
    expression, background, clothing and pixel noise. 60 identities x 40 images at 64 px take a
    few seconds on a laptop CPU. ``public_shift`` renders the identities the suite's split makes
    public (the attacker's data) as another population under another light, as FFHQ differs from
    CelebA; private identities stay as they are (default: no shift).
    """

    version = "1"
    generated = True  # nothing read from disk: the resolved identities follow from the parameters

    class Params(PluginParams):
        num_identities: int = Field(60, ge=2, le=100_000, description="number of identities (classes)")
        images_per_identity: int = Field(40, ge=1, le=10_000, description="images rendered per identity")
        seed: int = Field(0, ge=0, description="seed of the traits and of every image")
        noise: float = Field(
            0.03, ge=0.0, le=0.5, description="std of the Gaussian pixel noise (pixels in [0, 1])"
        )
        variation: float = Field(
            1.0, ge=0.0, le=2.0, description="scales per-image pose/lighting/expression/background variation"
        )
        public_shift: PublicShift | None = Field(
            None, description="public/private distribution shift: the split's public identities get other traits "
            "and another rendering style ({colour_cast, light, pose, skin}); none: one population (the default)"
        )

        @model_serializer(mode="wrap")
        def _drop_no_shift(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
            """Leaves ``public_shift`` out of the dump when there is none: the parameters' dump (hence
            every cache key) of a suite without a shift is the one from before the option existed."""
            data = handler(self)
            if data.get("public_shift") is None:
                data.pop("public_shift", None)
            return data

    def listing(self) -> tuple[list[str], list[int]]:
        prm = self.params
        assert isinstance(prm, SyntheticFaces.Params)
        return _names(prm.num_identities), [prm.images_per_identity] * prm.num_identities

    def load(self, resolution: int) -> FaceCollection:
        """Renders the collection at ``resolution`` x ``resolution`` pixels (one population).

        Raises ConfigError with ``public_shift`` set: which identities are public follows from the split
        (:meth:`load_for_split`).
        """
        prm = self.params
        assert isinstance(prm, SyntheticFaces.Params)
        if prm.public_shift is not None:
            raise ConfigError("dataset.params.public_shift: the shifted identities are the split's public ones; "
                              "load the dataset with its split (load_for_split)")
        return self._render(resolution, frozenset())

    def load_for_split(self, resolution: int, split: SplitSpec) -> FaceCollection:
        """Renders the collection that ``split`` divides: its public identities under ``public_shift``."""
        prm = self.params
        assert isinstance(prm, SyntheticFaces.Params)
        if prm.public_shift is None:
            return self._render(resolution, frozenset())
        names, counts = self.listing()
        public = make_splits(listed_collection(names, counts), split).public_names
        index = {n: i for i, n in enumerate(names)}
        return self._render(resolution, frozenset(index[n] for n in public))

    def _render(self, resolution: int, shifted: frozenset[int]) -> FaceCollection:
        """Renders every identity, those in ``shifted`` under ``public_shift``."""
        prm = self.params
        assert isinstance(prm, SyntheticFaces.Params)
        if resolution < 8:
            raise ConfigError(f"dataset.resolution: synthetic-faces needs 8 pixels or more, got {resolution}")
        n_id, n_img = prm.num_identities, prm.images_per_identity
        images = torch.empty(n_id * n_img, 3, resolution, resolution, dtype=torch.uint8)
        start = time.perf_counter()

        def render(i: int) -> None:
            images[i * n_img : (i + 1) * n_img] = render_identity(
                prm.seed, i, n_img, resolution, noise=prm.noise, variation=prm.variation,
                shift=prm.public_shift if i in shifted else None,
            )

        # Identities are rendered on parallel threads, each running its tensor ops single-threaded.
        workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n_id, 8))
        with _single_threaded():
            if workers == 1:
                for i in range(n_id):
                    render(i)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(render, range(n_id)))
        targets = torch.arange(n_id).repeat_interleave(n_img)
        log.info("rendered %d synthetic faces at %d px in %.1f s%s", len(targets), resolution,
                 time.perf_counter() - start, f" ({len(shifted)} public identities shifted)" if shifted else "")
        return TensorFaces(images, targets, _names(n_id))


def _names(n: int) -> list[str]:
    return [f"id{i:04d}" for i in range(n)]  # zero-padded: plain and natural order agree


def save_preview(
    collection: FaceCollection,
    path: str | Path,
    identities: int = 8,
    per_identity: int = 8,
    *,
    upscale: int = 1,
    pad: int = 2,
) -> Path:
    """Saves a PNG grid of a collection: one row per identity (the first ``identities`` ones).

    Args:
        collection: any face collection.
        path: where to write the PNG (parent folders are created).
        identities: number of rows.
        per_identity: images per row (the first ones of each identity).
        upscale: nearest-neighbour magnification, handy for looking at 32 px images.
        pad: pixels of white between images.

    Returns:
        The path written.
    """
    from PIL import Image

    r = collection.resolution
    n_rows = min(identities, len(collection.identity_names))
    rows: list[list[int]] = []
    for ident in range(n_rows):
        idx = torch.nonzero(collection.targets == ident).flatten()[:per_identity].tolist()
        rows.append(idx)
    n_cols = max((len(x) for x in rows), default=0)
    cell = r + pad
    grid = torch.ones(3, max(1, n_rows * cell + pad), max(1, n_cols * cell + pad))
    for ri, idx in enumerate(rows):
        if not idx:
            continue
        imgs = collection.get(idx)
        for ci, im in enumerate(imgs):
            y0, x0 = pad + ri * cell, pad + ci * cell
            grid[:, y0 : y0 + r, x0 : x0 + r] = im
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr)
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.Resampling.NEAREST)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pil.save(out)
    return out
