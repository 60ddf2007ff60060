"""Diff-MI: the noise schedule, guidance and solver steps against hand values; the UNet; the attack end to
end on PLG-MI's tiny colour target (beats its own no-optimisation baseline); the generator product is
fitted once per target and reused from the store."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_suite
from test_plg_mi import CLASSES, RES, _ctx, _public, _target

from inversion_bench.attacks.common.diff_mi_train import dpm_solver_x0s, target_views
from inversion_bench.attacks.common.diffusion import (
    DiscreteVP,
    alphas_cumprod,
    attack_timestep,
    clip_to_running_norm,
    ddim_parameters,
    ddim_update,
    dpmpp_first_update,
    dpmpp_second_update,
    drop_labels,
    eps_mse,
    guided_eps,
    l2_pgd_step,
    linear_betas,
    p_reg_loss,
    q_sample,
    time_uniform_steps,
    topk_loss,
)
from inversion_bench.attacks.diff_mi import DiffMI, DiffMIParams, gaussian_blur
from inversion_bench.attacks.generators.diffusion_unet import FINETUNE_LAYERS, ConditionalUNet, timestep_embedding
from inversion_bench.errors import BenchError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"top_n": 4, "width": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
        "num_heads": 1, "pretrain_iterations": 10, "pretrain_batch_size": 8, "ema_rate": 0.9, "p_reg_top_k": 4,
        "k": 2, "finetune_epochs": 2, "finetune_solver_steps": 4, "num_steps": 10, "samples_per_target": 3,
        "aug_times": 2, "pgd_iterations": 3}
BASELINE = {"num_steps": 0, "pgd_iterations": 0, "ddim_step": 1000}  # guided DDIM samples of the fine-tuned model


# --------------------------------------------------------------------------------------------
# noise schedule
# --------------------------------------------------------------------------------------------
def test_linear_schedule_hand_values() -> None:
    betas = linear_betas()
    # the reference: np.linspace(1e-4, 2e-2, 1000) (3_attack/utils/diffusion.py; guided-diffusion "linear")
    step = (0.02 - 1e-4) / 999
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[1].item() == pytest.approx(1e-4 + step)
    assert betas[999].item() == pytest.approx(0.02) and betas[500].item() == pytest.approx(1e-4 + 500 * step)
    abar = alphas_cumprod(betas)
    assert abar[0].item() == pytest.approx(1 - 1e-4)
    assert abar[1].item() == pytest.approx((1 - 1e-4) * (1 - 1e-4 - step))
    assert abar[2].item() == pytest.approx((1 - 1e-4) * (1 - 1e-4 - step) * (1 - 1e-4 - 2 * step))
    assert abar[999].item() == pytest.approx(4.035e-5, rel=1e-3)  # the well-known end of the linear schedule
    # guided-diffusion scales both ends by 1000 / steps
    assert linear_betas(500)[[0, -1]].tolist() == pytest.approx([2e-4, 0.04])


def test_forward_noising_and_training_loss_by_hand() -> None:
    x0, noise = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    assert q_sample(x0, 0.36, noise).item() == pytest.approx(0.6 + 0.8 * 2)  # sqrt(.36) x0 + sqrt(.64) eps
    per_sample = q_sample(torch.ones(2, 1, 1, 1), torch.tensor([0.36, 0.64]), torch.zeros(2, 1, 1, 1))
    assert per_sample.flatten().tolist() == pytest.approx([0.6, 0.8])
    pred = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    assert eps_mse(pred, torch.zeros_like(pred)).tolist() == pytest.approx([2.5, 0.0])
    y = torch.tensor([0, 3])
    assert drop_labels(y, 4, True).tolist() == [4, 4] and drop_labels(y, 4, False).tolist() == [0, 3]


def test_discrete_vp_schedule_of_dpm_solver() -> None:
    betas = linear_betas()
    vp = DiscreteVP(betas)
    abar = alphas_cumprod(betas)
    # on the grid t_n = n / N: alpha = sqrt(abar_n); between grid points log alpha is linear
    assert vp.alpha(1.0) == pytest.approx(math.sqrt(abar[999].item()))
    assert vp.alpha(1 / 1000) == pytest.approx(math.sqrt(abar[0].item()))
    mid = 0.5 * (0.5 * math.log(abar[499].item()) + 0.5 * math.log(abar[500].item()))
    assert vp.log_alpha(500.5 / 1000) == pytest.approx(mid)
    assert vp.alpha(0.3) ** 2 + vp.sigma(0.3) ** 2 == pytest.approx(1.0)
    assert vp.lam(0.3) == pytest.approx(math.log(vp.alpha(0.3) / vp.sigma(0.3)))
    assert vp.model_time(1.0) == pytest.approx(999.0) and vp.model_time(1 / 1000) == pytest.approx(0.0)
    assert time_uniform_steps(2, 1000) == pytest.approx([1.0, 0.5005, 0.001])


# --------------------------------------------------------------------------------------------
# guidance and the reconstruction step
# --------------------------------------------------------------------------------------------
def test_classifier_free_guidance_hand_values() -> None:
    eps_c, eps_u = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    # w eps_c - (w - 1) eps_u with w = 3: 3 - 1, -6 - 2
    assert guided_eps(eps_c, eps_u, 3.0).tolist() == pytest.approx([2.0, -8.0])
    assert torch.equal(guided_eps(eps_c, eps_u, 1.0), eps_c)
    # DPM-Solver's form eps_u + s (eps_c - eps_u) is the same
    assert guided_eps(eps_c, eps_u, 3.0).tolist() == pytest.approx((eps_u + 3 * (eps_c - eps_u)).tolist())


def test_attack_time_schedule_hand_values() -> None:
    # ((S - i) / 1.5 + (S - i) / 3 cos(3 i / (10 pi))) / S * 800 + 200 with S = 30
    assert attack_timestep(0, 30, 0) == 1000  # (20 + 10) / 30 * 800 + 200
    assert attack_timestep(0, 30, 30) == 1000 and attack_timestep(0, 30, -50) == 950  # clipped to [1, 1000]
    assert attack_timestep(15, 30, 0) == 485  # (10 + 5 cos(1.4324)) / 30 * 800 + 200 = 485.06
    assert attack_timestep(29, 30, 0) == 209  # (0.6667 + cos(2.7693) / 3) / 30 * 800 + 200 = 209.50
    assert attack_timestep(29, 30, 50) == 259


def test_gradient_clip_running_norm_by_hand() -> None:
    assert clip_to_running_norm(2.0, None) == 2.0
    assert clip_to_running_norm(4.0, 2.0) == 3.0  # 0.5 * 2 + 0.5 * 4


def test_topk_and_p_reg_losses_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [4.0, 1.0, 1.5, 2.0]])
    y = torch.tensor([1, 0])
    # -mean(3, 4) + mean of the two largest other logits (2, 1 and 2, 1.5)
    assert topk_loss(logits, y, 2).item() == pytest.approx(-3.5 + 6.5 / 4)
    assert topk_loss(logits, y, 0).item() == pytest.approx(-3.5)
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    p_reg = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    # rows p_reg[2], p_reg[1]: squared differences 1, 0, 4, 9
    assert p_reg_loss(feats, torch.tensor([2, 1]), p_reg).item() == pytest.approx(3.5)


def test_ddim_parameters_and_step_by_hand() -> None:
    abar = torch.tensor([0.9, 0.8, 0.6, 0.5], dtype=torch.float64)
    sigmas, alphas, prev, c = ddim_parameters(abar, num_ddim=2, eta=1.0)
    # stride 2, indices 0 + 1 and 2 + 1
    assert c == 2 and alphas.tolist() == [0.8, 0.5] and prev.tolist() == [0.9, 0.8]
    expected = [math.sqrt(0.1 / 0.2 * (1 - 0.8 / 0.9)), math.sqrt(0.2 / 0.5 * (1 - 0.5 / 0.8))]
    assert sigmas.tolist() == pytest.approx(expected)
    x, eps = torch.tensor([1.0]), torch.tensor([0.5])
    # x0 = (1 - 0.6 * 0.5) / 0.8 = 0.875; 0.9 * 0.875 + sqrt(0.19) * 0.5 (eta 0)
    assert ddim_update(x, eps, 0.64, 0.81, 0.0, torch.zeros(1)).item() == pytest.approx(0.7875 + math.sqrt(0.19) * 0.5)
    # with sigma: the noise term and a smaller direction term
    got = ddim_update(x, eps, 0.64, 0.81, 0.3, torch.ones(1)).item()
    assert got == pytest.approx(0.7875 + math.sqrt(0.19 - 0.09) * 0.5 + 0.3)


def test_dpm_solver_updates_are_ddim_and_its_second_order_correction() -> None:
    vp = DiscreteVP(linear_betas())
    x, x0 = torch.tensor([0.3, -1.2]), torch.tensor([0.5, -0.5])
    s, t = 0.8, 0.6
    # order 1 is DDIM: x_t = alpha_t x0 + sigma_t eps with eps = (x - alpha_s x0) / sigma_s
    eps = (x - vp.alpha(s) * x0) / vp.sigma(s)
    assert torch.allclose(dpmpp_first_update(x, x0, vp, s, t), vp.alpha(t) * x0 + vp.sigma(t) * eps, atol=1e-6)
    # order 2 with equal data predictions adds nothing to order 1
    same = dpmpp_second_update(x, x0, x0, vp, 0.9, s, t)
    assert torch.allclose(same, dpmpp_first_update(x, x0, vp, s, t), atol=1e-6)
    # and otherwise adds -alpha_t expm1(-h) / 2 * (x0_0 - x0_1) / r
    x0_old = torch.tensor([0.0, 0.0])
    h = vp.lam(t) - vp.lam(s)
    r = (vp.lam(s) - vp.lam(0.9)) / h
    corr = -0.5 * vp.alpha(t) * math.expm1(-h) * (x0 - x0_old) / r
    assert torch.allclose(dpmpp_second_update(x, x0_old, x0, vp, 0.9, s, t),
                          dpmpp_first_update(x, x0, vp, s, t) + corr, atol=1e-6)


def test_pgd_step_by_hand() -> None:
    x = torch.full((1, 2, 1, 1), 0.5)
    grad = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    # step 0.1 along g / |g| = (0.6, 0.8)
    assert l2_pgd_step(x, grad, x, 0.1, 1.0).flatten().tolist() == pytest.approx([0.56, 0.58])
    # projected back onto the L2 ball of radius 0.05 around the origin
    assert l2_pgd_step(x, grad, x, 0.1, 0.05).flatten().tolist() == pytest.approx([0.53, 0.54])


def test_gaussian_blur_keeps_constants_and_sums_to_one() -> None:
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 7, 3.0), flat, atol=1e-6)
    dot = torch.zeros(1, 1, 9, 9)
    dot[0, 0, 4, 4] = 1
    assert gaussian_blur(dot, 7, 3.0).sum().item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------------------------
# the UNet and the fine-tuning sampler
# --------------------------------------------------------------------------------------------
def test_unet_shapes_null_class_and_finetuned_layers() -> None:
    unet = ConditionalUNet(CLASSES, RES, width=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                           num_heads=1)
    x = torch.randn(2, 3, RES, RES)
    out = unet(x, torch.tensor([3.0, 900.0]), torch.tensor([0, CLASSES]))  # class CLASSES: the null class
    assert out.shape == x.shape and float(out.detach().abs().max()) == 0.0  # zero-initialised output convolution
    assert unet.label_emb.num_embeddings == CLASSES + 1
    names = [n for n, p in unet.named_parameters() if any(p is q for q in unet.finetune_parameters())]
    assert names == ["label_emb.weight", "middle_block.0.in_layers.2.weight", "middle_block.0.in_layers.2.bias",
                     "middle_block.0.out_layers.3.weight", "middle_block.0.out_layers.3.bias",
                     "middle_block.1.proj_out.weight", "middle_block.1.proj_out.bias",
                     "middle_block.2.in_layers.2.weight", "middle_block.2.in_layers.2.bias",
                     "middle_block.2.out_layers.3.weight", "middle_block.2.out_layers.3.bias"]
    assert len(FINETUNE_LAYERS) == 6
    emb = timestep_embedding(torch.tensor([0.0, 2.0]), 4)
    # frequencies 10000^(-i/2), i = 0, 1: [cos(t), cos(t/100), sin(t), sin(t/100)]
    assert emb[1].tolist() == pytest.approx([math.cos(2), math.cos(0.02), math.sin(2), math.sin(0.02)])
    with pytest.raises(ConfigError, match="divisible"):
        ConditionalUNet(CLASSES, 18, width=8, channel_mult=(1, 2, 2))


def test_dpm_solver_returns_the_references_prediction_list_with_gradients() -> None:
    torch.manual_seed(0)
    unet = ConditionalUNet(CLASSES, RES, width=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                           num_heads=1)
    vp = DiscreteVP(linear_betas())
    y = torch.tensor([1, 2])
    assert len(dpm_solver_x0s(unet, torch.randn(2, 3, RES, RES), y, 3.0, 10, vp)) == 8  # steps 3..9 and the sample
    outs = dpm_solver_x0s(unet, torch.randn(2, 3, RES, RES), y, 3.0, 4, vp)
    assert len(outs) == 2
    outs[-1].sum().backward()
    assert unet.label_emb.weight.grad is not None


# --------------------------------------------------------------------------------------------
# the plugin
# --------------------------------------------------------------------------------------------
def test_registered_with_reference_defaults() -> None:
    assert DiffMI.name == "diff-mi" and DiffMI.access == "white-box" and DiffMI.trains_generator
    p = DiffMIParams()
    assert (p.top_n, p.width, p.channel_mult, p.num_res_blocks, p.attention_resolutions, p.num_heads) == (
        30, 128, [1, 2, 3, 4], 3, [16, 8], 4)
    assert (p.pretrain_iterations, p.pretrain_batch_size, p.pretrain_lr, p.ema_rate, p.class_dropout) == (
        50000, 150, 1e-4, 0.9999, 0.1)
    assert (p.finetune_lr, p.finetune_batch_size, p.finetune_epochs, p.threshold, p.finetune_guidance,
            p.finetune_solver_steps, p.finetune_aug_times, p.k, p.p_reg_weight) == (2e-4, 4, 100, 0.99, 3.0, 10, 2, 20,
                                                                                   1.0)
    assert (p.num_steps, p.lr, p.w, p.ddim_step, p.aug_times, p.grad_clip, p.t_jitter, p.samples_per_target) == (
        30, 1.0, 3.0, 100, 4, 1.25, 50, 5)
    assert (p.pgd_iterations, p.pgd_eps, p.pgd_step_size) == (10, 0.5, 0.1)
    with pytest.raises(ValueError, match="multiple of 10"):
        DiffMIParams(ddim_step=105)


def test_generator_spec_holds_only_the_diffusion_model_settings() -> None:
    spec = DiffMI(DiffMIParams(**TINY)).generator_spec()
    assert spec == DiffMI(DiffMIParams(**(TINY | BASELINE | {"samples_per_target": 1, "w": 2.0}))).generator_spec()
    assert spec != DiffMI(DiffMIParams(**(TINY | {"finetune_epochs": 3}))).generator_spec()
    assert "num_steps" not in spec and spec["pretrain_iterations"] == 10


def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_end_to_end_beats_its_no_optimisation_baseline() -> None:
    """The issue's acceptance: the reconstruction (diffusion + target steps, DDIM, PGD) is classified as its
    identity by the target far more often than guided samples of the same fine-tuned model."""
    target = _target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    attack = DiffMI(DiffMIParams(**TINY))
    state = _round_trip(attack.train_generator(target, _ctx()))
    assert state["config"]["num_classes"] == CLASSES and state["config"]["resolution"] == RES
    assert state["p_reg"].shape == (CLASSES, target.feature_dim)
    info = state["info"]
    assert info["pseudo_labelled"] == CLASSES * 4 and info["pretrain_iterations"] == 10
    assert 1 <= info["finetune_epochs_run"] <= 2 and info["topk_used"] == 2
    ids = torch.tensor([0, 2, 3])
    ctx = dataclasses.replace(_ctx(), trained=state)
    rec = attack.run(target, ids, None, ctx)
    assert rec.images.shape == (9, 3, RES, RES) and rec.labels.tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert len(rec.trace["confidence"]) == 10 and rec.info["diffusion"]["pseudo_labelled"] == CLASSES * 4
    assert rec.info["diffusion_finetune_epochs_run"] == info["finetune_epochs_run"]  # kept by the record as a scalar
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in target.parameters())
    base = DiffMI(DiffMIParams(**(TINY | BASELINE))).run(target, ids, None, ctx)
    assert base.trace["confidence"] == []
    with torch.no_grad():
        acc = float((target(rec.images).argmax(1) == rec.labels).float().mean())
        acc_base = float((target(base.images).argmax(1) == base.labels).float().mean())
    assert acc >= 0.75 and acc >= acc_base + 0.3, (acc, acc_base)
    assert rec.info["mean_confidence"] > base.info["mean_confidence"]
    again = attack.run(target, ids, None, ctx)
    assert torch.equal(rec.images, again.images)  # deterministic given the seed


def test_run_needs_the_trained_state_and_valid_identities() -> None:
    attack = DiffMI(DiffMIParams(**TINY))
    with pytest.raises(BenchError, match="train_generator"):
        attack.run(_target(), torch.tensor([0]), None, _ctx())
    with pytest.raises(BenchError, match="'unet'"):
        attack.run(_target(), torch.tensor([0]), None, _ctx(trained={"config": {}}))
    state = DiffMI(DiffMIParams(**(TINY | {"pretrain_iterations": 0, "finetune_epochs": 0}))).train_generator(
        _target(), _ctx())
    with pytest.raises(ConfigError, match="identities"):
        attack.run(_target(), torch.tensor([7]), None, _ctx(trained=state))
    with pytest.raises(ConfigError, match="public"):
        attack.train_generator(_target(), dataclasses.replace(_ctx(), public=None))
    assert len(_public()) == 24


def test_generator_is_fitted_once_per_target_and_reused_from_the_store(tmp_path: Path) -> None:
    """A bench run fits the diffusion model once (``timings.generator_s``); a second run with an entry that
    differs only in its reconstruction settings reuses the stored model instead of refitting it."""
    import yaml

    from inversion_bench.cli import main

    small = TINY | {"samples_per_target": 1, "num_steps": 3, "pgd_iterations": 1, "pretrain_iterations": 10,
                    "finetune_epochs": 1}
    entry = {"id": "diff", "name": "diff-mi", "params": small}
    data = tiny_suite(attacks=[entry], defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
                      metrics=["attack_accuracy"])
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1, "workers": 1}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["run", str(path), "--no-tracking", "--no-figures"]
    assert main(args) == 0
    run = tmp_path / "runs" / "tiny"
    stored = list((run / "store" / "generators").iterdir())
    assert len(stored) == 1
    stamp = {p: p.stat().st_mtime_ns for p in stored[0].rglob("*") if p.is_file()}
    first = json.loads((run / "records" / "hard__diff__seed0.json").read_text())
    assert first["status"] == "ok" and first["timings"]["generator_s"] > 0
    data["attacks"].append({"id": "diff-base", "name": "diff-mi", "params": small | BASELINE})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(args) == 0
    second = json.loads((run / "records" / "hard__diff-base__seed0.json").read_text())
    assert second["status"] == "ok" and second["timings"]["generator_s"] == first["timings"]["generator_s"]
    assert list((run / "store" / "generators").iterdir()) == stored
    assert {p: p.stat().st_mtime_ns for p in stored[0].rglob("*") if p.is_file()} == stamp  # not refitted


def test_target_views_clamp_after_augmenting_so_out_of_range_pixels_keep_their_gradient() -> None:
    """The reference's ``aug(x).clamp(-1, 1)``: a pixel outside [-1, 1] reaches the target through the blurred
    neighbours that are in range; clamping before the blur (version 1) gave it no gradient."""
    x = torch.zeros(1, 3, 8, 8)
    x[0, :, 4, 4] = 3.0  # 2.0 on the [0, 1] scale
    x.requires_grad_(True)
    blur = lambda v, _g: gaussian_blur(v, 3, 1.0)  # noqa: E731
    views = target_views(x, blur, 2, torch.Generator().manual_seed(0))
    want = gaussian_blur((x.detach() + 1) / 2, 3, 1.0).clamp(0, 1)
    assert views.shape == (2, 3, 8, 8) and torch.equal(views, torch.cat([want, want]))
    views.sum().backward()
    assert float(x.grad[0, 0, 4, 4]) > 0.0
