"""What an attack may do with the target: the access level it declares, enforced.

Every attack plugin declares ``access`` (:data:`ACCESS_LEVELS`):

* ``white-box``: the target model itself (an ``nn.Module``: forward passes, gradients, parameters,
  penultimate features), as MI-Face, GMI and PPA need.
* ``black-box``: a :class:`ScoreOracle`, a callable that returns the target's output probabilities
  for a batch of images and nothing else (no gradients, no parameters, no features).
* ``label-only``: a :class:`LabelOracle`, a callable that returns only the top-1 label per image.

The defense's ``postprocess`` (top-k, rounding, output noise, ...) sits inside every oracle, so every
attack sees the defended outputs. Each access level counts the images it was asked about
(:attr:`queries`; for white-box, the target's forward passes). An oracle refuses inputs that require
gradients, any attribute but the documented ones, and ``backward()`` on what it returned, with an
:class:`~inversion_bench.errors.AccessError` that names the declared access level.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from inversion_bench.errors import AccessError

Access = Literal["white-box", "black-box", "label-only"]
ACCESS_LEVELS: tuple[Access, ...] = ("white-box", "black-box", "label-only")


class OracleOutput(Tensor):
    """A tensor an oracle returned (and everything computed from it): it carries no gradient, and
    ``backward()`` on it raises an :class:`AccessError` naming the oracle's access level."""

    access: str = "black-box"

    def backward(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        raise AccessError(f"backward() was called on outputs of a {self.access} oracle: {self.access} access "
                          "gives no gradients (declare access = 'white-box' to get the model)")


class ScoreOutput(OracleOutput):
    access = "black-box"


class LabelOutput(OracleOutput):
    access = "label-only"


def plain(t: Tensor) -> Tensor:
    """``t`` as an ordinary tensor (e.g. before storing a value derived from oracle outputs)."""
    return t.as_subclass(Tensor) if isinstance(t, OracleOutput) else t


class _Oracle:
    """Queries the (defended) target on images; counts every image asked about."""

    access: Access
    _ALLOWED = ("num_classes", "input_size", "queries", "access", "device")
    __slots__ = ("_model", "_queries", "num_classes", "input_size", "device")

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_queries", 0)
        object.__setattr__(self, "num_classes", int(model.num_classes))
        object.__setattr__(self, "input_size", getattr(model, "input_size", None))
        object.__setattr__(self, "device", device)

    @property
    def queries(self) -> int:
        """Images asked about so far."""
        return object.__getattribute__(self, "_queries")  # bypasses the guard in __getattribute__

    def _logits(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise TypeError(f"{self.access} oracle: images must be a float tensor [N, 3, H, W] in [0, 1]")
        if images.requires_grad:
            raise AccessError(f"the images passed to a {self.access} oracle require gradients: {self.access} "
                              "access gives no gradients (detach them, or declare access = 'white-box')")
        object.__setattr__(self, "_queries", self.queries + int(images.shape[0]))
        model = object.__getattribute__(self, "_model")  # bypasses the guard in __getattribute__
        with torch.no_grad():
            return model(plain(images).to(self.device)).float()

    def __getattribute__(self, name: str) -> Any:
        if name in ("_model", "_queries"):  # the model and counter are for the oracle's own methods only
            return _Oracle.__getattr__(self, name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        raise AccessError(f"a {self.access} oracle has no attribute {name!r}: {self.access} access allows only "
                          f"calling the oracle on images and reading {', '.join(self._ALLOWED)} (parameters, "
                          "features and gradients need access = 'white-box')")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AccessError(f"a {self.access} oracle cannot be changed (tried to set {name!r})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(access={self.access!r}, num_classes={self.num_classes}, queries={self.queries})"


class ScoreOracle(_Oracle):
    """Black-box access: ``oracle(images)`` -> the probabilities [N, C] the (defended) target releases."""

    access = "black-box"
    __slots__ = ()

    def __call__(self, images: Tensor) -> Tensor:
        return torch.softmax(self._logits(images), dim=1).as_subclass(ScoreOutput)


class LabelOracle(_Oracle):
    """Label-only access: ``oracle(images)`` -> the top-1 label [N] (int64) of the (defended) target."""

    access = "label-only"
    __slots__ = ()

    def __call__(self, images: Tensor) -> Tensor:
        return self._logits(images).argmax(dim=1).as_subclass(LabelOutput)


class QueryCounter:
    """Counts the images a white-box attack passes through the target's forward (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.queries = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].ndim >= 1:
            self.queries += int(args[0].shape[0])

    def close(self) -> None:
        self._handle.remove()


def target_for(access: str, attacked: nn.Module, device: torch.device) -> tuple[Any, Any]:
    """(what an attack of ``access`` gets as its target, the object whose ``queries`` count its queries).

    ``attacked`` is the target behind the defense's ``postprocess``. White-box attacks get it as is
    (with a counting hook: call ``close()`` on the counter afterwards); the others get an oracle.
    """
    if access == "white-box":
        counter = QueryCounter(attacked)
        return attacked, counter
    if access == "black-box":
        oracle = ScoreOracle(attacked, device)
        return oracle, oracle
    if access == "label-only":
        oracle = LabelOracle(attacked, device)
        return oracle, oracle
    raise ValueError(f"unknown access level {access!r}; one of {', '.join(ACCESS_LEVELS)}")
