"""DCGAN prior trained on the suite's public identities (generator plugin ``dcgan``).

Architecture and training follow Radford et al. (ICLR 2016, "Unsupervised Representation Learning
with Deep Convolutional Generative Adversarial Networks"): the generator projects ``z`` to a 4x4
map with a transposed convolution and doubles the resolution with strided 4x4 transposed
convolutions, batch norm and ReLU, ending in tanh; the discriminator mirrors it with strided
convolutions, batch norm (not on its first layer) and LeakyReLU(0.2). Weights start from
N(0, 0.02) (batch-norm scales from N(1, 0.02)); both nets use Adam with lr 2e-4 and betas
(0.5, 0.999) and the non-saturating GAN loss. The number of up-sampling stages follows from the
resolution (a power of two, at least 16 px). This is the CPU-scale stand-in for the public-data
GANs of GMI (Zhang et al., CVPR 2020) and the StyleGAN2 priors of Plug & Play Attacks.

Two additions for short CPU budgets: the final generator is an exponential moving average of the
generator weights (``ema``, as the ``G_ema`` of ProGAN/StyleGAN; much smoother samples after a few
hundred steps), and its batch-norm statistics are then re-estimated on fresh samples (cumulative
average in train mode) so that eval-mode samples match train-mode ones.

Quickstart (32 px synthetic faces, 40 public identities x 40 images): ``g_width: 48, d_width: 24,
batch_size: 32, steps: 900, lr: 0.001`` gives recognisable faces in about 120 CPU seconds; the
defaults (lr 2e-4, widths 64) are the paper's and need several thousand steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field, field_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench import augment
from inversion_bench.attacks.common.layered import check_span
from inversion_bench.errors import ConfigError, DivergedError, MissingResourceError
from inversion_bench.interfaces import Generator, GeneratorPlugin, PriorContext
from inversion_bench.registry import PluginParams, generators

log = logging.getLogger(__name__)

_CONFIG_FILE = "dcgan.json"
_WEIGHTS_FILE = "dcgan.pt"


def _stages(resolution: int) -> int:
    """Number of doublings from 4 px to ``resolution`` (a power of two >= 16)."""
    n = round(math.log2(resolution)) - 2
    if resolution < 16 or 4 * 2**n != resolution:
        raise ConfigError(f"dcgan: resolution {resolution} is not supported; use a power of two "
                          "of at least 16 (e.g. 32 or 64)")
    return n


class DCGANNet(nn.Module):
    """The DCGAN generator network: [N, z_dim] -> [N, 3, R, R] in [-1, 1] (tanh)."""

    def __init__(self, z_dim: int, width: int, resolution: int) -> None:
        super().__init__()
        n = _stages(resolution)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]  # 4x4 ... R/2
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.z_dim = z_dim
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """The DCGAN discriminator: [N, 3, R, R] in [-1, 1] -> [N] logits (real = high)."""

    def __init__(self, width: int, resolution: int) -> None:
        super().__init__()
        n = _stages(resolution)
        chans = [width * 2**i for i in range(n)]  # R/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).flatten()


def _init_weights(module: nn.Module, g: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=g)
            nn.init.zeros_(m.bias)


class DCGANGenerator(Generator):
    """A trained DCGAN as an image prior: ``z`` is the optimised latent (``map`` is the identity).

    Args:
        z_dim: latent size.
        g_width, d_width: channels of the last generator / first discriminator stage.
        resolution: output side in pixels.
        latent_bound: ``constrain`` clips latents to [-bound, bound] (None: no clipping).
    """

    def __init__(self, z_dim: int, g_width: int, d_width: int, resolution: int,
                 latent_bound: float | None = None) -> None:
        super().__init__()
        self.z_dim = self.w_dim = z_dim
        self.resolution = resolution
        self.g_width, self.d_width = g_width, d_width
        self.latent_bound = latent_bound
        self.net = DCGANNet(z_dim, g_width, resolution)
        self.disc = DCGANDiscriminator(d_width, resolution)

    def config(self) -> dict:
        return {"z_dim": self.z_dim, "g_width": self.g_width, "d_width": self.d_width,
                "resolution": self.resolution, "latent_bound": self.latent_bound}

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def synthesize(self, w: Tensor) -> Tensor:
        return (self.net(w) + 1) / 2

    def constrain(self, w: Tensor) -> Tensor:
        if self.latent_bound is None:
            return w
        return w.clamp(-self.latent_bound, self.latent_bound)

    def discriminator_logits(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > self.resolution)
        return self.disc(images * 2 - 1)

    @property
    def has_discriminator(self) -> bool:
        return True

    # The stages one by one (IF-GMI; inversion_bench.attacks.common.layered.LayeredSynthesis): block k < L - 1
    # is (transposed conv, batch norm, ReLU), the last block (transposed conv, tanh); ``w`` enters block 0 only.
    def _blocks(self) -> list[nn.Sequential]:
        m = list(self.net.main)
        return [nn.Sequential(*m[i : i + 3]) for i in range(0, len(m) - 2, 3)] + [nn.Sequential(*m[-2:])]

    @property
    def num_layers(self) -> int:
        return len(self._blocks())

    def features(self, w: Tensor, upto: int, start: int = 0, inputs: Tensor | None = None) -> Tensor:
        blocks = self._blocks()
        check_span(start, upto, len(blocks), inputs)
        x = w.view(w.shape[0], self.z_dim, 1, 1) if start == 0 else inputs
        for block in blocks[start:upto]:
            x = block(x)
        return x

    def synthesize_from(self, layer: int, features: Tensor | None, w: Tensor) -> Tensor:
        return (self.features(w, self.num_layers, layer, features) + 1) / 2


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, z_dim: int, g: torch.Generator, device: torch.device,
                          batches: int = 16, batch_size: int = 64) -> None:
    """Re-estimates the batch-norm running statistics of ``net`` on random latents."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for _ in range(batches):
        net(torch.randn(batch_size, z_dim, generator=g).to(device))
    for m, (momentum, training) in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.train(training)


