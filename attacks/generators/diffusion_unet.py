"""The class-conditional UNet of Diff-MI's diffusion model (the ADM UNet of guided-diffusion, written anew).

Architecture as ``1_pretrain/guided_diffusion/unet.py`` of github.com/Ouxiang-Li/Diff-MI at commit
4778b9eb5cb8b8e059aa9f72ca2be1e176d15bba with the reference's settings (``script_util.py:
model_and_diffusion_defaults`` and ``3_attack/attack.py: load_models``): ``width`` 128 channels,
``channel_mult`` (1, 2, 3, 4), 3 residual blocks per level, attention with 4 heads at 16 and 8 px,
scale-shift norm in the residual blocks, epsilon prediction (3 output channels), and
``num_classes + 1`` class embeddings added to the time embedding, the last one the unconditional
(null) class of classifier-free guidance. Module names follow the reference's layout
(``label_emb``, ``middle_block.{0,1,2}``, ``in_layers``/``out_layers``, ``proj_out``) because its
fine-tuning selects parameters by name (:data:`FINETUNE_LAYERS`). Group norm uses up to 32 groups (the
largest divisor of the width that is at most 32, so that small widths work).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion_bench.errors import ConfigError

# ``2_finetune/guided_diffusion/train_util.py``: the parameters the target-specific fine-tuning updates
# (a parameter is trained when one of these is a substring of its name).
FINETUNE_LAYERS = ("label_emb.weight", "middle_block.0.in_layers.2", "middle_block.0.out_layers.3",
                   "middle_block.2.in_layers.2", "middle_block.2.out_layers.3", "middle_block.1.proj")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period^(-i / half)`` ([N, dim])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, then the embedding as scale and shift of the second GN, SiLU, dropout, zero conv; skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
        self.out_layers = nn.Sequential(_norm(cout), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        norm, rest = self.out_layers[0], self.out_layers[1:]
        h = rest(norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels (GN, qkv 1x1, softmax(q k / sqrt(d)) v, zero 1x1 proj)."""

    def __init__(self, ch: int, heads: int) -> None:
        super().__init__()
        if ch % heads:
            raise ConfigError(f"diff-mi: attention width {ch} is not divisible by num_heads={heads}")
        self.heads = heads
        self.norm = _norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, h * w).chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c // self.heads))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
        return x + self.proj_out(a).reshape(b, c, h, w)


class _Step(nn.ModuleList):
    """A sequence of layers, the residual blocks among them also given the embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ConditionalUNet(nn.Module):
    """``eps_theta(x_t, t, y)`` for images [N, 3, R, R] on the [-1, 1] scale, times [N] and classes [N]
    (``y == num_classes`` is the null class)."""

    def __init__(self, num_classes: int, resolution: int, *, width: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), num_res_blocks: int = 3,
                 attention_resolutions: Sequence[int] = (16, 8), num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or resolution % (2 ** (levels - 1)):
            raise ConfigError(f"diff-mi: resolution {resolution} must be divisible by 2^(len(channel_mult) - 1) = "
                              f"{2 ** max(levels - 1, 0)} (channel_mult {list(channel_mult)})")
        self.num_classes = num_classes
        self.resolution = resolution
        emb_dim = 4 * width
        self.width = width
        self.time_embed = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        attn_ds = {resolution // r for r in attention_resolutions if r > 0 and resolution % r == 0}

        self.input_blocks = nn.ModuleList([_Step([nn.Conv2d(3, width, 3, padding=1)])])
        skips, ch, ds = [width], width, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * width, emb_dim, dropout)]
                ch = mult * width
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(_Step(layers))
                skips.append(ch)
            if level != levels - 1:
                self.input_blocks.append(_Step([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = _Step([ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, num_heads),
                                   ResBlock(ch, ch, emb_dim, dropout)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * width, emb_dim, dropout)]
                ch = mult * width
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Step(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, 3, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        t = t.to(x.device).float().expand(x.shape[0]) if t.numel() == 1 else t.to(x.device).float()
        emb = self.time_embed(timestep_embedding(t, self.width)) + self.label_emb(y.to(x.device))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)

    def finetune_parameters(self) -> list[nn.Parameter]:
        """The parameters the reference's target-specific fine-tuning updates (:data:`FINETUNE_LAYERS`)."""
        return [p for name, p in self.named_parameters() if any(layer in name for layer in FINETUNE_LAYERS)]
