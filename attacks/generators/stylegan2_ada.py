"""Adapter for official StyleGAN2-ADA pickles (generator plugin ``stylegan2-ada``).

Loads ``G_ema`` (and ``D`` when present) from a network pickle of the official
``stylegan2-ada-pytorch`` code (Karras et al., NeurIPS 2020), as Plug & Play Attacks (Struppek et
al., ICML 2022) do with the FFHQ, MetFaces and AFHQ models. Latents are mapped with truncation
(psi 0.5, cutoff 8 in the PPA configs ``configs/attacking/*.yaml``); the attack optimises one
``w`` vector per image, broadcast to all ``num_ws`` synthesis layers (``single_w: true``), and
images are synthesised with constant noise (``noise_mode='const'``, ``force_fp32=True``).

Unpickling executes code: only the file configured in the suite's ``weights:`` section (or a
literal path given as ``pickle``) is ever unpickled. The official code (``dnnlib``,
``torch_utils``) must be importable; ``code_dir`` puts its folder on ``sys.path`` first, and
:func:`code_dir_imports` makes the pickle import that folder's own top-level packages (its
``training``, ``metrics``, ...) even when modules of the same names were imported from elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import inspect
import json
import logging
import math
import pickle
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.attacks.common.layered import broadcast_ws, run_stylegan_blocks, stylegan_blocks
from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.interfaces import Generator, GeneratorPlugin, PriorContext
from inversion_bench.registry import PluginParams, generators

log = logging.getLogger(__name__)

_META_FILE = "stylegan2_ada.json"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Never evicted, even when code_dir holds a module of the same name: this package, and the standard
# library and interpreter built-ins (re-importing those mid-process would break their other users).
_PROTECTED = frozenset({"inversion_bench", *sys.builtin_module_names, *getattr(sys, "stdlib_module_names", ())})


def top_level_names(code_dir: str | Path) -> set[str]:
    """The top-level modules ``code_dir`` provides: regular packages (folders with an ``__init__``)
    and modules (``.py``, bytecode or extension files); dunder names (``__main__.py``) are left out."""
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    names: set[str] = set()
    for entry in Path(code_dir).iterdir():
        if entry.is_dir():
            if any((entry / f"__init__{s}").is_file() for s in suffixes):
                names.add(entry.name)
            continue
        suffix = next((s for s in suffixes if entry.name.endswith(s)), None)
        if suffix is not None:
            names.add(entry.name[: -len(suffix)])
    return {n for n in names if n.isidentifier() and not n.startswith("__")}


def _module_location(module: Any) -> str:
    """Where a module was imported from: its file, its namespace folders, or 'built-in'."""
    file = getattr(module, "__file__", None)
    if file:
        return str(file)
    path = list(getattr(module, "__path__", None) or [])
    return ", ".join(map(str, path)) if path else "built-in"


def _from_folder(module: Any, folder: Path) -> bool:
    """Whether ``module`` was imported from a file inside ``folder`` (a resolved path)."""
    file = getattr(module, "__file__", None)
    if not file:
        return False
    try:
        return Path(file).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def shadowed_modules(code_dir: str | Path, modules: Mapping[str, Any] | None = None, *,
                     protected: bool = False) -> dict[str, str]:
    """Top-level modules that ``code_dir`` provides but that ``modules`` (default ``sys.modules``) holds
    from another location: name -> where the loaded one came from.

    Names never evicted (``inversion_bench``, the standard library, built-ins) are left out, or with
    ``protected=True`` they are the only ones given."""
    modules = sys.modules if modules is None else modules
    folder = Path(code_dir).resolve()
    out: dict[str, str] = {}
    for name in sorted(top_level_names(folder)):
        module = modules.get(name)
        if module is not None and (name in _PROTECTED) == protected and not _from_folder(module, folder):
            out[name] = _module_location(module)
    return out


def _evict(name: str, modules: MutableMapping[str, Any]) -> None:
    """Drops ``name`` and its submodules from ``modules``."""
    for key in [k for k in list(modules) if k == name or k.startswith(name + ".")]:
        modules.pop(key, None)


@contextmanager
def code_dir_imports(code_dir: str | Path) -> Iterator[dict[str, str]]:
    """Imports inside the block come from ``code_dir`` first (a third-party code folder, e.g. the
    official stylegan2-ada-pytorch code with its own top-level ``training``, ``metrics``, ``dnnlib``).

    Puts ``code_dir`` first on ``sys.path`` (it stays there afterwards: objects unpickled from its
    code may import more of it later) and evicts from ``sys.modules`` every top-level module that
    ``code_dir`` provides but that was imported from another location (with its submodules), so the
    code_dir's own is imported instead of the other being silently reused. Modules already imported
    from ``code_dir``, ``inversion_bench.*``, the standard library and built-ins are never touched
    (a code_dir module shadowing one of those is logged as a warning and not used).
    Yields the evicted names -> where they had been imported from (logged at INFO).
    """
    folder = Path(code_dir).resolve()
    code = str(folder)
    while code in sys.path:
        sys.path.remove(code)
    sys.path.insert(0, code)
    evicted = shadowed_modules(folder)
    for name in evicted:
        _evict(name, sys.modules)
    if evicted:
        log.info("stylegan2-ada: importing %s from %s, not the modules already loaded (%s)",
                 ", ".join(evicted), code, "; ".join(f"{n} from {loc}" for n, loc in evicted.items()))
    for name, loc in shadowed_modules(folder, protected=True).items():
        log.warning("stylegan2-ada: %s in %s is not used: %s is already imported from %s", name, code, name, loc)
    importlib.invalidate_caches()
    yield evicted


def _resolve(ref: str, weights: Mapping[str, Path], what: str, *, folder: bool) -> Path:
    path = Path(weights[ref]) if ref in weights else Path(ref).expanduser()
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        where = f" (weights.{ref} in the suite)" if ref in weights else ""
        raise MissingResourceError(
            f"stylegan2-ada: {what} {kind} {path}{where} not found; put the {what} there or change "
            "the path in the suite's weights: section")
    return path


class StyleGAN2ADAGenerator(Generator):
    """A StyleGAN2-ADA ``G_ema`` (and optional ``D``) as an image prior.

    ``map(z)`` gives one truncated ``w`` per image ([N, w_dim], the first layer's w, as PPA's
    ``single_w``); ``synthesize`` accepts [N, w_dim] (broadcast to all layers) or
    [N, num_ws, w_dim] and returns images in [0, 1]; ``synthesize_unclipped`` the same images
    before the clamp.

    Args:
        g: the generator module (``mapping``, ``synthesis``, ``num_ws``, ``w_dim``, ``z_dim``,
            ``c_dim``, ``img_resolution``).
        d: the discriminator (``forward(img, c)``, images in [-1, 1]) or None.
        truncation_psi, truncation_cutoff: truncation of the mapping.
        noise_mode: synthesis noise mode ('const' for deterministic images).
        force_fp32: pass ``force_fp32=True`` to the synthesis when it accepts it.
    """

    def __init__(self, g: nn.Module, d: nn.Module | None, *, truncation_psi: float = 0.5,
                 truncation_cutoff: int | None = 8, noise_mode: str = "const",
                 force_fp32: bool = True) -> None:
        super().__init__()
        if int(getattr(g, "c_dim", 0)) > 0:
            raise ConfigError("stylegan2-ada: conditional generators (c_dim > 0) are not supported")
        self.g = g
        self.d = d
        self.z_dim = int(g.z_dim)
        self.w_dim = int(g.w_dim)
        self.num_ws = int(g.num_ws)
        self.resolution = int(g.img_resolution)
        self.truncation_psi = truncation_psi
        self.truncation_cutoff = truncation_cutoff
        self.noise_mode = noise_mode
        self._synth_kwargs: dict[str, Any] = {"noise_mode": noise_mode}
        if force_fp32 and _accepts(g.synthesis, "force_fp32"):
            self._synth_kwargs["force_fp32"] = True

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def map_all(self, z: Tensor) -> Tensor:
        """[N, num_ws, w_dim] truncated w of every layer."""
        return self.g.mapping(z, None, truncation_psi=self.truncation_psi,
                              truncation_cutoff=self.truncation_cutoff)

    def map(self, z: Tensor) -> Tensor:
        return self.map_all(z)[:, 0]

    def synthesize(self, w: Tensor) -> Tensor:
        return self.synthesize_unclipped(w).clamp(0, 1)

    def synthesize_unclipped(self, w: Tensor) -> Tensor:
        """The raw synthesis output mapped linearly from [-1, 1] to [0, 1], not clamped (PPA's
        ``clip: false``; a real network's output often leaves [-1, 1])."""
        if w.ndim == 2:
            w = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        elif w.ndim != 3 or w.shape[1] != self.num_ws:
            raise ValueError(f"stylegan2-ada: w must be [N, {self.w_dim}] or [N, {self.num_ws}, "
                             f"{self.w_dim}], got {tuple(w.shape)}")
        img = self.g.synthesis(w, **self._synth_kwargs)
        return (img.float() + 1) / 2

    def discriminator_logits(self, images: Tensor) -> Tensor:
        if self.d is None:
            raise TypeError("stylegan2-ada: the pickle holds no discriminator 'D'")
        r = self.resolution
        if images.shape[-1] != r or images.shape[-2] != r:
            images = F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False)
        return grouped_call(self.d, images * 2 - 1, mbstd_group_size(self.d)).float().flatten()

    @property
    def has_discriminator(self) -> bool:
        return self.d is not None

    # The blocks b4, b8, ... one by one (IF-GMI; inversion_bench.attacks.common.layered.LayeredSynthesis).
    @property
    def num_layers(self) -> int:
        return len(stylegan_blocks(self.g.synthesis))

    def features(self, w: Tensor, upto: int, start: int = 0, inputs: Tensor | None = None) -> Tensor:
        ws = broadcast_ws(w, self.num_ws, self.w_dim)
        return run_stylegan_blocks(self.g.synthesis, ws, start, upto, inputs, self._synth_kwargs)[0]

    def synthesize_from(self, layer: int, features: Tensor | None, w: Tensor) -> Tensor:
        ws = broadcast_ws(w, self.num_ws, self.w_dim)
        img = run_stylegan_blocks(self.g.synthesis, ws, layer, self.num_layers, features, self._synth_kwargs)[1]
        return (img.float() + 1) / 2


