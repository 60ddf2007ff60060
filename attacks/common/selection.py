"""Final selection of Plug & Play Attacks (Struppek et al., ICML 2022, Sec. 3.4).

Each optimised image is scored by the target's mean confidence for its identity over
``iterations`` random transformations (random resized crop with scale 0.5-0.9 and aspect ratio
0.8-1.2, horizontal flip with probability 0.5; 100 iterations in the reference
``attacks/final_selection.py``), and the ``samples_per_target`` best images of each identity are
kept. Unlike the reference, which draws one transformation per batch, every image draws its own.
The reference scores the generator's output unclipped (``create_image``); PPA passes a ``render``
that does the same (``Generator.synthesize_unclipped``), so scored images may leave [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench import augment
from inversion_bench.attacks.common.losses import target_confidence


@torch.no_grad()
def transform_scores(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    iterations: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 0.9),
    ratio: tuple[float, float] = (0.8, 1.2),
    flip_p: float = 0.5,
) -> Tensor:
    """Mean target confidence of each image's label over ``iterations`` random transforms.

    Args:
        target: the attacked classifier.
        images: [B, 3, H, W] on the [0, 1] scale, possibly unclipped (on the target's device).
        labels: [B] the attacked class of each image.
        iterations: number of random transformations per image (0: the plain image's confidence).
        generator: the random source of the transformations.
        scale, ratio, flip_p: random resized crop and flip parameters.

    Returns:
        [B] mean confidences (on the CPU).
    """
    labels = labels.to(images.device)
    if iterations == 0:
        return target_confidence(target(images), labels).cpu()
    total = torch.zeros(images.shape[0], device=images.device)
    for _ in range(iterations):
        x = augment.random_resized_crop(images, generator, scale=scale, ratio=ratio, flip_p=flip_p)
        total += target_confidence(target(x), labels)
    return (total / iterations).cpu()


def select_per_identity(scores: Tensor, labels: Tensor, identities: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` best-scored entries of every identity (fewer if it has fewer).

    Args:
        scores: [N] score per entry.
        labels: [N] identity of each entry.
        identities: [K] the identities, in the order of the result.
        k: entries kept per identity.

    Returns:
        1-D int64 indices, grouped by identity in the order of ``identities``, best first.
    """
    out = []
    for ident in identities.tolist():
        idx = torch.nonzero(labels == ident).flatten()
        if idx.numel() == 0:
            continue
        order = torch.sort(scores[idx], descending=True, stable=True).indices[:k]
        out.append(idx[order])
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def score_latents(
    render: Callable[[Tensor], Tensor],
    target: nn.Module,
    latents: Tensor,
    labels: Tensor,
    *,
    iterations: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = False,
    **transform: object,
) -> Tensor:
    """:func:`transform_scores` of the images ``render`` makes from ``latents``, in batches."""
    scores = []
    for start in tqdm(range(0, latents.shape[0], batch_size), desc="final selection",
                      disable=not progress, leave=False):
        images = render(latents[start : start + batch_size].to(device))
        scores.append(transform_scores(target, images, labels[start : start + batch_size],
                                       iterations=iterations, generator=generator, **transform))
    return torch.cat(scores) if scores else torch.empty(0)
