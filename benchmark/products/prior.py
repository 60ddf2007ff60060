"""The prior product: the image generator the attacks search in (fit on public data, or loaded)."""

from __future__ import annotations

import torch

from inversion_bench.interfaces import PriorContext
from inversion_bench.products.data import splits
from inversion_bench.registry import REGISTRIES
from inversion_bench.run_context import RunContext


def prior(ctx: RunContext):
    """The suite's prior on the run's device (stored under ``plan.prior_key``; held once loaded).

    Sample grids the plugin draws while fitting go to ``<run_dir>/figures/prior_<name>.png``. A stored
    prior that cannot be loaded (damaged files) is quarantined by the store and fitted again.
    """
    if ctx.held.prior is None:
        s = ctx.suite
        plugin = REGISTRIES["generators"].get(s.prior.name)(ctx.loaded.prior_params)
        figures = ctx.run_dir / "figures"

        def log_image(name: str, grid: torch.Tensor) -> None:
            import torchvision

            figures.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(grid, figures / f"prior_{name}.png")

        pctx = PriorContext(public=splits(ctx).public, resolution=s.dataset.resolution, seed=s.prior_seed,
                            device=ctx.device, weights=ctx.weights, progress=ctx.settings.progress,
                            log_image=log_image)
        key = ctx.plan.prior_key
        gen = ctx.store.load("priors", key, lambda path: plugin.load(path, pctx))  # None: absent or quarantined
        if gen is None:
            gen = plugin.fit(pctx)
            with ctx.store.writing("priors", key) as tmp:
                plugin.save(gen, tmp)
        ctx.held.prior = gen.to(ctx.device).eval()
    return ctx.held.prior