DEFAULT_MBSTD_GROUP = 4
"""The official ``mbstd_group_size`` (``training/networks.py: DiscriminatorEpilogue``), used when the
discriminator's group size cannot be read."""


def mbstd_group_size(d: nn.Module) -> int | None:
    """The batch grouping of a discriminator's minibatch-standard-deviation layer(s).

    The official ``MinibatchStdLayer`` (``D.b4.mbstd``) computes ``G = min(group_size, N)`` and reshapes
    the batch to ``[G, -1, ...]``: it accepts a batch of N images only when ``N <= group_size`` or
    ``N % group_size == 0``. Reads ``group_size`` of every such layer (by class name) and any
    ``mbstd_group_size`` attribute; several sizes give their least common multiple. ``None``: no layer
    constrains the batch (its ``group_size`` is None, i.e. the whole batch is one group). Without any
    such layer: :data:`DEFAULT_MBSTD_GROUP` (harmless for a discriminator that scores images one by one).
    """
    sizes: set[int] = set()
    found = False
    for m in d.modules():
        if "minibatchstd" in type(m).__name__.lower():
            found = True
            size = getattr(m, "group_size", DEFAULT_MBSTD_GROUP)
        elif isinstance(getattr(m, "mbstd_group_size", None), int):
            found = True
            size = m.mbstd_group_size
        else:
            continue
        if size is not None and int(size) > 1:
            sizes.add(int(size))
    if not found:
        return DEFAULT_MBSTD_GROUP
    return math.lcm(*sizes) if sizes else None


