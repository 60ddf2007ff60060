"""Public-image search: a black-box model inversion attack that needs no gradients and no GAN.

For every attacked identity the attack asks the target (through its black-box oracle: output
probabilities only) about the attacker's public images, keeps the ``candidates`` images the target
finds most like that identity, and then improves each of them by random search: a Gaussian
perturbation of the image is kept when the target's probability of the identity goes up. It is the
query-only cousin of the candidate selection of Plug & Play Attacks (Struppek et al., ICML 2022),
without a generator: the search runs in pixel space, so expect recognisable identities only from weak
targets. It is meant to show the plugin interface, not to win.

Everything the target tells the attack goes through ``oracle(images)``; the benchmark counts the
images asked about (``info.queries`` of the record) and refuses gradients, parameters or features
with an ``AccessError``, so an attack cannot quietly use more than it declares.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench import Attack, AttackContext, ConfigError, Generator, PluginParams, Reconstruction, attacks
from inversion_bench.oracle import ScoreOracle


def select_candidates(probs: Tensor, identities: Tensor, k: int) -> Tensor:
    """Indices [K, k] of the ``k`` images with the highest probability of each identity.

    Args:
        probs: [N, C] probabilities of N images.
        identities: [K] class indices.
        k: candidates per identity (at most N).

    Returns:
        [K, k] int64 indices into the N images, best first.
    """
    return probs[:, identities].T.topk(k, dim=1).indices


def hill_climb_step(images: Tensor, scores: Tensor, proposal: Tensor, proposal_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Keeps each proposal that scores higher than the image it perturbs (a greedy random-search step).

    Args:
        images: [M, 3, H, W] current images.
        scores: [M] their scores.
        proposal: [M, 3, H, W] perturbed images.
        proposal_scores: [M] the proposals' scores.

    Returns:
        (images, scores) after the step.
    """
    better = proposal_scores > scores
    return torch.where(better[:, None, None, None], proposal, images), torch.where(better, proposal_scores, scores)


@attacks.register("public-search")
class PublicSearch(Attack):
    """Black-box: the most identity-like public images, refined by random search on the target's scores."""

    access = "black-box"  # run() gets a ScoreOracle: probabilities of the (defended) target, nothing else
    version = "1"  # part of the cache key of every reconstruction of this attack: bump it on changes

    class Params(PluginParams):
        candidates: int = Field(2, ge=1, description="public images kept per identity (the reconstructions)")
        steps: int = Field(20, ge=0, description="random-search steps per image (each asks the target once)")
        sigma: float = Field(0.05, gt=0, le=1, description="standard deviation of the pixel noise of a proposal")

    def _scores(self, oracle: ScoreOracle, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
        """The target's probability of ``labels`` for every image, asked in batches."""
        out = []
        for start in range(0, len(images), batch_size):
            probs = oracle(images[start:start + batch_size])
            out.append(probs.gather(1, labels[start:start + batch_size, None])[:, 0])
        return torch.cat(out).as_subclass(Tensor)

    def run(self, target: ScoreOracle, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        """Selects and refines ``candidates`` images per identity using only ``target(images)`` (probabilities)."""
        p = self.params
        if ctx.public is None or len(ctx.public) < p.candidates:
            raise ConfigError(f"public-search needs at least {p.candidates} public images (params.candidates)")
        public = ctx.public.images().to(ctx.device)
        probs = torch.cat([target(public[s:s + ctx.batch_size]) for s in range(0, len(public), ctx.batch_size)])
        chosen = select_candidates(probs.as_subclass(Tensor), identities.to(probs.device), p.candidates)
        images = public[chosen.reshape(-1)]
        labels = identities.to(ctx.device).repeat_interleave(p.candidates)
        scores = self._scores(target, images, labels, ctx.batch_size)
        trace = {"confidence": [float(scores.mean())]}
        gen = ctx.generator()
        for _ in range(p.steps):
            noise = torch.randn(images.shape, generator=gen).to(ctx.device)
            proposal = (images + p.sigma * noise).clamp(0, 1)
            images, scores = hill_climb_step(images, scores, proposal,
                                             self._scores(target, proposal, labels, ctx.batch_size))
            trace["confidence"].append(float(scores.mean()))
        return Reconstruction(images=images.cpu(), labels=labels.cpu(), trace=trace,
                              info={"candidates": p.candidates, "steps": p.steps})
