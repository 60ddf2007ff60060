"""PLG-MI: top-n pseudo-labels, cGAN pieces and losses against hand values; end to end on a tiny target."""

from __future__ import annotations

import dataclasses
import functools
import io
import queue

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inversion_bench.attacks.common.plg_gan import (
    ConditionalBatchNorm2d,
    ConditionalGenerator,
    ProjectionDiscriminator,
    dis_hinge,
    gen_hinge,
    max_margin_loss,
    plg_augment,
    rotate,
    top_n_selection,
)
from inversion_bench.attacks.common.plg_train import endless_batches
from inversion_bench.attacks.plg_mi import PLGMI, PLGMIParams
from inversion_bench.data import LabeledImages, TensorFaces
from inversion_bench.errors import BenchError, ConfigError, DivergedError
from inversion_bench.interfaces import AttackContext
from inversion_bench.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, RES = 4, 16
TINY = {"top_n": 4, "gen_width": 8, "dis_width": 4, "z_dim": 8, "gan_iterations": 30, "gan_batch_size": 8,
        "n_dis": 1, "num_steps": 50, "samples_per_target": 3, "unit_output": True}


# --------------------------------------------------------------------------------------------
# top-n selection
# --------------------------------------------------------------------------------------------
def test_top_n_selection_hand_built_matrix() -> None:
    probs = torch.tensor([
        [0.70, 0.20, 0.10],  # image 0
        [0.10, 0.60, 0.30],  # image 1
        [0.40, 0.40, 0.20],  # image 2: ties image 4 for class 0
        [0.05, 0.15, 0.80],  # image 3
        [0.40, 0.30, 0.30],  # image 4
    ])
    positions, labels = top_n_selection(probs, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # class 0: image 0 (0.7), then the tie 0.4 of images 2 and 4 goes to the later one (the reference's
    # queue replaces its minimum when the new confidence is >= it)
    # class 1: images 1 (0.6) and 2 (0.4); class 2: images 3 (0.8), then the tie 0.3 of 1 and 4 -> 4
    assert positions.tolist() == [0, 4, 1, 2, 3, 4]
    # image 4 is kept by two classes, image 2 by one: duplicates across classes are allowed
    with pytest.raises(ConfigError, match="top_n=6"):
        top_n_selection(probs, 6)


def _reference_top_n(probs: torch.Tensor, n: int) -> list[set[int]]:
    """The reference's bounded priority queue, ported literally (the index stands in for the path)."""
    kept = []
    for c in range(probs.shape[1]):
        q: queue.PriorityQueue = queue.PriorityQueue()
        for j in range(probs.shape[0]):
            value = float(probs[j, c])
            if q.qsize() < n:
                q.put([value, j])
            else:
                current_min = q.get()
                q.put(current_min if value < current_min[0] else [value, j])
        kept.append({q.get()[1] for _ in range(q.qsize())})
    return kept


def test_top_n_selection_matches_the_reference_queue_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        probs = torch.randint(0, 4, (12, 5), generator=g).float() / 4  # few values: many ties
        n = 1 + trial % 5
        positions, _ = top_n_selection(probs, n)
        ours = [set(positions[c * n : (c + 1) * n].tolist()) for c in range(5)]
        assert ours == _reference_top_n(probs, n)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def test_max_margin_loss_hand_values() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, 1.5], [2.0, 2.0, 0.0]])
    y = torch.tensor([1, 1, 0])
    # -z_y + max_{j != y} z_j: -3 + 2, -1 + 5, -2 + 2 (a tie with another class)
    assert torch.allclose(max_margin_loss(logits, y), torch.tensor([-1.0, 4.0, 0.0]))
    # the reference's batch mean
    assert float(max_margin_loss(logits, y).mean()) == pytest.approx(1.0)


def test_hinge_losses_hand_values() -> None:
    fake = torch.tensor([[-2.0], [0.5]])
    real = torch.tensor([[2.0], [0.0]])
    # D: mean relu(1 - real) = (0 + 1) / 2, mean relu(1 + fake) = (0 + 1.5) / 2
    assert float(dis_hinge(fake, real)) == pytest.approx(1.25)
    assert float(gen_hinge(fake)) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# augmentation and networks
# --------------------------------------------------------------------------------------------
def test_rotate_hand_values() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(2, 3, 4, 4).contiguous()
    assert torch.allclose(rotate(x, torch.zeros(2)), x, atol=1e-5)
    turned = rotate(x, torch.tensor([90.0, -90.0]))
    # a quarter turn moves pixel centres onto pixel centres; positive angles turn counter-clockwise (kornia)
    assert torch.allclose(turned[0], torch.rot90(x[0], k=1, dims=(1, 2)), atol=1e-4)
    assert torch.allclose(turned[1], torch.rot90(x[1], k=-1, dims=(1, 2)), atol=1e-4)
    assert turned[0, 0, 0].tolist() == pytest.approx([3.0, 7.0, 11.0, 15.0], abs=1e-4)


