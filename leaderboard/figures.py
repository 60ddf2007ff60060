"""The figures of a report (matplotlib, PNG and SVG), drawn from plain arrays.

Each ``draw_*`` function takes numbers, not run folders (:mod:`inversion_bench.leaderboard.report` gathers them), and
writes ``<stem>.png`` and ``<stem>.svg``. They reproduce the analyses of Struppek, Hintersdorf and
Kersting (ICLR 2024, "Be Careful What You Smooth For"):

* the qualitative comparison (their Fig. 1/Fig. 4 style grid: a real private image per identity, then
  one row of reconstructions per defense),
* privacy vs utility (test accuracy against attack accuracy, their Tab. 1 as a scatter),
* the embedding analysis (t-SNE of penultimate-layer features of the private training data, Sec. 4.2),
* the gradient stability analysis (cosine similarity of consecutive attack gradients, Sec. 4.3).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from inversion_bench.leaderboard.escape import plot_text  # noqa: E402

DPI = 150


def plain_text_figure(fn: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """Draws with ``text.usetex`` off: labels are free text, drawn through :func:`plot_text` as plain text
    (never mathtext or LaTeX), so no label can cost a figure."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context({"text.usetex": False}):
            return fn(*args, **kwargs)

    return wrapper


def save_figure(fig: matplotlib.figure.Figure, stem: Path) -> list[Path]:
    """Writes ``stem.png`` and ``stem.svg`` and closes the figure; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------------
# qualitative grid


def best_per_identity(scores: Tensor, labels: Tensor, identities: Sequence[int]) -> list[int | None]:
    """Index of the highest-scoring reconstruction of every identity.

    Args:
        scores: [N] a score per reconstruction (e.g. the evaluation model's confidence in its label).
        labels: [N] the identity each reconstruction was made for.
        identities: the identities to pick for, in order.

    Returns:
        One index into ``scores`` per identity, ``None`` where the identity has no reconstruction.
    """
    out: list[int | None] = []
    for ident in identities:
        idx = torch.nonzero(labels == int(ident)).flatten()
        out.append(None if idx.numel() == 0 else int(idx[scores[idx].argmax()]))
    return out


def _show(ax: plt.Axes, img: Tensor | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if img is None:
        ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes, color="0.5")
        return
    arr = img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    ax.imshow(arr if arr.shape[2] == 3 else arr[..., 0], cmap=None if arr.shape[2] == 3 else "gray",
              interpolation="nearest")


@plain_text_figure
def draw_qualitative_grid(real: Sequence[Tensor], rows: Sequence[tuple[str, Sequence[Tensor | None]]],
                          column_titles: Sequence[str], stem: Path, title: str = "") -> list[Path]:
    """One column per attacked identity: a real private image, then one row per defense.

    Args:
        real: K images [3, H, W] in [0, 1], one per identity.
        rows: (defense label, K reconstructions or ``None`` where there is none).
        column_titles: K identity names.
        stem: output path without suffix.
        title: figure title (e.g. the attack's name).
    """
    k = len(real)
    n_rows = 1 + len(rows)
    size = 1.1
    fig, axes = plt.subplots(n_rows, k, figsize=(1.6 + size * k, 0.3 + size * n_rows), squeeze=False)
    for j in range(k):
        _show(axes[0, j], real[j])
        axes[0, j].set_title(plot_text(column_titles[j]), fontsize=7)
    axes[0, 0].set_ylabel("private", fontsize=8, rotation=0, ha="right", va="center")
    for i, (label, images) in enumerate(rows, start=1):
        for j in range(k):
            _show(axes[i, j], images[j])
        axes[i, 0].set_ylabel(plot_text(label), fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(plot_text(title), fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# privacy vs utility


@dataclass(frozen=True)
class TradeoffPoint:
    """One defense in one attack's privacy-utility panel (fractions, std NaN for one seed)."""

    defense: str
    attack: str
    test_accuracy: float
    test_std: float
    attack_accuracy: float
    attack_std: float
    baseline: bool = False
    group: str | None = None
    """Sweep group (:mod:`inversion_bench.sweep`): the points of one group are joined in ``order``."""
    order: int = 0


@plain_text_figure
def draw_privacy_utility(points: Sequence[TradeoffPoint], stem: Path, metric: str) -> list[Path]:
    """Test accuracy (x, utility) against attack accuracy (y, leakage), one panel per attack.

    Lower right is better for the defender: high utility, low attack accuracy.
    """
    attacks = list(dict.fromkeys(p.attack for p in points))
    defenses = list(dict.fromkeys(p.defense for p in points))
    colors = {d: plt.get_cmap("tab10" if len(defenses) <= 10 else "tab20")(i) for i, d in enumerate(defenses)}
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.4 * len(attacks) + 1.8, 3.2), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        for group in dict.fromkeys(p.group for p in points if p.attack == attack and p.group):
            curve = sorted((p for p in points if p.attack == attack and p.group == group), key=lambda p: p.order)
            ax.plot([100 * p.test_accuracy for p in curve], [100 * p.attack_accuracy for p in curve],
                    "-", color="0.6", lw=1, zorder=0)
        for p in (p for p in points if p.attack == attack):
            ax.errorbar(100 * p.test_accuracy, 100 * p.attack_accuracy,
                        xerr=None if np.isnan(p.test_std) else 100 * p.test_std,
                        yerr=None if np.isnan(p.attack_std) else 100 * p.attack_std,
                        fmt="*" if p.baseline else "o", ms=10 if p.baseline else 6, capsize=2,
                        color=colors[p.defense], label=plot_text(p.defense))
        ax.set_title(plot_text(attack), fontsize=9)
        ax.set_xlabel("test accuracy (%) →", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(plot_text(f"{metric} (%) ↓ better"), fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# embedding space


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation) of [N, D] features; perplexity capped below N."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return tsne.fit_transform(features.astype(np.float32))


@plain_text_figure
def draw_embeddings(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, stem: Path) -> list[Path]:
    """One scatter per defense of 2-D embeddings [N, 2], coloured by identity ``labels`` [N]."""
    n = len(panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    ids = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(ids) <= 20 else "gist_ncar")
    color_of = {int(c): cmap(i % 20 if len(ids) <= 20 else i / max(len(ids) - 1, 1)) for i, c in enumerate(ids)}
    colors = [color_of[int(c)] for c in labels]
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, emb) in zip(axes.flat, panels, strict=False):
        ax.scatter(emb[:, 0], emb[:, 1], c=colors, s=5, linewidths=0)
        ax.set_title(plot_text(title), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# gradient stability


def mean_series(series: Sequence[Sequence[float | None]]) -> np.ndarray:
    """Element-wise mean of per-seed series, ignoring ``None``/NaN entries (NaN where none is left).

    Series of different lengths are padded with NaN.
    """
    if not series:
        return np.zeros(0)
    length = max(len(s) for s in series)
    arr = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        arr[i, : len(s)] = [np.nan if v is None else float(v) for v in s]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (the first step) stay NaN
        return np.nanmean(arr, axis=0)


@plain_text_figure
def draw_gradient_stability(panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], stem: Path) -> list[Path]:
    """Mean cosine similarity of consecutive attack gradients per step, one line per defense.

    Args:
        panels: (attack label, [(defense label, [steps] cosine series)]), one panel per attack.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.8, 3.0), squeeze=False)
    for ax, (attack, lines) in zip(axes[0], panels, strict=True):
        for label, values in lines:
            steps = np.arange(1, len(values) + 1)
            ax.plot(steps, values, label=plot_text(label), lw=1.2)
        ax.set_title(plot_text(attack), fontsize=9)
        ax.set_xlabel("optimisation step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("gradient cosine similarity", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, stem)
