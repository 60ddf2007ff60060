"""What every job of a run shares: the resolved suite, the run folder and its store, the device, and
the products this process already holds in memory.

A :class:`RunContext` carries no product logic: the product modules (:mod:`inversion_bench.products`)
take it and compute, load or store one product each. The driver builds one context per run; a Ray
worker rebuilds the same context from the suite (``executors.ray``).
"""

from __future__ import annotations

import subprocess
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inversion_bench import __version__
from inversion_bench.config import LoadedSuite
from inversion_bench.data.splits import Splits
from inversion_bench.errors import ConfigError
from inversion_bench.features import FeatureCache
from inversion_bench.interfaces import Classifier
from inversion_bench.plan import Plan, make_plan
from inversion_bench.store import Store
from inversion_bench.training import RunSettings, bars_wanted

# Targets a process keeps at most when nothing releases them explicitly (Ray workers, the report);
# the local executor releases each target after its last attack and scoring.
MAX_HELD_TARGETS = 4


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def check_device(spec: str) -> None:
    """Raises ``ConfigError`` (exit 2) when ``spec`` names a device this machine does not have.

    Called by the driver of a local run before any work; a Ray driver need not have the tasks' GPUs.
    """
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(spec.partition(":")[2] or 0)
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
            raise ConfigError(f"run.device {spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                              f"{build}); use --device cpu (or auto), or run on a machine with a GPU")
        if index >= count:
            raise ConfigError(f"run.device {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
                              "give one of those, or --device cuda")
    elif spec == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("run.device mps: MPS is not available on this machine; use --device cpu (or auto)")


def run_dir_of(loaded: LoadedSuite, run_dir: Path | str | None = None) -> Path:
    """The run folder: ``run_dir`` when given, else ``<run.output>/<suite name>``."""
    return Path(run_dir) if run_dir else Path(loaded.suite.run.output) / loaded.suite.name


def store_root(loaded: LoadedSuite, run_dir: Path) -> Path:
    """The product store: ``run.store`` (relative to the working directory, like ``run.output``) when
    set, shared by every run folder that names it; else ``<run folder>/store``."""
    if loaded.suite.run.store is None:
        return run_dir / "store"
    path = Path(loaded.suite.run.store).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def code_version() -> str:
    """The git commit of the code (with '+dirty' for local changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"v{__version__}"


@dataclass
class Held:
    """Products this process holds in memory (each also in the store; dropping one only costs a reload).

    ``targets`` maps (defense id, seed) to (model, training report); at most
    :data:`MAX_HELD_TARGETS` are kept, the least recently used dropped first.
    """

    splits: Splits | None = None
    evaluator: tuple[Classifier, dict[str, Any]] | None = None
    second_evaluator: tuple[Classifier, dict[str, Any]] | None = None  # only with evaluation.second
    audit: dict[str, Any] | None = None  # the evaluation model's audit (products.audit)
    prior: Any = None
    targets: OrderedDict[tuple[str, int], tuple[Classifier, dict[str, Any]]] = field(default_factory=OrderedDict)

    def target(self, key: tuple[str, int]) -> tuple[Classifier, dict[str, Any]] | None:
        held = self.targets.get(key)
        if held is not None:
            self.targets.move_to_end(key)
        return held

    def hold_target(self, key: tuple[str, int], value: tuple[Classifier, dict[str, Any]]) -> None:
        self.targets[key] = value
        self.targets.move_to_end(key)
        while len(self.targets) > MAX_HELD_TARGETS:
            self.targets.popitem(last=False)

    def release_target(self, key: tuple[str, int]) -> None:
        self.targets.pop(key, None)


class RunContext:
    """One suite run into ``run_dir`` (default ``<run.output>/<suite name>``): settings, store, plan."""

    def __init__(self, loaded: LoadedSuite, run_dir: Path | None = None, tracking_uri: str | None = None,
                 progress: bool | None = None) -> None:
        s = loaded.suite
        self.loaded = loaded
        self.suite = s
        self.run_dir = run_dir_of(loaded, run_dir)
        self.store = Store(store_root(loaded, self.run_dir))
        self.records_dir = self.run_dir / "records"
        self.device = resolve_device(s.run.device)
        bars = bars_wanted(s.run.progress if progress is None else progress)
        self.settings = RunSettings(device=self.device, amp=s.run.amp, channels_last=s.run.channels_last,
                                    compile=s.run.compile, progress=bars, eval_batch_size=s.run.eval_batch_size)
        self.tracking_uri = tracking_uri or s.run.tracking_uri
        if s.run.threads is not None:
            torch.set_num_threads(s.run.threads)
        self.weights = loaded.weights()
        self.plan: Plan = make_plan(loaded)
        self.held = Held()
        self._features: FeatureCache | None = None
        self._code_version: str | None = None

    @property
    def features(self) -> FeatureCache:
        """Features of the private data per extractor, computed once and kept in the store."""
        if self._features is None:
            self._features = FeatureCache(self.store, self.device, self.suite.run.eval_batch_size,
                                          progress=self.settings.progress)
        return self._features

    @property
    def code_version(self) -> str:
        if self._code_version is None:
            self._code_version = code_version()
        return self._code_version

    def compute_setting(self) -> dict[str, Any]:
        """Where a product is being computed: the device and torch's CPU thread count. Kept in target
        reports and attack infos, not in store keys (CPU results differ in the last bits between thread
        counts; :mod:`inversion_bench.leaderboard.compute_settings` notes a table that mixes them)."""
        return {"device": str(self.device), "torch_threads": torch.get_num_threads()}

    def resolve_path(self, ref: str) -> Path:
        """A path of the suite: absolute, or relative to the suite file's folder."""
        path = Path(ref).expanduser()
        return path if path.is_absolute() else self.loaded.folder / path
