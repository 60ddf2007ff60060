"""The attack-generator product: a GAN an attack fits with its target's knowledge (KED-MI, PLG-MI).

Attacks with ``trains_generator`` (:class:`~inversion_bench.interfaces.Attack`) fit their own
generator on the public data, using the attacked target (its soft labels, pseudo-labels or
gradients), before they invert it. That generator is a product of its own: stored under
``generators/<key>`` with the key of the target it was trained with, the attack plugin and its
``generator_spec()`` (:func:`inversion_bench.plan.make_plan`), so attack entries that differ only in
their inversion settings share one GAN per target, and a rerun reuses it. Its wall time is kept with
it and reported as the pair's ``timings.generator_s``, apart from ``timings.attack_s``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from inversion_bench.config import entry_label
from inversion_bench.errors import AccessError, BenchError
from inversion_bench.heartbeat import Heartbeat, wanted
from inversion_bench.interfaces import Attack, AttackContext
from inversion_bench.oracle import QueryCounter, target_for
from inversion_bench.plan import PairJob
from inversion_bench.products.data import splits
from inversion_bench.products.target import attacked_target
from inversion_bench.registry import REGISTRIES
from inversion_bench.run_context import RunContext

KIND = "generators"


def make_attack(ctx: RunContext, job: PairJob) -> Attack:
    """The attack plugin of ``job`` with its validated parameters."""
    cls = REGISTRIES["attacks"].get(ctx.suite.attacks[job.attack_index].name)
    return cls(ctx.loaded.attack_params[job.attack_index])


def attack_context(ctx: RunContext, job: PairJob) -> AttackContext:
    """The :class:`AttackContext` of ``job`` (device, seed, batch size, public data, label)."""
    return AttackContext(device=ctx.device, seed=job.seed, batch_size=ctx.suite.run.attack_batch_size,
                         amp=ctx.suite.run.amp, progress=ctx.settings.progress,
                         resolution=ctx.suite.dataset.resolution, public=splits(ctx).public,
                         label=f"{entry_label(ctx.suite.defenses[job.defense_index])} seed {job.seed}")


def trained_generator(ctx: RunContext, job: PairJob) -> dict[str, Any]:
    """The stored generator of ``job``'s attack against its target, fitted first when absent.

    Returns ``{"state": <what train_generator returned>, "seconds": wall time of the fit, "queries":
    target queries of the fit (black-box and label-only attacks), "attack": plugin name}``. A stored
    one that cannot be read is quarantined by the store and fitted again.

    Raises:
        BenchError: the attack does not train a generator (``job.gan_key`` is None).
        AccessError: the fit used more of the target than the attack's access level allows.
    """
    key = job.gan_key
    if key is None:
        raise BenchError(f"attack {job.attack!r} trains no generator of its own")
    stored = ctx.store.load(KIND, key, _read)
    if stored is not None:
        return stored
    _, _, attacked = attacked_target(ctx, job.defense_index, job.seed)
    attack = make_attack(ctx, job)
    actx = attack_context(ctx, job)
    query_target, counter = target_for(attack.access, attacked, ctx.device)
    torch.manual_seed(job.seed)
    t0 = time.perf_counter()
    beat = Heartbeat(f"GAN of attack {job.attack} on {actx.label}", lambda: counter.queries,
                     on=wanted(actx.progress))  # a line every HEARTBEAT_S without progress bars
    try:
        with beat:
            state = attack.train_generator(query_target, actx)
    except AccessError as exc:
        raise AccessError(f"attack {job.attack!r} declares {attack.access} access: {exc}") from None
    finally:
        if isinstance(counter, QueryCounter):
            counter.close()
    out = {"state": state, "seconds": time.perf_counter() - t0, "queries": counter.queries,
           "attack": ctx.suite.attacks[job.attack_index].name}
    with ctx.store.writing(KIND, key) as tmp:
        torch.save(out, tmp / "data.pt")
    return out


def _read(path: Path) -> dict[str, Any]:
    return torch.load(path / "data.pt", map_location="cpu", weights_only=True)
