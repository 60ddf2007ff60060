"""Loading trained classifiers from files: this package's own and the ones papers publish.

A suite names a checkpoint as a path (this package's own state dict, ``format: native``) or as
``{path: FILE, format: FORMAT}``:

- ``native``: a state dict of this package's classifier (``body.*``, ``head.*``), e.g. a stored target.
- ``kedmi``: KED-MI (``SCccc21/Knowledge-Enriched-DMI``), ``torch.save({'state_dict':
  DataParallel(model).state_dict()})``: names ``module.feature.*``, ``module.fc_layer.*``.
- ``gmi``: GMI (``MKariya1998/GMI-Attack``), the same layout as KED-MI.
- ``mibench``: MIBench (``ffhibnese/Model-Inversion-Attack-ToolBox``, ``checkpoints_v2.0``),
  ``{'state_dict': ..., 'config': ..., 'model_name': ...}``; ``model_name`` is checked against the
  architecture.
- ``ppa``: Plug & Play Attacks / the label smoothing paper (``LukasStruppek/Plug-and-Play-Attacks``),
  a state dict of its ``Classifier`` (``model.*``: a torchvision ResNet-152 or Inception-v3), bare or
  as ``{'model_state_dict': ...}`` (its training script); ``_orig_mod.`` of compiled models removed.

Loading unwraps the publisher's container (``state_dict``, ``model_state_dict`` or ``model`` inside a
dict; ``module.`` and ``_orig_mod.`` prefixes), renames keys by the architecture's
``checkpoint_prefixes[format]``, then compares every key and shape with the model: a missing,
unexpected or mis-shaped key is a :class:`CheckpointError` naming the file, the format, the
architecture and the keys. Batch-norm ``num_batches_tracked`` counters, which PyTorch before 0.4.1
did not save, may be absent (the model's own are kept). Files are read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn

from inversion_bench.errors import ConfigError, MissingResourceError

CheckpointFormat = Literal["native", "kedmi", "gmi", "mibench", "ppa"]
SOURCES: dict[str, str] = {
    "native": "a state dict this package wrote (a stored target's data.pt, or torch.save(model.state_dict()))",
    "kedmi": "KED-MI's targets and evaluation model (VGG16_88.26.tar, IR152_91.16.tar, FaceNet64_88.50.tar, "
             "FaceNet_95.88.tar): https://drive.google.com/drive/folders/1U4gekn72UX_n1pHdm9GQUQwwYVDvpTfN "
             "(README of github.com/SCccc21/Knowledge-Enriched-DMI)",
    "gmi": "files in GMI's layout (github.com/MKariya1998/GMI-Attack, whose README links none; KED-MI publishes "
           "models of the same classes: https://drive.google.com/drive/folders/1U4gekn72UX_n1pHdm9GQUQwwYVDvpTfN)",
    "mibench": "MIBench's checkpoints_v2.0: https://drive.google.com/drive/folders/1ko8zAK1j9lTSF8FMvacO8mCKHY9evG9L "
               "(README of github.com/ffhibnese/Model-Inversion-Attack-ToolBox)",
    "ppa": "the release assets of https://github.com/LukasStruppek/Plug-and-Play-Attacks/releases (ResNet-152 "
           "targets, also the label smoothing paper's, and the Inception-v3 evaluation models)",
}
WRAPPERS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")
SHOWN = 5


class CheckpointError(ConfigError):
    """A checkpoint file that does not fit the suite's architecture (or cannot be read as one)."""


class CheckpointRef(BaseModel):
    """``checkpoint: {path: FILE, format: FORMAT}`` in a suite (``checkpoint: FILE`` is ``format: native``).

    A native reference dumps as its plain path, so suites, ``suite.json`` and records that name a path
    read as before formats existed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="the checkpoint file (relative paths: from the working directory)")
    format: CheckpointFormat = Field("native", description="who wrote it: native (this package), kedmi, gmi, "
                                     "mibench or ppa; decides how its key names map to the architecture's")

    @model_serializer(mode="wrap")
    def _plain_path(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        return data["path"] if self.format == "native" else data


def _from_path(value: Any) -> Any:
    """A plain path becomes ``{path: value}``; mappings and references pass to the model's validation."""
    if isinstance(value, str):
        return {"path": value}
    if isinstance(value, Mapping | CheckpointRef):
        return value
    raise ValueError(f"give a file path or {{path: FILE, format: native|kedmi|gmi|mibench|ppa}}, got "
                     f"{type(value).__name__}")


Checkpoint = Annotated[CheckpointRef, BeforeValidator(_from_path)]
"""The type of a suite's ``checkpoint:`` fields: a path or a path with its format."""


def as_ref(ref: str | CheckpointRef | Mapping[str, Any]) -> CheckpointRef:
    """A suite's ``checkpoint:`` value as a :class:`CheckpointRef` (a plain path is ``native``)."""
    if isinstance(ref, CheckpointRef):
        return ref
    if isinstance(ref, str):
        return CheckpointRef(path=ref)
    return CheckpointRef(**ref)


def checkpoint_json(ref: str | CheckpointRef | None) -> str | dict[str, str] | None:
    """A suite's ``checkpoint:`` value as JSON (records, suite.json): a plain path stays a string."""
    return ref.model_dump(mode="json") if isinstance(ref, CheckpointRef) else ref


