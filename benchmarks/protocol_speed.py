"""Speed of the 64 px CelebA protocol (suites/celeba64*.yaml): per-step figures and the suites' expected hours.

Measures on CUDA when available (bf16 autocast and channels-last, as ``run: {amp: true, channels_last:
true}``), else on the CPU:

  * training throughput (images/s of forward + cross-entropy + backward + SGD step, random batches) of the
    protocol's architectures: the targets ``vgg16-64``, ``ir152-64``, ``facenet64`` at 64 px and the
    evaluation model ``facenet112`` at 112 px, 1,000 classes, randomly initialised;
  * the prior (the suite's DCGAN at 64 px): seconds per training step;
  * per attack, seconds per optimisation step of a batch, from two short runs of the real plugin that
    differ only in their step count (so set-up and selection cancel), against a random ``vgg16-64`` target:
    GMI (the latent search), KED-MI and PLG-MI (their GAN training step on the public images, and their
    recovery / latent-search step). The per-identity time is the plugin's default step count times the
    per-step time, divided by the identities one batch advances.

With ``--estimate`` it then prints, for each celeba64 suite, the hours its workload takes at these figures:
targets trained (defenses without a checkpoint x seeds x epochs x the split's 27,018 training images),
the prior, each measured attack's GAN per target and its search per identity (1,000 identities). What is not
measured (BREP-MI, Mirror-B, LOMMA's surrogate distillation, the defenses' own training overhead, scoring)
is named and left out, so the totals are lower bounds. Figures from a CPU give CPU hours only: a GPU
figure comes from running this script on the GPU, never from a factor.

    python benchmarks/protocol_speed.py                          # CUDA if present: batch 64, 5 timed steps
    python benchmarks/protocol_speed.py --device cpu --batch 8 --attack-batch 10 --steps 1 --estimate
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inversion_bench.config import load_suite  # noqa: E402
from inversion_bench.data import LabeledImages, TensorFaces  # noqa: E402
from inversion_bench.data.published_split import get_split, read_part  # noqa: E402
from inversion_bench.interfaces import AttackContext, PriorContext  # noqa: E402
from inversion_bench.models import build_classifier  # noqa: E402
from inversion_bench.registry import attacks, generators, load_plugins  # noqa: E402

ARCHS = (("vgg16-64", 64), ("ir152-64", 64), ("facenet64", 64), ("facenet112", 112))
CLASSES = 1000  # the KED-MI split's private identities
SUITES = ("celeba64.yaml", "celeba64-ir152.yaml", "celeba64-facenet64.yaml", "celeba64-ffhq.yaml")
NOT_MEASURED = ("brep-mi", "mirror-b")


class NoiseError(RuntimeError):
    """Two runs that differ only in their step count did not differ in time (a busy machine)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def per_step(device: torch.device, run: Callable[[int], object], lo: int, hi: int) -> tuple[float, object]:
    """Seconds per step, (time of ``run(hi)`` - time of ``run(lo)``) / (hi - lo), and what ``run(lo)`` returned;
    on CUDA after a warm-up ``run(lo)`` (autotuning, allocator)."""
    if device.type == "cuda":
        run(lo)
    out: list[object] = []
    t_lo = timed(device, lambda: out.append(run(lo)))
    t_hi = timed(device, lambda: run(hi))
    if t_hi <= t_lo:
        raise NoiseError(f"the run of {hi} step(s) took {t_hi:.2f} s, the run of {lo} took {t_lo:.2f} s: the steps' "
                         "time is below the timing noise; raise --steps")
    return (t_hi - t_lo) / (hi - lo), out[0]


def fake_images(n: int, classes: int, res: int) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return LabeledImages(TensorFaces(images, labels, [f"id{i}" for i in range(classes)]), torch.arange(n),
                         labels, "speed")


