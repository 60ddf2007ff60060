"""The reconstruction product: one attack's output against one target (per defense, attack, seed)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from inversion_bench.attack_budget import stated_budget
from inversion_bench.errors import AccessError, BenchError
from inversion_bench.heartbeat import Heartbeat, wanted
from inversion_bench.interfaces import Reconstruction
from inversion_bench.oracle import QueryCounter, target_for
from inversion_bench.plan import PairJob
from inversion_bench.products.attack_generator import attack_context, make_attack, trained_generator
from inversion_bench.products.data import splits
from inversion_bench.products.prior import prior
from inversion_bench.products.target import attacked_target
from inversion_bench.run_context import RunContext


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_identity: int = 4,
              max_identities: int = 16) -> Path:
    """A PNG grid: one row per identity (first ``per_identity`` images of each)."""
    import torchvision

    rows = []
    for c in labels.unique()[:max_identities]:
        imgs = images[labels == c][:per_identity]
        if imgs.shape[0] < per_identity:
            pad = torch.ones(per_identity - imgs.shape[0], *imgs.shape[1:])
            imgs = torch.cat([imgs, pad])
        rows.append(imgs)
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=per_identity, padding=1, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, path)
    return path


def attacked_identities(spec: str | int | list[int], n_classes: int, where: str) -> torch.Tensor:
    """The class indices an attack's ``identities`` setting names (``all``, the first N, or a list)."""
    if spec == "all":
        return torch.arange(n_classes)
    if isinstance(spec, int):
        return torch.arange(min(spec, n_classes))
    bad = [i for i in spec if not 0 <= i < n_classes]
    if bad:
        raise BenchError(f"{where}: {bad} outside 0..{n_classes - 1}")
    return torch.tensor(spec)


def reconstruct(ctx: RunContext, job: PairJob) -> str:
    """Runs the attack of ``job`` unless its reconstructions are stored; returns their store key.

    The attack sees the target behind the defense's ``postprocess``, through the oracle of its
    declared access level (:func:`inversion_bench.oracle.target_for`). Images and labels are stored
    on the CPU with the attack's wall time, access level and query count in ``info``, next to a
    ``grid.png``. Stored reconstructions whose checksums mismatch are quarantined and recomputed.
    """
    if ctx.store.has("attacks", job.attack_key):
        return job.attack_key
    a = ctx.suite.attacks[job.attack_index]
    attack = make_attack(ctx, job)
    generator = trained_generator(ctx, job) if attack.trains_generator else None  # before the attack's clock
    _, _, attacked = attacked_target(ctx, job.defense_index, job.seed)
    gen = prior(ctx) if attack.needs_prior else None
    identities = attacked_identities(a.identities, splits(ctx).num_classes, f"attacks[{job.attack_index}].identities")
    actx = attack_context(ctx, job)
    if generator is not None:
        actx.trained = generator["state"]
    query_target, counter = target_for(attack.access, attacked, ctx.device)
    torch.manual_seed(job.seed)
    budget = stated_budget(attack)
    beat = Heartbeat(f"attack {job.attack} on {actx.label}", lambda: counter.queries, budget.text if budget else None,
                     on=wanted(actx.progress))  # a line every HEARTBEAT_S without progress bars
    t0 = time.perf_counter()
    try:
        with beat:
            rec = attack.run(query_target, identities, gen, actx)
    except AccessError as exc:
        raise AccessError(f"attack {a.name!r} declares {attack.access} access: {exc}") from None
    finally:
        if isinstance(counter, QueryCounter):
            counter.close()
    seconds = time.perf_counter() - t0
    rec.images = rec.images.detach().float().cpu()
    rec.labels = rec.labels.detach().long().cpu()
    rec.check()
    rec.info.update(seconds=seconds, access=attack.access, queries=counter.queries,
                    identities=int(identities.numel()), **ctx.compute_setting())
    if generator is not None:  # the GAN's fit, apart from the attack's own time and queries
        rec.info.update(generator_seconds=float(generator["seconds"]), generator_queries=int(generator["queries"]),
                        generator_key=job.gan_key)
    with ctx.store.writing("attacks", job.attack_key) as tmp:
        torch.save(rec.to_state(), tmp / "data.pt")
        save_grid(rec.images, rec.labels, tmp / "grid.png")
    return job.attack_key


def budget_info(ctx: RunContext, job: PairJob) -> dict[str, str]:
    """``{"budget": ..., "early_stop": ...}`` of ``job``'s attack from its parameters (the record's
    ``attack_info``, read by the cost table); empty when the attack states none."""
    budget = stated_budget(make_attack(ctx, job))
    return budget.as_info() if budget is not None else {}


def load_reconstruction(ctx: RunContext, attack_key: str) -> Reconstruction:
    """The stored reconstructions of one pair.

    Raises:
        CorruptProductError: they cannot be read (then quarantined: the next run recomputes them).
    """
    return ctx.store.read("attacks", attack_key, _read_state)


def _read_state(path: Path) -> Reconstruction:
    return Reconstruction.from_state(torch.load(path / "data.pt", map_location="cpu", weights_only=True))