@generators.register("dcgan")
class DCGANPlugin(GeneratorPlugin):
    """DCGAN (Radford et al., 2016) trained on the public identities at the dataset resolution."""

    class Params(PluginParams):
        z_dim: int = Field(100, ge=2, description="latent size (100 in DCGAN and GMI)")
        g_width: int = Field(64, ge=4, description="generator channels at the last stage (doubled per stage)")
        d_width: int = Field(64, ge=4, description="discriminator channels at the first stage")
        epochs: int = Field(25, ge=1, description="passes over the public images")
        steps: int | None = Field(None, ge=1, description="generator updates (overrides epochs)")
        batch_size: int = Field(64, ge=2, description="training batch size")
        lr: float = Field(2e-4, gt=0, description="Adam learning rate of both nets")
        betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas")
        flip: bool = Field(True, description="random horizontal flip of the public images")
        latent_bound: float | None = Field(2.0, gt=0, description="constrain() clips latents to "
                                           "[-bound, bound] (truncation-like; None: off)")
        grid_size: int = Field(64, ge=1, description="samples in the grid passed to log_image")
        ema: float | None = Field(0.99, ge=0, lt=1, description="decay of an exponential moving average of "
                                  "the generator weights used as the final generator (None: last weights)")
        channels_last: bool = Field(True, description="train in channels-last memory format (faster "
                                    "convolutions on CPU)")

        @field_validator("betas")
        @classmethod
        def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
            if not all(0 <= b < 1 for b in v):
                raise ValueError("betas must lie in [0, 1)")
            return v

    def build(self, resolution: int) -> DCGANGenerator:
        p = self.params
        return DCGANGenerator(p.z_dim, p.g_width, p.d_width, resolution, p.latent_bound)

    def fit(self, ctx: PriorContext) -> DCGANGenerator:
        """Trains generator and discriminator on ``ctx.public`` (non-saturating loss)."""
        p = self.params
        device = ctx.device
        if len(ctx.public) < 2:
            raise ConfigError("dcgan: the public split has fewer than 2 images; add public identities")
        gen = self.build(ctx.resolution)
        g = torch.Generator().manual_seed(ctx.seed)
        _init_weights(gen, g)
        gen.to(device).train()
        fmt = torch.channels_last if p.channels_last else torch.contiguous_format
        gen.to(memory_format=fmt)
        opt_g = torch.optim.Adam(gen.net.parameters(), lr=p.lr, betas=p.betas)
        g_params = list(gen.net.parameters())
        ema = [t.detach().clone() for t in g_params] if p.ema is not None else None
        opt_d = torch.optim.Adam(gen.disc.parameters(), lr=p.lr, betas=p.betas)
        bs = min(p.batch_size, len(ctx.public))
        per_epoch = max(1, len(ctx.public) // bs)
        total = p.steps if p.steps is not None else p.epochs * per_epoch
        ones = torch.ones(bs, device=device)
        zeros = torch.zeros(bs, device=device)
        t0 = time.perf_counter()
        step = 0
        bar = tqdm(total=total, desc="dcgan", disable=not ctx.progress, leave=False)
        while step < total:
            for real, _ in ctx.public.batches(bs, shuffle=True, generator=g):
                if step >= total:
                    break
                if real.shape[0] < bs:
                    continue  # drop the last partial batch (batch norm statistics)
                real = self._prepare(real, ctx.resolution, g).to(device).contiguous(memory_format=fmt)
                z = torch.randn(bs, p.z_dim, generator=g).to(device)
                fake = gen.net(z)
                d_loss = (F.binary_cross_entropy_with_logits(gen.disc(real * 2 - 1), ones)
                          + F.binary_cross_entropy_with_logits(gen.disc(fake.detach()), zeros))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                g_loss = F.binary_cross_entropy_with_logits(gen.disc(fake), ones)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                if ema is not None:
                    with torch.no_grad():
                        for e, t in zip(ema, g_params, strict=True):
                            e.lerp_(t, 1.0 - p.ema)
                step += 1
                bar.update(1)
                if step % 50 == 0 or step == total:
                    dl, gl = float(d_loss.detach()), float(g_loss.detach())
                    if not (math.isfinite(dl) and math.isfinite(gl)):
                        bar.close()
                        raise DivergedError(f"dcgan: training diverged at step {step} "
                                            f"(d_loss {dl}, g_loss {gl})")
                    bar.set_postfix(d=f"{dl:.3f}", g=f"{gl:.3f}")
        bar.close()
        if ema is not None:
            with torch.no_grad():
                for t, e in zip(g_params, ema, strict=True):
                    t.copy_(e)
        gen.to(memory_format=torch.contiguous_format)
        recalibrate_batchnorm(gen.net, p.z_dim, g, device, batches=16, batch_size=bs)
        gen.eval()
        seconds = time.perf_counter() - t0
        log.info("dcgan: %d steps at %d px on %d public images in %.1f s", total, ctx.resolution,
                 len(ctx.public), seconds)
        if ctx.log_image is not None:
            with torch.no_grad():
                samples = gen.synthesize(gen.sample_z(p.grid_size, g).to(device)).cpu()
            ctx.log_image("dcgan_samples", torchvision.utils.make_grid(samples, nrow=8, padding=1))
        return gen

    def _prepare(self, images: Tensor, resolution: int, g: torch.Generator) -> Tensor:
        if images.shape[-1] != resolution:
            images = F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > resolution)
        if self.params.flip:
            images = augment.horizontal_flip(images, g)
        return images * 2 - 1

    def save(self, generator: Generator, folder: Path) -> None:
        if not isinstance(generator, DCGANGenerator):
            raise TypeError(f"dcgan.save expects a DCGANGenerator, got {type(generator).__name__}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _CONFIG_FILE).write_text(json.dumps(generator.config(), indent=2))
        state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
        torch.save(state, folder / _WEIGHTS_FILE)

    def load(self, folder: Path, ctx: PriorContext) -> DCGANGenerator:
        folder = Path(folder)
        cfg_path, w_path = folder / _CONFIG_FILE, folder / _WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise MissingResourceError(f"dcgan: {folder} does not hold {_CONFIG_FILE} and {_WEIGHTS_FILE}; "
                                       "train the prior again (delete the stored entry)")
        cfg = json.loads(cfg_path.read_text())
        gen = DCGANGenerator(cfg["z_dim"], cfg["g_width"], cfg["d_width"], cfg["resolution"],
                             self.params.latent_bound)
        gen.load_state_dict(torch.load(w_path, map_location="cpu", weights_only=True))
        if cfg["resolution"] != ctx.resolution:
            log.warning("dcgan: stored prior has %d px, the suite asks for %d px", cfg["resolution"],
                        ctx.resolution)
        return gen.to(ctx.device).eval()