def train_throughput(arch: str, res: int, args: argparse.Namespace) -> float:
    """Images/s of forward + cross-entropy + backward + SGD (momentum 0.9) step on random batches."""
    device = args.device
    model = build_classifier(arch, {}, CLASSES, res, {}).to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(args.batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (args.batch,), device=device)

    def steps(n: int) -> None:
        for _ in range(n):
            with autocast(device, args.amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps(1)  # warm-up (cuDNN autotuning, allocator)
    return args.batch * args.steps / timed(device, lambda: steps(args.steps))


def prior_and_step(args: argparse.Namespace, public: LabeledImages) -> tuple[object, float]:
    """The suite's DCGAN (64 px, z 100, batch 64) after a few steps, and its seconds per training step."""
    plugin_cls = generators.get("dcgan")
    ctx = PriorContext(public=public, resolution=64, seed=0, device=args.device, weights={}, progress=False)

    def fit(steps: int) -> object:
        return plugin_cls(plugin_cls.Params(z_dim=100, batch_size=64, lr=2e-4, steps=steps)).fit(ctx)

    step, prior = per_step(args.device, fit, 1, 1 + args.steps)
    return prior, step


def attack_ctx(args: argparse.Namespace, public: LabeledImages, trained: dict | None = None) -> AttackContext:
    return AttackContext(device=args.device, seed=0, batch_size=args.attack_batch, amp=args.amp, progress=False,
                         resolution=64, public=public, trained=trained)


def gmi_figures(args: argparse.Namespace, target: torch.nn.Module, prior: object) -> dict[str, float]:
    """GMI: seconds per batched step; per identity: num_steps x step x restarts / latents per batch."""
    gmi = attacks.get("gmi")
    d = gmi.Params()
    k = max(1, args.attack_batch // d.num_restarts)
    ids = torch.arange(k)

    def run(steps: int) -> object:
        p = gmi.Params(num_steps=steps, batch_size=k * d.num_restarts)
        return gmi(p).run(target, ids, prior, attack_ctx(args, None))

    step, _ = per_step(args.device, run, 1, 1 + args.steps)
    return {"search_step_s": step, "ids_per_step": k, "gan_step_s": 0.0}


def ked_mi_figures(args: argparse.Namespace, target: torch.nn.Module, public: LabeledImages) -> dict[str, float]:
    """KED-MI: its GAN's discriminator step (x the reference's 120 epochs of batches of 64) and the recovery
    step of a batch of identities (one latent each; x 2,400 steps)."""
    ked = attacks.get("ked-mi")
    gan_step, trained = per_step(args.device, lambda s: ked(ked.Params(gan_steps=s)).train_generator(
        target, attack_ctx(args, public)), 1, 1 + args.steps)
    k = args.attack_batch
    ids = torch.arange(k)

    def run(steps: int) -> object:
        return ked(ked.Params(num_steps=steps, batch_size=k)).run(target, ids, None,
                                                                 attack_ctx(args, public, trained))

    step, _ = per_step(args.device, run, 1, 1 + args.steps)
    return {"gan_step_s": gan_step, "search_step_s": step, "ids_per_step": k}


def plg_mi_figures(args: argparse.Namespace, target: torch.nn.Module, public: LabeledImages) -> dict[str, float]:
    """PLG-MI: one cGAN iteration (n_dis discriminator steps + one generator step; x 30,000) and the latent
    search step of ``samples_per_target`` latents per identity (x 600 steps)."""
    plg = attacks.get("plg-mi")
    d = plg.Params()
    gan_step, trained = per_step(args.device, lambda s: plg(plg.Params(gan_iterations=s, top_n=1)).train_generator(
        target, attack_ctx(args, public)), 1, 1 + args.steps)
    k = max(1, args.attack_batch // d.samples_per_target)
    ids = torch.arange(k)

    def run(steps: int) -> object:
        p = plg.Params(num_steps=steps, batch_size=k * d.samples_per_target)
        return plg(p).run(target, ids, None, attack_ctx(args, public, trained))

    step, _ = per_step(args.device, run, 1, 1 + args.steps)
    return {"gan_step_s": gan_step, "search_step_s": step, "ids_per_step": k}


def gan_steps_of(p: object, public_images: int) -> int:
    """GAN training steps per target of an attack's parameters ``p`` (0: no GAN of its own)."""
    if hasattr(p, "gan_iterations"):  # PLG-MI: generator iterations, each n_dis discriminator steps
        return int(p.gan_iterations)
    if hasattr(p, "gan_epochs"):  # KED-MI: discriminator steps, epochs over the public images
        return int(p.gan_steps or p.gan_epochs * max(1, public_images // p.gan_batch_size))
    return 0


def kedmi_counts() -> dict[str, int]:
    """Images of the KED-MI split (package data): training images and CelebA public images."""
    split = get_split("kedmi-celeba")
    return {"train": len(read_part(split, "private_train")), "public": len(read_part(split, "public"))}


def suite_hours(path: Path, train_ips: dict[str, float], prior_step: float | None,
                attack: dict[str, dict[str, float]],
                counts: dict[str, int]) -> Iterator[str]:
    """Lines of the hours ``path``'s workload takes at the measured figures (lower bound: see the docstring)."""
    loaded = load_suite(path)
    s = loaded.suite
    trained = [d for d in s.defenses if d.checkpoint is None]
    arch = s.target.architecture.name
    epochs = s.target.training.epochs or 0
    train_h = len(trained) * len(s.seeds) * epochs * counts["train"] / train_ips[arch] / 3600
    dp = loaded.dataset_params
    public = dp.ffhq_count if getattr(dp, "public", "celeba") == "ffhq" else counts["public"]
    prior_steps = loaded.prior_params.epochs * (public // loaded.prior_params.batch_size)
    prior_h = prior_steps * prior_step / 3600 if prior_step is not None else 0.0
    targets = len(s.defenses) * len(s.seeds)  # a checkpoint target is attacked on every seed too
    attack_h, left_out = 0.0, []
    for a in s.attacks:
        fig = attack.get(a.name)
        if fig is None or a.name in NOT_MEASURED or a.params.get("augment_models"):
            left_out.append(a.id or a.name)
            continue
        n_ids = CLASSES if a.identities == "all" else (a.identities if isinstance(a.identities, int)
                                                       else len(a.identities))
        p = attacks.get(a.name).Params(**a.params)
        gan_steps = gan_steps_of(p, public)
        per_identity = p.num_steps * fig["search_step_s"] / fig["ids_per_step"]
        attack_h += targets * (gan_steps * fig["gan_step_s"] + n_ids * per_identity) / 3600
    total = train_h + prior_h + attack_h
    yield (f"{path.name}: {total:9.1f} h = targets {train_h:.1f} h ({len(trained)} trained x {len(s.seeds)} seeds "
           f"x {epochs} epochs, {arch}) + prior {prior_h:.1f} h ({prior_steps} steps) + attacks {attack_h:.1f} h "
           f"({targets} targets x 1000 identities)")
    priced = sorted({f["target"] for f in attack.values() if f.get("target", arch) != arch})
    if priced:
        yield f"    attacks timed against {', '.join(priced)}, not this suite's {arch} (its forward/backward differs)"
    prior_note = "the prior, " if prior_step is None else ""
    yield f"    not measured, left out: {prior_note}{', '.join(left_out) or 'none'}; defenses' own overhead, scoring"


MEASURES = {"gmi": lambda a, t, pr, pub: gmi_figures(a, t, pr),
            "ked-mi": lambda a, t, pr, pub: ked_mi_figures(a, t, pub),
            "plg-mi": lambda a, t, pr, pub: plg_mi_figures(a, t, pub)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64, help="training batch (the protocol's: 64)")
    p.add_argument("--attack-batch", type=int, default=64, help="latents (identities for KED-MI) per attack batch")
    p.add_argument("--steps", type=int, default=5, help="timed training batches / extra attack and GAN steps")
    p.add_argument("--public", type=int, default=256, help="random public images the GANs train on")
    p.add_argument("--archs", default=",".join(a for a, _ in ARCHS))
    p.add_argument("--attacks", default="gmi,ked-mi,plg-mi")
    p.add_argument("--attack-target", default="vgg16-64", help="target architecture the attacks are timed against")
    p.add_argument("--estimate", action="store_true", help="print each celeba64 suite's hours at these figures")
    args = p.parse_args()
    args.device = torch.device(args.device)
    args.amp = args.channels_last = args.device.type == "cuda"
    load_plugins()
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"device {name}; amp (bf16) {args.amp}; channels_last {args.channels_last}; training batch {args.batch}; "
          f"attack batch {args.attack_batch}; {args.steps} timed step(s); torch {torch.__version__}", flush=True)
    ips = {}
    for arch, res in ARCHS:
        if arch in args.archs.split(","):
            ips[arch] = train_throughput(arch, res, args)
            print(f"train {arch:10s} @{res:3d} px: {ips[arch]:9.2f} images/s "
                  f"(forward+backward+SGD step, batch {args.batch})", flush=True)
    public = fake_images(args.public, 16, 64)
    try:
        prior, prior_step = prior_and_step(args, public)
        print(f"prior dcgan @64 px: {prior_step:8.3f} s/step (batch 64)", flush=True)
    except NoiseError as exc:
        prior, prior_step = None, None
        print(f"prior dcgan @64 px: not measured: {exc}", flush=True)
    target = build_classifier(args.attack_target, {}, CLASSES, 64, {}).to(args.device).eval()
    figures = {}
    for attack in args.attacks.split(","):
        if attack == "gmi" and prior is None:
            prior = generators.get("dcgan")(generators.get("dcgan").Params(steps=1)).fit(
                PriorContext(public=public, resolution=64, seed=0, device=args.device, weights={}, progress=False))
        try:
            figures[attack] = fig = {**MEASURES[attack](args, target, prior, public), "target": args.attack_target}
        except NoiseError as exc:
            print(f"attack {attack:7s}: not measured: {exc}", flush=True)
            continue
        gan = f"GAN step {fig['gan_step_s']:.3f} s; " if fig["gan_step_s"] else ""
        per_id = attacks.get(attack).Params().num_steps * fig["search_step_s"] / fig["ids_per_step"]
        print(f"attack {attack:7s} ({args.attack_target} target): {gan}search step {fig['search_step_s']:.3f} s for "
              f"{fig['ids_per_step']} identities -> {per_id:.2f} s per identity at its default steps", flush=True)
    if args.estimate:
        counts = kedmi_counts()
        print(f"estimate at these figures ({name}; KED-MI split: {counts['train']} training images, "
              f"{counts['public']} public):")
        for suite in SUITES:
            if "vgg16-64" not in ips and suite == SUITES[0]:
                continue
            try:
                for line in suite_hours(ROOT / "suites" / suite, ips, prior_step, figures, counts):
                    print("  " + line)
            except KeyError as exc:
                print(f"  {suite}: its target {exc} was not measured (--archs)")


if __name__ == "__main__":
    main()
