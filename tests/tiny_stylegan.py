"""A tiny stand-in for an official StyleGAN2-ADA network (same call interface, a few weights).

``TinyG`` mirrors ``G_ema``: ``mapping(z, c, truncation_psi, truncation_cutoff)`` returns
[N, num_ws, w_dim] with the official truncation rule (``w_avg.lerp(w, psi)`` on the first
``cutoff`` layers), ``synthesis(ws, noise_mode, force_fp32)`` returns [N, 3, R, R] in [-1, 1].
``TinyD`` mirrors ``D``: ``forward(img, c)`` -> [N, 1]. ``TinyGroupedD`` adds the official
discriminator's minibatch-std layer (``D.b4.mbstd``, same grouping rule: ``G = min(group_size, N)``,
``x.reshape(G, -1, ...)``, so a batch of N > G images with N % G != 0 raises). The classes live at
module level so the test can pickle them like the official ``{'G_ema': G, 'D': D}`` dictionaries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyMapping(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int) -> None:
        super().__init__()
        self.num_ws = num_ws
        self.fc = nn.Linear(z_dim, w_dim)
        self.register_buffer("w_avg", torch.linspace(-0.5, 0.5, w_dim))

    def forward(self, z: Tensor, c: Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> Tensor:
        w = torch.tanh(self.fc(z))
        x = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x


class TinySynthesis(nn.Module):
    def __init__(self, w_dim: int, num_ws: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.layers = nn.ModuleList(nn.Linear(w_dim, 3 * resolution * resolution) for _ in range(num_ws))
        self.last_kwargs: dict = {}

    def forward(self, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False) -> Tensor:
        self.last_kwargs = {"noise_mode": noise_mode, "force_fp32": force_fp32}
        out = sum(layer(ws[:, i]) for i, layer in enumerate(self.layers))
        return torch.tanh(out).view(ws.shape[0], 3, self.resolution, self.resolution)


class TinyG(nn.Module):
    def __init__(self, z_dim: int = 8, w_dim: int = 6, num_ws: int = 4, resolution: int = 16) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.c_dim = z_dim, w_dim, num_ws, 0
        self.img_resolution = resolution
        self.mapping = TinyMapping(z_dim, w_dim, num_ws)
        self.synthesis = TinySynthesis(w_dim, num_ws, resolution)


class TinyD(nn.Module):
    def __init__(self, resolution: int = 16) -> None:
        super().__init__()
        self.img_resolution = resolution
        self.fc = nn.Linear(3 * resolution * resolution, 1)
        self.last_input_range: tuple[float, float] = (0.0, 0.0)

    def forward(self, img: Tensor, c: Tensor | None) -> Tensor:
        self.last_input_range = (float(img.detach().min()), float(img.detach().max()))
        return self.fc(img.flatten(1))


class MinibatchStdLayer(nn.Module):
    """The official layer (``training/networks.py``): the std over groups of G images as an extra channel."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # raises for n > g with n % g != 0, as the official one
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], dim=1)


class TinyEpilogue(nn.Module):
    def __init__(self, channels: int, group_size: int | None) -> None:
        super().__init__()
        self.mbstd = MinibatchStdLayer(group_size)
        self.fc = nn.Linear((channels + 1) * 4 * 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.mbstd(x).flatten(1))


class TinyGroupedD(nn.Module):
    """A discriminator with the official minibatch-std grouping (``D.b4.mbstd.group_size``)."""

    def __init__(self, resolution: int = 16, group_size: int | None = 4, channels: int = 4) -> None:
        super().__init__()
        self.img_resolution = resolution
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.b4 = TinyEpilogue(channels, group_size)

    def forward(self, img: Tensor, c: Tensor | None) -> Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(img)), 4)
        return self.b4(x)


def make_pickle_dict(seed: int = 0, with_d: bool = True, resolution: int = 16,
                     mbstd_group_size: int | None = 0) -> dict[str, nn.Module]:
    """``{'G_ema': ..., 'D': ...}``; ``mbstd_group_size`` != 0 gives a :class:`TinyGroupedD` with that group
    size (None: the whole batch is one group) instead of :class:`TinyD`."""
    torch.manual_seed(seed)
    out: dict[str, nn.Module] = {"G_ema": TinyG(resolution=resolution).eval()}
    if with_d:
        out["D"] = (TinyD(resolution) if mbstd_group_size == 0
                    else TinyGroupedD(resolution, mbstd_group_size)).eval()
    return out