def test_plg_augment_is_seeded_per_sample_and_differentiable() -> None:
    x = torch.rand(6, 3, RES, RES, requires_grad=True)
    a = plg_augment(x, torch.Generator().manual_seed(1))
    b = plg_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, plg_augment(x, torch.Generator().manual_seed(2)))
    a.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    none = plg_augment(x, torch.Generator(), crop_scale=(1.0, 1.0), brightness=0, contrast=0, flip_p=0,
                       degrees=0)
    assert torch.allclose(none, x, atol=1e-5)


def test_conditional_batchnorm_applies_the_class_scale_and_shift() -> None:
    cbn = ConditionalBatchNorm2d(3, 2)
    with torch.no_grad():
        cbn.weights.weight[2] = torch.tensor([2.0, 3.0])
        cbn.biases.weight[2] = torch.tensor([1.0, -1.0])
    x = torch.randn(4, 2, 3, 3)
    y = torch.tensor([0, 2, 0, 2])
    normed = F.batch_norm(x, None, None, training=True)
    out = cbn(x, y)
    assert torch.allclose(out[0], normed[0], atol=1e-5)  # class 0: scale 1, shift 0 (the initial values)
    expected = normed[1] * torch.tensor([2.0, 3.0]).view(2, 1, 1) + torch.tensor([1.0, -1.0]).view(2, 1, 1)
    assert torch.allclose(out[1], expected, atol=1e-5)


def test_network_shapes_and_projection() -> None:
    for res in (16, 32):
        gen = ConditionalGenerator(CLASSES, res, width=4, z_dim=8)
        dis = ProjectionDiscriminator(CLASSES, res, width=4)
        assert len(gen.blocks) == {16: 2, 32: 3}[res] and len(dis.blocks) == {16: 3, 32: 4}[res]
        y = torch.tensor([0, 3])
        x = gen(torch.randn(2, 8), y)
        assert x.shape == (2, 3, res, res) and float(x.detach().abs().max()) <= 1
        assert dis(x, y).shape == (2, 1)
    # the projection term: D(x, y) - D(x, y') = <embed(y) - embed(y'), h(x)>
    dis.eval()
    h = F.relu(dis.blocks(x)).sum(dim=(2, 3))
    emb = dis.l_y.weight
    diff = dis(x, torch.tensor([1, 1])) - dis(x, torch.tensor([2, 2]))
    assert torch.allclose(diff.squeeze(1), ((emb[1] - emb[2]) * h).sum(1), atol=1e-4)
    with pytest.raises(ConfigError, match="resolution"):
        ConditionalGenerator(CLASSES, 24, width=4)


def test_endless_batches_cover_every_item_per_epoch() -> None:
    it = endless_batches(5, 3, torch.Generator().manual_seed(0))
    first = torch.cat([next(it), next(it)])  # 6 indices: one permutation of 5 plus one of the next
    assert sorted(first[:5].tolist()) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------
# the plugin
# --------------------------------------------------------------------------------------------
def test_registered_with_reference_defaults() -> None:
    assert PLGMI.name == "plg-mi" and PLGMI.access == "white-box" and PLGMI.trains_generator
    p = PLGMIParams()
    assert (p.top_n, p.gan_iterations, p.gan_batch_size, p.n_dis, p.gan_lr, p.gan_betas, p.alpha) == (
        30, 30000, 64, 5, 2e-4, (0.0, 0.9), 0.2)
    assert (p.gen_width, p.dis_width, p.z_dim, p.gen_bottom_width, p.inv_loss) == (64, 64, 128, 4, "margin")
    assert (p.num_steps, p.lr, p.views, p.samples_per_target, p.train_jitter_p, p.attack_jitter_p) == (
        600, 0.1, 2, 5, 0.5, 1.0)


def test_generator_spec_holds_only_the_gan_parameters() -> None:
    spec = PLGMI(PLGMIParams(**TINY)).generator_spec()
    assert spec == PLGMI(PLGMIParams(**(TINY | {"num_steps": 3, "lr": 0.5, "samples_per_target": 1}))).generator_spec()
    assert spec != PLGMI(PLGMIParams(**(TINY | {"alpha": 0.5}))).generator_spec()
    assert "num_steps" not in spec and spec["gan_iterations"] == 30


COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9], [0.5, 0.5, 0.5]])


