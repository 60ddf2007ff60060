"""Candidate search of Plug & Play Attacks (Struppek et al., ICML 2022, Sec. 3.2).

A large set of latents is sampled from the prior, their images are scored by the target's
softmax confidence for each attacked identity (averaged over the image and its horizontal flip,
after the fixed centre crop/resize view), and the ``num_candidates`` best latents of each identity
become its optimisation starting points. The reference samples 5000 latents and keeps 200 per
identity (``configs/attacking/*.yaml`` of the PPA repository); a latent may be a candidate of
several identities but appears at most once per identity.

The images scored here are ``prior.synthesize`` (clamped to [0, 1]): the reference clips the
search images to [-1, 1] (``find_initial_w``'s ``clip=True``, which its configs never override),
whatever its attack's ``clip`` setting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Generator


def check_search_selection(params: object) -> None:
    """The constraints the parameters of PPA-style attacks (PPA, IF-GMI) share: no more candidates than
    searched latents, no more kept images than candidates, crop scales in (0, 1].

    Raises:
        ValueError: naming the field and the values (pydantic reports it against the suite's field).
    """
    p = params
    if p.num_candidates > p.search_space_size:
        raise ValueError(f"num_candidates ({p.num_candidates}) exceeds search_space_size ({p.search_space_size})")
    if p.samples_per_target > p.num_candidates:
        raise ValueError(f"samples_per_target ({p.samples_per_target}) exceeds num_candidates ({p.num_candidates})")
    for name in ("crop_scale", "selection_scale"):
        lo, hi = getattr(p, name)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")


def top_candidates(confidences: Tensor, num_candidates: int) -> Tensor:
    """Indices of the ``num_candidates`` highest scores of every identity.

    Args:
        confidences: [S, K] score of each of S latents for each of K identities.
        num_candidates: how many distinct latents to keep per identity.

    Returns:
        [K, num_candidates] row indices into ``confidences``, best first.
    """
    if num_candidates > confidences.shape[0]:
        raise ConfigError(f"num_candidates={num_candidates} exceeds the search space of "
                          f"{confidences.shape[0]} latents; raise search_space_size")
    return confidences.topk(num_candidates, dim=0, largest=True, sorted=True).indices.T.contiguous()


@torch.no_grad()
def identity_confidences(target: nn.Module, images: Tensor, identities: Tensor, flip: bool) -> Tensor:
    """[B, K] softmax confidence of each image for each identity, averaged with its mirror image."""
    probs = target(images).float().softmax(dim=1)[:, identities]
    if flip:
        probs = (probs + target(images.flip(-1)).float().softmax(dim=1)[:, identities]) / 2
    return probs


@torch.no_grad()
def search_candidates(
    prior: Generator,
    target: nn.Module,
    identities: Tensor,
    *,
    search_space_size: int,
    num_candidates: int,
    view: Callable[[Tensor], Tensor],
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    flip: bool = True,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Samples ``search_space_size`` latents and keeps the best ``num_candidates`` per identity.

    Args:
        prior: the image prior (its ``map`` and ``constrain`` give the optimised latents).
        target: the attacked classifier ([0, 1] images -> logits).
        identities: [K] attacked classes.
        search_space_size: number of latents sampled from the prior.
        num_candidates: latents kept per identity.
        view: the fixed centre crop/resize applied before the target.
        batch_size: images scored together.
        generator: the random source of the latents.
        device: where the prior and the target run.
        flip: average the score with the horizontally flipped image.
        progress: show a progress bar.

    Returns:
        (latents [K * num_candidates, ...] on the CPU grouped by identity, best first;
        labels [K * num_candidates]; their search confidences [K * num_candidates]).
    """
    identities = identities.long()
    z = prior.sample_z(search_space_size, generator)
    ws, scores = [], []
    dev_ids = identities.to(device)
    for start in tqdm(range(0, search_space_size, batch_size), desc="candidate search",
                      disable=not progress, leave=False):
        w = prior.constrain(prior.map(z[start : start + batch_size].to(device)))
        images = view(prior.synthesize(w))
        scores.append(identity_confidences(target, images, dev_ids, flip).cpu())
        ws.append(w.cpu())
    w_all, conf = torch.cat(ws), torch.cat(scores)
    idx = top_candidates(conf, num_candidates)  # [K, C]
    latents = w_all[idx.flatten()]
    labels = identities.repeat_interleave(num_candidates)
    chosen = conf.gather(0, idx.T).T.flatten()
    return latents, labels, chosen