# ------------------------------------------------------------------------ block-structured synthesis
class TinyBlock(nn.Module):
    """Mirrors the official ``SynthesisBlock`` (skip architecture): ``forward(x, img, ws, **kw) -> (x, img)``.

    The first block (``in_channels == 0``) starts from a learned constant and has one conv; the
    others upsample ``x`` by 2 and have two. Each conv is modulated by its own w; the ToRGB output
    (its own w) is added to the upsampled ``img``. ``ws`` holds ``num_conv + num_torgb`` vectors.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.num_conv, self.num_torgb = (1 if in_channels == 0 else 2), 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            self.affine0 = nn.Linear(w_dim, out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.affine1 = nn.Linear(w_dim, out_channels)
        self.torgb = nn.Conv2d(out_channels, 3, 1)
        self.affine_rgb = nn.Linear(w_dim, out_channels)

    @staticmethod
    def _modulated(conv: nn.Module, affine: nn.Module, x: Tensor, w: Tensor) -> Tensor:
        return conv(x * (1 + affine(w))[:, :, None, None])

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random",
                force_fp32: bool = False) -> tuple[Tensor, Tensor]:
        assert ws.shape[1] == self.num_conv + self.num_torgb
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            assert x is not None and x.shape[1:] == (self.in_channels, self.resolution // 2, self.resolution // 2)
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.nn.functional.leaky_relu(self._modulated(self.conv0, self.affine0, x, next(w_iter)), 0.2)
        x = torch.nn.functional.leaky_relu(self._modulated(self.conv1, self.affine1, x, next(w_iter)), 0.2)
        if img is not None:
            img = torch.nn.functional.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        y = self._modulated(self.torgb, self.affine_rgb, x, next(w_iter))
        img = img + y if img is not None else y
        return x, img


class TinyBlockSynthesis(nn.Module):
    """Mirrors the official ``SynthesisNetwork``: blocks ``b4``, ``b8``, ... listed in ``block_resolutions``,
    the ws split as in the official ``forward`` (each block's ws overlap the next block's by its ToRGB w)."""

    def __init__(self, w_dim: int, resolution: int, channels: int = 4) -> None:
        super().__init__()
        self.w_dim, self.img_resolution = w_dim, resolution
        self.block_resolutions = [2**i for i in range(2, resolution.bit_length())]
        self.num_ws = 0
        for res in self.block_resolutions:
            block = TinyBlock(0 if res == 4 else channels, channels, w_dim, res)
            self.num_ws += block.num_conv + (block.num_torgb if res == resolution else 0)
            setattr(self, f"b{res}", block)
        self.last_kwargs: dict = {}

    def forward(self, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False) -> Tensor:
        self.last_kwargs = {"noise_mode": noise_mode, "force_fp32": force_fp32}
        assert ws.shape[1:] == (self.num_ws, self.w_dim)
        ws = ws.to(torch.float32)
        block_ws, w_idx = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws, strict=True):
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, noise_mode=noise_mode, force_fp32=force_fp32)
        return img  # the official network returns the raw sum too (roughly [-1, 1] once trained)


class TinyBlockG(nn.Module):
    """A ``G_ema`` whose synthesis has the official block structure (3 blocks at 16 px, num_ws 6)."""

    def __init__(self, z_dim: int = 8, w_dim: int = 6, resolution: int = 16) -> None:
        super().__init__()
        self.synthesis = TinyBlockSynthesis(w_dim, resolution)
        self.z_dim, self.w_dim, self.num_ws, self.c_dim = z_dim, w_dim, self.synthesis.num_ws, 0
        self.img_resolution = resolution
        self.mapping = TinyMapping(z_dim, w_dim, self.num_ws)


def make_block_pickle_dict(seed: int = 0, resolution: int = 16) -> dict[str, nn.Module]:
    """``{'G_ema': TinyBlockG, 'D': TinyD}``: a pickle whose synthesis can be walked block by block."""
    torch.manual_seed(seed)
    return {"G_ema": TinyBlockG(resolution=resolution).eval(), "D": TinyD(resolution).eval()}
