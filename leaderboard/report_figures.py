"""Gathers the numbers of each report figure from run folders and draws it (:mod:`inversion_bench.leaderboard.figures`).

Every figure is drawn independently: one that cannot be drawn adds its reason to ``report.notes``
instead of stopping the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import inversion_bench.leaderboard.figures as fig
from inversion_bench.figure_options import figure_names
from inversion_bench.leaderboard.equal_utility import sweep_groups
from inversion_bench.leaderboard.escape import write_csv
from inversion_bench.leaderboard.model import TEST_ACCURACY, WORST_CASE
from inversion_bench.leaderboard.runs import ReportError, RunView
from inversion_bench.leaderboard.tsne_cache import CACHE_DIR as TSNE_CACHE
from inversion_bench.leaderboard.tsne_cache import cached_tsne

log = logging.getLogger(__name__)



def _leak(board: Any) -> str | None:
    """The metric the figures plot as leakage: the table's worst-case metric (None without a worst case)."""
    col = board.worst_case_column
    return col.metric if col is not None else None



class _Views:
    """One lazily opened :class:`~inversion_bench.leaderboard.runs.RunView` per run folder."""

    def __init__(self, dirs: Sequence[Path], contexts: Sequence[Any] = ()) -> None:
        self.dirs = [Path(d) for d in dirs]
        self._views: dict[Path, Any] = {Path(c.run_dir).resolve(): RunView(c.run_dir, c) for c in contexts}

    def of(self, record: dict[str, Any]) -> Any:
        path = record.get("_path")
        run_dir = Path(path).parent.parent if path else self.dirs[0]
        return self.get(run_dir)

    def get(self, run_dir: Path) -> Any:
        key = Path(run_dir).resolve()
        if key not in self._views:
            self._views[key] = RunView(Path(run_dir))
        return self._views[key]


