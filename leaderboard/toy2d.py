"""The 2-D toy figure of Struppek, Hintersdorf and Kersting (ICLR 2024), Fig. 1.

"Be Careful What You Smooth For: Label Smoothing Can Be a Privacy Shield but Also a Catalyst for
Model Inversion Attacks" opens with a toy experiment: small classifiers trained on 2-D Gaussian
clusters with hard labels, label smoothing (alpha = 0.1) and negative label smoothing
(alpha = -0.05), one panel each, showing the decision regions, the training points and the path of
a model inversion attack that optimises the input for one class from a shared start. With positive
smoothing the attack walks into the class's data; with negative smoothing it stops early, far from
the data, where the confidence already saturates.

:func:`draw_toy2d` draws that figure from plain objects (models, tensors);
:func:`panels_from_run` gathers them from a ``bench run suites/toy2d.yaml`` run folder, and
``python -m leaderboard.toy2d RUN_DIR [OUT_STEM]`` does both. Points are in the unit square as the
``toy2d`` dataset encodes them (benchmark/data/toy2d.py); MI-Face with ``record_trajectory: true``
stores the path in its attack product as ``extras["trajectory"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from inversion_bench.data.toy2d import decode_points, encode_points  # noqa: E402
from inversion_bench.leaderboard.figures import plain_text_figure, plot_text  # noqa: E402

DPI = 150
# (title, model, trajectories [T+1, K, 2] in [0, 1] or None, attacked class of each trajectory [K] or None)
Panel = tuple[str, nn.Module, Tensor | None, Tensor | None]


def toy2d_inputs(trajectory: Tensor) -> Tensor:
    """A stored trajectory -> point coordinates [T+1, K, 2] in [0, 1].

    Accepts MI-Face's ``extras["trajectory"]`` ([T+1, N, C, H, W], C >= 2; the point is the spatial
    mean of channels 0 and 1, see :func:`inversion_bench.data.toy2d.decode_points`) or coordinates
    [T+1, K, 2] (returned as float32).
    """
    if trajectory.ndim == 3 and trajectory.shape[-1] == 2:
        return trajectory.float()
    if trajectory.ndim != 5 or trajectory.shape[2] < 2:
        raise ValueError(
            f"trajectory: expected [T+1, N, C>=2, H, W] (extras['trajectory'] of MI-Face with "
            f"record_trajectory: true) or [T+1, K, 2], got {tuple(trajectory.shape)}")
    return decode_points(trajectory)


@torch.no_grad()
def decision_grid(model: nn.Module, size: int = 200,
                  encode: Callable[[Tensor], Tensor] = encode_points) -> tuple[np.ndarray, np.ndarray]:
    """The model's predicted class and its confidence on a ``size`` x ``size`` grid of the unit square.

    Returns (classes, confidence), both [size, size] with row i at y = (i + 0.5) / size.
    """
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        probs = torch.cat([torch.softmax(model(encode(chunk).to(device)).float(), dim=1).cpu()
                           for chunk in pts.split(8192)])
    finally:
        model.train(was_training)
    conf, cls = probs.max(dim=1)
    return cls.view(size, size).numpy(), conf.view(size, size).numpy()


def class_colours(n: int) -> list[tuple[float, float, float, float]]:
    """One colour per class (matplotlib's tab10, then tab20)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


@plain_text_figure
def draw_toy2d(panels: Sequence[Panel], points: Tensor, labels: Tensor, out_stem: str | Path, *,
               grid_size: int = 200, encode: Callable[[Tensor], Tensor] = encode_points) -> list[Path]:
    """Draws one panel per model (Struppek et al., ICLR 2024, Fig. 1) and saves PNG and SVG.

    Args:
        panels: (title, model, trajectories, trajectory classes) per panel. ``model`` maps encoded
            points (``encode(points [N, 2])``, by default the toy2d encoding [N, 3, 1, 1] with
            channels (x, y, 0.5)) to logits; ``trajectories`` is [T+1, K, 2] in [0, 1] (see
            :func:`toy2d_inputs`) or None; ``trajectory classes`` [K] colours each path.
        points: the training points [N, 2] in [0, 1].
        labels: their classes [N].
        out_stem: the output path without suffix; ``.png`` and ``.svg`` are written.
        grid_size: grid cells per axis of the decision regions.
        encode: points [M, 2] -> model input.

    Returns:
        The paths written (PNG, then SVG).
    """
    if not panels:
        raise ValueError("panels: give at least one (title, model, trajectories, classes) panel")
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
        raise ValueError(f"points must be [N, 2] with labels [N], got {tuple(points.shape)} and {tuple(labels.shape)}")
    n_cls = max([int(labels.max()) + 1 if labels.numel() else 1]
                + [int(getattr(m, "num_classes", 0)) for _, m, _, _ in panels])
    colours = class_colours(n_cls)
    light = ListedColormap([(r, g, b, 0.35) for r, g, b, _ in colours])
    pts, lab = points.float().numpy(), labels.long().numpy()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, model, traj, traj_cls) in zip(axes[0], panels, strict=True):
        cls, conf = decision_grid(model, grid_size, encode)
        ax.imshow(cls, origin="lower", extent=(0, 1, 0, 1), cmap=light, vmin=-0.5, vmax=n_cls - 0.5,
                  interpolation="nearest")
        ax.contour(np.linspace(0, 1, grid_size), np.linspace(0, 1, grid_size), conf, levels=[0.5, 0.9, 0.99],
                   colors="k", linewidths=0.4, alpha=0.35)
        ax.scatter(pts[:, 0], pts[:, 1], c=[colours[i] for i in lab], s=6, edgecolors="k", linewidths=0.2)
        if traj is not None:
            _draw_trajectories(ax, toy2d_inputs(traj), traj_cls, colours)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[], aspect="equal", title=plot_text(title))
    fig.tight_layout()
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    fig.savefig(out[0], dpi=DPI)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def _draw_trajectories(ax, traj: Tensor, traj_cls: Tensor | None, colours: list) -> None:
    """Paths (white halo + class colour), start (white circle) and end (star) of each attack."""
    xy = traj.numpy()
    for k in range(xy.shape[1]):
        colour = colours[int(traj_cls[k]) % len(colours)] if traj_cls is not None else "k"
        ax.plot(xy[:, k, 0], xy[:, k, 1], color="w", linewidth=2.6, alpha=0.8)
        ax.plot(xy[:, k, 0], xy[:, k, 1], color=colour, linewidth=1.3)
        ax.plot(xy[0, k, 0], xy[0, k, 1], "o", color="w", markeredgecolor="k", markersize=5)
        ax.plot(xy[-1, k, 0], xy[-1, k, 1], "*", color=colour, markeredgecolor="k", markersize=11)
