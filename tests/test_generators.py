"""Generator plugins: the DCGAN prior and the StyleGAN2-ADA pickle adapter."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from inversion_bench.attacks.generators.dcgan import DCGANGenerator, DCGANPlugin
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAGenerator, StyleGAN2ADAPlugin
from inversion_bench.data import LabeledImages, TensorFaces
from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.interfaces import Generator, PriorContext
from inversion_bench.registry import generators

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402


def _public(n: int = 24, resolution: int = 32) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (n, 3, resolution, resolution), generator=g, dtype=torch.uint8)
    faces = TensorFaces(u8, torch.arange(n) % 4, [f"p{i}" for i in range(4)])
    return LabeledImages(faces, torch.arange(n), torch.arange(n) % 4, "public")


def _ctx(public: LabeledImages | None = None, resolution: int = 32, weights=None,
         log_image=None) -> PriorContext:
    return PriorContext(public=public if public is not None else _public(resolution=resolution),
                        resolution=resolution, seed=3, device=torch.device("cpu"), weights=weights or {},
                        progress=False, log_image=log_image)


def _tiny_dcgan(**kw) -> DCGANPlugin:
    params = {"z_dim": 8, "g_width": 4, "d_width": 4, "steps": 2, "batch_size": 4, "grid_size": 4} | kw
    return DCGANPlugin(DCGANPlugin.Params(**params))


# ------------------------------------------------------------------------------------------ dcgan
def test_dcgan_registered() -> None:
    assert generators.get("dcgan") is DCGANPlugin
    assert generators.get("stylegan2-ada") is StyleGAN2ADAPlugin


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_dcgan_shapes(resolution: int) -> None:
    gen = _tiny_dcgan().build(resolution).eval()
    z = gen.sample_z(5, torch.Generator().manual_seed(0))
    assert z.shape == (5, 8)
    assert torch.equal(gen.map(z), z)
    with torch.no_grad():
        x = gen.synthesize(z)
    assert x.shape == (5, 3, resolution, resolution)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert gen.has_discriminator
    assert gen.discriminator_logits(x).shape == (5,)
    assert gen.discriminator_logits(torch.rand(2, 3, 24, 24)).shape == (2,)  # resized to the prior's size


def test_dcgan_bad_resolution() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        _tiny_dcgan().build(48)


def test_dcgan_constrain_clips() -> None:
    gen = _tiny_dcgan(latent_bound=1.5).build(16)
    w = torch.tensor([[-3.0, 0.2, 2.0, 1.0, 0, 0, 0, 0]])
    assert torch.equal(gen.constrain(w), w.clamp(-1.5, 1.5))
    assert torch.equal(_tiny_dcgan(latent_bound=None).build(16).constrain(w), w)


def test_dcgan_fit_save_load(tmp_path: Path) -> None:
    logged = {}
    ctx = _ctx(public=_public(n=12, resolution=16), resolution=16,
               log_image=lambda name, grid: logged.__setitem__(name, grid))
    plugin = _tiny_dcgan(flip=True)
    gen = plugin.fit(ctx)
    assert not gen.training
    assert "dcgan_samples" in logged and logged["dcgan_samples"].ndim == 3
    z = gen.sample_z(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = gen.synthesize(z)
        d_before = gen.discriminator_logits(before)
    assert torch.isfinite(before).all()
    plugin.save(gen, tmp_path / "prior")
    loaded = plugin.load(tmp_path / "prior", ctx)
    assert isinstance(loaded, DCGANGenerator) and not loaded.training
    with torch.no_grad():
        assert torch.allclose(loaded.synthesize(z), before)
        assert torch.allclose(loaded.discriminator_logits(before), d_before)
    # same seed, same prior
    again = _tiny_dcgan(flip=True).fit(ctx)
    with torch.no_grad():
        assert torch.equal(again.synthesize(z), before)


def test_dcgan_load_missing(tmp_path: Path) -> None:
    with pytest.raises(MissingResourceError, match="dcgan"):
        _tiny_dcgan().load(tmp_path / "nothing", _ctx())


def test_dcgan_resizes_public_images() -> None:
    ctx = _ctx(public=_public(n=8, resolution=32), resolution=16)
    gen = _tiny_dcgan(steps=1).fit(ctx)
    assert gen.synthesize(torch.zeros(1, 8)).shape[-1] == 16


# ---------------------------------------------------------------------------------- stylegan2-ada
@pytest.fixture()
def tiny_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump(tiny_stylegan.make_pickle_dict(), f)
    return path


def _sg(path: Path | str, **kw) -> StyleGAN2ADAPlugin:
    return StyleGAN2ADAPlugin(StyleGAN2ADAPlugin.Params(pickle=str(path), **kw))


def test_stylegan_required_weights() -> None:
    plugin = _sg("ffhq", code_dir="sg2code")
    assert set(plugin.required_weights()) == {"ffhq", "sg2code"}


def test_stylegan_adapter(tiny_pickle: Path) -> None:
    ctx = _ctx(weights={"ffhq": tiny_pickle})
    gen = _sg("ffhq").fit(ctx)
    assert isinstance(gen, StyleGAN2ADAGenerator)
    assert (gen.z_dim, gen.w_dim, gen.num_ws, gen.resolution) == (8, 6, 4, 16)
    z = gen.sample_z(3, torch.Generator().manual_seed(0))
    w = gen.map(z)
    assert w.shape == (3, 6)
    x = gen.synthesize(w)
    assert x.shape == (3, 3, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert gen.g.synthesis.last_kwargs == {"noise_mode": "const", "force_fp32": True}
    # one w broadcast to all layers == the explicit [N, num_ws, w_dim] form
    assert torch.allclose(x, gen.synthesize(w.unsqueeze(1).repeat(1, 4, 1)))
    with pytest.raises(ValueError, match="w must be"):
        gen.synthesize(torch.zeros(3, 2, 6))
    assert gen.has_discriminator
    logits = gen.discriminator_logits(x)
    assert logits.shape == (3,)
    lo, hi = gen.d.last_input_range
    assert lo >= -1 and hi <= 1 and lo < 0  # D sees [-1, 1] images


class _Loud(torch.nn.Module):
    """A synthesis network whose raw output leaves [-1, 1] (as a real one's often does)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False) -> torch.Tensor:
        return 3 * self.inner(ws, noise_mode=noise_mode, force_fp32=force_fp32)


def loud_stylegan(seed: int = 0) -> StyleGAN2ADAGenerator:
    """The tiny StyleGAN2-ADA network with a synthesis output in [-3, 3]."""
    nets = tiny_stylegan.make_pickle_dict(seed=seed)
    nets["G_ema"].synthesis = _Loud(nets["G_ema"].synthesis)
    return StyleGAN2ADAGenerator(nets["G_ema"], nets["D"]).eval()


def test_stylegan_unclipped() -> None:
    gen = loud_stylegan()
    w = gen.map(gen.sample_z(4, torch.Generator().manual_seed(0))).requires_grad_()
    raw = gen.synthesize_unclipped(w)
    expected = (gen.g.synthesis(w.unsqueeze(1).expand(-1, gen.num_ws, -1), noise_mode="const") + 1) / 2
    assert torch.allclose(raw, expected)
    out = (raw < 0) | (raw > 1)
    assert 0.1 < float(out.float().mean()) < 0.9  # the test is meaningful: many pixels out of range
    clipped = gen.synthesize(w)
    assert torch.equal(clipped, raw.clamp(0, 1))
    # the clamp zeroes the gradient of out-of-range pixels; the unclipped output keeps it
    (g_raw,) = torch.autograd.grad(raw[out].sum(), w)
    (g_clip,) = torch.autograd.grad(clipped[out].sum(), w)
    assert bool((g_clip == 0).all()) and float(g_raw.abs().sum()) > 0


def test_generator_unclipped_default() -> None:
    """A prior that does not override ``synthesize_unclipped`` (DCGAN, third-party plugins) gets ``synthesize``."""
    gen = _tiny_dcgan().build(16).eval()
    assert type(gen).synthesize_unclipped is Generator.synthesize_unclipped
    z = gen.sample_z(3, torch.Generator().manual_seed(0))
    assert torch.equal(gen.synthesize_unclipped(z), gen.synthesize(z))


def test_stylegan_truncation(tiny_pickle: Path) -> None:
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    gen0 = _sg(tiny_pickle, truncation_psi=0.0, truncation_cutoff=2).fit(_ctx())
    w_avg = gen0.g.mapping.w_avg
    ws = gen0.map_all(z)
    assert torch.allclose(ws[:, :2], w_avg.expand(5, 2, 6))  # layers < cutoff: all equal w_avg
    assert not torch.allclose(ws[:, 2:], w_avg.expand(5, 2, 6))  # layers >= cutoff: untruncated
    assert torch.allclose(gen0.map(z), w_avg.expand(5, 6))
    gen1 = _sg(tiny_pickle, truncation_psi=1.0).fit(_ctx())
    gen_half = _sg(tiny_pickle, truncation_psi=0.5, truncation_cutoff=None).fit(_ctx())
    w1 = gen1.map(z)
    assert torch.allclose(gen_half.map(z), w_avg + 0.5 * (w1 - w_avg), atol=1e-6)


def test_stylegan_without_discriminator(tmp_path: Path) -> None:
    path = tmp_path / "g_only.pkl"
    with open(path, "wb") as f:
        pickle.dump(tiny_stylegan.make_pickle_dict(with_d=False), f)
    gen = _sg(path).fit(_ctx())
    assert not gen.has_discriminator
    with pytest.raises(TypeError):
        gen.discriminator_logits(torch.rand(1, 3, 16, 16))
    assert not _sg(tiny_pickle_path := path, use_discriminator=False).fit(_ctx()).has_discriminator
    assert tiny_pickle_path.exists()


def test_stylegan_missing_pickle(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "ffhq.pkl"
    with pytest.raises(MissingResourceError) as err:
        _sg("ffhq").fit(_ctx(weights={"ffhq": missing}))
    assert str(missing) in str(err.value) and "weights" in str(err.value)
    with pytest.raises(MissingResourceError, match="nowhere.pkl"):
        _sg(tmp_path / "nowhere.pkl").fit(_ctx())


def test_stylegan_not_a_network_pickle(tmp_path: Path) -> None:
    path = tmp_path / "other.pkl"
    with open(path, "wb") as f:
        pickle.dump({"something": 1}, f)
    with pytest.raises(ConfigError, match="G_ema"):
        _sg(path).fit(_ctx())


def test_stylegan_code_dir_on_path(tiny_pickle: Path, tmp_path: Path) -> None:
    code = tmp_path / "sg2"
    code.mkdir()
    try:
        _sg("ffhq", code_dir="code").fit(_ctx(weights={"ffhq": tiny_pickle, "code": code}))
        assert str(code.resolve()) in sys.path
    finally:
        if str(code.resolve()) in sys.path:
            sys.path.remove(str(code.resolve()))
    with pytest.raises(MissingResourceError, match="code"):
        _sg("ffhq", code_dir=str(tmp_path / "no_code")).fit(_ctx(weights={"ffhq": tiny_pickle}))


def test_stylegan_save_load(tiny_pickle: Path, tmp_path: Path) -> None:
    ctx = _ctx(weights={"ffhq": tiny_pickle})
    plugin = _sg("ffhq")
    gen = plugin.fit(ctx)
    plugin.save(gen, tmp_path / "stored")
    files = list((tmp_path / "stored").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    assert len(files[0].read_bytes()) < 1000
    loaded = plugin.load(tmp_path / "stored", ctx)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded.synthesize(loaded.map(z)), gen.synthesize(gen.map(z)))
    with open(tiny_pickle, "wb") as f:  # a different network at the same path
        pickle.dump(tiny_stylegan.make_pickle_dict(seed=1), f)
    with pytest.raises(ConfigError, match="changed"):
        plugin.load(tmp_path / "stored", ctx)
