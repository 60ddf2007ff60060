"""What the data key hashes beyond the suite text: the identities the dataset resolves to.

A dataset read from files (``image-folder``, ``celeba``) resolves its parameters to an ordered list
of identities (class k of the collection is the k-th name) with an image count each, and the split
then picks private and public identities from that list (``selection: first`` takes the first
names). Two runs with the same suite text can therefore train on different identities: a renamed or
added folder, or a change of how names are sorted (natural order made ``s2`` come before ``s10``, and
13 of the 20 private identities of ``selection: first`` stayed), changes the list. The data key
(:func:`inversion_bench.plan.make_plan`) hashes :func:`resolved_identities`, so every product
downstream (evaluation model, prior, targets, attacks) gets a new key whenever the resolved
identities change, whatever the dataset plugin's own :meth:`identity` covers.

Generated datasets (``synthetic-faces``, ``toy2d``: :attr:`DatasetPlugin.generated`) are left out:
their identities are a function of their parameters and plugin version, both already in the key,
and their keys stay as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from inversion_bench.data import DatasetPlugin, TensorFaces
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.errors import ConfigError


def listed_collection(names: Sequence[str], counts: Sequence[int]) -> TensorFaces:
    """A collection without pixels (0-image tensor) whose identities and targets follow a listing.

    ``make_splits`` only reads ``identity_names`` and ``targets``, so the split a listing leads to is
    computed without decoding an image.
    """
    targets = torch.arange(len(names)).repeat_interleave(torch.tensor(list(counts), dtype=torch.long))
    listed = TensorFaces(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), targets, list(names))
    listed.listing_only = True
    return listed


def names_digest(names: Sequence[str], counts: Sequence[int] | None = None) -> str:
    """SHA-1 of ``names`` in order (with their image counts when given); one name per line."""
    digest = hashlib.sha1()
    for i, name in enumerate(names):
        line = f"{name}\0{counts[i]}" if counts is not None else name
        digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def resolved_identities(plugin: DatasetPlugin, split: SplitSpec) -> dict[str, Any] | None:
    """The identities ``plugin`` resolves to and the split ``split`` picks from them, as digests.

    Returns None for generated data (``plugin.generated``) and when the dataset cannot list its
    identities before loading;
    else ``{"identities": sha1 of the names in class order with their counts, "count": n,
    "private": sha1 of the private names in class order, "public": sha1 of the public names}``.
    When the split cannot be made from the listing (too many identities asked for, unknown
    names), ``private``/``public`` are left out: ``bench validate`` reports that split first, and a
    run stops at it.
    """
    listing = None if plugin.generated else plugin.listing()
    if listing is None:
        return None
    names, counts = listing
    out: dict[str, Any] = {"identities": names_digest(names, counts), "count": len(names)}
    try:
        sp = make_splits(listed_collection(names, counts), split)
    except (ConfigError, RuntimeError, ValueError):
        return out
    out["private"] = names_digest(sp.private_names)
    out["public"] = names_digest(sp.public_names)
    return out