def not_found_message(field: str, path: Path, fmt: str) -> str:
    """What to say when ``path`` (the suite's ``field``) is missing: the file, where it comes from, the fix."""
    return (f"{field}: checkpoint {path} not found (format {fmt}: {SOURCES[fmt]}); put the file at {path} "
            f"or change {field}")


def read_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; an unreadable file is a CheckpointError."""
    if not path.is_file():
        raise MissingResourceError(f"checkpoint {path} not found; put the file there or change the suite's path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read as a PyTorch file with weights_only=True "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "give a state dict saved with torch.save") from None


def unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside ``obj`` (``state_dict``/``model_state_dict``/``model`` of a dict, or the dict
    itself) with ``module.``/``_orig_mod.`` prefixes removed, and the container's other entries."""
    outer: dict[str, Any] = {}
    while isinstance(obj, Mapping) and not _is_state(obj):
        inner = next((k for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(f"checkpoint {path}: no state dict found (top-level keys {sorted(obj)[:8]}); "
                                  f"expected tensors by name or a dict with one of {list(WRAPPERS)}")
        outer.update({k: v for k, v in obj.items() if k != inner and not isinstance(v, Mapping | Tensor)})
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        while name.startswith(PREFIXES):
            name = next(name.removeprefix(p) for p in PREFIXES if name.startswith(p))
        state[name.replace("._orig_mod.", ".")] = value
    return state, outer


def _is_state(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def rename(state: Mapping[str, Tensor], prefixes: tuple[tuple[str, str], ...]) -> dict[str, Tensor]:
    """Keys renamed by the first matching (publisher prefix, this package's prefix) pair; others kept."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = next((ours + key[len(theirs):] for theirs, ours in prefixes if key.startswith(theirs)), key)
        out[new] = value
    return out


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def mismatch(state: Mapping[str, Tensor], expected: Mapping[str, Tensor],
             file_names: Mapping[str, str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, 'key: file [..], model [..]' for mis-shaped ones); an absent
    ``num_batches_tracked`` is not missing. ``file_names`` maps a renamed key back to its name in the
    file: unexpected keys are named as in the file, mis-shaped ones as both when they differ."""
    names = file_names or {}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [names.get(k, k) for k in state if k not in expected]
    shapes = [f"{k}{f' (in the file: {names[k]})' if names.get(k, k) != k else ''}: file {_shape(state[k])}, "
              f"model {_shape(v)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def _listed(what: str, items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{len(items)} {what} ({'; '.join(items[:SHOWN])}{more})"


def fit_error(path: Path, fmt: str, arch: str, problems: tuple[list[str], list[str], list[str]],
              num_classes: int, file_classes: int | None = None) -> CheckpointError:
    """The error for a checkpoint whose keys or shapes differ from the model's, each kind listed."""
    missing, unexpected, shapes = problems
    kinds = (("missing key(s)", missing), ("unexpected key(s) in the file", unexpected), ("mis-shaped key(s)", shapes))
    parts = [_listed(what, items) for what, items in kinds if items]
    hint = (f"; the file classifies {file_classes} identities, the model {num_classes} (dataset.split."
            "private_identities): use the split the checkpoint was trained on (the published 64 px targets and "
            "evaluation models: 1000)" if any(s.startswith("head.") for s in shapes) else
            "; check the suite's architecture and the checkpoint's format")
    return CheckpointError(f"checkpoint {path} (format {fmt}) does not fit architecture {arch}: "
                           f"{', '.join(parts)}{hint}")


def load_into(model: nn.Module, path: Path, fmt: str, arch: str,
              prefixes: Mapping[str, tuple[tuple[str, str], ...]], mibench_name: str = "") -> None:
    """Reads ``path`` (written in format ``fmt``), checks every key and shape against ``model`` (of
    architecture ``arch``, whose ``prefixes`` map each format's names) and loads it.

    Raises:
        MissingResourceError: the file does not exist.
        CheckpointError: unreadable, the wrong format for the architecture, or any key or shape differs.
    """
    state, outer = unwrap(read_file(path), path)
    if fmt != "native" and fmt not in prefixes:
        known = ", ".join(["native", *prefixes])
        raise CheckpointError(f"checkpoint {path}: architecture {arch} has no layout for format {fmt}; "
                              f"use one of: {known}")
    named = outer.get("model_name")
    if fmt == "mibench" and mibench_name and named is not None and named != mibench_name:
        raise CheckpointError(f"checkpoint {path} is MIBench's {named!r}, not {mibench_name!r} ({arch}); give "
                              "the matching file or architecture")
    renamed = rename(state, prefixes.get(fmt, ()))
    # buffers a defense fills after loading (``Defense.calibrate``; named in ``model.defense_state``) are
    # not in a checkpoint file: they keep the model's values
    own = set(getattr(model, "defense_state", ()))
    expected = {k: v for k, v in model.state_dict().items() if k not in own}
    problems = mismatch(renamed, expected, dict(zip(renamed, state, strict=True)))
    if any(problems):
        head = renamed.get("head.weight")
        raise fit_error(path, fmt, arch, problems, int(getattr(model, "num_classes", 0)),
                        int(head.shape[0]) if head is not None and head.ndim else None)
    model.load_state_dict({**model.state_dict(), **renamed})
