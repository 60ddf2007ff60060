"""Layered synthesis: a generator as a stack of blocks whose intermediate features can be optimised.

IF-GMI (Qiu et al., ECCV 2024; reference github.com/final-solution/IF-GMI at
e792ef1371be4c563c202ea8cd0f9b35b42b392f) splits the generator into its synthesis blocks
``G = G_{L-1} o ... o G_0`` and optimises, stage after stage, the input of block ``l`` (the output
features of block ``l - 1``) together with ``w``. A prior takes part when it implements
:class:`LayeredSynthesis`:

* ``num_layers``: the number of blocks ``L``;
* ``features(w, upto, start=0, inputs=None)``: the output of block ``upto - 1`` when blocks
  ``start .. upto - 1`` run on ``inputs`` (the input of block ``start``; None for ``start == 0``);
* ``synthesize_from(layer, features, w)``: the raw image of blocks ``layer .. L - 1`` run on
  ``features`` (the input of block ``layer``), on the [0, 1] scale but not clamped, as
  ``Generator.synthesize_unclipped``; ``synthesize_from(0, None, w) == synthesize_unclipped(w)``.

Both built-in priors implement it: DCGAN (a block is one transposed-convolution stage) and the
StyleGAN2-ADA adapter (a block is one ``SynthesisBlock`` ``b4``, ``b8``, ... of the official
network; :func:`stylegan_blocks` walks them exactly as the official ``SynthesisNetwork.forward``).
As in the reference (``stylegan2_intermediate/training/networks.py: SynthesisNetwork.forward`` with
``set_layer``), a StyleGAN restart at block ``l > 0`` starts with ``img = None``: the RGB skip
contributions of the blocks before ``l`` are not carried over, only the features ``x`` are.

:func:`project_l1_ball` is the reference's projection (``utils/stylegan.py: project_onto_l1_ball``,
Duchi et al., ICML 2008): every row of a batch is projected onto the L1 ball of radius ``r``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from inversion_bench.errors import ConfigError


@runtime_checkable
class LayeredSynthesis(Protocol):
    """A prior whose synthesis can be cut between blocks (see the module docstring)."""

    @property
    def num_layers(self) -> int: ...

    def features(self, w: Tensor, upto: int, start: int = 0, inputs: Tensor | None = None) -> Tensor: ...

    def synthesize_from(self, layer: int, features: Tensor | None, w: Tensor) -> Tensor: ...


def as_layered(prior: object, attack: str) -> LayeredSynthesis:
    """``prior`` as a :class:`LayeredSynthesis`; ConfigError naming the prior when it is not one."""
    if not isinstance(prior, LayeredSynthesis):
        raise ConfigError(f"{attack}: the prior {type(prior).__name__} cannot be cut between synthesis blocks "
                          "(no num_layers/features/synthesize_from); use the dcgan or stylegan2-ada prior")
    return prior


def check_span(layer: int, upto: int, num_layers: int, inputs: Tensor | None) -> None:
    """Validates a block range ``layer .. upto - 1`` and whether it has the input it needs."""
    if not 0 <= layer < upto <= num_layers:
        raise ValueError(f"block range {layer}..{upto - 1} is outside the generator's {num_layers} blocks")
    if (layer > 0) != (inputs is not None):
        raise ValueError(f"block {layer} needs {'the previous block features' if layer else 'no input'}; "
                         f"got {'None' if inputs is None else tuple(inputs.shape)}")


def project_l1_ball(x: Tensor, radius: float) -> Tensor:
    """Euclidean projection of every row of ``x`` onto the L1 ball ``{v: ||v||_1 <= radius}``.

    Rows already inside are returned unchanged. Otherwise, with ``mu`` the sorted absolute values
    (descending) and ``c_j`` their cumulative sums, ``rho = max{j : j mu_j > c_j - radius}``,
    ``theta = (c_rho - radius) / rho`` and the result is ``sign(x) max(|x| - theta, 0)``.

    Args:
        x: [N, ...] a batch (each row flattened).
        radius: the L1 radius (> 0).

    Returns:
        the projected batch, shape and dtype of ``x``.
    """
    if radius <= 0:
        raise ValueError(f"the L1 radius must be positive, got {radius}")
    flat = x.reshape(x.shape[0], -1)
    mu = flat.abs().sort(dim=1, descending=True).values
    cumsum = mu.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=mu.dtype)
    rho = ((mu * j > cumsum - radius) * j).amax(dim=1).long().clamp_min(1)
    theta = (cumsum.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - radius) / rho.to(mu.dtype)
    proj = flat.sign() * (flat.abs() - theta.unsqueeze(1)).clamp_min(0)
    inside = flat.abs().sum(dim=1, keepdim=True) <= radius
    return torch.where(inside, flat, proj).view_as(x)


def l1_deviation_projection(x: Tensor, origin: Tensor, radius: float) -> Tensor:
    """``origin + project_l1_ball(x - origin, radius)`` (the reference's constraint); ``radius <= 0``: ``x``."""
    if radius <= 0:
        return x
    return origin + project_l1_ball(x - origin, radius)


# ------------------------------------------------------------------------------ StyleGAN2-ADA
def stylegan_blocks(synthesis: nn.Module) -> list[nn.Module]:
    """The blocks ``b4``, ``b8``, ... of an official ``SynthesisNetwork`` (``block_resolutions``)."""
    resolutions = getattr(synthesis, "block_resolutions", None)
    if not resolutions:
        raise ConfigError(f"stylegan2-ada: the synthesis network {type(synthesis).__name__} has no "
                          "block_resolutions; IF-GMI needs the official SynthesisNetwork (b4, b8, ... blocks)")
    return [getattr(synthesis, f"b{res}") for res in resolutions]


def split_block_ws(blocks: list[nn.Module], ws: Tensor) -> list[Tensor]:
    """Each block's ws as the official ``SynthesisNetwork.forward`` cuts them: ``num_conv + num_torgb``
    vectors starting after the previous blocks' convolutions (a ToRGB w is shared with the next block)."""
    out, idx = [], 0
    for block in blocks:
        out.append(ws.narrow(1, idx, block.num_conv + block.num_torgb))
        idx += block.num_conv
    return out


def run_stylegan_blocks(synthesis: nn.Module, ws: Tensor, start: int, stop: int, x: Tensor | None,
                        block_kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Runs blocks ``start .. stop - 1`` on ``x`` (the input of block ``start``), with ``img = None`` at
    ``start`` as the reference's ``set_layer``; returns ``(x, img)`` of block ``stop - 1``."""
    blocks = stylegan_blocks(synthesis)
    check_span(start, stop, len(blocks), x)
    block_ws = split_block_ws(blocks, ws.to(torch.float32))
    img = None
    for block, cur_ws in zip(blocks[start:stop], block_ws[start:stop], strict=True):
        x, img = block(x, img, cur_ws, **block_kwargs)
    return x, img


def broadcast_ws(w: Tensor, num_ws: int, w_dim: int) -> Tensor:
    """[N, w_dim] (one w for every layer, PPA's ``single_w``) -> [N, num_ws, w_dim]; [N, num_ws, w_dim] as is."""
    if w.ndim == 2 and w.shape[1] == w_dim:
        return w.unsqueeze(1).expand(-1, num_ws, -1)
    if w.ndim == 3 and w.shape[1:] == (num_ws, w_dim):
        return w
    raise ValueError(f"stylegan2-ada: w must be [N, {w_dim}] or [N, {num_ws}, {w_dim}], got {tuple(w.shape)}")
