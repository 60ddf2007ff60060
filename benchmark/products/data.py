"""The data product: the dataset plugin's images, split into private train/test and public parts."""

from __future__ import annotations

import logging
import time

from inversion_bench.config import check_identities
from inversion_bench.data.splits import Splits, load_collection, make_splits
from inversion_bench.errors import ConfigError
from inversion_bench.registry import REGISTRIES
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)


def splits(ctx: RunContext) -> Splits:
    """The suite's splits (rendered or read once per process; each part keyed by the plan's data key).

    Raises ``ConfigError`` naming the suite file when the split asks for more identities than the
    dataset has, or an attack's ``identities`` name a class the split does not have.
    """
    if ctx.held.splits is None:
        s = ctx.suite
        t0 = time.perf_counter()
        plugin = REGISTRIES["datasets"].get(s.dataset.name)(ctx.loaded.dataset_params)
        collection = load_collection(plugin, s.dataset.resolution, s.dataset.split)
        try:
            sp = make_splits(collection, s.dataset.split)
        except ConfigError as exc:
            raise ConfigError(f"{ctx.loaded.source}: {exc}") from None
        check_identities(s, sp.num_classes, ctx.loaded.source)
        for part in (sp.private_train, sp.private_test, sp.public):
            part.key = f"{ctx.plan.data_key}-{part.name}"
        log.info("data: %d private identities (%d train / %d test images), %d public identities (%d images), "
                 "%.1f s", sp.num_classes, len(sp.private_train), len(sp.private_test), len(sp.public_names),
                 len(sp.public), time.perf_counter() - t0)
        ctx.held.splits = sp
    return ctx.held.splits