def _faces(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Tiny "identities": class c is a noisy image of colour COLOURS[c]."""
    noise = torch.randn(labels.numel(), 3, RES, RES, generator=g) * 0.1
    return (COLOURS[labels].view(-1, 3, 1, 1) + noise).clamp(0, 1)


@functools.lru_cache(maxsize=1)
def _target_state() -> dict[str, torch.Tensor]:
    """A tiny CNN trained for a few full-batch steps to tell the four colours apart (about 1 s)."""
    torch.manual_seed(1)
    model = SmallCNN(SmallCNN.Params(width=4)).build(CLASSES, RES, {})
    g = torch.Generator().manual_seed(2)
    y = torch.arange(CLASSES).repeat(8)
    x = _faces(y, g)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _target() -> nn.Module:
    model = SmallCNN(SmallCNN.Params(width=4)).build(CLASSES, RES, {})
    model.load_state_dict(_target_state())
    return model.eval()


def _public(n: int = 24) -> LabeledImages:
    """Public identities of random colours (some close to a private one)."""
    g = torch.Generator().manual_seed(3)
    mix = torch.rand(n // 4, 3, generator=g)  # one random colour per public identity
    images = (mix.repeat_interleave(4, 0).view(-1, 3, 1, 1) + torch.randn(n, 3, RES, RES, generator=g) * 0.1)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    col = TensorFaces(images, torch.arange(n) // 4, [str(i) for i in range(n // 4)])
    return LabeledImages(col, torch.arange(n), torch.arange(n) // 4, "public")


def _ctx(seed: int = 0, **kw) -> AttackContext:
    return AttackContext(device=torch.device("cpu"), seed=seed, batch_size=16, progress=False, resolution=RES,
                         public=_public(), **kw)


def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_end_to_end_beats_random_samples_of_its_generator() -> None:
    target = _target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    attack = PLGMI(PLGMIParams(**TINY))
    state = _round_trip(attack.train_generator(target, _ctx()))
    assert state["config"] == {"num_classes": CLASSES, "resolution": RES, "gen_width": 8, "dis_width": 4, "z_dim": 8,
                               "gen_bottom_width": 4, "unit_output": True}
    info = state["info"]
    assert info["pseudo_labelled"] == CLASSES * 4 and info["gan_iterations"] == 30 and "final_inv" in info
    ids = torch.tensor([0, 2, 3])
    rec = attack.run(target, ids, None, dataclasses.replace(_ctx(), trained=state))
    assert rec.images.shape == (9, 3, RES, RES) and rec.labels.tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert len(rec.trace["loss"]) == 50 and rec.info["gan"]["pseudo_labelled"] == CLASSES * 4
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in target.parameters())
    # the latent search against the target beats random latents of the same trained generator
    gen = attack.load_generator(dataclasses.replace(_ctx(), trained=state))
    with torch.no_grad():
        rand = gen(torch.randn(90, 8, generator=torch.Generator().manual_seed(9)), ids.repeat_interleave(30))
        acc_rand = float((target(rand.clamp(0, 1)).argmax(1) == ids.repeat_interleave(30)).float().mean())
        acc_rec = float((target(rec.images).argmax(1) == rec.labels).float().mean())
        margin_rand = float(max_margin_loss(target(rand.clamp(0, 1)), ids.repeat_interleave(30)).mean())
        margin_rec = float(max_margin_loss(target(rec.images), rec.labels).mean())
    assert acc_rec >= 0.85 and acc_rec > acc_rand + 0.3, (acc_rec, acc_rand)
    assert margin_rec < margin_rand
    # deterministic given the seed
    again = attack.run(target, ids, None, dataclasses.replace(_ctx(), trained=state))
    assert torch.equal(rec.images, again.images)


def test_run_needs_the_trained_state_and_valid_identities() -> None:
    attack = PLGMI(PLGMIParams(**TINY))
    with pytest.raises(BenchError, match="train_generator"):
        attack.run(_target(), torch.tensor([0]), None, _ctx())
    with pytest.raises(BenchError, match="'generator'"):
        attack.run(_target(), torch.tensor([0]), None, _ctx(trained={"config": {}}))
    state = PLGMI(PLGMIParams(**(TINY | {"gan_iterations": 0}))).train_generator(_target(), _ctx())
    with pytest.raises(ConfigError, match="identities"):
        attack.run(_target(), torch.tensor([7]), None, _ctx(trained=state))
    with pytest.raises(ConfigError, match="public"):
        attack.train_generator(_target(), dataclasses.replace(_ctx(), public=None))


class _NaNTarget(nn.Module):
    num_classes = CLASSES

    def __init__(self, nan_after: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3, CLASSES)
        self.calls, self.nan_after = 0, nan_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.lin(x.mean(dim=(2, 3)))
        return out * float("nan") if self.calls > self.nan_after else out


def test_nan_raises_diverged_error() -> None:
    attack = PLGMI(PLGMIParams(**TINY))
    with pytest.raises(DivergedError, match="public images"):
        attack.train_generator(_NaNTarget(0), _ctx())
    with pytest.raises(DivergedError, match="inversion loss"):
        attack.train_generator(_NaNTarget(2), _ctx())  # two batches of public images, then NaN