def grouped_call(d: nn.Module, x: Tensor, group: int | None) -> Tensor:
    """``d(x, None)`` in batches the minibatch-std layer accepts (see :func:`mbstd_group_size`).

    A batch the layer accepts (``N <= group`` or ``N % group == 0``) is one call, exactly as before. Otherwise
    the first ``N - N % group`` rows are one call (a multiple of the group, grouped by the layer as
    usual) and the remaining ``N % group`` rows are padded to a full group with the real rows right
    before them (``x[N - group:]``), whose outputs are dropped. Every row's minibatch statistic is thus
    taken over ``group`` distinct images of the batch, as during training; padding with copies of the
    tail rows would shrink their group's standard deviation instead. The padding rows take part in the
    tail rows' statistic (and receive its gradient), as group mates always do; gradients flow through
    both calls.
    """
    n = x.shape[0]
    if group is None or n <= group or n % group == 0:
        return d(x, None)
    head = n - n % group
    tail = d(x[n - group:], None)[group - n % group:]
    return torch.cat([d(x[:head], None), tail])


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@generators.register("stylegan2-ada")
class StyleGAN2ADAPlugin(GeneratorPlugin):
    """Official StyleGAN2-ADA pickle (G_ema, D) with truncation; nothing is trained.

    Version 2: the adapter offers its output before the final clamp (``synthesize_unclipped``), which
    PPA feeds the target by default as the reference does (``clip: false``); PPA results on this
    prior changed, so every product keyed on it is recomputed.
    """

    version = "2"

    class Params(PluginParams):
        pickle: str = Field(..., description="network pickle: a name in the suite's weights: section "
                                             "or a path")
        code_dir: str | None = Field(None, description="folder of the official stylegan2-ada-pytorch code "
                                     "(dnnlib, torch_utils): a weights: name or a path")
        truncation_psi: float = Field(0.5, ge=0.0, le=1.0, description="truncation psi (PPA: 0.5)")
        truncation_cutoff: int | None = Field(8, ge=0, description="layers truncated (PPA: 8; None: all)")
        noise_mode: str = Field("const", description="synthesis noise mode")
        force_fp32: bool = Field(True, description="synthesise in float32")
        use_discriminator: bool = Field(True, description="load D too when the pickle has it")

    def required_weights(self) -> dict[str, str]:
        need = {self.params.pickle: "StyleGAN2-ADA network pickle (official stylegan2-ada-pytorch format)"}
        if self.params.code_dir is not None:
            need[self.params.code_dir] = ("folder of the official stylegan2-ada-pytorch code "
                                          "(dnnlib, torch_utils)")
        return need

    def pickle_path(self, weights: Mapping[str, Path]) -> Path:
        return _resolve(self.params.pickle, weights, "network pickle", folder=False)

    def _unpickle(self, ctx: PriorContext) -> tuple[StyleGAN2ADAGenerator, str]:
        p = self.params
        path = self.pickle_path(ctx.weights)
        code = None
        if p.code_dir is not None:
            code = _resolve(p.code_dir, ctx.weights, "stylegan2-ada-pytorch code", folder=True).resolve()
        sha = file_sha256(path)
        try:
            with code_dir_imports(code) if code is not None else nullcontext(), open(path, "rb") as f:
                data = pickle.load(f)  # noqa: S301 - only the configured, trusted network pickle
        except (ModuleNotFoundError, ImportError) as exc:
            raise MissingResourceError(
                f"stylegan2-ada: unpickling {path} needs the official stylegan2-ada-pytorch code "
                f"({exc}); set code_dir to its folder (the one holding dnnlib and torch_utils)") from exc
        if not isinstance(data, dict) or "G_ema" not in data:
            raise ConfigError(f"stylegan2-ada: {path} is not a StyleGAN2-ADA network pickle (no 'G_ema')")
        d = data.get("D") if p.use_discriminator else None
        gen = StyleGAN2ADAGenerator(data["G_ema"], d, truncation_psi=p.truncation_psi,
                                    truncation_cutoff=p.truncation_cutoff, noise_mode=p.noise_mode,
                                    force_fp32=p.force_fp32)
        gen.requires_grad_(False)
        return gen.to(ctx.device).eval(), sha

    def fit(self, ctx: PriorContext) -> StyleGAN2ADAGenerator:
        """Loads the pickle (nothing to train); ``ctx.public`` is not used."""
        gen, sha = self._unpickle(ctx)
        gen.pickle_sha256 = sha
        log.info("stylegan2-ada: loaded %s (%d px, %d ws, D: %s)", self.params.pickle, gen.resolution,
                 gen.num_ws, gen.has_discriminator)
        return gen

    def save(self, generator: Generator, folder: Path) -> None:
        """Writes a small JSON with the pickle's SHA-256 (the weights stay where they are)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"pickle": self.params.pickle, "sha256": getattr(generator, "pickle_sha256", None)}
        (folder / _META_FILE).write_text(json.dumps(meta, indent=2))

    def load(self, folder: Path, ctx: PriorContext) -> StyleGAN2ADAGenerator:
        """Re-reads the configured pickle and checks that it is the one that was saved."""
        meta_path = Path(folder) / _META_FILE
        if not meta_path.is_file():
            raise MissingResourceError(f"stylegan2-ada: {meta_path} is missing; register the prior again")
        meta = json.loads(meta_path.read_text())
        gen, sha = self._unpickle(ctx)
        if meta.get("sha256") and meta["sha256"] != sha:
            raise ConfigError(
                f"stylegan2-ada: the pickle {self.pickle_path(ctx.weights)} changed since this prior "
                f"was stored (sha256 {sha[:12]} vs {meta['sha256'][:12]}); restore the file or clear "
                "the stored prior")
        gen.pickle_sha256 = sha
        return gen