def _ok(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def _record(records: Sequence[dict[str, Any]], defense: str, attack: str | None = None,
            seed: int | None = None) -> dict[str, Any] | None:
    cands = [r for r in _ok(records) if r["defense"] == defense and (attack is None or r["attack"] == attack)
             and (seed is None or int(r["seed"]) == seed)]
    return min(cands, key=lambda r: (int(r["seed"]), int(r.get("attack_index") or 0))) if cands else None


def _loadable(views: _Views, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ok records whose target can be loaded: those the run folder's last run planned (after
    `bench run --seeds 3` into a folder holding seeds 0-2, seed 3's)."""
    ok = _ok(records)
    loadable = [r for r in ok if views.of(r).has_target(r)]
    if ok and not loadable:
        raise ReportError("no record's target is among those its run folder's last run planned (suite.json's "
                          "seeds and defenses); run the suite again for one of the recorded seeds")
    return loadable


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
             batch: int = 128) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def draw_all(report: Any, dirs: Sequence[Path], records: Sequence[dict[str, Any]], *, contexts: Sequence[Any],
             grid_attack: str | None, grid_identities: int, tsne_identities: int,
             tsne_images_per_identity: int, skip: Sequence[str] = ()) -> None:
    """Draws every figure but those named in ``skip`` (:data:`FIGURES`) into ``report.out_dir / "figures"``
    and lists them in ``report.figures``."""
    skipped = figure_names(skip)
    views = _Views(dirs, contexts)
    out = report.out_dir / "figures"
    jobs: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [
        ("privacy_utility", lambda: privacy_utility(report.board, out, records)),
        ("qualitative", lambda: qualitative(report.board, views, records, out, grid_attack, grid_identities)),
        ("embedding", lambda: embedding(report.board, views, records, out, tsne_identities,
                                        tsne_images_per_identity)),
        ("gradient_stability", lambda: gradient_stability(report.board, views, records, out)),
        ("toy2d", lambda: toy2d(report.board, views, records, out)),
    ]
    for name, job in jobs:
        if name in skipped:
            log.info("figure %s skipped (--skip-figure)", name)
            continue
        try:
            entry = job()
        except Exception as exc:  # one figure must not cost the others (reason is shown, not hidden)
            log.warning("figure %s not drawn: %s", name, exc)
            report.notes.append(f"figure {name} not drawn: {type(exc).__name__}: {exc}")
            continue
        if entry is not None:
            entry["name"] = name
            report.figures.append(entry)


def _entry(paths: list[Path], title: str, caption: str) -> dict[str, Any]:
    return {"title": title, "caption": caption, "png": paths[0], "svg": paths[1]}


# --------------------------------------------------------------------------------------------------


def privacy_utility(board: Any, out: Path, records: Sequence[dict[str, Any]] = ()) -> dict[str, Any] | None:
    data = board.data
    swept = {d: (g, k) for g, members in sweep_groups(records).items() for k, (d, _) in enumerate(members)}
    target = data[data["metric"] == TEST_ACCURACY].set_index("defense")
    points = []
    labels = {i.defense: i.label for i in board.defenses}
    for _, row in data[(data["metric"] == _leak(board)) & (data["column"] != WORST_CASE)].iterrows():
        if row["n"] == 0 or row["defense"] not in target.index:
            continue
        t = target.loc[row["defense"]]
        if t["n"] == 0:
            continue
        points.append(fig.TradeoffPoint(labels[row["defense"]], row["attack_label"], float(t["mean"]),
                                        float(t["std"]), float(row["mean"]), float(row["std"]),
                                        row["defense"] == board.baseline,
                                        *swept.get(row["defense"], (None, 0))))
    if not points:
        return None
    paths = fig.draw_privacy_utility(points, out / "privacy_utility", metric=str(_leak(board)))
    write_csv(pd.DataFrame([p.__dict__ for p in points]), out / "privacy_utility.csv")
    return _entry(paths, "Privacy vs utility",
                  "Test accuracy of the target (x, higher is more useful) against the attack's top-1 accuracy "
                  "measured by the evaluation model (y, lower is more private); mean ± std over seeds; the "
                  "baseline is the star; the settings of one sweep are joined by a grey line in the order "
                  "of the swept value. The best defenses sit bottom right.")


def _choose_attack(board: Any, grid_attack: str | None) -> str:
    attacks = [c.attack for c in board.columns if c.metric == _leak(board) and c.is_attack]
    if grid_attack is not None:
        if grid_attack not in attacks:
            raise ValueError(f"--grid-attack {grid_attack!r}: no attack accuracy recorded; attacks: {attacks}")
        return grid_attack
    if not attacks:
        raise ValueError("no attack has an attack accuracy")
    data = board.data[(board.data["metric"] == _leak(board)) & (board.data["column"] != WORST_CASE)]
    ref = data[data["defense"] == board.baseline] if board.baseline else data
    means = ref.groupby("attack")["mean"].mean().dropna()
    return str(means.idxmax()) if not means.empty else attacks[-1]


def qualitative(board: Any, views: _Views, records: Sequence[dict[str, Any]], out: Path,
                grid_attack: str | None, n_ids: int) -> dict[str, Any] | None:
    attack = _choose_attack(board, grid_attack)
    ok = [r for r in _ok(records) if r["attack"] == attack]
    if not ok:
        return None
    seed = min(int(r["seed"]) for r in ok)
    first = _record(ok, board.baseline or board.defenses[0].defense, attack, seed) or ok[0]
    view = views.of(first)
    splits = view.splits
    recon = {}
    for info in board.defenses:
        r = _record(ok, info.defense, attack, seed)
        recon[info.defense] = views.of(r).reconstruction(r) if r else None
    present = sorted({int(x) for rec in recon.values() if rec is not None for x in rec.labels.tolist()})
    identities = present[:n_ids]
    train = splits.private_train
    real = []
    for ident in identities:
        pos = torch.nonzero(train.labels == ident).flatten()
        real.append(train.images(pos[:1])[0])
    evaluator = view.evaluator()
    device = next(evaluator.parameters()).device
    rows = []
    for info in board.defenses:
        rec = recon[info.defense]
        if rec is None:
            rows.append((info.label, [None] * len(identities)))
            continue
        probs = _batched(lambda x: F.softmax(evaluator(x).float(), 1), rec.images, device)
        scores = probs.gather(1, rec.labels.view(-1, 1)).flatten()
        best = fig.best_per_identity(scores, rec.labels, identities)
        rows.append((info.label, [None if b is None else rec.images[b] for b in best]))
    label = next(c.attack_label for c in board.columns if c.attack == attack)
    names = [splits.private_names[i] for i in identities]
    paths = fig.draw_qualitative_grid(real, rows, names, out / "qualitative", title=f"{label}, seed {seed}")
    return _entry(paths, f"Reconstructions ({label})",
                  f"First row: a real training image of each attacked identity. Then one row per defense: the "
                  f"reconstruction of {label} (seed {seed}) that the evaluation model is most confident "
                  "shows the identity.")


def embedding(board: Any, views: _Views, records: Sequence[dict[str, Any]], out: Path, n_ids: int,
              per_id: int) -> dict[str, Any] | None:
    panels = []
    labels_out: np.ndarray | None = None
    loadable = _loadable(views, records)
    for info in board.defenses:
        r = _record(loadable, info.defense)
        if r is None:
            continue
        view = views.of(r)
        train = view.splits.private_train
        ids = sorted(set(train.labels.tolist()))[:n_ids]
        pos = torch.cat([torch.nonzero(train.labels == i).flatten()[:per_id] for i in ids])
        model = view.target(r)
        device = next(model.parameters()).device
        feats = _batched(lambda x, m=model: m.features(x).flatten(1), train.images(pos), device)
        emb, _ = cached_tsne(feats.numpy(), view.run_dir / TSNE_CACHE, fig.tsne_2d, seed=0)  # by its inputs
        panels.append((f"{info.label} (seed {r['seed']})", emb))
        labels_out = train.labels[pos].numpy()
    if not panels or labels_out is None:
        return None
    paths = fig.draw_embeddings(panels, labels_out, out / "embedding")
    write_csv(pd.concat([pd.DataFrame({"defense": title, "x": emb[:, 0], "y": emb[:, 1], "identity": labels_out})
                         for title, emb in panels]), out / "embedding.csv")
    return _entry(paths, "Embedding space (t-SNE)",
                  f"2-D t-SNE of the target's penultimate-layer features of private training images "
                  f"({len(set(labels_out.tolist()))} identities, coloured by identity), one panel per defense. "
                  "Struppek et al. observe tighter, better separated clusters with positive label smoothing "
                  "and spread-out clusters with negative smoothing.")


def gradient_stability(board: Any, views: _Views, records: Sequence[dict[str, Any]], out: Path
                       ) -> dict[str, Any] | None:
    panels = []
    for col in (c for c in board.columns if c.metric == _leak(board) and c.is_attack):
        lines = []
        for info in board.defenses:
            series = []
            for r in (r for r in _ok(records) if r["defense"] == info.defense and r["attack"] == col.attack):
                trace = views.of(r).reconstruction(r).trace or {}
                if trace.get("grad_cosine"):
                    series.append(trace["grad_cosine"])
            values = fig.mean_series(series)
            if values.size and np.isfinite(values).any():
                lines.append((info.label, values))
        if lines:
            panels.append((col.attack_label, lines))
    if not panels:
        return None
    paths = fig.draw_gradient_stability(panels, out / "gradient_stability")
    write_csv(pd.DataFrame([{"attack": a, "defense": d, "step": i + 1, "grad_cosine": v} for a, lines in panels
                            for d, values in lines for i, v in enumerate(values)]), out / "gradient_stability.csv")
    return _entry(paths, "Gradient stability",
                  "Mean cosine similarity between the attack's gradients of consecutive optimisation steps, "
                  "averaged over latents and seeds, one line per defense (Struppek et al., Sec. 4.3: smoothing "
                  "changes how consistent the attack's gradient directions are).")


def toy2d(board: Any, views: _Views, records: Sequence[dict[str, Any]], out: Path) -> dict[str, Any] | None:
    first = _record(records, board.defenses[0].defense)
    if first is None or views.of(first).suite.dataset.name != "toy2d":
        return None
    from inversion_bench.data.toy2d import decode_points
    from inversion_bench.leaderboard.toy2d import draw_toy2d, toy2d_inputs

    view = views.of(first)
    train = view.splits.private_train
    points = decode_points(train.images())
    attack = next((r["attack"] for r in _ok(records) if (r.get("attack_params") or {}).get("record_trajectory")),
                  None)
    panels = []
    loadable = _loadable(views, records)
    for info in board.defenses:
        r = _record(loadable, info.defense, attack)
        if r is None:
            continue
        rec = views.of(r).reconstruction(r)
        traj = rec.extras.get("trajectory")
        panels.append((info.label, views.of(r).target(r), None if traj is None else toy2d_inputs(traj),
                       None if traj is None else rec.labels))
    paths = draw_toy2d(panels, points, train.labels, out / "toy2d")
    return _entry(paths, "Toy example: decision regions and attack trajectories",
                  "Decision regions of each 2-D classifier with the training points and the model inversion "
                  "attack's path from its start point (Struppek et al., Fig. 1).")
